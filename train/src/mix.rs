//! Mixup and CutMix with timm's semantics (`timm.data.Mixup`, mode `'batch'`): one mixing
//! coefficient per batch, the batch paired with itself reversed (`x.flip(0)`), and soft targets
//! `lam·onehot(y) + (1 − lam)·onehot(y.flip(0))` with label smoothing in the one-hot rows.
//!
//! From timm's `timm/data/mixup.py`, which this follows line for line:
//!
//! ```text
//! def mixup_target(target, num_classes, lam=1., smoothing=0.0):
//!     off_value = smoothing / num_classes
//!     on_value = 1. - smoothing + off_value
//!     y1 = one_hot(target, num_classes, on_value=on_value, off_value=off_value)
//!     y2 = one_hot(target.flip(0), num_classes, on_value=on_value, off_value=off_value)
//!     return y1 * lam + y2 * (1. - lam)
//!
//! def rand_bbox(img_shape, lam, margin=0., count=None):
//!     ratio = np.sqrt(1 - lam)
//!     img_h, img_w = img_shape[-2:]
//!     cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
//!     cy = np.random.randint(0 + margin_y, img_h - margin_y, size=count)
//!     cx = np.random.randint(0 + margin_x, img_w - margin_x, size=count)
//!     yl = np.clip(cy - cut_h // 2, 0, img_h)
//!     yh = np.clip(cy + cut_h // 2, 0, img_h)
//!     xl = np.clip(cx - cut_w // 2, 0, img_w)
//!     xh = np.clip(cx + cut_w // 2, 0, img_w)
//!
//! cutmix_bbox_and_lam: if correct_lam: lam = 1. - bbox_area / float(img_shape[-2] * img_shape[-1])
//!
//! Mixup._params_per_batch:
//!     lam = 1.; use_cutmix = False
//!     if self.mixup_enabled and np.random.rand() < self.mix_prob:
//!         if self.mixup_alpha > 0. and self.cutmix_alpha > 0.:
//!             use_cutmix = np.random.rand() < self.switch_prob
//!             lam_mix = beta(cutmix_alpha, cutmix_alpha) if use_cutmix else beta(mixup_alpha, mixup_alpha)
//!         elif self.mixup_alpha > 0.: lam_mix = beta(mixup_alpha, mixup_alpha)
//!         elif self.cutmix_alpha > 0.: use_cutmix = True; lam_mix = beta(cutmix_alpha, cutmix_alpha)
//!         lam = float(lam_mix)
//!
//! Mixup._mix_batch:
//!     if lam == 1.: return 1.
//!     if use_cutmix: x[:, :, yl:yh, xl:xh] = x.flip(0)[:, :, yl:yh, xl:xh]
//!     else: x_flipped = x.flip(0).mul_(1. - lam); x.mul_(lam).add_(x_flipped)
//! ```
//!
//! Differences, on purpose: the random numbers come from the caller's seeded generator (the
//! Beta draw uses numpy's algorithms: Jöhnk's for both parameters ≤ 1, else two Gamma draws);
//! `cutmix_minmax` and the `'pair'`/`'elem'` modes are not offered; and an odd batch is
//! accepted (timm asserts an even one; here the middle image is paired with itself, so it stays
//! as it was and keeps its own label — the loader's last batch can be odd).
//!
//! Label smoothing belongs in one place only: timm puts it in these targets and trains with a
//! plain soft-target cross entropy; PyTorch's `CrossEntropyLoss(label_smoothing=ε)` on
//! probability targets applies the same `t·(1 − ε) + ε/C`. Use [`MixSettings::label_smoothing`]
//! with a loss of ε = 0, or the reverse — not both.

use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};
use thiserror::Error;

