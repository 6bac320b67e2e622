//! One pass over a sample list, as a loop over batches that hands each to a step: the
//! [`TrainStep`] (forward, loss, backward, optimiser update) or the [`EvalStep`] (forward on a
//! BatchNorm-folded snapshot, recording each prediction). The loop keeps the running loss and
//! accuracy and reports progress; the steps know nothing of loading or reporting.

use std::sync::Arc;
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use crate::amp::{self, AmpDtype};
use crate::config::{Mode, Observer, StopFlag};
use crate::dataset::Sample;
use crate::error::TrainError;
use crate::loader::{Batch, Loader, Phase};
use crate::model::{FoldedNet, ResNet};
use crate::optim::Optimizer;
use crate::report::PhaseStats;

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

/// Forward, cross-entropy loss, backward and an optimiser update.
pub(crate) struct TrainStep<'a> {
    pub model: &'a ResNet,
    pub opt: &'a mut Optimizer,
    pub scaler: &'a mut Option<GradScaler>,
    pub lr: f64,
    pub mode: Mode,
    pub amp: Option<AmpDtype>,
}

impl Step for TrainStep<'_> {
    fn step(&mut self, _batch: &Batch, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor), TrainError> {
        let logits = amp::autocast(self.amp, || match self.mode {
            Mode::Finetune => self.model.forward(x, true),
            Mode::FeatureExtract => self.model.forward_frozen_backbone(x),
        })?;
        let loss = logits.to_kind(Kind::Float).cross_entropy_for_logits(y);
        match self.scaler {
            Some(s) => {
                let grads = self.opt.backward(&(&loss * s.scale))?;
                s.step(self.opt, grads, self.lr)?;
            }
            None => {
                let grads = self.opt.backward(&loss)?;
                self.opt.step(grads, self.lr)?;
            }
        }
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
/// noticeably faster on the CPU. Keeps every prediction.
pub(crate) struct EvalStep {
    net: FoldedNet,
    amp: Option<AmpDtype>,
    pub predictions: Vec<Predicted>,
}

impl EvalStep {
    pub fn new(model: &ResNet, amp: Option<AmpDtype>) -> Result<EvalStep, TrainError> {
        Ok(EvalStep { net: model.folded()?, amp, predictions: Vec::new() })
    }
}

impl Step for EvalStep {
    fn step(&mut self, batch: &Batch, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor), TrainError> {
        let (loss, logits) = tch::no_grad(|| -> Result<_, TrainError> {
            let logits = amp::autocast(self.amp, || self.net.forward(x))?.to_kind(Kind::Float);
            Ok((logits.cross_entropy_for_logits(y), logits))
        })?;
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
    pub stop: &'a StopFlag,
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

    /// One pass over `samples` with `step`; `first_batch` sees the first batch. Returns `None`
    /// when a second stop request cut the pass short.
    pub fn run(
        &self,
        samples: &Arc<Vec<Sample>>,
        phase: Phase,
        batch_size: usize,
        step: &mut dyn Step,
        obs: &mut dyn Observer,
        first_batch: &mut dyn FnMut(&Batch),
    ) -> Result<Option<PhaseStats>, TrainError> {
        let started = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0i64, 0usize);
        let mut first = true;
        for batch in self.loader.batches(Arc::clone(samples), phase, batch_size) {
            for f in &batch.failed {
                obs.warn(&format!("skipped {}: {}", f.path.display(), f.reason));
            }
            if batch.labels.is_empty() {
                continue;
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
            if self.stop.level() >= 2 {
                return Ok(None);
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let stats = match seen {
            0 => PhaseStats { loss: f64::NAN, acc: 0.0, images: 0, seconds },
            _ => PhaseStats { loss: loss_sum / seen as f64, acc: correct as f64 / seen as f64, images: seen, seconds },
        };
        obs.phase_end(&stats);
        Ok(Some(stats))
    }
}
