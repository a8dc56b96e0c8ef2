//! One WebRTC session: the task that owns its `Rtc`, from the answer to its end.
//!
//! It follows str0m's run loop (one mutation, then drain `poll_output` to a timeout) over
//! four inputs: datagrams the receive task routed here, str0m's timeouts, the H.264 track's
//! access units, and the stop signal (WHEP DELETE, shutdown).
//!
//! - From the answer on it holds a consumer of the track, so the encoder starts while ICE
//!   and DTLS run (~100 ms on a LAN); what it takes before the connection is dropped. Once
//!   connected it takes a new consumer, which starts at a keyframe (SPS and PPS in front),
//!   asked of the encoder for it (rate-limited there to one per 0.5 s).
//! - Units go in as they come: RTP timestamps are the capture time at 90 kHz, the
//!   "wallclock" str0m puts in its RTCP sender reports is the capture instant, and each
//!   picture carries its capture wall clock in the abs-capture-time header extension when
//!   the client negotiated it.
//! - No backlog: the task takes a unit only when it has written the previous one, so a
//!   session that cannot keep up falls behind in the track, which moves it on to a newer
//!   keyframe (`hub::h264`); str0m holds at most [`SEND_BUFFER_PACKETS`] sent packets for
//!   retransmission; the socket drops what its buffer cannot take.
//! - A PLI or FIR from the client asks the encoder for a keyframe.
//! - It ends when the client sends nothing for `webrtc_peer_timeout` (10 s by default), when
//!   ICE reports the connection lost, on DELETE, or at shutdown.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use str0m::media::{Frequency, MediaTime, Mid, Pt};
use str0m::rtp::AbsCaptureTime;
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{lock, Datagram, WebRtc};
use crate::frame::AccessUnit;
use crate::hub::{Hub, ViewerGuard};

/// Sent RTP packets str0m keeps for retransmission (NACK): 512 packets of at most ~1.2 KB
/// are 0.6 MB per session at most, 2 s of a 2 Mbit/s stream, or a 1080p keyframe (~150
/// packets) three times over.
pub(super) const SEND_BUFFER_PACKETS: usize = 512;
/// The id picamd proposes for the abs-capture-time header extension (the answer uses the
/// client's own id when it offered one).
pub(super) const ABS_CAPTURE_TIME_ID: u8 = 7;
/// H.264's RTP clock.
const CLOCK: Frequency = Frequency::NINETY_KHZ;

/// What a drain of `poll_output` found, for the task to act on with the lock released.
#[derive(Debug, Default)]
struct Drained {
    next_timeout: Option<Instant>,
    connected: bool,
    keyframe_wanted: bool,
    gone: Option<&'static str>,
}

pub(super) struct Session {
    pub id: String,
    pub rtc: Arc<Mutex<Rtc>>,
    pub mid: Mid,
    pub pt: Pt,
    pub hub: Hub,
    pub inbox: mpsc::Receiver<Datagram>,
    pub stop: CancellationToken,
    pub peer_timeout: Duration,
    /// The hub's count of this viewer and the server-wide slot, held for the session's life.
    pub _viewer: ViewerGuard,
    pub _slot: Option<Box<dyn Send + Sync>>,
}

