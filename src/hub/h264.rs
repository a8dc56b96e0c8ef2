//! The H.264 track: a stream's access units for the outputs that send H.264, beside the JPEG
//! track ([`super::Hub::subscribe`]), which it does not touch.
//!
//! H.264 cannot drop frames the way JPEG can: a P-frame needs every frame since its keyframe.
//! So the track keeps the units since the newest keyframe (the current GOP, bounded by
//! [`MAX_UNITS`] and [`MAX_BYTES`]) and each consumer holds only a position in it:
//!
//! - a new consumer waits for the next keyframe and asks for one (the encoder serves the
//!   request with its next frame, at most one forced keyframe per 0.5 s) — it starts at most
//!   two frame intervals after joining, with the keyframe the encoder made for it, instead of
//!   replaying a GOP of the past; if the newest unit already is a keyframe it starts there;
//! - a consumer whose next unit is gone (it fell a GOP behind, or past the bounds) or that is
//!   more than [`MAX_LAG_UNITS`] behind skips to the newest keyframe, or waits for the next
//!   one, instead of queueing;
//! - per consumer the track holds a position, nothing else: memory is the GOP, once, and a
//!   slow consumer cannot slow the encoder or the others.
//!
//! When the source passes its input's own H.264 through ([`H264Supply::Source`]) nobody can
//! make a keyframe on request: the camera sends one every GOP (often 2-4 s). A new consumer
//! then starts at once at the newest keyframe kept (the GOP so far, SPS and PPS in front),
//! and catches up with the present by taking the kept units as fast as it can; only when
//! the bounds have cut that keyframe off does it wait for the camera's next one. The lag
//! rule does not apply (skipping ahead needs a keyframe that only the camera can make): a
//! slow consumer goes on until the next keyframe drops the GOP it is in, then jumps there,
//! so it is never more than one GOP behind.
//!
//! The pipeline reads the consumer count (the encoder runs only while there are consumers)
//! and the keyframe requests through one listener ([`H264Track::on_change`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::sync::watch;

use super::{lock, ViewerGuard};
use crate::frame::{AccessUnit, H264Supply, NAL_PPS, NAL_SPS};

/// Most units kept: a 2 s GOP at 120 fps, or 10 s at 24 fps (a camera's 4 s GOP at 30 fps is
/// 120).
pub const MAX_UNITS: usize = 256;
/// Most bytes kept: a 2 s GOP at 16 Mbit/s (a camera's 4 s GOP at 1080p and 4 Mbit/s is
/// about 2 MB).
pub const MAX_BYTES: usize = 4 << 20;
/// A consumer this many units behind the newest skips ahead to a keyframe: 2 s at 30 fps.
pub const MAX_LAG_UNITS: u64 = 60;

/// What the pipeline is told when the consumers change or one wants a keyframe.
pub type TrackListener = Box<dyn Fn(TrackNews) + Send + Sync>;

/// News for the pipeline's H.264 stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackNews {
    /// The number of consumers changed.
    Consumers(usize),
    /// A consumer is waiting for a keyframe at this unit index or later. The index lets the
    /// encoder drop a request that a keyframe it was already making has served: a client
    /// joining while the encoder makes another client's keyframe starts at that one, and a
    /// second IDR 0.5 s later (5–10× a P-frame's bytes) would be waste.
    KeyframeWanted(u64),
}

/// Counters of the H.264 encoder feeding the track, for `/state` and `/metrics`.
#[derive(Debug, Default)]
pub struct H264Stats {
    /// Frames encoded into units.
    pub encoded: AtomicU64,
    /// Frames the encoder failed on.
    pub errors: AtomicU64,
    /// Frames not encoded because the encoder was still busy with an earlier one.
    pub skipped_busy: AtomicU64,
    /// Total encode time in microseconds (divide by `encoded` for the mean).
    pub encode_us_total: AtomicU64,
}

struct Units {
    /// The units from the newest keyframe on (or fewer, when the bounds cut the GOP).
    kept: VecDeque<Arc<AccessUnit>>,
    /// Index of `kept[0]`; indexes count every unit ever published, from 0.
    first: u64,
    bytes: usize,
    /// The newest SPS and PPS seen (for SDP and the like).
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    /// Where the units come from.
    supply: H264Supply,
    /// The newest unit's picture size.
    size: Option<(u32, u32)>,
}

impl Units {
    fn end(&self) -> u64 {
        self.first + self.kept.len() as u64
    }

    /// Index of the newest kept keyframe.
    fn newest_keyframe(&self) -> Option<u64> {
        self.kept
            .iter()
            .rposition(|u| u.keyframe)
            .map(|i| self.first + i as u64)
    }
}

