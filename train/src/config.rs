//! A training run's settings, with their defaults written here once (the command line takes
//! its defaults from these `Default` impls and constants), the names of the files a run writes,
//! and how a run talks to whoever started it: the [`Observer`] it reports to and the
//! [`StopFlag`] it watches.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use crate::amp::AmpDtype;
use crate::augment::Augment;
use crate::ddp::DistConfig;
use crate::device::DeviceChoice;
use crate::optim::{OptimConfig, OptimizerKind, ScheduleKind};
use crate::quantize::Calibration;
use crate::report::{EpochRecord, PhaseStats, Summary};

/// Default output folder.
pub const DEFAULT_OUT: &str = "models";
/// Training images drawn to calibrate an int8 model unless told otherwise.
pub const DEFAULT_CALIBRATION_IMAGES: usize = 300;

/// Output file names inside the output folder.
pub const BEST: &str = "best.pt";
pub const LAST: &str = "last.pt";
pub const METRICS: &str = "metrics.csv";
pub const SUMMARY: &str = "summary.json";
pub const CURVES: &str = "curves.png";
pub const TRAIN_BATCH: &str = "train_batch.png";
pub const VAL_PREDICTIONS: &str = "val_predictions.png";
pub const MODEL_ONNX: &str = "model.onnx";
/// Written with `--quantize int8` (see [`crate::export::int8_path`]).
pub const MODEL_INT8: &str = "model.int8.onnx";
/// Every file a run writes into its output folder.
pub const OUTPUTS: [&str; 9] =
    [BEST, LAST, METRICS, SUMMARY, CURVES, TRAIN_BATCH, VAL_PREDICTIONS, MODEL_ONNX, MODEL_INT8];

/// The folder a run writes into: `out` when given; else, for a resumed run, the folder of its
/// checkpoint (`.` for a bare file name); else [`DEFAULT_OUT`].
pub fn output_folder(out: Option<&Path>, resume: Option<&Path>) -> PathBuf {
    match (out, resume) {
        (Some(o), _) => o.to_path_buf(),
        (None, Some(r)) => r.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf(),
        (None, None) => PathBuf::from(DEFAULT_OUT),
    }
}

/// Which layers learn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// All layers train, starting from the pretrained weights.
    #[default]
    Finetune,
    /// Only the new classifier trains; the backbone is a fixed feature extractor.
    FeatureExtract,
}

/// Where the initial weights come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum WeightsSource {
    /// torchvision's ImageNet weights, from torch's cache or downloaded.
    #[default]
    Pretrained,
    File(PathBuf),
    /// Random initialisation.
    Scratch,
}

/// Settings that define the experiment; saved in `last.pt` and `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hyper {
    pub arch: String,
    pub mode: Mode,
    pub epochs: usize,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub optim: OptimConfig,
    pub val_fraction: f64,
    /// The validation folder's name under the data folder, when chosen (`--val-dir`).
    #[serde(default)]
    pub val_dir: Option<String>,
    /// Leave out files that end before their image data does (kept by default).
    #[serde(default)]
    pub skip_incomplete: bool,
    /// Composite transparent images onto this colour (else their alpha is dropped, as PIL's
    /// `convert("RGB")` does); part of the model's preprocessing contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<infer::Background>,
    #[serde(default)]
    pub augment: Augment,
    pub seed: u64,
    pub amp: bool,
    /// Mixed precision's type, with `amp`.
    #[serde(default)]
    pub amp_dtype: AmpDtype,
    /// Convolution kernels and batches in the channels-last (NHWC) layout.
    #[serde(default)]
    pub channels_last: bool,
    /// Batch norm with the statistics of every rank's batch in a data-parallel job
    /// (`torch.nn.SyncBatchNorm`); no effect in a single process. Recorded only when set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sync_bn: bool,
}

impl Default for Hyper {
    /// The seed tutorial's: resnet18 fine-tuned with batches of 4 for the optimiser's default
    /// run length, the optimiser's and augmentation's defaults, and a fifth of each class held
    /// out when there is no validation folder.
    fn default() -> Self {
        let optim = OptimConfig::default();
        Hyper {
            arch: "resnet18".into(),
            mode: Mode::default(),
            epochs: optim.epochs,
            batch_size: 4,
            eval_batch_size: 32,
            optim,
            val_fraction: 0.2,
            val_dir: None,
            skip_incomplete: false,
            background: None,
            augment: Augment::default(),
            seed: 0,
            amp: false,
            amp_dtype: AmpDtype::default(),
            channels_last: false,
            sync_bn: false,
        }
    }
}

impl Hyper {
    /// The deployment preprocessing these settings train for: validation runs it, the
    /// exported model carries it.
    pub fn preprocess(&self) -> infer::PreprocessConfig {
        infer::PreprocessConfig { background: self.background, ..Default::default() }
    }

    /// Autocast's type when mixed precision is on.
    pub fn autocast(&self) -> Option<AmpDtype> {
        self.amp.then_some(self.amp_dtype)
    }

    /// The settings as JSON for `summary.json`, leaving out those the chosen optimiser and
    /// schedule do not use (an SGD run has no Adam betas).
    pub fn describe(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("hyper-parameters serialise");
        if let Some(o) = v.get_mut("optim").and_then(|o| o.as_object_mut()) {
            let unused: &[&str] = match self.optim.optimizer {
                OptimizerKind::Sgd => &["betas", "eps"],
                OptimizerKind::Adamw => &["momentum"],
            };
            let unused_schedule: &[&str] = match self.optim.schedule {
                ScheduleKind::Step => &[],
                ScheduleKind::Cosine | ScheduleKind::Constant => &["step_size", "gamma"],
            };
            for k in unused.iter().chain(unused_schedule) {
                o.remove(*k);
            }
        }
        if let (false, Some(o)) = (self.amp, v.as_object_mut()) {
            o.remove("amp_dtype");
        }
        v
    }
}

