//! Typed errors of the training library. Messages are single lines that name the file or
//! folder at fault and say what to do where there is something to do.

use std::path::PathBuf;

use thiserror::Error;

use crate::augment::AugmentError;
use crate::optim::OptimError;
use crate::torch_file::TorchFileError;

/// Problems with the image folder.
#[derive(Debug, Error)]
pub enum DatasetError {
    #[error("{0}: folder not found")]
    MissingFolder(PathBuf),
    #[error("{0}: not a folder")]
    NotAFolder(PathBuf),
    #[error("{path}: cannot list: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{root}: {}; at least two are needed, as ROOT/<class>/<images> or ROOT/train/<class>/<images>",
        describe_found(found)
    )]
    TooFewClasses { root: PathBuf, found: Vec<String> },
    #[error("{root}: no folder '{name}' for --val-dir")]
    MissingValDir { root: PathBuf, name: String },
    #[error("{dir}: class '{class}' has no readable image")]
    EmptyClass { class: String, dir: PathBuf },
    #[error("{dir}: class '{class}' is not among the training classes ({})", known.join(", "))]
    UnknownValClass { class: String, dir: PathBuf, known: Vec<String> },
    #[error("{path}: class folder name is not valid UTF-8")]
    BadClassName { path: PathBuf },
    #[error("--val-fraction must be in (0, 1), got {0}")]
    BadFraction(f64),
    #[error(
        "no validation images: the split left the validation set empty (use more images or a larger --val-fraction)"
    )]
    EmptyValidation,
}

