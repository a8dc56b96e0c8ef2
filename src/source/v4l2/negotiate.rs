//! V4L2 format negotiation: what a device offers (formats, sizes, frame intervals, with
//! stepwise ranges sampled) and the pick among it ([`negotiate`]): MJPEG first (passed
//! through, never re-encoded), else YUYV, NV12 or YU12 (converted to I420); the requested size
//! if offered, else the smallest covering it, else the largest; the closest frame rate.

use std::time::Duration;

use v4l::format::FourCC;
use v4l::frameinterval::FrameIntervalEnum;
use v4l::framesize::FrameSizeEnum;
use v4l::prelude::Device;
use v4l::video::Capture;
use v4l::Fraction;

/// The pixel formats picamd takes from a device, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PixelFormat {
    /// `MJPG` (or `JPEG`): passed through without re-encoding.
    Mjpeg,
    /// `YUYV`: packed 4:2:2, converted to I420.
    Yuyv,
    /// `NV12`: Y plane, then interleaved U/V at half resolution.
    Nv12,
    /// `YU12`: I420 itself (possibly with padded rows).
    I420,
}

impl PixelFormat {
    /// The format a `pixel_format` setting names: its fourcc (`MJPG`, `YUYV`, `NV12`,
    /// `YU12`; also `JPEG` and `I420`), any case.
    pub fn from_name(name: &str) -> Option<Self> {
        let upper = name.to_ascii_uppercase();
        match upper.as_str() {
            "I420" => Some(PixelFormat::I420),
            _ => <[u8; 4]>::try_from(upper.as_bytes())
                .ok()
                .and_then(Self::from_fourcc),
        }
    }

    /// The fourcc picamd names the format by.
    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::Mjpeg => "MJPG",
            PixelFormat::Yuyv => "YUYV",
            PixelFormat::Nv12 => "NV12",
            PixelFormat::I420 => "YU12",
        }
    }

    pub fn from_fourcc(fourcc: [u8; 4]) -> Option<Self> {
        match &fourcc {
            b"MJPG" | b"JPEG" => Some(PixelFormat::Mjpeg),
            b"YUYV" => Some(PixelFormat::Yuyv),
            b"NV12" => Some(PixelFormat::Nv12),
            b"YU12" => Some(PixelFormat::I420),
            _ => None,
        }
    }

    /// Raw formats are converted to I420 and need even dimensions.
    pub fn is_raw(self) -> bool {
        self != PixelFormat::Mjpeg
    }
}

/// A frame interval in seconds per frame, as V4L2 gives it (`num / den`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub num: u32,
    pub den: u32,
}

impl Interval {
    pub fn from_fps(fps: u32) -> Self {
        Interval {
            num: 1,
            den: fps.max(1),
        }
    }

    pub fn fps(self) -> f64 {
        if self.num == 0 {
            0.0
        } else {
            f64::from(self.den) / f64::from(self.num)
        }
    }

    pub fn duration(self) -> Option<Duration> {
        (self.num > 0 && self.den > 0)
            .then(|| Duration::from_secs_f64(f64::from(self.num) / f64::from(self.den)))
    }

    /// `self <= other`, compared exactly.
    fn not_longer_than(self, other: Interval) -> bool {
        u64::from(self.num) * u64::from(other.den) <= u64::from(other.num) * u64::from(self.den)
    }
}

/// One frame size a device offers for a format, with the frame intervals it offers there.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeOffer {
    pub width: u32,
    pub height: u32,
    /// Empty when the device does not enumerate intervals.
    pub intervals: Vec<Interval>,
}

/// One pixel format a device offers.
#[derive(Debug, Clone, PartialEq)]
pub struct FormatOffer {
    pub fourcc: [u8; 4],
    pub description: String,
    /// Empty when the device does not enumerate sizes (then `S_FMT` picks one).
    pub sizes: Vec<SizeOffer>,
    /// The device gave a stepwise (or continuous) range; `sizes` holds samples of it.
    pub stepwise: bool,
}

/// What [`negotiate`] picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub fourcc: [u8; 4],
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// `None` when the device listed no intervals for the size.
    pub interval: Option<Interval>,
}

