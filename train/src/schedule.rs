//! Learning-rate recipes computed per optimiser step:
//!
//! * a linear warm-up (`--warmup-epochs W`) as timm's schedulers do it per update: from
//!   `warmup_lr_init` to the base rate over the first `W · steps_per_epoch` steps
//!   (`lr = warmup_lr_init + t · (base − warmup_lr_init) / warmup_t`), then the epoch schedule of
//!   [`OptimConfig::lr_at`] as if there had been no warm-up (timm's `warmup_prefix=False`);
//! * PyTorch's `OneCycleLR` (cosine or linear annealing, `pct_start`, `div_factor`,
//!   `final_div_factor`, optional three phases, momentum cycling), per step;
//! * fastai's fine-tuning pattern: `--freeze-epochs N` (only the classifier trains for N epochs,
//!   then everything) and `--layer-lr-decay D` (per-layer-group rates: `fc` at lr, `layer4` at
//!   lr·D, `layer3` lr·D², `layer2` lr·D³, `layer1` lr·D⁴, the stem `conv1`/`bn1` lr·D⁵),
//!   applied through [`crate::optim::Optimizer::set_lr_scales`].

use std::f64::consts::PI;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::optim::OptimConfig;

/// Schedule settings that cannot be used.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ScheduleError {
    #[error("--warmup-epochs must be finite and >= 0, got {0}")]
    WarmupEpochs(f64),
    #[error("--warmup-lr must be finite and >= 0, got {0}")]
    WarmupLr(f64),
    #[error("one-cycle: {0}")]
    OneCycle(String),
    #[error("--layer-lr-decay must be in (0, 1], got {0}")]
    LayerDecay(f64),
    #[error("--warmup-epochs and --one-cycle both warm up; use one of them")]
    WarmupAndOneCycle,
    #[error("a schedule needs at least one step per epoch")]
    NoSteps,
}

/// Annealing of [`OneCycle`], as `anneal_strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Anneal {
    #[default]
    Cos,
    Linear,
}

impl Anneal {
    /// `_annealing_cos` / `_annealing_linear` from `start` to `end` as `pct` goes 0 → 1.
    fn at(self, start: f64, end: f64, pct: f64) -> f64 {
        match self {
            Anneal::Cos => {
                let cos_out = (PI * pct).cos() + 1.0;
                end + (start - end) / 2.0 * cos_out
            }
            Anneal::Linear => (end - start) * pct + start,
        }
    }
}

/// `torch.optim.lr_scheduler.OneCycleLR` settings (its defaults), without the step count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OneCycleSettings {
    /// Fraction of the steps spent increasing the rate.
    pub pct_start: f64,
    pub anneal: Anneal,
    /// Cycle the momentum (SGD) or β₁ (AdamW) inversely to the rate.
    pub cycle_momentum: bool,
    pub base_momentum: f64,
    pub max_momentum: f64,
    /// `initial_lr = max_lr / div_factor`.
    pub div_factor: f64,
    /// `min_lr = initial_lr / final_div_factor`.
    pub final_div_factor: f64,
    pub three_phase: bool,
}

impl Default for OneCycleSettings {
    fn default() -> Self {
        OneCycleSettings {
            pct_start: 0.3,
            anneal: Anneal::Cos,
            cycle_momentum: true,
            base_momentum: 0.85,
            max_momentum: 0.95,
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: false,
        }
    }
}

impl OneCycleSettings {
    pub fn validate(&self) -> Result<(), ScheduleError> {
        let bad = |m: String| Err(ScheduleError::OneCycle(m));
        if !(0.0..=1.0).contains(&self.pct_start) {
            return bad(format!("pct_start {} not in [0, 1]", self.pct_start));
        }
        if !(self.div_factor > 0.0 && self.final_div_factor > 0.0) {
            return bad(format!("div factors {} and {} must be positive", self.div_factor, self.final_div_factor));
        }
        let momentum_ok = (0.0..1.0).contains(&self.base_momentum) && (0.0..1.0).contains(&self.max_momentum);
        if self.cycle_momentum && !momentum_ok {
            return bad(format!("momenta {} and {} not in [0, 1)", self.base_momentum, self.max_momentum));
        }
        Ok(())
    }
}

