//! The stream's state machine, as one pure function: [`Machine::step`] takes an [`Event`]
//! and the time it happened, and returns the [`Action`]s the pipeline's threads carry out.
//! Nothing here reads a clock, sleeps or touches a thread, so every transition is tested
//! on made-up instants (the table at the bottom), the way the player's `player-state.js` is.
//!
//! States are [`SourceState`] (what `/state` reports). The transitions:
//!
//! | from | event | to | actions |
//! | --- | --- | --- | --- |
//! | any but error | `Starting` (a run begins, or the source reopens) | starting | |
//! | error | `Starting` | error (the reason stays until a frame) | |
//! | any | `Frame` | streaming | |
//! | any | `Failed(why)` | error(why) | restart after the backoff (reset by a run that delivered frames; doubled each time up to 10 s) |
//! | any | `Unavailable(why)` | error(why) | none: nothing to retry |
//! | any | `Down(why)` (a file that ended) | error(why) | |
//! | any | `Parked` (the source waits, nobody wants frames) | idle (nobody is there to see a failure) | |
//! | idle | `Resumed` (someone wants frames again) | streaming | |
//! | starting, streaming | `Tick`, watched and no frame for the stall window | stalled | log it |
//! | any | `Tick`, watched, stalled or error, 1 s since the last | same | a "no signal" frame with the reason |
//! | any | `Viewers(n)` | same | (demand and the linger are read from it) |
//! | any | `Shutdown` | stopped, for good | |
//!
//! Demand: frames are wanted while someone watches and for [`Timing::linger`] after the last
//! viewer left (one linger for every kind of source), so a client that reconnects or polls
//! snapshots does not restart the camera each time.

use std::time::{Duration, Instant};

use crate::hub::SourceState;

/// The machine's constants (the pipeline's defaults in [`Timing::for_fps`]).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A watched source with no frame for this long is stalled.
    pub stall_after: Duration,
    /// Frames stay wanted this long after the last viewer leaves.
    pub linger: Duration,
    /// First and longest wait before a failed source is restarted.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// "No signal" frames go out at this interval while the source is down: enough to show
    /// the time ticking and to answer snapshots, little enough to cost nothing.
    pub no_signal_every: Duration,
}

/// A source is stalled after this many frame intervals without a frame, and at least
/// [`STALL_MIN`].
const STALL_INTERVALS: u32 = 5;
const STALL_MIN: Duration = Duration::from_secs(2);

impl Timing {
    /// The defaults for a stream at `fps`.
    pub fn for_fps(fps: u32) -> Timing {
        Timing {
            stall_after: stall_window(fps),
            linger: Duration::from_secs(1),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
            no_signal_every: Duration::from_secs(1),
        }
    }
}

/// How long a watched source at `fps` may go without a frame before it counts as stalled.
pub fn stall_window(fps: u32) -> Duration {
    let interval = Duration::from_secs_f64(1.0 / fps.max(1) as f64);
    (interval * STALL_INTERVALS).max(STALL_MIN)
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A run of the source begins (`new_run`: the supervisor started it; else the source
    /// reopens its device or upstream within a run).
    Starting {
        new_run: bool,
    },
    /// The source delivered a frame.
    Frame,
    /// The run failed; worth retrying.
    Failed(String),
    /// The source cannot run here at all.
    Unavailable(String),
    /// The source runs but has nothing to show (a file that ended).
    Down(String),
    /// The source waits because nobody wants frames.
    Parked,
    /// Someone wants frames again.
    Resumed,
    /// The number of viewers is now this.
    Viewers(usize),
    /// Time passed (the watchdog's tick).
    Tick,
    Shutdown,
}

/// What the pipeline must do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Restart the source's run after this long.
    RestartIn(Duration),
    /// Show viewers a "no signal" frame with this reason.
    NoSignal(String),
    /// The source just stalled, for this reason (worth a warning in the log).
    Stalled(String),
}

/// One stream's state and what it remembers to decide the next one.
#[derive(Debug, Clone)]
pub struct Machine {
    timing: Timing,
    state: SourceState,
    viewers: usize,
    /// When the last viewer left (for the linger).
    last_left: Option<Instant>,
    /// Since when someone has been watching: frames are expected from then on.
    watched_since: Option<Instant>,
    last_frame: Option<Instant>,
    /// Frames of the current run.
    run_frames: u64,
    /// The wait before the next restart.
    backoff: Duration,
    last_no_signal: Option<Instant>,
}

