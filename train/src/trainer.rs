//! The training run — the seed's `train_model`, plus checkpoints, resumption, metrics,
//! pictures and the final export — as a few named steps: [`run`] starts (device, settings,
//! resumed state), reads the data, builds the model, trains epoch by epoch, then finishes
//! (export and summary).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use infer::decode::decode_file_with_status;
use infer::{DecodeLimits, PreprocessConfig};
use tch::{Device, Tensor};

use crate::amp::AmpDtype;
use crate::arch::{self, Arch};
use crate::board::Board;
use crate::checkpoint::{self, ModelInfo, Resume};
use crate::config::{
    Hyper, Mode, Observer, StopFlag, TrainConfig, WeightsSource, BEST, CURVES, LAST, METRICS, MODEL_ONNX, OUTPUTS,
    SUMMARY, TRAIN_BATCH, VAL_PREDICTIONS,
};
use crate::cpu_features::{cpu_amp_warning, Bf16Support};
use crate::dataset::{self, Dataset, FileNotes, ScanOptions};
use crate::ddp::{self, Ddp, DistConfig, Evaluated};
use crate::device;
use crate::dist::Reducer;
use crate::error::{CheckpointError, ConfigError, TrainError};
use crate::export::{self, ExportOptions};
use crate::loader::{Batch, Loader, Phase};
use crate::model::ResNet;
use crate::optim::Optimizer;
use crate::plot;
use crate::recipes::{self, RecipeParts};
use crate::report::{self, Best, BestWeights, CleaningReport, DistReport, EmaRecord, EpochRecord, PhaseStats, Summary};
use crate::run_state::RunState;
use crate::sampler::{self, WeightedSampler};
use crate::shard::{Shard, Visits};
use crate::steps::{AgreedGate, EvalStep, GradScaler, LocalGate, Pass, Predicted, Replicas, Tally, TrainStep};
use crate::tensorboard::EventWriter;
use crate::weights;

/// Everything fixed before the first epoch.
pub(crate) struct Start {
    pub started: Instant,
    pub device: Device,
    device_desc: String,
    pub hyper: Hyper,
    arch: &'static Arch,
    data: PathBuf,
    pub out: PathBuf,
    resumed: Option<(PathBuf, Resume, RunState)>,
}

/// Runs a training job to completion (or to a stop request) and returns its summary.
///
/// With [`TrainConfig::distributed`], this process is one rank of a data-parallel job (see
/// [`crate::ddp`]): every rank calls `run` and gets the same summary; rank 0 alone writes files.
/// The observer of every rank hears of every epoch, with figures of the whole job.
pub fn run(cfg: &TrainConfig, obs: &mut dyn Observer, stop: &StopFlag) -> Result<Summary, TrainError> {
    let start = start(cfg, obs)?;
    let ddp = match &cfg.distributed {
        Some(d) => Some(join(d, &start, obs)?),
        None => None,
    };
    if let Some((_, _, state)) = &start.resumed {
        let (before, now) = (state.world_size.unwrap_or(1), ddp.as_ref().map_or(1, Ddp::world_size));
        if before != now {
            let b = start.hyper.batch_size;
            obs.info(&format!(
                "the checkpoint's run had {before} process(es), this one has {now}: the batch in all is {} (was {}), with the same learning rate",
                b * now,
                b * before
            ));
        }
    }
    let ds = read_data(&start, obs)?;
    if let Some(ddp) = &ddp {
        let h = &start.hyper;
        ddp.check_same_run(h, &ds.classes, ds.train.len(), ds.val.len(), &ds.fingerprint())?;
    }
    let (model, weights_desc) = build_model(cfg, &start, &ds, ddp.as_ref(), obs)?;
    let epochs = Epochs::new(cfg, &start, &ds, &model, weights_desc, stop, ddp)?;
    // Rank 0 alone keeps the TensorBoard log, as it alone writes the other files.
    let writer = match cfg.tensorboard && epochs.is_main() {
        true => match EventWriter::create(&start.out) {
            Ok(w) => {
                obs.info(&format!("TensorBoard: tensorboard --logdir {}", start.out.display()));
                Some(w)
            }
            Err(e) => {
                obs.warn(&format!("no TensorBoard log in {}: {e}", start.out.display()));
                None
            }
        },
        false => None,
    };
    match writer {
        Some(w) => {
            let mut board = Board::new(w, obs, &start.hyper, start.resumed.is_none(), cfg.log_every);
            train_and_finish(cfg, epochs, &mut board)
        }
        None => train_and_finish(cfg, epochs, obs),
    }
}

fn train_and_finish(cfg: &TrainConfig, mut epochs: Epochs, obs: &mut dyn Observer) -> Result<Summary, TrainError> {
    epochs.run(obs)?;
    finish(cfg, epochs, obs)
}

/// Joins the data-parallel job and says how it trains.
fn join(cfg: &DistConfig, start: &Start, obs: &mut dyn Observer) -> Result<Ddp, TrainError> {
    let ddp = Ddp::join(cfg, start.device)?;
    let (world, b) = (ddp.world_size(), start.hyper.batch_size);
    let bn = match (start.hyper.mode, start.hyper.sync_bn && world > 1) {
        (Mode::FeatureExtract, _) => "frozen BatchNorm",
        (Mode::Finetune, true) => "synchronised BatchNorm",
        (Mode::Finetune, false) => "BatchNorm statistics of each rank's batch, rank 0's kept",
    };
    obs.info(&format!(
        "distributed: rank {} of {world} ({}), batch {b} per rank = {} in all; {bn}",
        ddp.rank(),
        ddp.backend(),
        b * world
    ));
    Ok(ddp)
}