/// Settings that cannot be used, or a batch that cannot be mixed.
#[derive(Debug, Error)]
pub enum MixError {
    #[error("--{name} must be finite and >= 0, got {value}")]
    Alpha { name: &'static str, value: f64 },
    #[error("--{name} must be in [0, 1], got {value}")]
    Probability { name: &'static str, value: f64 },
    #[error("mixing needs at least 2 classes, got {0}")]
    Classes(usize),
    #[error("mixing needs images as [N, C, H, W] and labels as [N], got {images:?} and {labels:?}")]
    Shape { images: Vec<i64>, labels: Vec<i64> },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// timm's `Mixup(mixup_alpha, cutmix_alpha, prob, switch_prob, mode='batch', correct_lam,
/// label_smoothing)`; both alphas 0 (the default) turn mixing off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MixSettings {
    /// Mixup's Beta(α, α); 0 turns Mixup off. timm's recipes use 0.2 to 0.8.
    pub mixup_alpha: f64,
    /// CutMix's Beta(α, α); 0 turns CutMix off. Usually 1.0.
    pub cutmix_alpha: f64,
    /// Probability of mixing a batch at all.
    pub prob: f64,
    /// With both on, the probability of CutMix rather than Mixup for a batch.
    pub switch_prob: f64,
    /// Recompute CutMix's λ from the box actually pasted (clipped at the borders).
    pub correct_lam: bool,
    /// ε of the targets' label smoothing (see the module notes: not also in the loss).
    pub label_smoothing: f64,
}

impl Default for MixSettings {
    /// Off, with timm's other defaults (`prob=1.0, switch_prob=0.5, correct_lam=True,
    /// label_smoothing=0`).
    fn default() -> Self {
        MixSettings {
            mixup_alpha: 0.0,
            cutmix_alpha: 0.0,
            prob: 1.0,
            switch_prob: 0.5,
            correct_lam: true,
            label_smoothing: 0.0,
        }
    }
}

impl MixSettings {
    /// Whether any mixing happens.
    pub fn enabled(&self) -> bool {
        (self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0) && self.prob > 0.0
    }

    pub fn validate(&self) -> Result<(), MixError> {
        for (name, value) in [("mixup", self.mixup_alpha), ("cutmix", self.cutmix_alpha)] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(MixError::Alpha { name, value });
            }
        }
        for (name, value) in
            [("mix-prob", self.prob), ("mix-switch-prob", self.switch_prob), ("label-smoothing", self.label_smoothing)]
        {
            if !(0.0..=1.0).contains(&value) {
                return Err(MixError::Probability { name, value });
            }
        }
        Ok(())
    }
}

/// The CutMix box: rows `y0..y1`, columns `x0..x1` (possibly empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutBox {
    pub y0: i64,
    pub y1: i64,
    pub x0: i64,
    pub x1: i64,
}

impl CutBox {
    pub fn area(&self) -> i64 {
        (self.y1 - self.y0) * (self.x1 - self.x0)
    }
}

/// One batch's mixing, as drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mix {
    /// λ = 1: the batch is left as it is (targets are the smoothed one-hot rows).
    None,
    Mixup {
        lam: f64,
    },
    /// `lam` is the corrected one when [`MixSettings::correct_lam`].
    CutMix {
        lam: f64,
        cut: CutBox,
    },
}

impl Mix {
    /// The weight of each image's own label in its target.
    pub fn lam(&self) -> f64 {
        match *self {
            Mix::None => 1.0,
            Mix::Mixup { lam } | Mix::CutMix { lam, .. } => lam,
        }
    }
}

/// Mixes batches for a fixed number of classes.
#[derive(Debug, Clone, PartialEq)]
pub struct Mixer {
    pub settings: MixSettings,
    pub num_classes: usize,
}

impl Mixer {
    pub fn new(settings: MixSettings, num_classes: usize) -> Result<Mixer, MixError> {
        settings.validate()?;
        if num_classes < 2 {
            return Err(MixError::Classes(num_classes));
        }
        Ok(Mixer { settings, num_classes })
    }

