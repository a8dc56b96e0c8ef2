//! `--list-cameras` for V4L2: every `/dev/video*` node with its driver, card, stable
//! `/dev/v4l/by-id` names and, for capture nodes, the formats, sizes and frame rates it offers.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use v4l::capability::Flags as CapFlags;
use v4l::prelude::Device;

use super::negotiate::{enumerate_formats, format_fps, fourcc_str};
use super::{describe_io, panic_message, PixelFormat};

/// One `/dev/video*` node, for `--list-cameras`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceListing {
    pub path: PathBuf,
    /// `/dev/v4l/by-id/…` links to this node: names that survive replugging and reboots.
    pub by_id: Vec<PathBuf>,
    pub driver: String,
    pub card: String,
    pub bus: String,
    /// A video capture node (not a metadata or output node).
    pub capture: bool,
    /// A memory-to-memory device (a hardware codec or converter such as the Pi's
    /// `bcm2835-codec` or the kernel's `vicodec`): not a camera.
    pub m2m: bool,
    pub formats: Vec<FormatListing>,
    /// Why the node could not be opened or queried.
    pub error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FormatListing {
    pub fourcc: String,
    pub description: String,
    /// picamd can capture this format.
    pub usable: bool,
    /// The sizes are samples of a stepwise range (its smallest and largest).
    pub stepwise: bool,
    pub sizes: Vec<SizeListing>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SizeListing {
    pub width: u32,
    pub height: u32,
    /// Frame rates offered at this size, fastest first; empty if not enumerated.
    pub fps: Vec<f64>,
}

/// Every `/dev/video*` node with its driver, card name and (for capture nodes) formats,
/// sizes and frame rates, in node order. Nodes that are not video capture (e.g. UVC metadata
/// nodes) are listed with `capture: false`. Empty when there are none.
pub fn list_devices() -> Vec<DeviceListing> {
    list_devices_in(Path::new("/dev"), Path::new("/dev/v4l/by-id"))
}

fn list_devices_in(dev_dir: &Path, by_id_dir: &Path) -> Vec<DeviceListing> {
    let mut nodes: Vec<(u32, PathBuf)> = std::fs::read_dir(dev_dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name();
                    let n = name.to_str()?.strip_prefix("video")?.parse().ok()?;
                    Some((n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    let links: Vec<(PathBuf, PathBuf)> = std::fs::read_dir(by_id_dir)
        .map(|entries| {
            let mut links: Vec<(PathBuf, PathBuf)> = entries
                .flatten()
                .filter_map(|e| Some((e.path(), std::fs::canonicalize(e.path()).ok()?)))
                .collect();
            links.sort();
            links
        })
        .unwrap_or_default();
    nodes
        .into_iter()
        .map(|(_, path)| {
            let real = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            let by_id = links
                .iter()
                .filter(|(_, target)| *target == real)
                .map(|(link, _)| link.clone())
                .collect();
            probe(path, by_id)
        })
        .collect()
}

fn probe(path: PathBuf, by_id: Vec<PathBuf>) -> DeviceListing {
    let mut listing = DeviceListing {
        path,
        by_id,
        driver: String::new(),
        card: String::new(),
        bus: String::new(),
        capture: false,
        m2m: false,
        formats: Vec::new(),
        error: None,
    };
    let path = listing.path.clone();
    let probed = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        let dev =
            Device::with_path(&path).map_err(|e| format!("cannot open: {}", describe_io(&e)))?;
        let caps = dev
            .query_caps()
            .map_err(|e| format!("not a V4L2 device: {}", describe_io(&e)))?;
        listing.driver = c_string(&caps.driver);
        listing.card = c_string(&caps.card);
        listing.bus = c_string(&caps.bus);
        // V4L2 reports a device's capabilities and, with DEVICE_CAPS, this node's; the v4l
        // crate's `capabilities` is the node's where the driver gives them (all do now).
        listing.m2m = caps
            .capabilities
            .intersects(CapFlags::VIDEO_M2M | CapFlags::VIDEO_M2M_MPLANE);
        listing.capture = caps.capabilities.contains(CapFlags::VIDEO_CAPTURE) && !listing.m2m;
        if listing.capture {
            listing.formats = enumerate_formats(&dev, None)
                .into_iter()
                .map(|o| {
                    let mut sizes: Vec<SizeListing> = o
                        .sizes
                        .iter()
                        .map(|s| {
                            let mut fps: Vec<f64> = s.intervals.iter().map(|i| i.fps()).collect();
                            fps.sort_by(|a, b| b.total_cmp(a));
                            fps.dedup();
                            SizeListing {
                                width: s.width,
                                height: s.height,
                                fps,
                            }
                        })
                        .collect();
                    sizes.sort_by_key(|s| {
                        std::cmp::Reverse((u64::from(s.width) * u64::from(s.height), s.width))
                    });
                    FormatListing {
                        fourcc: fourcc_str(o.fourcc),
                        description: o.description,
                        usable: PixelFormat::from_fourcc(o.fourcc).is_some(),
                        stepwise: o.stepwise,
                        sizes,
                    }
                })
                .collect();
        }
        Ok(())
    }));
    match probed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => listing.error = Some(e),
        Err(panic) => listing.error = Some(format!("V4L2 error: {}", panic_message(&*panic))),
    }
    listing
}

