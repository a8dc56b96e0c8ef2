//! The embedded test-pattern source: the default when no camera is configured.
//!
//! Each frame is colour bars and a luma ramp (rendered once per size into a template and
//! copied), a bouncing box and a sweeping bar that move every frame, a text panel with the
//! frame number and the UTC capture time, and a row of 32 black/white cells that spell the
//! frame number in binary (most significant bit first) so tests and tools can read it back
//! from a decoded JPEG. Frames are paced on an absolute schedule, so the rate does not drift
//! with render time, and rendered into pooled buffers, so steady state allocates nothing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::font::{self, GLYPH_H, GLYPH_W};
use super::{
    CaptureTime, Frame, Payload, Source, SourceContext, SourceError, SourceInfo, Yuv420Buffer,
};

/// Bits of the frame number drawn as cells along the top edge.
pub const SEQ_BITS: u32 = 32;

/// Luma and chroma values (BT.601 limited range).
const Y_BLACK: u8 = 16;
const Y_WHITE: u8 = 235;
const C_NEUTRAL: u8 = 128;

pub struct TestPattern {
    width: usize,
    height: usize,
    interval: Duration,
    fps: u32,
    template: Vec<u8>,
    pool: BufferPool,
}

impl TestPattern {
    pub fn new(width: u32, height: u32, fps: u32) -> Self {
        let (width, height) = (width as usize, height as usize);
        let template = render_background(width, height);
        TestPattern {
            width,
            height,
            interval: Duration::from_secs_f64(1.0 / fps as f64),
            fps,
            pool: BufferPool::new(template.len()),
            template,
        }
    }

    /// Draws frame `seq` captured at `captured` into a pooled buffer.
    pub fn render(&self, seq: u64, captured: CaptureTime) -> PooledPlanes {
        let mut buf = self.pool.take();
        buf.copy_from_slice(&self.template);
        let mut img = Canvas {
            buf: &mut buf,
            w: self.width,
            h: self.height,
        };
        self.draw_motion(&mut img, seq);
        self.draw_seq_cells(&mut img, seq);
        self.draw_text(&mut img, seq, captured);
        PooledPlanes {
            buf: Some(buf),
            width: self.width,
            height: self.height,
            pool: self.pool.clone(),
        }
    }

    fn unit(&self) -> usize {
        // One font pixel: 4 px at 720p, scaled with the height, at least 1.
        (self.height / 180).max(1)
    }

    fn draw_motion(&self, img: &mut Canvas<'_>, seq: u64) {
        let (w, h) = (self.width, self.height);
        // A vertical bar sweeping left to right once every 4 seconds.
        let period = (self.fps as u64 * 4).max(1);
        let bar_w = (w / 64).max(2) & !1;
        let x = ((seq % period) as usize * (w - bar_w) / period as usize) & !1;
        img.fill(x, 0, bar_w, h, (Y_WHITE, C_NEUTRAL, C_NEUTRAL));
        // A box bouncing off the edges; its colour changes every second.
        let side = (h / 6).max(4) & !1;
        let bounce = |pos: u64, span: usize| {
            let span = span.max(1) as u64;
            let p = pos % (2 * span);
            (if p < span { p } else { 2 * span - p }) as usize & !1
        };
        let step = (h / 120).max(1) as u64;
        let bx = bounce(seq * step * 3, w - side);
        let by = bounce(seq * step * 2, h - side);
        let hue = (seq / self.fps.max(1) as u64 % 6) as usize;
        let colours = [
            (81, 90, 240),   // red
            (145, 54, 34),   // green
            (41, 240, 110),  // blue
            (210, 16, 146),  // yellow
            (170, 166, 16),  // cyan
            (106, 202, 222), // magenta
        ];
        img.fill(bx, by, side, side, colours[hue]);
    }

    fn draw_seq_cells(&self, img: &mut Canvas<'_>, seq: u64) {
        let cell = seq_cell_size(self.width);
        let lo = seq as u32;
        for bit in 0..SEQ_BITS {
            let on = lo >> (SEQ_BITS - 1 - bit) & 1 == 1;
            let y = if on { Y_WHITE } else { Y_BLACK };
            img.fill(
                bit as usize * cell,
                0,
                cell,
                cell,
                (y, C_NEUTRAL, C_NEUTRAL),
            );
        }
    }