    /// timm's `_params_per_batch`, then for CutMix `cutmix_bbox_and_lam` on `height × width`.
    pub fn draw<R: Rng>(&self, height: i64, width: i64, rng: &mut R) -> Mix {
        let s = &self.settings;
        if !(s.enabled() && rng.gen::<f64>() < s.prob) {
            return Mix::None;
        }
        let (use_cutmix, alpha) = if s.mixup_alpha > 0.0 && s.cutmix_alpha > 0.0 {
            let cut = rng.gen::<f64>() < s.switch_prob;
            (cut, if cut { s.cutmix_alpha } else { s.mixup_alpha })
        } else if s.mixup_alpha > 0.0 {
            (false, s.mixup_alpha)
        } else {
            (true, s.cutmix_alpha)
        };
        let lam = sample_beta(alpha, alpha, rng);
        if lam == 1.0 {
            return Mix::None;
        }
        if !use_cutmix {
            return Mix::Mixup { lam };
        }
        let cut = rand_bbox(height, width, lam, rng);
        let lam = if s.correct_lam { 1.0 - cut.area() as f64 / (height * width) as f64 } else { lam };
        Mix::CutMix { lam, cut }
    }

    /// The mixed images and their soft targets `[N, num_classes]` (float32, on the labels'
    /// device) for a drawn `mix`. `images` is `[N, C, H, W]`, `labels` `[N]` int64; neither is
    /// modified.
    pub fn apply(&self, mix: &Mix, images: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor), MixError> {
        let (isz, lsz) = (images.size(), labels.size());
        if isz.len() != 4 || lsz.len() != 1 || isz[0] != lsz[0] {
            return Err(MixError::Shape { images: isz, labels: lsz });
        }
        let mixed = tch::no_grad(|| -> Result<Tensor, MixError> {
            Ok(match *mix {
                Mix::None => images.shallow_clone(),
                Mix::Mixup { lam } => {
                    let flipped = images.f_flip([0])?.f_mul_scalar(1.0 - lam)?;
                    images.f_mul_scalar(lam)?.f_add(&flipped)?
                }
                Mix::CutMix { cut, .. } => {
                    let out = images.copy();
                    let (h, w) = (cut.y1 - cut.y0, cut.x1 - cut.x0);
                    if h > 0 && w > 0 {
                        let src = images.f_flip([0])?.f_narrow(2, cut.y0, h)?.f_narrow(3, cut.x0, w)?;
                        out.f_narrow(2, cut.y0, h)?.f_narrow(3, cut.x0, w)?.f_copy_(&src)?;
                    }
                    out
                }
            })
        })?;
        let targets = mixup_target(labels, self.num_classes, mix.lam(), self.settings.label_smoothing)?;
        Ok((mixed, targets))
    }

    /// Draws and applies: the mixed images, the soft targets and what was drawn.
    pub fn mix<R: Rng>(
        &self,
        images: &Tensor,
        labels: &Tensor,
        rng: &mut R,
    ) -> Result<(Tensor, Tensor, Mix), MixError> {
        let size = images.size();
        if size.len() != 4 {
            return Err(MixError::Shape { images: size, labels: labels.size() });
        }
        let mix = self.draw(size[2], size[3], rng);
        let (x, t) = self.apply(&mix, images, labels)?;
        Ok((x, t, mix))
    }
}

/// timm's `one_hot`: `[N, num_classes]` float32 filled with `off`, `on` at each label.
pub fn one_hot(labels: &Tensor, num_classes: usize, on: f64, off: f64) -> Result<Tensor, tch::TchError> {
    let n = labels.size()[0];
    let mut t = Tensor::f_full([n, num_classes as i64], off, (Kind::Float, labels.device()))?;
    let _ = t.f_scatter_value_(1, &labels.f_to_kind(Kind::Int64)?.f_view([-1, 1])?, on)?;
    Ok(t)
}