impl Session {
    pub(super) async fn run(mut self, server: &WebRtc) {
        let started = Instant::now();
        let mut heard = started;
        let mut connected = false;
        // Taken now so the encoder starts; its units are dropped until the connection.
        let mut consumer = self.hub.h264().consume(None);
        let mut drained = self.drain(server);
        let why = loop {
            if let Some(why) = drained.gone {
                break why;
            }
            if drained.connected && !connected {
                connected = true;
                tracing::debug!(session = %self.id, after = ?started.elapsed(), "WebRTC connected");
                // A fresh consumer starts at a keyframe made for it; the old one goes after,
                // so the encoder never sees zero consumers in between.
                consumer = self.hub.h264().consume(None);
            }
            if drained.keyframe_wanted {
                self.hub.h264().request_keyframe();
            }
            let timeout = drained
                .next_timeout
                .unwrap_or_else(|| Instant::now() + Duration::from_millis(100));
            let silent_at = heard + self.peer_timeout;
            let now = Instant::now();
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break "ended",
                d = self.inbox.recv() => {
                    let Some(d) = d else { break "ended" };
                    heard = Instant::now();
                    if let Some(input) = d.input() {
                        drained = self.feed(server, input);
                    } else {
                        drained = Drained { next_timeout: Some(timeout), ..Default::default() };
                    }
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(timeout.max(now))) => {
                    drained = self.feed(server, Input::Timeout(Instant::now()));
                }
                unit = consumer.next() => {
                    let Some(unit) = unit else { break "the stream stopped" };
                    drained = if connected {
                        self.write(server, &unit, started)
                    } else {
                        Drained { next_timeout: Some(timeout), ..Default::default() }
                    };
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(silent_at.max(now))) => {
                    break "the client went silent";
                }
            }
        };
        tracing::debug!(session = %self.id, "WebRTC session ended: {why}");
        // Tell the client (DTLS close_notify) if it is still there.
        let mut rtc = lock(&self.rtc);
        rtc.disconnect();
        while let Ok(out) = rtc.poll_output() {
            match out {
                Output::Transmit(t) => server.transmit(&t),
                Output::Timeout(_) => break,
                Output::Event(_) => {}
            }
        }
    }

    /// One input, then the drain.
    fn feed(&self, server: &WebRtc, input: Input) -> Drained {
        let mut rtc = lock(&self.rtc);
        if let Err(e) = rtc.handle_input(input) {
            tracing::debug!(session = %self.id, "WebRTC input refused: {e}");
        }
        drain(&mut rtc, server)
    }

    /// One access unit written, then the drain.
    fn write(&self, server: &WebRtc, unit: &AccessUnit, started: Instant) -> Drained {
        // 90 kHz from the session's start; a unit captured before it (the keyframe the
        // encoder had just made) counts from the start, keeping media time monotonic.
        let since = unit.captured.mono.saturating_duration_since(started);
        let ticks = (since.as_nanos() * u128::from(CLOCK.get()) / 1_000_000_000) as u64;
        let capture = SystemTime::UNIX_EPOCH + Duration::from_micros(unit.captured.wall_us);
        let mut rtc = lock(&self.rtc);
        let written = match rtc.writer(self.mid) {
            Some(w) => w
                .abs_capture_time(AbsCaptureTime {
                    capture_time: capture,
                    clock_offset: None,
                })
                .write(
                    self.pt,
                    unit.captured.mono,
                    MediaTime::new(ticks, CLOCK),
                    &unit.data[..],
                )
                .map_err(|e| e.to_string()),
            None => Err("no writer for the video section".into()),
        };
        if let Err(e) = written {
            tracing::debug!(session = %self.id, "WebRTC write failed: {e}");
        }
        drain(&mut rtc, server)
    }

    /// The first drain, after the answer.
    fn drain(&self, server: &WebRtc) -> Drained {
        drain(&mut lock(&self.rtc), server)
    }
}

/// Drains `rtc` to its next timeout: packets to the socket, events noted.
fn drain(rtc: &mut Rtc, server: &WebRtc) -> Drained {
    let mut d = Drained::default();
    loop {
        match rtc.poll_output() {
            Ok(Output::Timeout(t)) => {
                d.next_timeout = Some(t);
                break;
            }
            Ok(Output::Transmit(t)) => server.transmit(&t),
            Ok(Output::Event(e)) => match e {
                Event::Connected => d.connected = true,
                Event::KeyframeRequest(_) => d.keyframe_wanted = true,
                Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                    d.gone = Some("ICE lost the client");
                }
                _ => {}
            },
            Err(e) => {
                tracing::debug!("WebRTC session failed: {e}");
                d.gone = Some("str0m reported an error");
                break;
            }
        }
    }
    if !rtc.is_alive() && d.gone.is_none() {
        d.gone = Some("the connection closed");
    }
    d
}