pub(super) struct Track {
    units: Mutex<Units>,
    /// The index the next unit gets; consumers wait on it.
    published: watch::Sender<u64>,
    consumers: AtomicUsize,
    listener: OnceLock<TrackListener>,
    /// Keyframes published, for `/state`.
    keyframes: AtomicU64,
    bytes_total: AtomicU64,
    stats: H264Stats,
    closed: AtomicBool,
    /// The encoder in use, for `/state`.
    encoder: Mutex<super::EncoderState>,
}

/// Handle to a stream's H.264 track; cheap to clone.
#[derive(Clone)]
pub struct H264Track {
    track: Arc<Track>,
}

impl Default for H264Track {
    fn default() -> Self {
        Self::new()
    }
}

impl H264Track {
    pub fn new() -> H264Track {
        H264Track {
            track: Arc::new(Track {
                units: Mutex::new(Units {
                    kept: VecDeque::new(),
                    first: 0,
                    bytes: 0,
                    sps: None,
                    pps: None,
                    supply: H264Supply::Encoder,
                    size: None,
                }),
                published: watch::channel(0).0,
                consumers: AtomicUsize::new(0),
                listener: OnceLock::new(),
                keyframes: Default::default(),
                bytes_total: Default::default(),
                stats: H264Stats::default(),
                closed: AtomicBool::new(false),
                encoder: Mutex::new(super::EncoderState::default()),
            }),
        }
    }

    /// Registers the one listener (the pipeline). A second registration is refused.
    pub fn on_change(&self, listener: TrackListener) -> Result<(), TrackListener> {
        self.track.listener.set(listener)
    }

    /// Tells the listener (the pipeline's H.264 stage) `news`; the stage's tests use it to
    /// send a request at a moment of their choosing.
    pub(crate) fn tell(&self, news: TrackNews) {
        if let Some(l) = self.track.listener.get() {
            l(news);
        }
    }

    /// Changes what `/state` says of the H.264 encoder.
    pub fn set_encoder(&self, change: impl FnOnce(&mut super::EncoderState)) {
        change(&mut lock(&self.track.encoder));
    }

    pub fn encoder(&self) -> super::EncoderState {
        lock(&self.track.encoder).clone()
    }

    /// Consumers right now.
    pub fn consumers(&self) -> usize {
        self.track.consumers.load(Ordering::Relaxed)
    }

    /// The encoder's counters (the pipeline's H.264 stage counts here).
    pub fn stats(&self) -> &H264Stats {
        &self.track.stats
    }

