//! What a run leaves besides weights: `metrics.csv`, `summary.json` and the two pictures; and
//! what an export reports.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::Skipped;
use crate::error::TrainError;
use crate::plot;
use infer::atomic;

/// What an export wrote and how it checked.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub path: PathBuf,
    pub bytes: usize,
    /// Images in the verification batch, and whether they were real images.
    pub images: usize,
    pub real_images: bool,
    pub max_abs_diff: f32,
    pub provider: String,
    /// The int8 model, when one was asked for.
    pub int8: Option<Int8Report>,
}

/// What the int8 export wrote (or refused to) and how it measured.
#[derive(Debug, Clone)]
pub struct Int8Report {
    pub path: PathBuf,
    pub bytes: usize,
    pub quantization: infer::Quantization,
    /// False when the gate refused the model and `force` kept it anyway.
    pub passed: bool,
}

/// JSON has no NaN: serde_json writes a NaN figure (a diverged run's loss) as `null`, which
/// reads back as NaN here, so such a run's `last.pt` still resumes.
fn nan_from_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Loss, accuracy and speed of one phase of one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PhaseStats {
    #[serde(deserialize_with = "nan_from_null")]
    pub loss: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub acc: f64,
    pub images: usize,
    #[serde(deserialize_with = "nan_from_null")]
    pub seconds: f64,
}

impl PhaseStats {
    pub fn images_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.images as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// One epoch: its training and validation phases and the learning rate it trained with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    pub lr: f64,
    pub train: PhaseStats,
    pub val: PhaseStats,
}

/// Writes `metrics.csv`: a row per epoch and phase.
pub fn write_metrics(path: &Path, history: &[EpochRecord]) -> Result<(), TrainError> {
    atomic::write_with(path, |w| {
        writeln!(w, "epoch,phase,loss,acc,lr,seconds,images_per_s")?;
        for r in history {
            for (phase, s) in [("train", &r.train), ("val", &r.val)] {
                writeln!(
                    w,
                    "{},{phase},{:.6},{:.6},{:e},{:.3},{:.2}",
                    r.epoch,
                    s.loss,
                    s.acc,
                    r.lr,
                    s.seconds,
                    s.images_per_sec()
                )?;
            }
        }
        Ok(())
    })
    .map_err(|source| TrainError::Write { path: path.to_path_buf(), source })
}

/// Writes a PNG atomically.
pub fn write_png(path: &Path, img: &image::RgbImage) -> Result<(), TrainError> {
    atomic::write_png(path, img).map_err(|source| TrainError::Write { path: path.to_path_buf(), source })
}

/// Writes `curves.png` from the history.
pub fn write_curves(path: &Path, history: &[EpochRecord]) -> Result<(), TrainError> {
    let col = |f: &dyn Fn(&EpochRecord) -> f64| history.iter().map(f).collect::<Vec<_>>();
    let img =
        plot::curves(&col(&|r| r.train.loss), &col(&|r| r.val.loss), &col(&|r| r.train.acc), &col(&|r| r.val.acc));
    write_png(path, &img)
}

/// The best epoch so far.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub epoch: usize,
    #[serde(deserialize_with = "nan_from_null")]
    pub val_acc: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub val_loss: f64,
    /// Which weights `best.pt` holds: the trained ones or their moving average (`--ema`).
    #[serde(default)]
    pub weights: BestWeights,
}

/// The weights kept as `best.pt`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BestWeights {
    #[default]
    Raw,
    Ema,
}

/// Validation of the EMA weights in one epoch, beside the raw weights' in [`EpochRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EmaRecord {
    /// 1-based.
    pub epoch: usize,
    #[serde(deserialize_with = "nan_from_null")]
    pub val_loss: f64,
    #[serde(deserialize_with = "nan_from_null")]
    pub val_acc: f64,
}

/// A class pair the best model confuses, by name, in `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confused {
    pub actual: String,
    pub predicted: String,
    pub count: usize,
}

