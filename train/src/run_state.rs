//! What a run records about itself for later: the state `--resume` restores from `last.pt`,
//! and, for `train export`, the validation split a run used, read back from its `last.pt` or
//! `summary.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::config::{Hyper, LAST, SUMMARY};
use crate::dataset::Fingerprint;
use crate::error::CheckpointError;
use crate::report::{Best, EpochRecord};

/// The state that `--resume` restores, saved as JSON in `last.pt`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    pub hyper: Hyper,
    pub classes: Vec<String>,
    pub epochs_done: usize,
    pub best: Option<Best>,
    pub history: Vec<EpochRecord>,
    pub elapsed_seconds: f64,
    pub weights: String,
    /// The data folder and what it held (absent in checkpoints of earlier versions).
    #[serde(default)]
    pub data: Option<PathBuf>,
    #[serde(default)]
    pub fingerprint: Option<Fingerprint>,
    /// The ranks of a distributed run (absent for a single process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world_size: Option<usize>,
    /// The EMA weights' validation so far (`--ema`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ema_history: Vec<crate::report::EmaRecord>,
}

impl RunState {
    /// The run state of the checkpoint at `path`, from its JSON.
    pub fn parse(path: &Path, json: &str) -> Result<RunState, CheckpointError> {
        serde_json::from_str(json)
            .map_err(|e| CheckpointError::Invalid { path: path.to_path_buf(), reason: format!("run state: {e}") })
    }

    /// The run state of a `last.pt`.
    pub fn read(path: &Path) -> Result<RunState, CheckpointError> {
        RunState::parse(path, &checkpoint::read_run_state(path)?)
    }
}

/// The settings that made a run's validation split, and the file they were read from.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedSplit {
    pub source: PathBuf,
    pub val_fraction: f64,
    pub seed: u64,
    pub val_dir: Option<String>,
    /// The data folder the run trained on, when recorded.
    pub data: Option<PathBuf>,
}

impl RecordedSplit {
    fn from_hyper(source: PathBuf, h: &Hyper, data: Option<PathBuf>) -> RecordedSplit {
        RecordedSplit { source, val_fraction: h.val_fraction, seed: h.seed, val_dir: h.val_dir.clone(), data }
    }
}

/// The validation split of the run that wrote `weights`: from the run's `last.pt` beside it
/// (`weights` itself when it is that file), else from the `summary.json` beside it. `None`
/// when neither is there or readable (beside a plain torchvision state dict, say).
pub fn recorded_split(weights: &Path) -> Option<RecordedSplit> {
    let dir = weights.parent().unwrap_or(Path::new(""));
    let last = dir.join(LAST);
    let from_last = || {
        let state = RunState::read(&last).ok()?;
        Some(RecordedSplit::from_hyper(last.clone(), &state.hyper, state.data))
    };
    last.is_file().then(from_last).flatten().or_else(|| from_summary(&dir.join(SUMMARY)))
}

/// The split settings recorded in a `summary.json` (its `hyperparameters` and `data`).
fn from_summary(path: &Path) -> Option<RecordedSplit> {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let h = json.get("hyperparameters")?;
    Some(RecordedSplit {
        source: path.to_path_buf(),
        val_fraction: h.get("val_fraction")?.as_f64()?,
        seed: h.get("seed")?.as_u64()?,
        val_dir: h.get("val_dir").and_then(|v| v.as_str()).map(str::to_string),
        data: json.get("data").and_then(|d| d.as_str()).map(PathBuf::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_json_gives_the_split() {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("best.pt");
        assert_eq!(recorded_split(&weights), None);
        let h = Hyper { val_fraction: 0.5, seed: 3, val_dir: Some("valid".into()), ..Hyper::default() };
        let summary = serde_json::json!({"data": "some/data", "hyperparameters": h.describe()});
        std::fs::write(dir.path().join(SUMMARY), summary.to_string()).unwrap();
        let split = recorded_split(&weights).unwrap();
        assert_eq!(
            split,
            RecordedSplit {
                source: dir.path().join(SUMMARY),
                val_fraction: 0.5,
                seed: 3,
                val_dir: Some("valid".into()),
                data: Some("some/data".into()),
            }
        );
    }
}