    /// Keyframes and bytes published so far.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.track.keyframes.load(Ordering::Relaxed),
            self.track.bytes_total.load(Ordering::Relaxed),
        )
    }

    /// The newest SPS and PPS, once a keyframe was published.
    pub fn parameter_sets(&self) -> Option<(Bytes, Bytes)> {
        let u = lock(&self.track.units);
        Some((u.sps.clone()?, u.pps.clone()?))
    }

    /// Where the units come from now (the pipeline sets it from what the source says).
    pub fn supply(&self) -> H264Supply {
        lock(&self.track.units).supply.clone()
    }

    /// Sets where the units come from: see the module's notes on pass-through.
    pub fn set_supply(&self, supply: H264Supply) {
        lock(&self.track.units).supply = supply;
    }

    /// The newest unit's picture size, once one was published.
    pub fn size(&self) -> Option<(u32, u32)> {
        lock(&self.track.units).size
    }

    /// Appends a unit. A keyframe drops everything before it; the bounds drop the oldest.
    pub fn publish(&self, unit: AccessUnit) {
        let t = &self.track;
        let len = unit.data.len();
        let next = {
            let mut u = lock(&t.units);
            if unit.keyframe {
                t.keyframes.fetch_add(1, Ordering::Relaxed);
                if let Some(sps) = unit.nal_of_type(NAL_SPS) {
                    u.sps = Some(sps);
                }
                if let Some(pps) = unit.nal_of_type(NAL_PPS) {
                    u.pps = Some(pps);
                }
                let end = u.end();
                u.kept.clear();
                u.first = end;
                u.bytes = 0;
            }
            u.size = Some((unit.width, unit.height));
            u.kept.push_back(Arc::new(unit));
            u.bytes += len;
            while u.kept.len() > MAX_UNITS || (u.bytes > MAX_BYTES && u.kept.len() > 1) {
                let old = u.kept.pop_front().expect("more than one kept");
                u.bytes -= old.data.len();
                u.first += 1;
            }
            u.end()
        };
        t.bytes_total.fetch_add(len as u64, Ordering::Relaxed);
        t.published.send_replace(next);
    }

    /// A consumer, counted until dropped, holding `guard` (its viewer count) as long.
    pub fn consume(&self, guard: Option<ViewerGuard>) -> H264Consumer {
        let n = self.track.consumers.fetch_add(1, Ordering::Relaxed) + 1;
        self.tell(TrackNews::Consumers(n));
        let start = {
            let u = lock(&self.track.units);
            match (u.kept.back(), u.newest_keyframe()) {
                // The newest unit is a keyframe: no older than one frame interval, start there.
                (Some(last), _) if last.keyframe => Position::At(u.end() - 1),
                // Passed through: no keyframe can be made on request; start with the GOP kept.
                (_, Some(k)) if u.supply == H264Supply::Source => Position::At(k),
                _ => Position::KeyframeFrom(u.end()),
            }
        };
        let consumer = H264Consumer {
            track: self.clone(),
            position: start,
            published: self.track.published.subscribe(),
            _guard: guard,
        };
        if let Position::KeyframeFrom(from) = start {
            self.tell(TrackNews::KeyframeWanted(from));
        }
        consumer
    }

    /// Asks the encoder for a keyframe: a consumer's decoder lost its picture (a WebRTC
    /// client's PLI or FIR after packet loss). The encoder serves it with its next frame,
    /// at most one forced keyframe per 0.5 s however many ask; a passed-through stream
    /// cannot make one, so nothing happens there until the camera's next keyframe.
    pub fn request_keyframe(&self) {
        let u = lock(&self.track.units);
        if u.supply != H264Supply::Source {
            let from = u.end();
            drop(u);
            self.tell(TrackNews::KeyframeWanted(from));
        }
    }

    /// Whether a keyframe at unit index `from` or later has been published (and is still
    /// kept, or a newer one is): a keyframe request from `from` is served.
    pub fn has_keyframe_from(&self, from: u64) -> bool {
        lock(&self.track.units)
            .newest_keyframe()
            .is_some_and(|k| k >= from)
    }

    /// Whether unit `index` has been published.
    #[cfg(test)]
    pub(crate) fn has_unit(&self, index: u64) -> bool {
        lock(&self.track.units).end() > index
    }

    /// The index the next published unit gets.
    pub fn end(&self) -> u64 {
        lock(&self.track.units).end()
    }

    /// Ends every consumer's [`H264Consumer::next`] (shutdown).
    pub fn close(&self) {
        self.track.closed.store(true, Ordering::Relaxed);
        self.track.published.send_modify(|_| {});
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// The next unit to send.
    At(u64),
    /// Waiting for a keyframe at this index or later.
    KeyframeFrom(u64),
}

/// One consumer's place in the track.
pub struct H264Consumer {
    track: H264Track,
    position: Position,
    published: watch::Receiver<u64>,
    _guard: Option<ViewerGuard>,
}

impl H264Consumer {
    /// The next unit to send, waiting for one; `None` once the track is closed. After a gap
    /// (the consumer fell behind) the next unit is a keyframe.
    pub async fn next(&mut self) -> Option<Arc<AccessUnit>> {
        loop {
            if self.track.track.closed.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(unit) = self.try_next() {
                return Some(unit);
            }
            self.published.changed().await.ok()?;
        }
    }

    /// The next unit if there is one now.
    pub fn try_next(&mut self) -> Option<Arc<AccessUnit>> {
        let u = lock(&self.track.track.units);
        let (first, end) = (u.first, u.end());
        // Passed through, skipping ahead would wait for the camera's next keyframe anyway.
        let max_lag = match u.supply {
            H264Supply::Source => u64::MAX,
            _ => MAX_LAG_UNITS,
        };
        let at = match self.position {
            Position::At(i) if i >= first && end.saturating_sub(i) <= max_lag => i,
            Position::At(i) if i >= end => return None,
            // Fell behind: on at the newest keyframe if it lies ahead, else wait for the next
            // one (going back to this GOP's own keyframe would replay the past).
            Position::At(i) => match u.newest_keyframe().filter(|&k| k > i) {
                Some(k) => k,
                None => {
                    self.position = Position::KeyframeFrom(end);
                    drop(u);
                    self.track.tell(TrackNews::KeyframeWanted(end));
                    return None;
                }
            },
            Position::KeyframeFrom(from) => u.newest_keyframe().filter(|&k| k >= from)?,
        };
        if at >= end {
            return None;
        }
        let unit = u.kept[(at - first) as usize].clone();
        self.position = Position::At(at + 1);
        Some(unit)
    }

