//! One pass over a sample list, as a loop over batches that hands each to a step: the
//! [`TrainStep`] (forward, loss, backward, optimiser update; in a data-parallel job, with the
//! gradients averaged over the ranks) or the [`EvalStep`] (forward on a BatchNorm-folded
//! snapshot, recording each prediction). The loop keeps the running loss and accuracy and
//! reports progress, and a [`Gate`] decides around each batch whether to step and go on; the
//! steps know nothing of loading or reporting.

use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Reduction, Tensor};

use crate::amp::{self, AmpDtype};
use crate::config::{Mode, Observer, StopFlag};
use crate::dataset::Sample;
use crate::ddp::Ddp;
use crate::dist::{DistError, Reducer};
use crate::ema::Ema;
use crate::error::{ConfigError, TrainError};
use crate::loader::{Batch, Loader, Phase};
use crate::loss::CrossEntropy;
use crate::mix::Mixer;
use crate::model::{FoldedNet, ResNet};
use crate::optim::Optimizer;
use crate::report::PhaseStats;
use crate::schedule::LrSchedule;
use crate::shard::Visits;

/// What a step does with one batch: returns the batch's mean loss and the logits.
pub(crate) trait Step {
    fn step(&mut self, batch: &Batch, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor), TrainError>;
}

/// Dynamic loss scaling for float16 autocast (PyTorch's `GradScaler` rule).
pub(crate) struct GradScaler {
    scale: f64,
    good_steps: usize,
}

impl GradScaler {
    const GROWTH_INTERVAL: usize = 2000;

    pub fn new() -> GradScaler {
        GradScaler { scale: 65536.0, good_steps: 0 }
    }

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

/// Forward (on Mixup/CutMix-mixed images when asked), the loss, backward, an optimiser update
/// at the schedule's rate for this step, and the EMA's update.
pub(crate) struct TrainStep<'a> {
    pub model: &'a ResNet,
    pub opt: &'a mut Optimizer,
    pub scaler: &'a mut Option<GradScaler>,
    pub schedule: &'a LrSchedule,
    /// 0-based epoch, and the next step's index in it.
    pub epoch: usize,
    pub index: usize,
    /// The rate of the last step taken.
    pub last_lr: Option<f64>,
    pub mode: Mode,
    /// Only the classifier trains this epoch (`--freeze-epochs`).
    pub frozen: bool,
    pub amp: Option<AmpDtype>,
    pub loss: &'a CrossEntropy,
    /// The mixer and the seed its per-batch draws derive from.
    pub mixer: Option<(&'a Mixer, u64)>,
    pub ema: Option<&'a mut Ema>,
    /// In a data-parallel job: how the step keeps the replicas in step.
    pub replicas: Option<Replicas<'a>>,
}

/// What a training step of one rank of a data-parallel job needs besides the model.
pub(crate) struct Replicas<'a> {
    pub ddp: &'a Ddp,
    /// Averages the gradients over the ranks during backward.
    pub reducer: &'a mut Reducer,
    /// The optimiser's parameters, in its order: where the averaged gradients are taken from.
    pub params: &'a [Tensor],
    /// BatchNorm with every rank's batch statistics; otherwise rank 0's running statistics are
    /// broadcast before each step, as DDP's `broadcast_buffers` does.
    pub sync_bn: bool,
}

fn in_step(source: DistError) -> TrainError {
    TrainError::Distributed { during: "training step", source }
}

impl TrainStep<'_> {
    fn forward(&mut self, x: &Tensor) -> Result<Tensor, TrainError> {
        if self.frozen {
            return Ok(self.model.forward_frozen_backbone(x));
        }
        match (self.mode, &mut self.replicas) {
            (Mode::FeatureExtract, _) => Ok(self.model.forward_frozen_backbone(x)),
            (Mode::Finetune, None) => Ok(self.model.forward(x, true)),
            (Mode::Finetune, Some(r)) if r.sync_bn => self.model.forward_synced(x, r.ddp.group()).map_err(in_step),
            (Mode::Finetune, Some(r)) => {
                r.ddp.sync_buffers(self.model)?;
                Ok(self.model.forward(x, true))
            }
        }
    }
}

