//! Class imbalance: a weighted sampler with the distribution of PyTorch's
//! `WeightedRandomSampler(weights=1/count[label], num_samples=N, replacement=True)`, the
//! inverse-frequency class weights of scikit-learn's `class_weight="balanced"`
//! (`n_samples / (n_classes · count_c)`), a check that warns of a strongly imbalanced training
//! set, and per-class recall.
//!
//! The sampler draws from the caller's seeded generator, so an epoch's order stays a function of
//! `(seed, epoch)` as the loader's shuffle is; it does not reproduce torch's random stream, only
//! its distribution: every draw independent, sample `i` with probability `w_i / Σ w`.

use rand::Rng;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A largest class more than this many times the smallest is worth a warning.
pub const IMBALANCE_RATIO: f64 = 3.0;

/// Class counts or weights that cannot be used.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SamplerError {
    #[error("no samples to draw from")]
    Empty,
    #[error("sample weight {index} is {value}; weights must be finite and >= 0 with a positive sum")]
    BadWeight { index: usize, value: f64 },
    #[error("label {label} of sample {index} is not below the number of classes {classes}")]
    Label { index: usize, label: usize, classes: usize },
    #[error("class {class} has no training image, so it has no inverse-frequency weight")]
    EmptyClass { class: usize },
}

/// Whether and how the training set is rebalanced (`--balanced-sampler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SamplerSettings {
    /// Draw each epoch's samples with replacement, weighted `1 / count[label]`, instead of a
    /// shuffle: every class is drawn equally often on average.
    pub balanced: bool,
    /// Draws per epoch; `None`: as many as there are training samples (torch's usual choice).
    pub num_samples: Option<usize>,
}

/// Images per class.
pub fn class_counts(labels: &[usize], num_classes: usize) -> Result<Vec<usize>, SamplerError> {
    let mut counts = vec![0usize; num_classes];
    for (index, &label) in labels.iter().enumerate() {
        *counts.get_mut(label).ok_or(SamplerError::Label { index, label, classes: num_classes })? += 1;
    }
    Ok(counts)
}

/// scikit-learn's `compute_class_weight("balanced")`: `n_samples / (n_classes · count_c)`, so
/// that every class carries the same total weight. For `--class-weights auto`.
pub fn balanced_class_weights(counts: &[usize]) -> Result<Vec<f64>, SamplerError> {
    let n: usize = counts.iter().sum();
    let c = counts.len() as f64;
    counts
        .iter()
        .enumerate()
        .map(|(class, &k)| if k == 0 { Err(SamplerError::EmptyClass { class }) } else { Ok(n as f64 / (c * k as f64)) })
        .collect()
}

/// Per-sample weights `1 / count[label]`, the usual input of `WeightedRandomSampler`.
pub fn inverse_frequency_weights(labels: &[usize], num_classes: usize) -> Result<Vec<f64>, SamplerError> {
    let counts = class_counts(labels, num_classes)?;
    Ok(labels.iter().map(|&l| 1.0 / counts[l] as f64).collect())
}

/// Draws sample indices with replacement, index `i` with probability `w_i / Σ w`
/// (`torch.multinomial(weights, n, replacement=True)`, which `WeightedRandomSampler` calls).
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedSampler {
    /// Running sums of the weights.
    cumulative: Vec<f64>,
}

impl WeightedSampler {
    pub fn new(weights: &[f64]) -> Result<WeightedSampler, SamplerError> {
        if weights.is_empty() {
            return Err(SamplerError::Empty);
        }
        let mut cumulative = Vec::with_capacity(weights.len());
        let mut total = 0.0;
        for (index, &value) in weights.iter().enumerate() {
            if !(value.is_finite() && value >= 0.0) {
                return Err(SamplerError::BadWeight { index, value });
            }
            total += value;
            cumulative.push(total);
        }
        if !(total > 0.0 && total.is_finite()) {
            return Err(SamplerError::BadWeight { index: weights.len() - 1, value: total });
        }
        Ok(WeightedSampler { cumulative })
    }

