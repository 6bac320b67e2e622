//! When to end a run before its last epoch: `--patience N` (N epochs in a row without a better
//! validation accuracy — Keras' `EarlyStopping(patience=N)` on accuracy, with an optional
//! `min_delta`) and `--time-limit` ("30m", "2h", "90s", "1h30m", "1.5h"): the run stops after
//! the epoch in which the limit was reached, or earlier when the next epoch, as long as the last
//! one, would end past it. The trainer calls [`Stopper::should_stop`] after each validation and
//! [`Stopper::time_exceeded`] between batches if it wants a hard cut.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A stopping setting that cannot be used.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum StopError {
    #[error("--time-limit '{0}': expected a duration such as 90s, 30m, 2h, 1h30m or 1.5h")]
    Duration(String),
    #[error("--patience must be at least 1 epoch")]
    Patience,
    #[error("--min-delta must be finite and >= 0, got {0}")]
    MinDelta(f64),
}

/// A wall-clock limit, written and read as `1h30m` etc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TimeLimit(pub Duration);

impl FromStr for TimeLimit {
    type Err = StopError;
    fn from_str(s: &str) -> Result<TimeLimit, StopError> {
        parse_duration(s).map(TimeLimit)
    }
}

impl TryFrom<String> for TimeLimit {
    type Error = StopError;
    fn try_from(s: String) -> Result<TimeLimit, StopError> {
        s.parse()
    }
}

impl From<TimeLimit> for String {
    fn from(t: TimeLimit) -> String {
        t.to_string()
    }
}

impl fmt::Display for TimeLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

/// Parses `90s`, `30m`, `2h`, `1h30m`, `1h30m15s`, `1.5h`, `45.5s`: numbers (decimals allowed)
/// each followed by `h`, `m` or `s`, units in that order and at most once; the total must be
/// positive. A bare number is refused (minutes or seconds?).
pub fn parse_duration(s: &str) -> Result<Duration, StopError> {
    let bad = || StopError::Duration(s.to_string());
    let text = s.trim().to_ascii_lowercase();
    if text.is_empty() {
        return Err(bad());
    }
    let mut seconds = 0.0f64;
    let mut last_rank = 0;
    let mut number = String::new();
    for ch in text.chars() {
        if ch.is_ascii_digit() || ch == '.' {
            number.push(ch);
            continue;
        }
        let (rank, unit) = match ch {
            'h' => (1, 3600.0),
            'm' => (2, 60.0),
            's' => (3, 1.0),
            _ => return Err(bad()),
        };
        if rank <= last_rank || number.is_empty() {
            return Err(bad());
        }
        let v: f64 = number.parse().map_err(|_| bad())?;
        seconds += v * unit;
        last_rank = rank;
        number.clear();
    }
    if !(number.is_empty() && seconds.is_finite() && seconds > 0.0) {
        return Err(bad());
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

/// `1h30m`, `45s`, `2h`, `1m30.5s`.
pub fn format_duration(d: Duration) -> String {
    let total = d.as_secs_f64();
    let h = (total / 3600.0).floor();
    let m = ((total - h * 3600.0) / 60.0).floor();
    let s = total - h * 3600.0 - m * 60.0;
    let mut out = String::new();
    if h > 0.0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0.0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 1e-9 || out.is_empty() {
        let s = (s * 1000.0).round() / 1000.0;
        out.push_str(&format!("{s}s"));
    }
    out
}

/// `--patience`, `--min-delta`, `--time-limit`; all off by default.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct StopSettings {
    /// Stop after this many epochs in a row without a better validation accuracy.
    pub patience: Option<usize>,
    /// An accuracy counts as better when it exceeds the best by more than this.
    pub min_delta: f64,
    pub time_limit: Option<TimeLimit>,
}

impl StopSettings {
    pub fn validate(&self) -> Result<(), StopError> {
        if self.patience == Some(0) {
            return Err(StopError::Patience);
        }
        if !(self.min_delta.is_finite() && self.min_delta >= 0.0) {
            return Err(StopError::MinDelta(self.min_delta));
        }
        Ok(())
    }
}

/// What the trainer reports of an epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochRecord {
    /// 0-based.
    pub epoch: usize,
    pub val_acc: f64,
    /// Wall-clock seconds of the epoch (training and validation).
    pub seconds: f64,
}