/// Device, settings (the checkpoint's when resuming), data and output folders.
pub(crate) fn start(cfg: &TrainConfig, obs: &mut dyn Observer) -> Result<Start, TrainError> {
    let started = Instant::now();
    if let Some(t) = cfg.threads {
        tch::set_num_threads(t.max(1) as i32);
    }
    let (device, device_desc) = match &cfg.distributed {
        Some(d) => device::resolve_for_rank(cfg.device, d.env.local_rank)?,
        None => device::resolve(cfg.device)?,
    };
    let resumed = match &cfg.resume {
        Some(p) => {
            let r = checkpoint::load_last(p)?;
            let state = RunState::parse(p, &r.run_state)?;
            Some((p.clone(), r, state))
        }
        None => None,
    };
    let mut hyper = resumed.as_ref().map_or_else(|| cfg.hyper.clone(), |(_, _, s)| s.hyper.clone());
    if let Some(e) = cfg.epochs_override {
        hyper.epochs = e;
    }
    hyper.optim.epochs = hyper.epochs;
    // The CPU's autocast computes in bfloat16 (float16 there is neither fast nor scaled).
    if hyper.amp && !device.is_cuda() {
        hyper.amp_dtype = AmpDtype::Bfloat16;
    }
    let arch = validate(&hyper, device, cfg.distributed.is_some())?;
    let recorded = resumed.as_ref().and_then(|(_, _, s)| s.data.clone());
    let data = cfg.data.clone().or(recorded).ok_or(ConfigError::NoDataFolder)?;
    // A resumed run continues in its checkpoint's folder unless told otherwise.
    let out = cfg.output_folder();
    tch::manual_seed(hyper.seed as i64);
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    obs.info(&format!("device: {device_desc}"));
    if hyper.amp && !device.is_cuda() {
        obs.info(&cpu_amp_warning(&Bf16Support::detect()).unwrap_or_else(|| {
            "--amp on the CPU: bfloat16 autocast (native on this CPU), float32 master weights".to_string()
        }));
    }
    Ok(Start { started, device, device_desc, hyper, arch, data, out, resumed })
}

fn validate(h: &Hyper, device: Device, distributed: bool) -> Result<&'static Arch, ConfigError> {
    let arch = arch::by_name(&h.arch).ok_or_else(|| ConfigError::UnknownArch { name: h.arch.clone() })?;
    if h.epochs == 0 {
        return Err(ConfigError::ZeroEpochs);
    }
    if h.batch_size == 0 || h.eval_batch_size == 0 {
        return Err(ConfigError::ZeroBatchSize);
    }
    h.optim.validate()?;
    h.augment.validate()?;
    if h.amp && device.is_cuda() {
        // Fails now, not at the first batch, when this libtorch cannot set the type.
        crate::amp::set_cuda_dtype(h.amp_dtype)?;
    }
    if h.amp && !device.is_cuda() {
        crate::cpu_features::cpu_autocast_enabled()?;
    }
    recipes::validate(h, distributed)?;
    Ok(arch)
}

/// Scans the data (decoding every file once), checks it against a resumed run's, and says
/// what was found.
pub(crate) fn read_data(start: &Start, obs: &mut dyn Observer) -> Result<Dataset, TrainError> {
    let limits = DecodeLimits::default();
    let crop = start.hyper.preprocess().crop_size;
    let small = AtomicUsize::new(0);
    let skip_incomplete = start.hyper.skip_incomplete;
    let background = start.hyper.background;
    let check = |p: &Path| {
        let decoded = decode_file_with_status(p, limits).map_err(|e| e.to_string())?;
        if decoded.incomplete && skip_incomplete {
            return Err("incomplete file (it ends before its image data does; --skip-incomplete)".into());
        }
        let img = &decoded.image;
        if img.width().min(img.height()) * 4 < crop {
            small.fetch_add(1, Ordering::Relaxed);
        }
        let transparent = decoded.alpha.is_some();
        // Without a background the model sees the colours under the transparency.
        let blank_without_alpha = transparent && background.is_none() && infer::background::nearly_uniform(img);
        Ok(FileNotes { incomplete: decoded.incomplete, transparent, blank_without_alpha })
    };
    let h = &start.hyper;
    let opts = ScanOptions { val_fraction: h.val_fraction, seed: h.seed, val_dir: h.val_dir.as_deref(), check: &check };
    let ds = dataset::scan(&start.data, &opts)?;
    for s in &ds.skipped {
        obs.warn(&format!("skipped {}: {}", s.path.display(), s.reason));
    }
    if let Some(note) = &ds.layout.note {
        obs.warn(note);
    }
    if let Some((p, _, state)) = &start.resumed {
        check_resumed_data(p, state, &ds, obs)?;
    }
    if !ds.blank_without_alpha.is_empty() {
        let names: Vec<String> = ds.blank_without_alpha.iter().take(3).map(|p| p.display().to_string()).collect();
        obs.warn(&format!(
            "{} of the {} images with transparency are nearly one colour once their alpha is dropped, as PIL's convert(\"RGB\") drops it (e.g. {}); consider --background white",
            ds.blank_without_alpha.len(),
            ds.transparent,
            names.join(", ")
        ));
    }
    if let [first, ..] = ds.incomplete.as_slice() {
        obs.warn(&format!(
            "{} file(s) end before their image data does and were decoded as far as they go, the rest filled in as libjpeg fills it (e.g. {}); they are kept (listed in summary.json), --skip-incomplete leaves them out",
            ds.incomplete.len(),
            first.display()
        ));
    }
    obs.info(&describe_data(&ds, start.hyper.background));
    if let Some(w) = sampler::imbalance_warning(&Dataset::counts(&ds.train, ds.classes.len()), &ds.classes) {
        obs.warn(&w);
    }
    let total = ds.train.len() + ds.val.len();
    if small.load(Ordering::Relaxed) * 2 > total {
        obs.warn(&format!(
            "most images are far smaller than the {crop}x{crop} model input and are upscaled a lot; consider a larger --crop-scale (e.g. 0.5 1) so that crops keep enough of each picture"
        ));
    }
    Ok(ds)
}

