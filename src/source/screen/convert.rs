//! Packed RGB screen pixels (any 16, 24 or 32-bit layout the framebuffer's bitfields
//! describe) to I420, scaled into the frame size in the same pass.
//!
//! One pass per frame, row by row, with a few rows of scratch: each source row is unpacked
//! to 8-bit RGB, resampled horizontally into a small ring of rows, the ring is resampled
//! vertically into output rows, and each pair of output rows becomes two luma rows and one
//! chroma row. No full-frame intermediate exists, so a 1920x1080 screen scaled to 640x360
//! needs about 30 KiB of scratch (the ring holds 8 rows of 640 pixels), not 8 MB.
//!
//! The screen keeps its aspect ratio: it is fitted into the frame and the rest is black,
//! like the ffmpeg source's letterboxing, so both kinds of screen look the same.
//!
//! Colours are BT.601 limited range, like every other picamd source (the test pattern's
//! colours are the same numbers): Y 16..=235, Cb/Cr 16..=240 around 128.

use std::fmt;

/// Fixed-point resampling weights: 1.0 is `1 << WEIGHT_BITS`. 14 bits keep a sum of
/// weight × (8-bit value << [`H_FRAC_BITS`]) below 2^32 (16384 × 16320 ≈ 2^28).
const WEIGHT_BITS: u32 = 14;
/// Extra precision of horizontally resampled values (8.6 fixed point in a u16), so the
/// vertical pass does not round twice.
const H_FRAC_BITS: u32 = 6;
/// Largest screen edge accepted (16384 is DRM's usual maximum framebuffer width).
pub const MAX_SCREEN_EDGE: usize = 16384;

/// BT.601 limited-range coefficients × 2^16: Y' = 16 + 219/255 (0.299 R + 0.587 G +
/// 0.114 B), Cb and Cr = 128 + 224/255 × (B − Y or R − Y scaled to ±0.5). The rows of the
/// chroma matrix sum to zero, so grey stays neutral exactly.
const KY: [i32; 3] = [16829, 33039, 6416];
const KU: [i32; 3] = [-9714, -19070, 28784];
const KV: [i32; 3] = [28784, -24103, -4681];

/// Where one colour channel sits in a pixel value (bits, least significant = offset 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channel {
    pub offset: u32,
    pub length: u32,
}

/// A packed true-colour pixel layout: `bits_per_pixel` bits per pixel, read as one
/// native-endian integer, with the three channels at the bitfields the device reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelLayout {
    pub bits_per_pixel: u32,
    pub red: Channel,
    pub green: Channel,
    pub blue: Channel,
}

/// A layout this module cannot read, with what it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported pixel format: {0}; picamd reads 16, 24 and 32-bit true-colour pixels (RGB565, RGB888, XRGB8888 and their BGR orders)")]
pub struct FormatError(pub String);

impl PixelLayout {
    /// RGB565: red in the top 5 bits.
    pub const RGB565: PixelLayout = PixelLayout::new(16, (11, 5), (5, 6), (0, 5));
    /// XRGB8888: bytes B, G, R, X in memory (little-endian).
    pub const XRGB8888: PixelLayout = PixelLayout::new(32, (16, 8), (8, 8), (0, 8));

    /// A layout from (offset, length) per channel.
    pub const fn new(bpp: u32, r: (u32, u32), g: (u32, u32), b: (u32, u32)) -> PixelLayout {
        PixelLayout {
            bits_per_pixel: bpp,
            red: Channel {
                offset: r.0,
                length: r.1,
            },
            green: Channel {
                offset: g.0,
                length: g.1,
            },
            blue: Channel {
                offset: b.0,
                length: b.1,
            },
        }
    }

    pub fn bytes_per_pixel(&self) -> usize {
        self.bits_per_pixel as usize / 8
    }

    /// Checks that the layout can be read: 16, 24 or 32 bits, each channel 1..=16 bits
    /// inside the pixel.
    pub fn check(&self) -> Result<(), FormatError> {
        if !matches!(self.bits_per_pixel, 16 | 24 | 32) {
            return Err(FormatError(format!(
                "{} bits per pixel",
                self.bits_per_pixel
            )));
        }
        for (name, c) in [
            ("red", self.red),
            ("green", self.green),
            ("blue", self.blue),
        ] {
            if c.length == 0 || c.length > 16 || c.offset + c.length > self.bits_per_pixel {
                return Err(FormatError(format!(
                    "{self}: the {name} channel ({} bits at bit {}) does not fit a {}-bit pixel",
                    c.length, c.offset, self.bits_per_pixel
                )));
            }
        }
        Ok(())
    }
}

