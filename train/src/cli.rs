//! The `train` binary's command line: the arguments, with the library's defaults, and their
//! mapping onto the library's settings ([`TrainArgs::config`], [`ExportArgs::request`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use train::amp::AmpDtype;
use train::augment::Augment;
use train::autoaugment::{ColorJitter, PixelAugment, Policy};
use train::cleaning::CleaningSettings;
use train::config::{QuantizeKind, QuantizeSettings, Recipe, DEFAULT_IMAGE_SIZE, DEFAULT_OUT};
use train::dataset::VALIDATION_DIRS;
use train::ddp::{self, BackendChoice, DistConfig};
use train::device::DeviceChoice;
use train::dist::Env;
use train::ema::EmaSettings;
use train::export::{ExportRequest, MAX_ACCURACY_DROP, MIN_AGREEMENT};
use train::loss::{ClassWeights, LossSettings};
use train::lr_find::LrFindSettings;
use train::mix::MixSettings;
use train::optim::{OptimConfig, OptimizerKind, ScheduleKind};
use train::quantize::{Calibration, DEFAULT_PERCENTILE};
use train::sampler::SamplerSettings;
use train::schedule::{FineTuneSettings, OneCycleSettings, ScheduleSettings};
use train::stopping::{StopSettings, TimeLimit};
use train::{ExportSettings, Hyper, Mode, TrainConfig, WeightsSource};

/// Fine-tune a ResNet image classifier on a folder of labelled images, keep the best model and
/// export it to ONNX.
///
/// DATA is ROOT/train/<class>/<images> beside ROOT/val (or valid/, test/), or ROOT/<class>/<images>
/// (a seeded, stratified split holds out --val-fraction of each class). Writes best.pt,
/// last.pt, metrics.csv, summary.json, curves.png, train_batch.png, val_predictions.png and
/// model.onnx into --out.
#[derive(Parser, Debug)]
#[command(
    name = "train",
    version,
    max_term_width = 100,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub train: TrainArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// What this machine offers training and inference: libtorch's version and location,
    /// whether libtorch_cuda is linked, the CUDA devices and cuDNN it sees, then ONNX Runtime's
    /// library, version and execution providers. Exit 0 when --device works.
    Doctor(DoctorArgs),
    /// Export a checkpoint (best.pt) to a self-describing ONNX model, verified with ONNX Runtime.
    Export(ExportArgs),
    /// Learning-rate range test: about 100 training steps from the run's starting weights at
    /// exponentially growing rates; writes lr_find.png (loss against rate) into --out and prints
    /// the suggested rate as the --lr flag to pass. Takes the training options.
    LrFind(Box<LrFindArgs>),
}

#[derive(clap::Args, Debug)]
pub struct LrFindArgs {
    /// The sweep's first learning rate.
    #[arg(long, value_name = "LR", default_value_t = LrFindSettings::default().start_lr)]
    start_lr: f64,

    /// The sweep's last learning rate.
    #[arg(long, value_name = "LR", default_value_t = LrFindSettings::default().end_lr)]
    end_lr: f64,

    /// Steps of the sweep (it stops earlier when the loss diverges).
    #[arg(long, value_name = "N", default_value_t = LrFindSettings::default().num_steps)]
    steps: usize,

    #[command(flatten)]
    pub train: TrainArgs,
}

impl LrFindArgs {
    pub fn settings(&self) -> LrFindSettings {
        LrFindSettings { start_lr: self.start_lr, end_lr: self.end_lr, num_steps: self.steps, ..Default::default() }
    }
}

/// `--auto-augment`: a policy, or `none`.
#[derive(Debug, Clone)]
struct PolicyArg(Option<Policy>);

