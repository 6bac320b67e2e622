//! `train`: command-line parsing and console output over the `train` library. The arguments
//! are mapped onto the library's types here ([`TrainArgs::config`]); the work is the library's.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use train::amp::AmpDtype;
use train::augment::Augment;
use train::device::DeviceChoice;
use train::export::{ExportOptions, ExportReport};
use train::optim::{OptimConfig, OptimizerKind, ScheduleKind};
use train::quantize::Calibration;
use train::report::{EpochRecord, PhaseStats};
use train::trainer::{ExportSettings, QuantizeSettings};
use train::{Hyper, Mode, Observer, StopFlag, TrainConfig, TrainError, WeightsSource};

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
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// What this machine offers training and inference: libtorch's version and location,
    /// whether libtorch_cuda is linked, the CUDA devices and cuDNN it sees, then ONNX Runtime's
    /// library, version and execution providers. Exit 0 when --device works.
    Doctor(DoctorArgs),
    /// Export a checkpoint (best.pt) to a self-describing ONNX model, verified with ONNX Runtime.
    Export(ExportArgs),
}

#[derive(clap::Args, Debug)]
struct DoctorArgs {
    /// The device that must work: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: train::device::DeviceChoice,
}

#[derive(clap::Args, Debug)]
struct ExportArgs {
    /// Checkpoint to export: best.pt or last.pt written by `train`, or a torchvision state dict
    /// (then give --arch and --classes).
    #[arg(long, value_name = "FILE", default_value = "models/best.pt")]
    weights: PathBuf,

    /// ONNX file to write.
    #[arg(long, value_name = "FILE", default_value = "models/model.onnx")]
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
    /// Also write an int8 model beside model.onnx (model.int8.onnx), calibrated on training
    /// images and kept only when it loses at most 1 point of validation accuracy and agrees
    /// with the float model on 98% of the validation images.
    #[arg(long, value_enum, value_name = "TYPE")]
    quantize: Option<QuantizeArg>,

    /// Training images drawn (with a fixed seed) to calibrate the int8 model.
    #[arg(long, value_name = "N", default_value_t = 300)]
    calibration_images: usize,

    /// How activation ranges are set: auto (the better of minmax and percentile on the
    /// calibration images), minmax, percentile (99.999) or percentile:P.
    #[arg(long, value_name = "METHOD", default_value = "auto")]
    calibration: Calibration,

    /// Keep the int8 model even when the accuracy gate refuses it.
    #[arg(long)]
    force: bool,
}

/// `--quantize`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum QuantizeArg {
    /// Per-channel int8 weights, uint8 activations (ONNX QDQ), for CPUs with VNNI.
    Int8,
}

impl QuantizeArgs {
    fn settings(&self) -> Option<QuantizeSettings> {
        self.quantize.map(|QuantizeArg::Int8| QuantizeSettings {
            calibration: self.calibration,
            calibration_images: self.calibration_images,
            force: self.force,
        })
    }
}

/// `--amp-dtype`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum AmpDtypeArg {
    Float16,
    Bfloat16,
}

/// `--mode`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    /// All layers train, starting from the pretrained weights.
    Finetune,
    /// Only the new classifier trains; the backbone is a fixed feature extractor.
    FeatureExtract,
}

/// `--optimizer`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum OptimizerArg {
    /// SGD with momentum (`torch.optim.SGD`).
    Sgd,
    /// Adam with decoupled weight decay (`torch.optim.AdamW`).
    Adamw,
}