    /// The class-balanced sampler: weights `1 / count[label]`.
    pub fn balanced(labels: &[usize], num_classes: usize) -> Result<WeightedSampler, SamplerError> {
        WeightedSampler::new(&inverse_frequency_weights(labels, num_classes)?)
    }

    /// Number of samples it draws from.
    pub fn len(&self) -> usize {
        self.cumulative.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cumulative.is_empty()
    }

    /// One index.
    pub fn draw<R: Rng>(&self, rng: &mut R) -> usize {
        let total = self.cumulative[self.cumulative.len() - 1];
        let u = rng.gen::<f64>() * total;
        // The first index whose running sum exceeds u: zero-weight samples are never drawn.
        self.cumulative.partition_point(|&c| c <= u).min(self.cumulative.len() - 1)
    }

    /// An epoch's order: `num_samples` independent draws.
    pub fn order<R: Rng>(&self, num_samples: usize, rng: &mut R) -> Vec<usize> {
        (0..num_samples).map(|_| self.draw(rng)).collect()
    }
}

/// A warning when the largest class has more than [`IMBALANCE_RATIO`] times the images of the
/// smallest, naming both and suggesting the remedies; `None` otherwise.
pub fn imbalance_warning(counts: &[usize], classes: &[String]) -> Option<String> {
    let (big, &max) = counts.iter().enumerate().max_by_key(|&(i, c)| (c, std::cmp::Reverse(i)))?;
    let (small, &min) = counts.iter().enumerate().min_by_key(|&(i, c)| (c, i))?;
    let name = |i: usize| classes.get(i).cloned().unwrap_or_else(|| format!("class {i}"));
    if min == 0 {
        return Some(format!("class '{}' has no training image", name(small)));
    }
    let ratio = max as f64 / min as f64;
    (ratio > IMBALANCE_RATIO).then(|| {
        format!(
            "imbalanced classes: '{}' has {max} training images, '{}' only {min} ({ratio:.1}x); consider \
             --balanced-sampler or --class-weights auto, and judge the model by per-class recall",
            name(big),
            name(small)
        )
    })
}

/// Recall of each class: of its images, the fraction predicted as it; `None` for a class with
/// no image among `truth`.
pub fn per_class_recall(truth: &[usize], predicted: &[usize], num_classes: usize) -> Vec<Option<f64>> {
    let mut total = vec![0usize; num_classes];
    let mut hit = vec![0usize; num_classes];
    for (&t, &p) in truth.iter().zip(predicted) {
        if t < num_classes {
            total[t] += 1;
            if p == t {
                hit[t] += 1;
            }
        }
    }
    total.iter().zip(&hit).map(|(&n, &h)| (n > 0).then(|| h as f64 / n as f64)).collect()
}