impl std::str::FromStr for PolicyArg {
    type Err = train::autoaugment::AutoAugmentError;
    fn from_str(s: &str) -> Result<PolicyArg, Self::Err> {
        match s.trim() {
            "none" => Ok(PolicyArg(None)),
            other => other.parse().map(|p| PolicyArg(Some(p))),
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// The device that must work: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value_t = DeviceChoice::default())]
    pub device: DeviceChoice,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Checkpoint to export: best.pt or last.pt written by `train`, or a torchvision state dict
    /// (then give --arch and --classes).
    #[arg(long, value_name = "FILE", default_value_os_t = ExportRequest::default().weights)]
    weights: PathBuf,

    /// ONNX file to write.
    #[arg(long, value_name = "FILE", default_value_os_t = ExportRequest::default().out)]
    out: PathBuf,

    /// Images to verify the export on: a data folder (its validation folder when it has one)
    /// or files. Default: a random batch.
    #[arg(long, value_name = "PATH")]
    data: Option<PathBuf>,

    /// Also output softmax probabilities (`probabilities`) besides `logits`.
    #[arg(long)]
    probabilities: bool,

    /// Architecture, for a state dict without this toolkit's record (must agree with it otherwise).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(train::arch::names()))]
    arch: Option<String>,

    /// Comma-separated class names in index order, for a state dict without this toolkit's record.
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<String>>,

    #[command(flatten)]
    quantize: QuantizeArgs,
}

/// `--quantize int8` and its settings, for `train` and `train export` alike.
#[derive(clap::Args, Debug, Clone)]
struct QuantizeArgs {
    #[arg(long, value_enum, value_name = "TYPE", help = format!(
        "Also write an int8 model beside model.onnx (model.int8.onnx), calibrated on training images and kept \
         only when it loses at most {} point of validation accuracy and agrees with the float model on {}% of \
         the validation images",
        100.0 * MAX_ACCURACY_DROP,
        100.0 * MIN_AGREEMENT
    ))]
    quantize: Option<QuantizeKind>,

    /// Training images drawn (with a fixed seed) to calibrate the int8 model.
    #[arg(long, value_name = "N", default_value_t = QuantizeSettings::default().calibration_images)]
    calibration_images: usize,

    #[arg(long, value_name = "METHOD", default_value_t = QuantizeSettings::default().calibration, help = format!(
        "How activation ranges are set: auto (the better of minmax and percentile on the calibration images), \
         minmax, percentile ({DEFAULT_PERCENTILE}) or percentile:P"
    ))]
    calibration: Calibration,

    /// Keep the int8 model even when the accuracy gate refuses it.
    #[arg(long)]
    force: bool,
}

