//! The emit thread (`src-lcam-emit`) and what it shares with the source thread.
//!
//! `SourceContext::wait_for_demand` blocks while nobody watches; were it called on the source
//! thread, the camera would keep running with its buffers stuck. So the context lives on this
//! thread: it waits for demand, numbers and emits frames, and takes them from a one-slot
//! [`Mailbox`] (a newer frame replaces an unsent one). The [`Gate`] tells the source thread
//! whether this thread waits for demand, so the camera is released once frames are no longer
//! wanted, and started again when demand returns.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::POLL;
use crate::frame::Frame;
use crate::source::{Demand, SourceContext};

/// A `wait_for_demand` that took longer than this blocked (nobody watched): frames captured
/// before it returned are stale (a snapshot must be captured after its request). Well above
/// what the call costs when it does not block, even on a slow, busy machine.
const BLOCKED_WAIT: Duration = Duration::from_millis(50);

#[derive(Default)]
struct GateState {
    /// The emit thread is in `wait_for_demand`.
    waiting: bool,
    /// How many times `wait_for_demand` returned with demand.
    passes: u64,
    /// The process is shutting down.
    shutdown: bool,
    /// The source thread is done with this run.
    closed: bool,
}

/// Demand as the emit thread sees it, for the source thread.
pub(super) struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
    demand: Arc<dyn Demand>,
}

pub(super) enum Wake {
    Demand,
    Stop,
}

impl Gate {
    pub(super) fn new(demand: Arc<dyn Demand>) -> Gate {
        Gate {
            state: Mutex::default(),
            changed: Condvar::new(),
            demand,
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut GateState)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }

    /// The source thread is done with this run: the emit thread returns.
    pub(super) fn close(&self) {
        self.update(|s| s.closed = true);
    }

    /// Waits until the emit thread has passed `wait_for_demand` more than `seen` times.
    pub(super) fn wait_demand(&self, seen: u64) -> Wake {
        let mut s = self.lock();
        loop {
            if s.shutdown || s.closed {
                return Wake::Stop;
            }
            if s.passes > seen {
                return Wake::Demand;
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub(super) fn passes(&self) -> u64 {
        self.lock().passes
    }

    pub(super) fn should_stop(&self) -> bool {
        let s = self.lock();
        s.shutdown || s.closed
    }

    /// The emit thread waits for demand and frames are no longer wanted: release the camera.
    pub(super) fn idle(&self) -> bool {
        // Not under the gate's lock: the demand signal has a lock of its own.
        let waiting = self.lock().waiting;
        waiting && !self.demand.wanted()
    }
}

#[derive(Default)]
struct MailboxState {
    frame: Option<Frame>,
    closed: bool,
}

/// One frame from the source thread to the emit thread; a newer one replaces (drops) it.
#[derive(Default)]
pub(super) struct Mailbox {
    state: Mutex<MailboxState>,
    filled: Condvar,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, MailboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn put(&self, frame: Frame) {
        let old = self.lock().frame.replace(frame);
        self.filled.notify_all();
        drop(old);
    }

    fn take(&self, timeout: Duration) -> Option<Frame> {
        let mut s = self.lock();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = s.frame.take() {
                return Some(f);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if s.closed || left.is_zero() {
                return None;
            }
            s = self
                .filled
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    pub(super) fn clear(&self) {
        let old = self.lock().frame.take();
        drop(old);
    }

    pub(super) fn close(&self) {
        let old = {
            let mut s = self.lock();
            s.closed = true;
            s.frame.take()
        };
        self.filled.notify_all();
        drop(old);
    }
}

/// The emit thread: waits for demand, numbers and emits frames from the mailbox.
pub(super) fn emit_loop(ctx: &mut SourceContext, gate: &Gate, mailbox: &Mailbox) {
    let mut fresh_after = Instant::now();
    loop {
        gate.update(|s| s.waiting = true);
        let started = Instant::now();
        let demand = ctx.wait_for_demand();
        if started.elapsed() > BLOCKED_WAIT {
            fresh_after = Instant::now();
        }
        gate.update(|s| {
            s.waiting = false;
            if demand {
                s.passes += 1;
            } else {
                s.shutdown = true;
            }
        });
        if !demand || gate.should_stop() {
            return;
        }
        let Some(mut frame) = mailbox.take(POLL * 2) else {
            continue;
        };
        if frame.captured.mono < fresh_after {
            continue;
        }
        frame.seq = ctx.next_seq();
        ctx.emit(frame);
    }
}