    /// Goes on at the next keyframe, asking the encoder for one: for a consumer whose own
    /// decoder fell behind and dropped units (a browser's WebCodecs queue), which would
    /// otherwise wait up to a GOP for the next regular keyframe. The encoder makes at most one
    /// forced keyframe per 0.5 s however often this is called.
    pub fn restart(&mut self) {
        let end = lock(&self.track.track.units).end();
        self.position = Position::KeyframeFrom(end);
        self.track.tell(TrackNews::KeyframeWanted(end));
    }

    /// Units published but not yet taken by this consumer.
    pub fn behind(&self) -> u64 {
        let end = *self.published.borrow();
        match self.position {
            Position::At(i) => end.saturating_sub(i),
            Position::KeyframeFrom(_) => 0,
        }
    }
}

impl Drop for H264Consumer {
    fn drop(&mut self) {
        let n = self.track.track.consumers.fetch_sub(1, Ordering::Relaxed) - 1;
        self.track.tell(TrackNews::Consumers(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::CaptureTime;

    fn unit(seq: u64, keyframe: bool, len: usize) -> AccessUnit {
        let mut data = vec![0, 0, 0, 1];
        if keyframe {
            data.extend_from_slice(&[0x67, 1, 0, 0, 0, 1, 0x68, 2, 0, 0, 0, 1, 0x65]);
        } else {
            data.push(0x41);
        }
        data.resize(data.len() + len, 0xAA);
        let nals = crate::frame::split_annex_b(&data);
        AccessUnit {
            seq,
            captured: CaptureTime::now(),
            width: 16,
            height: 16,
            keyframe,
            data: Bytes::from(data),
            nals,
        }
    }

    fn news(track: &H264Track) -> Arc<Mutex<Vec<TrackNews>>> {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        assert!(track
            .on_change(Box::new(move |n| h.lock().unwrap().push(n)))
            .is_ok());
        heard
    }

    fn seqs(c: &mut H264Consumer) -> Vec<u64> {
        std::iter::from_fn(|| c.try_next()).map(|u| u.seq).collect()
    }

    #[test]
    fn a_new_consumer_asks_for_a_keyframe_and_starts_there() {
        let t = H264Track::new();
        let heard = news(&t);
        t.publish(unit(1, true, 10));
        t.publish(unit(2, false, 10));
        let mut c = t.consume(None);
        assert_eq!(
            *heard.lock().unwrap(),
            [TrackNews::Consumers(1), TrackNews::KeyframeWanted(2)]
        );
        assert!(t.has_keyframe_from(0) && !t.has_keyframe_from(2));
        t.publish(unit(3, false, 10));
        assert_eq!(seqs(&mut c), [] as [u64; 0], "no replay of the old GOP");
        t.publish(unit(4, true, 10));
        t.publish(unit(5, false, 10));
        assert_eq!(seqs(&mut c), [4, 5]);
        assert_eq!(t.parameter_sets().unwrap().0[..], [0x67, 1]);
        drop(c);
        assert_eq!(heard.lock().unwrap().last(), Some(&TrackNews::Consumers(0)));
    }

    #[test]
    fn a_consumer_joining_right_after_a_keyframe_starts_at_it() {
        let t = H264Track::new();
        t.publish(unit(1, false, 10));
        t.publish(unit(2, true, 10));
        let heard = news(&t);
        let mut c = t.consume(None);
        assert_eq!(seqs(&mut c), [2]);
        assert_eq!(*heard.lock().unwrap(), [TrackNews::Consumers(1)]);
    }

    #[test]
    fn a_slow_consumer_skips_to_the_newest_keyframe() {
        let t = H264Track::new();
        t.publish(unit(0, true, 10));
        let mut slow = t.consume(None);
        let mut fast = t.consume(None);
        assert_eq!(seqs(&mut slow), [0]);
        assert_eq!(seqs(&mut fast), [0]);
        for s in 1..=3 {
            t.publish(unit(s, false, 10));
        }
        assert_eq!(seqs(&mut fast), [1, 2, 3]);
        // A new GOP while `slow` still wanted unit 1: it goes on at the keyframe.
        t.publish(unit(4, true, 10));
        t.publish(unit(5, false, 10));
        assert_eq!(seqs(&mut slow), [4, 5]);
        assert_eq!(seqs(&mut fast), [4, 5]);
        // Too far behind within one GOP: it waits for the next keyframe and asks for one.
        let heard = news(&t);
        for s in 6..6 + MAX_LAG_UNITS + 1 {
            t.publish(unit(s, false, 1));
        }
        assert_eq!(slow.behind(), MAX_LAG_UNITS + 1);
        assert_eq!(slow.try_next().map(|u| u.seq), None);
        assert_eq!(
            *heard.lock().unwrap(),
            [TrackNews::KeyframeWanted(6 + MAX_LAG_UNITS + 1)]
        );
        t.publish(unit(100, true, 1));
        assert_eq!(seqs(&mut slow), [100]);
        assert_eq!(seqs(&mut fast).last(), Some(&100));
    }

    #[test]
    fn a_restarted_consumer_waits_for_a_new_keyframe() {
        let t = H264Track::new();
        t.publish(unit(0, true, 10));
        let mut c = t.consume(None);
        let heard = news(&t);
        t.publish(unit(1, false, 10));
        c.restart();
        assert_eq!(*heard.lock().unwrap(), [TrackNews::KeyframeWanted(2)]);
        t.publish(unit(2, false, 10));
        assert_eq!(seqs(&mut c), [] as [u64; 0], "P-frames it could not decode");
        t.publish(unit(3, true, 10));
        t.publish(unit(4, false, 10));
        assert_eq!(seqs(&mut c), [3, 4]);
    }

    #[test]
    fn the_gop_kept_is_bounded() {
        let t = H264Track::new();
        t.publish(unit(0, true, 10));
        for s in 1..(MAX_UNITS as u64 + 50) {
            t.publish(unit(s, false, 10));
        }
        let u = lock(&t.track.units);
        assert_eq!(u.kept.len(), MAX_UNITS);
        drop(u);
        let big = MAX_BYTES / 3;
        let t = H264Track::new();
        for s in 0..5 {
            t.publish(unit(s, s == 0, big));
        }
        let u = lock(&t.track.units);
        assert!(
            u.bytes <= MAX_BYTES && u.kept.len() == 2,
            "{}",
            u.kept.len()
        );
        drop(u);
        // A consumer whose keyframe was cut off waits for the next one.
        let heard = news(&t);
        let mut c = t.consume(None);
        assert_eq!(c.try_next().map(|u| u.seq), None);
        t.publish(unit(9, true, 10));
        assert_eq!(c.try_next().map(|u| u.seq), Some(9));
        assert!(heard
            .lock()
            .unwrap()
            .contains(&TrackNews::KeyframeWanted(5)));
    }

    #[test]
    fn passed_through_a_new_consumer_starts_with_the_gop_kept() {
        let t = H264Track::new();
        let heard = news(&t);
        t.set_supply(H264Supply::Source);
        for s in 1..=100 {
            t.publish(unit(s, s == 1, 10));
        }
        assert_eq!(t.size(), Some((16, 16)));
        // 99 units behind at once, more than the lag rule allows an encoded track: served,
        // from the keyframe on, without asking for a keyframe nobody can make.
        let mut c = t.consume(None);
        assert_eq!(seqs(&mut c), (1..=100).collect::<Vec<_>>());
        let mut slow = t.consume(None);
        assert_eq!(slow.try_next().map(|u| u.seq), Some(1));
        assert!(!heard
            .lock()
            .unwrap()
            .iter()
            .any(|n| matches!(n, TrackNews::KeyframeWanted(_))));
        // A slow consumer goes on in its GOP, then jumps to the next keyframe.
        for s in 101..=200 {
            t.publish(unit(s, false, 1));
        }
        assert_eq!(slow.try_next().map(|u| u.seq), Some(2));
        t.publish(unit(201, true, 1));
        assert_eq!(slow.try_next().map(|u| u.seq), Some(201));
        // A GOP longer than the bounds: its keyframe is gone, so a new consumer waits for the
        // camera's next one.
        for s in 202..(202 + MAX_UNITS as u64) {
            t.publish(unit(s, false, 1));
        }
        let mut late = t.consume(None);
        assert_eq!(late.try_next().map(|u| u.seq), None);
        t.publish(unit(999, true, 1));
        assert_eq!(late.try_next().map(|u| u.seq), Some(999));
        // Back to the encoder: the usual rules.
        t.set_supply(H264Supply::EncoderInstead("hevc".into()));
        t.publish(unit(1000, false, 1));
        let mut enc = t.consume(None);
        assert_eq!(enc.try_next().map(|u| u.seq), None);
    }

    #[tokio::test]
    async fn next_waits_for_a_unit_and_ends_on_close() {
        let t = H264Track::new();
        let mut c = t.consume(None);
        let t2 = t.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            t2.publish(unit(7, true, 10));
        });
        assert_eq!(c.next().await.map(|u| u.seq), Some(7));
        t.close();
        assert!(c.next().await.is_none());
    }
}