impl QuantizeArgs {
    fn settings(&self) -> Option<QuantizeSettings> {
        self.quantize.map(|kind| QuantizeSettings {
            kind,
            calibration: self.calibration,
            calibration_images: self.calibration_images,
            force: self.force,
        })
    }
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Image folder to train on [with --resume: the checkpoint's].
    #[arg(required_unless_present = "resume")]
    data: Option<PathBuf>,

    #[arg(long, help = format!("Output folder [default: {DEFAULT_OUT}; with --resume: the checkpoint's folder]"))]
    out: Option<PathBuf>,

    /// Network architecture.
    #[arg(long, default_value_t = Hyper::default().arch, value_parser = clap::builder::PossibleValuesParser::new(train::arch::names()))]
    arch: String,

    /// Initial weights: a torchvision state dict (.pth/.pt from torch.save, or .safetensors).
    /// Default: torchvision's ImageNet weights from torch's cache, downloaded when missing.
    #[arg(long, value_name = "FILE", conflicts_with = "no_pretrained")]
    weights: Option<PathBuf>,

    /// Start from random weights instead of pretrained ones.
    #[arg(long)]
    no_pretrained: bool,

    /// Train every layer, or only the new classifier on a frozen backbone.
    #[arg(long, value_enum, default_value_t = Hyper::default().mode)]
    mode: Mode,

    #[arg(long, help = format!("Number of epochs [default: {}; with --resume, the checkpoint's]", Hyper::default().epochs))]
    epochs: Option<usize>,

    /// Training batch size.
    #[arg(long, default_value_t = Hyper::default().batch_size)]
    batch_size: usize,

    /// Validation batch size (results do not depend on it; larger is faster).
    #[arg(long, default_value_t = Hyper::default().eval_batch_size)]
    eval_batch_size: usize,

    #[arg(long, value_enum, default_value_t = OptimConfig::default().optimizer)]
    optimizer: OptimizerKind,

    /// Initial learning rate.
    #[arg(long, default_value_t = OptimConfig::default().lr)]
    lr: f64,

    /// SGD momentum.
    #[arg(long, default_value_t = OptimConfig::default().momentum)]
    momentum: f64,

    /// Weight decay (L2 for SGD, decoupled for AdamW).
    #[arg(long, default_value_t = OptimConfig::default().weight_decay)]
    weight_decay: f64,

    /// Learning-rate schedule, stepped once per epoch [default: step; with --recipe strong: cosine].
    #[arg(long, value_enum)]
    scheduler: Option<ScheduleKind>,

    /// Epochs between learning-rate decays (step schedule).
    #[arg(long, default_value_t = OptimConfig::default().step_size)]
    step_size: usize,

    /// Decay factor (step schedule).
    #[arg(long, default_value_t = OptimConfig::default().gamma)]
    gamma: f64,

    /// Fraction of each class held out for validation when DATA has no validation folder.
    #[arg(long, default_value_t = Hyper::default().val_fraction)]
    val_fraction: f64,

    #[arg(long, value_name = "NAME", help = format!(
        "The validation folder's name in DATA [default: {}]", VALIDATION_DIRS.join(", else ")
    ))]
    val_dir: Option<String>,

    /// Range of the random crops' area, as a fraction of the image (RandomResizedCrop's scale).
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = <[f64; 2]>::from(Augment::default().scale))]
    crop_scale: Vec<f64>,

    /// Range of the random crops' aspect ratio, width/height (RandomResizedCrop's ratio).
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = <[f64; 2]>::from(Augment::default().ratio))]
    crop_ratio: Vec<f64>,

    /// No random horizontal flips (for digits, text, anything with a handedness).
    #[arg(long)]
    no_flip: bool,

    /// A preset of the options below: tutorial (the PyTorch tutorial's recipe) or strong
    /// (trivialaugment, --random-erasing 0.25, --label-smoothing 0.1, --mixup 0.2, --cutmix 1,
    /// --ema 0.9998, --warmup-epochs 1, --scheduler cosine). Options given override it.
    #[arg(long, value_enum, default_value_t = Recipe::default())]
    recipe: Recipe,

    /// Train at S×S pixels: random crops resized to S; validation and the exported model
    /// resize to round(256·S/224) and crop S. Smaller is much faster on CPUs.
    #[arg(long, value_name = "S", default_value_t = DEFAULT_IMAGE_SIZE)]
    image_size: u32,

    /// Automatic augmentation as torchvision's: trivialaugment (TrivialAugmentWide),
    /// randaugment, randaugment:N:M, or none [default: none; strong: trivialaugment].
    #[arg(long, value_name = "POLICY")]
    auto_augment: Option<PolicyArg>,

    /// ColorJitter strengths B[,C,S,H] (one number: brightness, contrast and saturation).
    #[arg(long, value_name = "B[,C,S,H]")]
    color_jitter: Option<ColorJitter>,

    /// Probability of RandomErasing of each training image [default: 0; strong: 0.25].
    #[arg(long, value_name = "P")]
    random_erasing: Option<f64>,

    /// Mixup's alpha, 0 for none (timm's --mixup) [default: 0; strong: 0.2].
    #[arg(long, value_name = "ALPHA")]
    mixup: Option<f64>,

    /// CutMix's alpha, 0 for none (timm's --cutmix) [default: 0; strong: 1].
    #[arg(long, value_name = "ALPHA")]
    cutmix: Option<f64>,

    /// Probability of mixing a batch (timm's --mixup-prob).
    #[arg(long, value_name = "P", default_value_t = MixSettings::default().prob)]
    mix_prob: f64,

    /// With Mixup and CutMix both on, the probability of CutMix for a batch.
    #[arg(long, value_name = "P", default_value_t = MixSettings::default().switch_prob)]
    mix_switch_prob: f64,

    /// Label smoothing of the loss, as CrossEntropyLoss(label_smoothing=E) [default: 0; strong: 0.1].
    #[arg(long, value_name = "E")]
    label_smoothing: Option<f64>,

    /// Class weights of the loss: none, auto (inverse class frequency) or W1,W2,...
    #[arg(long, value_name = "WEIGHTS", default_value = "none")]
    class_weights: ClassWeights,

    /// Draw each epoch's images with replacement in inverse class frequency
    /// (WeightedRandomSampler), so that classes are seen equally often.
    #[arg(long)]
    balanced_sampler: bool,

    /// Keep an exponential moving average of the weights with this decay (timm's --model-ema,
    /// with warm-up); evaluated every epoch, best.pt keeps the better of the two. 0: none
    /// [default: 0; strong: 0.9998].
    #[arg(long, value_name = "DECAY")]
    ema: Option<f64>,

    /// Epochs of linear learning-rate warm-up, per step [default: 0; strong: 1].
    #[arg(long, value_name = "EPOCHS")]
    warmup_epochs: Option<f64>,

    /// The learning rate warm-up starts from.
    #[arg(long, value_name = "LR", default_value_t = ScheduleSettings::default().warmup_lr_init)]
    warmup_lr: f64,

    /// A one-cycle schedule (PyTorch's OneCycleLR, peaking at --lr) instead of --scheduler.
    #[arg(long)]
    one_cycle: bool,

    /// Epochs at the start in which only the classifier trains (fastai's fine_tune).
    #[arg(long, value_name = "N", default_value_t = FineTuneSettings::default().freeze_epochs)]
    freeze_epochs: usize,

    /// Learning-rate factor per layer group from the classifier down (layer4 lr·D, ... stem lr·D⁵).
    #[arg(long, value_name = "D", default_value_t = FineTuneSettings::default().layer_lr_decay)]
    layer_lr_decay: f64,

    /// Stop after N epochs in a row without a better validation accuracy, and export the best model.
    #[arg(long, value_name = "N")]
    patience: Option<usize>,

    /// With --patience: the improvement in accuracy that counts as better.
    #[arg(long, value_name = "DELTA", default_value_t = StopSettings::default().min_delta)]
    min_delta: f64,

    /// Stop before this much training time (90s, 30m, 2h, 1h30m) and export the best model.
    #[arg(long, value_name = "DURATION")]
    time_limit: Option<TimeLimit>,

    /// Images listed in top_losses.csv and top_losses.png after training (0: no report).
    #[arg(long, value_name = "K", default_value_t = CleaningSettings::default().top_k)]
    top_losses: usize,

    /// Composite images with transparency onto this colour (white, black or #RRGGBB) instead
    /// of dropping their alpha as PIL's convert("RGB") does; the exported model carries it, so
    /// infer, infer serve and int8 calibration composite alike.
    #[arg(long, value_name = "COLOUR")]
    background: Option<infer::Background>,

    /// Leave out image files that end before their image data does (JPEGs cut short); by
    /// default they are decoded as far as they go, as libjpeg does, and kept.
    #[arg(long)]
    skip_incomplete: bool,

    /// Seed for initialisation, shuffling, augmentation and the validation split.
    #[arg(long, default_value_t = Hyper::default().seed)]
    seed: u64,

    /// auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value_t = TrainConfig::default().device)]
    device: DeviceChoice,

    /// Mixed precision: float16 autocast with loss scaling on CUDA; bfloat16 autocast on the
    /// CPU (fast only where the CPU has AVX512-BF16 or AMX), float32 master weights.
    #[arg(long)]
    amp: bool,

    /// The type mixed precision computes in: float16 (with loss scaling) or bfloat16 (GPUs from
    /// Ampere on; no loss scaling needed).
    #[arg(long, value_enum, default_value_t = AmpDtype::default(), requires = "amp")]
    amp_dtype: AmpDtype,

    /// Convolution kernels and batches in the channels-last (NHWC) memory layout, which
    /// tensor-core convolutions on GPUs prefer, mostly with --amp.
    #[arg(long)]
    channels_last: bool,

    /// Continue an interrupted run from its last.pt, with that run's settings, data folder and
    /// output folder (unless DATA or --out are given).
    #[arg(long, value_name = "LAST_PT")]
    resume: Option<PathBuf>,

    /// Threads decoding and augmenting images [default: number of CPUs].
    #[arg(long)]
    workers: Option<usize>,

    /// libtorch compute threads [default: libtorch's choice].
    #[arg(long)]
    threads: Option<usize>,

    /// Batches prepared ahead of training.
    #[arg(long, default_value_t = TrainConfig::default().prefetch)]
    prefetch: usize,

    /// Batch norm with the statistics of all ranks' batches together, in a distributed run
    /// (torch.nn.SyncBatchNorm); kept by --resume.
    #[arg(long)]
    sync_bn: bool,

    /// Collectives backend of a distributed run: auto (nccl on GPUs, gloo on the CPU), nccl
    /// or gloo. A run is distributed when the launcher sets RANK and WORLD_SIZE (torchrun,
    /// PyTorchJob, srun; see docs/train.md).
    #[arg(long, value_enum, value_name = "BACKEND", default_value_t = BackendChoice::default())]
    dist_backend: BackendChoice,

    /// Seconds a distributed run waits for the other ranks (joining, and each collective)
    /// before failing.
    #[arg(long, value_name = "SECONDS", default_value_t = ddp::DEFAULT_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    dist_timeout: u64,

    /// Do not write a TensorBoard log (event files in the output folder; watch it with
    /// `tensorboard --logdir OUT`).
    #[arg(long)]
    no_tensorboard: bool,

    /// Batches between two points of TensorBoard's training-loss curve.
    #[arg(long, value_name = "N", default_value_t = TrainConfig::default().log_every,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    log_every: usize,

    /// Do not export best.pt to model.onnx at the end.
    #[arg(long)]
    no_export: bool,

    /// Export with a softmax `probabilities` output besides `logits`.
    #[arg(long)]
    probabilities: bool,

    #[command(flatten)]
    quantize: QuantizeArgs,
}