/// The DRM-style name when the layout is a common one (XRGB8888, BGR565, …), else the
/// bitfields spelled out.
impl fmt::Display for PixelLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (r, g, b) = (self.red, self.green, self.blue);
        let lens = (r.length, g.length, b.length);
        let rgb = r.offset > g.offset && g.offset > b.offset;
        let bgr = b.offset > g.offset && g.offset > r.offset;
        let packed_low = r.offset.min(b.offset) == 0;
        let order = match (rgb, bgr) {
            (true, _) => "RGB",
            (_, true) => "BGR",
            _ => "",
        };
        match (self.bits_per_pixel, lens, order, packed_low) {
            (16, (5, 6, 5), o, true) if !o.is_empty() => write!(f, "{o}565"),
            (24, (8, 8, 8), o, true) if !o.is_empty() => write!(f, "{o}888"),
            (32, (8, 8, 8), o, true) if !o.is_empty() => write!(f, "X{o}8888"),
            (32, (10, 10, 10), o, true) if !o.is_empty() => write!(f, "X{o}2101010"),
            _ => write!(
                f,
                "{} bpp, red {}@{}, green {}@{}, blue {}@{}",
                self.bits_per_pixel, r.length, r.offset, g.length, g.offset, b.length, b.offset
            ),
        }
    }
}

/// One channel's extraction: `(value >> shift) & mask` indexes `lut`, which expands the
/// channel's bits to 0..=255 (5 bits: 31 → 255; channels over 8 bits keep their top 8).
struct ChannelDecoder {
    shift: u32,
    mask: u32,
    lut: [u8; 256],
}

impl ChannelDecoder {
    fn new(c: Channel) -> Self {
        let kept = c.length.min(8);
        let max = (1u32 << kept) - 1;
        let mut lut = [0u8; 256];
        for (i, v) in lut.iter_mut().enumerate().take(max as usize + 1) {
            *v = ((i as u32 * 255 + max / 2) / max) as u8;
        }
        ChannelDecoder {
            shift: c.offset + (c.length - kept),
            mask: max,
            lut,
        }
    }

    #[inline]
    fn get(&self, px: u32) -> u8 {
        self.lut[((px >> self.shift) & self.mask) as usize]
    }
}

/// Unpacks rows of one [`PixelLayout`] to 8-bit RGB.
pub struct RowDecoder {
    bytes: usize,
    r: ChannelDecoder,
    g: ChannelDecoder,
    b: ChannelDecoder,
    /// For 32-bit layouts whose channels are whole bytes (XRGB8888, XBGR8888, the KMS
    /// default): the byte of each channel, so unpacking is three byte copies per pixel
    /// (measured 1280x800: about 3x faster than the shift-and-table path).
    bytes_at: Option<[usize; 3]>,
}

impl RowDecoder {
    pub fn new(layout: &PixelLayout) -> Result<Self, FormatError> {
        layout.check()?;
        let whole_byte = |c: Channel| {
            (c.length == 8 && c.offset % 8 == 0).then(|| {
                let i = c.offset as usize / 8;
                // The byte's place in memory: the value's low byte comes first on
                // little-endian machines.
                if cfg!(target_endian = "little") {
                    i
                } else {
                    3 - i
                }
            })
        };
        let bytes_at = match (
            layout.bits_per_pixel,
            whole_byte(layout.red),
            whole_byte(layout.green),
            whole_byte(layout.blue),
        ) {
            (32, Some(r), Some(g), Some(b)) => Some([r, g, b]),
            _ => None,
        };
        Ok(RowDecoder {
            bytes: layout.bytes_per_pixel(),
            r: ChannelDecoder::new(layout.red),
            g: ChannelDecoder::new(layout.green),
            b: ChannelDecoder::new(layout.blue),
            bytes_at,
        })
    }

    /// Unpacks the pixels of `src` (whole pixels only) into `rgb` (3 bytes a pixel), as
    /// many as both hold.
    pub fn decode(&self, src: &[u8], rgb: &mut [u8]) {
        if let Some([r, g, b]) = self.bytes_at {
            // `& 3`: the indices are known to be in 0..4, so no bounds check per pixel.
            let (r, g, b) = (r & 3, g & 3, b & 3);
            for (p, o) in src.chunks_exact(4).zip(rgb.chunks_exact_mut(3)) {
                o[0] = p[r];
                o[1] = p[g];
                o[2] = p[b];
            }
            return;
        }
        let out = rgb.chunks_exact_mut(3);
        let put = |px: u32, o: &mut [u8]| {
            o[0] = self.r.get(px);
            o[1] = self.g.get(px);
            o[2] = self.b.get(px);
        };
        // One loop per pixel size, so the byte gathering is not a per-pixel branch.
        match self.bytes {
            2 => src
                .chunks_exact(2)
                .zip(out)
                .for_each(|(p, o)| put(u16::from_ne_bytes([p[0], p[1]]) as u32, o)),
            3 => src
                .chunks_exact(3)
                .zip(out)
                .for_each(|(p, o)| put(u24(p[0], p[1], p[2]), o)),
            _ => src
                .chunks_exact(4)
                .zip(out)
                .for_each(|(p, o)| put(u32::from_ne_bytes([p[0], p[1], p[2], p[3]]), o)),
        }
    }
}

/// A 24-bit pixel value from its three bytes in memory order.
#[inline]
fn u24(a: u8, b: u8, c: u8) -> u32 {
    if cfg!(target_endian = "little") {
        u32::from_le_bytes([a, b, c, 0])
    } else {
        u32::from_be_bytes([0, a, b, c])
    }
}