impl Machine {
    pub fn new(timing: Timing) -> Machine {
        Machine {
            timing,
            state: SourceState::Starting,
            viewers: 0,
            last_left: None,
            watched_since: None,
            last_frame: None,
            run_frames: 0,
            backoff: timing.backoff_min,
            last_no_signal: None,
        }
    }

    pub fn state(&self) -> &SourceState {
        &self.state
    }

    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// Whether frames are wanted at `now`: a viewer, or the linger after the last one.
    pub fn wants_frames(&self, now: Instant) -> bool {
        self.viewers > 0
            || self
                .last_left
                .is_some_and(|t| now.saturating_duration_since(t) < self.timing.linger)
    }

    /// Applies `event`, which happened at `now`.
    pub fn step(&mut self, now: Instant, event: Event) -> Vec<Action> {
        if self.state == SourceState::Stopped {
            return Vec::new();
        }
        match event {
            Event::Shutdown => self.state = SourceState::Stopped,
            Event::Starting { new_run } => {
                if new_run {
                    self.run_frames = 0;
                }
                if !matches!(self.state, SourceState::Error(_)) {
                    self.state = SourceState::Starting;
                }
            }
            Event::Frame => {
                self.run_frames += 1;
                self.last_frame = Some(now);
                self.state = SourceState::Streaming;
            }
            Event::Failed(why) => {
                self.state = SourceState::Error(why);
                // A run that delivered frames was a working camera that then failed: retry
                // soon; otherwise wait longer each time.
                if self.run_frames > 0 {
                    self.backoff = self.timing.backoff_min;
                }
                let wait = self.backoff;
                self.backoff = (self.backoff * 2).min(self.timing.backoff_max);
                return vec![Action::RestartIn(wait)];
            }
            Event::Unavailable(why) | Event::Down(why) => self.state = SourceState::Error(why),
            Event::Parked => self.state = SourceState::Idle,
            Event::Resumed => {
                if self.state == SourceState::Idle {
                    self.state = SourceState::Streaming;
                }
            }
            Event::Viewers(n) => {
                if n == 0 && self.viewers > 0 {
                    self.last_left = Some(now);
                }
                if n == 0 {
                    self.watched_since = None;
                } else if self.watched_since.is_none() {
                    self.watched_since = Some(now);
                }
                self.viewers = n;
            }
            Event::Tick => return self.tick(now),
        }
        Vec::new()
    }

