//! Per-client limits: viewer slots (per client address and over all streams) and a request
//! rate (a token bucket per client address).
//!
//! The client address is put into each request's extensions by the accept loop
//! ([`ClientAddr`]): the TCP peer, or, when the peer is in `trusted_proxies`, the client named
//! by its `X-Forwarded-For` ([`super::forwarded`]). Behind a reverse proxy that is not listed
//! every client is the proxy, so raise the per-client limits there. IPv6 clients count by
//! /64 ([`ClientKey`]). Every map is bounded: viewer slots only hold clients with a viewer
//! open (at most `max_viewers_total` of them), and the request buckets are capped at
//! [`MAX_BUCKETS`], dropping buckets that are full again (the same as never seen) and then
//! the stalest.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

pub use crate::auth::ClientKey;

/// Most clients whose request rate is tracked at once.
const MAX_BUCKETS: usize = 4096;
/// A client may burst this many seconds' worth of its rate.
const BURST_SECONDS: f64 = 4.0;

/// The client's address, set by the accept loop on every request: the TCP peer's, or the
/// forwarded client's when the peer is a trusted proxy.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// Extracts the client's address; unspecified when the request did not come through the
/// accept loop (router tests).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ClientAddr>()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.0),
        ))
    }
}

/// Why a viewer was refused a slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    #[error("the server's limit of {0} viewers over all streams is reached")]
    Total(usize),
    #[error("this client already has {0} streams open, the most allowed per client")]
    PerClient(usize),
}

/// Counts stream viewers (MJPEG + WebSocket) per client and in all.
#[derive(Debug)]
pub struct ViewerSlots {
    max_total: usize,
    max_per_client: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_client: HashMap<ClientKey, usize>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ViewerSlots {
    pub fn new(max_total: usize, max_per_client: usize) -> Arc<ViewerSlots> {
        Arc::new(ViewerSlots {
            max_total,
            max_per_client,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// A slot for one viewer from `ip`, given back when the [`ViewerSlot`] drops.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Result<ViewerSlot, SlotError> {
        let client = ClientKey::of(ip);
        let mut c = lock(&self.counts);
        let mine = c.per_client.get(&client).copied().unwrap_or(0);
        if mine >= self.max_per_client {
            return Err(SlotError::PerClient(self.max_per_client));
        }
        if c.total >= self.max_total {
            return Err(SlotError::Total(self.max_total));
        }
        c.total += 1;
        c.per_client.insert(client, mine + 1);
        Ok(ViewerSlot {
            slots: self.clone(),
            client,
        })
    }

    /// Viewers open now, and distinct clients holding them.
    pub fn open(&self) -> (usize, usize) {
        let c = lock(&self.counts);
        (c.total, c.per_client.len())
    }
}

/// One viewer's place; frees it on drop.
#[derive(Debug)]
pub struct ViewerSlot {
    slots: Arc<ViewerSlots>,
    client: ClientKey,
}

impl Drop for ViewerSlot {
    fn drop(&mut self) {
        let mut c = lock(&self.slots.counts);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                c.per_client.remove(&self.client);
            }
        }
    }
}

/// A token bucket per client: `rate` requests per second, bursts of [`BURST_SECONDS`] worth.
#[derive(Debug)]
pub struct RequestLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<ClientKey, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(burst)
    }
}

impl RequestLimiter {
    /// `None` for a rate of 0 (no limit).
    pub fn new(rate: u32) -> Option<RequestLimiter> {
        (rate > 0).then(|| RequestLimiter {
            rate: rate as f64,
            burst: (rate as f64 * BURST_SECONDS).max(1.0),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one request's token, or says how long until one is there.
    pub fn take(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let client = ClientKey::of(ip);
        let (rate, burst) = (self.rate, self.burst);
        let mut buckets = lock(&self.buckets);
        if !buckets.contains_key(&client) && buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, b| b.refilled(now, rate, burst) < burst);
            if buckets.len() >= MAX_BUCKETS {
                if let Some(stalest) = buckets.iter().min_by_key(|(_, b)| b.at).map(|(k, _)| *k) {
                    buckets.remove(&stalest);
                }
            }
        }
        let b = buckets.entry(client).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let tokens = b.refilled(now, rate, burst);
        b.at = now;
        if tokens >= 1.0 {
            b.tokens = tokens - 1.0;
            Ok(())
        } else {
            b.tokens = tokens;
            Err(Duration::from_secs_f64((1.0 - tokens) / rate))
        }
    }

    pub fn tracked(&self) -> usize {
        lock(&self.buckets).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    #[test]
    fn viewer_slots_count_per_client_and_in_all() {
        let s = ViewerSlots::new(5, 2);
        let a1 = s.take(ip(1)).unwrap();
        let _a2 = s.take(ip(1)).unwrap();
        assert_eq!(s.take(ip(1)).unwrap_err(), SlotError::PerClient(2));
        let _b = s.take(ip(2)).unwrap();
        let _c = s.take(ip(3)).unwrap();
        let _d = s.take(ip(4)).unwrap();
        assert_eq!(s.take(ip(5)).unwrap_err(), SlotError::Total(5));
        assert_eq!(s.open(), (5, 4));
        drop(a1);
        assert_eq!(s.open(), (4, 4));
        let _a3 = s.take(ip(1)).unwrap();
        drop((_a2, _a3));
        assert_eq!(s.open(), (3, 3), "a client with no viewer leaves the map");
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let l = RequestLimiter::new(10).unwrap();
        let t0 = Instant::now();
        for i in 0..40 {
            assert!(l.take(ip(1), t0).is_ok(), "request {i} of the burst");
        }
        let wait = l.take(ip(1), t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(l.take(ip(2), t0).is_ok(), "other clients are not affected");
        // 10/s: one more after 100 ms, and only one.
        let t1 = t0 + Duration::from_millis(100);
        assert!(l.take(ip(1), t1).is_ok());
        assert!(l.take(ip(1), t1).is_err());
        assert!(RequestLimiter::new(0).is_none());
    }

    #[test]
    fn the_bucket_map_is_capped() {
        let l = RequestLimiter::new(1).unwrap();
        let t0 = Instant::now();
        for n in 0..(MAX_BUCKETS as u32 + 100) {
            let _ = l.take(ip(n), t0);
        }
        assert_eq!(l.tracked(), MAX_BUCKETS);
        // Once buckets are full again they are dropped first.
        let later = t0 + Duration::from_secs(60);
        let _ = l.take(ip(u32::MAX), later);
        assert_eq!(l.tracked(), 1);
    }
}