/// `--scheduler`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum ScheduleArg {
    /// Multiply the learning rate by --gamma every --step-size epochs (`StepLR`).
    Step,
    /// Cosine annealing from the initial rate to zero over the run (`CosineAnnealingLR`).
    Cosine,
    /// Keep the learning rate fixed.
    Constant,
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// Image folder to train on [with --resume: the checkpoint's].
    #[arg(required_unless_present = "resume")]
    data: Option<PathBuf>,

    /// Output folder [default: models; with --resume: the checkpoint's folder].
    #[arg(long)]
    out: Option<PathBuf>,

    /// Network architecture.
    #[arg(long, default_value = "resnet18", value_parser = clap::builder::PossibleValuesParser::new(train::arch::names()))]
    arch: String,

    /// Initial weights: a torchvision state dict (.pth/.pt from torch.save, or .safetensors).
    /// Default: torchvision's ImageNet weights from torch's cache, downloaded when missing.
    #[arg(long, value_name = "FILE", conflicts_with = "no_pretrained")]
    weights: Option<PathBuf>,

    /// Start from random weights instead of pretrained ones.
    #[arg(long)]
    no_pretrained: bool,

    /// Train every layer, or only the new classifier on a frozen backbone.
    #[arg(long, value_enum, default_value_t = ModeArg::Finetune)]
    mode: ModeArg,

    /// Number of epochs [default: 25; with --resume, the checkpoint's].
    #[arg(long)]
    epochs: Option<usize>,

    /// Training batch size.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,

    /// Validation batch size (results do not depend on it; larger is faster).
    #[arg(long, default_value_t = 32)]
    eval_batch_size: usize,

    #[arg(long, value_enum, default_value_t = OptimizerArg::Sgd)]
    optimizer: OptimizerArg,

    /// Initial learning rate.
    #[arg(long, default_value_t = 0.001)]
    lr: f64,

    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,

    /// Weight decay (L2 for SGD, decoupled for AdamW).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,

    /// Learning-rate schedule, stepped once per epoch.
    #[arg(long, value_enum, default_value_t = ScheduleArg::Step)]
    scheduler: ScheduleArg,

    /// Epochs between learning-rate decays (step schedule).
    #[arg(long, default_value_t = 7)]
    step_size: usize,

    /// Decay factor (step schedule).
    #[arg(long, default_value_t = 0.1)]
    gamma: f64,

    /// Fraction of each class held out for validation when DATA has no validation folder.
    #[arg(long, default_value_t = 0.2)]
    val_fraction: f64,

    /// The validation folder's name in DATA [default: val, else valid, else test].
    #[arg(long, value_name = "NAME")]
    val_dir: Option<String>,

    /// Range of the random crops' area, as a fraction of the image (RandomResizedCrop's scale).
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [0.08, 1.0])]
    crop_scale: Vec<f64>,

    /// Range of the random crops' aspect ratio, width/height (RandomResizedCrop's ratio).
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [3.0 / 4.0, 4.0 / 3.0])]
    crop_ratio: Vec<f64>,

    /// No random horizontal flips (for digits, text, anything with a handedness).
    #[arg(long)]
    no_flip: bool,

    /// Seed for initialisation, shuffling, augmentation and the validation split.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,

    /// Mixed precision (float16 autocast with loss scaling); CUDA only.
    #[arg(long)]
    amp: bool,

    /// The type mixed precision computes in: float16 (with loss scaling) or bfloat16 (GPUs from
    /// Ampere on; no loss scaling needed).
    #[arg(long, value_enum, default_value = "float16", requires = "amp")]
    amp_dtype: AmpDtypeArg,

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
    #[arg(long, default_value_t = 4)]
    prefetch: usize,

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
    fn config(&self) -> TrainConfig {
        let epochs = self.epochs.unwrap_or(25);
        let weights = match (&self.weights, self.no_pretrained) {
            (Some(p), _) => WeightsSource::File(p.clone()),
            (None, true) => WeightsSource::Scratch,
            (None, false) => WeightsSource::Pretrained,
        };
        let optim = OptimConfig {
            optimizer: match self.optimizer {
                OptimizerArg::Sgd => OptimizerKind::Sgd,
                OptimizerArg::Adamw => OptimizerKind::Adamw,
            },
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            betas: (0.9, 0.999),
            eps: 1e-8,
            schedule: match self.scheduler {
                ScheduleArg::Step => ScheduleKind::Step,
                ScheduleArg::Cosine => ScheduleKind::Cosine,
                ScheduleArg::Constant => ScheduleKind::Constant,
            },
            step_size: self.step_size,
            gamma: self.gamma,
            epochs,
        };
        let pair = |v: &[f64]| (v[0], v[1]);
        TrainConfig {
            data: self.data.clone(),
            out: self.out.clone(),
            hyper: Hyper {
                arch: self.arch.clone(),
                mode: match self.mode {
                    ModeArg::Finetune => Mode::Finetune,
                    ModeArg::FeatureExtract => Mode::FeatureExtract,
                },
                epochs,
                batch_size: self.batch_size,
                eval_batch_size: self.eval_batch_size,
                optim,
                val_fraction: self.val_fraction,
                val_dir: self.val_dir.clone(),
                augment: Augment { scale: pair(&self.crop_scale), ratio: pair(&self.crop_ratio), flip: !self.no_flip },
                seed: self.seed,
                amp: self.amp,
                amp_dtype: match self.amp_dtype {
                    AmpDtypeArg::Float16 => AmpDtype::Float16,
                    AmpDtypeArg::Bfloat16 => AmpDtype::Bfloat16,
                },
                channels_last: self.channels_last,
            },
            weights,
            resume: self.resume.clone(),
            epochs_override: if self.resume.is_some() { self.epochs } else { None },
            device: self.device,
            workers: self.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            threads: self.threads,
            prefetch: self.prefetch,
            export: (!self.no_export)
                .then(|| ExportSettings { probabilities: self.probabilities, quantize: self.quantize.settings() }),
        }
    }
}