impl fmt::Display for DeviceListing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(e) = &self.error {
            return writeln!(f, ": {e}");
        }
        write!(f, ": {} ({}", self.card, self.driver)?;
        if !self.bus.is_empty() {
            write!(f, ", {}", self.bus)?;
        }
        write!(f, ")")?;
        if self.m2m {
            return writeln!(f, " — a memory-to-memory codec or converter, not a camera");
        }
        if !self.capture {
            return writeln!(
                f,
                " — not a video capture node (metadata or output); not usable"
            );
        }
        writeln!(f)?;
        for link in &self.by_id {
            writeln!(f, "  also {}", link.display())?;
        }
        let source = self.by_id.first().unwrap_or(&self.path);
        if self.formats.iter().any(|fmt| fmt.usable) {
            writeln!(f, "  use: --source v4l2:{}", source.display())?;
        } else {
            writeln!(
                f,
                "  no format picamd can use (it needs MJPG, YUYV, NV12 or YU12)"
            )?;
        }
        for format in &self.formats {
            write!(f, "  {} ({})", format.fourcc, format.description)?;
            if !format.usable {
                write!(f, " — not usable by picamd")?;
            }
            if format.stepwise {
                write!(
                    f,
                    " — any size in steps between the smallest and largest below"
                )?;
            }
            writeln!(f)?;
            for size in &format.sizes {
                write!(f, "    {}x{}", size.width, size.height)?;
                if !size.fps.is_empty() {
                    let rates: Vec<String> = size.fps.iter().map(|r| format_fps(*r)).collect();
                    write!(f, "  {} fps", rates.join(", "))?;
                }
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

/// A `VIDIOC_QUERYCAP` string as C reads it: up to the first NUL. The v4l crate keeps all of
/// the field but its trailing NULs, so what a driver left behind survives: vicodec writes
/// "platform:vicodec" over the core's "platform:vicodec.0", and the field then holds
/// "platform:vicodec\00" (seen as a line break in `--list-cameras` in the VM).
pub(super) fn c_string(field: &str) -> String {
    field.split('\0').next().unwrap_or_default().to_string()
}

/// The text of `--list-cameras`: every listing, or a line saying there is none.
pub fn describe_devices(list: &[DeviceListing]) -> String {
    if list.is_empty() {
        return "no V4L2 devices found (no /dev/video* nodes)\n".into();
    }
    list.iter().map(|d| d.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn querycap_strings_end_at_the_first_nul() {
        assert_eq!(c_string("platform:vicodec\u{0}0"), "platform:vicodec");
        assert_eq!(c_string("vivid"), "vivid");
        assert_eq!(c_string(""), "");
    }

    #[test]
    fn listing_without_devices_is_empty_and_does_not_panic() {
        // On this machine there may or may not be cameras; either way, no panic.
        let real = list_devices();
        let _ = describe_devices(&real);

        let dir = std::env::temp_dir().join(format!(
            "picamd-v4l2-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let (dev, by_id) = (dir.join("dev"), dir.join("by-id"));
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::create_dir_all(&by_id).unwrap();
        assert!(list_devices_in(&dev, &by_id).is_empty());
        assert!(list_devices_in(&dir.join("missing"), &dir.join("missing")).is_empty());
        assert!(describe_devices(&[]).contains("no V4L2 devices"));

        // Regular files named like nodes: listed in numeric order with an error each, and the
        // by-id link is matched to its node.
        for name in ["video10", "video2", "videoX", "vbi0"] {
            std::fs::write(dev.join(name), b"").unwrap();
        }
        std::os::unix::fs::symlink(dev.join("video2"), by_id.join("usb-Fake_Cam-video-index0"))
            .unwrap();
        let list = list_devices_in(&dev, &by_id);
        std::fs::remove_dir_all(&dir).unwrap();
        let paths: Vec<String> = list.iter().map(|d| d.path.display().to_string()).collect();
        assert_eq!(paths.len(), 2);
        assert!(paths[0].ends_with("video2") && paths[1].ends_with("video10"));
        assert_eq!(list[0].by_id.len(), 1);
        assert!(list.iter().all(|d| d.error.is_some() && !d.capture));
        let text = describe_devices(&list);
        assert!(text.contains("video2: "), "{text}");
    }

    #[test]
    fn listing_text() {
        let d = DeviceListing {
            path: PathBuf::from("/dev/video0"),
            by_id: vec![PathBuf::from("/dev/v4l/by-id/usb-Cam-video-index0")],
            driver: "uvcvideo".into(),
            card: "HD Webcam".into(),
            bus: "usb-0000:00:14.0-1".into(),
            capture: true,
            m2m: false,
            formats: vec![
                FormatListing {
                    fourcc: "MJPG".into(),
                    description: "Motion-JPEG".into(),
                    usable: true,
                    stepwise: false,
                    sizes: vec![SizeListing {
                        width: 1280,
                        height: 720,
                        fps: vec![30.0, 7.5, 29.97002997],
                    }],
                },
                FormatListing {
                    fourcc: "H264".into(),
                    description: "H.264".into(),
                    usable: false,
                    stepwise: false,
                    sizes: vec![],
                },
            ],
            error: None,
        };
        let text = d.to_string();
        assert!(text.starts_with("/dev/video0: HD Webcam (uvcvideo, usb-0000:00:14.0-1)\n"));
        assert!(text.contains("  also /dev/v4l/by-id/usb-Cam-video-index0\n"));
        assert!(text.contains("--source v4l2:/dev/v4l/by-id/usb-Cam-video-index0"));
        assert!(
            text.contains("    1280x720  30, 7.5, 29.97 fps\n"),
            "{text}"
        );
        assert!(text.contains("H264 (H.264) — not usable by picamd"));
        let meta = DeviceListing {
            capture: false,
            m2m: false,
            formats: vec![],
            by_id: vec![],
            path: PathBuf::from("/dev/video1"),
            ..d
        };
        assert!(meta.to_string().contains("not a video capture node"));
        let codec = DeviceListing {
            m2m: true,
            card: "vicodec".into(),
            ..meta
        };
        assert!(codec
            .to_string()
            .contains("vicodec (uvcvideo, usb-0000:00:14.0-1) — a memory-to-memory codec"));
    }
}
