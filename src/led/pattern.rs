//! Blink patterns: which way the LED is at a given time into a state. Pure logic, no I/O.
//!
//! Every edge falls on a multiple of [`super::TICK`], so the driver, which samples on that
//! grid, reproduces the patterns exactly instead of stretching pulses by a tick.

use std::time::Duration;

use crate::hub::Activity;

/// What the LED shows; one per distinguishable state (see the table in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Dark: shutting down, or not running.
    Off,
    /// Solid on: someone is watching.
    On,
    /// 5 Hz flicker: a source is starting.
    Flicker,
    /// A short blip every 2 s: ready, nobody watching.
    Heartbeat,
    /// Two short blinks every second: viewers see "no signal".
    DoubleBlink,
}

/// A repeating pattern: `on` lists the lit spans within one period, in milliseconds.
struct Cycle {
    period_ms: u64,
    on: &'static [(u64, u64)],
}

const FLICKER: Cycle = Cycle {
    period_ms: 200,
    on: &[(0, 100)],
};
const HEARTBEAT: Cycle = Cycle {
    period_ms: 2000,
    on: &[(0, 100)],
};
// The 200 ms gap keeps the two blinks apart to the eye; the long dark rest after them keeps
// the pair from reading as the even flicker of a starting source.
const DOUBLE_BLINK: Cycle = Cycle {
    period_ms: 1000,
    on: &[(0, 100), (300, 400)],
};

impl Pattern {
    pub fn for_activity(activity: Activity) -> Pattern {
        match activity {
            Activity::Starting => Pattern::Flicker,
            Activity::Live { viewers: 0 } | Activity::Idle => Pattern::Heartbeat,
            Activity::Live { .. } => Pattern::On,
            // Stalled and failed look alike on purpose: both mean "viewers see no signal,
            // check /state". They still differ over time: a failed source is retried, so it
            // alternates with the starting flicker, while a stalled one blinks steadily.
            Activity::Down { .. } => Pattern::DoubleBlink,
            Activity::Stopped => Pattern::Off,
        }
    }

    /// Whether the LED is lit `elapsed` after the pattern started.
    pub fn is_on(self, elapsed: Duration) -> bool {
        let cycle = match self {
            Pattern::Off => return false,
            Pattern::On => return true,
            Pattern::Flicker => &FLICKER,
            Pattern::Heartbeat => &HEARTBEAT,
            Pattern::DoubleBlink => &DOUBLE_BLINK,
        };
        // Whole milliseconds: the edges are defined in them, and a u64 of them lasts forever.
        let t = (elapsed.as_millis() % u128::from(cycle.period_ms)) as u64;
        cycle.on.iter().any(|&(from, to)| (from..to).contains(&t))
    }
}

/// Whether the LED is lit `elapsed` after the streams entered `activity`.
pub fn led_on(activity: Activity, elapsed: Duration) -> bool {
    Pattern::for_activity(activity).is_on(elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lit spans (start, length) in ms, sampling every ms for `span_ms`.
    fn pulses(activity: Activity, span_ms: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut lit_since = None;
        for t in 0..=span_ms {
            let on = t < span_ms && led_on(activity, Duration::from_millis(t));
            match (on, lit_since) {
                (true, None) => lit_since = Some(t),
                (false, Some(s)) => {
                    out.push((s, t - s));
                    lit_since = None;
                }
                _ => {}
            }
        }
        out
    }

    #[test]
    fn live_with_viewers_is_solid_on() {
        for viewers in [1, 2, 50] {
            assert_eq!(pulses(Activity::Live { viewers }, 5000), [(0, 5000)]);
        }
    }

    #[test]
    fn stopped_is_dark() {
        assert!(pulses(Activity::Stopped, 5000).is_empty());
    }

    #[test]
    fn starting_flickers_at_5_hz() {
        let p = pulses(Activity::Starting, 3000);
        assert_eq!(p.len(), 15, "{p:?}");
        for (i, &(start, len)) in p.iter().enumerate() {
            assert_eq!((start, len), (i as u64 * 200, 100));
        }
    }

    #[test]
    fn idle_blips_every_2_s_and_at_once() {
        let p = pulses(Activity::Idle, 6000);
        assert_eq!(p, [(0, 100), (2000, 100), (4000, 100)]);
        // Live with nobody counted is the linger after the last viewer: idle to the eye.
        assert_eq!(pulses(Activity::Live { viewers: 0 }, 6000), p);
    }

    #[test]
    fn down_blinks_twice_a_second() {
        for stalled in [false, true] {
            let p = pulses(Activity::Down { stalled }, 3000);
            assert_eq!(
                p,
                [
                    (0, 100),
                    (300, 100),
                    (1000, 100),
                    (1300, 100),
                    (2000, 100),
                    (2300, 100)
                ]
            );
        }
    }

    #[test]
    fn patterns_are_told_apart() {
        use Activity::*;
        let all = [
            Starting,
            Live { viewers: 1 },
            Idle,
            Down { stalled: false },
            Stopped,
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(pulses(*a, 4000), pulses(*b, 4000), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn edges_fall_on_the_driver_tick() {
        let tick = super::super::TICK.as_millis() as u64;
        for c in [&FLICKER, &HEARTBEAT, &DOUBLE_BLINK] {
            assert_eq!(c.period_ms % tick, 0);
            for &(from, to) in c.on {
                assert!(from % tick == 0 && to % tick == 0 && from < to && to <= c.period_ms);
            }
        }
    }
}
