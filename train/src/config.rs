//! A training run's settings, with their defaults written here once (the command line takes
//! its defaults from these `Default` impls and constants), the names of the files a run writes,
//! and how a run talks to whoever started it: the [`Observer`] it reports to and the
//! [`StopFlag`] it watches.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

use crate::amp::AmpDtype;
use crate::augment::Augment;
use crate::autoaugment::{PixelAugment, Policy, RandomErasing};
use crate::cleaning::CleaningSettings;
use crate::ddp::DistConfig;
use crate::device::DeviceChoice;
use crate::ema::EmaSettings;
use crate::loss::LossSettings;
use crate::mix::MixSettings;
use crate::optim::{OptimConfig, OptimizerKind, ScheduleKind};
use crate::quantize::Calibration;
use crate::report::{EpochRecord, PhaseStats, Summary};
use crate::sampler::SamplerSettings;
use crate::schedule::{FineTuneSettings, ScheduleSettings};
use crate::stopping::StopSettings;

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
/// The data-cleaning report: the highest-loss images under the best model, and their picture.
pub const TOP_LOSSES: &str = "top_losses.csv";
pub const TOP_LOSSES_PNG: &str = "top_losses.png";
/// `train lr-find`'s loss-against-rate picture.
pub const LR_FIND_PNG: &str = "lr_find.png";
/// Every file a run writes into its output folder.
pub const OUTPUTS: [&str; 11] = [
    BEST,
    LAST,
    METRICS,
    SUMMARY,
    CURVES,
    TRAIN_BATCH,
    VAL_PREDICTIONS,
    MODEL_ONNX,
    MODEL_INT8,
    TOP_LOSSES,
    TOP_LOSSES_PNG,
];

/// The input side the seed's models train at (torchvision's ImageNet recipe).
pub const DEFAULT_IMAGE_SIZE: u32 = 224;

/// A named set of training options (`--recipe`); options given explicitly override it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Recipe {
    /// The PyTorch transfer-learning tutorial's recipe: random resized crop and flip, plain
    /// cross entropy, SGD with a step schedule.
    #[default]
    Tutorial,
    /// timm-style regularisation: TrivialAugmentWide, random erasing 0.25, label smoothing 0.1,
    /// Mixup 0.2 / CutMix 1.0, an EMA of the weights, one epoch of warm-up and a cosine schedule.
    Strong,
}

/// The options a recipe sets; the command line's value for each when not given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecipeOptions {
    pub policy: Option<Policy>,
    pub random_erasing: f64,
    pub label_smoothing: f64,
    pub mixup: f64,
    pub cutmix: f64,
    pub ema: Option<f64>,
    pub warmup_epochs: f64,
    pub schedule: ScheduleKind,
}

impl Recipe {
    pub fn options(self) -> RecipeOptions {
        match self {
            Recipe::Tutorial => RecipeOptions {
                policy: None,
                random_erasing: 0.0,
                label_smoothing: 0.0,
                mixup: 0.0,
                cutmix: 0.0,
                ema: None,
                warmup_epochs: 0.0,
                schedule: OptimConfig::default().schedule,
            },
            Recipe::Strong => RecipeOptions {
                policy: Some(Policy::TRIVIAL_AUGMENT_WIDE),
                random_erasing: 0.25,
                label_smoothing: 0.1,
                mixup: 0.2,
                cutmix: 1.0,
                ema: Some(EmaSettings::default().decay),
                warmup_epochs: 1.0,
                schedule: ScheduleKind::Cosine,
            },
        }
    }

