//! The status LED: what the appliance is doing, shown on a GPIO pin or the board's own LED.
//!
//! Placeholder: being written (issue 6). The API below is fixed; the implementation is not.

mod backend;
mod pattern;

use std::time::Duration;

pub use backend::{GpioLed, LedError, LedOutput, Recorder, SysfsLed, SYSFS_LEDS};
pub use pattern::{led_on, Pattern};

use crate::hub::Hub;
use crate::shutdown::Shutdown;

/// How often the LED thread samples the streams' state. Pattern edges are multiples of it.
pub const TICK: Duration = Duration::from_millis(50);

/// `[led]` in the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedConfig {
    /// `none` (default), `gpio` or `sysfs`.
    pub backend: Option<String>,
    /// gpio: the BCM GPIO number the LED is wired to.
    pub pin: Option<u8>,
    /// gpio: the LED lights when the pin is low.
    pub active_low: Option<bool>,
    /// sysfs: the LED's name under `/sys/class/leds` (e.g. `ACT`, `PWR`, `led0`).
    pub name: Option<String>,
}

/// A checked LED choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedSpec {
    None,
    Gpio { pin: u8, active_low: bool },
    Sysfs { name: String },
}

impl LedConfig {
    /// Checks the table; the error names the key.
    pub fn resolve(&self) -> Result<LedSpec, String> {
        Ok(LedSpec::None)
    }
}

/// The thread driving the LED; joining waits for it to switch the LED off.
pub struct LedThread {
    handle: Option<std::thread::JoinHandle<()>>,
}

impl LedThread {
    pub fn join(mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Starts driving the LED from the streams' state until `shutdown`, then switches it off.
/// A backend that cannot be opened (not a Pi, no permission) is logged once and the
/// appliance carries on without an LED.
pub fn spawn(spec: LedSpec, hubs: Vec<Hub>, shutdown: Shutdown) -> std::io::Result<LedThread> {
    let _ = (spec, hubs, shutdown);
    Ok(LedThread { handle: None })
}

#[cfg(test)]
mod tests;
