//! The status LED: what the appliance is doing, shown on a GPIO pin or the board's own LED.
//!
//! The LED follows [`Activity::combine`] of every stream, the same state `/state` reports,
//! sampled every [`TICK`]:
//!
//! | LED | meaning |
//! | --- | --- |
//! | solid on | live: at least one viewer is watching a stream |
//! | a short blip every 2 s | ready, nobody watching (nothing is captured) |
//! | fast even flicker, 5 times a second | starting (a failed source keeps "no signal" while it retries) |
//! | two short blinks every second | no signal: a source failed or stalled; see `/state` |
//! | off | picamd is stopping or not running |
//!
//! With several streams the most urgent state wins: no signal, then starting, then live.
//! A new state shows at once: its pattern starts from the beginning (lit) when it begins.
//! A failed source and a stalled one share the double blink, since both mean viewers see
//! "no signal" (`/state` tells which, and why).
//!
//! Backends: `gpio` drives a BCM pin through rppal; at exit the pin stays an output at the
//! off level (an input could leave an active-low LED glowing). `sysfs` takes over a board
//! LED under `/sys/class/leds` by setting its trigger to `none`; at exit it is switched off
//! and given back to the trigger it had (on a Pi's `ACT`, SD card activity), so the board
//! behaves as stock once picamd has stopped. A backend that cannot be opened (not a Pi, no
//! such LED, no permission) or that fails later is logged once as a warning and picamd
//! carries on without an LED.

mod backend;
mod pattern;

use std::io;
use std::time::{Duration, Instant};

pub use backend::{GpioLed, LedError, LedOutput, Recorder, SysfsLed, SYSFS_LEDS};
pub use pattern::{led_on, Pattern};

use crate::hub::{Activity, Hub};
use crate::shutdown::Shutdown;

/// How often the LED thread samples the streams' state. Pattern edges are multiples of it.
pub const TICK: Duration = Duration::from_millis(50);

/// The highest BCM GPIO number on the Pi's 40-pin header.
const MAX_HEADER_GPIO: u8 = 27;

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
        let backend = self.backend.as_deref().unwrap_or("none");
        let own_keys: &[&str] = match backend {
            "none" => &[],
            "gpio" => &["pin", "active_low"],
            "sysfs" => &["name"],
            other => {
                return Err(format!(
                    "`led.backend`: unknown backend {other:?}; use \"none\", \"gpio\" or \"sysfs\""
                ))
            }
        };
        // A key of another backend is most likely a forgotten or mistyped `backend`: say so
        // rather than silently run without the LED the user expects.
        for (key, set, owner) in [
            ("pin", self.pin.is_some(), "gpio"),
            ("active_low", self.active_low.is_some(), "gpio"),
            ("name", self.name.is_some(), "sysfs"),
        ] {
            if set && !own_keys.contains(&key) {
                let current = match &self.backend {
                    Some(b) => format!("is {b:?}"),
                    None => "is not set (no LED)".to_owned(),
                };
                return Err(format!(
                    "`led.{key}`: only used with `backend = \"{owner}\"`, but `led.backend` \
                     {current}"
                ));
            }
        }
        match backend {
            "gpio" => {
                let pin = self.pin.ok_or(
                    "`led.pin`: required with `backend = \"gpio\"`: the BCM GPIO number \
                     (0 to 27) the LED is wired to",
                )?;
                if pin > MAX_HEADER_GPIO {
                    return Err(format!(
                        "`led.pin`: {pin} is not a GPIO of the Pi's header; BCM numbers go \
                         from 0 to {MAX_HEADER_GPIO}"
                    ));
                }
                Ok(LedSpec::Gpio {
                    pin,
                    active_low: self.active_low.unwrap_or(false),
                })
            }
            "sysfs" => {
                let name = self.name.as_deref().ok_or(
                    "`led.name`: required with `backend = \"sysfs\"`: the LED's name under \
                     /sys/class/leds, e.g. \"ACT\"",
                )?;
                // The name is joined to a path that picamd writes to.
                if name.is_empty()
                    || name == "."
                    || name.contains("..")
                    || name.contains(['/', '\0'])
                {
                    return Err(format!(
                        "`led.name`: {name:?} is not an LED name: a plain file name under \
                         /sys/class/leds is expected, e.g. \"ACT\""
                    ));
                }
                Ok(LedSpec::Sysfs {
                    name: name.to_owned(),
                })
            }
            _ => Ok(LedSpec::None),
        }
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
    let open: Opener = match spec {
        LedSpec::None => return Ok(LedThread { handle: None }),
        LedSpec::Gpio { pin, active_low } => {
            Box::new(move || Ok(Box::new(GpioLed::open(pin, active_low)?) as Box<_>))
        }
        LedSpec::Sysfs { name } => Box::new(move || Ok(Box::new(SysfsLed::open(&name)?) as Box<_>)),
    };
    spawn_with(
        open,
        move || Activity::combine(hubs.iter().map(Hub::activity)),
        shutdown,
    )
}