/// One phase of the cycle: up to `end_step`, from `start` to `end` of rate and momentum.
#[derive(Debug, Clone, Copy)]
struct Phase {
    end_step: f64,
    lr: (f64, f64),
    momentum: (f64, f64),
}

/// `OneCycleLR(optimizer, max_lr, total_steps, ...)` for one parameter group.
#[derive(Debug, Clone, PartialEq)]
pub struct OneCycle {
    pub settings: OneCycleSettings,
    pub max_lr: f64,
    pub total_steps: usize,
}

impl OneCycle {
    pub fn new(settings: OneCycleSettings, max_lr: f64, total_steps: usize) -> Result<OneCycle, ScheduleError> {
        settings.validate()?;
        if total_steps == 0 {
            return Err(ScheduleError::NoSteps);
        }
        if !(max_lr.is_finite() && max_lr > 0.0) {
            return Err(ScheduleError::OneCycle(format!("max_lr {max_lr} must be positive")));
        }
        Ok(OneCycle { settings, max_lr, total_steps })
    }

    fn phases(&self) -> Vec<Phase> {
        let s = &self.settings;
        let total = self.total_steps as f64;
        let initial = self.max_lr / s.div_factor;
        let min = initial / s.final_div_factor;
        let (max_m, base_m) = (s.max_momentum, s.base_momentum);
        if s.three_phase {
            vec![
                Phase { end_step: s.pct_start * total - 1.0, lr: (initial, self.max_lr), momentum: (max_m, base_m) },
                Phase {
                    end_step: 2.0 * s.pct_start * total - 2.0,
                    lr: (self.max_lr, initial),
                    momentum: (base_m, max_m),
                },
                Phase { end_step: total - 1.0, lr: (initial, min), momentum: (max_m, max_m) },
            ]
        } else {
            vec![
                Phase { end_step: s.pct_start * total - 1.0, lr: (initial, self.max_lr), momentum: (max_m, base_m) },
                Phase { end_step: total - 1.0, lr: (self.max_lr, min), momentum: (base_m, max_m) },
            ]
        }
    }

    /// `get_lr` at `step_num` (0 for the first optimiser step; clamped to `total_steps`):
    /// the learning rate and the momentum.
    pub fn at(&self, step: usize) -> (f64, f64) {
        let step = step.min(self.total_steps) as f64;
        let phases = self.phases();
        let mut start_step = 0.0;
        for (i, p) in phases.iter().enumerate() {
            if step <= p.end_step || i == phases.len() - 1 {
                let pct = (step - start_step) / (p.end_step - start_step);
                let a = self.settings.anneal;
                return (a.at(p.lr.0, p.lr.1, pct), a.at(p.momentum.0, p.momentum.1, pct));
            }
            start_step = p.end_step;
        }
        unreachable!("the last phase always matches")
    }

    /// The learning rate of step `step`.
    pub fn lr(&self, step: usize) -> f64 {
        self.at(step).0
    }

    /// The momentum (or β₁) of step `step`, when cycled.
    pub fn momentum(&self, step: usize) -> Option<f64> {
        self.settings.cycle_momentum.then(|| self.at(step).1)
    }
}

/// `--warmup-epochs`, `--warmup-lr` and `--one-cycle`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ScheduleSettings {
    /// Epochs of linear warm-up (fractions allowed); 0: none.
    pub warmup_epochs: f64,
    /// The rate the warm-up starts from (timm's `warmup_lr_init`, default 0).
    pub warmup_lr_init: f64,
    /// Replace the epoch schedule by a one-cycle schedule peaking at the base rate.
    pub one_cycle: Option<OneCycleSettings>,
}

impl ScheduleSettings {
    pub fn validate(&self) -> Result<(), ScheduleError> {
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            return Err(ScheduleError::WarmupEpochs(self.warmup_epochs));
        }
        if !(self.warmup_lr_init.is_finite() && self.warmup_lr_init >= 0.0) {
            return Err(ScheduleError::WarmupLr(self.warmup_lr_init));
        }
        if let Some(o) = &self.one_cycle {
            if self.warmup_epochs > 0.0 {
                return Err(ScheduleError::WarmupAndOneCycle);
            }
            o.validate()?;
        }
        Ok(())
    }
}