/// Problems with a weights file or its fit to the model.
#[derive(Debug, Error)]
pub enum WeightsError {
    #[error("{path}: {source}")]
    File { path: PathBuf, source: TorchFileError },
    #[error("{path}: cannot read safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{path}: not a state dict (a dict of tensors, possibly under 'model' or 'state_dict')")]
    NotStateDict { path: PathBuf },
    #[error("weights do not fit {arch}: {}", describe_mismatch(missing, unexpected, mis_shaped))]
    Mismatch { arch: String, missing: Vec<String>, unexpected: Vec<String>, mis_shaped: Vec<String> },
    #[error("{path}: SHA-256 {got} does not start with {expected}; the file is damaged, delete it and retry")]
    HashMismatch { path: PathBuf, expected: String, got: String },
    #[error("pretrained weights {file} are not in {dir} and could not be downloaded from {url} ({reason}); put the file there, pass --weights FILE, or train from scratch with --no-pretrained")]
    Unavailable { file: String, dir: PathBuf, url: String, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

fn describe_found(found: &[String]) -> String {
    match found {
        [] => "found no class folder".to_string(),
        [one] => format!("found one class folder ({one})"),
        many => format!("found {} class folders ({})", many.len(), many.join(", ")),
    }
}

fn list(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

fn describe_mismatch(missing: &[String], unexpected: &[String], mis_shaped: &[String]) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing keys: {}", list(missing)));
    }
    if !unexpected.is_empty() {
        parts.push(format!("unexpected keys: {}", list(unexpected)));
    }
    if !mis_shaped.is_empty() {
        parts.push(format!("mis-shaped keys: {}", list(mis_shaped)));
    }
    parts.join("; ")
}

/// Problems with a training checkpoint (`last.pt`, `best.pt`).
#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    File { path: PathBuf, source: TorchFileError },
    #[error("{path}: not a checkpoint of this toolkit ({reason})")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: cannot write: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Settings that cannot make a run.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("unknown architecture '{name}' (known: {})", crate::arch::names().join(", "))]
    UnknownArch { name: String },
    #[error("epochs must be at least 1")]
    ZeroEpochs,
    #[error("batch sizes must be at least 1")]
    ZeroBatchSize,
    #[error(transparent)]
    AutoAugment(#[from] crate::autoaugment::AutoAugmentError),
    #[error(transparent)]
    Mix(#[from] crate::mix::MixError),
    #[error(transparent)]
    Loss(#[from] crate::loss::LossError),
    #[error(transparent)]
    Ema(#[from] crate::ema::EmaError),
    #[error(transparent)]
    Schedule(#[from] crate::schedule::ScheduleError),
    #[error(transparent)]
    Stop(#[from] crate::stopping::StopError),
    #[error(transparent)]
    Sampler(#[from] crate::sampler::SamplerError),
    #[error(transparent)]
    LrFind(#[from] crate::lr_find::LrFindError),
    #[error("--image-size must be between 16 and 1024, got {0}")]
    ImageSize(u32),
    #[error("label smoothing belongs in the loss (--label-smoothing), not also in the mixing targets")]
    SmoothingTwice,
    #[error("{option} is not available in a distributed run yet")]
    NotDistributed { option: &'static str },
    #[error("lr-find starts from the run's initial weights; it does not take --resume")]
    LrFindResume,
    #[error("--freeze-epochs ({freeze}) must be fewer than --epochs ({epochs})")]
    FreezeTooLong { freeze: usize, epochs: usize },
    #[error("this libtorch has no {symbol} (bfloat16 mixed precision needs libtorch 2.3 or later)")]
    AmpUnavailable { symbol: String },
    #[error("no data folder given (and none recorded in the checkpoint)")]
    NoDataFolder,
    #[error("{}: the checkpoint's classes ({}) differ from the data's ({})", path.display(), checkpoint.join(", "), data.join(", "))]
    ClassesDiffer { path: PathBuf, checkpoint: Vec<String>, data: Vec<String> },
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error(transparent)]
    Augment(#[from] AugmentError),
    #[error(transparent)]
    Preprocess(#[from] infer::preprocess::PreprocessError),
    #[error("cannot start loader threads: {0}")]
    LoaderThreads(#[from] rayon::ThreadPoolBuildError),
    #[error("--dist-backend {backend} cannot train on {device} (gloo takes CPU tensors, nccl GPU ones; --dist-backend auto picks)")]
    DistBackend { backend: crate::dist::Backend, device: &'static str },
    #[error("the ranks do not run the same training: {what}")]
    RanksDiffer { what: String },
}

/// A device asked for that this machine does not have.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DeviceError {
    #[error("CUDA requested but libtorch sees no GPU (no driver, no device, or a CPU-only libtorch)")]
    NoCuda,
    #[error("cuda:{index} requested but only {visible} GPU(s) are visible")]
    NoSuchGpu { index: u32, visible: usize },
    /// `train doctor`'s verdict on a device it was asked about.
    #[error("cuda:{index} is not usable: libtorch sees {visible} GPU(s)")]
    NotUsable { index: u32, visible: usize },
}

/// Everything that can stop a training run.
#[derive(Debug, Error)]
pub enum TrainError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("export: {0}")]
    Export(#[from] ExportError),
    #[error("invalid setting: {0}")]
    Config(#[from] ConfigError),
    #[error("device: {0}")]
    Device(#[from] DeviceError),
    #[error("{path}: cannot write: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("interrupted")]
    Interrupted,
    /// A collective of a data-parallel job failed: this rank's side of it.
    #[error("{source} ({during}){}", peer_hint(source))]
    Distributed { during: &'static str, source: crate::dist::DistError },
}

/// What a failed collective most likely means for the other ranks.
fn peer_hint(e: &crate::dist::DistError) -> &'static str {
    use crate::dist::DistError;
    match e {
        DistError::Collective { .. } | DistError::Store { .. } => {
            "; another rank exited or lost its connection (its own error line says why)"
        }
        DistError::Timeout { .. } => "; another rank stalled or took longer than --dist-timeout",
        _ => "",
    }
}

/// Why an export could not be written. Nothing is left at the target then.
#[derive(Debug, Error)]
pub enum ExportError {
    #[error("{0}: weights file not found")]
    NotFound(PathBuf),
    #[error("{path}: {reason}; for a plain state dict pass --arch and --classes")]
    NoRecord { path: PathBuf, reason: String },
    #[error("{path}: holds a {holds} model, not {asked}")]
    ArchMismatch { path: PathBuf, holds: String, asked: String },
    #[error("{path}: unknown architecture '{arch}' (known: {})", crate::arch::names().join(", "))]
    UnknownArch { path: PathBuf, arch: String },
    #[error("{path}: {found} class name(s); at least two are needed")]
    TooFewClasses { path: PathBuf, found: usize },
    #[error("{path}: {source}")]
    DoesNotFit { path: PathBuf, source: Box<WeightsError> },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{path}: cannot write: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("verification failed: ONNX Runtime cannot run the exported model: {0}")]
    Runtime(#[from] infer::InferError),
    #[error("verification failed: {0}")]
    Mismatch(#[from] VerifyError),
    #[error("int8: {0}")]
    Quantize(#[from] QuantizeError),
    #[error("int8 model refused: top-1 accuracy {:.4} against {:.4} for fp32, top-1 agreement {:.2}% on {} validation images (the int8 model may lose at most {} point and must agree on {}%); nothing written, --force keeps it anyway", .quantization.int8_accuracy, .quantization.fp32_accuracy, 100.0 * .quantization.top1_agreement, .quantization.validation_images, 100.0 * .max_drop, 100.0 * .min_agreement)]
    GateRefused {
        quantization: infer::Quantization,
        /// The gate's thresholds: the largest top-1 accuracy loss and the smallest top-1
        /// agreement with the float model (fractions).
        max_drop: f64,
        min_agreement: f64,
    },
    #[error("--quantize int8 needs --data: a data folder for calibration and the accuracy gate")]
    QuantizeNeedsData,
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// How the exported file disagrees with the model it was written from.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum VerifyError {
    #[error("class names read back differ from those written")]
    ClassesReadBack,
    #[error("non-finite logits")]
    NonFinite,
    #[error("ONNX Runtime and libtorch disagree: max |logit difference| {max:.2e} (bound {bound:.0e}), top-1 differs on {top1_differs} of {images} images")]
    Disagree { max: f32, bound: f32, top1_differs: usize, images: usize },
}

/// Why an int8 model could not be made.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum QuantizeError {
    #[error("the data's classes ({}) differ from the model's ({})", data.join(", "), model.join(", "))]
    ClassesDiffer { data: Vec<String>, model: Vec<String> },
    #[error("no readable calibration image")]
    NoCalibrationImage,
    #[error("no readable validation image for the accuracy gate")]
    NoValidationImage,
    /// The float graph is not one the exporter writes.
    #[error("no calibration range for {0}")]
    NoRange(String),
    #[error("{0} not quantized")]
    NotQuantized(String),
    #[error("no initializer {0}")]
    NoInitializer(String),
    #[error("the quantized model has no logits output")]
    NoLogits,
}