type Opener = Box<dyn FnOnce() -> Result<Box<dyn LedOutput>, LedError> + Send>;

/// [`spawn`] with any backend and source of activity.
fn spawn_with(
    open: Opener,
    activity: impl FnMut() -> Activity + Send + 'static,
    shutdown: Shutdown,
) -> io::Result<LedThread> {
    let handle = std::thread::Builder::new()
        .name("led".into())
        // Opened on the thread: a slow sysfs or GPIO open must not hold up startup.
        .spawn(move || {
            if let Some(mut out) = open_or_warn(open) {
                drive(&mut *out, activity, &shutdown);
            }
        })?;
    Ok(LedThread {
        handle: Some(handle),
    })
}

fn open_or_warn(open: Opener) -> Option<Box<dyn LedOutput>> {
    match open() {
        Ok(out) => Some(out),
        Err(e) => {
            tracing::warn!("status LED unavailable, carrying on without it: {e}");
            None
        }
    }
}

/// Drives `out` on the [`TICK`] grid until shutdown, then switches it off. A failed write
/// is logged once and ends the LED: a sysfs LED that vanished will not come back.
fn drive(out: &mut dyn LedOutput, mut activity: impl FnMut() -> Activity, shutdown: &Shutdown) {
    let mut now = Instant::now();
    let mut driver = Driver::new(now);
    while !shutdown.is_cancelled() {
        if let Err(e) = driver.tick(now, activity(), out) {
            tracing::warn!("status LED failed, carrying on without it: {e}");
            return;
        }
        // The next grid point still ahead; ones missed while starved of CPU are skipped.
        // Patterns are evaluated at grid times, never at the late wake-up time, so a slow
        // wake-up shifts an edge a little but never stretches a pulse by a whole tick.
        let woke = Instant::now();
        now += TICK;
        while now <= woke {
            now += TICK;
        }
        if shutdown.sleep_blocking(now - woke) {
            break;
        }
    }
    if let Err(e) = driver.off(out) {
        tracing::debug!("status LED: cannot switch it off: {e}");
    }
}

/// Turns a sequence of sampled activities into LED writes: the pattern of the current
/// activity, restarted whenever the pattern changes, written only when the value changes.
struct Driver {
    pattern: Pattern,
    since: Instant,
    /// What the LED shows now; backends are off when opened.
    lit: bool,
}

impl Driver {
    fn new(now: Instant) -> Driver {
        Driver {
            pattern: Pattern::Off,
            since: now,
            lit: false,
        }
    }

    fn tick(
        &mut self,
        now: Instant,
        activity: Activity,
        out: &mut dyn LedOutput,
    ) -> io::Result<()> {
        let pattern = Pattern::for_activity(activity);
        // By pattern, not activity: a viewer more, or stalled becoming failed, changes the
        // activity but not what the LED shows, and must not interrupt it.
        if pattern != self.pattern {
            self.pattern = pattern;
            self.since = now;
        }
        self.write(
            pattern.is_on(now.saturating_duration_since(self.since)),
            out,
        )
    }

    fn off(&mut self, out: &mut dyn LedOutput) -> io::Result<()> {
        self.pattern = Pattern::Off;
        self.write(false, out)
    }

    fn write(&mut self, on: bool, out: &mut dyn LedOutput) -> io::Result<()> {
        if on != self.lit {
            out.set(on)?;
            self.lit = on;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