/// The learning rate (and momentum, for one-cycle) of every optimiser step of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    optim: OptimConfig,
    settings: ScheduleSettings,
    steps_per_epoch: usize,
    one_cycle: Option<OneCycle>,
}

impl LrSchedule {
    /// For a run of `optim.epochs` epochs of `steps_per_epoch` optimiser steps.
    pub fn new(
        optim: OptimConfig,
        settings: ScheduleSettings,
        steps_per_epoch: usize,
    ) -> Result<LrSchedule, ScheduleError> {
        settings.validate()?;
        if steps_per_epoch == 0 {
            return Err(ScheduleError::NoSteps);
        }
        let one_cycle = match settings.one_cycle {
            Some(o) => Some(OneCycle::new(o, optim.lr, optim.epochs.max(1) * steps_per_epoch)?),
            None => None,
        };
        Ok(LrSchedule { optim, settings, steps_per_epoch, one_cycle })
    }

    /// Optimiser steps of warm-up.
    pub fn warmup_steps(&self) -> usize {
        (self.settings.warmup_epochs * self.steps_per_epoch as f64).round() as usize
    }

    /// The learning rate of step `step` (0-based) of epoch `epoch` (0-based).
    pub fn lr(&self, epoch: usize, step: usize) -> f64 {
        let t = epoch * self.steps_per_epoch + step;
        if let Some(o) = &self.one_cycle {
            return o.lr(t);
        }
        let warmup = self.warmup_steps();
        if t < warmup {
            let init = self.settings.warmup_lr_init;
            return init + t as f64 * (self.optim.lr - init) / warmup as f64;
        }
        self.optim.lr_at(epoch)
    }

    /// The momentum (β₁ for AdamW) to set before that step, when one-cycle cycles it.
    pub fn momentum(&self, epoch: usize, step: usize) -> Option<f64> {
        self.one_cycle.as_ref().and_then(|o| o.momentum(epoch * self.steps_per_epoch + step))
    }
}

/// The learning-rate groups of a ResNet, from the classifier down to the stem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerGroup {
    /// `fc`
    Head,
    /// `layer1` … `layer4`
    Stage(u8),
    /// `conv1`, `bn1`
    Stem,
}

impl LayerGroup {
    /// The group of a torchvision parameter name.
    pub fn of(name: &str) -> LayerGroup {
        if name.starts_with("fc.") {
            return LayerGroup::Head;
        }
        for k in 1..=4u8 {
            if name.starts_with(&format!("layer{k}.")) {
                return LayerGroup::Stage(k);
            }
        }
        LayerGroup::Stem
    }

    /// How many decay factors apply: 0 for the head, 1 for layer4, …, 5 for the stem.
    pub fn depth(self) -> i32 {
        match self {
            LayerGroup::Head => 0,
            LayerGroup::Stage(k) => 5 - i32::from(k),
            LayerGroup::Stem => 5,
        }
    }
}

/// fastai's `fine_tune` pattern: `freeze_epochs` with only the classifier training, then
/// everything, each layer group at its decayed rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FineTuneSettings {
    pub freeze_epochs: usize,
    /// D of `--layer-lr-decay`; 1 gives every group the same rate.
    pub layer_lr_decay: f64,
}

impl Default for FineTuneSettings {
    fn default() -> Self {
        FineTuneSettings { freeze_epochs: 0, layer_lr_decay: 1.0 }
    }
}

impl FineTuneSettings {
    pub fn validate(&self) -> Result<(), ScheduleError> {
        if !(self.layer_lr_decay > 0.0 && self.layer_lr_decay <= 1.0) {
            return Err(ScheduleError::LayerDecay(self.layer_lr_decay));
        }
        Ok(())
    }

    /// Whether epoch `epoch` (0-based) trains only the classifier.
    pub fn frozen(&self, epoch: usize) -> bool {
        epoch < self.freeze_epochs
    }

    /// Whether parameter `name` is updated in epoch `epoch`.
    pub fn trains(&self, name: &str, epoch: usize) -> bool {
        !self.frozen(epoch) || LayerGroup::of(name) == LayerGroup::Head
    }

