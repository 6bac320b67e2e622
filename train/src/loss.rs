//! The training loss: `torch.nn.CrossEntropyLoss(weight=w, label_smoothing=ε)` with mean
//! reduction, for hard labels and for probability targets (Mixup/CutMix), computed by libtorch's
//! own `at::cross_entropy_loss`, so its semantics are PyTorch's exactly:
//!
//! * hard labels: `(1 − ε) · Σᵢ w[yᵢ]·(−log pᵢ[yᵢ]) / Σᵢ w[yᵢ]  +  (ε/C) · Σᵢ Σ_c w[c]·(−log pᵢ[c]) / Σᵢ w[yᵢ]`
//!   (without weights, `w = 1` and the denominators are the batch size);
//! * probability targets: the target becomes `t·(1 − ε) + ε/C`, and the loss is
//!   `−Σᵢ Σ_c w[c]·t'ᵢ[c]·log pᵢ[c] / N` (a plain mean over the batch, not weight-normalised).
//!
//! Class weights for `--class-weights auto` are scikit-learn's "balanced" ones
//! ([`crate::sampler::balanced_class_weights`]).

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};
use thiserror::Error;

use crate::sampler::{balanced_class_weights, SamplerError};

/// PyTorch's default `ignore_index` (no label is ignored in practice).
const IGNORE_INDEX: i64 = -100;

/// Loss settings that cannot be used.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum LossError {
    #[error("--label-smoothing must be in [0, 1], got {0}")]
    Smoothing(f64),
    #[error("--class-weights: {0}")]
    Weights(String),
    #[error("--class-weights has {got} weights for {classes} classes")]
    WeightCount { got: usize, classes: usize },
    #[error(transparent)]
    Counts(#[from] SamplerError),
}

/// Per-class weights of the loss (`--class-weights none|auto|W1,W2,...`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassWeights {
    #[default]
    None,
    /// Inverse frequency, `n_samples / (n_classes · count_c)` from the training set's counts.
    Auto,
    /// One weight per class, in class order.
    Given(Vec<f64>),
}

impl ClassWeights {
    /// The weights for a training set with `counts` images per class (`None`: unweighted).
    pub fn resolve(&self, counts: &[usize]) -> Result<Option<Vec<f64>>, LossError> {
        match self {
            ClassWeights::None => Ok(None),
            ClassWeights::Auto => Ok(Some(balanced_class_weights(counts)?)),
            ClassWeights::Given(w) => {
                if w.len() != counts.len() {
                    return Err(LossError::WeightCount { got: w.len(), classes: counts.len() });
                }
                Ok(Some(w.clone()))
            }
        }
    }
}

impl FromStr for ClassWeights {
    type Err = LossError;

    fn from_str(s: &str) -> Result<ClassWeights, LossError> {
        match s.trim() {
            "none" => Ok(ClassWeights::None),
            "auto" | "balanced" => Ok(ClassWeights::Auto),
            list => {
                let w: Vec<f64> = list
                    .split(',')
                    .map(|v| {
                        v.trim()
                            .parse::<f64>()
                            .map_err(|_| LossError::Weights(format!("'{s}' is not auto, none or a list of numbers")))
                    })
                    .collect::<Result<_, _>>()?;
                // A weight of 0 would not leave its class out: a batch of only that class would
                // divide its loss by a zero weight sum and train on NaN.
                if w.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                    return Err(LossError::Weights(format!("'{s}': every weight must be a number above 0")));
                }
                Ok(ClassWeights::Given(w))
            }
        }
    }
}

/// `--label-smoothing` and `--class-weights`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LossSettings {
    /// ε of `CrossEntropyLoss(label_smoothing=ε)`; 0.1 is the usual choice.
    pub label_smoothing: f64,
    pub class_weights: ClassWeights,
}

impl LossSettings {
    pub fn validate(&self) -> Result<(), LossError> {
        if !(0.0..=1.0).contains(&self.label_smoothing) {
            return Err(LossError::Smoothing(self.label_smoothing));
        }
        Ok(())
    }

    /// The loss for a training set with `counts` images per class, on `device`.
    pub fn build(&self, counts: &[usize], device: Device) -> Result<CrossEntropy, LossError> {
        self.validate()?;
        let weights = self.class_weights.resolve(counts)?;
        CrossEntropy::new(self.label_smoothing, weights.as_deref(), counts.len(), device)
    }
}