impl TrainArgs {
    /// The library's configuration for these arguments.
    pub fn config(&self) -> TrainConfig {
        let defaults = TrainConfig::default();
        let epochs = self.epochs.unwrap_or(defaults.hyper.epochs);
        let weights = match (&self.weights, self.no_pretrained) {
            (Some(p), _) => WeightsSource::File(p.clone()),
            (None, true) => WeightsSource::Scratch,
            (None, false) => WeightsSource::Pretrained,
        };
        let recipe = self.recipe.options();
        let optim = OptimConfig {
            optimizer: self.optimizer,
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            schedule: self.scheduler.unwrap_or(recipe.schedule),
            step_size: self.step_size,
            gamma: self.gamma,
            epochs,
            ..defaults.hyper.optim
        };
        let pair = |v: &[f64]| (v[0], v[1]);
        TrainConfig {
            data: self.data.clone(),
            out: self.out.clone(),
            hyper: Hyper {
                arch: self.arch.clone(),
                mode: self.mode,
                epochs,
                batch_size: self.batch_size,
                eval_batch_size: self.eval_batch_size,
                optim,
                val_fraction: self.val_fraction,
                val_dir: self.val_dir.clone(),
                skip_incomplete: self.skip_incomplete,
                background: self.background,
                augment: Augment { scale: pair(&self.crop_scale), ratio: pair(&self.crop_ratio), flip: !self.no_flip },
                seed: self.seed,
                amp: self.amp,
                amp_dtype: self.amp_dtype,
                channels_last: self.channels_last,
                sync_bn: self.sync_bn,
                recipe: self.recipe,
                image_size: self.image_size,
                pixel_augment: PixelAugment {
                    policy: self.auto_augment.clone().map_or(recipe.policy, |p| p.0),
                    color_jitter: self.color_jitter,
                    random_erasing: Recipe::erasing(self.random_erasing.unwrap_or(recipe.random_erasing)),
                },
                mix: MixSettings {
                    mixup_alpha: self.mixup.unwrap_or(recipe.mixup),
                    cutmix_alpha: self.cutmix.unwrap_or(recipe.cutmix),
                    prob: self.mix_prob,
                    switch_prob: self.mix_switch_prob,
                    ..MixSettings::default()
                },
                loss: LossSettings {
                    label_smoothing: self.label_smoothing.unwrap_or(recipe.label_smoothing),
                    class_weights: self.class_weights.clone(),
                },
                ema: self
                    .ema
                    .or(recipe.ema)
                    .filter(|d| *d != 0.0)
                    .map(|decay| EmaSettings { decay, ..Default::default() }),
                schedule: ScheduleSettings {
                    // One-cycle warms up itself: a recipe's warm-up gives way to it.
                    warmup_epochs: self.warmup_epochs.unwrap_or(if self.one_cycle {
                        0.0
                    } else {
                        recipe.warmup_epochs
                    }),
                    warmup_lr_init: self.warmup_lr,
                    one_cycle: self.one_cycle.then(OneCycleSettings::default),
                },
                finetune: FineTuneSettings { freeze_epochs: self.freeze_epochs, layer_lr_decay: self.layer_lr_decay },
                sampler: SamplerSettings { balanced: self.balanced_sampler, ..Default::default() },
                stopping: StopSettings {
                    patience: self.patience,
                    min_delta: self.min_delta,
                    time_limit: self.time_limit,
                },
                cleaning: CleaningSettings { top_k: self.top_losses, ..Default::default() },
            },
            weights,
            resume: self.resume.clone(),
            epochs_override: if self.resume.is_some() { self.epochs } else { None },
            device: self.device,
            workers: self.workers.unwrap_or(defaults.workers),
            threads: self.threads,
            prefetch: self.prefetch,
            export: (!self.no_export)
                .then(|| ExportSettings { probabilities: self.probabilities, quantize: self.quantize.settings() }),
            distributed: None,
            tensorboard: !self.no_tensorboard,
            log_every: self.log_every,
        }
    }