/// The classes must be the checkpoint's; other files than the checkpoint's run saw are worth
/// a warning (same class names in another folder are easy to mix up).
fn check_resumed_data(path: &Path, state: &RunState, ds: &Dataset, obs: &mut dyn Observer) -> Result<(), TrainError> {
    if state.classes != ds.classes {
        return Err(ConfigError::ClassesDiffer {
            path: path.to_path_buf(),
            checkpoint: state.classes.clone(),
            data: ds.classes.clone(),
        }
        .into());
    }
    let now = ds.fingerprint();
    match &state.fingerprint {
        Some(before) if before.files != now.files => obs.warn(&format!(
            "the data has changed since the checkpoint: {} images then, {} now ({})",
            before.files,
            now.files,
            ds.root.display()
        )),
        Some(before) if *before != now => obs.warn(&format!(
            "the data has changed since the checkpoint: same number of images ({}), but other files or sizes ({})",
            now.files,
            ds.root.display()
        )),
        _ => {}
    }
    Ok(())
}

fn describe_data(ds: &Dataset, background: Option<infer::Background>) -> String {
    let n = ds.classes.len();
    let train = Dataset::counts(&ds.train, n);
    let val = Dataset::counts(&ds.val, n);
    let per_class: Vec<String> =
        ds.classes.iter().enumerate().map(|(i, c)| format!("{c} {}/{}", train[i], val[i])).collect();
    let split = ds.describe_split();
    let mut s = format!(
        "data: {} — {n} classes, {} train / {} val images ({}; validation: {split})",
        ds.root.display(),
        ds.train.len(),
        ds.val.len(),
        per_class.join(", ")
    );
    if !ds.layout.unused.is_empty() {
        let unused: Vec<String> = ds.layout.unused.iter().map(|p| p.display().to_string()).collect();
        s.push_str(&format!("; not used: {} (choose with --val-dir)", unused.join(", ")));
    }
    if !ds.skipped.is_empty() {
        s.push_str(&format!("; {} unreadable file(s) skipped", ds.skipped.len()));
    }
    if ds.ignored.total() > 0 {
        s.push_str(&format!("; {} non-image file(s) ignored: {}", ds.ignored.total(), ds.ignored.describe()));
    }
    if ds.transparent > 0 {
        let how = background.map_or("alpha dropped".to_string(), |b| format!("composited onto {b}"));
        s.push_str(&format!("; {} with transparency ({how})", ds.transparent));
    }
    s
}

/// The model with its starting weights (the checkpoint's, the pretrained ones, a file's, or
/// random), frozen below the classifier in feature-extraction mode.
/// In a data-parallel job, rank 0's model is every rank's: the others neither read nor download
/// weights files (they may not have them), they receive rank 0's.
pub(crate) fn build_model(
    cfg: &TrainConfig,
    start: &Start,
    ds: &Dataset,
    ddp: Option<&Ddp>,
    obs: &mut dyn Observer,
) -> Result<(ResNet, String), TrainError> {
    let model = ResNet::new(start.arch, ds.classes.len() as i64, start.device);
    let from_rank0 = ddp.is_some_and(|d| !d.is_main());
    let desc = match (&start.resumed, &cfg.weights) {
        (Some((p, r, s)), _) => {
            model.load_state(&r.model, false)?;
            obs.info(&format!("resuming from {} after epoch {} of {}", p.display(), s.epochs_done, start.hyper.epochs));
            s.weights.clone()
        }
        (None, _) if from_rank0 => "rank 0's".to_string(),
        (None, WeightsSource::Pretrained) => {
            let path = weights::pretrained_weights(start.arch, &mut |d, t| obs.download_progress(d, t))?;
            load_weights(&model, &path, obs)?
        }
        (None, WeightsSource::File(p)) => load_weights(&model, p, obs)?,
        (None, WeightsSource::Scratch) => {
            obs.info("weights: random initialisation (no pretraining)");
            "random initialisation".to_string()
        }
    };
    if start.hyper.mode == Mode::FeatureExtract {
        for (name, t) in model.trainable(false) {
            if !name.starts_with("fc.") {
                let _ = t.set_requires_grad(false);
            }
        }
    }
    if start.hyper.channels_last {
        model.to_channels_last();
    }
    if let Some(ddp) = ddp {
        ddp.sync_model(&model)?;
    }
    Ok((model, desc))
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

/// The epoch loop and what it keeps between epochs.
struct Epochs<'a> {
    start: &'a Start,
    ds: &'a Dataset,
    model: &'a ResNet,
    weights_desc: String,
    opt: Optimizer,
    scaler: Option<GradScaler>,
    loader: Arc<Loader>,
    preprocess: PreprocessConfig,
    train_samples: Arc<Vec<dataset::Sample>>,
    val_samples: Arc<Vec<dataset::Sample>>,
    history: Vec<EpochRecord>,
    best: Option<Best>,
    first_epoch: usize,
    prior_seconds: f64,
    interrupted: bool,
    stop: &'a StopFlag,
    /// This rank's part in a data-parallel job.
    replicated: Option<Replicated>,
    /// The recipe's parts (see [`Recipe`](crate::config::Recipe)).
    recipe: RecipeParts,
}