    /// The learning-rate multiplier of parameter `name`: `D^depth`.
    pub fn lr_scale(&self, name: &str) -> f64 {
        self.layer_lr_decay.powi(LayerGroup::of(name).depth())
    }

    /// Multipliers for parameters in order, for [`crate::optim::Optimizer::set_lr_scales`].
    pub fn lr_scales<S: AsRef<str>>(&self, names: &[S]) -> Vec<f64> {
        names.iter().map(|n| self.lr_scale(n.as_ref())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::ScheduleKind;

    #[test]
    fn warmup_then_the_epoch_schedule() {
        let optim =
            OptimConfig { lr: 0.1, schedule: ScheduleKind::Step, step_size: 2, gamma: 0.5, ..Default::default() };
        let s = ScheduleSettings { warmup_epochs: 1.5, warmup_lr_init: 0.001, one_cycle: None };
        let sched = LrSchedule::new(optim.clone(), s, 10).unwrap();
        assert_eq!(sched.warmup_steps(), 15);
        assert_eq!(sched.lr(0, 0), 0.001);
        assert!((sched.lr(0, 5) - (0.001 + 5.0 * (0.1 - 0.001) / 15.0)).abs() < 1e-15);
        assert!((sched.lr(1, 4) - (0.001 + 14.0 * 0.099 / 15.0)).abs() < 1e-15);
        assert_eq!(sched.lr(1, 5), 0.1, "after warm-up: StepLR's epoch-1 rate");
        assert_eq!(sched.lr(2, 0), 0.05);
        assert_eq!(sched.momentum(0, 0), None);
        let none = LrSchedule::new(optim, ScheduleSettings::default(), 10).unwrap();
        assert_eq!(none.lr(0, 0), 0.1);
    }

    #[test]
    fn one_cycle_shape() {
        let o = OneCycle::new(OneCycleSettings::default(), 0.1, 100).unwrap();
        assert!((o.lr(0) - 0.1 / 25.0).abs() < 1e-15);
        // Peak at the end of phase 1 (step 29), momentum at its base there.
        assert!((o.lr(29) - 0.1).abs() < 1e-15);
        assert!((o.momentum(29).unwrap() - 0.85).abs() < 1e-15);
        assert!((o.lr(99) - 0.1 / 25.0 / 1e4).abs() < 1e-15);
        assert!((1..100).all(|i| o.lr(i) <= 0.1 + 1e-15));
        assert!(OneCycle::new(OneCycleSettings::default(), 0.1, 0).is_err());
        let bad = OneCycleSettings { pct_start: 1.5, ..Default::default() };
        assert!(bad.validate().is_err());
        let both =
            ScheduleSettings { warmup_epochs: 1.0, one_cycle: Some(OneCycleSettings::default()), ..Default::default() };
        assert_eq!(both.validate(), Err(ScheduleError::WarmupAndOneCycle));
    }

    #[test]
    fn layer_groups_and_decay() {
        let ft = FineTuneSettings { freeze_epochs: 2, layer_lr_decay: 0.5 };
        let names = [
            "conv1.weight",
            "bn1.bias",
            "layer1.0.conv1.weight",
            "layer3.1.bn2.weight",
            "layer4.0.downsample.0.weight",
            "fc.weight",
            "fc.bias",
        ];
        assert_eq!(ft.lr_scales(&names), [1.0 / 32.0, 1.0 / 32.0, 1.0 / 16.0, 0.25, 0.5, 1.0, 1.0]);
        assert!(ft.frozen(1) && !ft.frozen(2));
        assert!(ft.trains("fc.bias", 0) && !ft.trains("layer4.0.conv1.weight", 0));
        assert!(ft.trains("conv1.weight", 2));
        assert_eq!(FineTuneSettings::default().lr_scale("conv1.weight"), 1.0);
        assert!(FineTuneSettings { layer_lr_decay: 0.0, ..Default::default() }.validate().is_err());
        assert!(FineTuneSettings { layer_lr_decay: 1.5, ..Default::default() }.validate().is_err());
    }
}
