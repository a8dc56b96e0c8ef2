//! Where the LED is: a GPIO pin, the board's own LED in sysfs, or a recorder for tests.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Something that can be lit. Backends switch the LED off when opened, so the driver knows
/// its state from the start.
pub trait LedOutput: Send {
    fn set(&mut self, on: bool) -> io::Result<()>;
}

/// Why an LED cannot be used; logged once, after which picamd runs without one.
#[derive(Debug, thiserror::Error)]
pub enum LedError {
    #[error("GPIO {pin}: {source}{hint}", hint = gpio_hint(source))]
    Gpio { pin: u8, source: rppal::gpio::Error },
    #[error("{}: {source}{hint}", path.display(), hint = sysfs_hint(source))]
    Sysfs { path: PathBuf, source: io::Error },
}

fn gpio_hint(e: &rppal::gpio::Error) -> &'static str {
    match e {
        rppal::gpio::Error::UnknownModel => " (not a Raspberry Pi?)",
        rppal::gpio::Error::PermissionDenied(_) => " (add picamd's user to the `gpio` group)",
        _ => "",
    }
}

fn sysfs_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::NotFound => " (no such LED? see `ls /sys/class/leds`)",
        io::ErrorKind::PermissionDenied => {
            " (picamd needs write access to the LED: run as root or add a udev rule)"
        }
        _ => "",
    }
}

/// An LED on a GPIO pin (BCM numbering).
pub struct GpioLed {
    pin: rppal::gpio::OutputPin,
    active_low: bool,
}

impl GpioLed {
    pub fn open(pin: u8, active_low: bool) -> Result<GpioLed, LedError> {
        let err = |source| LedError::Gpio { pin, source };
        let pin = rppal::gpio::Gpio::new()
            .map_err(err)?
            .get(pin)
            .map_err(err)?;
        // Start at the off level so the LED does not flash while the pin becomes an output.
        let mut pin = if active_low {
            pin.into_output_high()
        } else {
            pin.into_output_low()
        };
        // rppal would turn the pin back into an input on drop, which can leave an active-low
        // LED faintly lit through the pull resistor; keep driving it off instead.
        pin.set_reset_on_drop(false);
        Ok(GpioLed { pin, active_low })
    }
}

impl LedOutput for GpioLed {
    fn set(&mut self, on: bool) -> io::Result<()> {
        if on != self.active_low {
            self.pin.set_high();
        } else {
            self.pin.set_low();
        }
        Ok(())
    }
}

impl Drop for GpioLed {
    fn drop(&mut self) {
        let _ = self.set(false);
    }
}

/// Where the kernel lists LEDs.
pub const SYSFS_LEDS: &str = "/sys/class/leds";

/// One of the board's own LEDs, `/sys/class/leds/<name>` (e.g. the green `ACT`).
///
/// Opening sets the kernel trigger to `none` so it stops blinking the LED for SD card or
/// heartbeat activity. Dropping switches the LED off and gives it back to the trigger it had:
/// after picamd stops the board behaves as stock again, and the ACT LED shows SD card
/// activity through shutdown, so "dark" still means "safe to unplug".
pub struct SysfsLed {
    dir: PathBuf,
    /// What `brightness` takes for "on": LEDs with several levels are driven at full.
    max_brightness: String,
    /// The trigger to give the LED back on drop.
    original_trigger: Option<String>,
}

impl SysfsLed {
    /// Opens `<SYSFS_LEDS>/<name>`.
    pub fn open(name: &str) -> Result<SysfsLed, LedError> {
        Self::open_in(Path::new(SYSFS_LEDS), name)
    }

    /// Opens `<base>/<name>`; `base` is a stand-in for `/sys/class/leds` in tests.
    pub fn open_in(base: &Path, name: &str) -> Result<SysfsLed, LedError> {
        let dir = base.join(name);
        let max: u32 = read_attr(&dir, "max_brightness")?
            .parse()
            .map_err(|_| LedError::Sysfs {
                path: dir.join("max_brightness"),
                source: io::Error::new(io::ErrorKind::InvalidData, "not a number"),
            })?;
        if max == 0 {
            return Err(LedError::Sysfs {
                path: dir.join("max_brightness"),
                source: io::Error::new(io::ErrorKind::InvalidData, "is 0: cannot be lit"),
            });
        }
        let original_trigger = current_trigger(&read_attr(&dir, "trigger")?);
        write_attr(&dir, "trigger", "none")?;
        // From here on, dropping gives the LED back to its trigger.
        let mut led = SysfsLed {
            dir,
            max_brightness: max.to_string(),
            original_trigger,
        };
        led.set(false).map_err(|source| LedError::Sysfs {
            path: led.dir.join("brightness"),
            source,
        })?;
        Ok(led)
    }
}