/// Resampling weights from `src` samples to `dst`: for output sample `i`, source samples
/// `first[i] ..first[i] + count[i]` weighted by `weights[i * taps ..]`, each set summing to
/// `1 << WEIGHT_BITS`.
///
/// The kernel is a tent around the output sample's centre in source coordinates, one
/// source sample wide when enlarging (bilinear) and as wide as the scale factor when
/// shrinking, so that every source pixel counts (a 1-pixel line of text in a 1920-wide
/// screen shrunk to 640 still shows, dimmer, instead of vanishing in 2 of 3 positions).
/// Equal sizes give one tap of weight 1: an exact copy.
#[derive(Debug)]
struct Taps {
    taps: usize,
    first: Vec<usize>,
    count: Vec<usize>,
    weights: Vec<u32>,
}

impl Taps {
    fn new(src: usize, dst: usize) -> Taps {
        let scale = src as f64 / dst as f64;
        let radius = scale.max(1.0);
        // Taps with weight > 0 lie strictly within ±radius of the centre.
        let taps = (2.0 * radius).ceil() as usize + 1;
        let mut t = Taps {
            taps,
            first: Vec::with_capacity(dst),
            count: Vec::with_capacity(dst),
            weights: vec![0; dst * taps],
        };
        let mut raw: Vec<(usize, f64)> = Vec::with_capacity(taps + 2);
        for i in 0..dst {
            let centre = (i as f64 + 0.5) * scale - 0.5;
            raw.clear();
            let lo = (centre - radius).floor() as i64;
            let hi = (centre + radius).ceil() as i64;
            for j in lo..=hi {
                let w = 1.0 - (j as f64 - centre).abs() / radius;
                if w <= 0.0 {
                    continue;
                }
                // Past the edge: the edge pixel again (clamped), so borders keep their
                // colour instead of fading to black.
                let j = j.clamp(0, src as i64 - 1) as usize;
                match raw.last_mut() {
                    Some((k, acc)) if *k == j => *acc += w,
                    _ => raw.push((j, w)),
                }
            }
            let total: f64 = raw.iter().map(|(_, w)| w).sum();
            let one = 1u32 << WEIGHT_BITS;
            let row = &mut t.weights[i * taps..(i + 1) * taps];
            let mut sum = 0;
            for (slot, (_, w)) in row.iter_mut().zip(&raw) {
                *slot = (w / total * one as f64).round() as u32;
                sum += *slot;
            }
            // Rounding may leave the sum a unit or two off 1.0: the biggest weight takes
            // the difference, so flat areas stay exactly flat.
            let n = raw.len().min(taps);
            if let Some(big) = row[..n].iter_mut().max() {
                *big = (*big + one).saturating_sub(sum);
            }
            t.first.push(raw.first().map_or(0, |(j, _)| *j));
            t.count.push(n);
        }
        t
    }

    #[inline]
    fn of(&self, i: usize) -> (usize, &[u32]) {
        let w = &self.weights[i * self.taps..i * self.taps + self.count[i]];
        (self.first[i], w)
    }
}

/// A rectangle in the frame, in pixels; even coordinates and sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

/// Where a `src_w`×`src_h` screen lands in an `out_w`×`out_h` frame when scaled to fit
/// with its aspect ratio kept, centred; edges and offsets even (4:2:0 chroma), at least 2.
pub fn fit(src_w: usize, src_h: usize, out_w: usize, out_h: usize) -> Rect {
    let even = |v: usize| (v & !1).max(2);
    let (w, h) = if src_w * out_h >= src_h * out_w {
        // Width-limited: full width, height by the ratio, rounded to nearest.
        (out_w, (src_h * out_w * 2 + src_w) / (2 * src_w))
    } else {
        ((src_w * out_h * 2 + src_h) / (2 * src_h), out_h)
    };
    let (w, h) = (even(w).min(out_w), even(h).min(out_h));
    Rect {
        x: ((out_w - w) / 2) & !1,
        y: ((out_h - h) / 2) & !1,
        w,
        h,
    }
}

/// What a screen's pixels look like in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScreenShape {
    pub width: usize,
    pub height: usize,
    /// Bytes from one row's start to the next (≥ width × bytes per pixel).
    pub stride: usize,
    pub layout: PixelLayout,
}

impl ScreenShape {
    /// Bytes a picture of this shape spans, from its first pixel to its last.
    pub fn span(&self) -> usize {
        (self.height - 1) * self.stride + self.width * self.layout.bytes_per_pixel()
    }
}

/// Converts pictures of one [`ScreenShape`] into I420 frames of one size. Built once per
/// screen geometry; holds only row-sized scratch.
pub struct ScreenConverter {
    shape: ScreenShape,
    out_w: usize,
    out_h: usize,
    fit: Rect,
    decoder: RowDecoder,
    /// `None` when the screen is exactly the fitted size: rows are only unpacked.
    scale: Option<Scaler>,
    /// One source row unpacked to RGB.
    unpacked: Vec<u8>,
    /// Two output rows of RGB, the pair that makes one chroma row.
    rgb: [Vec<u8>; 2],
}