/// timm's `mixup_target`: `lam·onehot(y) + (1 − lam)·onehot(y.flip(0))`, one-hot rows smoothed
/// (`off = ε/C`, `on = 1 − ε + off`). Each row sums to 1.
pub fn mixup_target(labels: &Tensor, num_classes: usize, lam: f64, smoothing: f64) -> Result<Tensor, tch::TchError> {
    let off = smoothing / num_classes as f64;
    let on = 1.0 - smoothing + off;
    let y1 = one_hot(labels, num_classes, on, off)?;
    let y2 = one_hot(&labels.f_flip([0])?, num_classes, on, off)?;
    y1.f_mul_scalar(lam)?.f_add(&y2.f_mul_scalar(1.0 - lam)?)
}

/// timm's `rand_bbox` (margin 0): a box of `int(H·√(1−λ)) × int(W·√(1−λ))` centred on a uniform
/// pixel, each half-side `cut // 2`, clipped to the image.
pub fn rand_bbox<R: Rng>(height: i64, width: i64, lam: f64, rng: &mut R) -> CutBox {
    let ratio = (1.0 - lam).sqrt();
    let (cut_h, cut_w) = ((height as f64 * ratio) as i64, (width as f64 * ratio) as i64);
    let cy = rng.gen_range(0..height.max(1));
    let cx = rng.gen_range(0..width.max(1));
    CutBox {
        y0: (cy - cut_h / 2).clamp(0, height),
        y1: (cy + cut_h / 2).clamp(0, height),
        x0: (cx - cut_w / 2).clamp(0, width),
        x1: (cx + cut_w / 2).clamp(0, width),
    }
}

/// A Beta(a, b) draw with numpy's `random_beta` algorithm: Jöhnk's rejection method (in log
/// space when both powers underflow) for `a, b <= 1`, else `Ga / (Ga + Gb)` from two Gamma draws.
pub fn sample_beta<R: Rng>(a: f64, b: f64, rng: &mut R) -> f64 {
    if a <= 1.0 && b <= 1.0 {
        loop {
            let u: f64 = rng.gen();
            let v: f64 = rng.gen();
            let x = u.powf(1.0 / a);
            let y = v.powf(1.0 / b);
            let xpy = x + y;
            if xpy <= 1.0 && u + v > 0.0 {
                if xpy > 0.0 {
                    return x / xpy;
                }
                let (mut lx, mut ly) = (u.ln() / a, v.ln() / b);
                let lm = lx.max(ly);
                lx -= lm;
                ly -= lm;
                return (lx - (lx.exp() + ly.exp()).ln()).exp();
            }
        }
    }
    let ga = sample_gamma(a, rng);
    let gb = sample_gamma(b, rng);
    ga / (ga + gb)
}

/// A standard Gamma(shape) draw: Marsaglia and Tsang's method, boosted for shape < 1
/// (`G(shape + 1) · U^(1/shape)`).
pub fn sample_gamma<R: Rng>(shape: f64, rng: &mut R) -> f64 {
    if shape < 1.0 {
        let u: f64 = rng.gen();
        return sample_gamma(shape + 1.0, rng) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let (x, v) = loop {
            let x = standard_normal(rng);
            let v = 1.0 + c * x;
            if v > 0.0 {
                break (x, v);
            }
        };
        let v = v * v * v;
        let u: f64 = rng.gen();
        if u < 1.0 - 0.0331 * x * x * x * x || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
            return d * v;
        }
    }
}