    fn draw_text(&self, img: &mut Canvas<'_>, seq: u64, captured: CaptureTime) {
        let lines = [
            format!(
                "PICAMD TEST PATTERN {}X{} @ {} FPS",
                self.width, self.height, self.fps
            ),
            format!("FRAME {seq:08}"),
            format_utc(captured.wall_us),
        ];
        let u = self.unit();
        let line_h = (GLYPH_H + 3) * u;
        let longest = lines.iter().map(|l| l.len()).max().unwrap_or(0);
        let panel_w = ((longest * (GLYPH_W + 1) + 3) * u).min(self.width) & !1;
        let panel_h = (lines.len() * line_h + 2 * u).min(self.height) & !1;
        let px = (2 * u) & !1;
        let py = self.height.saturating_sub(panel_h + 2 * u) & !1;
        img.fill(px, py, panel_w, panel_h, (Y_BLACK, C_NEUTRAL, C_NEUTRAL));
        for (i, line) in lines.iter().enumerate() {
            img.text(px + 2 * u, py + 2 * u + i * line_h, u, line);
        }
    }
}

impl Source for TestPattern {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "test",
            name: format!("test pattern {}x{}", self.width, self.height),
        }
    }

    fn run(&mut self, ctx: &mut SourceContext) -> Result<(), SourceError> {
        ctx.set_state(crate::hub::SourceState::Streaming);
        let mut next = Instant::now();
        loop {
            if !ctx.wait_for_demand() {
                return Ok(());
            }
            let now = Instant::now();
            if now < next {
                std::thread::sleep(next - now);
            } else if now - next > self.interval {
                // Idle or overloaded: restart the schedule instead of bursting to catch up.
                next = now;
            }
            next += self.interval;
            if ctx.is_shutting_down() {
                return Ok(());
            }
            let captured = CaptureTime::now();
            let seq = ctx.next_seq();
            let planes = self.render(seq, captured);
            ctx.emit(Frame {
                seq,
                captured,
                width: self.width as u32,
                height: self.height as u32,
                no_signal: false,
                payload: Payload::Yuv420(Box::new(planes)),
            });
        }
    }
}

/// Edge of one frame-number cell in pixels for a frame `width` wide (all 32 fit in half
/// the width; even, so cells align with chroma).
pub fn seq_cell_size(width: usize) -> usize {
    (width / (2 * SEQ_BITS as usize)).max(2) & !1
}

/// Reads the frame number back from a decoded luma plane (`stride` bytes per row).
pub fn read_seq_cells(luma: &[u8], stride: usize, width: usize) -> u32 {
    let cell = seq_cell_size(width);
    (0..SEQ_BITS).fold(0u32, |acc, bit| {
        let cx = bit as usize * cell + cell / 2;
        let cy = cell / 2;
        let on = luma[cy * stride + cx] > 128;
        acc << 1 | on as u32
    })
}

/// `YYYY-MM-DD HH:MM:SS.mmm UTC` from microseconds since the Unix epoch.
pub fn format_utc(wall_us: u64) -> String {
    let secs = wall_us / 1_000_000;
    let ms = (wall_us / 1000) % 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{ms:03} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (the era-based method: 400-year
/// eras of 146 097 days, years starting in March so leap days fall last).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Bars in the top two thirds, a left-to-right luma ramp below.
fn render_background(w: usize, h: usize) -> Vec<u8> {
    let mut buf = vec![0u8; w * h * 3 / 2];
    let mut img = Canvas {
        buf: &mut buf,
        w,
        h,
    };
    // 75 % bars: white, yellow, cyan, green, magenta, red, blue.
    let bars: [(u8, u8, u8); 7] = [
        (180, 128, 128),
        (162, 44, 142),
        (131, 156, 44),
        (112, 72, 58),
        (84, 184, 198),
        (65, 100, 212),
        (35, 212, 114),
    ];
    let bars_h = (h * 2 / 3) & !1;
    for (i, colour) in bars.iter().enumerate() {
        let x0 = (i * w / bars.len()) & !1;
        let x1 = ((i + 1) * w / bars.len()) & !1;
        img.fill(x0, 0, x1 - x0, bars_h, *colour);
    }
    for x in (0..w).step_by(2) {
        let y = (Y_BLACK as usize + x * (Y_WHITE - Y_BLACK) as usize / w) as u8;
        img.fill(x, bars_h, 2, h - bars_h, (y, C_NEUTRAL, C_NEUTRAL));
    }
    buf
}

/// A contiguous I420 image (Y, then U, then V, no padding) to draw on.
struct Canvas<'a> {
    buf: &'a mut [u8],
    w: usize,
    h: usize,
}

impl Canvas<'_> {
    /// Fills a rectangle (clipped; even coordinates keep chroma exact).
    fn fill(&mut self, x: usize, y: usize, rw: usize, rh: usize, (yv, uv, vv): (u8, u8, u8)) {
        let (w, h) = (self.w, self.h);
        let (x1, y1) = ((x + rw).min(w), (y + rh).min(h));
        if x >= x1 || y >= y1 {
            return;
        }
        for row in y..y1 {
            self.buf[row * w + x..row * w + x1].fill(yv);
        }
        let (cw, ch) = (w / 2, h / 2);
        let (ux, uy, ux1, uy1) = (x / 2, y / 2, x1.div_ceil(2), y1.div_ceil(2).min(ch));
        let (u_off, v_off) = (w * h, w * h + cw * ch);
        for row in uy..uy1 {
            self.buf[u_off + row * cw + ux..u_off + row * cw + ux1].fill(uv);
            self.buf[v_off + row * cw + ux..v_off + row * cw + ux1].fill(vv);
        }
    }

    /// Draws `text` in white luma with font pixels `unit` wide, top-left at (x, y).
    fn text(&mut self, x: usize, y: usize, unit: usize, text: &str) {
        for (i, c) in text.chars().enumerate() {
            let gx = x + i * (GLYPH_W + 1) * unit;
            for (row, bits) in font::glyph(c).iter().enumerate() {
                for col in 0..GLYPH_W {
                    if bits >> (GLYPH_W - 1 - col) & 1 == 1 {
                        self.fill_luma(gx + col * unit, y + row * unit, unit, unit, Y_WHITE);
                    }
                }
            }
        }
    }

    fn fill_luma(&mut self, x: usize, y: usize, rw: usize, rh: usize, v: u8) {
        let (x1, y1) = ((x + rw).min(self.w), (y + rh).min(self.h));
        for row in y.min(y1)..y1 {
            self.buf[row * self.w + x.min(x1)..row * self.w + x1].fill(v);
        }
    }
}