/// Console output: progress bars on a terminal, plain lines otherwise.
struct Console {
    tty: bool,
    bar: Option<ProgressBar>,
    label: String,
    phase_images: usize,
    /// When the phase started, and when the last plain line was printed.
    phase_started: Instant,
    last_line: Instant,
    downloading: bool,
}

impl Console {
    fn new() -> Console {
        Console {
            tty: std::io::stderr().is_terminal(),
            bar: None,
            label: String::new(),
            phase_images: 0,
            phase_started: Instant::now(),
            last_line: Instant::now(),
            downloading: false,
        }
    }

    fn print(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }
}

fn stats(s: &PhaseStats) -> String {
    format!("loss {:.4} acc {:.4} ({:.1} s, {:.1} img/s)", s.loss, s.acc, s.seconds, s.images_per_sec())
}

/// Seconds as `1h 02m`, `3m 05s` or `42s`.
fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m {sec}s"),
        (h, m, _) => format!("{h}h {m:02}m"),
    }
}

/// A plain progress line: the rate is over the whole phase so far (every image since the
/// phase started, over the time since it started), and the ETA follows from it.
fn progress_line(label: &str, images: usize, total: usize, loss: f64, acc: f64, elapsed: Duration) -> String {
    let rate = images as f64 / elapsed.as_secs_f64().max(1e-9);
    let eta = total.saturating_sub(images) as f64 / rate.max(1e-9);
    format!("{label} {images}/{total} loss {loss:.4} acc {acc:.4} {rate:.1} img/s eta {}", duration(eta))
}

impl Observer for Console {
    fn info(&mut self, msg: &str) {
        self.print(msg);
    }

    fn warn(&mut self, msg: &str) {
        self.print(&format!("warning: {msg}"));
    }