impl Step for TrainStep<'_> {
    fn step(&mut self, _batch: &Batch, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor), TrainError> {
        let (amp, device) = (self.amp, self.model.device);
        let lr = self.schedule.lr(self.epoch, self.index);
        if let Some(m) = self.schedule.momentum(self.epoch, self.index) {
            self.opt.set_momentum(m);
        }
        // One draw per batch from (seed, epoch, step): the same on every rank and on resumption.
        let mixed = match self.mixer {
            Some((mixer, seed)) => {
                let stream = ((self.epoch as u64) << 32) | self.index as u64;
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let (images, targets, _) = mixer.mix(x, y, &mut rng).map_err(ConfigError::from)?;
                Some((images, targets))
            }
            None => None,
        };
        let input = mixed.as_ref().map_or(x, |(images, _)| images);
        let logits = amp::autocast(amp, device, || self.forward(input))??;
        let loss = match &mixed {
            Some((_, targets)) => self.loss.soft(&logits, targets)?,
            None => self.loss.hard(&logits, y)?,
        };
        let grads = match (&mut self.replicas, &self.scaler) {
            (None, Some(s)) => self.opt.backward(&(&loss * s.scale))?,
            (None, None) => self.opt.backward(&loss)?,
            (Some(r), scaler) => {
                let loss = match scaler {
                    Some(s) => &loss * s.scale,
                    None => loss.shallow_clone(),
                };
                r.reducer.prepare_for_backward(std::slice::from_ref(&loss)).map_err(in_step)?;
                r.reducer.backward(&loss).map_err(in_step)?;
                r.reducer.take_grads(r.params).map_err(in_step)?
            }
        };
        match self.scaler {
            Some(s) => s.step(self.opt, grads, lr)?,
            None => self.opt.step(grads, lr)?,
        }
        if let Some(ema) = self.ema.as_deref_mut() {
            let step = ema.updates() + 1;
            ema.update(self.model, step).map_err(ConfigError::from)?;
        }
        self.index += 1;
        self.last_lr = Some(lr);
        Ok((loss.detach(), logits.detach()))
    }
}

/// One sample's prediction in an evaluation pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Predicted {
    /// Index into the evaluated sample list.
    pub sample: usize,
    pub class: usize,
    pub confidence: f32,
}

/// Evaluation on a BatchNorm-folded snapshot of the weights: the same logits up to rounding,
/// noticeably faster on the CPU. Keeps every prediction, and each sample's loss when asked.
pub(crate) struct EvalStep {
    net: FoldedNet,
    device: Device,
    amp: Option<AmpDtype>,
    pub predictions: Vec<Predicted>,
    /// Each prediction's cross-entropy, in the same order (with [`EvalStep::keeping_losses`]).
    pub losses: Option<Vec<f32>>,
}

impl EvalStep {
    pub fn new(model: &ResNet, amp: Option<AmpDtype>) -> Result<EvalStep, TrainError> {
        Ok(EvalStep { net: model.folded()?, device: model.device, amp, predictions: Vec::new(), losses: None })
    }

    /// Also keeps each sample's loss (for results gathered from several ranks).
    pub fn keeping_losses(mut self) -> EvalStep {
        self.losses = Some(Vec::new());
        self
    }
}

impl Step for EvalStep {
    fn step(&mut self, batch: &Batch, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor), TrainError> {
        let (loss, logits) = tch::no_grad(|| -> Result<_, TrainError> {
            let logits = amp::autocast(self.amp, self.device, || self.net.forward(x))?.to_kind(Kind::Float);
            Ok((logits.cross_entropy_for_logits(y), logits))
        })?;
        if let Some(losses) = &mut self.losses {
            let each = tch::no_grad(|| logits.f_cross_entropy_loss::<Tensor>(y, None, Reduction::None, -100, 0.0))?;
            losses.extend(Vec::<f32>::try_from(each.to_device(Device::Cpu))?);
        }
        let (confidence, class) = logits.softmax(-1, Kind::Float).max_dim(-1, false);
        let confidence = Vec::<f32>::try_from(confidence.to_device(Device::Cpu))?;
        let class = Vec::<i64>::try_from(class.to_device(Device::Cpu))?;
        for ((&sample, &class), &confidence) in batch.samples.iter().zip(&class).zip(&confidence) {
            self.predictions.push(Predicted { sample, class: class as usize, confidence });
        }
        Ok((loss, logits))
    }
}

/// Where a pass runs.
pub(crate) struct Pass<'a> {
    pub loader: &'a Arc<Loader>,
    pub device: Device,
    pub crop: i64,
    /// Batches in the channels-last layout (`Hyper::channels_last`).
    pub channels_last: bool,
}

/// What to do with the next batch.
pub(crate) enum Flow {
    Step,
    Skip,
    /// End the pass now (a second stop request).
    Stop,
}