/// What a rank of a data-parallel job keeps while it trains.
struct Replicated {
    ddp: Ddp,
    reducer: Reducer,
    /// The optimiser's parameters, in its order: the reducer's.
    params: Vec<Tensor>,
    sync_bn: bool,
    /// The stop level the ranks agreed on so far (see [`StopFlag`]): every rank stops at the
    /// same step, whichever got the request.
    agreed_stop: usize,
    /// This rank's time in training phases, for the share of it spent communicating.
    train_seconds: f64,
}

impl Replicated {
    fn report(&self, hyper: &Hyper) -> DistReport {
        let t = self.ddp.comm_times(&self.reducer);
        let waited = t.allreduce_exposed + t.step_sync + t.sync_bn;
        DistReport {
            world_size: self.ddp.world_size(),
            backend: self.ddp.backend().to_string(),
            batch_per_rank: hyper.batch_size,
            global_batch: hyper.batch_size * self.ddp.world_size(),
            sync_bn: self.sync_bn,
            train_seconds: self.train_seconds,
            allreduce_exposed_seconds: t.allreduce_exposed.as_secs_f64(),
            step_sync_seconds: t.step_sync.as_secs_f64(),
            sync_bn_seconds: t.sync_bn.as_secs_f64(),
            allreduce_seconds: t.allreduce.as_secs_f64(),
            backward_seconds: t.backward.as_secs_f64(),
            communication_share: if self.train_seconds > 0.0 { waited.as_secs_f64() / self.train_seconds } else { 0.0 },
        }
    }
}