    /// How to join the job the launcher's variables (`env`) describe.
    pub fn dist_config(&self, env: Env) -> DistConfig {
        DistConfig { env, backend: self.dist_backend, timeout: Duration::from_secs(self.dist_timeout) }
    }
}

impl ExportArgs {
    /// The library's request for these arguments.
    pub fn request(&self) -> ExportRequest {
        ExportRequest {
            weights: self.weights.clone(),
            out: self.out.clone(),
            data: self.data.clone(),
            probabilities: self.probabilities,
            arch: self.arch.clone(),
            classes: self.classes.clone(),
            quantize: self.quantize.settings(),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// The arguments' defaults are the library's, and the help states its thresholds.
    #[test]
    fn defaults_and_thresholds_come_from_the_library() {
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        for text in [
            "loses at most 1 point of validation accuracy and agrees with the float model on 98% of",
            "percentile (99.999) or percentile:P",
            "Number of epochs [default: 25; with --resume, the checkpoint's]",
            "Output folder [default: models;",
            "[default: val, else valid, else test]",
            "[default: 0.08 1]",
            "[default: 300]",
            "feature-extract",
            "adamw",
            "bfloat16",
        ] {
            assert!(help.contains(text), "'{text}' not in:\n{help}");
        }
        let cli = Cli::try_parse_from(["train", "data", "--quantize", "int8"]).unwrap();
        let (config, defaults) = (cli.train.config(), TrainConfig::default());
        assert_eq!(config.hyper, defaults.hyper);
        assert_eq!(config.weights, defaults.weights);
        assert_eq!(
            (config.device, config.workers, config.prefetch),
            (defaults.device, defaults.workers, defaults.prefetch)
        );
        let q = config.export.and_then(|e| e.quantize).unwrap();
        assert_eq!(
            (q.calibration, q.calibration_images),
            (Calibration::Auto, QuantizeSettings::default().calibration_images)
        );
        let env = Env {
            rank: 1,
            world_size: 2,
            local_rank: 1,
            master_addr: "node0".into(),
            master_port: 29500,
            agent_store: true,
            restart_count: 0,
        };
        assert_eq!(cli.train.dist_config(env.clone()), DistConfig::new(env));
        assert!(help.contains("--dist-timeout <SECONDS>") && help.contains("[default: 1800]"), "{help}");
        let Some(Command::Export(export)) = Cli::try_parse_from(["train", "export"]).unwrap().command else {
            panic!("export expected");
        };
        let (request, defaults) = (export.request(), ExportRequest::default());
        assert_eq!((request.weights, request.out), (defaults.weights, defaults.out));
    }
}
