//! The training recipe's working parts during a run — the loss, the mixer, the per-step
//! schedule, the EMA and the early-stopping rules, built from [`Hyper`] and the data — and the
//! reports they add to a run: per-class recall, why a run stopped, and the data-cleaning
//! report after training. The trainer owns one [`RecipeParts`] and calls into it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::cleaning::{self, ImageLoss};
use crate::config::{Hyper, Observer, StopFlag, TOP_LOSSES, TOP_LOSSES_PNG};
use crate::dataset::{Dataset, Sample};
use crate::ddp::Ddp;
use crate::ema::Ema;
use crate::error::{ConfigError, TrainError};
use crate::loader::Phase;
use crate::loss::CrossEntropy;
use crate::mix::Mixer;
use crate::model::ResNet;
use crate::report::{self, CleaningReport, Confused, EmaRecord, EpochRecord};
use crate::sampler;
use crate::schedule::LrSchedule;
use crate::shard::Visits;
use crate::steps::{EvalStep, LocalGate, Pass, Predicted};
use crate::stopping::{self, StopSettings, Stopper};

/// Checks the recipe's settings, and the combinations that cannot run.
pub(crate) fn validate(h: &Hyper, distributed: bool) -> Result<(), ConfigError> {
    if !(16..=1024).contains(&h.image_size) {
        return Err(ConfigError::ImageSize(h.image_size));
    }
    h.pixel_augment.validate()?;
    h.mix.validate()?;
    if h.mix.label_smoothing != 0.0 {
        return Err(ConfigError::SmoothingTwice);
    }
    h.loss.validate()?;
    if let Some(e) = &h.ema {
        e.validate()?;
    }
    h.schedule.validate()?;
    h.finetune.validate()?;
    if h.finetune.freeze_epochs > 0 && h.finetune.freeze_epochs >= h.epochs {
        return Err(ConfigError::FreezeTooLong { freeze: h.finetune.freeze_epochs, epochs: h.epochs });
    }
    h.stopping.validate()?;
    // The EMA's evaluation and the frozen epochs' partial backward are not reduced over ranks.
    if distributed && h.ema.is_some() {
        return Err(ConfigError::NotDistributed { option: "--ema" });
    }
    if distributed && h.finetune.freeze_epochs > 0 {
        return Err(ConfigError::NotDistributed { option: "--freeze-epochs" });
    }
    Ok(())
}

/// What a run keeps of its recipe between epochs.
pub(crate) struct RecipeParts {
    pub loss: CrossEntropy,
    pub mixer: Option<Mixer>,
    pub schedule: LrSchedule,
    pub ema: Option<Ema>,
    /// The EMA weights' validation, epoch by epoch.
    pub ema_history: Vec<EmaRecord>,
    stopper: Stopper,
    /// Why the run stops before its last epoch, once decided.
    pub stop_reason: Option<String>,
    /// The scan's imbalance warning; per-class recall is reported when there is one.
    pub imbalance: Option<String>,
    /// The last epoch's per-class validation recall (with imbalanced classes).
    pub recall: Option<Vec<Option<f64>>>,
    pub cleaning: Option<CleaningReport>,
}

impl RecipeParts {
    /// The parts for `model` training on `ds`, continuing after `history` (a resumed run's
    /// epochs, whose EMA validation was `ema_history`).
    pub fn new(
        h: &Hyper,
        ds: &Dataset,
        model: &ResNet,
        steps_per_epoch: usize,
        history: &[EpochRecord],
        ema_history: Vec<EmaRecord>,
    ) -> Result<RecipeParts, TrainError> {
        let counts = Dataset::counts(&ds.train, ds.classes.len());
        let ema = match h.ema {
            Some(settings) => Some(Ema::new(settings, model).map_err(ConfigError::from)?),
            None => None,
        };
        // Patience and the epoch time carry over from the checkpoint's epochs.
        let mut stopper = Stopper::new(h.stopping);
        for r in history {
            let ema_acc = ema_history.iter().find(|e| e.epoch == r.epoch).map_or(f64::NEG_INFINITY, |e| e.val_acc);
            let seconds = r.train.seconds + r.val.seconds;
            let rec = stopping::EpochRecord { epoch: r.epoch - 1, val_acc: r.val.acc.max(ema_acc), seconds };
            let _ = stopper.should_stop(&rec, Duration::ZERO);
        }
        Ok(RecipeParts {
            loss: h.loss.build(&counts, model.device).map_err(ConfigError::from)?,
            mixer: match h.mix.enabled() {
                true => Some(Mixer::new(h.mix, ds.classes.len()).map_err(ConfigError::from)?),
                false => None,
            },
            schedule: LrSchedule::new(h.optim.clone(), h.schedule, steps_per_epoch).map_err(ConfigError::from)?,
            ema,
            ema_history,
            stopper,
            stop_reason: None,
            imbalance: sampler::imbalance_warning(&counts, &ds.classes),
            recall: None,
            cleaning: None,
        })
    }

    /// Per-class recall of a validation pass, kept when the classes are imbalanced.
    pub fn record_recall(&mut self, predictions: &[Predicted], val: &[Sample], classes: usize) {
        if self.imbalance.is_some() {
            let truth: Vec<usize> = predictions.iter().map(|p| val[p.sample].label).collect();
            let predicted: Vec<usize> = predictions.iter().map(|p| p.class).collect();
            self.recall = Some(sampler::per_class_recall(&truth, &predicted, classes));
        }
    }