impl<'a> Epochs<'a> {
    fn new(
        cfg: &TrainConfig,
        start: &'a Start,
        ds: &'a Dataset,
        model: &'a ResNet,
        weights_desc: String,
        stop: &'a StopFlag,
        ddp: Option<Ddp>,
    ) -> Result<Epochs<'a>, TrainError> {
        let h = &start.hyper;
        let params = model.trainable(h.mode == Mode::FeatureExtract);
        let replicated = match ddp {
            Some(ddp) => {
                let params: Vec<Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).collect();
                let reducer = ddp.reducer(&params)?;
                let sync_bn = h.sync_bn && ddp.world_size() > 1;
                Some(Replicated { ddp, reducer, params, sync_bn, agreed_stop: 0, train_seconds: 0.0 })
            }
            None => None,
        };
        let mut opt = Optimizer::new(h.optim.clone(), params);
        if let Some((p, r, _)) = &start.resumed {
            opt.load_state(&r.optimizer, r.optimizer_steps)
                .map_err(|e| CheckpointError::Invalid { path: p.clone(), reason: e.to_string() })?;
        }
        if h.finetune.layer_lr_decay != 1.0 {
            let scales = h.finetune.lr_scales(&opt.param_names());
            opt.set_lr_scales(scales).map_err(ConfigError::from)?;
        }
        let preprocess = h.preprocess();
        let labels: Vec<usize> = ds.train.iter().map(|s| s.label).collect();
        let sampler = match h.sampler.balanced {
            true => Some(WeightedSampler::balanced(&labels, ds.classes.len()).map_err(ConfigError::from)?),
            false => None,
        };
        let loader = Loader::new(preprocess.clone(), h.augment, cfg.workers, cfg.prefetch, h.seed)?
            .with_pixel_augment(h.pixel_augment)?
            .with_sampler(sampler);
        let loader = Arc::new(loader);
        let state = start.resumed.as_ref().map(|(_, _, s)| s);
        let shard = replicated.as_ref().map_or(Shard::WHOLE, |r| r.ddp.shard());
        let steps_per_epoch = shard.padded_len(ds.train.len()).div_ceil(h.batch_size).max(1);
        let history: Vec<EpochRecord> = state.map(|s| s.history.clone()).unwrap_or_default();
        let ema_history = state.map(|s| s.ema_history.clone()).unwrap_or_default();
        let mut recipe = RecipeParts::new(h, ds, model, steps_per_epoch, &history, ema_history)?;
        if let (Some(ema), Some((p, r, _))) = (recipe.ema.as_mut(), &start.resumed) {
            if let Some((state, updates)) = &r.ema {
                ema.load_state(state, *updates)
                    .map_err(|e| CheckpointError::Invalid { path: p.clone(), reason: e.to_string() })?;
            }
        }
        Ok(Epochs {
            start,
            ds,
            model,
            weights_desc,
            opt,
            scaler: h.autocast().filter(|d| d.needs_loss_scaling()).map(|_| GradScaler::new()),
            loader,
            preprocess,
            train_samples: Arc::new(ds.train.clone()),
            val_samples: Arc::new(ds.val.clone()),
            history,
            best: state.and_then(|s| s.best),
            first_epoch: state.map_or(0, |s| s.epochs_done),
            prior_seconds: state.map_or(0.0, |s| s.elapsed_seconds),
            interrupted: false,
            stop,
            replicated,
            recipe,
        })
    }

    fn out(&self, name: &str) -> PathBuf {
        self.start.out.join(name)
    }

    /// Whether this process writes the files: always, but in a data-parallel job only rank 0.
    fn is_main(&self) -> bool {
        self.replicated.as_ref().is_none_or(|r| r.ddp.is_main())
    }

    fn shard(&self) -> Shard {
        self.replicated.as_ref().map_or(Shard::WHOLE, |r| r.ddp.shard())
    }

    /// How far stop requests went: this process's, or what the ranks agreed on.
    fn stop_level(&self) -> usize {
        self.replicated.as_ref().map_or(self.stop.level(), |r| r.agreed_stop)
    }

    fn run(&mut self, obs: &mut dyn Observer) -> Result<(), TrainError> {
        let out = &self.start.out;
        if self.is_main() {
            std::fs::create_dir_all(out).map_err(|source| TrainError::Write { path: out.clone(), source })?;
            let leftovers = infer::atomic::remove_leftovers(out, &OUTPUTS);
            if leftovers > 0 {
                obs.info(&format!(
                    "removed {leftovers} temporary file(s) left by an interrupted run in {}",
                    out.display()
                ));
            }
        }
        let ema_saved = self.start.resumed.as_ref().is_some_and(|(_, r, _)| r.ema.is_some());
        if self.recipe.ema.is_some() && self.first_epoch > 0 && !ema_saved {
            // A last.pt of a run without --ema has no average: it starts from the weights.
            obs.info("EMA: the moving average starts from the resumed weights");
        }
        for epoch in self.first_epoch..self.start.hyper.epochs {
            if !self.epoch(epoch, obs)? {
                self.interrupted = true;
                break;
            }
            // --patience and --time-limit end the run here too, but as a finished one: the
            // best model is exported.
            if let Some(reason) = &self.recipe.stop_reason {
                obs.info(reason);
                break;
            }
            // A first stop request lets the epoch in progress (or during set-up, the first) finish.
            if self.stop_after_epoch()? {
                self.interrupted = epoch + 1 < self.start.hyper.epochs;
                break;
            }
        }
        Ok(())
    }

    /// Whether a stop request came (on any rank).
    fn stop_after_epoch(&mut self) -> Result<bool, TrainError> {
        match &mut self.replicated {
            None => Ok(self.stop.level() > 0),
            Some(r) => {
                let agreed = r.ddp.agree(self.stop.level(), false)?;
                r.agreed_stop = r.agreed_stop.max(agreed.level());
                Ok(r.agreed_stop > 0)
            }
        }
    }

    fn pass(&self) -> Pass<'_> {
        Pass {
            loader: &self.loader,
            device: self.start.device,
            crop: i64::from(self.preprocess.crop_size),
            channels_last: self.start.hyper.channels_last,
        }
    }

    /// One epoch: training, validation, then the checkpoints and reports. Returns false when
    /// a second stop request cut it short.
    fn epoch(&mut self, epoch: usize, obs: &mut dyn Observer) -> Result<bool, TrainError> {
        let start = self.start;
        let h = &start.hyper;
        let epoch_started = Instant::now();
        let main = self.is_main();
        let frozen = h.finetune.frozen(epoch) && h.mode == Mode::Finetune;
        if frozen && epoch == self.first_epoch {
            obs.info(&format!(
                "epochs 1 to {}: only the classifier trains (--freeze-epochs)",
                h.finetune.freeze_epochs
            ));
        } else if h.finetune.freeze_epochs > 0 && epoch == h.finetune.freeze_epochs {
            obs.info(&format!(
                "epoch {}: every layer trains now (layer learning-rate decay {})",
                epoch + 1,
                h.finetune.layer_lr_decay
            ));
        }
        let phase = Phase::Train { epoch };
        let visits = self.shard().padded(&self.loader.order(self.train_samples.len(), phase));
        obs.phase_start(epoch + 1, h.epochs, "train", visits.len());
        let mut first: Option<(Vec<f32>, Vec<i64>)> = None;
        let mut keep_first = |b: &Batch| {
            if epoch == 0 {
                first = Some((b.images.clone(), b.labels.clone()));
            }
        };
        let pass = Pass {
            loader: &self.loader,
            device: start.device,
            crop: i64::from(self.preprocess.crop_size),
            channels_last: h.channels_last,
        };
        let recipe = &mut self.recipe;
        let mut step = TrainStep {
            model: self.model,
            opt: &mut self.opt,
            scaler: &mut self.scaler,
            schedule: &recipe.schedule,
            epoch,
            index: 0,
            last_lr: None,
            mode: h.mode,
            frozen,
            amp: h.autocast(),
            loss: &recipe.loss,
            mixer: recipe.mixer.as_ref().map(|m| (m, h.seed)),
            ema: recipe.ema.as_mut(),
            replicas: None,
        };
        let samples = &self.train_samples;
        let bs = h.batch_size;
        let tally = match &mut self.replicated {
            None => {
                let mut gate = LocalGate { stop: self.stop, stops: true };
                pass.run(samples, visits, phase, bs, &mut step, &mut gate, obs, &mut keep_first)?
            }
            Some(r) => {
                step.replicas =
                    Some(Replicas { ddp: &r.ddp, reducer: &mut r.reducer, params: &r.params, sync_bn: r.sync_bn });
                let mut gate = AgreedGate { ddp: &r.ddp, stop: self.stop, agreed_stop: &mut r.agreed_stop };
                let tally = pass.run(samples, visits, phase, bs, &mut step, &mut gate, obs, &mut keep_first)?;
                r.train_seconds += tally.map_or(0.0, |t| t.seconds);
                tally
            }
        };
        // The rate of the epoch's last step (the epoch's rate unless warm-up or one-cycle).
        let lr = step.last_lr.unwrap_or_else(|| self.recipe.schedule.lr(epoch, 0));
        let train = match (tally, &self.replicated) {
            (None, _) => None,
            (Some(t), None) => Some(t.stats()),
            (Some(t), Some(r)) => Some(job_stats(&r.ddp, &t)?),
        };
        if let Some(stats) = &train {
            obs.phase_end(stats);
        }
        if let (Some((images, labels)), true) = (first, main) {
            let grid = self.batch_grid(&images, &labels);
            if let Err(e) = report::write_png(&self.out(TRAIN_BATCH), &grid) {
                obs.warn(&e.to_string());
            }
            obs.picture("train_batch", epoch + 1, &grid);
        }
        let Some(train) = train else { return Ok(false) };

        let all_val: Vec<usize> = (0..self.val_samples.len()).collect();
        let visits = self.shard().strided(&all_val);
        obs.phase_start(epoch + 1, h.epochs, "val", visits.len());
        let mut eval = EvalStep::new(self.model, h.autocast())?;
        if self.replicated.is_some() {
            eval = eval.keeping_losses();
        }
        // A rank leaves the validation pass only at its end, where the ranks agree on stopping:
        // shards differ in length, so a rank cannot wait for the others in the middle of it.
        let mut gate = LocalGate { stop: self.stop, stops: self.replicated.is_none() };
        let Some(tally) = self.pass().run(
            &self.val_samples,
            visits,
            Phase::Eval,
            h.eval_batch_size,
            &mut eval,
            &mut gate,
            obs,
            &mut |_| {},
        )?
        else {
            return Ok(false);
        };
        let (val, predictions) = match &self.replicated {
            None => (tally.stats(), eval.predictions),
            Some(r) => {
                let mine: Vec<Evaluated> = eval
                    .predictions
                    .iter()
                    .zip(eval.losses.unwrap_or_default())
                    .map(|(p, loss)| Evaluated { sample: p.sample, class: p.class, confidence: p.confidence, loss })
                    .collect();
                let all = r.ddp.gather_evaluation(&mine, self.val_samples.len())?;
                let (loss, acc) = ddp::evaluation_stats(&all, |i| self.val_samples[i].label);
                let seconds =
                    r.ddp.sum(&[tally.seconds], "adding up the validation time")?[0] / r.ddp.world_size() as f64;
                let predictions = all
                    .iter()
                    .map(|e| Predicted { sample: e.sample, class: e.class, confidence: e.confidence })
                    .collect();
                (PhaseStats { loss, acc, images: all.len(), seconds }, predictions)
            }
        };
        obs.phase_end(&val);
        let record = EpochRecord { epoch: epoch + 1, lr, train, val };
        self.recipe.record_recall(&predictions, &self.val_samples, self.ds.classes.len());
        // The EMA weights are validated too; best.pt keeps whichever validates better.
        let mut candidate = (val.acc, val.loss, BestWeights::Raw, predictions);
        if self.recipe.ema.is_some() {
            let Some((ema_val, ema_predictions)) = self.evaluate_ema(epoch, obs)? else { return Ok(false) };
            self.recipe.ema_history.push(EmaRecord { epoch: epoch + 1, val_loss: ema_val.loss, val_acc: ema_val.acc });
            obs.metric("loss/val_ema", epoch + 1, ema_val.loss);
            obs.metric("accuracy/val_ema", epoch + 1, ema_val.acc);
            obs.info(&format!("EMA weights: val loss {:.4} acc {:.4}", ema_val.loss, ema_val.acc));
            if ema_val.acc > val.acc {
                candidate = (ema_val.acc, ema_val.loss, BestWeights::Ema, ema_predictions);
            }
        }
        let (acc, loss, weights, predictions) = candidate;
        let improved = self.best.is_none_or(|b| acc > b.val_acc);
        if improved {
            self.best = Some(Best { epoch: epoch + 1, val_acc: acc, val_loss: loss, weights });
            if main {
                let model = match (weights, &self.recipe.ema) {
                    (BestWeights::Ema, Some(ema)) => ema.model(),
                    _ => self.model,
                };
                checkpoint::save_best(&self.out(BEST), model, &self.model_info(epoch + 1, acc))?;
                let gallery = self.val_predictions(&predictions);
                if let Err(e) = report::write_png(&self.out(VAL_PREDICTIONS), &gallery) {
                    obs.warn(&e.to_string());
                }
                obs.picture("val_predictions", epoch + 1, &gallery);
            }
        }
        if main {
            let mut confusion = infer::evaluation::Evaluation::new(self.ds.classes.clone());
            for p in &predictions {
                confusion.add(self.val_samples[p.sample].label, p.class);
            }
            obs.picture("confusion_matrix", epoch + 1, &confusion.png());
        }
        self.decide_stop(epoch, acc, epoch_started.elapsed().as_secs_f64())?;
        self.history.push(record);
        if main {
            self.save_progress(epoch + 1, val.acc)?;
        }
        obs.epoch_end(&record, h.epochs, improved);
        if let Some(recall) = &self.recipe.recall {
            obs.info(&recipes::describe_recall(recall, &self.ds.classes));
            for (class, r) in self.ds.classes.iter().zip(recall) {
                if let Some(r) = r {
                    obs.metric(&format!("recall/{class}"), epoch + 1, *r);
                }
            }
        }
        if let Some(r) = &self.replicated {
            obs.info(&describe_comm(&r.report(h)));
        }
        Ok(true)
    }

    /// Validation of the EMA weights (single process); `None` when a second stop request cut it.
    fn evaluate_ema(
        &self,
        epoch: usize,
        obs: &mut dyn Observer,
    ) -> Result<Option<(PhaseStats, Vec<Predicted>)>, TrainError> {
        let Some(ema) = &self.recipe.ema else { return Ok(None) };
        let h = &self.start.hyper;
        obs.phase_start(epoch + 1, h.epochs, "val (EMA)", self.val_samples.len());
        let mut eval = EvalStep::new(ema.model(), h.autocast())?;
        let mut gate = LocalGate { stop: self.stop, stops: true };
        let visits = Visits::all((0..self.val_samples.len()).collect());
        let phase = Phase::Eval;
        let samples = &self.val_samples;
        let tally =
            self.pass().run(samples, visits, phase, h.eval_batch_size, &mut eval, &mut gate, obs, &mut |_| {})?;
        Ok(tally.map(|t| {
            let stats = t.stats();
            obs.phase_end(&stats);
            (stats, eval.predictions)
        }))
    }

    /// `--patience` and `--time-limit` after an epoch whose best validation accuracy was `acc`.
    fn decide_stop(&mut self, epoch: usize, acc: f64, seconds: f64) -> Result<(), TrainError> {
        // This process's time: a resumed run gets its --time-limit again.
        let elapsed = self.start.started.elapsed();
        let ddp = self.replicated.as_ref().map(|r| &r.ddp);
        self.recipe.decide_stop(&self.start.hyper.stopping, epoch, acc, seconds, elapsed, ddp)?;
        // The last epoch ends the run anyway: not an early stop.
        if epoch + 1 >= self.start.hyper.epochs {
            self.recipe.stop_reason = None;
        }
        Ok(())
    }

    fn model_info(&self, epoch: usize, val_acc: f64) -> ModelInfo {
        ModelInfo::new(self.start.arch.name, self.ds.classes.clone(), self.preprocess.clone(), epoch, Some(val_acc))
    }

    /// The first augmented batch, as the seed's `imshow(make_grid(...))`.
    fn batch_grid(&self, images: &[f32], labels: &[i64]) -> image::RgbImage {
        let labels: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
        let p = &self.preprocess;
        let h = &self.start.hyper;
        let caption = match h.pixel_augment.describe().as_str() {
            "none" => format!("training augmentation: {}", h.augment.describe()),
            pixel => format!("training augmentation: {} + {pixel}", h.augment.describe()),
        };
        plot::batch_grid(images, &labels, &self.ds.classes, p.crop_size, p.mean, p.std, &caption)
    }

    /// `val_predictions.png`: the validation images with their predictions, mistakes first.
    fn val_predictions(&self, predictions: &[Predicted]) -> image::RgbImage {
        let items: Vec<infer::gallery::Item> = predictions
            .iter()
            .map(|p| infer::gallery::Item {
                path: self.val_samples[p.sample].path.clone(),
                predicted: p.class,
                confidence: p.confidence,
                truth: Some(self.val_samples[p.sample].label),
            })
            .collect();
        infer::gallery::draw(&items, &self.ds.classes, &infer::gallery::Options::default())
    }

    fn elapsed(&self) -> f64 {
        self.prior_seconds + self.start.started.elapsed().as_secs_f64()
    }

    /// `last.pt`, `metrics.csv`, `curves.png` and `summary.json` after an epoch.
    fn save_progress(&self, epochs_done: usize, val_acc: f64) -> Result<(), TrainError> {
        let run_state = RunState {
            hyper: self.start.hyper.clone(),
            classes: self.ds.classes.clone(),
            epochs_done,
            best: self.best,
            history: self.history.clone(),
            elapsed_seconds: self.elapsed(),
            weights: self.weights_desc.clone(),
            data: Some(self.start.data.clone()),
            fingerprint: Some(self.ds.fingerprint()),
            world_size: self.replicated.as_ref().map(|r| r.ddp.world_size()),
            ema_history: self.recipe.ema_history.clone(),
        };
        let json = serde_json::to_string(&run_state).expect("run state serialises");
        let info = self.model_info(epochs_done, val_acc);
        let ema = self.recipe.ema.as_ref();
        checkpoint::save_last_with_ema(&self.out(LAST), self.model, &self.opt, ema, &info, &json)?;
        report::write_metrics(&self.out(METRICS), &self.history)?;
        report::write_curves(&self.out(CURVES), &self.history)?;
        report::write_summary(&self.out(SUMMARY), &self.summary(false))
    }

    fn summary(&self, interrupted: bool) -> Summary {
        let ds = self.ds;
        let outputs = OUTPUTS.iter().map(|f| self.out(f)).filter(|p| p.exists() || p.ends_with(SUMMARY)).collect();
        Summary {
            toolkit: checkpoint::TOOLKIT_NAME.to_string(),
            toolkit_version: env!("CARGO_PKG_VERSION").to_string(),
            data: ds.root.clone(),
            out: self.start.out.clone(),
            classes: ds.classes.clone(),
            train_counts: Dataset::counts(&ds.train, ds.classes.len()),
            val_counts: Dataset::counts(&ds.val, ds.classes.len()),
            split: ds.split.clone(),
            validation_folder: ds.layout.val_dir.clone(),
            skipped_files: ds.skipped.clone(),
            ignored_files: ds.ignored.total(),
            ignored_by_extension: ds.ignored.by_extension.clone(),
            incomplete_files: ds.incomplete.clone(),
            transparent_images: ds.transparent,
            blank_without_alpha: ds.blank_without_alpha.clone(),
            epochs_completed: self.history.len(),
            interrupted,
            best: self.best,
            total_seconds: self.elapsed(),
            process_seconds: self.start.started.elapsed().as_secs_f64(),
            device: self.start.device_desc.clone(),
            seed: self.start.hyper.seed,
            weights: self.weights_desc.clone(),
            hyperparameters: self.start.hyper.describe(),
            outputs,
            distributed: self.replicated.as_ref().map(|r| r.report(&self.start.hyper)),
            stopped_early: self.recipe.stop_reason.clone(),
            imbalance: self.recipe.imbalance.clone(),
            per_class_recall: self.recipe.recall.clone(),
            ema_history: self.recipe.ema_history.clone(),
            cleaning: self.recipe.cleaning.clone(),
            export: None,
        }
    }

    /// The data-cleaning report under the best model (see [`recipes::cleaning_report`]).
    fn cleaning_report(&self, obs: &mut dyn Observer) -> Result<Option<CleaningReport>, TrainError> {
        if self.start.hyper.cleaning.top_k == 0 {
            return Ok(None);
        }
        let best = ResNet::new(self.start.arch, self.ds.classes.len() as i64, self.start.device);
        best.load_state(&weights::read_state_dict(&self.out(BEST))?, false)?;
        if self.start.hyper.channels_last {
            best.to_channels_last();
        }
        let sets = [&self.val_samples, &self.train_samples];
        recipes::cleaning_report(
            &best,
            &self.start.hyper,
            &self.pass(),
            sets,
            &self.ds.classes,
            &self.start.out,
            self.history.len(),
            self.stop,
            obs,
        )
    }
}

