//! `--list-cameras` for libcamera: every camera libcamera finds, with its model and the
//! formats and sizes its video and raw stream roles offer, and the libcamera version.

use std::fmt;

use libcamera::camera::Camera;
use libcamera::stream::StreamRole;

use super::{model, LibcameraError, Manager};

/// One camera as `--list-cameras` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CameraListing {
    /// Position in libcamera's list: `--source libcamera:<index>`.
    pub index: usize,
    /// libcamera's id: `--source libcamera:<id>`.
    pub id: String,
    /// The `Model` property (sensor name for Pi cameras), when the camera has one.
    pub model: Option<String>,
    /// What the camera's stream configurations offer, per role.
    pub streams: Vec<StreamListing>,
}

/// Formats offered for one stream role.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamListing {
    /// `video` (processed output, what picamd uses) or `raw` (sensor modes).
    pub role: &'static str,
    pub formats: Vec<FormatListing>,
}

/// One pixel format and its sizes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FormatListing {
    /// libcamera's name, e.g. `YUV420`.
    pub pixel_format: String,
    /// Discrete sizes, `(width, height)`.
    pub sizes: Vec<(u32, u32)>,
    /// Continuous range `(min, max)` when the pipeline scales freely instead.
    pub range: Option<((u32, u32), (u32, u32))>,
}

impl FormatListing {
    /// "640x480, 1280x720" or "64x64 to 4608x2592".
    fn sizes_text(&self) -> String {
        let mut sizes: Vec<String> = self.sizes.iter().map(|(w, h)| format!("{w}x{h}")).collect();
        if let Some(((w0, h0), (w1, h1))) = self.range {
            sizes.push(format!("{w0}x{h0} to {w1}x{h1}"));
        }
        if sizes.is_empty() {
            "no sizes listed".into()
        } else {
            sizes.join(", ")
        }
    }
}

/// One line, `model (id)`, then one line per role and set of sizes, indented to sit under
/// a `  [N] ` prefix; no trailing newline:
///
/// ```text
/// imx708 (/base/axi/pcie@120000/rp1/i2c@88000/imx708@1a)
///       video YUV420, NV12, RGB888: 64x64 to 4608x2592
///       raw SRGGB10_CSI2P: 1536x864, 2304x1296, 4608x2592
/// ```
impl fmt::Display for CameraListing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.model {
            Some(m) => write!(f, "{m} ({})", self.id)?,
            None => write!(f, "{}", self.id)?,
        }
        for stream in &self.streams {
            // Formats offering the same sizes share a line, in the camera's order.
            let mut lines: Vec<(String, Vec<&str>)> = Vec::new();
            for format in &stream.formats {
                let sizes = format.sizes_text();
                match lines.iter_mut().find(|(s, _)| *s == sizes) {
                    Some((_, names)) => names.push(&format.pixel_format),
                    None => lines.push((sizes, vec![&format.pixel_format])),
                }
            }
            for (sizes, names) in lines {
                write!(f, "\n      {} {}: {sizes}", stream.role, names.join(", "))?;
            }
        }
        Ok(())
    }
}

/// The cameras libcamera finds, with the formats and sizes they offer. An empty list means
/// libcamera loaded but found no camera (`--list-cameras` reports that and fails). Fails with
/// [`LibcameraError::Busy`] while a libcamera source runs in this process.
pub fn list_cameras() -> Result<Vec<CameraListing>, LibcameraError> {
    let manager = Manager::start()?;
    let cameras = manager.cameras();
    let listing = cameras
        .iter()
        .enumerate()
        .map(|(index, camera)| CameraListing {
            index,
            id: camera.id().to_owned(),
            model: model(camera),
            streams: [
                ("video", StreamRole::VideoRecording),
                ("raw", StreamRole::Raw),
            ]
            .into_iter()
            .filter_map(|(role, r)| stream_listing(camera, role, r))
            .collect(),
        })
        .collect();
    // Cameras before their manager.
    drop(cameras);
    drop(manager);
    Ok(listing)
}

fn stream_listing(camera: &Camera<'_>, role: &'static str, r: StreamRole) -> Option<StreamListing> {
    let config = camera.generate_configuration(&[r])?;
    let stream = config.get(0)?;
    let offered = stream.formats();
    let formats = offered
        .pixel_formats()
        .into_iter()
        .map(|pf| {
            let sizes: Vec<(u32, u32)> = offered
                .sizes(pf)
                .into_iter()
                .map(|s| (s.width, s.height))
                .collect();
            let range = offered.range(pf);
            let range = (sizes.is_empty() && range.max.width > 0).then_some((
                (range.min.width, range.min.height),
                (range.max.width, range.max.height),
            ));
            FormatListing {
                pixel_format: pf.to_string(),
                sizes,
                range,
            }
        })
        .collect();
    Some(StreamListing { role, formats })
}

/// The libcamera version picamd runs with (from the loaded library).
pub fn libcamera_version() -> &'static str {
    libcamera::version::runtime_version()
}