impl LedOutput for SysfsLed {
    fn set(&mut self, on: bool) -> io::Result<()> {
        let value = if on {
            self.max_brightness.as_str()
        } else {
            "0"
        };
        std::fs::write(self.dir.join("brightness"), value)
    }
}

impl Drop for SysfsLed {
    fn drop(&mut self) {
        // Off first: writing 0 would also detach a trigger restored before it.
        let _ = self.set(false);
        if let Some(trigger) = self.original_trigger.as_deref().filter(|t| *t != "none") {
            if let Err(e) = write_attr(&self.dir, "trigger", trigger) {
                tracing::debug!("status LED: cannot restore trigger `{trigger}`: {e}");
            }
        }
    }
}

/// The selected trigger in a `trigger` listing such as `none [mmc0] timer heartbeat`.
fn current_trigger(listing: &str) -> Option<String> {
    listing
        .split_whitespace()
        .find_map(|t| t.strip_prefix('[')?.strip_suffix(']'))
        .map(str::to_owned)
}

fn read_attr(dir: &Path, attr: &str) -> Result<String, LedError> {
    let path = dir.join(attr);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(s.trim().to_owned()),
        Err(source) => Err(LedError::Sysfs { path, source }),
    }
}

fn write_attr(dir: &Path, attr: &str, value: &str) -> Result<(), LedError> {
    let path = dir.join(attr);
    std::fs::write(&path, value).map_err(|source| LedError::Sysfs { path, source })
}

/// Records every `set` with its time, for tests. Clones share the record.
#[derive(Clone, Default)]
pub struct Recorder {
    log: Arc<Mutex<Vec<(Instant, bool)>>>,
    /// Fail every `set` from now on, to test how the driver copes.
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    /// Every `set` so far: when, and on or off.
    pub fn writes(&self) -> Vec<(Instant, bool)> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn fail_from_now(&self) {
        self.failing
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl LedOutput for Recorder {
    fn set(&mut self, on: bool) -> io::Result<()> {
        if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(io::Error::other("recorder told to fail"));
        }
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((Instant::now(), on));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::led::tests::FakeLeds;

    #[test]
    fn trigger_parsing() {
        assert_eq!(
            current_trigger("none [mmc0] timer heartbeat").as_deref(),
            Some("mmc0")
        );
        assert_eq!(
            current_trigger("[none] mmc0 timer").as_deref(),
            Some("none")
        );
        assert_eq!(current_trigger("none mmc0"), None);
    }

    #[test]
    fn sysfs_led_takes_over_toggles_and_gives_back() {
        let leds = FakeLeds::new("cycle");
        leds.add("ACT", "255");
        let mut led = SysfsLed::open_in(&leds.base, "ACT").unwrap();
        assert_eq!(leds.read("ACT", "trigger"), "none");
        assert_eq!(leds.read("ACT", "brightness"), "0");
        led.set(true).unwrap();
        assert_eq!(leds.read("ACT", "brightness"), "255");
        led.set(false).unwrap();
        assert_eq!(leds.read("ACT", "brightness"), "0");
        led.set(true).unwrap();
        drop(led);
        assert_eq!(leds.read("ACT", "brightness"), "0");
        assert_eq!(leds.read("ACT", "trigger"), "mmc0");
    }

    #[test]
    fn sysfs_led_lights_at_its_own_maximum() {
        let leds = FakeLeds::new("max");
        leds.add("led0", "1");
        let mut led = SysfsLed::open_in(&leds.base, "led0").unwrap();
        led.set(true).unwrap();
        assert_eq!(leds.read("led0", "brightness"), "1");
    }

    #[test]
    fn sysfs_led_missing_or_broken_is_an_error_naming_the_file() {
        let leds = FakeLeds::new("missing");
        let e = SysfsLed::open_in(&leds.base, "ACT").err().unwrap();
        assert!(
            matches!(&e, LedError::Sysfs { source, .. } if source.kind() == io::ErrorKind::NotFound)
        );
        let msg = e.to_string();
        assert!(
            msg.contains("ACT/max_brightness") && msg.contains("ls /sys/class/leds"),
            "{msg}"
        );

        let dir = leds.add("PWR", "255");
        std::fs::remove_file(dir.join("trigger")).unwrap();
        let msg = SysfsLed::open_in(&leds.base, "PWR")
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("PWR/trigger"), "{msg}");

        leds.add("bad", "lots");
        let msg = SysfsLed::open_in(&leds.base, "bad")
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("bad/max_brightness: not a number"), "{msg}");
    }

    #[test]
    fn gpio_off_a_pi_is_an_error_not_a_panic() {
        // On a Pi with GPIO access there is nothing to test without driving a real pin.
        if rppal::gpio::Gpio::new().is_ok() {
            return;
        }
        let e = GpioLed::open(17, false).err().unwrap();
        assert!(e.to_string().starts_with("GPIO 17: "), "{e}");
    }
}
