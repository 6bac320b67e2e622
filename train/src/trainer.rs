//! The training run: data, model, weights, then per epoch a training phase and a validation
//! phase, keeping the best validation accuracy's weights — the seed's `train_model`, plus
//! checkpoints, resumption, metrics and pictures.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use infer::{decode_file, DecodeLimits, PreprocessConfig};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::arch::{self, Arch};
use crate::checkpoint::{self, ModelInfo};
use crate::dataset::{self, Dataset, Sample, ScanOptions};
use crate::device::{self, DeviceChoice};
use crate::error::{CheckpointError, TrainError};
use crate::loader::{Batch, Loader, Phase};
use crate::model::ResNet;
use crate::optim::{OptimConfig, Optimizer};
use crate::plot;
use crate::report::{self, Best, EpochRecord, PhaseStats, Summary};
use crate::weights;

/// Which layers learn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// All layers train, starting from the pretrained weights.
    Finetune,
    /// Only the new classifier trains; the backbone is a fixed feature extractor.
    FeatureExtract,
}

/// Where the initial weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsSource {
    /// torchvision's ImageNet weights, from torch's cache or downloaded.
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
    pub seed: u64,
    pub amp: bool,
}

/// A training run's settings.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub data: PathBuf,
    pub out: PathBuf,
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

/// The state that `--resume` restores.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunState {
    hyper: Hyper,
    classes: Vec<String>,
    epochs_done: usize,
    best: Option<Best>,
    history: Vec<EpochRecord>,
    elapsed_seconds: f64,
    weights: String,
}

/// Output file names inside `--out`.
pub const BEST: &str = "best.pt";
pub const LAST: &str = "last.pt";
pub const METRICS: &str = "metrics.csv";
pub const SUMMARY: &str = "summary.json";
pub const CURVES: &str = "curves.png";
pub const TRAIN_BATCH: &str = "train_batch.png";
/// Written by the binary's export step after training.
pub const MODEL_ONNX: &str = "model.onnx";
/// Every file a run writes into `--out`.
pub const OUTPUTS: [&str; 7] = [BEST, LAST, METRICS, SUMMARY, CURVES, TRAIN_BATCH, MODEL_ONNX];

/// Dynamic loss scaling for float16 autocast (PyTorch's `GradScaler` rule).
struct GradScaler {
    scale: f64,
    good_steps: usize,
}

impl GradScaler {
    const GROWTH_INTERVAL: usize = 2000;

    /// Unscales the gradients; steps unless one is not finite; adapts the scale.
    fn step(&mut self, opt: &mut Optimizer, grads: Vec<Tensor>, lr: f64) -> Result<(), tch::TchError> {
        let finite = tch::no_grad(|| -> Result<bool, tch::TchError> {
            let mut bad = Vec::with_capacity(grads.len());
            for g in grads.iter().filter(|g| g.defined()) {
                let _ = g.shallow_clone().f_mul_scalar_(1.0 / self.scale)?;
                bad.push(g.f_isfinite()?.f_logical_not()?.f_any()?);
            }
            Ok(bad.is_empty() || Tensor::f_stack(&bad, 0)?.f_any()?.int64_value(&[]) == 0)
        })?;
        if finite {
            opt.step(grads, lr)?;
            self.good_steps += 1;
            if self.good_steps == Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale *= 0.5;
            self.good_steps = 0;
        }
        Ok(())
    }
}

/// Loads a weights file into the model, replacing the classifier when its class count differs.
fn load_weights(model: &ResNet, path: &Path, obs: &mut dyn Observer) -> Result<String, TrainError> {
    let state = weights::read_state_dict(path)?;
    let replaced = model.load_state(&state, true)?;
    if !replaced.is_empty() {
        let old = state.get("fc.weight").map(|t| t.size()[0]).unwrap_or(0);
        obs.info(&format!(
            "weights: {} ({old}-class head replaced by a new {}-class one)",
            path.display(),
            model.num_classes
        ));
    } else {
        obs.info(&format!("weights: {}", path.display()));
    }
    Ok(path.display().to_string())
}

struct PhaseRun<'a> {
    model: &'a ResNet,
    loader: &'a Arc<Loader>,
    device: Device,
    amp: bool,
    crop: i64,
    stop: &'a StopFlag,
}