/// Why a run ends early.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StopReason {
    /// `epochs` epochs in a row without a better accuracy than `best_acc` of `best_epoch`
    /// (0-based).
    Patience { epochs: usize, best_acc: f64, best_epoch: usize },
    /// The limit is reached, or the next epoch (estimated as long as the last) would pass it.
    TimeLimit { limit: Duration, elapsed: Duration, next_epoch: Duration },
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            StopReason::Patience { epochs, best_acc, best_epoch } => write!(
                f,
                "stopped early: no better validation accuracy for {epochs} epoch{} (best {:.4} at epoch {})",
                if epochs == 1 { "" } else { "s" },
                best_acc,
                best_epoch + 1
            ),
            StopReason::TimeLimit { limit, elapsed, next_epoch: _ } if elapsed >= limit => {
                write!(f, "stopped at the time limit: {} elapsed of {}", format_duration(elapsed), TimeLimit(limit))
            }
            StopReason::TimeLimit { limit, elapsed, next_epoch } => write!(
                f,
                "stopped before the time limit: {} elapsed of {}, and another epoch takes about {}",
                format_duration(elapsed),
                TimeLimit(limit),
                format_duration(next_epoch)
            ),
        }
    }
}

/// Keeps the best accuracy and the epoch times of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Stopper {
    settings: StopSettings,
    /// (epoch, accuracy) of the best so far.
    best: Option<(usize, f64)>,
    since_best: usize,
    last_epoch_seconds: f64,
}

impl Stopper {
    pub fn new(settings: StopSettings) -> Stopper {
        Stopper { settings, best: None, since_best: 0, last_epoch_seconds: 0.0 }
    }

    /// The best epoch (0-based) and accuracy so far.
    pub fn best(&self) -> Option<(usize, f64)> {
        self.best
    }

    /// After an epoch's validation: records it and says whether to stop, with the reason.
    /// `elapsed` is the run's wall-clock time so far. Patience is checked before time.
    pub fn should_stop(&mut self, record: &EpochRecord, elapsed: Duration) -> Option<StopReason> {
        let improved = match self.best {
            None => record.val_acc.is_finite(),
            Some((_, best)) => record.val_acc > best + self.settings.min_delta,
        };
        if improved {
            self.best = Some((record.epoch, record.val_acc));
            self.since_best = 0;
        } else {
            self.since_best += 1;
        }
        if record.seconds.is_finite() && record.seconds >= 0.0 {
            self.last_epoch_seconds = record.seconds;
        }
        if let (Some(patience), Some((best_epoch, best_acc))) = (self.settings.patience, self.best) {
            if self.since_best >= patience {
                return Some(StopReason::Patience { epochs: self.since_best, best_acc, best_epoch });
            }
        }
        let limit = self.settings.time_limit?.0;
        let next_epoch = Duration::from_secs_f64(self.last_epoch_seconds);
        (elapsed >= limit || elapsed + next_epoch > limit).then_some(StopReason::TimeLimit {
            limit,
            elapsed,
            next_epoch,
        })
    }