/// Scratch and weights for the resampling path.
struct Scaler {
    h: Taps,
    v: Taps,
    /// Horizontally resampled source rows (8.6 fixed point), `v.taps` slots, slot =
    /// source row % slots; `held[slot]` says which row a slot holds.
    ring: Vec<u16>,
    held: Vec<Option<usize>>,
    acc: Vec<u32>,
}

/// The picture handed to [`ScreenConverter::convert`] is shorter than its shape says.
#[derive(Debug, thiserror::Error)]
#[error("the screen's memory holds {got} bytes where {want} are needed")]
pub struct ShortPicture {
    pub got: usize,
    pub want: usize,
}

impl ScreenConverter {
    pub fn new(shape: ScreenShape, out_w: usize, out_h: usize) -> Result<Self, FormatError> {
        let decoder = RowDecoder::new(&shape.layout)?;
        if shape.width == 0
            || shape.height == 0
            || shape.width > MAX_SCREEN_EDGE
            || shape.height > MAX_SCREEN_EDGE
        {
            return Err(FormatError(format!(
                "a {}x{} screen (edges must be 1..={MAX_SCREEN_EDGE})",
                shape.width, shape.height
            )));
        }
        if shape.stride < shape.width * shape.layout.bytes_per_pixel() {
            return Err(FormatError(format!(
                "rows of {} bytes for {} pixels of {}",
                shape.stride, shape.width, shape.layout
            )));
        }
        let (out_w, out_h) = (out_w & !1, out_h & !1);
        let fit = fit(shape.width, shape.height, out_w.max(2), out_h.max(2));
        let scale = (fit.w != shape.width || fit.h != shape.height).then(|| {
            let v = Taps::new(shape.height, fit.h);
            Scaler {
                h: Taps::new(shape.width, fit.w),
                ring: vec![0; v.taps * fit.w * 3],
                held: vec![None; v.taps],
                acc: vec![0; fit.w * 3],
                v,
            }
        });
        Ok(ScreenConverter {
            shape,
            out_w,
            out_h,
            fit,
            decoder,
            scale,
            unpacked: vec![0; shape.width * 3],
            rgb: [vec![0; fit.w * 3], vec![0; fit.w * 3]],
        })
    }

    /// Where the screen lands in the frame.
    pub fn fit(&self) -> Rect {
        self.fit
    }

    /// Converts the picture `src` (its first visible pixel first, rows `stride` apart) into
    /// the I420 planes `[y, u, v]` of the frame (packed rows: strides `out_w`, `out_w / 2`).
    pub fn convert(&mut self, src: &[u8], planes: [&mut [u8]; 3]) -> Result<(), ShortPicture> {
        let want = self.shape.span();
        if src.len() < want {
            return Err(ShortPicture {
                got: src.len(),
                want,
            });
        }
        let [y_plane, u_plane, v_plane] = planes;
        let (w, cw) = (self.out_w, self.out_w / 2);
        if y_plane.len() < w * self.out_h || u_plane.len().min(v_plane.len()) < cw * self.out_h / 2
        {
            return Err(ShortPicture {
                got: y_plane.len(),
                want: w * self.out_h,
            });
        }
        self.letterbox(y_plane, u_plane, v_plane);
        if let Some(s) = self.scale.as_mut() {
            // A new picture: what the ring holds is from the previous one.
            s.held.iter_mut().for_each(|h| *h = None);
        }
        let Rect { x, y, w: fw, .. } = self.fit;
        for pair in 0..self.fit.h / 2 {
            for k in 0..2 {
                self.output_row(src, 2 * pair + k, k);
            }
            let oy = y + 2 * pair;
            let (upper, lower) = y_plane[oy * w..(oy + 2) * w].split_at_mut(w);
            let chroma = oy / 2 * cw + x / 2..oy / 2 * cw + (x + fw) / 2;
            rgb_pair_to_i420(
                [&self.rgb[0], &self.rgb[1]],
                [&mut upper[x..x + fw], &mut lower[x..x + fw]],
                &mut u_plane[chroma.clone()],
                &mut v_plane[chroma],
            );
        }
        Ok(())
    }

    /// Black outside the fitted picture (written every frame: pooled buffers come back
    /// with anything in them).
    fn letterbox(&self, y: &mut [u8], u: &mut [u8], v: &mut [u8]) {
        let (w, h, r) = (self.out_w, self.out_h, self.fit);
        for row in 0..h {
            let line = &mut y[row * w..(row + 1) * w];
            if row < r.y || row >= r.y + r.h {
                line.fill(16);
            } else {
                line[..r.x].fill(16);
                line[r.x + r.w..].fill(16);
            }
        }
        let (cw, cr) = (
            w / 2,
            Rect {
                x: r.x / 2,
                y: r.y / 2,
                w: r.w / 2,
                h: r.h / 2,
            },
        );
        for plane in [u, v] {
            for row in 0..h / 2 {
                let line = &mut plane[row * cw..(row + 1) * cw];
                if row < cr.y || row >= cr.y + cr.h {
                    line.fill(128);
                } else {
                    line[..cr.x].fill(128);
                    line[cr.x + cr.w..].fill(128);
                }
            }
        }
    }