impl PhaseRun<'_> {
    fn to_tensors(&self, batch: &Batch) -> (Tensor, Tensor) {
        let n = batch.labels.len() as i64;
        let x = Tensor::from_slice(&batch.images).view([n, 3, self.crop, self.crop]).to_device(self.device);
        let y = Tensor::from_slice(&batch.labels).to_device(self.device);
        (x, y)
    }

    /// One pass over `samples`. Returns `None` when a second stop request cut it short.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        samples: &Arc<Vec<Sample>>,
        phase: Phase,
        batch_size: usize,
        mut train: Option<(&mut Optimizer, &mut Option<GradScaler>, f64, Mode)>,
        obs: &mut dyn Observer,
        first_batch: &mut dyn FnMut(&Batch),
    ) -> Result<Option<PhaseStats>, TrainError> {
        let started = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0i64, 0usize);
        let mut first = true;
        // Validation runs a BatchNorm-folded snapshot of the current weights: same logits up to
        // rounding, noticeably faster on the CPU.
        let folded = if train.is_none() { Some(self.model.folded()?) } else { None };
        for batch in self.loader.batches(Arc::clone(samples), phase, batch_size) {
            for f in &batch.failed {
                obs.warn(&format!("skipped {}: {}", f.path.display(), f.reason));
            }
            if batch.labels.is_empty() {
                continue;
            }
            if first {
                first_batch(&batch);
                first = false;
            }
            let (x, y) = self.to_tensors(&batch);
            let (loss, logits) = match train.as_mut() {
                Some((opt, scaler, lr, mode)) => {
                    let logits = tch::autocast(self.amp, || match mode {
                        Mode::Finetune => self.model.forward(&x, true),
                        Mode::FeatureExtract => self.model.forward_frozen_backbone(&x),
                    });
                    let loss = logits.to_kind(Kind::Float).cross_entropy_for_logits(&y);
                    match scaler {
                        Some(s) => {
                            let grads = opt.backward(&(&loss * s.scale))?;
                            s.step(opt, grads, *lr)?;
                        }
                        None => {
                            let grads = opt.backward(&loss)?;
                            opt.step(grads, *lr)?;
                        }
                    }
                    (loss.detach(), logits.detach())
                }
                None => tch::no_grad(|| {
                    let net = folded.as_ref().expect("built for evaluation");
                    let logits = tch::autocast(self.amp, || net.forward(&x));
                    (logits.to_kind(Kind::Float).cross_entropy_for_logits(&y), logits)
                }),
            };
            let n = batch.labels.len();
            loss_sum += loss.double_value(&[]) * n as f64;
            correct += logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
            seen += n;
            obs.batch_done(seen, loss_sum / seen as f64, correct as f64 / seen as f64);
            if self.stop.level() >= 2 {
                return Ok(None);
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let stats = if seen == 0 {
            PhaseStats { loss: f64::NAN, acc: 0.0, images: 0, seconds }
        } else {
            PhaseStats { loss: loss_sum / seen as f64, acc: correct as f64 / seen as f64, images: seen, seconds }
        };
        obs.phase_end(&stats);
        Ok(Some(stats))
    }
}

fn validate(h: &Hyper, device: Device) -> Result<&'static Arch, TrainError> {
    let arch = arch::by_name(&h.arch).ok_or_else(|| {
        TrainError::Config(format!("unknown architecture '{}' (known: {})", h.arch, arch::names().join(", ")))
    })?;
    if h.epochs == 0 {
        return Err(TrainError::Config("epochs must be at least 1".into()));
    }
    if h.batch_size == 0 || h.eval_batch_size == 0 {
        return Err(TrainError::Config("batch sizes must be at least 1".into()));
    }
    h.optim.validate().map_err(TrainError::Config)?;
    if h.amp && !device.is_cuda() {
        return Err(TrainError::Config("--amp (mixed precision) needs a CUDA device".into()));
    }
    Ok(arch)
}