    /// Whether the time limit has passed (for a check between batches).
    pub fn time_exceeded(&self, elapsed: Duration) -> bool {
        self.settings.time_limit.is_some_and(|t| elapsed >= t.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: usize, val_acc: f64) -> EpochRecord {
        EpochRecord { epoch, val_acc, seconds: 60.0 }
    }

    #[test]
    fn durations() {
        let s = |x: &str| parse_duration(x).map(|d| d.as_secs_f64());
        assert_eq!(s("30m"), Ok(1800.0));
        assert_eq!(s("2h"), Ok(7200.0));
        assert_eq!(s("90s"), Ok(90.0));
        assert_eq!(s("1h30m"), Ok(5400.0));
        assert_eq!(s("1h30m15s"), Ok(5415.0));
        assert_eq!(s(" 1.5H "), Ok(5400.0));
        assert_eq!(s("0.5s"), Ok(0.5));
        for bad in ["", "90", "m", "30m1h", "1h1h", "1x", "0s", "1..5h", "-5m", "h30"] {
            assert!(s(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(45)), "45s");
        assert_eq!(format_duration(Duration::from_secs(0)), "0s");
        assert_eq!(format_duration(Duration::from_secs_f64(90.5)), "1m30.5s");
        let t: TimeLimit = "1h30m".parse().unwrap();
        let json = serde_json::to_string(&StopSettings { time_limit: Some(t), ..Default::default() }).unwrap();
        assert!(json.contains("\"1h30m\""), "{json}");
        let back: StopSettings = serde_json::from_str(&json).unwrap();
        assert_eq!(back.time_limit, Some(t));
    }

    #[test]
    fn patience_counts_epochs_without_improvement() {
        let mut s = Stopper::new(StopSettings { patience: Some(2), ..Default::default() });
        let t = Duration::from_secs(1);
        assert_eq!(s.should_stop(&rec(0, 0.5), t), None);
        assert_eq!(s.should_stop(&rec(1, 0.6), t), None);
        assert_eq!(s.should_stop(&rec(2, 0.6), t), None, "equal is not better");
        assert_eq!(s.should_stop(&rec(3, 0.7), t), None, "better resets the count");
        assert_eq!(s.should_stop(&rec(4, 0.65), t), None);
        let r = s.should_stop(&rec(5, f64::NAN), t).unwrap();
        assert_eq!(r, StopReason::Patience { epochs: 2, best_acc: 0.7, best_epoch: 3 });
        assert_eq!(r.to_string(), "stopped early: no better validation accuracy for 2 epochs (best 0.7000 at epoch 4)");
        assert_eq!(s.best(), Some((3, 0.7)));
        let mut d = Stopper::new(StopSettings { patience: Some(1), min_delta: 0.05, ..Default::default() });
        assert_eq!(d.should_stop(&rec(0, 0.5), t), None);
        assert!(d.should_stop(&rec(1, 0.54), t).is_some(), "within min_delta");
        assert_eq!(StopSettings { patience: Some(0), ..Default::default() }.validate(), Err(StopError::Patience));
    }

    #[test]
    fn time_limit_stops_before_an_epoch_that_would_not_fit() {
        let limit = TimeLimit(Duration::from_secs(300));
        let mut s = Stopper::new(StopSettings { time_limit: Some(limit), ..Default::default() });
        assert_eq!(s.should_stop(&rec(0, 0.5), Duration::from_secs(60)), None);
        assert_eq!(s.should_stop(&rec(1, 0.6), Duration::from_secs(240)), None, "240 + 60 is not past 300");
        let r = s.should_stop(&rec(2, 0.7), Duration::from_secs(250)).unwrap();
        assert!(r.to_string().starts_with("stopped before the time limit: 4m10s elapsed of 5m"), "{r}");
        let r = s.should_stop(&rec(3, 0.7), Duration::from_secs(301)).unwrap();
        assert_eq!(r.to_string(), "stopped at the time limit: 5m1s elapsed of 5m");
        assert!(s.time_exceeded(Duration::from_secs(300)));
        assert!(!Stopper::new(StopSettings::default()).time_exceeded(Duration::MAX));
        assert_eq!(Stopper::new(StopSettings::default()).should_stop(&rec(0, 0.1), Duration::MAX), None);
    }
}
