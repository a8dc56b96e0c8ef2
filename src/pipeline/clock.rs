//! Time for the pipeline's threads, through one injectable clock: the supervisor's backoff,
//! the watchdog's cadence and the demand linger read [`Clock::now`] and wait with
//! [`Clock::sleep`], so their tests run on [`SimClock`] without sleeping.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::shutdown::Shutdown;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
    /// Waits `dur`, or less if `shutdown` fires; `true` when shutting down.
    fn sleep(&self, dur: Duration, shutdown: &Shutdown) -> bool;
}

/// The machine's own monotonic clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, dur: Duration, shutdown: &Shutdown) -> bool {
        shutdown.sleep_blocking(dur)
    }
}

/// A clock that moves only when slept on: each sleep advances it at once and is recorded.
pub struct SimClock {
    start: Instant,
    state: Mutex<(Duration, Vec<Duration>)>,
}

impl SimClock {
    pub fn new() -> SimClock {
        SimClock {
            start: Instant::now(),
            state: Mutex::new((Duration::ZERO, Vec::new())),
        }
    }

    /// Every sleep so far, in order.
    pub fn sleeps(&self) -> Vec<Duration> {
        self.state.lock().expect("clock").1.clone()
    }
}

impl Default for SimClock {
    fn default() -> SimClock {
        SimClock::new()
    }
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        self.start + self.state.lock().expect("clock").0
    }

    fn sleep(&self, dur: Duration, shutdown: &Shutdown) -> bool {
        {
            let mut s = self.state.lock().expect("clock");
            s.0 += dur;
            s.1.push(dur);
        }
        // A moment of real time, so a thread that only sleeps does not spin.
        std::thread::sleep(Duration::from_millis(1));
        shutdown.is_cancelled()
    }
}