/// Picks a format, size and frame interval from what a device offers.
///
/// Format: MJPEG if offered, else YUYV, NV12, YU12 (the first offered of the best kind).
/// Size: the requested one if offered, else the smallest (by area) at least as large in both
/// dimensions, else the largest; raw formats only consider even sizes. Interval: the one
/// whose rate is closest to `fps`, the faster one on a tie. `None` if nothing is usable.
pub fn negotiate(offers: &[FormatOffer], width: u32, height: u32, fps: u32) -> Option<Choice> {
    negotiate_format(offers, None, width, height, fps)
}

/// [`negotiate`] among the offers of one format only (`only`), or of every usable format
/// (`None`, the `auto` of the `pixel_format` key).
pub fn negotiate_format(
    offers: &[FormatOffer],
    only: Option<PixelFormat>,
    width: u32,
    height: u32,
    fps: u32,
) -> Option<Choice> {
    let (format, offer) = offers
        .iter()
        .filter_map(|o| PixelFormat::from_fourcc(o.fourcc).map(|f| (f, o)))
        .filter(|(f, _)| only.is_none_or(|o| o == *f))
        .filter(|(f, o)| o.sizes.is_empty() || o.sizes.iter().any(|s| size_usable(*f, s)))
        .min_by_key(|(f, _)| *f)?;
    if offer.sizes.is_empty() {
        return Some(Choice {
            fourcc: offer.fourcc,
            format,
            width,
            height,
            interval: None,
        });
    }
    let usable: Vec<&SizeOffer> = offer
        .sizes
        .iter()
        .filter(|s| size_usable(format, s))
        .collect();
    let size = pick_size(&usable, width, height)?;
    Some(Choice {
        fourcc: offer.fourcc,
        format,
        width: size.width,
        height: size.height,
        interval: pick_interval(&size.intervals, fps),
    })
}

fn size_usable(format: PixelFormat, s: &SizeOffer) -> bool {
    s.width > 0 && s.height > 0 && (!format.is_raw() || (s.width % 2 == 0 && s.height % 2 == 0))
}

fn pick_size<'a>(sizes: &[&'a SizeOffer], width: u32, height: u32) -> Option<&'a SizeOffer> {
    if let Some(exact) = sizes
        .iter()
        .find(|s| s.width == width && s.height == height)
    {
        return Some(exact);
    }
    let key = |s: &&&SizeOffer| (u64::from(s.width) * u64::from(s.height), s.width);
    sizes
        .iter()
        .filter(|s| s.width >= width && s.height >= height)
        .min_by_key(key)
        .or_else(|| sizes.iter().max_by_key(key))
        .copied()
}

fn pick_interval(intervals: &[Interval], fps: u32) -> Option<Interval> {
    let want = f64::from(fps);
    intervals
        .iter()
        .filter(|i| i.num > 0 && i.den > 0)
        .min_by(|a, b| {
            let (da, db) = ((a.fps() - want).abs(), (b.fps() - want).abs());
            da.total_cmp(&db).then(b.fps().total_cmp(&a.fps()))
        })
        .copied()
}