/// Runs a training job to completion (or to a stop request) and returns its summary.
pub fn run(cfg: &TrainConfig, obs: &mut dyn Observer, stop: &StopFlag) -> Result<Summary, TrainError> {
    let started = Instant::now();
    if let Some(t) = cfg.threads {
        tch::set_num_threads(t.max(1) as i32);
    }
    let (device, device_desc) = device::resolve(cfg.device)?;

    let resume = match &cfg.resume {
        Some(p) => Some((p, checkpoint::load_last(p)?)),
        None => None,
    };
    let state: Option<RunState> = match &resume {
        Some((p, r)) => Some(serde_json::from_str(&r.run_state).map_err(|e| {
            TrainError::Checkpoint(CheckpointError::Invalid {
                path: p.to_path_buf(),
                reason: format!("run state: {e}"),
            })
        })?),
        None => None,
    };
    let mut hyper = state.as_ref().map_or_else(|| cfg.hyper.clone(), |s| s.hyper.clone());
    if let Some(e) = cfg.epochs_override {
        hyper.epochs = e;
    }
    hyper.optim.epochs = hyper.epochs;
    let arch = validate(&hyper, device)?;
    tch::manual_seed(hyper.seed as i64);
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    obs.info(&format!("device: {device_desc}"));

    // Data
    let limits = DecodeLimits::default();
    let check = |p: &Path| decode_file(p, limits).map(|_| ()).map_err(|e| e.to_string());
    let opts = ScanOptions { val_fraction: hyper.val_fraction, seed: hyper.seed, check: &check };
    let ds = dataset::scan(&cfg.data, &opts)?;
    for s in &ds.skipped {
        obs.warn(&format!("skipped {}: {}", s.path.display(), s.reason));
    }
    if let Some(s) = &state {
        if s.classes != ds.classes {
            return Err(TrainError::Config(format!(
                "the checkpoint's classes ({}) differ from the data's ({})",
                s.classes.join(", "),
                ds.classes.join(", ")
            )));
        }
    }
    obs.info(&describe_data(&ds));

    // Model and weights
    let model = ResNet::new(arch, ds.classes.len() as i64, device);
    let weights_desc = match (&resume, &state, &cfg.weights) {
        (Some((p, r)), Some(s), _) => {
            model.load_state(&r.model, false).map_err(TrainError::from)?;
            obs.info(&format!("resuming from {} after epoch {} of {}", p.display(), s.epochs_done, hyper.epochs));
            s.weights.clone()
        }
        (_, _, WeightsSource::Pretrained) => {
            let path = weights::pretrained_weights(arch, &mut |d, t| obs.download_progress(d, t))?;
            load_weights(&model, &path, obs)?
        }
        (_, _, WeightsSource::File(p)) => load_weights(&model, p, obs)?,
        (_, _, WeightsSource::Scratch) => {
            obs.info("weights: random initialisation (no pretraining)");
            "random initialisation".to_string()
        }
    };
    let head_only = hyper.mode == Mode::FeatureExtract;
    if head_only {
        for (name, t) in model.trainable(false) {
            if !name.starts_with("fc.") {
                let _ = t.set_requires_grad(false);
            }
        }
    }
    let mut opt = Optimizer::new(hyper.optim.clone(), model.trainable(head_only));
    if let Some((p, r)) = &resume {
        opt.load_state(&r.optimizer, r.optimizer_steps)
            .map_err(|reason| TrainError::Checkpoint(CheckpointError::Invalid { path: p.to_path_buf(), reason }))?;
    }
    let mut scaler = hyper.amp.then_some(GradScaler { scale: 65536.0, good_steps: 0 });

    // Loop
    let preprocess = PreprocessConfig::default();
    let loader = Arc::new(Loader::new(preprocess.clone(), cfg.workers, cfg.prefetch, hyper.seed)?);
    let out = &cfg.out;
    std::fs::create_dir_all(out).map_err(|source| TrainError::Write { path: out.clone(), source })?;
    let leftovers = infer::atomic::remove_leftovers(out, &OUTPUTS);
    if leftovers > 0 {
        obs.info(&format!("removed {leftovers} temporary file(s) left by an interrupted run in {}", out.display()));
    }
    let train_samples = Arc::new(ds.train.clone());
    let val_samples = Arc::new(ds.val.clone());
    let mut history = state.as_ref().map(|s| s.history.clone()).unwrap_or_default();
    let mut best = state.as_ref().and_then(|s| s.best);
    let prior_seconds = state.as_ref().map_or(0.0, |s| s.elapsed_seconds);
    let start_epoch = state.as_ref().map_or(0, |s| s.epochs_done);
    let runner = PhaseRun {
        model: &model,
        loader: &loader,
        device,
        amp: hyper.amp,
        crop: i64::from(preprocess.crop_size),
        stop,
    };
    let mut interrupted = false;

    for epoch in start_epoch..hyper.epochs {
        let lr = hyper.optim.lr_at(epoch);
        obs.phase_start(epoch + 1, hyper.epochs, "train", train_samples.len());
        let mut grid_result = Ok(());
        let mut save_grid = |b: &Batch| {
            if epoch == 0 {
                let labels: Vec<usize> = b.labels.iter().map(|&l| l as usize).collect();
                let img = plot::batch_grid(
                    &b.images,
                    &labels,
                    &ds.classes,
                    preprocess.crop_size,
                    preprocess.mean,
                    preprocess.std,
                );
                grid_result = report::write_png(&out.join(TRAIN_BATCH), &img);
            }
        };
        let train = runner.run(
            &train_samples,
            Phase::Train { epoch },
            hyper.batch_size,
            Some((&mut opt, &mut scaler, lr, hyper.mode)),
            obs,
            &mut save_grid,
        )?;
        if let Err(e) = grid_result {
            obs.warn(&e.to_string());
        }
        let Some(train) = train else {
            interrupted = true;
            break;
        };
        obs.phase_start(epoch + 1, hyper.epochs, "val", val_samples.len());
        let Some(val) = runner.run(&val_samples, Phase::Eval, hyper.eval_batch_size, None, obs, &mut |_| {})? else {
            interrupted = true;
            break;
        };
        let record = EpochRecord { epoch: epoch + 1, lr, train, val };
        let improved = best.is_none_or(|b| val.acc > b.val_acc);
        if improved {
            best = Some(Best { epoch: epoch + 1, val_acc: val.acc, val_loss: val.loss });
            let info = ModelInfo::new(arch.name, ds.classes.clone(), preprocess.clone(), epoch + 1, Some(val.acc));
            checkpoint::save_best(&out.join(BEST), &model, &info)?;
        }
        history.push(record);
        let run_state = RunState {
            hyper: hyper.clone(),
            classes: ds.classes.clone(),
            epochs_done: epoch + 1,
            best,
            history: history.clone(),
            elapsed_seconds: prior_seconds + started.elapsed().as_secs_f64(),
            weights: weights_desc.clone(),
        };
        let info = ModelInfo::new(arch.name, ds.classes.clone(), preprocess.clone(), epoch + 1, Some(val.acc));
        let json = serde_json::to_string(&run_state).expect("run state serialises");
        checkpoint::save_last(&out.join(LAST), &model, &opt, &info, &json)?;
        report::write_metrics(&out.join(METRICS), &history)?;
        report::write_curves(&out.join(CURVES), &history)?;
        let summary = make_summary(
            cfg,
            &ds,
            &hyper,
            &history,
            best,
            &device_desc,
            &weights_desc,
            prior_seconds + started.elapsed().as_secs_f64(),
            false,
        );
        report::write_summary(&out.join(SUMMARY), &summary)?;
        obs.epoch_end(&record, hyper.epochs, improved);
        // A first stop request lets the epoch in progress (or during set-up, the first) finish.
        if stop.level() > 0 {
            interrupted = epoch + 1 < hyper.epochs;
            break;
        }
    }
    let total = prior_seconds + started.elapsed().as_secs_f64();
    let summary = make_summary(cfg, &ds, &hyper, &history, best, &device_desc, &weights_desc, total, interrupted);
    if !history.is_empty() {
        report::write_summary(&out.join(SUMMARY), &summary)?;
    }
    if interrupted && stop.level() >= 2 {
        return Err(TrainError::Interrupted);
    }
    Ok(summary)
}

