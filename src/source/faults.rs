//! A fault schedule for the test pattern: `--source test:live=3,stall=2,fail=2` runs live for
//! 3 s, then delivers nothing for 2 s while looking alive (a stalled camera), then fails for
//! 2 s (a vanished camera), and repeats. It drives the recovery tests, and lets anyone see
//! what viewers get while a camera misbehaves, without unplugging one.

use std::fmt;
use std::time::Duration;

/// What the source does during one phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Frames as usual.
    Live,
    /// No frames, no error: the thread hangs as a wedged driver would.
    Stall,
    /// `run` returns an error; the supervisor retries until the phase ends.
    Fail,
}

/// A repeating list of phases and their lengths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSchedule {
    pub phases: Vec<(Phase, Duration)>,
}

impl FaultSchedule {
    /// Total length of one cycle.
    pub fn period(&self) -> Duration {
        self.phases.iter().map(|(_, d)| *d).sum()
    }

    /// The phase at `elapsed` since the schedule started, and how long it still lasts.
    pub fn phase_at(&self, elapsed: Duration) -> (Phase, Duration) {
        let period = self.period();
        let mut t = Duration::from_nanos((elapsed.as_nanos() % period.as_nanos().max(1)) as u64);
        for (phase, len) in &self.phases {
            if t < *len {
                return (*phase, *len - t);
            }
            t -= *len;
        }
        (Phase::Live, Duration::ZERO)
    }
}

impl std::str::FromStr for FaultSchedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut phases = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, secs) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not PHASE=SECONDS"))?;
            let phase = match name {
                "live" => Phase::Live,
                "stall" => Phase::Stall,
                "fail" => Phase::Fail,
                other => return Err(format!("unknown phase {other:?} (live, stall, fail)")),
            };
            let secs: f64 = secs
                .parse()
                .map_err(|_| format!("{secs:?} in {item:?} is not a number of seconds"))?;
            if !(0.1..=3600.0).contains(&secs) {
                return Err(format!("{item:?}: a phase lasts 0.1 ..= 3600 s"));
            }
            phases.push((phase, Duration::from_secs_f64(secs)));
        }
        if !phases.iter().any(|(p, _)| *p == Phase::Live) {
            return Err("a fault schedule needs at least one live phase".into());
        }
        Ok(FaultSchedule { phases })
    }
}

impl fmt::Display for FaultSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (p, d)) in self.phases.iter().enumerate() {
            let name = match p {
                Phase::Live => "live",
                Phase::Stall => "stall",
                Phase::Fail => "fail",
            };
            write!(
                f,
                "{}{name}={}",
                if i > 0 { "," } else { "" },
                d.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_walks_the_cycle() {
        let s: FaultSchedule = "live=2,stall=1,fail=1.5".parse().unwrap();
        assert_eq!(s.period(), Duration::from_millis(4500));
        assert_eq!(s.phase_at(Duration::from_millis(500)).0, Phase::Live);
        assert_eq!(
            s.phase_at(Duration::from_millis(2500)),
            (Phase::Stall, Duration::from_millis(500))
        );
        assert_eq!(s.phase_at(Duration::from_millis(3200)).0, Phase::Fail);
        assert_eq!(s.phase_at(Duration::from_millis(4600)).0, Phase::Live);
        assert_eq!(s.to_string(), "live=2,stall=1,fail=1.5");
    }

    #[test]
    fn rejects_nonsense() {
        for bad in [
            "",
            "stall=1",
            "live",
            "live=x",
            "live=0",
            "nap=1,live=1",
            "live=99999",
        ] {
            assert!(bad.parse::<FaultSchedule>().is_err(), "{bad}");
        }
    }
}