/// Recycles frame buffers: a frame's planes return here when the encoder drops them.
#[derive(Clone)]
struct BufferPool {
    len: usize,
    free: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// Buffers kept for reuse; more than the encoders can hold at once is never needed.
const POOL_KEEP: usize = 8;

impl BufferPool {
    fn new(len: usize) -> Self {
        BufferPool {
            len,
            free: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn take(&self) -> Vec<u8> {
        let reused = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        reused.unwrap_or_else(|| vec![0; self.len])
    }
}

/// One rendered I420 frame; its buffer goes back to the pool on drop.
pub struct PooledPlanes {
    buf: Option<Vec<u8>>,
    width: usize,
    height: usize,
    pool: BufferPool,
}

impl Yuv420Buffer for PooledPlanes {
    fn planes(&self) -> [&[u8]; 3] {
        let buf = self.buf.as_deref().expect("present until drop");
        let ysz = self.width * self.height;
        let csz = (self.width / 2) * (self.height / 2);
        let (y, rest) = buf.split_at(ysz);
        let (u, v) = rest.split_at(csz);
        [y, u, v]
    }

    fn strides(&self) -> [usize; 3] {
        [self.width, self.width / 2, self.width / 2]
    }
}

impl Drop for PooledPlanes {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            let mut free = self.pool.free.lock().unwrap_or_else(|p| p.into_inner());
            if free.len() < POOL_KEEP {
                free.push(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00.000 UTC");
        // 2024-02-29 12:34:56.789 (a leap day).
        assert_eq!(
            format_utc(1_709_210_096_789_000),
            "2024-02-29 12:34:56.789 UTC"
        );
    }

    #[test]
    fn frames_differ_and_carry_their_number() {
        let tp = TestPattern::new(320, 240, 30);
        let t = CaptureTime::now();
        let a = tp.render(1, t);
        let b = tp.render(2, t);
        assert_ne!(a.planes()[0], b.planes()[0]);
        assert_eq!(read_seq_cells(a.planes()[0], 320, 320), 1);
        let c = tp.render(0xDEAD_BEEF, t);
        assert_eq!(read_seq_cells(c.planes()[0], 320, 320), 0xDEAD_BEEF);
    }

    #[test]
    fn buffers_are_reused() {
        let tp = TestPattern::new(64, 32, 30);
        let t = CaptureTime::now();
        let first = tp.render(1, t);
        let ptr = first.planes()[0].as_ptr();
        drop(first);
        assert_eq!(tp.render(2, t).planes()[0].as_ptr(), ptr);
    }

    #[test]
    fn tiny_frames_do_not_panic() {
        let tp = TestPattern::new(16, 16, 120);
        for seq in 0..300 {
            tp.render(seq, CaptureTime::now());
        }
    }
}