/// Decides, around each batch of a pass, whether to step on it and whether to go on.
pub(crate) trait Gate {
    /// Before a batch; `empty` when none of its images loaded.
    fn before(&mut self, empty: bool) -> Result<Flow, TrainError>;
    /// After a step: whether to end the pass now.
    fn after(&mut self) -> bool;
}

/// A single process's gate: skips empty batches and, when `stops`, ends the pass after the
/// step during which a second stop request came.
pub(crate) struct LocalGate<'a> {
    pub stop: &'a StopFlag,
    pub stops: bool,
}

impl Gate for LocalGate<'_> {
    fn before(&mut self, empty: bool) -> Result<Flow, TrainError> {
        Ok(if empty { Flow::Skip } else { Flow::Step })
    }

    fn after(&mut self) -> bool {
        self.stops && self.stop.level() >= 2
    }
}

/// A rank's gate in a data-parallel job: before each batch the ranks agree on stop requests and
/// empty batches, so that all step, skip or stop together.
pub(crate) struct AgreedGate<'a> {
    pub ddp: &'a Ddp,
    pub stop: &'a StopFlag,
    /// The stop level agreed so far, raised by each agreement.
    pub agreed_stop: &'a mut usize,
}

impl Gate for AgreedGate<'_> {
    fn before(&mut self, empty: bool) -> Result<Flow, TrainError> {
        let agreed = self.ddp.agree(self.stop.level(), empty)?;
        *self.agreed_stop = (*self.agreed_stop).max(agreed.level());
        Ok(if agreed.stop_now {
            Flow::Stop
        } else if agreed.skip_batch {
            Flow::Skip
        } else {
            Flow::Step
        })
    }

    fn after(&mut self) -> bool {
        false
    }
}

/// What a pass added up.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Tally {
    pub loss_sum: f64,
    pub correct: i64,
    pub seen: usize,
    pub seconds: f64,
}

impl Tally {
    pub fn stats(&self) -> PhaseStats {
        match self.seen {
            0 => PhaseStats { loss: f64::NAN, acc: 0.0, images: 0, seconds: self.seconds },
            n => PhaseStats {
                loss: self.loss_sum / n as f64,
                acc: self.correct as f64 / n as f64,
                images: n,
                seconds: self.seconds,
            },
        }
    }
}

impl Pass<'_> {
    /// Host to device: on a GPU through pinned memory with a non-blocking copy, so the
    /// transfer overlaps the kernels already queued instead of stalling the host.
    fn upload(&self, t: Tensor) -> Tensor {
        match self.device {
            Device::Cuda(_) => t.pin_memory(self.device).to_device_(self.device, t.kind(), true, false),
            _ => t,
        }
    }

    /// One pass over `visits` of `samples` with `step`; `first_batch` sees the first batch
    /// stepped on. Returns `None` when `gate` ended the pass early.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        samples: &Arc<Vec<Sample>>,
        visits: Visits,
        phase: Phase,
        batch_size: usize,
        step: &mut dyn Step,
        gate: &mut dyn Gate,
        obs: &mut dyn Observer,
        first_batch: &mut dyn FnMut(&Batch),
    ) -> Result<Option<Tally>, TrainError> {
        let started = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0i64, 0usize);
        let mut first = true;
        for batch in self.loader.batches_of(Arc::clone(samples), phase, visits, batch_size) {
            for f in &batch.failed {
                obs.warn(&format!("skipped {}: {}", f.path.display(), f.reason));
            }
            match gate.before(batch.labels.is_empty())? {
                Flow::Step => {}
                Flow::Skip => continue,
                Flow::Stop => return Ok(None),
            }
            if std::mem::take(&mut first) {
                first_batch(&batch);
            }
            let n = batch.labels.len();
            let mut x = self.upload(Tensor::from_slice(&batch.images).view([n as i64, 3, self.crop, self.crop]));
            if self.channels_last {
                x = crate::model::channels_last(&x);
            }
            let y = self.upload(Tensor::from_slice(&batch.labels));
            let (loss, logits) = step.step(&batch, &x, &y)?;
            loss_sum += loss.double_value(&[]) * n as f64;
            correct += logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
            seen += n;
            obs.batch_done(seen, loss_sum / seen as f64, correct as f64 / seen as f64);
            if gate.after() {
                return Ok(None);
            }
        }
        Ok(Some(Tally { loss_sum, correct, seen, seconds: started.elapsed().as_secs_f64() }))
    }
}