/// The data-cleaning report in `summary.json`: where the highest-loss images are listed and the
/// validation images' most confused class pairs under the best model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleaningReport {
    pub top_losses: PathBuf,
    pub images_ranked: usize,
    pub most_confused: Vec<Confused>,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub toolkit: String,
    pub toolkit_version: String,
    pub data: PathBuf,
    /// The output folder.
    pub out: PathBuf,
    pub classes: Vec<String>,
    pub train_counts: Vec<usize>,
    pub val_counts: Vec<usize>,
    pub split: crate::dataset::SplitKind,
    /// The folder the validation images came from, when not a split of the training images.
    pub validation_folder: Option<PathBuf>,
    pub skipped_files: Vec<Skipped>,
    pub ignored_files: usize,
    /// The ignored files by extension, with the first few names of each kind.
    pub ignored_by_extension: std::collections::BTreeMap<String, infer::files::IgnoredKind>,
    /// Files kept although they end before their image data does.
    pub incomplete_files: Vec<PathBuf>,
    /// Images with transparent pixels, and those of them that are nearly one colour once
    /// their alpha is dropped (what the model saw of them unless `--background` was given).
    pub transparent_images: usize,
    pub blank_without_alpha: Vec<PathBuf>,
    pub epochs_completed: usize,
    pub interrupted: bool,
    pub best: Option<Best>,
    /// Training time over every run of this training (resumed runs included).
    pub total_seconds: f64,
    /// Time of this process alone.
    pub process_seconds: f64,
    pub device: String,
    pub seed: u64,
    pub weights: String,
    pub hyperparameters: serde_json::Value,
    pub outputs: Vec<PathBuf>,
    /// How a data-parallel run trained; absent from a single process's summary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distributed: Option<DistReport>,
    /// Why the run ended before its last epoch (`--patience`, `--time-limit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_early: Option<String>,
    /// The class imbalance warning of the data scan, when it fired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imbalance: Option<String>,
    /// Per-class validation recall of the last epoch (with imbalanced classes), by class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_class_recall: Option<Vec<Option<f64>>>,
    /// The EMA weights' validation, epoch by epoch (`--ema`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ema_history: Vec<EmaRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleaning: Option<CleaningReport>,
    /// The end-of-training export, when one ran (reported by the caller, not written).
    #[serde(skip)]
    pub export: Option<ExportReport>,
}

/// How a data-parallel run trained, in `summary.json`; the times are rank 0's, in this process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistReport {
    pub world_size: usize,
    pub backend: String,
    pub batch_per_rank: usize,
    /// `batch_per_rank × world_size`: the batch each optimiser step averages over.
    pub global_batch: usize,
    pub sync_bn: bool,
    /// Time in training phases.
    pub train_seconds: f64,
    /// Of it, waiting for the gradient all-reduce after backward's last gradient.
    pub allreduce_exposed_seconds: f64,
    /// Of it, the small collectives of each step (stop agreement, rank 0's BatchNorm statistics).
    pub step_sync_seconds: f64,
    /// Of it, synchronised BatchNorm's all-reduces (`--sync-bn`).
    pub sync_bn_seconds: f64,
    /// Gradient all-reduces from launch to completion, summed (mostly hidden by backward).
    pub allreduce_seconds: f64,
    /// Backward passes, computation and exposed all-reduce.
    pub backward_seconds: f64,
    /// `(allreduce_exposed_seconds + step_sync_seconds + sync_bn_seconds) / train_seconds`: the
    /// share of training time spent waiting on communication.
    pub communication_share: f64,
}

pub fn write_summary(path: &Path, summary: &Summary) -> Result<(), TrainError> {
    let json = serde_json::to_vec_pretty(summary).expect("summary serialises");
    atomic::write_bytes(path, &json).map_err(|source| TrainError::Write { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diverged_epoch_round_trips_through_json() {
        let stats = PhaseStats { loss: f64::NAN, acc: 0.5, images: 4, seconds: 1.0 };
        let json = serde_json::to_string(&stats).unwrap();
        assert!(json.contains("\"loss\":null"), "{json}");
        let back: PhaseStats = serde_json::from_str(&json).unwrap();
        assert!(back.loss.is_nan());
        assert_eq!(back.acc, 0.5);
    }
}