    /// `--patience` and `--time-limit` after epoch `epoch` (0-based) of `seconds`, whose best
    /// validation accuracy (raw or EMA) was `acc`: records the reason to stop, if any. The ranks
    /// of a data-parallel job agree, since their clocks differ.
    pub fn decide_stop(
        &mut self,
        settings: &StopSettings,
        epoch: usize,
        acc: f64,
        seconds: f64,
        elapsed: Duration,
        ddp: Option<&Ddp>,
    ) -> Result<(), TrainError> {
        if settings.patience.is_none() && settings.time_limit.is_none() {
            return Ok(());
        }
        let rec = stopping::EpochRecord { epoch, val_acc: acc, seconds };
        let mut reason = self.stopper.should_stop(&rec, elapsed).map(|r| r.to_string());
        if let Some(ddp) = ddp {
            let votes = ddp.sum(&[f64::from(u8::from(reason.is_some()))], "agreeing on an early stop")?[0];
            if votes > 0.0 && reason.is_none() {
                reason = Some("stopped at the time limit of another rank".to_string());
            }
        }
        self.stop_reason = reason;
        Ok(())
    }
}

/// `per-class recall: ants 0.90, bees 0.50 (balanced accuracy 0.7000)`.
pub(crate) fn describe_recall(recall: &[Option<f64>], classes: &[String]) -> String {
    let each: Vec<String> = classes
        .iter()
        .zip(recall)
        .map(|(c, r)| match r {
            Some(r) => format!("{c} {r:.2}"),
            None => format!("{c} -"),
        })
        .collect();
    let balanced = sampler::balanced_accuracy(recall).map_or(String::new(), |b| format!(" (balanced accuracy {b:.4})"));
    format!("per-class recall: {}{balanced}", each.join(", "))
}

/// The data-cleaning report under `best`: every image of `sets` (validation, then training)
/// evaluated with the deployment transform, the `top_k` highest losses written to
/// `top_losses.csv` and `top_losses.png` in `out`, and the validation set's most confused class
/// pairs (the picture also to the observer, after epoch `epochs_done`). `None` when the report is off or a second stop request cut it short.
#[allow(clippy::too_many_arguments)]
pub(crate) fn cleaning_report(
    best: &ResNet,
    h: &Hyper,
    pass: &Pass<'_>,
    sets: [&Arc<Vec<Sample>>; 2],
    classes: &[String],
    out: &Path,
    epochs_done: usize,
    stop: &StopFlag,
    obs: &mut dyn Observer,
) -> Result<Option<CleaningReport>, TrainError> {
    let settings = h.cleaning;
    if settings.top_k == 0 {
        return Ok(None);
    }
    let n = classes.len();
    let mut items = Vec::new();
    let mut confusion = vec![vec![0usize; n]; n];
    for (k, samples) in sets.into_iter().enumerate() {
        let validation = k == 0;
        let name = if validation { "clean val" } else { "clean train" };
        obs.phase_start(h.epochs, h.epochs, name, samples.len());
        let mut eval = EvalStep::new(best, h.autocast())?.keeping_losses();
        let mut gate = LocalGate { stop, stops: true };
        let visits = Visits::all((0..samples.len()).collect());
        let tally =
            pass.run(samples, visits, Phase::Eval, h.eval_batch_size, &mut eval, &mut gate, obs, &mut |_| {})?;
        let Some(tally) = tally else { return Ok(None) };
        obs.phase_end(&tally.stats());
        for (p, loss) in eval.predictions.iter().zip(eval.losses.unwrap_or_default()) {
            let sample = &samples[p.sample];
            if validation && sample.label < n && p.class < n {
                confusion[sample.label][p.class] += 1;
            }
            items.push(ImageLoss {
                sample: p.sample,
                path: sample.path.clone(),
                label: sample.label,
                predicted: p.class,
                confidence: p.confidence,
                loss: f64::from(loss),
            });
        }
    }
    let top = cleaning::top_losses(&items, settings.top_k);
    let csv = out.join(TOP_LOSSES);
    cleaning::write_top_losses_csv(&csv, &top, classes)
        .map_err(|source| TrainError::Write { path: csv.clone(), source })?;
    let picture = cleaning::top_losses_picture(&top, classes, 128, 8);
    report::write_png(&out.join(TOP_LOSSES_PNG), &picture)?;
    obs.picture("top_losses", epochs_done, &picture);
    let pairs = cleaning::most_confused(&confusion, settings.min_confused);
    let most_confused: Vec<Confused> = pairs
        .iter()
        .map(|p| Confused {
            actual: classes[p.actual].clone(),
            predicted: classes[p.predicted].clone(),
            count: p.count,
        })
        .collect();
    let shown = cleaning::describe_confused(&pairs[..pairs.len().min(3)], classes);
    obs.info(&format!(
        "data cleaning: the {} highest-loss of {} images under the best model in {TOP_LOSSES} and {TOP_LOSSES_PNG}{}",
        top.len(),
        items.len(),
        if shown.is_empty() { String::new() } else { format!("; most confused: {}", shown.join(", ")) }
    ));
    Ok(Some(CleaningReport { top_losses: csv, images_ranked: items.len(), most_confused }))
}