/// The mean of the defined per-class recalls (balanced accuracy), `None` when there are none.
pub fn balanced_accuracy(recalls: &[Option<f64>]) -> Option<f64> {
    let defined: Vec<f64> = recalls.iter().flatten().copied().collect();
    (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn labels(counts: &[usize]) -> Vec<usize> {
        counts.iter().enumerate().flat_map(|(c, &n)| std::iter::repeat_n(c, n)).collect()
    }

    #[test]
    fn balanced_sampler_draws_classes_equally() {
        let counts = [500, 100, 20, 3];
        let labels = labels(&counts);
        let s = WeightedSampler::balanced(&labels, 4).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let draws = 80_000;
        let mut per_class = [0usize; 4];
        let mut per_sample = vec![0usize; labels.len()];
        for i in s.order(draws, &mut rng) {
            per_class[labels[i]] += 1;
            per_sample[i] += 1;
        }
        for (c, &n) in per_class.iter().enumerate() {
            let f = n as f64 / draws as f64;
            // Binomial standard deviation at p = 1/4: 0.0015; allow about 4 of them.
            assert!((f - 0.25).abs() < 0.006, "class {c}: {f}");
        }
        // Within a class, samples are equally likely: the 3 images of class 3 share its quarter.
        for (i, &k) in per_sample.iter().enumerate().skip(labels.len() - 3) {
            let f = k as f64 / draws as f64;
            assert!((f - 0.25 / 3.0).abs() < 0.006, "sample {i}: {f}");
        }
    }

    #[test]
    fn draws_follow_arbitrary_weights_and_skip_zero() {
        let s = WeightedSampler::new(&[0.0, 1.0, 3.0, 0.0]).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut n = [0usize; 4];
        for _ in 0..40_000 {
            n[s.draw(&mut rng)] += 1;
        }
        assert_eq!((n[0], n[3]), (0, 0));
        let f = n[2] as f64 / 40_000.0;
        assert!((f - 0.75).abs() < 0.01, "{f}");
        // Seeded: the same order again.
        let a = s.order(10, &mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!(a, s.order(10, &mut ChaCha8Rng::seed_from_u64(3)));
    }

    #[test]
    fn rejects_bad_weights() {
        assert_eq!(WeightedSampler::new(&[]), Err(SamplerError::Empty));
        assert!(matches!(WeightedSampler::new(&[1.0, -1.0]), Err(SamplerError::BadWeight { index: 1, .. })));
        assert!(WeightedSampler::new(&[0.0, 0.0]).is_err());
        assert!(WeightedSampler::new(&[f64::NAN]).is_err());
        assert!(matches!(class_counts(&[0, 5], 2), Err(SamplerError::Label { index: 1, label: 5, classes: 2 })));
    }

    #[test]
    fn balanced_class_weights_are_sklearns() {
        // sklearn: compute_class_weight("balanced", classes=[0,1,2], y=[0]*6+[1]*3+[2]*1)
        // = 10 / (3 * [6, 3, 1]) = [0.5556, 1.1111, 3.3333]
        let w = balanced_class_weights(&[6, 3, 1]).unwrap();
        let want = [10.0 / 18.0, 10.0 / 9.0, 10.0 / 3.0];
        for (a, b) in w.iter().zip(want) {
            assert!((a - b).abs() < 1e-12);
        }
        // Every class carries the same total weight, n / C.
        for (k, wk) in [6.0, 3.0, 1.0].iter().zip(&w) {
            assert!((k * wk - 10.0 / 3.0).abs() < 1e-12);
        }
        assert_eq!(balanced_class_weights(&[2, 0]), Err(SamplerError::EmptyClass { class: 1 }));
        assert_eq!(inverse_frequency_weights(&[0, 0, 1], 2).unwrap(), [0.5, 0.5, 1.0]);
    }

    #[test]
    fn imbalance_is_reported_beyond_three_to_one() {
        let classes = vec!["ants".to_string(), "bees".to_string(), "wasps".to_string()];
        assert_eq!(imbalance_warning(&[30, 10, 12], &classes), None);
        let w = imbalance_warning(&[31, 10, 12], &classes).unwrap();
        assert!(w.contains("'ants' has 31") && w.contains("'bees' only 10") && w.contains("3.1x"), "{w}");
        assert!(imbalance_warning(&[5, 0, 1], &classes).unwrap().contains("'bees' has no training image"));
        assert_eq!(imbalance_warning(&[], &classes), None);
    }

    #[test]
    fn recall_per_class() {
        let truth = [0, 0, 0, 1, 1, 2];
        let pred = [0, 1, 0, 1, 1, 0];
        let r = per_class_recall(&truth, &pred, 4);
        assert_eq!(r, [Some(2.0 / 3.0), Some(1.0), Some(0.0), None]);
        let b = balanced_accuracy(&r).unwrap();
        assert!((b - (2.0 / 3.0 + 1.0) / 3.0).abs() < 1e-12);
        assert_eq!(balanced_accuracy(&[None]), None);
    }
}
