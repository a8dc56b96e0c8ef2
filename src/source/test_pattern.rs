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

use super::controls::{self, CameraControls, ControlError, Controls};
use super::faults::{FaultSchedule, Phase};
use super::font::{GLYPH_H, GLYPH_W};
use super::i420::{format_utc, BufferPool, Canvas, PooledI420, C_NEUTRAL, Y_BLACK, Y_WHITE};
use super::{Source, SourceContext, SourceError};
use crate::frame::{CaptureTime, Frame, Payload, SourceInfo};

/// Bits of the frame number drawn as cells along the top edge.
pub const SEQ_BITS: u32 = 32;

pub struct TestPattern {
    width: usize,
    height: usize,
    interval: Duration,
    fps: u32,
    /// The static background, adjusted for brightness and contrast; rebuilt when they change.
    template: Mutex<(u64, Vec<u8>)>,
    controls: Arc<PatternControls>,
    pool: BufferPool,
    /// Optional fault schedule, timed from construction so it runs on across restarts.
    faults: Option<(FaultSchedule, Instant)>,
}

impl TestPattern {
    pub fn new(width: u32, height: u32, fps: u32) -> Self {
        let (width, height) = (width as usize, height as usize);
        let template = Mutex::new((0, render_background(width, height)));
        TestPattern {
            width,
            height,
            interval: Duration::from_secs_f64(1.0 / fps as f64),
            fps,
            pool: BufferPool::new(width, height),
            faults: None,
            template,
            controls: Arc::new(PatternControls::default()),
        }
    }

    /// Adds a repeating fault schedule (stalls and failures) to the pattern.
    pub fn with_faults(mut self, faults: Option<FaultSchedule>) -> Self {
        self.faults = faults.map(|f| (f, Instant::now()));
        self
    }

    /// Acts out the fault schedule: `Ok(true)` to render a frame now, `Ok(false)` after
    /// stalling (check demand and shutdown again), `Err` while failing.
    fn act_out_faults(&self, ctx: &SourceContext) -> Result<bool, SourceError> {
        let Some((schedule, epoch)) = &self.faults else {
            return Ok(true);
        };
        match schedule.phase_at(epoch.elapsed()) {
            (Phase::Live, _) => Ok(true),
            (Phase::Stall, left) => {
                // Hang like a wedged driver, but stay responsive to shutdown.
                ctx.sleep(left.min(Duration::from_millis(100)));
                Ok(false)
            }
            (Phase::Fail, left) => Err(SourceError::Failed(format!(
                "test fault: camera gone for another {:.1} s",
                left.as_secs_f64()
            ))),
        }
    }

    /// Draws frame `seq` captured at `captured` into a pooled buffer.
    pub fn render(&self, seq: u64, captured: CaptureTime) -> PooledI420 {
        let mut frame = self.pool.take();
        {
            let mut template = self.template.lock().unwrap_or_else(|p| p.into_inner());
            let (generation, wanted) = self.controls.snapshot();
            if template.0 != generation {
                *template = (generation, self.adjusted_background(&wanted));
            }
            frame.as_mut_slice().copy_from_slice(&template.1);
        }
        let mut img = frame.canvas();
        self.draw_motion(&mut img, seq);
        self.draw_seq_cells(&mut img, seq);
        self.draw_text(&mut img, seq, captured);
        frame
    }

    /// The background with brightness and contrast applied to its luma.
    fn adjusted_background(&self, c: &Controls) -> Vec<u8> {
        let mut bg = render_background(self.width, self.height);
        let (brightness, contrast) = (c.brightness.unwrap_or(0.0), c.contrast.unwrap_or(1.0));
        let lut: Vec<u8> = (0..=255u8)
            .map(|y| {
                let v = (y as f32 - 128.0) * contrast + 128.0 + brightness * 110.0;
                v.clamp(Y_BLACK as f32, Y_WHITE as f32) as u8
            })
            .collect();
        for y in &mut bg[..self.width * self.height] {
            *y = lut[*y as usize];
        }
        bg
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

    fn controls(&self) -> Option<Arc<dyn CameraControls>> {
        Some(self.controls.clone())
    }

    fn run(&mut self, ctx: &mut SourceContext) -> Result<(), SourceError> {
        let mut next = Instant::now();
        loop {
            if !ctx.wait_for_demand() {
                return Ok(());
            }
            if !self.act_out_faults(ctx)? {
                continue;
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
                payload: Payload::Yuv420(std::sync::Arc::new(planes)),
            });
        }
    }
}

/// The test pattern's controls: brightness and contrast of the background, so the control
/// API can be exercised end to end without a camera.
#[derive(Default)]
struct PatternControls {
    /// The values set so far and a generation bumped on each change.
    state: Mutex<(u64, Controls)>,
}

const PATTERN_CONTROLS: &[&str] = &["brightness", "contrast"];

impl PatternControls {
    fn snapshot(&self) -> (u64, Controls) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl CameraControls for PatternControls {
    fn supported(&self) -> Vec<&'static str> {
        PATTERN_CONTROLS.to_vec()
    }

    fn apply(&self, wanted: &Controls) -> Result<(), ControlError> {
        controls::check(wanted, PATTERN_CONTROLS)?;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 += 1;
        state.1.merge(wanted);
        Ok(())
    }

    fn current(&self) -> Controls {
        self.snapshot().1
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Yuv420Buffer;

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
    fn brightness_control_changes_the_picture() {
        let tp = TestPattern::new(320, 240, 30);
        let t = CaptureTime::now();
        // A point in the grey ramp, away from the moving parts and the text.
        let at = |f: &PooledI420| f.planes()[0][200 * 320 + 160];
        let before = at(&tp.render(1, t));
        let c = tp.controls().unwrap();
        c.apply(&serde_json::from_str(r#"{"brightness": 0.5}"#).unwrap())
            .unwrap();
        let after = at(&tp.render(2, t));
        assert!(after > before + 30, "{before} → {after}");
        assert!(matches!(
            c.apply(&serde_json::from_str(r#"{"hdr": "on"}"#).unwrap()),
            Err(ControlError::Unsupported(_))
        ));
        assert_eq!(c.current().brightness, Some(0.5));
    }

    #[test]
    fn tiny_frames_do_not_panic() {
        let tp = TestPattern::new(16, 16, 120);
        for seq in 0..300 {
            tp.render(seq, CaptureTime::now());
        }
    }
}
