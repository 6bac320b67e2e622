//! `train lr-find`: the learning-rate range test as a run of its own. It starts as a training
//! run does (same data, starting weights, loss, augmentation and mixing), then takes one
//! optimiser step per batch at the rates of [`LrFinder`], writes the loss-against-rate picture
//! and suggests a rate. The checkpoint files of a training run are not touched.

use std::path::PathBuf;
use std::sync::Arc;

use tch::Tensor;

use crate::config::{Mode, Observer, StopFlag, TrainConfig, LR_FIND_PNG};
use crate::dataset::Dataset;
use crate::error::{ConfigError, TrainError};
use crate::loader::{Loader, Phase};
use crate::lr_find::{LrFindSettings, LrFinder, Suggestion, Verdict};
use crate::mix::Mixer;
use crate::optim::{OptimConfig, Optimizer, ScheduleKind};
use crate::report;
use crate::schedule::{LrSchedule, ScheduleSettings};
use crate::steps::{GradScaler, Step, TrainStep};
use crate::trainer;

/// What a sweep found.
#[derive(Debug, Clone)]
pub struct LrFindReport {
    /// Steps taken (fewer than asked when the loss diverged).
    pub steps: usize,
    /// Why the sweep ended.
    pub ended: Verdict,
    pub suggestion: Option<Suggestion>,
    /// `lr_find.png` in the output folder.
    pub picture: PathBuf,
}

impl LrFindReport {
    /// `--lr 3.0e-3`: the flag to pass to `train`.
    pub fn flag(&self) -> Option<String> {
        self.suggestion.map(|s| format!("--lr {:.1e}", s.lr))
    }
}

/// Runs the sweep for the run `cfg` describes (not resumable, not distributed).
pub fn lr_find(
    cfg: &TrainConfig,
    settings: LrFindSettings,
    obs: &mut dyn Observer,
    stop: &StopFlag,
) -> Result<LrFindReport, TrainError> {
    if cfg.distributed.is_some() {
        return Err(ConfigError::NotDistributed { option: "lr-find" }.into());
    }
    if cfg.resume.is_some() {
        return Err(ConfigError::LrFindResume.into());
    }
    let mut finder = LrFinder::new(settings).map_err(ConfigError::from)?;
    let start = trainer::start(cfg, obs)?;
    let ds = trainer::read_data(&start, obs)?;
    let (model, _) = trainer::build_model(cfg, &start, &ds, None, obs)?;
    let h = &start.hyper;
    let mut opt = Optimizer::new(h.optim.clone(), model.trainable(h.mode == Mode::FeatureExtract));
    if h.finetune.layer_lr_decay != 1.0 {
        let scales = h.finetune.lr_scales(&opt.param_names());
        opt.set_lr_scales(scales).map_err(ConfigError::from)?;
    }
    let counts = Dataset::counts(&ds.train, ds.classes.len());
    let loss = h.loss.build(&counts, start.device).map_err(ConfigError::from)?;
    let mixer = match h.mix.enabled() {
        true => Some(Mixer::new(h.mix, ds.classes.len()).map_err(ConfigError::from)?),
        false => None,
    };
    let preprocess = h.preprocess();
    let loader = Loader::new(preprocess.clone(), h.augment, cfg.workers, cfg.prefetch, h.seed)?
        .with_pixel_augment(h.pixel_augment)?;
    let loader = Arc::new(loader);
    let samples = Arc::new(ds.train.clone());
    let crop = i64::from(preprocess.crop_size);
    // Float16 on CUDA needs loss scaling here as in training, or small gradients vanish.
    let mut scaler = h.autocast().filter(|d| d.needs_loss_scaling()).map(|_| GradScaler::new());
    obs.info(&format!(
        "lr-find: up to {} steps, learning rate {:e} to {:e}",
        settings.num_steps, settings.start_lr, settings.end_lr
    ));
    obs.phase_start(1, 1, "lr-find", settings.num_steps);
    let (mut step_no, mut ended, mut epoch) = (0usize, Verdict::Continue, 0usize);
    'sweep: while ended == Verdict::Continue {
        let before = step_no;
        for batch in loader.batches(Arc::clone(&samples), Phase::Train { epoch }, h.batch_size) {
            if batch.labels.is_empty() {
                continue;
            }
            if stop.level() > 0 {
                // Ctrl-C: the picture and suggestion of the steps so far.
                break 'sweep;
            }
            let n = batch.labels.len() as i64;
            let mut x = Tensor::from_slice(&batch.images).view([n, 3, crop, crop]).to_device(start.device);
            if h.channels_last {
                x = crate::model::channels_last(&x);
            }
            let y = Tensor::from_slice(&batch.labels).to_device(start.device);
            // A constant schedule at this step's rate: the step's own warm-up and decay are off.
            let optim = OptimConfig { lr: finder.lr(step_no), schedule: ScheduleKind::Constant, ..h.optim.clone() };
            let schedule = LrSchedule::new(optim, ScheduleSettings::default(), 1).map_err(ConfigError::from)?;
            let mut step = TrainStep {
                model: &model,
                opt: &mut opt,
                scaler: &mut scaler,
                schedule: &schedule,
                epoch: step_no,
                index: 0,
                last_lr: None,
                mode: h.mode,
                frozen: false,
                amp: h.autocast(),
                loss: &loss,
                mixer: mixer.as_ref().map(|m| (m, h.seed)),
                ema: None,
                replicas: None,
            };
            let (batch_loss, _) = step.step(&batch, &x, &y)?;
            ended = finder.record(batch_loss.double_value(&[]));
            step_no += 1;
            obs.batch_done(step_no, batch_loss.double_value(&[]), 0.0);
            if ended != Verdict::Continue {
                break 'sweep;
            }
        }
        if step_no == before {
            break;
        }
        epoch += 1;
    }
    let picture = start.out.join(LR_FIND_PNG);
    std::fs::create_dir_all(&start.out).map_err(|source| TrainError::Write { path: start.out.clone(), source })?;
    report::write_png(&picture, &finder.plot())?;
    Ok(LrFindReport { steps: step_no, ended, suggestion: finder.suggestion(), picture })
}