/// Sample sizes of a stepwise (or continuous) size range: the requested size fitted into the
/// range and onto its steps, and the range's smallest and largest sizes.
pub fn stepwise_sizes(
    min: (u32, u32),
    max: (u32, u32),
    step: (u32, u32),
    want: Option<(u32, u32)>,
) -> Vec<(u32, u32)> {
    let (min, max) = ((min.0.min(max.0), min.1.min(max.1)), max);
    let mut out = vec![min, max];
    if let Some((w, h)) = want {
        let fitted = (
            fit_step(w, min.0, max.0, step.0),
            fit_step(h, min.1, max.1, step.1),
        );
        out.insert(0, fitted);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// `v` clamped into `min..=max` and moved to the nearest `min + k * step` within the range.
fn fit_step(v: u32, min: u32, max: u32, step: u32) -> u32 {
    let step = step.max(1);
    let v = v.clamp(min, max.max(min));
    let below = min + (v - min) / step * step;
    let above = below.saturating_add(step);
    if above <= max && above - v < v - below {
        above
    } else {
        below
    }
}

/// Sample intervals of a stepwise interval range: its ends and `1 / fps` when inside.
pub fn stepwise_intervals(min: Interval, max: Interval, fps: Option<u32>) -> Vec<Interval> {
    let mut out = vec![min, max];
    if let Some(fps) = fps {
        let want = Interval::from_fps(fps);
        if min.not_longer_than(want) && want.not_longer_than(max) {
            out.push(want);
        }
    }
    out.retain(|i| i.num > 0 && i.den > 0);
    out.dedup();
    out
}

/// A fourcc as text as `v4l2-ctl` writes it: trailing spaces dropped (`Y10 ` is `Y10`), the
/// big-endian flag (bit 31) as `-BE` (`Y16 -BE` is `Y16-BE`), `?` for other bytes that are
/// not printable.
pub(super) fn fourcc_str(fourcc: [u8; 4]) -> String {
    let big_endian = fourcc[3] & 0x80 != 0;
    let mut bytes = fourcc;
    bytes[3] &= 0x7f;
    let text = bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect::<String>();
    let text = text.trim_end();
    if big_endian {
        format!("{text}-BE")
    } else {
        text.to_string()
    }
}

/// What a device offers: every capture format with its sizes (stepwise ranges sampled, see
/// [`stepwise_sizes`]) and the intervals at each size. Enumeration errors leave lists empty.
pub(super) fn enumerate_formats(dev: &Device, want: Option<(u32, u32, u32)>) -> Vec<FormatOffer> {
    let Ok(formats) = dev.enum_formats() else {
        return Vec::new();
    };
    formats
        .into_iter()
        .map(|desc| {
            let mut stepwise = false;
            let mut dims: Vec<(u32, u32)> = Vec::new();
            for fs in dev.enum_framesizes(desc.fourcc).unwrap_or_default() {
                match fs.size {
                    FrameSizeEnum::Discrete(d) => dims.push((d.width, d.height)),
                    FrameSizeEnum::Stepwise(s) => {
                        stepwise = true;
                        dims.extend(stepwise_sizes(
                            (s.min_width, s.min_height),
                            (s.max_width, s.max_height),
                            (s.step_width, s.step_height),
                            want.map(|(w, h, _)| (w, h)),
                        ));
                    }
                }
            }
            let sizes = dims
                .into_iter()
                .map(|(width, height)| SizeOffer {
                    width,
                    height,
                    intervals: enumerate_intervals(
                        dev,
                        desc.fourcc,
                        width,
                        height,
                        want.map(|w| w.2),
                    ),
                })
                .collect();
            FormatOffer {
                fourcc: desc.fourcc.repr,
                description: desc.description,
                sizes,
                stepwise,
            }
        })
        .collect()
}

fn enumerate_intervals(
    dev: &Device,
    fourcc: FourCC,
    width: u32,
    height: u32,
    fps: Option<u32>,
) -> Vec<Interval> {
    let frac = |f: Fraction| Interval {
        num: f.numerator,
        den: f.denominator,
    };
    let mut out = Vec::new();
    for fi in dev
        .enum_frameintervals(fourcc, width, height)
        .unwrap_or_default()
    {
        match fi.interval {
            FrameIntervalEnum::Discrete(f) => out.push(frac(f)),
            FrameIntervalEnum::Stepwise(s) => {
                out.extend(stepwise_intervals(frac(s.min), frac(s.max), fps))
            }
        }
    }
    out
}

/// A frame rate as `30` or `29.97`.
pub(super) fn format_fps(fps: f64) -> String {
    if (fps - fps.round()).abs() < 0.005 {
        format!("{}", fps.round() as i64)
    } else {
        format!("{fps:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(width: u32, height: u32, fps: &[u32]) -> SizeOffer {
        SizeOffer {
            width,
            height,
            intervals: fps.iter().map(|&f| Interval::from_fps(f)).collect(),
        }
    }

    fn offer(fourcc: &[u8; 4], sizes: Vec<SizeOffer>) -> FormatOffer {
        FormatOffer {
            fourcc: *fourcc,
            description: String::new(),
            sizes,
            stepwise: false,
        }
    }

    fn webcam() -> Vec<FormatOffer> {
        vec![
            offer(
                b"YUYV",
                vec![
                    size(640, 480, &[30, 15]),
                    size(1280, 720, &[10, 5]),
                    size(1920, 1080, &[5]),
                ],
            ),
            offer(
                b"MJPG",
                vec![
                    size(640, 480, &[30, 15]),
                    size(1280, 720, &[60, 30, 15]),
                    size(1280, 960, &[30]),
                    size(1920, 1080, &[30, 24, 15]),
                ],
            ),
            offer(b"H264", vec![size(1920, 1080, &[30])]),
        ]
    }

    #[test]
    fn mjpeg_wins_and_the_exact_size_is_taken() {
        let c = negotiate(&webcam(), 1280, 720, 30).unwrap();
        assert_eq!(c.format, PixelFormat::Mjpeg);
        assert_eq!(&c.fourcc, b"MJPG");
        assert_eq!((c.width, c.height), (1280, 720));
        assert_eq!(c.interval, Some(Interval::from_fps(30)));
    }

    #[test]
    fn sizes_smallest_larger_else_largest() {
        // 1024x768 is not offered: the smallest covering it is 1280x960 (not 1920x1080).
        let c = negotiate(&webcam(), 1024, 768, 30).unwrap();
        assert_eq!((c.width, c.height), (1280, 960));
        // 800x600: 1280x720 is the smallest size at least as large in both dimensions.
        let c = negotiate(&webcam(), 800, 600, 30).unwrap();
        assert_eq!((c.width, c.height), (1280, 720));
        // Larger than anything: the largest.
        let c = negotiate(&webcam(), 3840, 2160, 30).unwrap();
        assert_eq!((c.width, c.height), (1920, 1080));
        // Smaller than anything: the smallest covering it.
        let c = negotiate(&webcam(), 320, 240, 30).unwrap();
        assert_eq!((c.width, c.height), (640, 480));
    }

    #[test]
    fn fourccs_read_as_v4l2_ctl_writes_them() {
        assert_eq!(fourcc_str(*b"YUYV"), "YUYV");
        // vivid offers these: padded with spaces, and with the big-endian flag.
        assert_eq!(fourcc_str(*b"Y10 "), "Y10");
        assert_eq!(fourcc_str([b'Y', b'1', b'6', b' ' | 0x80]), "Y16-BE");
        assert_eq!(fourcc_str([b'X', b'R', b'1', b'5' | 0x80]), "XR15-BE");
        assert_eq!(fourcc_str([b'A', 0, b'B', b'C']), "A?BC");
    }

    #[test]
    fn a_named_format_is_taken_even_when_a_better_one_is_offered() {
        let c = negotiate_format(&webcam(), Some(PixelFormat::Yuyv), 1280, 720, 30).unwrap();
        assert_eq!(c.format, PixelFormat::Yuyv);
        assert_eq!((c.width, c.height), (1280, 720));
        assert_eq!(c.interval, Some(Interval::from_fps(10)));
        assert_eq!(
            negotiate_format(&webcam(), Some(PixelFormat::Nv12), 1280, 720, 30),
            None
        );
        assert_eq!(PixelFormat::from_name("nv12"), Some(PixelFormat::Nv12));
        assert_eq!(PixelFormat::from_name("I420"), Some(PixelFormat::I420));
        assert_eq!(PixelFormat::from_name("YU12"), Some(PixelFormat::I420));
        assert_eq!(PixelFormat::from_name("H264"), None);
        assert_eq!(PixelFormat::from_name("auto"), None);
        for f in [
            PixelFormat::Mjpeg,
            PixelFormat::Yuyv,
            PixelFormat::Nv12,
            PixelFormat::I420,
        ] {
            assert_eq!(PixelFormat::from_name(f.name()), Some(f));
        }
    }

    #[test]
    fn the_closest_frame_rate_is_picked() {
        let c = negotiate(&webcam(), 1280, 720, 50).unwrap();
        assert_eq!(c.interval, Some(Interval::from_fps(60)));
        let c = negotiate(&webcam(), 1280, 720, 20).unwrap();
        assert_eq!(c.interval, Some(Interval::from_fps(15)));
        // A tie goes to the faster rate.
        let i = pick_interval(&[Interval::from_fps(15), Interval::from_fps(25)], 20);
        assert_eq!(i, Some(Interval::from_fps(25)));
        // Fractional rates: 1001/30000 is 29.97 fps.
        let ntsc = Interval {
            num: 1001,
            den: 30000,
        };
        assert_eq!(
            pick_interval(&[Interval::from_fps(25), ntsc], 30),
            Some(ntsc)
        );
        assert_eq!(pick_interval(&[], 30), None);
        assert_eq!(pick_interval(&[Interval { num: 0, den: 0 }], 30), None);
    }

    #[test]
    fn raw_formats_in_order_and_only_even_sizes() {
        let offers = vec![
            offer(b"YU12", vec![size(640, 480, &[30])]),
            offer(b"NV12", vec![size(640, 480, &[30])]),
            offer(b"YUYV", vec![size(641, 480, &[30]), size(320, 240, &[30])]),
        ];
        let c = negotiate(&offers, 640, 480, 30).unwrap();
        assert_eq!(c.format, PixelFormat::Yuyv);
        assert_eq!((c.width, c.height), (320, 240), "the odd width is skipped");
        let c = negotiate(&offers[..2], 640, 480, 30).unwrap();
        assert_eq!(c.format, PixelFormat::Nv12);
        let c = negotiate(&offers[..1], 640, 480, 30).unwrap();
        assert_eq!(c.format, PixelFormat::I420);
        // A raw format with only odd sizes is passed over.
        let odd = vec![
            offer(b"YUYV", vec![size(641, 481, &[30])]),
            offer(b"NV12", vec![size(640, 480, &[30])]),
        ];
        assert_eq!(
            negotiate(&odd, 640, 480, 30).unwrap().format,
            PixelFormat::Nv12
        );
        // JPEG counts as MJPEG; odd sizes are fine for it.
        let jpeg = vec![offer(b"JPEG", vec![size(641, 481, &[30])])];
        let c = negotiate(&jpeg, 640, 480, 30).unwrap();
        assert_eq!((c.format, c.width), (PixelFormat::Mjpeg, 641));
    }

    #[test]
    fn nothing_usable_and_unlisted_sizes() {
        assert_eq!(negotiate(&[], 640, 480, 30), None);
        let h264 = vec![offer(b"H264", vec![size(1920, 1080, &[30])])];
        assert_eq!(negotiate(&h264, 640, 480, 30), None);
        // A format without size enumeration: ask for the requested size; S_FMT adjusts.
        let c = negotiate(&[offer(b"YUYV", vec![])], 800, 600, 25).unwrap();
        assert_eq!((c.width, c.height, c.interval), (800, 600, None));
        // Sizes without intervals.
        let c = negotiate(&[offer(b"MJPG", vec![size(640, 480, &[])])], 640, 480, 30).unwrap();
        assert_eq!(c.interval, None);
    }

    #[test]
    fn stepwise_ranges_are_sampled() {
        let s = stepwise_sizes((16, 16), (1920, 1080), (8, 2), Some((1000, 601)));
        assert_eq!(s, vec![(16, 16), (1000, 600), (1920, 1080)]);
        // Clamped into the range.
        let s = stepwise_sizes((16, 16), (640, 480), (16, 16), Some((4000, 3000)));
        assert_eq!(s, vec![(16, 16), (640, 480)]);
        // A step of zero (continuous ranges report 1, broken drivers 0) does not divide by 0.
        let s = stepwise_sizes((2, 2), (100, 100), (0, 0), Some((33, 33)));
        assert!(s.contains(&(33, 33)));
        assert_eq!(fit_step(17, 16, 1920, 8), 16);
        assert_eq!(fit_step(21, 16, 1920, 8), 24);
        assert_eq!(fit_step(1919, 16, 1919, 8), 1912);

        let (fast, slow) = (Interval::from_fps(60), Interval::from_fps(1));
        let i = stepwise_intervals(fast, slow, Some(25));
        assert_eq!(i, vec![fast, slow, Interval::from_fps(25)]);
        let i = stepwise_intervals(fast, slow, Some(120));
        assert_eq!(i, vec![fast, slow]);
        // Negotiating over the samples picks the requested rate.
        let offers = vec![FormatOffer {
            fourcc: *b"YUYV",
            description: String::new(),
            sizes: vec![SizeOffer {
                width: 640,
                height: 480,
                intervals: stepwise_intervals(fast, slow, Some(25)),
            }],
            stepwise: true,
        }];
        let c = negotiate(&offers, 640, 480, 25).unwrap();
        assert_eq!(c.interval, Some(Interval::from_fps(25)));
    }
}