/// A training phase's figures over every rank: the sums of what each added up.
fn job_stats(ddp: &Ddp, t: &Tally) -> Result<PhaseStats, TrainError> {
    let sums = ddp.sum(&[t.loss_sum, t.correct as f64, t.seen as f64, t.seconds], "adding up the training figures")?;
    let seen = sums[2].round() as usize;
    let tally =
        Tally { loss_sum: sums[0], correct: sums[1].round() as i64, seen, seconds: sums[3] / ddp.world_size() as f64 };
    Ok(tally.stats())
}

/// A line on where this rank's training time went to communication.
fn describe_comm(r: &DistReport) -> String {
    let sync_bn = if r.sync_bn { format!(", sync batch norm {:.2} s", r.sync_bn_seconds) } else { String::new() };
    format!(
        "communication: {:.1}% of {:.1} s of training waited on it (gradient all-reduce after backward {:.2} s, per-step sync {:.2} s{sync_bn}); gradient all-reduce busy {:.2} s, overlapping backward ({:.2} s)",
        100.0 * r.communication_share,
        r.train_seconds,
        r.allreduce_exposed_seconds,
        r.step_sync_seconds,
        r.allreduce_seconds,
        r.backward_seconds
    )
}

/// After the last epoch: the export (when asked and there is a best model), then the final
/// summary, which lists every output.
///
/// In a data-parallel job, the ranks leave the job here; rank 0 alone exports and writes.
fn finish(cfg: &TrainConfig, mut epochs: Epochs, obs: &mut dyn Observer) -> Result<Summary, TrainError> {
    let stopped_hard = epochs.interrupted && epochs.stop_level() >= 2;
    let main = epochs.is_main();
    let distributed = epochs.replicated.as_ref().map(|r| r.report(&epochs.start.hyper));
    drop(epochs.replicated.take());
    let mut failed = None;
    let export = match &cfg.export {
        Some(settings) if main && epochs.best.is_some() && !epochs.interrupted => {
            let quantize = settings.quantize.as_ref().map(|q| export::QuantizeOptions::from_dataset(epochs.ds, q));
            let opts = ExportOptions {
                probabilities: settings.probabilities,
                images: epochs.val_samples.iter().map(|s| s.path.clone()).collect(),
                quantize,
                ..Default::default()
            };
            // A failed export (an int8 model the gate refuses, say) still leaves a complete
            // summary of the training behind it.
            export::export_checkpoint(&epochs.out(BEST), &epochs.out(MODEL_ONNX), &opts)
                .map_err(|e| failed = Some(e))
                .ok()
        }
        _ => None,
    };
    // The report reads best.pt, which the export leaves as it is.
    // Not after a stop request: the user asked for the run to end. A failed report is told and
    // the summary still written.
    if main && !epochs.interrupted && epochs.stop_level() == 0 && epochs.best.is_some() {
        match epochs.cleaning_report(obs) {
            Ok(report) => epochs.recipe.cleaning = report,
            Err(e) => obs.warn(&format!("no data-cleaning report: {e}")),
        }
    }
    let mut summary = epochs.summary(epochs.interrupted);
    summary.distributed = distributed;
    summary.export = export;
    if main && !epochs.history.is_empty() {
        report::write_summary(&epochs.out(SUMMARY), &summary)?;
    }
    obs.finished(&summary);
    if let Some(e) = failed {
        return Err(e.into());
    }
    if stopped_hard {
        return Err(TrainError::Interrupted);
    }
    Ok(summary)
}
