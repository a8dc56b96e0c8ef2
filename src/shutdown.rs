//! Process-wide shutdown signal, usable from async tasks and from plain threads.
//!
//! Async code awaits [`Shutdown::cancelled`]; the source and encoder threads call
//! [`Shutdown::sleep_blocking`] or poll [`Shutdown::is_cancelled`] between frames.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Cheap to clone; every clone sees the same signal.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    /// Mirrors `token` for threads that must sleep without a runtime.
    fired: Arc<(Mutex<bool>, Condvar)>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next connection on `listener`, or `None` once shutdown has started. An accept error
    /// (out of descriptors and the like) is logged, naming `server`, and retried after a pause
    /// that doubles from 20 ms to 640 ms (`failures` counts them; reset by a success), so a
    /// server never spins on it. The HTTP(S) and RTSP accept loops share this.
    pub async fn accept(
        &self,
        listener: &tokio::net::TcpListener,
        failures: &mut u32,
        server: &str,
    ) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
        loop {
            tokio::select! {
                _ = self.cancelled() => return None,
                r = listener.accept() => match r {
                    Ok(conn) => {
                        *failures = 0;
                        return Some(conn);
                    }
                    Err(e) => {
                        *failures = (*failures + 1).min(6);
                        let wait = Duration::from_millis(10 << *failures);
                        tracing::warn!(error = %e, "{server} accept failed; retrying in {wait:?}");
                        tokio::time::sleep(wait).await;
                    }
                },
            }
        }
    }

    /// Starts shutdown; idempotent.
    pub fn trigger(&self) {
        self.token.cancel();
        let (lock, cv) = &*self.fired;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// Sleeps up to `dur` on the calling thread; returns `true` if shutdown started meanwhile.
    pub fn sleep_blocking(&self, dur: Duration) -> bool {
        let (lock, cv) = &*self.fired;
        let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (fired, _) = cv
            .wait_timeout_while(guard, dur, |fired| !*fired)
            .unwrap_or_else(|p| p.into_inner());
        *fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn sleep_returns_early_on_trigger() {
        let sd = Shutdown::new();
        let sd2 = sd.clone();
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            (sd2.sleep_blocking(Duration::from_secs(30)), start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        sd.trigger();
        let (fired, waited) = t.join().unwrap();
        assert!(fired);
        assert!(waited < Duration::from_secs(30));
        assert!(sd.is_cancelled());
    }
}