    /// Random erasing with probability `p` and torchvision's other defaults; none for 0.
    pub fn erasing(p: f64) -> Option<RandomErasing> {
        (p != 0.0).then(|| RandomErasing { p, ..Default::default() })
    }
}

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
    /// The preset the options below started from (`--recipe`).
    #[serde(default)]
    pub recipe: Recipe,
    /// Side of the square model input: training crops S, evaluation resizes to
    /// round(256·S/224) and crops S (`--image-size`). Part of the model's preprocessing contract.
    #[serde(default = "default_image_size")]
    pub image_size: u32,
    /// Automatic augmentation, colour jitter and random erasing beyond the crop and flip.
    #[serde(default)]
    pub pixel_augment: PixelAugment,
    /// Mixup and CutMix (label smoothing is in `loss`, not here).
    #[serde(default)]
    pub mix: MixSettings,
    /// Label smoothing and class weights.
    #[serde(default)]
    pub loss: LossSettings,
    /// An exponential moving average of the weights, evaluated beside them.
    #[serde(default)]
    pub ema: Option<EmaSettings>,
    /// Per-step warm-up and one-cycle.
    #[serde(default)]
    pub schedule: ScheduleSettings,
    /// Frozen epochs and layer-wise learning-rate decay.
    #[serde(default)]
    pub finetune: FineTuneSettings,
    /// `--balanced-sampler`.
    #[serde(default)]
    pub sampler: SamplerSettings,
    /// `--patience`, `--time-limit`.
    #[serde(default)]
    pub stopping: StopSettings,
    /// The data-cleaning report after training.
    #[serde(default)]
    pub cleaning: CleaningSettings,
}

fn default_image_size() -> u32 {
    DEFAULT_IMAGE_SIZE
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
            recipe: Recipe::default(),
            image_size: DEFAULT_IMAGE_SIZE,
            pixel_augment: PixelAugment::default(),
            mix: MixSettings::default(),
            loss: LossSettings::default(),
            ema: None,
            schedule: ScheduleSettings::default(),
            finetune: FineTuneSettings::default(),
            sampler: SamplerSettings::default(),
            stopping: StopSettings::default(),
            cleaning: CleaningSettings::default(),
        }
    }
}

impl Hyper {
    /// The deployment preprocessing these settings train for: validation runs it, the
    /// exported model carries it.
    pub fn preprocess(&self) -> infer::PreprocessConfig {
        let s = self.image_size;
        // torchvision's ratio of the evaluation resize to the crop (256/224), rounded.
        let resize = (f64::from(s) * 256.0 / 224.0).round() as u32;
        infer::PreprocessConfig { background: self.background, crop_size: s, resize_size: resize, ..Default::default() }
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
    /// A picture the run made (`train_batch`, `val_predictions`, `confusion_matrix`,
    /// `top_losses`), after
    /// the epoch it shows (1-based).
    fn picture(&mut self, _name: &str, _epoch: usize, _img: &image::RgbImage) {}
    /// A figure of an epoch (1-based) beyond its [`EpochRecord`]: the EMA weights' validation
    /// (`loss/val_ema`, `accuracy/val_ema`), per-class recall when classes are imbalanced
    /// (`recall/CLASS`).
    fn metric(&mut self, _tag: &str, _epoch: usize, _value: f64) {}
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

    /// Checkpoints of earlier versions have none of the recipe's settings: they load as the
    /// tutorial's recipe at 224 pixels.
    #[test]
    fn settings_of_earlier_versions_load_as_the_tutorial_recipe() {
        let mut v = serde_json::to_value(Hyper::default()).unwrap();
        for k in [
            "recipe",
            "image_size",
            "pixel_augment",
            "mix",
            "loss",
            "ema",
            "schedule",
            "finetune",
            "sampler",
            "stopping",
            "cleaning",
        ] {
            assert!(v.as_object_mut().unwrap().remove(k).is_some(), "{k}");
        }
        let h: Hyper = serde_json::from_value(v).unwrap();
        assert_eq!(h, Hyper::default());
        let p = h.preprocess();
        assert_eq!((p.crop_size, p.resize_size), (224, 256));
        let small = Hyper { image_size: 112, ..Hyper::default() }.preprocess();
        assert_eq!((small.crop_size, small.resize_size), (112, 128));
        let strong = Recipe::Strong.options();
        assert!(strong.policy.is_some() && strong.ema.is_some() && strong.mixup > 0.0);
        assert_eq!(Recipe::Tutorial.options().schedule, OptimConfig::default().schedule);
    }

    #[test]
    fn defaults_agree_with_each_other() {
        let c = TrainConfig::default();
        assert_eq!(c.hyper.epochs, c.hyper.optim.epochs);
        assert_eq!(QuantizeSettings::default().calibration_images, DEFAULT_CALIBRATION_IMAGES);
        assert!(c.export.is_some_and(|e| e.quantize.is_none()));
    }
}
