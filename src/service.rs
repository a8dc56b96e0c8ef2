//! systemd integration: readiness, a short status line, a watchdog that only pings while
//! the live path works, the stop notice, and socket activation. Outside systemd (no
//! `NOTIFY_SOCKET`, no `LISTEN_FDS`) all of it is a no-op.

use std::os::fd::{FromRawFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt};
use sd_notify::NotifyState;

use crate::hub::{Activity, Hub};
use crate::shutdown::Shutdown;

/// How often `STATUS=` is refreshed.
const STATUS_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("reading the sockets passed by systemd (LISTEN_FDS): {0}")]
    ListenFds(#[source] std::io::Error),
    #[error("the socket passed by systemd (fd {fd}) is not a listening TCP socket")]
    NotListening { fd: RawFd },
}

/// The listening socket systemd passed (socket activation), if `LISTEN_PID` names this
/// process. More than one is unexpected: the first is used and the rest stay unused.
///
/// Call before any other thread starts: it unsets `LISTEN_*` so that children (ffmpeg) do
/// not inherit them.
pub fn take_activated_listener() -> Result<Option<(std::net::TcpListener, RawFd)>, ServiceError> {
    let fds: Vec<RawFd> = sd_notify::listen_fds()
        .map_err(ServiceError::ListenFds)?
        .collect();
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let Some(&fd) = fds.first() else {
        return Ok(None);
    };
    if fds.len() > 1 {
        tracing::warn!(
            count = fds.len(),
            "systemd passed {} sockets; serving on the first (fd {fd}) only",
            fds.len()
        );
    }
    // SAFETY: systemd hands this descriptor to the process, and nothing else in it knows
    // about it; `listen_fds` has already marked it close-on-exec.
    let fd_ref = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let listening = getsockopt(&fd_ref, sockopt::AcceptConn).unwrap_or(false)
        && getsockopt(&fd_ref, sockopt::SockType)
            .is_ok_and(|t| t == nix::sys::socket::SockType::Stream);
    if !listening {
        return Err(ServiceError::NotListening { fd });
    }
    // SAFETY: as above; from here the listener owns it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    Ok(Some((listener, fd)))
}

/// Whether a stream's live path is wedged: frames are expected and do not come.
#[derive(Debug)]
struct LiveCheck {
    stall_window: Duration,
    /// When the stream was first seen live in the current spell: frames are expected from
    /// then on, not since some capture before an idle spell.
    live_since: Option<Instant>,
}

impl LiveCheck {
    fn new(fps: u32) -> Self {
        LiveCheck {
            stall_window: crate::pipeline::state::stall_window(fps),
            live_since: None,
        }
    }

    /// Stalled (running, nothing delivered), or live with no capture for the stall window.
    /// A failing source is not wedged — its supervisor retries it — and an idle one is
    /// expected to be quiet.
    fn wedged(&mut self, activity: Activity, last_captured: Option<Instant>, now: Instant) -> bool {
        match activity {
            Activity::Live { .. } => {
                let since = *self.live_since.get_or_insert(now);
                let reference = last_captured.map_or(since, |t| t.max(since));
                now.saturating_duration_since(reference) > self.stall_window
            }
            other => {
                self.live_since = None;
                other == (Activity::Down { stalled: true })
            }
        }
    }
}

/// The `STATUS=` line: each stream's state, rate and viewers, in few words.
fn status_line(streams: &[(String, Activity, f64)], wedged: &[&str]) -> String {
    let describe = |a: &Activity, fps: f64| match a {
        Activity::Live { viewers } => format!(
            "live {fps:.0} fps, {viewers} viewer{}",
            if *viewers == 1 { "" } else { "s" }
        ),
        other => other.as_str().to_owned(),
    };
    let mut line = match streams {
        [(_, a, fps)] => describe(a, *fps),
        many => many
            .iter()
            .map(|(name, a, fps)| format!("{name}: {}", describe(a, *fps)))
            .collect::<Vec<_>>()
            .join("; "),
    };
    if !wedged.is_empty() {
        line.push_str(&format!(
            " — watchdog withheld: {} wedged",
            wedged.join(", ")
        ));
    }
    line
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "cannot notify systemd");
    }
}