/// A standard normal draw (Box–Muller).
fn standard_normal<R: Rng>(rng: &mut R) -> f64 {
    let u1 = 1.0 - rng.gen::<f64>(); // (0, 1]
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use tch::Device;

    fn batch(n: i64) -> (Tensor, Tensor) {
        let x = Tensor::arange(n * 3 * 6 * 8, (Kind::Float, Device::Cpu)).view([n, 3, 6, 8]) / 100.0;
        let y = Tensor::from_slice(&(0..n).map(|i| i % 3).collect::<Vec<i64>>());
        (x, y)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn beta_moments() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for (a, b) in [(0.2, 0.2), (0.8, 0.8), (1.0, 1.0), (2.0, 2.0), (0.5, 3.0), (5.0, 1.5)] {
            let n = 40_000;
            let draws: Vec<f64> = (0..n).map(|_| sample_beta(a, b, &mut rng)).collect();
            assert!(draws.iter().all(|v| (0.0..=1.0).contains(v)));
            let mean = draws.iter().sum::<f64>() / n as f64;
            let var = draws.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
            let (m, s) = (a / (a + b), a * b / ((a + b).powi(2) * (a + b + 1.0)));
            assert!((mean - m).abs() < 4.0 * (s / n as f64).sqrt() + 1e-3, "Beta({a}, {b}) mean {mean} vs {m}");
            assert!((var - s).abs() < 0.05 * s + 1e-3, "Beta({a}, {b}) variance {var} vs {s}");
        }
        // Gamma's mean and variance are its shape.
        let g: Vec<f64> = (0..40_000).map(|_| sample_gamma(0.4, &mut rng)).collect();
        let mean = g.iter().sum::<f64>() / g.len() as f64;
        assert!((mean - 0.4).abs() < 0.02, "{mean}");
    }

    #[test]
    fn mixup_is_a_convex_blend_with_the_reversed_batch() {
        let (x, y) = batch(5);
        let m = Mixer::new(MixSettings { mixup_alpha: 0.4, label_smoothing: 0.1, ..Default::default() }, 4).unwrap();
        let lam = 0.3;
        let (mixed, t) = m.apply(&Mix::Mixup { lam }, &x, &y).unwrap();
        let want = &x * lam + x.flip([0]) * (1.0 - lam);
        assert_eq!(max_diff(&mixed, &want), 0.0);
        // The middle image of an odd batch is paired with itself.
        assert!(max_diff(&mixed.get(2), &x.get(2)) < 1e-6);
        // Targets: timm's formula, rows summing to 1.
        let (off, on) = (0.1 / 4.0, 1.0 - 0.1 + 0.1 / 4.0);
        let labels: Vec<i64> = Vec::try_from(&y).unwrap();
        for i in 0..5 {
            let j = 4 - i;
            for c in 0..4i64 {
                let hot = |l: i64| if l == c { on } else { off };
                let want = lam * hot(labels[i]) + (1.0 - lam) * hot(labels[j]);
                assert!((t.double_value(&[i as i64, c]) - want).abs() < 1e-6, "target [{i}, {c}]");
            }
        }
        let sums = t.sum_dim_intlist(1, false, Kind::Double);
        assert!((sums - 1.0).abs().max().double_value(&[]) < 1e-6);
        assert!(x.equal(&batch(5).0), "input untouched");
    }

    #[test]
    fn cutmix_pastes_the_reversed_batch_and_corrects_lambda() {
        let (x, y) = batch(4);
        let m = Mixer::new(MixSettings { cutmix_alpha: 1.0, ..Default::default() }, 3).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut clipped = 0;
        for _ in 0..200 {
            let mix = m.draw(6, 8, &mut rng);
            let Mix::CutMix { lam, cut } = mix else {
                assert_eq!(mix, Mix::None, "only CutMix is on");
                continue;
            };
            assert!(cut.y0 <= cut.y1 && cut.y1 <= 6 && cut.x0 <= cut.x1 && cut.x1 <= 8);
            assert!((lam - (1.0 - cut.area() as f64 / 48.0)).abs() < 1e-12, "corrected lambda");
            if cut.y0 == 0 || cut.x0 == 0 || cut.y1 == 6 || cut.x1 == 8 {
                clipped += 1;
            }
            let (mixed, t) = m.apply(&mix, &x, &y).unwrap();
            let flipped = x.flip([0]);
            let mask = Tensor::zeros([1, 1, 6, 8], (Kind::Bool, Device::Cpu));
            if cut.area() > 0 {
                let _ = mask.narrow(2, cut.y0, cut.y1 - cut.y0).narrow(3, cut.x0, cut.x1 - cut.x0).fill_(1);
            }
            let want = flipped.where_self(&mask, &x);
            assert_eq!(max_diff(&mixed, &want), 0.0);
            let own = t.gather(1, &y.view([-1, 1]), false).squeeze_dim(1);
            // Each own-label entry is lam, plus (1 − lam) when the partner has the same label.
            let partner = y.flip([0]);
            let want_own = Tensor::full([4], lam, (Kind::Float, Device::Cpu))
                + y.eq_tensor(&partner).to_kind(Kind::Float) * (1.0 - lam);
            assert!(max_diff(&own, &want_own) < 1e-6);
        }
        assert!(clipped > 0, "some boxes are clipped at the border");
    }

    #[test]
    fn switching_probability_and_off_states() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let both = Mixer::new(
            MixSettings { mixup_alpha: 0.8, cutmix_alpha: 1.0, switch_prob: 0.25, ..Default::default() },
            10,
        )
        .unwrap();
        let n = 4000;
        let cut = (0..n).filter(|_| matches!(both.draw(32, 32, &mut rng), Mix::CutMix { .. })).count();
        assert!((cut as f64 / n as f64 - 0.25).abs() < 0.03, "{cut}");
        let half = Mixer::new(MixSettings { mixup_alpha: 0.8, prob: 0.5, ..Default::default() }, 10).unwrap();
        let none = (0..n).filter(|_| half.draw(32, 32, &mut rng) == Mix::None).count();
        assert!((none as f64 / n as f64 - 0.5).abs() < 0.03, "{none}");
        let off = Mixer::new(MixSettings::default(), 10).unwrap();
        assert!(!off.settings.enabled());
        assert_eq!(off.draw(32, 32, &mut rng), Mix::None);
        // No mixing: targets are the (smoothed) one-hot rows.
        let (x, y) = batch(2);
        let t = mixup_target(&y, 3, 1.0, 0.0).unwrap();
        assert!(t.equal(&one_hot(&y, 3, 1.0, 0.0).unwrap()));
        let (same, _) = off.apply(&Mix::None, &x, &y).unwrap();
        assert!(same.equal(&x));
    }

    #[test]
    fn rand_bbox_has_timms_size() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        // lam 0.75: ratio 0.5, cut 50 x 40 of 100 x 80; unclipped boxes are 2·(cut//2) on a side.
        for _ in 0..100 {
            let b = rand_bbox(100, 80, 0.75, &mut rng);
            assert!(b.y1 - b.y0 <= 50 && b.x1 - b.x0 <= 40);
            if b.y0 > 0 && b.y1 < 100 {
                assert_eq!(b.y1 - b.y0, 50);
            }
        }
    }

    #[test]
    fn validation() {
        assert!(matches!(
            Mixer::new(MixSettings { mixup_alpha: -1.0, ..Default::default() }, 3),
            Err(MixError::Alpha { name: "mixup", .. })
        ));
        assert!(matches!(
            Mixer::new(MixSettings { prob: 2.0, ..Default::default() }, 3),
            Err(MixError::Probability { .. })
        ));
        assert!(matches!(Mixer::new(MixSettings::default(), 1), Err(MixError::Classes(1))));
        let m = Mixer::new(MixSettings::default(), 3).unwrap();
        let bad =
            m.apply(&Mix::None, &Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)), &Tensor::from_slice(&[0i64, 1]));
        assert!(matches!(bad, Err(MixError::Shape { .. })));
        let s = MixSettings { mixup_alpha: 0.2, cutmix_alpha: 1.0, ..Default::default() };
        let back: MixSettings = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