    fn download_progress(&mut self, done: u64, total: Option<u64>) {
        if !self.tty {
            // Plain output: one line when the download starts, one when it ends.
            if !self.downloading {
                self.downloading = true;
                eprintln!("downloading pretrained weights ({:.0} MB)", total.unwrap_or(0) as f64 / 1e6);
            }
            if total == Some(done) {
                self.downloading = false;
                eprintln!("downloaded {:.0} MB", done as f64 / 1e6);
            }
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(total.unwrap_or(0));
            bar.set_style(
                ProgressStyle::with_template("downloading weights [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar
        });
        bar.set_position(done);
        if total == Some(done) {
            bar.finish_and_clear();
            self.bar = None;
        }
    }

    fn phase_start(&mut self, epoch: usize, epochs: usize, phase: &'static str, images: usize) {
        self.label = format!("epoch {epoch}/{epochs} {phase:<5}");
        self.phase_images = images;
        self.phase_started = Instant::now();
        self.last_line = Instant::now();
        if self.tty {
            let bar = ProgressBar::new(images as u64);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:25}] {pos}/{len} {per_sec} eta {eta} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(self.label.clone());
            self.bar = Some(bar);
        }
    }

    fn batch_done(&mut self, images: usize, loss: f64, acc: f64) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(images as u64);
                bar.set_message(format!("loss {loss:.4} acc {acc:.4}"));
            }
            // Not a terminal: a line every 30 s at most, for long phases, with the rate since
            // the phase started.
            None if self.last_line.elapsed() > Duration::from_secs(30) => {
                let line =
                    progress_line(&self.label, images, self.phase_images, loss, acc, self.phase_started.elapsed());
                eprintln!("{line}");
                self.last_line = Instant::now();
            }
            None => {}
        }
    }

    fn phase_end(&mut self, _stats: &PhaseStats) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn epoch_end(&mut self, r: &EpochRecord, epochs: usize, best: bool) {
        self.print(&format!(
            "epoch {}/{epochs}  train {}  val {}  lr {:.1e}{}",
            r.epoch,
            stats(&r.train),
            stats(&r.val),
            r.lr,
            if best { "  * best" } else { "" }
        ));
    }
}

