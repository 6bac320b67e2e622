//! Optimisers and learning-rate schedules with PyTorch's update rules, written over tch tensors
//! so that their state (momentum, Adam moments) can be checkpointed and resumed.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tch::Tensor;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with momentum (`torch.optim.SGD`).
    Sgd,
    /// Adam with decoupled weight decay (`torch.optim.AdamW`).
    Adamw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Multiply the learning rate by `gamma` every `step_size` epochs (`StepLR`).
    #[cfg_attr(
        feature = "cli",
        value(help = "Multiply the learning rate by --gamma every --step-size epochs (`StepLR`)")
    )]
    Step,
    /// Cosine annealing from the initial rate to zero over the run (`CosineAnnealingLR`).
    Cosine,
    /// Keep the learning rate fixed.
    Constant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub optimizer: OptimizerKind,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub schedule: ScheduleKind,
    pub step_size: usize,
    pub gamma: f64,
    /// Epochs of the run, for the cosine schedule.
    pub epochs: usize,
}

impl Default for OptimConfig {
    /// The seed tutorial's: SGD, learning rate 0.001, momentum 0.9, `StepLR(7, 0.1)`.
    fn default() -> Self {
        OptimConfig {
            optimizer: OptimizerKind::Sgd,
            lr: 0.001,
            momentum: 0.9,
            weight_decay: 0.0,
            betas: (0.9, 0.999),
            eps: 1e-8,
            schedule: ScheduleKind::Step,
            step_size: 7,
            gamma: 0.1,
            epochs: 25,
        }
    }
}

impl OptimConfig {
    /// Learning rate used during `epoch` (0-based), as the PyTorch scheduler stepped once per
    /// epoch gives it.
    pub fn lr_at(&self, epoch: usize) -> f64 {
        match self.schedule {
            ScheduleKind::Constant => self.lr,
            ScheduleKind::Step => self.lr * self.gamma.powi((epoch / self.step_size.max(1)) as i32),
            ScheduleKind::Cosine => {
                let t = epoch as f64 / self.epochs.max(1) as f64;
                self.lr * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
            }
        }
    }

    pub fn validate(&self) -> Result<(), OptimError> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(OptimError::LearningRate(self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(OptimError::Momentum(self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(OptimError::WeightDecay(self.weight_decay));
        }
        if self.step_size == 0 {
            return Err(OptimError::StepSize);
        }
        if !(self.gamma.is_finite() && self.gamma > 0.0) {
            return Err(OptimError::Gamma(self.gamma));
        }
        Ok(())
    }
}

/// A setting of [`OptimConfig`] out of range, or saved optimiser state that does not fit.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum OptimError {
    #[error("learning rate must be positive, got {0}")]
    LearningRate(f64),
    #[error("momentum must be in [0, 1), got {0}")]
    Momentum(f64),
    #[error("weight decay must be >= 0, got {0}")]
    WeightDecay(f64),
    #[error("step size must be at least 1 epoch")]
    StepSize,
    #[error("gamma must be positive, got {0}")]
    Gamma(f64),
    #[error("{got} learning-rate scales for {params} parameters")]
    ScaleCount { got: usize, params: usize },
    #[error("learning-rate scale {0} is not finite and >= 0")]
    Scale(f64),
    #[error("optimizer state {key} missing")]
    StateMissing { key: String },
    #[error("optimizer state {key} has shape {saved:?}, parameter {param:?}")]
    StateShape { key: String, saved: Vec<i64>, param: Vec<i64> },
}

/// An optimiser over named parameters.
pub struct Optimizer {
    config: OptimConfig,
    params: Vec<(String, Tensor)>,
    /// Per-parameter state tensors: SGD `momentum_buffer`; AdamW `exp_avg`, `exp_avg_sq`.
    state: HashMap<String, Vec<Tensor>>,
    steps: i64,
    /// Multiplier of the step's learning rate for each parameter (PyTorch's per-group `lr`).
    lr_scales: Vec<f64>,
}

impl Optimizer {
    pub fn new(config: OptimConfig, params: Vec<(String, Tensor)>) -> Optimizer {
        let lr_scales = vec![1.0; params.len()];
        Optimizer { config, params, state: HashMap::new(), steps: 0, lr_scales }
    }

    /// Per-parameter multipliers of the learning rate passed to [`Self::step`], in parameter
    /// order (layer-wise learning-rate decay; all 1 unless set). Like a PyTorch parameter group's
    /// `lr`, a scaled rate also scales AdamW's decoupled weight decay.
    pub fn set_lr_scales(&mut self, scales: Vec<f64>) -> Result<(), OptimError> {
        if scales.len() != self.params.len() {
            return Err(OptimError::ScaleCount { got: scales.len(), params: self.params.len() });
        }
        if let Some(&bad) = scales.iter().find(|s| !(s.is_finite() && **s >= 0.0)) {
            return Err(OptimError::Scale(bad));
        }
        self.lr_scales = scales;
        Ok(())
    }