    /// Fills `self.rgb[k]` with row `oy` of the fitted picture.
    fn output_row(&mut self, src: &[u8], oy: usize, k: usize) {
        let stride = self.shape.stride;
        let row_bytes = self.shape.width * self.shape.layout.bytes_per_pixel();
        let Some(s) = self.scale.as_mut() else {
            let row = &src[oy * stride..oy * stride + row_bytes];
            self.decoder.decode(row, &mut self.rgb[k]);
            return;
        };
        let fw = self.fit.w;
        let (first, weights) = s.v.of(oy);
        let slots = s.held.len();
        // Bring the rows this output row needs into the ring, each unpacked and
        // resampled horizontally once per picture.
        for sy in first..first + weights.len() {
            let slot = sy % slots;
            if s.held[slot] == Some(sy) {
                continue;
            }
            let row = &src[sy * stride..sy * stride + row_bytes];
            self.decoder.decode(row, &mut self.unpacked);
            let out = &mut s.ring[slot * fw * 3..(slot + 1) * fw * 3];
            resample_row(&self.unpacked, &s.h, out);
            s.held[slot] = Some(sy);
        }
        s.acc.iter_mut().for_each(|a| *a = 0);
        for (sy, &wgt) in (first..).zip(weights) {
            let slot = sy % slots;
            let line = &s.ring[slot * fw * 3..(slot + 1) * fw * 3];
            for (a, &v) in s.acc.iter_mut().zip(line) {
                *a += wgt * v as u32;
            }
        }
        let shift = WEIGHT_BITS + H_FRAC_BITS;
        for (o, a) in self.rgb[k].iter_mut().zip(&s.acc) {
            *o = ((a + (1 << (shift - 1))) >> shift).min(255) as u8;
        }
    }
}

/// One unpacked RGB row resampled to `taps`' output width, in 8.6 fixed point.
fn resample_row(rgb: &[u8], taps: &Taps, out: &mut [u16]) {
    let round = 1u32 << (WEIGHT_BITS - H_FRAC_BITS - 1);
    for (i, o) in out.chunks_exact_mut(3).enumerate() {
        let (first, weights) = taps.of(i);
        let mut sum = [0u32; 3];
        for (px, &w) in rgb[first * 3..].chunks_exact(3).zip(weights) {
            sum[0] += w * px[0] as u32;
            sum[1] += w * px[1] as u32;
            sum[2] += w * px[2] as u32;
        }
        for c in 0..3 {
            o[c] = ((sum[c] + round) >> (WEIGHT_BITS - H_FRAC_BITS)) as u16;
        }
    }
}