/// What a batch is scored against.
pub enum Targets<'a> {
    /// Class indices, `[N]` int64.
    Hard(&'a Tensor),
    /// Class probabilities, `[N, C]` float (Mixup/CutMix targets).
    Soft(&'a Tensor),
}

/// `CrossEntropyLoss(weight, label_smoothing)` with mean reduction.
#[derive(Debug)]
pub struct CrossEntropy {
    smoothing: f64,
    /// float32 `[C]` on the model's device.
    weight: Option<Tensor>,
    num_classes: usize,
}

impl CrossEntropy {
    pub fn new(
        smoothing: f64,
        weight: Option<&[f64]>,
        num_classes: usize,
        device: Device,
    ) -> Result<CrossEntropy, LossError> {
        if !(0.0..=1.0).contains(&smoothing) {
            return Err(LossError::Smoothing(smoothing));
        }
        let weight = match weight {
            Some(w) if w.len() != num_classes => {
                return Err(LossError::WeightCount { got: w.len(), classes: num_classes })
            }
            Some(w) => {
                let w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
                Some(Tensor::from_slice(&w32).to_device(device))
            }
            None => None,
        };
        Ok(CrossEntropy { smoothing, weight, num_classes })
    }

    pub fn smoothing(&self) -> f64 {
        self.smoothing
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The class weights, if any.
    pub fn weight(&self) -> Option<&Tensor> {
        self.weight.as_ref()
    }

    /// Mean loss of float `logits` `[N, C]` against class indices `[N]`.
    pub fn hard(&self, logits: &Tensor, labels: &Tensor) -> Result<Tensor, tch::TchError> {
        logits.to_kind(Kind::Float).f_cross_entropy_loss(
            labels,
            self.weight.as_ref(),
            Reduction::Mean,
            IGNORE_INDEX,
            self.smoothing,
        )
    }

    /// Mean loss of `logits` `[N, C]` against class probabilities `[N, C]`.
    pub fn soft(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor, tch::TchError> {
        logits.to_kind(Kind::Float).f_cross_entropy_loss(
            &targets.to_kind(Kind::Float),
            self.weight.as_ref(),
            Reduction::Mean,
            IGNORE_INDEX,
            self.smoothing,
        )
    }

    pub fn forward(&self, logits: &Tensor, targets: Targets<'_>) -> Result<Tensor, tch::TchError> {
        match targets {
            Targets::Hard(y) => self.hard(logits, y),
            Targets::Soft(t) => self.soft(logits, t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Tensor {
        Tensor::from_slice(&[2.0f32, -1.0, 0.5, 0.0, 3.0, -2.0]).view([2, 3])
    }

    /// The formulas of the module documentation, written out with log-softmax.
    #[test]
    fn matches_the_written_out_formulas() {
        let x = logits();
        let y = Tensor::from_slice(&[0i64, 2]);
        let w = [0.5f64, 2.0, 1.5];
        let logp = x.log_softmax(1, Kind::Double);
        let lp = |i: i64, c: i64| logp.double_value(&[i, c]);
        for eps in [0.0, 0.1, 0.3] {
            // Weighted hard labels.
            let (mut nll, mut smooth, mut wsum) = (0.0, 0.0, 0.0);
            for (i, yi) in [(0i64, 0usize), (1, 2)] {
                nll += w[yi] * -lp(i, yi as i64);
                smooth += (0..3).map(|c| w[c as usize] * -lp(i, c)).sum::<f64>();
                wsum += w[yi];
            }
            let want = (1.0 - eps) * nll / wsum + eps / 3.0 * smooth / wsum;
            let ce = CrossEntropy::new(eps, Some(&w), 3, Device::Cpu).unwrap();
            let got = ce.hard(&x, &y).unwrap().double_value(&[]);
            assert!((got - want).abs() < 1e-6, "hard eps {eps}: {got} vs {want}");
            // Weighted soft targets: a plain mean over the batch.
            let t = [[0.7, 0.3, 0.0], [0.0, 0.25, 0.75]];
            let mut sum = 0.0;
            for (i, row) in t.iter().enumerate() {
                for (c, &tc) in row.iter().enumerate() {
                    let tc = tc * (1.0 - eps) + eps / 3.0;
                    sum += -w[c] * tc * lp(i as i64, c as i64);
                }
            }
            let tt = Tensor::from_slice(&[0.7f32, 0.3, 0.0, 0.0, 0.25, 0.75]).view([2, 3]);
            let got = ce.soft(&x, &tt).unwrap().double_value(&[]);
            assert!((got - sum / 2.0).abs() < 1e-6, "soft eps {eps}: {got} vs {}", sum / 2.0);
        }
    }

    #[test]
    fn settings_parse_and_resolve() {
        assert_eq!("auto".parse::<ClassWeights>().unwrap(), ClassWeights::Auto);
        assert_eq!("1,2.5".parse::<ClassWeights>().unwrap(), ClassWeights::Given(vec![1.0, 2.5]));
        assert!("1,x".parse::<ClassWeights>().is_err());
        assert!("0,0".parse::<ClassWeights>().is_err());
        // A zero weight would make a batch of that class alone divide by zero.
        assert!("1,0".parse::<ClassWeights>().is_err());
        let w = ClassWeights::Auto.resolve(&[6, 3, 1]).unwrap().unwrap();
        assert!((w[2] - 10.0 / 3.0).abs() < 1e-12);
        assert!(matches!(
            ClassWeights::Given(vec![1.0]).resolve(&[1, 2]),
            Err(LossError::WeightCount { got: 1, classes: 2 })
        ));
        assert!(matches!(ClassWeights::Auto.resolve(&[1, 0]), Err(LossError::Counts(_))));
        let bad = LossSettings { label_smoothing: 1.5, ..Default::default() };
        assert_eq!(bad.validate(), Err(LossError::Smoothing(1.5)));
        let ce = LossSettings { label_smoothing: 0.1, class_weights: ClassWeights::Auto }.build(&[2, 2], Device::Cpu);
        assert!(ce.unwrap().weight().is_some());
        let json = serde_json::to_string(&LossSettings::default()).unwrap();
        assert_eq!(serde_json::from_str::<LossSettings>(&json).unwrap(), LossSettings::default());
    }

    #[test]
    fn gradients_flow() {
        let x = logits().set_requires_grad(true);
        let ce = CrossEntropy::new(0.1, None, 3, Device::Cpu).unwrap();
        let loss = ce.hard(&x, &Tensor::from_slice(&[1i64, 1])).unwrap();
        let g = Tensor::run_backward(&[loss], &[&x], false, false);
        // d/dlogits of a mean cross entropy: each row sums to 0.
        let rows = g[0].sum_dim_intlist(1, false, Kind::Double);
        assert!(rows.abs().max().double_value(&[]) < 1e-6);
    }
}
