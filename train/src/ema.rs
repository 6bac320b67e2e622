//! An exponential moving average of the model's weights, as timm's `ModelEmaV3`: a second
//! [`ResNet`] on the same device holds the averages of every floating-point entry of the state
//! dict — parameters and BatchNorm running statistics alike — and copies the integer ones
//! (`num_batches_tracked`). Each optimiser step, under `no_grad`:
//!
//! ```text
//! ema_v.lerp_(model_v, weight=1 - decay)      # ema = decay·ema + (1 − decay)·model
//! ```
//!
//! with timm's `get_decay(step)`:
//!
//! ```text
//! step = max(0, step - update_after_step - 1)
//! if step <= 0: return 0.0                    # the first update copies the model
//! if use_warmup:
//!     decay = 1 - (1 + step / warmup_gamma) ** -warmup_power
//!     decay = max(min(decay, self.decay), min_decay)
//! else:
//!     decay = self.decay
//! ```
//!
//! Of the two warm-ups the brief allowed this uses timm V3's power law (`use_warmup`), on by
//! default with power 3/4 — timm's advice for runs of thousands rather than millions of steps:
//! fine-tuning runs are short, and a plain 0.9998 would leave the average near the pretrained
//! weights for the whole run (decay 0.95 after 50 steps, 0.99 after 460, 0.9998 after 85 000).
//!
//! Evaluate the averaged weights with [`Ema::model`] (e.g. `EvalStep::new(ema.model(), amp)`),
//! save them with [`Ema::state`].

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};
use thiserror::Error;

use crate::error::WeightsError;
use crate::model::ResNet;

/// EMA settings that cannot be used, or a model that does not fit.
#[derive(Debug, Error)]
pub enum EmaError {
    #[error("--ema-decay must be in [0, 1), got {0}")]
    Decay(f64),
    #[error("EMA warm-up: gamma and power must be positive, got {gamma} and {power}")]
    Warmup { gamma: f64, power: f64 },
    #[error("the EMA was made for {ema} ({ema_classes} classes), not {model} ({model_classes} classes)")]
    Mismatch { ema: String, ema_classes: i64, model: String, model_classes: i64 },
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// timm's `ModelEmaV3(decay, min_decay, update_after_step, use_warmup, warmup_gamma,
/// warmup_power, exclude_buffers)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EmaSettings {
    /// The decay after warm-up (timm's training script: 0.9998).
    pub decay: f64,
    /// Lower bound of the warmed-up decay.
    pub min_decay: f64,
    /// Steps before averaging starts (the EMA copies the model until then).
    pub update_after_step: u64,
    /// timm's `use_warmup`: `decay = 1 − (1 + step/γ)^−power`, capped at `decay`.
    pub warmup: bool,
    pub warmup_gamma: f64,
    pub warmup_power: f64,
    /// Average only the parameters and copy the buffers (BatchNorm statistics) as they are.
    pub exclude_buffers: bool,
}

impl Default for EmaSettings {
    /// Decay 0.9998 with the power-3/4 warm-up, buffers averaged too.
    fn default() -> Self {
        EmaSettings {
            decay: 0.9998,
            min_decay: 0.0,
            update_after_step: 0,
            warmup: true,
            warmup_gamma: 1.0,
            warmup_power: 0.75,
            exclude_buffers: false,
        }
    }
}

impl EmaSettings {
    pub fn validate(&self) -> Result<(), EmaError> {
        if !(0.0..1.0).contains(&self.decay) || !(0.0..1.0).contains(&self.min_decay) {
            return Err(EmaError::Decay(self.decay));
        }
        if !(self.warmup_gamma > 0.0 && self.warmup_power > 0.0) {
            return Err(EmaError::Warmup { gamma: self.warmup_gamma, power: self.warmup_power });
        }
        Ok(())
    }

    /// timm's `get_decay(step)` (`step` counts optimiser steps from 1).
    pub fn decay_at(&self, step: u64) -> f64 {
        let step = step.saturating_sub(self.update_after_step + 1);
        if step == 0 {
            return 0.0;
        }
        if self.warmup {
            let d = 1.0 - (1.0 + step as f64 / self.warmup_gamma).powf(-self.warmup_power);
            d.min(self.decay).max(self.min_decay)
        } else {
            self.decay
        }
    }
}