    /// The watchdog's look: a watched source that delivers nothing is stalled, and a
    /// stalled or failed one is shown as "no signal" once a [`Timing::no_signal_every`].
    fn tick(&mut self, now: Instant) -> Vec<Action> {
        let Some(since) = self.watched_since else {
            return Vec::new();
        };
        let mut actions = Vec::new();
        // Frames are only expected since someone started watching.
        let reference = self.last_frame.map_or(since, |t| t.max(since));
        let quiet = now.saturating_duration_since(reference);
        if matches!(self.state, SourceState::Starting | SourceState::Streaming)
            && quiet > self.timing.stall_after
        {
            let why = match self.last_frame {
                Some(_) => format!("no frame from the source for {:.0} s", quiet.as_secs_f64()),
                None => "waiting for the source to start".to_owned(),
            };
            self.state = SourceState::Stalled(why.clone());
            actions.push(Action::Stalled(why));
        }
        let reason = match &self.state {
            SourceState::Error(why) | SourceState::Stalled(why) => why.clone(),
            _ => return actions,
        };
        let due = self
            .last_no_signal
            .is_none_or(|t| now.saturating_duration_since(t) >= self.timing.no_signal_every);
        if due {
            self.last_no_signal = Some(now);
            actions.push(Action::NoSignal(reason));
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn timing() -> Timing {
        Timing::for_fps(30)
    }

    /// `(milliseconds since the start, event)`.
    type Step = (u64, Event);
    /// The state and the actions after a step.
    type After = (SourceState, Vec<Action>);

    /// Runs the steps and returns what follows each.
    fn run(steps: &[Step]) -> Vec<After> {
        let t0 = Instant::now();
        let mut m = Machine::new(timing());
        steps
            .iter()
            .map(|(at, e)| {
                let actions = m.step(t0 + MS * (*at as u32), e.clone());
                (m.state().clone(), actions)
            })
            .collect()
    }

    fn err(why: &str) -> SourceState {
        SourceState::Error(why.into())
    }

    fn no_signal(why: &str) -> Vec<Action> {
        vec![Action::NoSignal(why.into())]
    }

    /// Each case: the steps, then the state and actions expected after each step.
    #[test]
    fn transitions() {
        use Event::*;
        use SourceState::{Idle, Starting as S, Streaming as L};
        let stalled = |why: &str| SourceState::Stalled(why.into());
        let cases: Vec<(&str, Vec<Step>, Vec<After>)> =
            vec![
            (
                "start, first frame: live",
                vec![(0, Starting { new_run: true }), (10, Viewers(1)), (40, Frame)],
                vec![(S, vec![]), (S, vec![]), (L, vec![])],
            ),
            (
                "stall: no signal once a second with the reason; a frame: live again",
                vec![
                    (0, Viewers(1)),
                    (10, Frame),
                    (2000, Tick),
                    (2100, Tick),
                    (2300, Tick),
                    (3100, Tick),
                    (3200, Frame),
                    (3400, Tick),
                ],
                vec![
                    (S, vec![]),
                    (L, vec![]),
                    (L, vec![]),
                    (
                        stalled("no frame from the source for 2 s"),
                        vec![
                            Action::Stalled("no frame from the source for 2 s".into()),
                            Action::NoSignal("no frame from the source for 2 s".into()),
                        ],
                    ),
                    (stalled("no frame from the source for 2 s"), vec![]),
                    (
                        stalled("no frame from the source for 2 s"),
                        no_signal("no frame from the source for 2 s"),
                    ),
                    (L, vec![]),
                    (L, vec![]),
                ],
            ),
            (
                "a source that never starts is stalled 'waiting' once watched",
                vec![(0, Starting { new_run: true }), (100, Viewers(1)), (2200, Tick)],
                vec![
                    (S, vec![]),
                    (S, vec![]),
                    (
                        stalled("waiting for the source to start"),
                        vec![
                            Action::Stalled("waiting for the source to start".into()),
                            Action::NoSignal("waiting for the source to start".into()),
                        ],
                    ),
                ],
            ),
            (
                "nobody watching: no stall and no no-signal frames",
                vec![(0, Frame), (5000, Tick), (9000, Failed("gone".into())), (9100, Tick)],
                vec![
                    (L, vec![]),
                    (L, vec![]),
                    (err("gone"), vec![Action::RestartIn(MS * 250)]),
                    (err("gone"), vec![]),
                ],
            ),
            (
                "failure: backoff doubles to 10 s; a retry keeps the error; a frame: live",
                vec![
                    (0, Failed("e1".into())),
                    (250, Starting { new_run: true }),
                    (260, Failed("e2".into())),
                    (800, Starting { new_run: true }),
                    (810, Failed("e3".into())),
                    (2000, Starting { new_run: true }),
                    (2100, Frame),
                ],
                vec![
                    (err("e1"), vec![Action::RestartIn(MS * 250)]),
                    (err("e1"), vec![]),
                    (err("e2"), vec![Action::RestartIn(MS * 500)]),
                    (err("e2"), vec![]),
                    (err("e3"), vec![Action::RestartIn(MS * 1000)]),
                    (err("e3"), vec![]),
                    (L, vec![]),
                ],
            ),
            (
                "a run that delivered frames restarts at the shortest backoff",
                vec![
                    (0, Failed("a".into())),
                    (1, Failed("b".into())),
                    (2, Starting { new_run: true }),
                    (3, Frame),
                    (4, Failed("c".into())),
                ],
                vec![
                    (err("a"), vec![Action::RestartIn(MS * 250)]),
                    (err("b"), vec![Action::RestartIn(MS * 500)]),
                    (err("b"), vec![]),
                    (L, vec![]),
                    (err("c"), vec![Action::RestartIn(MS * 250)]),
                ],
            ),
            (
                "demand during backoff: viewers see no signal until the restart brings frames",
                vec![
                    (0, Failed("unplugged".into())),
                    (100, Viewers(2)),
                    (200, Tick),
                    (400, Tick),
                    (1200, Tick),
                    (1300, Starting { new_run: true }),
                    (1350, Frame),
                    (2400, Tick),
                ],
                vec![
                    (err("unplugged"), vec![Action::RestartIn(MS * 250)]),
                    (err("unplugged"), vec![]),
                    (err("unplugged"), no_signal("unplugged")),
                    (err("unplugged"), vec![]),
                    (err("unplugged"), no_signal("unplugged")),
                    (err("unplugged"), vec![]),
                    (L, vec![]),
                    (L, vec![]),
                ],
            ),
            (
                "unavailable: no restart, no signal with the reason",
                vec![
                    (0, Unavailable("no libcamera".into())),
                    (10, Viewers(1)),
                    (20, Tick),
                ],
                vec![
                    (err("no libcamera"), vec![]),
                    (err("no libcamera"), vec![]),
                    (err("no libcamera"), no_signal("no libcamera")),
                ],
            ),
            (
                "end of file, then the source reopens for a new viewer: the reason stays",
                vec![
                    (0, Viewers(1)),
                    (10, Frame),
                    (20, Down("end of file".into())),
                    (30, Tick),
                    (40, Starting { new_run: false }),
                    (50, Frame),
                ],
                vec![
                    (S, vec![]),
                    (L, vec![]),
                    (err("end of file"), vec![]),
                    (err("end of file"), no_signal("end of file")),
                    (err("end of file"), vec![]),
                    (L, vec![]),
                ],
            ),
            (
                "idle: parked when nobody wants frames, live again when someone does",
                vec![
                    (0, Frame),
                    (10, Parked),
                    (20, Resumed),
                    (30, Parked),
                    (40, Frame),
                ],
                vec![(L, vec![]), (Idle, vec![]), (L, vec![]), (Idle, vec![]), (L, vec![])],
            ),
            (
                "a failed source nobody watches is idle; a new viewer: live until a frame is late",
                vec![
                    (0, Failed("x".into())),
                    (250, Starting { new_run: true }),
                    (260, Parked),
                    (5000, Viewers(1)),
                    (5001, Resumed),
                    (5040, Frame),
                ],
                vec![
                    (err("x"), vec![Action::RestartIn(MS * 250)]),
                    (err("x"), vec![]),
                    (Idle, vec![]),
                    (Idle, vec![]),
                    (L, vec![]),
                    (L, vec![]),
                ],
            ),
        ];
        for (name, steps, want) in cases {
            assert_eq!(run(&steps), want, "{name}");
        }
    }

    #[test]
    fn shutdown_from_every_state_is_final() {
        use Event::*;
        let reach: Vec<(&str, Vec<Event>)> = vec![
            ("starting", vec![Starting { new_run: true }]),
            ("streaming", vec![Frame]),
            ("idle", vec![Frame, Parked]),
            ("error", vec![Failed("x".into())]),
            ("stalled", vec![Viewers(1), Tick]),
        ];
        let t0 = Instant::now();
        for (name, events) in reach {
            let mut m = Machine::new(timing());
            for (i, e) in events.into_iter().enumerate() {
                // The stall needs time to pass before its tick.
                m.step(t0 + Duration::from_secs(5 * i as u64), e);
            }
            assert_eq!(m.state().as_str(), name, "reached {name}");
            assert!(m.step(t0 + Duration::from_secs(20), Shutdown).is_empty());
            assert_eq!(m.state(), &SourceState::Stopped, "from {name}");
            // Nothing brings it back.
            for e in [
                Frame,
                Starting { new_run: true },
                Failed("y".into()),
                Viewers(3),
            ] {
                m.step(t0 + Duration::from_secs(21), e);
            }
            let later = m.step(t0 + Duration::from_secs(30), Tick);
            assert!(later.is_empty(), "{name}: {later:?}");
            assert_eq!(
                m.state(),
                &SourceState::Stopped,
                "stays stopped after {name}"
            );
        }
    }

    #[test]
    fn frames_are_wanted_while_watched_and_for_the_linger_after() {
        let t0 = Instant::now();
        let mut m = Machine::new(timing());
        assert!(!m.wants_frames(t0), "nobody ever watched");
        m.step(t0, Event::Viewers(1));
        assert!(m.wants_frames(t0 + Duration::from_secs(60)));
        m.step(t0 + MS * 100, Event::Viewers(0));
        assert!(m.wants_frames(t0 + MS * 1099), "within the linger");
        assert!(!m.wants_frames(t0 + MS * 1100), "after the linger");
        // A viewer back within the linger keeps it going; leaving again restarts it.
        m.step(t0 + MS * 600, Event::Viewers(1));
        m.step(t0 + MS * 700, Event::Viewers(0));
        assert!(m.wants_frames(t0 + MS * 1600));
        assert!(!m.wants_frames(t0 + MS * 1700));
    }

    #[test]
    fn the_backoff_doubles_up_to_its_maximum() {
        let t0 = Instant::now();
        let mut m = Machine::new(timing());
        let waits: Vec<u64> = (0..8)
            .map(
                |i| match m.step(t0 + MS * i, Event::Failed("x".into())).as_slice() {
                    [Action::RestartIn(d)] => d.as_millis() as u64,
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 8000, 10000, 10000]);
    }

    #[test]
    fn the_stall_window_scales_with_the_frame_rate() {
        assert_eq!(stall_window(30), Duration::from_secs(2));
        assert_eq!(stall_window(1), Duration::from_secs(5));
        assert_eq!(stall_window(0), Duration::from_secs(5));
    }
}
