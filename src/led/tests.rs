use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::*;
use crate::hub::{Output, SourceState};

use Activity::*;

/// A directory laid out like `/sys/class/leds`, removed on drop.
pub(super) struct FakeLeds {
    pub base: PathBuf,
}

impl FakeLeds {
    pub fn new(tag: &str) -> FakeLeds {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base =
            std::env::temp_dir().join(format!("picamd-leds-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        FakeLeds { base }
    }

    /// Adds an LED as the Pi's `ACT` looks: SD card trigger, lit.
    pub fn add(&self, name: &str, max: &str) -> PathBuf {
        let dir = self.base.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("trigger"), "none [mmc0] timer heartbeat\n").unwrap();
        std::fs::write(dir.join("brightness"), "255\n").unwrap();
        std::fs::write(dir.join("max_brightness"), format!("{max}\n")).unwrap();
        dir
    }

    pub fn read(&self, name: &str, attr: &str) -> String {
        std::fs::read_to_string(self.base.join(name).join(attr)).unwrap()
    }
}

impl Drop for FakeLeds {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

// ---- configuration ----

fn config(backend: Option<&str>) -> LedConfig {
    LedConfig {
        backend: backend.map(str::to_owned),
        ..LedConfig::default()
    }
}

#[test]
fn resolve_accepts_each_backend() {
    assert_eq!(LedConfig::default().resolve(), Ok(LedSpec::None));
    assert_eq!(config(Some("none")).resolve(), Ok(LedSpec::None));
    let gpio = |pin, active_low| LedConfig {
        pin: Some(pin),
        active_low,
        ..config(Some("gpio"))
    };
    assert_eq!(
        gpio(17, None).resolve(),
        Ok(LedSpec::Gpio {
            pin: 17,
            active_low: false
        })
    );
    assert_eq!(
        gpio(0, Some(true)).resolve(),
        Ok(LedSpec::Gpio {
            pin: 0,
            active_low: true
        })
    );
    assert_eq!(gpio(27, None).resolve().map(|_| ()), Ok(()));
    let sysfs = LedConfig {
        name: Some("mmc0::".into()),
        ..config(Some("sysfs"))
    };
    assert_eq!(
        sysfs.resolve(),
        Ok(LedSpec::Sysfs {
            name: "mmc0::".into()
        })
    );
}

#[test]
fn resolve_errors_name_the_key() {
    let err = |c: LedConfig| c.resolve().unwrap_err();
    let starts = |e: String, key: &str| {
        assert!(e.starts_with(&format!("`led.{key}`: ")), "{e}");
        e
    };

    let e = starts(err(config(Some("GPIO"))), "backend");
    assert!(e.contains("\"GPIO\""), "{e}");

    let e = starts(err(config(Some("gpio"))), "pin");
    assert!(e.contains("required"), "{e}");
    let e = starts(
        err(LedConfig {
            pin: Some(28),
            ..config(Some("gpio"))
        }),
        "pin",
    );
    assert!(e.contains("28") && e.contains("0 to 27"), "{e}");

    let e = starts(err(config(Some("sysfs"))), "name");
    assert!(e.contains("required"), "{e}");
    for bad in ["", ".", "..", "../ACT", "ACT/..", "leds/ACT", "/ACT", "A\0"] {
        let e = starts(
            err(LedConfig {
                name: Some(bad.into()),
                ..config(Some("sysfs"))
            }),
            "name",
        );
        assert!(e.contains("plain file name"), "{bad:?}: {e}");
    }
}

#[test]
fn resolve_refuses_keys_of_another_backend() {
    let err = |c: LedConfig| c.resolve().unwrap_err();
    let e = err(LedConfig {
        pin: Some(17),
        ..LedConfig::default()
    });
    assert!(
        e.starts_with("`led.pin`: ") && e.contains("\"gpio\"") && e.contains("not set"),
        "{e}"
    );
    let e = err(LedConfig {
        active_low: Some(true),
        ..config(Some("none"))
    });
    assert!(
        e.starts_with("`led.active_low`: ") && e.contains("\"none\""),
        "{e}"
    );
    let e = err(LedConfig {
        pin: Some(17),
        name: Some("ACT".into()),
        ..config(Some("gpio"))
    });
    assert!(
        e.starts_with("`led.name`: ") && e.contains("\"sysfs\""),
        "{e}"
    );
    let e = err(LedConfig {
        name: Some("ACT".into()),
        active_low: Some(false),
        ..config(Some("sysfs"))
    });
    assert!(e.starts_with("`led.active_low`: "), "{e}");
}

#[test]
fn config_table_parses_from_toml() {
    let c: LedConfig = toml::from_str("backend = \"gpio\"\npin = 4\nactive_low = true\n").unwrap();
    assert_eq!(
        c.resolve(),
        Ok(LedSpec::Gpio {
            pin: 4,
            active_low: true
        })
    );
    assert!(toml::from_str::<LedConfig>("pim = 4").is_err());
}

// ---- the driver, on a simulated clock ----

/// Ticks a driver through `schedule` (activity, for how many ms) on the 50 ms grid, then
/// shuts down; returns every write to the recording backend as (ms, on).
fn run_schedule(schedule: &[(Activity, u64)]) -> Vec<(u64, bool)> {
    let rec = Recorder::new();
    let mut out = rec.clone();
    let t0 = Instant::now();
    let mut driver = Driver::new(t0);
    let mut writes = Vec::new();
    let mut t = 0;
    let note = |t: u64, writes: &mut Vec<(u64, bool)>| {
        let all = rec.writes();
        writes.extend(all[writes.len()..].iter().map(|&(_, on)| (t, on)));
    };
    for &(activity, ms) in schedule {
        let end = t + ms;
        while t < end {
            driver
                .tick(t0 + Duration::from_millis(t), activity, &mut out)
                .unwrap();
            note(t, &mut writes);
            t += TICK.as_millis() as u64;
        }
    }
    driver.off(&mut out).unwrap();
    note(t, &mut writes);
    writes
}

/// Every write changes the LED.
fn assert_alternates(writes: &[(u64, bool)]) {
    for pair in writes.windows(2) {
        assert_ne!(pair[0].1, pair[1].1, "repeated write in {writes:?}");
    }
    if let Some(first) = writes.first() {
        assert!(
            first.1,
            "the LED starts off; first write must be on: {writes:?}"
        );
    }
}

#[test]
fn live_is_a_single_write_however_long() {
    let w = run_schedule(&[(Live { viewers: 1 }, 3000), (Live { viewers: 4 }, 2000)]);
    assert_eq!(w, [(0, true), (5000, false)]);
}

#[test]
fn starting_writes_every_edge_and_only_edges() {
    let w = run_schedule(&[(Starting, 1000)]);
    let expected: Vec<(u64, bool)> = (0..10).map(|i| (i * 100, i % 2 == 0)).collect();
    assert_eq!(w, expected);
}

#[test]
fn idle_blips_and_down_double_blinks() {
    assert_eq!(
        run_schedule(&[(Idle, 4500)]),
        [
            (0, true),
            (100, false),
            (2000, true),
            (2100, false),
            (4000, true),
            (4100, false)
        ]
    );
    assert_eq!(
        run_schedule(&[(Down { stalled: true }, 2000)]),
        [
            (0, true),
            (100, false),
            (300, true),
            (400, false),
            (1000, true),
            (1100, false),
            (1300, true),
            (1400, false)
        ]
    );
}

#[test]
fn a_new_state_shows_at_once() {
    // Mid-way through the idle pause, starting lights the LED on the very next tick.
    assert_eq!(
        run_schedule(&[(Idle, 500), (Starting, 300)]),
        [
            (0, true),
            (100, false),
            (500, true),
            (600, false),
            (700, true),
            (800, false)
        ]
    );
    // Back from live, the double blink starts over rather than resuming mid-cycle.
    assert_eq!(
        run_schedule(&[
            (Down { stalled: false }, 500),
            (Live { viewers: 1 }, 200),
            (Down { stalled: false }, 500)
        ]),
        [
            (0, true),
            (100, false),
            (300, true),
            (400, false),
            (500, true),
            (800, false),
            (1000, true),
            (1100, false)
        ]
    );
}

#[test]
fn same_pattern_is_not_restarted() {
    // Stalled → failed at 150 ms: a restart would light the LED at 150.
    assert_eq!(
        run_schedule(&[
            (Down { stalled: true }, 150),
            (Down { stalled: false }, 850)
        ]),
        [(0, true), (100, false), (300, true), (400, false)]
    );
}

#[test]
fn stopping_switches_off() {
    assert_eq!(
        run_schedule(&[(Live { viewers: 2 }, 200), (Stopped, 1000)]),
        [(0, true), (200, false)]
    );
}

#[test]
fn mixed_schedule_writes_only_changes() {
    let schedule = [
        (Starting, 730),
        (Idle, 2100),
        (Live { viewers: 1 }, 400),
        (Down { stalled: true }, 1250),
        (Starting, 450),
        (Down { stalled: false }, 900),
        (Live { viewers: 3 }, 1000),
    ];
    let w = run_schedule(&schedule);
    assert_alternates(&w);
    assert!(w.len() > 20, "{w:?}");
    assert_eq!(w.last(), Some(&(6850, false)));
}

// ---- the thread, with real hubs and real time ----

fn hub() -> Hub {
    Hub::for_tests(10)
}

fn recording(rec: &Recorder) -> Opener {
    let rec = rec.clone();
    Box::new(move || Ok(Box::new(rec) as Box<dyn LedOutput>))
}

fn spawn_on_hubs(rec: &Recorder, hubs: Vec<Hub>, shutdown: &Shutdown) -> LedThread {
    spawn_with(
        recording(rec),
        move || Activity::combine(hubs.iter().map(Hub::activity)),
        shutdown.clone(),
    )
    .unwrap()
}

/// Triggers shutdown and joins. The thread leaves within a tick or two; the bound here
/// only catches a hang (this machine may be busy, so no timing is asserted).
fn stop(thread: LedThread, shutdown: &Shutdown) {
    let asked = Instant::now();
    shutdown.trigger();
    thread.join();
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(5), "join took {took:?}");
}

/// Waits (generously) until the recorder holds at least `n` writes.
fn wait_for_writes(rec: &Recorder, n: usize) -> Vec<(Instant, bool)> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let w = rec.writes();
        if w.len() >= n || Instant::now() > until {
            return w;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn thread_follows_the_hubs_and_switches_off_at_shutdown() {
    let (a, b) = (hub(), hub());
    a.set_source_state(SourceState::Streaming);
    b.set_source_state(SourceState::Streaming);
    let viewer = a.add_viewer(Output::Mjpeg).unwrap();
    let rec = Recorder::new();
    let sd = Shutdown::new();
    let thread = spawn_on_hubs(&rec, vec![a.clone(), b.clone()], &sd);

    std::thread::sleep(Duration::from_millis(400));
    let w: Vec<bool> = wait_for_writes(&rec, 1).iter().map(|w| w.1).collect();
    assert_eq!(w, [true], "live is solid on");

    // The other stream fails: no signal wins over live. The double blink's timing is
    // checked on a simulated clock above; here only its shape, on the real thread.
    b.set_source_state(SourceState::Error("gone".into()));
    let w = wait_for_writes(&rec, 5);
    let values: Vec<bool> = w[1..].iter().map(|w| w.1).collect();
    assert!(
        values.len() >= 4 && values[..4] == [false, true, false, true],
        "{values:?}"
    );

    drop(viewer);
    stop(thread, &sd);
    let w = rec.writes();
    assert_eq!(w.last().map(|w| w.1), Some(false), "off at shutdown");
    assert_alternates(&w.iter().map(|&(_, on)| (0, on)).collect::<Vec<_>>());
}

#[test]
fn shutdown_while_lit_switches_off_promptly() {
    let h = hub();
    h.set_source_state(SourceState::Streaming);
    let _viewer = h.add_viewer(Output::WebSocket).unwrap();
    let rec = Recorder::new();
    let sd = Shutdown::new();
    let thread = spawn_on_hubs(&rec, vec![h], &sd);
    std::thread::sleep(Duration::from_millis(200));
    stop(thread, &sd);
    let w: Vec<bool> = rec.writes().iter().map(|w| w.1).collect();
    assert_eq!(w, [true, false]);
}

#[test]
fn a_fresh_hub_is_starting_then_idle() {
    let h = hub();
    let rec = Recorder::new();
    let sd = Shutdown::new();
    let thread = spawn_on_hubs(&rec, vec![h.clone()], &sd);
    std::thread::sleep(Duration::from_millis(480));
    // ~5 Hz for ~0.5 s: at most 6 edges (fewer if this machine is busy, never more).
    assert!(rec.writes().len() <= 6, "{:?}", rec.writes());
    let starting = wait_for_writes(&rec, 2).len();
    assert!(starting >= 2, "starting blinks: {:?}", rec.writes());
    h.set_source_state(SourceState::Idle);
    std::thread::sleep(Duration::from_millis(600));
    // Idle: at most the blip (on, off) and then dark.
    let idle = rec.writes().len() - starting;
    assert!(idle <= 2, "{:?}", rec.writes());
    stop(thread, &sd);
}

// ---- failures: one warning, then no LED ----

/// A writer collecting what a test's tracing subscriber prints.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The warnings logged on this thread while `f` runs.
fn warnings_during<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let buf = Captured::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (out, text.lines().map(str::to_owned).collect())
}

#[test]
fn a_missing_sysfs_led_is_one_warning() {
    let leds = FakeLeds::new("warn");
    let base = leds.base.clone();
    let (out, warnings) = warnings_during(|| {
        open_or_warn(Box::new(move || {
            Ok(Box::new(SysfsLed::open_in(&base, "ACT")?) as Box<dyn LedOutput>)
        }))
    });
    assert!(out.is_none());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("WARN")
            && warnings[0].contains("carrying on without it")
            && warnings[0].contains("ACT/max_brightness"),
        "{warnings:?}"
    );
}