/// The averaged model.
pub struct Ema {
    settings: EmaSettings,
    model: ResNet,
    updates: u64,
}

impl Ema {
    /// A copy of `source` (timm's `deepcopy(model)`) on its device, with its memory layout.
    /// Building the copy draws its throw-away initial weights from libtorch's global generator.
    pub fn new(settings: EmaSettings, source: &ResNet) -> Result<Ema, EmaError> {
        settings.validate()?;
        let model = ResNet::new(source.arch, source.num_classes, source.device);
        let first = &source.entries()[0].tensor;
        if first.dim() == 4 && first.size()[1] > 1 && first.stride()[1] == 1 {
            model.to_channels_last();
        }
        let ema = Ema { settings, model, updates: 0 };
        ema.copy_from(source)?;
        Ok(ema)
    }

    pub fn settings(&self) -> &EmaSettings {
        &self.settings
    }

    /// The averaged weights as a model, for evaluation and export.
    pub fn model(&self) -> &ResNet {
        &self.model
    }

    /// Updates made so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    fn check(&self, source: &ResNet) -> Result<(), EmaError> {
        if source.arch.name != self.model.arch.name || source.num_classes != self.model.num_classes {
            return Err(EmaError::Mismatch {
                ema: self.model.arch.name.to_string(),
                ema_classes: self.model.num_classes,
                model: source.arch.name.to_string(),
                model_classes: source.num_classes,
            });
        }
        Ok(())
    }

    /// timm's `set`: the EMA becomes a copy of `source`.
    pub fn copy_from(&self, source: &ResNet) -> Result<(), EmaError> {
        self.check(source)?;
        tch::no_grad(|| -> Result<(), EmaError> {
            for (e, s) in self.model.entries().iter().zip(source.entries()) {
                e.tensor.shallow_clone().f_copy_(&s.tensor)?;
            }
            Ok(())
        })
    }

    /// One update after optimiser step `step` (1 for the first): every floating-point entry
    /// (only the trainable ones with `exclude_buffers`) moves toward `source`'s by `1 − decay`,
    /// the others are copied. Returns the decay used.
    pub fn update(&mut self, source: &ResNet, step: u64) -> Result<f64, EmaError> {
        self.check(source)?;
        let decay = self.settings.decay_at(step);
        let exclude_buffers = self.settings.exclude_buffers;
        tch::no_grad(|| -> Result<(), EmaError> {
            for (e, s) in self.model.entries().iter().zip(source.entries()) {
                let mut dst = e.tensor.shallow_clone();
                let floating = matches!(e.tensor.kind(), Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16);
                if floating && (e.trainable || !exclude_buffers) {
                    let _ = dst.f_lerp_(&s.tensor, 1.0 - decay)?;
                } else {
                    dst.f_copy_(&s.tensor)?;
                }
            }
            Ok(())
        })?;
        self.updates += 1;
        Ok(decay)
    }

    /// A CPU copy of the averaged state dict (torchvision names), to save.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.model.state()
    }

    /// Restores a saved average (resuming a run); `updates` is the count saved with it.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, updates: u64) -> Result<(), EmaError> {
        self.model.load_state(state, false)?;
        self.updates = updates;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::by_name;
    use tch::Device;

    fn model() -> ResNet {
        ResNet::new(by_name("resnet18").unwrap(), 3, Device::Cpu)
    }

    #[test]
    fn decay_schedule_is_timms() {
        let s = EmaSettings { warmup: false, ..Default::default() };
        assert_eq!(s.decay_at(0), 0.0);
        assert_eq!(s.decay_at(1), 0.0, "the first update copies");
        assert_eq!(s.decay_at(2), 0.9998);
        let w = EmaSettings::default();
        // step 10 → 9 after the offset: 1 − 10^(−3/4)
        assert!((w.decay_at(10) - (1.0 - 10f64.powf(-0.75))).abs() < 1e-15);
        assert_eq!(w.decay_at(100_000_000), 0.9998, "capped at decay");
        let late = EmaSettings { update_after_step: 5, ..w };
        assert_eq!(late.decay_at(6), 0.0);
        assert!(late.decay_at(7) > 0.0);
        let floor = EmaSettings { min_decay: 0.5, ..w };
        assert_eq!(floor.decay_at(2), 0.5);
        assert!(EmaSettings { decay: 1.0, ..w }.validate().is_err());
        assert!(EmaSettings { warmup_power: 0.0, ..w }.validate().is_err());
    }

    #[test]
    fn update_rule() {
        let src = model();
        let mut ema = Ema::new(EmaSettings { warmup: false, decay: 0.9, ..Default::default() }, &src).unwrap();
        for (a, b) in ema.model().entries().iter().zip(src.entries()) {
            assert!(a.tensor.equal(&b.tensor), "{} copied", a.name);
        }
        // Move the source: every float entry + 1 (BatchNorm statistics too), the counters + 3.
        tch::no_grad(|| {
            for e in src.entries() {
                let mut t = e.tensor.shallow_clone();
                let _ = if t.kind() == Kind::Int64 { t.g_add_scalar_(3) } else { t.g_add_scalar_(1.0) };
            }
        });
        assert_eq!(ema.update(&src, 1).unwrap(), 0.0, "step 1 copies");
        assert!(ema.model().entries()[0].tensor.equal(&src.entries()[0].tensor));
        ema.copy_from(&src).unwrap();
        let copied: Vec<Tensor> = ema.model().entries().iter().map(|e| e.tensor.detach().copy()).collect();
        tch::no_grad(|| {
            for e in src.entries().iter().filter(|e| e.tensor.kind() == Kind::Float) {
                let _ = e.tensor.shallow_clone().g_mul_scalar_(2.0);
            }
        });
        let d = ema.update(&src, 2).unwrap();
        assert_eq!(d, 0.9);
        for ((e, s), old) in ema.model().entries().iter().zip(src.entries()).zip(&copied) {
            if e.tensor.kind() == Kind::Float {
                let want = old * 0.9 + &s.tensor * 0.1;
                let diff = (&e.tensor - want).abs().max().double_value(&[]);
                assert!(diff < 1e-5, "{}: {diff}", e.name);
            } else {
                assert!(e.tensor.equal(&s.tensor), "{} copied", e.name);
            }
        }
        assert_eq!(ema.updates(), 2);
    }

    #[test]
    fn buffers_can_be_excluded_and_models_must_match() {
        let src = model();
        let settings = EmaSettings { warmup: false, decay: 0.5, exclude_buffers: true, ..Default::default() };
        let mut ema = Ema::new(settings, &src).unwrap();
        tch::no_grad(|| {
            for e in src.entries() {
                let mut t = e.tensor.shallow_clone();
                let _ = if t.kind() == Kind::Int64 { t.g_add_scalar_(2) } else { t.g_add_scalar_(1.0) };
            }
        });
        let old: Vec<Tensor> = ema.model().entries().iter().map(|e| e.tensor.detach().copy()).collect();
        ema.update(&src, 2).unwrap();
        for ((e, s), o) in ema.model().entries().iter().zip(src.entries()).zip(&old) {
            if e.trainable {
                let diff = (&e.tensor - (o + 0.5)).abs().max().double_value(&[]);
                assert!(diff < 1e-5, "{} averaged", e.name);
            } else {
                assert!(e.tensor.equal(&s.tensor), "{} copied", e.name);
            }
        }
        let other = ResNet::new(by_name("resnet18").unwrap(), 5, Device::Cpu);
        assert!(matches!(ema.update(&other, 3), Err(EmaError::Mismatch { .. })));
        // The averaged model evaluates, and its state saves with torchvision's names.
        let x = Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu));
        assert_eq!(tch::no_grad(|| ema.model().forward(&x, false)).size(), [1, 3]);
        let state = ema.state();
        assert_eq!(state[0].0, "conv1.weight");
        let map: HashMap<String, Tensor> = state.into_iter().collect();
        ema.load_state(&map, 7).unwrap();
        assert_eq!(ema.updates(), 7);
    }
}