/// Two RGB rows to two luma rows and the chroma row between them (each chroma sample from
/// the 2x2 block's summed RGB).
fn rgb_pair_to_i420(
    [top, bottom]: [&[u8]; 2],
    [y0, y1]: [&mut [u8]; 2],
    u: &mut [u8],
    v: &mut [u8],
) {
    let luma = |p: &[u8]| {
        let s = KY[0] * p[0] as i32 + KY[1] * p[1] as i32 + KY[2] * p[2] as i32;
        (16 + ((s + (1 << 15)) >> 16)).clamp(0, 255) as u8
    };
    for (px, y) in top.chunks_exact(3).zip(y0.iter_mut()) {
        *y = luma(px);
    }
    for (px, y) in bottom.chunks_exact(3).zip(y1.iter_mut()) {
        *y = luma(px);
    }
    let chroma = |k: &[i32; 3], s: [i32; 3]| {
        // Sums of four pixels: × 2^16 × 4 = 2^18.
        let c = k[0] * s[0] + k[1] * s[1] + k[2] * s[2];
        (128 + ((c + (1 << 17)) >> 18)).clamp(0, 255) as u8
    };
    // Rows are an even number of pixels (the fitted width is even): 2x2 blocks, 6 bytes
    // of each row per chroma sample.
    for (((t, b), u), v) in top
        .chunks_exact(6)
        .zip(bottom.chunks_exact(6))
        .zip(u.iter_mut())
        .zip(v.iter_mut())
    {
        let s = [0, 1, 2].map(|c| t[c] as i32 + t[c + 3] as i32 + b[c] as i32 + b[c + 3] as i32);
        *u = chroma(&KU, s);
        *v = chroma(&KV, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RED: (u8, u8, u8) = (81, 90, 240);
    const GREEN: (u8, u8, u8) = (145, 54, 34);
    const BLUE: (u8, u8, u8) = (41, 240, 110);
    const WHITE: (u8, u8, u8) = (235, 128, 128);
    const BLACK: (u8, u8, u8) = (16, 128, 128);

    const BGR565: PixelLayout = PixelLayout::new(16, (0, 5), (5, 6), (11, 5));
    const XBGR8888: PixelLayout = PixelLayout::new(32, (0, 8), (8, 8), (16, 8));
    const RGB888: PixelLayout = PixelLayout::new(24, (16, 8), (8, 8), (0, 8));
    const BGR888: PixelLayout = PixelLayout::new(24, (0, 8), (8, 8), (16, 8));

    /// Packs an RGB colour into `layout` the way a display driver would (top bits kept).
    fn pack(layout: &PixelLayout, (r, g, b): (u8, u8, u8)) -> Vec<u8> {
        let put = |c: Channel, v: u8| ((v as u32) >> (8 - c.length.min(8))) << c.offset;
        let px = put(layout.red, r) | put(layout.green, g) | put(layout.blue, b);
        px.to_ne_bytes()[..layout.bytes_per_pixel()].to_vec()
    }

    /// A `w`×`h` screen in `layout` whose pixel (x, y) is `colour(x, y)`, rows padded
    /// with `pad` bytes of 0xA5 (which must never show).
    fn screen(
        layout: PixelLayout,
        w: usize,
        h: usize,
        pad: usize,
        colour: impl Fn(usize, usize) -> (u8, u8, u8),
    ) -> (ScreenShape, Vec<u8>) {
        let mut mem = Vec::new();
        for y in 0..h {
            for x in 0..w {
                mem.extend(pack(&layout, colour(x, y)));
            }
            mem.extend(std::iter::repeat_n(0xA5, pad));
        }
        let shape = ScreenShape {
            width: w,
            height: h,
            stride: w * layout.bytes_per_pixel() + pad,
            layout,
        };
        (shape, mem)
    }

    struct Frame {
        w: usize,
        buf: Vec<u8>,
        h: usize,
    }

    impl Frame {
        fn at(&self, x: usize, y: usize) -> (u8, u8, u8) {
            let (w, h) = (self.w, self.h);
            let c = w * h + (y / 2) * (w / 2) + x / 2;
            (
                self.buf[y * w + x],
                self.buf[c],
                self.buf[c + (w / 2) * (h / 2)],
            )
        }
        fn luma(&self, y: usize) -> &[u8] {
            &self.buf[y * self.w..(y + 1) * self.w]
        }
    }

    fn convert(shape: ScreenShape, mem: &[u8], w: usize, h: usize) -> (Frame, Rect) {
        let mut conv = ScreenConverter::new(shape, w, h).expect("supported");
        // Garbage in the buffer first: every byte must be written.
        let mut buf = vec![0x5A; w * h * 3 / 2];
        let (yp, rest) = buf.split_at_mut(w * h);
        let (up, vp) = rest.split_at_mut(w * h / 4);
        conv.convert(mem, [yp, up, vp]).expect("long enough");
        (Frame { w, h, buf }, conv.fit())
    }

    fn close(a: (u8, u8, u8), b: (u8, u8, u8), tol: u8) -> bool {
        a.0.abs_diff(b.0) <= tol && a.1.abs_diff(b.1) <= tol && a.2.abs_diff(b.2) <= tol
    }

    #[test]
    fn every_layout_unpacks_to_the_reference_colours() {
        // Full-intensity primaries and white, and a mid grey: each layout, each channel.
        let colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)];
        for layout in [
            PixelLayout::RGB565,
            BGR565,
            PixelLayout::XRGB8888,
            XBGR8888,
            RGB888,
            BGR888,
        ] {
            let dec = RowDecoder::new(&layout).unwrap();
            let src: Vec<u8> = colours.iter().flat_map(|&c| pack(&layout, c)).collect();
            let mut rgb = [0u8; 12];
            dec.decode(&src, &mut rgb);
            assert_eq!(
                rgb,
                [255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255],
                "{layout}"
            );
        }
        // 565's 5-bit and 6-bit values expand to the full range: 16/31 → 132, 32/63 → 130.
        let dec = RowDecoder::new(&PixelLayout::RGB565).unwrap();
        let mut rgb = [0u8; 3];
        dec.decode(&(16u16 << 11 | 32 << 5 | 16).to_ne_bytes(), &mut rgb);
        assert_eq!(rgb, [132, 130, 132]);
    }

    #[test]
    fn rgb_and_bgr_bitfields_are_told_apart() {
        // The same bytes read with red low or high: red and blue swap.
        let bytes = 0xF800u16.to_ne_bytes();
        let mut rgb = [0u8; 3];
        RowDecoder::new(&PixelLayout::RGB565)
            .unwrap()
            .decode(&bytes, &mut rgb);
        assert_eq!(rgb, [255, 0, 0]);
        RowDecoder::new(&BGR565).unwrap().decode(&bytes, &mut rgb);
        assert_eq!(rgb, [0, 0, 255]);
        // XRGB8888 in memory is B, G, R, X; XBGR8888 is R, G, B, X.
        let mem = [0x00, 0x00, 0xFF, 0x00];
        RowDecoder::new(&PixelLayout::XRGB8888)
            .unwrap()
            .decode(&mem, &mut rgb);
        assert_eq!(rgb, [255, 0, 0]);
        RowDecoder::new(&XBGR8888).unwrap().decode(&mem, &mut rgb);
        assert_eq!(rgb, [0, 0, 255]);
    }

    #[test]
    fn layouts_are_named_and_odd_ones_refused() {
        assert_eq!(PixelLayout::RGB565.to_string(), "RGB565");
        assert_eq!(BGR565.to_string(), "BGR565");
        assert_eq!(PixelLayout::XRGB8888.to_string(), "XRGB8888");
        assert_eq!(XBGR8888.to_string(), "XBGR8888");
        assert_eq!(RGB888.to_string(), "RGB888");
        assert_eq!(
            PixelLayout::new(32, (10, 10), (0, 10), (20, 10)).to_string(),
            "32 bpp, red 10@10, green 10@0, blue 10@20"
        );
        let e = PixelLayout::new(8, (0, 3), (3, 3), (6, 2))
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("8 bits per pixel"), "{e}");
        let e = PixelLayout::new(16, (11, 6), (5, 6), (0, 5))
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("red channel"), "{e}");
        let e = PixelLayout::new(32, (16, 8), (8, 0), (0, 8))
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("green channel"), "{e}");
    }

    #[test]
    fn same_size_copies_with_the_stride_and_exact_bt601_values() {
        // Quadrants red | green / blue | white, rows padded by 6 bytes, in every layout.
        for layout in [
            PixelLayout::RGB565,
            BGR565,
            PixelLayout::XRGB8888,
            XBGR8888,
            RGB888,
        ] {
            let (shape, mem) = screen(layout, 8, 4, 6, |x, y| match (x < 4, y < 2) {
                (true, true) => (255, 0, 0),
                (false, true) => (0, 255, 0),
                (true, false) => (0, 0, 255),
                (false, false) => (255, 255, 255),
            });
            let (f, fit) = convert(shape, &mem, 8, 4);
            assert_eq!(
                fit,
                Rect {
                    x: 0,
                    y: 0,
                    w: 8,
                    h: 4
                }
            );
            for (x, y, want) in [(0, 0, RED), (7, 1, GREEN), (2, 3, BLUE), (6, 2, WHITE)] {
                assert_eq!(f.at(x, y), want, "{layout} at ({x}, {y})");
            }
        }
    }

    #[test]
    fn odd_sized_screens_are_fitted_and_stay_flat() {
        // A 5x3 green screen (odd both ways, padded rows) into 16x16: 16x10 in the middle,
        // black bars above and below.
        let (shape, mem) = screen(RGB888, 5, 3, 1, |_, _| (0, 255, 0));
        let (f, fit) = convert(shape, &mem, 16, 16);
        assert_eq!(
            fit,
            Rect {
                x: 0,
                y: 2,
                w: 16,
                h: 10
            }
        );
        for y in 0..16 {
            for x in 0..16 {
                let want = if (2..12).contains(&y) { GREEN } else { BLACK };
                assert_eq!(f.at(x, y), want, "({x}, {y})");
            }
        }
        // Shrinking an odd screen: 101x75 flat blue to 32x24 (fit 32x23.8, so 32x24).
        let (shape, mem) = screen(PixelLayout::XRGB8888, 101, 75, 12, |_, _| (0, 0, 255));
        let (f, fit) = convert(shape, &mem, 32, 24);
        assert_eq!((fit.w, fit.h), (32, 24));
        for y in 0..24 {
            for x in 0..32 {
                assert_eq!(f.at(x, y), BLUE, "({x}, {y})");
            }
        }
    }

    #[test]
    fn edges_stay_where_they_are_when_scaling_up_and_down() {
        // A 64x32 screen: black top-left quadrant, white elsewhere, so a vertical edge at
        // x = 32 (in the top half) and a horizontal one at y = 16 (in the left half).
        let (shape, mem) = screen(PixelLayout::XRGB8888, 64, 32, 0, |x, y| {
            if x >= 32 || y >= 16 {
                (255, 255, 255)
            } else {
                (0, 0, 0)
            }
        });
        for (w, h) in [(16, 8), (256, 128), (48, 24), (64, 32)] {
            let (f, fit) = convert(shape, &mem, w, h);
            assert_eq!(fit, Rect { x: 0, y: 0, w, h });
            let row = f.luma(h / 4);
            // Far from the edge: pure black and white.
            assert_eq!(row[w / 8], 16, "{w}x{h}");
            assert_eq!(row[w * 7 / 8], 235, "{w}x{h}");
            // The edge is centred at w / 2: the two pixels around it mirror each other, and
            // the ramp is at most one source pixel (scaled) wide on each side.
            let (l, r) = (row[w / 2 - 1] as i32, row[w / 2] as i32);
            assert!((l + r - (16 + 235)).abs() <= 2, "{w}x{h}: {l} {r}");
            let reach = (w / 64).max(1) + 1;
            assert_eq!(row[w / 2 - 1 - reach], 16, "{w}x{h}: {row:?}");
            assert_eq!(row[w / 2 + reach], 235, "{w}x{h}: {row:?}");
            // The horizontal edge likewise, in the left half's column.
            let col: Vec<u8> = (0..h).map(|y| f.luma(y)[w / 8]).collect();
            assert_eq!(col[h / 2 - 1 - reach], 16, "{w}x{h}: {col:?}");
            assert_eq!(col[h / 2 + reach], 235, "{w}x{h}: {col:?}");
            let (t, b) = (col[h / 2 - 1] as i32, col[h / 2] as i32);
            assert!((t + b - (16 + 235)).abs() <= 2, "{w}x{h}: {t} {b}");
        }
    }

    #[test]
    fn a_wider_screen_is_letterboxed_in_the_middle() {
        // 1280x800 (16:10) into 1280x720: 1152x720 with 64-pixel black bars left and right.
        assert_eq!(
            fit(1280, 800, 1280, 720),
            Rect {
                x: 64,
                y: 0,
                w: 1152,
                h: 720
            }
        );
        // 1366x768 into 1280x720: rounding keeps the full frame.
        assert_eq!(
            fit(1366, 768, 1280, 720),
            Rect {
                x: 0,
                y: 0,
                w: 1280,
                h: 720
            }
        );
        assert_eq!(
            fit(1, 1000, 64, 64),
            Rect {
                x: 30,
                y: 0,
                w: 2,
                h: 64
            }
        );
        let (shape, mem) = screen(PixelLayout::RGB565, 40, 10, 2, |_, _| (255, 0, 0));
        let (f, fit) = convert(shape, &mem, 16, 16);
        assert_eq!(
            fit,
            Rect {
                x: 0,
                y: 6,
                w: 16,
                h: 4
            }
        );
        assert_eq!(f.at(8, 2), BLACK);
        assert_eq!(f.at(8, 7), RED);
        assert_eq!(f.at(8, 13), BLACK);
    }

    #[test]
    fn weights_sum_to_one_and_identity_is_one_tap() {
        for (src, dst) in [
            (1920, 640),
            (640, 1920),
            (7, 3),
            (3, 7),
            (1, 16),
            (16, 1),
            (5, 5),
        ] {
            let t = Taps::new(src, dst);
            for i in 0..dst {
                let (first, w) = t.of(i);
                assert_eq!(w.iter().sum::<u32>(), 1 << WEIGHT_BITS, "{src}→{dst} #{i}");
                assert!(first + w.len() <= src, "{src}→{dst} #{i}");
            }
        }
        let t = Taps::new(5, 5);
        assert!((0..5).all(|i| t.of(i) == (i, &[1 << WEIGHT_BITS][..])));
    }

    #[test]
    fn short_input_is_an_error_not_a_panic() {
        let (shape, mem) = screen(PixelLayout::XRGB8888, 8, 4, 4, |_, _| (1, 2, 3));
        let mut conv = ScreenConverter::new(shape, 8, 4).unwrap();
        let mut buf = [0; 48];
        let (y, rest) = buf.split_at_mut(32);
        let (u, v) = rest.split_at_mut(8);
        // The last row's padding is not needed; one byte less than the last pixel is short.
        let span = shape.span();
        assert_eq!(span, mem.len() - 4);
        assert!(conv.convert(&mem[..span], [y, u, v]).is_ok());
        let (y, rest) = buf.split_at_mut(32);
        let (u, v) = rest.split_at_mut(8);
        let e = conv.convert(&mem[..span - 1], [y, u, v]).unwrap_err();
        assert_eq!((e.got, e.want), (span - 1, span));
        // Malformed shapes are refused when the converter is made.
        let bad = ScreenShape { stride: 8, ..shape };
        assert!(ScreenConverter::new(bad, 8, 4).is_err());
        let bad = ScreenShape { width: 0, ..shape };
        assert!(ScreenConverter::new(bad, 8, 4).is_err());
    }

    #[test]
    fn any_colour_round_trips_close_to_bt601() {
        // Greys stay neutral; a few colours against the float formula.
        for (r, g, b) in [
            (0, 0, 0),
            (128, 128, 128),
            (255, 255, 255),
            (12, 200, 99),
            (250, 5, 130),
        ] {
            let (shape, mem) = screen(PixelLayout::XRGB8888, 2, 2, 0, |_, _| (r, g, b));
            let (f, _) = convert(shape, &mem, 2, 2);
            let (rf, gf, bf) = (r as f64, g as f64, b as f64);
            let y = 16.0 + 219.0 / 255.0 * (0.299 * rf + 0.587 * gf + 0.114 * bf);
            let u = 128.0 + 224.0 / 255.0 * (bf - (0.299 * rf + 0.587 * gf + 0.114 * bf)) / 1.772;
            let v = 128.0 + 224.0 / 255.0 * (rf - (0.299 * rf + 0.587 * gf + 0.114 * bf)) / 1.402;
            let want = (y.round() as u8, u.round() as u8, v.round() as u8);
            assert!(close(f.at(0, 0), want, 1), "{:?} vs {want:?}", f.at(0, 0));
        }
    }
}
