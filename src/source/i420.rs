//! Contiguous I420 frames (Y, then U, then V, no row padding) in recycled buffers, and the
//! little drawing kit the synthetic pictures (test pattern, "no signal") are made with.
//!
//! Sources that must convert what their device delivers (V4L2 YUYV or NV12) also write into
//! these buffers, so steady-state capture allocates nothing.

use std::sync::{Arc, Mutex};

use super::font::{self, GLYPH_W};
use crate::frame::Yuv420Buffer;

/// Luma and chroma values (BT.601 limited range).
pub const Y_BLACK: u8 = 16;
pub const Y_WHITE: u8 = 235;
pub const C_NEUTRAL: u8 = 128;

/// Byte length of an I420 frame (even dimensions).
pub fn i420_len(width: usize, height: usize) -> usize {
    width * height + 2 * (width / 2) * (height / 2)
}

/// Splits interleaved UV rows (NV12's chroma plane, `uv_stride` bytes apart) into separate
/// U and V planes of `cw` × `ch` samples, rows packed. Stops early, without panicking, where
/// the input or output is short.
pub fn deinterleave_uv(
    uv: &[u8],
    uv_stride: usize,
    (cw, ch): (usize, usize),
    u: &mut [u8],
    v: &mut [u8],
) {
    for ((row, u), v) in uv
        .chunks(uv_stride.max(1))
        .take(ch)
        .zip(u.chunks_mut(cw.max(1)))
        .zip(v.chunks_mut(cw.max(1)))
    {
        for ((pair, u), v) in row[..row.len().min(2 * cw)]
            .chunks_exact(2)
            .zip(u.iter_mut())
            .zip(v.iter_mut())
        {
            *u = pair[0];
            *v = pair[1];
        }
    }
}

/// Recycles I420 buffers of one size: a frame's buffer returns here when the encoder drops
/// it. Cheap to clone.
#[derive(Clone)]
pub struct BufferPool {
    width: usize,
    height: usize,
    free: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// Buffers kept for reuse; more than the encoders can hold at once is never needed.
const POOL_KEEP: usize = 8;

impl BufferPool {
    pub fn new(width: usize, height: usize) -> Self {
        BufferPool {
            width,
            height,
            free: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// A buffer with unspecified content, reused when one is free.
    pub fn take(&self) -> PooledI420 {
        let reused = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let buf = reused.unwrap_or_else(|| vec![0; i420_len(self.width, self.height)]);
        PooledI420 {
            buf: Some(buf),
            width: self.width,
            height: self.height,
            pool: self.clone(),
        }
    }
}

/// One I420 frame from a [`BufferPool`]; its buffer goes back to the pool on drop.
pub struct PooledI420 {
    buf: Option<Vec<u8>>,
    width: usize,
    height: usize,
    pool: BufferPool,
}

impl PooledI420 {
    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    /// The whole buffer (Y, U, V back to back).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.buf.as_deref_mut().expect("present until drop")
    }

    /// The three planes, writable.
    pub fn planes_mut(&mut self) -> [&mut [u8]; 3] {
        let (w, h) = (self.width, self.height);
        let buf = self.buf.as_deref_mut().expect("present until drop");
        let (y, rest) = buf.split_at_mut(w * h);
        let (u, v) = rest.split_at_mut((w / 2) * (h / 2));
        [y, u, v]
    }

    /// A canvas to draw on.
    pub fn canvas(&mut self) -> Canvas<'_> {
        let (w, h) = (self.width, self.height);
        Canvas {
            buf: self.as_mut_slice(),
            w,
            h,
        }
    }
}

impl Yuv420Buffer for PooledI420 {
    fn planes(&self) -> [&[u8]; 3] {
        let buf = self.buf.as_deref().expect("present until drop");
        let (y, rest) = buf.split_at(self.width * self.height);
        let (u, v) = rest.split_at((self.width / 2) * (self.height / 2));
        [y, u, v]
    }

    fn strides(&self) -> [usize; 3] {
        [self.width, self.width / 2, self.width / 2]
    }
}

impl Drop for PooledI420 {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            let mut free = self.pool.free.lock().unwrap_or_else(|p| p.into_inner());
            if free.len() < POOL_KEEP {
                free.push(buf);
            }
        }
    }
}

/// A contiguous I420 image (Y, then U, then V, no padding) to draw on.
pub struct Canvas<'a> {
    pub buf: &'a mut [u8],
    pub w: usize,
    pub h: usize,
}

impl Canvas<'_> {
    /// Fills a rectangle (clipped; even coordinates keep chroma exact).
    pub fn fill(&mut self, x: usize, y: usize, rw: usize, rh: usize, (yv, uv, vv): (u8, u8, u8)) {
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

    /// Draws `text` in white with font pixels `unit` wide, top-left at (x, y).
    pub fn text(&mut self, x: usize, y: usize, unit: usize, text: &str) {
        for (i, c) in text.chars().enumerate() {
            let gx = x + i * (GLYPH_W + 1) * unit;
            for (row, bits) in font::glyph(c).iter().enumerate() {
                for col in 0..GLYPH_W {
                    if bits >> (GLYPH_W - 1 - col) & 1 == 1 {
                        self.fill(
                            gx + col * unit,
                            y + row * unit,
                            unit,
                            unit,
                            (Y_WHITE, C_NEUTRAL, C_NEUTRAL),
                        );
                    }
                }
            }
        }
    }
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
    fn uv_rows_are_split_with_their_stride() {
        // 4x2 chroma samples, rows 10 bytes apart (2 bytes of padding each).
        let uv = [
            1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 11, 12, 13, 14, 15, 16, 17, 18, 0, 0,
        ];
        let (mut u, mut v) = ([0u8; 8], [0u8; 8]);
        deinterleave_uv(&uv, 10, (4, 2), &mut u, &mut v);
        assert_eq!(u, [1, 3, 5, 7, 11, 13, 15, 17]);
        assert_eq!(v, [2, 4, 6, 8, 12, 14, 16, 18]);
        // Short input: what is there is split, nothing panics.
        let (mut u, mut v) = ([0u8; 8], [0u8; 8]);
        deinterleave_uv(&uv[..5], 10, (4, 2), &mut u, &mut v);
        assert_eq!(&u[..2], &[1, 3]);
    }

    #[test]
    fn buffers_are_reused_and_planes_split_right() {
        let pool = BufferPool::new(64, 32);
        let mut a = pool.take();
        let ptr = a.as_mut_slice().as_ptr();
        {
            let [y, u, v] = a.planes_mut();
            assert_eq!((y.len(), u.len(), v.len()), (2048, 512, 512));
        }
        drop(a);
        let mut b = pool.take();
        assert_eq!(b.as_mut_slice().as_ptr(), ptr);
        assert_eq!(b.strides(), [64, 32, 32]);
    }
}