/// What a libcamera bundle built by picamd's `cross/build` says about itself: libcamera's
/// public API has no list of the pipeline handlers compiled in, so the build records them in
/// `share/picamd/build-info` beside the library (after checking that `libcamera.so` registers
/// each one), and `--list-cameras` prints them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BundleInfo {
    /// The `libcamera.so` this process loaded.
    pub library: String,
    /// Pipeline handlers compiled in (`rpi/vc4`, `rpi/pisp`, ...); empty when not recorded.
    pub pipelines: Vec<String>,
    /// IPA modules (`rpi/vc4`, `rpi/pisp`).
    pub ipas: Vec<String>,
    /// The bundled libpisp's Debian version, when there is one (trixie flavour).
    pub libpisp: Option<String>,
    /// Whether `build-info` was found (false: a libcamera not built by `cross/build`).
    pub recorded: bool,
}

impl BundleInfo {
    /// `build-info`'s text: `pipelines A B`, `ipas A B`, `libpisp V` lines; others ignored.
    fn parse(library: String, text: &str) -> BundleInfo {
        let mut info = BundleInfo {
            library,
            recorded: true,
            ..BundleInfo::default()
        };
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let mut words = line.split_whitespace();
            let list = |w: std::str::SplitWhitespace<'_>| w.map(str::to_owned).collect();
            match words.next() {
                Some("pipelines") => info.pipelines = list(words),
                Some("ipas") => info.ipas = list(words),
                Some("libpisp") => info.libpisp = words.next().map(str::to_owned),
                _ => {}
            }
        }
        info
    }
}

/// The path of the `libcamera.so` mapped into this process, from `/proc/self/maps`.
fn loaded_libcamera(maps: &str) -> Option<&str> {
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|path| {
            path.rsplit('/')
                .next()
                .is_some_and(|file| file.starts_with("libcamera.so"))
        })
}

/// The loaded libcamera and, for picamd's bundle, the pipeline handlers and IPA modules it
/// was built with (`<lib>/../share/picamd/build-info`). `None` when no libcamera is mapped.
pub fn bundle_info() -> Option<BundleInfo> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let library = loaded_libcamera(&maps)?.to_owned();
    let file = std::path::Path::new(&library)
        .parent()?
        .join("../share/picamd/build-info");
    Some(match std::fs::read_to_string(file) {
        Ok(text) => BundleInfo::parse(library, &text),
        Err(_) => BundleInfo {
            library,
            ..BundleInfo::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libcamera_loads_and_lists() {
        let cameras = list_cameras().expect("libcamera's camera manager starts");
        for c in &cameras {
            print!("{c}");
        }
        // CI runs this where libcamera loads but no camera exists.
        if std::env::var_os("PICAMD_EXPECT_NO_CAMERA").is_some() {
            assert!(cameras.is_empty(), "expected no cameras, found {cameras:?}");
        }
    }

    #[test]
    fn bundle_info_from_maps_and_build_info() {
        let maps = "\
aaaad000-aaaae000 r-xp 00000000 fe:01 1 /usr/bin/picamd
ffff8000-ffff9000 r-xp 00000000 fe:01 2 /usr/lib/picamd/libcamera/lib/libcamera-base.so.0.7.2
ffff9000-ffffa000 r-xp 00000000 fe:01 3 /usr/lib/picamd/libcamera/lib/libcamera.so.0.7.2
ffffb000-ffffc000 rw-p 00000000 00:00 0 
";
        let lib = loaded_libcamera(maps).unwrap();
        assert_eq!(lib, "/usr/lib/picamd/libcamera/lib/libcamera.so.0.7.2");
        assert_eq!(
            loaded_libcamera("ffff0000-ffff1000 r-xp 0 0:0 0 /lib/libc.so.6\n"),
            None
        );
        let info = BundleInfo::parse(
            lib.to_owned(),
            "# Written by cross/build\nlibcamera 0.7.2 (0.7.2-1)\npipelines rpi/vc4 rpi/pisp uvcvideo virtual\nipas rpi/vc4 rpi/pisp\nlibpisp 1.2.1-2\n",
        );
        assert!(info.recorded);
        assert_eq!(
            info.pipelines,
            ["rpi/vc4", "rpi/pisp", "uvcvideo", "virtual"]
        );
        assert_eq!(info.ipas, ["rpi/vc4", "rpi/pisp"]);
        assert_eq!(info.libpisp.as_deref(), Some("1.2.1-2"));
    }

    #[test]
    fn listing_text() {
        let format = |pf: &str, sizes: Vec<(u32, u32)>, range| FormatListing {
            pixel_format: pf.into(),
            sizes,
            range,
        };
        let cam = CameraListing {
            index: 0,
            id: "/base/imx708@1a".into(),
            model: Some("imx708".into()),
            streams: vec![
                StreamListing {
                    role: "video",
                    formats: vec![
                        format("YUV420", vec![], Some(((64, 64), (4608, 2592)))),
                        format("NV12", vec![], Some(((64, 64), (4608, 2592)))),
                        format("RGB888", vec![(640, 480)], None),
                    ],
                },
                StreamListing {
                    role: "raw",
                    formats: vec![format(
                        "SRGGB10_CSI2P",
                        vec![(1536, 864), (4608, 2592)],
                        None,
                    )],
                },
            ],
        };
        assert_eq!(
            cam.to_string(),
            "imx708 (/base/imx708@1a)\n      video YUV420, NV12: 64x64 to 4608x2592\n      video RGB888: 640x480\n      raw SRGGB10_CSI2P: 1536x864, 4608x2592"
        );
    }
}