fn describe_data(ds: &Dataset) -> String {
    let n = ds.classes.len();
    let train = Dataset::counts(&ds.train, n);
    let val = Dataset::counts(&ds.val, n);
    let per_class: Vec<String> =
        ds.classes.iter().enumerate().map(|(i, c)| format!("{c} {}/{}", train[i], val[i])).collect();
    let split = match ds.split {
        dataset::SplitKind::Folder => "val/ folder".to_string(),
        dataset::SplitKind::Random { fraction, seed } => {
            format!("{:.0}% of each class, seed {seed}", fraction * 100.0)
        }
    };
    let mut s = format!(
        "data: {} — {n} classes, {} train / {} val images ({}; validation: {split})",
        ds.root.display(),
        ds.train.len(),
        ds.val.len(),
        per_class.join(", ")
    );
    if !ds.skipped.is_empty() {
        s.push_str(&format!("; {} unreadable file(s) skipped", ds.skipped.len()));
    }
    if ds.ignored > 0 {
        s.push_str(&format!("; {} non-image file(s) ignored", ds.ignored));
    }
    s
}

#[allow(clippy::too_many_arguments)]
fn make_summary(
    cfg: &TrainConfig,
    ds: &Dataset,
    hyper: &Hyper,
    history: &[EpochRecord],
    best: Option<Best>,
    device: &str,
    weights: &str,
    seconds: f64,
    interrupted: bool,
) -> Summary {
    let outputs = OUTPUTS.iter().map(|f| cfg.out.join(f)).filter(|p| p.exists() || p.ends_with(SUMMARY)).collect();
    Summary {
        toolkit: checkpoint::TOOLKIT_NAME.to_string(),
        toolkit_version: env!("CARGO_PKG_VERSION").to_string(),
        data: ds.root.clone(),
        classes: ds.classes.clone(),
        train_counts: Dataset::counts(&ds.train, ds.classes.len()),
        val_counts: Dataset::counts(&ds.val, ds.classes.len()),
        split: ds.split.clone(),
        skipped_files: ds.skipped.clone(),
        ignored_files: ds.ignored,
        epochs_completed: history.len(),
        interrupted,
        best,
        total_seconds: seconds,
        device: device.to_string(),
        seed: hyper.seed,
        weights: weights.to_string(),
        hyperparameters: serde_json::to_value(hyper).expect("hyper-parameters serialise"),
        outputs,
        val_files: ds.val.iter().map(|s| s.path.clone()).collect(),
    }
}
