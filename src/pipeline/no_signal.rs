//! The "no signal" picture: what every viewer sees while the source is down or stalled.
//!
//! A dark frame with NO SIGNAL, the reason (the source's own error text) and the time, so a
//! glance at any output — the player, an `<img>`, a timelapse snapshot — says what is wrong
//! and since when, instead of a frozen last frame.

use crate::source::font::{GLYPH_H, GLYPH_W};
use crate::source::i420::{format_utc, BufferPool, PooledI420, C_NEUTRAL};

/// Background luma: dark grey, so the frame is visibly not a black camera picture.
const Y_BACKGROUND: u8 = 40;
/// Text lines of the reason are cut to this many characters.
const MAX_LINE_CHARS: usize = 60;

/// Renders "no signal" frames of one size.
pub struct NoSignal {
    pool: BufferPool,
    width: usize,
    height: usize,
}

impl NoSignal {
    pub fn new(width: u32, height: u32) -> Self {
        NoSignal {
            pool: BufferPool::new(width as usize, height as usize),
            width: width as usize,
            height: height as usize,
        }
    }

    /// A frame saying NO SIGNAL, `reason` (wrapped) and the time `wall_us`.
    pub fn render(&self, reason: &str, wall_us: u64) -> PooledI420 {
        let mut frame = self.pool.take();
        let (w, h) = (self.width, self.height);
        let mut img = frame.canvas();
        img.fill(0, 0, w, h, (Y_BACKGROUND, C_NEUTRAL, C_NEUTRAL));
        // A red band across the middle third: unmistakable even as a thumbnail.
        let band_y = (h / 3) & !1;
        img.fill(0, band_y, w, (h / 3) & !1, (63, 102, 240));

        let big = (h / 60).max(1);
        let small = (h / 180).max(1);
        let title = "NO SIGNAL";
        let title_w = title.len() * (GLYPH_W + 1) * big;
        let x = w.saturating_sub(title_w) / 2;
        let y = band_y + ((h / 3).saturating_sub(GLYPH_H * big)) / 2;
        img.text(x, y, big, title);

        let mut lines: Vec<String> = wrap(&reason.to_uppercase(), MAX_LINE_CHARS);
        lines.push(format_utc(wall_us));
        let line_h = (GLYPH_H + 3) * small;
        let mut ty = (band_y + (h / 3) + 2 * line_h).min(h.saturating_sub(line_h));
        for line in lines.iter().take(4) {
            let lw = line.len() * (GLYPH_W + 1) * small;
            img.text(w.saturating_sub(lw) / 2, ty, small, line);
            ty += line_h;
        }
        frame
    }
}

/// Splits `text` into lines of at most `width` characters at spaces where possible.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let word: String = word.chars().take(width).collect();
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Yuv420Buffer;

    #[test]
    fn wraps_at_spaces() {
        assert_eq!(wrap("a bb ccc", 4), vec!["a bb", "ccc"]);
        assert_eq!(wrap("", 4), Vec::<String>::new());
        assert_eq!(wrap("abcdefgh", 4), vec!["abcd"]);
    }

    #[test]
    fn renders_at_any_size() {
        for (w, h) in [(16, 16), (320, 240), (1280, 720)] {
            let ns = NoSignal::new(w, h);
            let f = ns.render(
                "device /dev/video0 vanished: No such device",
                1_700_000_000_000_000,
            );
            assert_eq!(f.planes()[0].len(), (w * h) as usize);
        }
    }
}