/// Keeps freed memory for reuse instead of returning it to the system: libtorch allocates and
/// frees every activation of every step, and glibc would otherwise map fresh, zeroed pages
/// for most of them (a million page faults per epoch on the seed's data).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    infer::guard::install_cli_panic_hook();
    let cli = Cli::parse();
    let stop = Arc::new(StopFlag::default());
    let handler_stop = Arc::clone(&stop);
    let _ = ctrlc::set_handler(move || match handler_stop.request() {
        1 => eprintln!("\ninterrupt: finishing this epoch, then saving last.pt (Ctrl-C again to stop now)"),
        2 => eprintln!("\ninterrupt: stopping now; the files of the last finished epoch are kept"),
        _ => std::process::exit(130),
    });
    let mut console = Console::new();
    let result = match &cli.command {
        Some(Command::Export(args)) => export(args),
        Some(Command::Doctor(args)) => Ok(doctor(args)),
        None => run(&cli.train, &mut console, &stop),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if let Some(bar) = console.bar.take() {
                bar.finish_and_clear();
            }
            if matches!(e.downcast_ref::<TrainError>(), Some(TrainError::Interrupted)) {
                eprintln!("interrupted: resume with --resume {}", last_pt(&cli.train).display());
                return ExitCode::from(130);
            }
            // The first line of the chain: libtorch messages can carry C++ backtraces.
            eprintln!("error: {}", infer::first_line(format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn doctor(args: &DoctorArgs) -> ExitCode {
    let (mut lines, works) = train::doctor::libtorch(args.device);
    let ort = infer::doctor::report(None);
    lines.extend(ort.lines.into_iter().filter(|(label, _)| label != "infer"));
    print!("{}", infer::doctor::Report::render(&lines));
    match works {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where this run's `last.pt` is.
fn last_pt(args: &TrainArgs) -> PathBuf {
    let out = match (&args.out, &args.resume) {
        (Some(o), _) => o.clone(),
        (None, Some(r)) => r.parent().map(|p| p.to_path_buf()).unwrap_or_default(),
        (None, None) => PathBuf::from(train::trainer::DEFAULT_OUT),
    };
    out.join(train::trainer::LAST)
}

fn export(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let images = match &args.data {
        Some(d) if d.is_dir() => train::dataset::validation_images(d),
        Some(f) => vec![f.clone()],
        None => Vec::new(),
    };
    let quantize = match (args.quantize.settings(), &args.data) {
        (None, _) => None,
        (Some(_), None) => {
            anyhow::bail!("--quantize int8 needs --data: a data folder for calibration and the accuracy gate")
        }
        (Some(q), Some(d)) => {
            let opts = train::dataset::ScanOptions { val_fraction: 0.2, seed: 0, val_dir: None, check: &|_| Ok(()) };
            let ds = train::dataset::scan(d, &opts).context("export failed")?;
            Some(train::export::QuantizeOptions::from_dataset(&ds, q.calibration_images, q.calibration, q.force))
        }
    };
    let opts = ExportOptions {
        probabilities: args.probabilities,
        images,
        arch: args.arch.clone(),
        classes: args.classes.clone(),
        quantize,
    };
    let result = train::export::export_checkpoint(&args.weights, &args.out, &opts);
    if let Err(train::error::ExportError::GateRefused { quantization, .. }) = &result {
        print_quantization(quantization, false);
    }
    print_export(&result.context("export failed")?);
    Ok(ExitCode::SUCCESS)
}

/// The int8 model's gate figures, one line.
fn print_quantization(q: &infer::Quantization, passed: bool) {
    eprintln!(
        "int8 {}: validation top-1 accuracy fp32 {:.4}, int8 {:.4}, agreement {:.2}% ({} images); calibration {} on {} images",
        if passed { "gate passed" } else { "gate refused" },
        q.fp32_accuracy,
        q.int8_accuracy,
        100.0 * q.top1_agreement,
        q.validation_images,
        q.calibration,
        q.calibration_images
    );
}

fn print_export(r: &ExportReport) {
    eprintln!(
        "exported {} ({:.1} MB, ONNX opset {}); verified with ONNX Runtime ({}) on {} {}: max |logit difference| vs libtorch {:.1e}, same top-1",
        r.path.display(),
        r.bytes as f64 / 1e6,
        train::export::OPSET,
        r.provider,
        r.images,
        if r.real_images { "validation images" } else { "random inputs" },
        r.max_abs_diff
    );
    if let Some(q) = &r.int8 {
        print_quantization(&q.quantization, q.passed);
        let note = if q.passed { "" } else { " (kept by --force)" };
        eprintln!("exported {} ({:.1} MB){note}", q.path.display(), q.bytes as f64 / 1e6);
    }
}

fn run(args: &TrainArgs, console: &mut Console, stop: &StopFlag) -> anyhow::Result<ExitCode> {
    let summary = train::run(&args.config(), console, stop).context("training failed")?;
    let total = if summary.total_seconds > summary.process_seconds + 1.0 {
        format!(" ({} over all runs)", duration(summary.total_seconds))
    } else {
        String::new()
    };
    // The seed tutorial's line, for this process; the whole training's time when resumed.
    let secs = summary.process_seconds.round() as u64;
    eprintln!("Training complete in {}m {}s{total}", secs / 60, secs % 60);
    if let Some(best) = summary.best {
        eprintln!("Best val Acc: {:.4} (epoch {})", best.val_acc, best.epoch);
    }
    if !summary.skipped_files.is_empty() {
        eprintln!("{} unreadable file(s) skipped (listed in summary.json)", summary.skipped_files.len());
    }
    if let Some(report) = &summary.export {
        print_export(report);
    }
    eprintln!("outputs in {}", summary.out.display());
    if summary.interrupted {
        eprintln!(
            "stopped early after {} epoch(s): resume with --resume {}",
            summary.epochs_completed,
            summary.out.join(train::trainer::LAST).display()
        );
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_report_the_phase_rate() {
        // 480 of 960 images after 30 s: 16 img/s whatever the time since the previous line.
        let line = progress_line("epoch 1/2 train", 480, 960, 0.5, 0.75, Duration::from_secs(30));
        assert_eq!(line, "epoch 1/2 train 480/960 loss 0.5000 acc 0.7500 16.0 img/s eta 30s");
        let later = progress_line("epoch 1/2 train", 960, 960, 0.5, 0.75, Duration::from_secs(60));
        assert!(later.contains(" 16.0 img/s eta 0s"), "{later}");
        assert_eq!(duration(631.0), "10m 31s");
        assert_eq!(duration(3725.0), "1h 02m");
    }
}