/// Tells systemd the service is ready, keeps its status current and pings its watchdog
/// while every stream's live path works, until `shutdown`, when it says so (`STOPPING=1`).
/// Start it once the listener is bound and every pipeline is set up.
pub async fn supervise(hubs: Vec<Hub>, shutdown: Shutdown) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    // `WATCHDOG_PID` naming another process (a wrapper's child) means the watchdog is not ours.
    let watchdog = sd_notify::watchdog_enabled();
    let tick = match watchdog {
        // systemd's advice: ping at half the interval; checking at a third leaves room for a
        // late tick and still stops pinging promptly once a stream wedges.
        Some(t) => (t / 3).clamp(Duration::from_millis(20), STATUS_INTERVAL),
        None => STATUS_INTERVAL,
    };
    let mut checks: Vec<LiveCheck> = hubs.iter().map(|h| LiveCheck::new(h.info().fps)).collect();
    let mut was_wedged: Vec<bool> = vec![false; hubs.len()];
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status: Option<Instant> = None;
    let mut ready_sent = false;
    tracing::debug!(?watchdog, ?tick, "notifying systemd");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = interval.tick() => {}
        }
        let now = Instant::now();
        let mut wedged = Vec::new();
        let mut streams = Vec::with_capacity(hubs.len());
        let mut changed = false;
        for ((hub, check), was) in hubs.iter().zip(&mut checks).zip(&mut was_wedged) {
            let activity = hub.activity();
            let name = &hub.info().name;
            let is = check.wedged(activity, hub.last_captured(), now);
            if is != *was {
                if is {
                    tracing::warn!(stream = %name, "stream wedged: no frames while watched; withholding the systemd watchdog ping");
                } else {
                    tracing::info!(stream = %name, "stream delivers frames again; watchdog pings resume");
                }
                *was = is;
                changed = true;
            }
            if is {
                wedged.push(name.as_str());
            }
            streams.push((name.clone(), activity, hub.measured_fps()));
        }
        let status = status_line(&streams, &wedged);
        let status_due = changed || last_status.is_none_or(|t| now - t >= STATUS_INTERVAL);
        let mut msg = Vec::with_capacity(3);
        if !ready_sent {
            msg.push(NotifyState::Ready);
        }
        if status_due {
            msg.push(NotifyState::Status(&status));
        }
        if watchdog.is_some() && wedged.is_empty() {
            msg.push(NotifyState::Watchdog);
        }
        if !msg.is_empty() {
            notify(&msg);
        }
        ready_sent = true;
        if status_due {
            last_status = Some(now);
        }
    }
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stalls_and_silent_live_streams_are_wedged() {
        let mut c = LiveCheck::new(30);
        let t0 = Instant::now() + Duration::from_secs(1000);
        let s = |secs: f64| t0 + Duration::from_secs_f64(secs);
        assert!(!c.wedged(Activity::Idle, None, t0));
        assert!(!c.wedged(Activity::Down { stalled: false }, None, t0));
        assert!(!c.wedged(Activity::Starting, None, t0));
        assert!(c.wedged(Activity::Down { stalled: true }, None, t0));
        // Live: judged from the newer of the last capture and when it became live.
        let live = Activity::Live { viewers: 1 };
        assert!(!c.wedged(live, Some(t0 - Duration::from_secs(100)), s(1.0)));
        assert!(!c.wedged(live, Some(s(2.5)), s(3.0)));
        assert!(c.wedged(live, Some(s(2.5)), s(5.0)));
        // An idle spell resets the reference.
        assert!(!c.wedged(Activity::Idle, Some(s(2.5)), s(10.0)));
        assert!(!c.wedged(live, Some(s(2.5)), s(11.0)));
    }

    #[test]
    fn status_lines_are_short() {
        let one = [("main".to_owned(), Activity::Live { viewers: 1 }, 29.8)];
        assert_eq!(status_line(&one, &[]), "live 30 fps, 1 viewer");
        let two = [
            ("a".to_owned(), Activity::Idle, 0.0),
            ("b".to_owned(), Activity::Down { stalled: true }, 0.0),
        ];
        assert_eq!(
            status_line(&two, &["b"]),
            "a: idle; b: stalled — watchdog withheld: b wedged"
        );
    }
}