#[test]
fn a_failing_backend_is_one_warning_and_ends_the_led() {
    let rec = Recorder::new();
    rec.fail_from_now();
    let sd = Shutdown::new();
    let mut out = rec.clone();
    let started = Instant::now();
    let ((), warnings) = warnings_during(|| drive(&mut out, || Starting, &sd));
    // The driver gives up at the first failed write instead of running until shutdown (the
    // bound only catches a driver that never returns).
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("status LED failed"), "{warnings:?}");
}

#[test]
fn spawn_without_an_led_or_off_a_pi_carries_on() {
    let sd = Shutdown::new();
    spawn(LedSpec::None, vec![hub()], sd.clone())
        .unwrap()
        .join();
    let thread = spawn(
        LedSpec::Sysfs {
            name: "picamd-test-no-such-led".into(),
        },
        vec![hub()],
        sd.clone(),
    )
    .unwrap();
    // The thread ends on its own: join returns without a shutdown.
    thread.join();
    if rppal::gpio::Gpio::new().is_err() {
        spawn(
            LedSpec::Gpio {
                pin: 17,
                active_low: false,
            },
            vec![hub()],
            sd.clone(),
        )
        .unwrap()
        .join();
    }
    assert!(!sd.is_cancelled());
}

#[test]
fn sysfs_led_driven_by_the_thread() {
    let leds = FakeLeds::new("thread");
    leds.add("ACT", "255");
    let base = leds.base.clone();
    let sd = Shutdown::new();
    let thread = spawn_with(
        Box::new(move || Ok(Box::new(SysfsLed::open_in(&base, "ACT")?) as Box<dyn LedOutput>)),
        || Starting,
        sd.clone(),
    )
    .unwrap();
    let (mut seen_on, mut seen_off) = (false, false);
    // Generous: the loop ends as soon as both are seen; a loaded machine may start the thread late.
    let until = Instant::now() + Duration::from_secs(10);
    while !(seen_on && seen_off) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
        if leds.read("ACT", "trigger") != "none" {
            continue; // not taken over yet
        }
        match leds.read("ACT", "brightness").as_str() {
            "255" => seen_on = true,
            "0" => seen_off = seen_on,
            // The fake is a plain file, written by truncate-then-write: a read between the two
            // sees it empty (sysfs attributes have no such moment). Read again.
            "" => continue,
            other => panic!("brightness {other:?}"),
        }
    }
    assert!(seen_on && seen_off, "the flicker toggles brightness");
    stop(thread, &sd);
    assert_eq!(leds.read("ACT", "brightness"), "0");
    assert_eq!(leds.read("ACT", "trigger"), "mmc0");
}