/// The end-of-training export to `model.onnx`.
#[derive(Debug, Clone, Default)]
pub struct ExportSettings {
    /// Also output softmax probabilities.
    pub probabilities: bool,
    /// Also write `model.int8.onnx`, calibrated on training images and gated on validation.
    pub quantize: Option<QuantizeSettings>,
}

/// The quantized model written beside the float one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum QuantizeKind {
    /// Per-channel int8 weights, uint8 activations (ONNX QDQ), for CPUs with VNNI.
    #[default]
    Int8,
}

/// The int8 export's settings.
#[derive(Debug, Clone)]
pub struct QuantizeSettings {
    pub kind: QuantizeKind,
    pub calibration: Calibration,
    /// Training images drawn (with a fixed seed) for calibration.
    pub calibration_images: usize,
    /// Keep an int8 model the accuracy gate refuses.
    pub force: bool,
}

impl Default for QuantizeSettings {
    fn default() -> Self {
        QuantizeSettings {
            kind: QuantizeKind::default(),
            calibration: Calibration::default(),
            calibration_images: DEFAULT_CALIBRATION_IMAGES,
            force: false,
        }
    }
}

/// A training run's settings.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// The image folder; with `resume`, the checkpoint's when not given.
    pub data: Option<PathBuf>,
    /// Output folder; see [`output_folder`].
    pub out: Option<PathBuf>,
    pub hyper: Hyper,
    pub weights: WeightsSource,
    /// Continue from this `last.pt` with its settings; `epochs_override` may extend the run.
    pub resume: Option<PathBuf>,
    pub epochs_override: Option<usize>,
    pub device: DeviceChoice,
    /// Loader threads.
    pub workers: usize,
    /// libtorch intra-op threads (`None`: libtorch's default).
    pub threads: Option<usize>,
    /// Batches assembled ahead of training.
    pub prefetch: usize,
    /// Export the best model to `model.onnx` at the end.
    pub export: Option<ExportSettings>,
    /// Join a data-parallel job (the launcher's RANK, WORLD_SIZE... read by the caller):
    /// `None` trains in this process alone.
    pub distributed: Option<DistConfig>,
    /// Write a TensorBoard log into the output folder (see [`crate::board`]).
    pub tensorboard: bool,
    /// Batches between two points of the TensorBoard training-loss curve.
    pub log_every: usize,
}

impl Default for TrainConfig {
    /// Pretrained weights, the [`Hyper`] defaults, the best device there is, a loader thread
    /// per CPU, and the float export at the end.
    fn default() -> Self {
        TrainConfig {
            data: None,
            out: None,
            hyper: Hyper::default(),
            weights: WeightsSource::default(),
            resume: None,
            epochs_override: None,
            device: DeviceChoice::default(),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            threads: None,
            prefetch: 4,
            export: Some(ExportSettings::default()),
            distributed: None,
            tensorboard: true,
            log_every: crate::board::DEFAULT_EVERY,
        }
    }
}

impl TrainConfig {
    /// The folder this run writes into (see [`output_folder`]).
    pub fn output_folder(&self) -> PathBuf {
        output_folder(self.out.as_deref(), self.resume.as_deref())
    }
}

/// What a person watching the run is told.
pub trait Observer {
    fn info(&mut self, msg: &str);
    fn warn(&mut self, msg: &str);
    fn download_progress(&mut self, _done: u64, _total: Option<u64>) {}
    fn phase_start(&mut self, _epoch: usize, _epochs: usize, _phase: &'static str, _images: usize) {}
    /// After each batch: images so far in the phase, running loss and accuracy.
    fn batch_done(&mut self, _images: usize, _loss: f64, _acc: f64) {}
    fn phase_end(&mut self, _stats: &PhaseStats) {}
    fn epoch_end(&mut self, _record: &EpochRecord, _epochs: usize, _best: bool) {}
    /// A picture the run made (`train_batch`, `val_predictions`, `confusion_matrix`), after
    /// the epoch it shows (1-based).
    fn picture(&mut self, _name: &str, _epoch: usize, _img: &image::RgbImage) {}
    /// The run's final summary (also when it was stopped early).
    fn finished(&mut self, _summary: &Summary) {}
}

/// Ctrl-C handling: the first request finishes the current epoch and stops; the second stops
/// at once, leaving the files of the last finished epoch.
#[derive(Debug, Default)]
pub struct StopFlag(AtomicUsize);

impl StopFlag {
    /// Records one more stop request and returns how many there have been.
    pub fn request(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    pub fn level(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_folder_rule() {
        let (out, last) = (Path::new("elsewhere"), Path::new("runs/a/last.pt"));
        assert_eq!(output_folder(Some(out), Some(last)), out);
        assert_eq!(output_folder(None, Some(last)), Path::new("runs/a"));
        assert_eq!(output_folder(None, Some(Path::new("last.pt"))), Path::new("."));
        assert_eq!(output_folder(None, None), Path::new(DEFAULT_OUT));
    }

    #[test]
    fn defaults_agree_with_each_other() {
        let c = TrainConfig::default();
        assert_eq!(c.hyper.epochs, c.hyper.optim.epochs);
        assert_eq!(QuantizeSettings::default().calibration_images, DEFAULT_CALIBRATION_IMAGES);
        assert!(c.export.is_some_and(|e| e.quantize.is_none()));
    }
}