    /// Sets SGD's momentum, or AdamW's β₁, for the next steps (one-cycle momentum cycling, as
    /// PyTorch's `OneCycleLR` writes `group["momentum"]` / `group["betas"][0]`).
    pub fn set_momentum(&mut self, momentum: f64) {
        self.config.momentum = momentum;
        self.config.betas.0 = momentum;
    }

    /// The names of the optimised parameters, in order.
    pub fn param_names(&self) -> Vec<&str> {
        self.params.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Gradients of `loss` for the optimised parameters, as fresh tensors: nothing to zero
    /// and nothing accumulated (PyTorch's `zero_grad(set_to_none=True)` behaviour).
    pub fn backward(&self, loss: &Tensor) -> Result<Vec<Tensor>, tch::TchError> {
        let params: Vec<&Tensor> = self.params.iter().map(|(_, p)| p).collect();
        Tensor::f_run_backward(&[loss], &params, false, false)
    }

    /// One update with learning rate `lr`, from `grads` as [`Self::backward`] returns them
    /// (which this takes over: the first momentum buffer is the gradient itself).
    pub fn step(&mut self, grads: Vec<Tensor>, lr: f64) -> Result<(), tch::TchError> {
        self.steps += 1;
        let c = self.config.clone();
        let steps = self.steps;
        tch::no_grad(|| {
            for (((name, p), g), &scale) in self.params.iter_mut().zip(grads).zip(&self.lr_scales) {
                if !g.defined() {
                    continue;
                }
                let lr = lr * scale;
                // p += d × (−lr) in one pass, with no temporary.
                let neg_lr = Tensor::f_full([], -lr, (p.kind(), p.device()))?;
                match c.optimizer {
                    OptimizerKind::Sgd => {
                        let g = if c.weight_decay != 0.0 { g.f_add(&(p.shallow_clone() * c.weight_decay))? } else { g };
                        let d = if c.momentum == 0.0 {
                            g
                        } else if let Some(s) = self.state.get_mut(name.as_str()) {
                            let _ = s[0].f_mul_scalar_(c.momentum)?.f_add_(&g)?;
                            s[0].shallow_clone()
                        } else {
                            self.state.insert(name.clone(), vec![g.shallow_clone()]);
                            g
                        };
                        let _ = p.f_addcmul_(&d, &neg_lr)?;
                    }
                    OptimizerKind::Adamw => {
                        let (b1, b2) = c.betas;
                        if c.weight_decay != 0.0 {
                            let _ = p.f_mul_scalar_(1.0 - lr * c.weight_decay)?;
                        }
                        if !self.state.contains_key(name.as_str()) {
                            let z = p.f_zeros_like()?;
                            self.state.insert(name.clone(), vec![z.copy(), z]);
                        }
                        let Some(s) = self.state.get_mut(name.as_str()) else {
                            continue;
                        };
                        let _ = s[0].f_mul_scalar_(b1)?.f_add_(&(&g * (1.0 - b1)))?;
                        let _ = s[1].f_mul_scalar_(b2)?.f_add_(&(&g * &g * (1.0 - b2)))?;
                        let bc1 = 1.0 - b1.powi(steps as i32);
                        let bc2 = 1.0 - b2.powi(steps as i32);
                        let denom = (s[1].f_sqrt()? / bc2.sqrt()).f_add_scalar(c.eps)?;
                        let _ = p.f_addcmul_(&(&s[0] / denom), &(neg_lr / bc1))?;
                    }
                }
            }
            Ok(())
        })
    }

    /// State tensors by name (`<param>.<buffer>`), and the step count, for checkpoints.
    pub fn state(&self) -> (Vec<(String, Tensor)>, i64) {
        let buffers = match self.config.optimizer {
            OptimizerKind::Sgd => &["momentum_buffer"][..],
            OptimizerKind::Adamw => &["exp_avg", "exp_avg_sq"][..],
        };
        let mut out = Vec::new();
        for (name, _) in &self.params {
            if let Some(s) = self.state.get(name) {
                for (b, t) in buffers.iter().zip(s) {
                    out.push((format!("{name}.{b}"), t.shallow_clone()));
                }
            }
        }
        (out, self.steps)
    }

    /// Restores what [`Self::state`] saved; tensors are copied to each parameter's device.
    pub fn load_state(&mut self, saved: &HashMap<String, Tensor>, steps: i64) -> Result<(), OptimError> {
        let buffers = match self.config.optimizer {
            OptimizerKind::Sgd => &["momentum_buffer"][..],
            OptimizerKind::Adamw => &["exp_avg", "exp_avg_sq"][..],
        };
        self.state.clear();
        for (name, p) in &self.params {
            let found: Vec<Option<&Tensor>> = buffers.iter().map(|b| saved.get(&format!("{name}.{b}"))).collect();
            if found.iter().all(Option::is_none) {
                continue;
            }
            let mut tensors = Vec::new();
            for (b, t) in buffers.iter().zip(found) {
                let key = || format!("{name}.{b}");
                let t = t.ok_or_else(|| OptimError::StateMissing { key: key() })?;
                if t.size() != p.size() {
                    return Err(OptimError::StateShape { key: key(), saved: t.size(), param: p.size() });
                }
                tensors.push(t.to_device(p.device()).to_kind(p.kind()));
            }
            self.state.insert(name.clone(), tensors);
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(optimizer: OptimizerKind) -> OptimConfig {
        OptimConfig { optimizer, lr: 0.1, weight_decay: 0.01, ..OptimConfig::default() }
    }

    #[test]
    fn schedules() {
        let c = config(OptimizerKind::Sgd);
        assert_eq!(c.lr_at(0), 0.1);
        assert_eq!(c.lr_at(6), 0.1);
        assert!((c.lr_at(7) - 0.01).abs() < 1e-12);
        assert!((c.lr_at(14) - 0.001).abs() < 1e-12);
        let cos = OptimConfig { schedule: ScheduleKind::Cosine, epochs: 10, ..c };
        assert_eq!(cos.lr_at(0), 0.1);
        assert!((cos.lr_at(5) - 0.05).abs() < 1e-12);
    }

    #[test]
    fn sgd_matches_pytorch_rule() {
        // p=1, grad=2 (loss 2p), wd 0.01: d = 2.01; step1 buf=d, p=1-0.1*2.01;
        // step2 d=2+0.01*p1, buf=0.9*2.01+d, p2=p1-0.1*buf
        let p = Tensor::from_slice(&[1.0f64]).set_requires_grad(true);
        let mut opt = Optimizer::new(config(OptimizerKind::Sgd), vec![("w".into(), p.shallow_clone())]);
        let mut expect = 1.0f64;
        let mut buf = 0.0;
        for i in 0..2 {
            let grads = opt.backward(&(&p * 2.0).sum(tch::Kind::Double)).unwrap();
            opt.step(grads, 0.1).unwrap();
            let d = 2.0 + 0.01 * expect;
            buf = if i == 0 { d } else { 0.9 * buf + d };
            expect -= 0.1 * buf;
        }
        assert!((p.double_value(&[0]) - expect).abs() < 1e-12);
        let (state, steps) = opt.state();
        assert_eq!(steps, 2);
        assert_eq!(state[0].0, "w.momentum_buffer");
        assert!((state[0].1.double_value(&[0]) - buf).abs() < 1e-12);
    }

    #[test]
    fn lr_scales_act_per_parameter() {
        let a = Tensor::from_slice(&[1.0f64]).set_requires_grad(true);
        let b = Tensor::from_slice(&[1.0f64]).set_requires_grad(true);
        let cfg = OptimConfig { momentum: 0.0, weight_decay: 0.0, ..config(OptimizerKind::Sgd) };
        let mut opt = Optimizer::new(cfg, vec![("a".into(), a.shallow_clone()), ("b".into(), b.shallow_clone())]);
        assert!(matches!(opt.set_lr_scales(vec![1.0]), Err(OptimError::ScaleCount { got: 1, params: 2 })));
        assert!(matches!(opt.set_lr_scales(vec![1.0, -1.0]), Err(OptimError::Scale(_))));
        opt.set_lr_scales(vec![1.0, 0.25]).unwrap();
        assert_eq!(opt.param_names(), ["a", "b"]);
        let grads = opt.backward(&(&a * 2.0 + &b * 2.0).sum(tch::Kind::Double)).unwrap();
        opt.step(grads, 0.1).unwrap();
        assert!((a.double_value(&[0]) - 0.8).abs() < 1e-12);
        assert!((b.double_value(&[0]) - 0.95).abs() < 1e-12);
        // Momentum set between steps is the one used (OneCycleLR's cycling).
        let mut opt = Optimizer::new(config(OptimizerKind::Sgd), vec![("a".into(), a.shallow_clone())]);
        opt.set_momentum(0.5);
        for _ in 0..2 {
            let grads = opt.backward(&(&a * 2.0).sum(tch::Kind::Double)).unwrap();
            opt.step(grads, 0.0).unwrap();
        }
        let (state, _) = opt.state();
        // buf1 = g1 = 2 + 0.01·a; buf2 = 0.5·buf1 + g2 (lr 0: a unchanged).
        let g = 2.0 + 0.01 * a.double_value(&[0]);
        assert!((state[0].1.double_value(&[0]) - (0.5 * g + g)).abs() < 1e-12);
    }

    #[test]
    fn adamw_first_step_moves_by_lr() {
        let p = Tensor::from_slice(&[1.0f64]).set_requires_grad(true);
        let cfg = OptimConfig { weight_decay: 0.0, ..config(OptimizerKind::Adamw) };
        let mut opt = Optimizer::new(cfg, vec![("w".into(), p.shallow_clone())]);
        let grads = opt.backward(&(&p * 3.0).sum(tch::Kind::Double)).unwrap();
        opt.step(grads, 0.1).unwrap();
        // m̂ = g, v̂ = g²: the first step is lr × g/|g|.
        assert!((p.double_value(&[0]) - 0.9).abs() < 1e-6);
    }
}
