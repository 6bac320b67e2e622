//! Training-time augmentation: torchvision's `RandomResizedCrop` and `RandomHorizontalFlip`.
//! Only the random parameters live here; the pixels go through the deployment resampler in
//! `infer::preprocess`.

use infer::Rect;
use rand::Rng;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The augmentation settings: `RandomResizedCrop(scale, ratio)` and whether to flip
/// horizontally, with torchvision's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// Range of the crop's area, as a fraction of the image's.
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio (width / height).
    pub ratio: (f64, f64),
    /// `RandomHorizontalFlip()`; off for digits, text and anything with handedness.
    pub flip: bool,
}

impl Default for Augment {
    fn default() -> Self {
        Augment { scale: (0.08, 1.0), ratio: (3.0 / 4.0, 4.0 / 3.0), flip: true }
    }
}

/// An augmentation range that cannot be drawn from.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum AugmentError {
    #[error("--crop-scale {min} {max}: need 0 < MIN <= MAX <= 1")]
    Scale { min: f64, max: f64 },
    #[error("--crop-ratio {min} {max}: need 0 < MIN <= MAX")]
    Ratio { min: f64, max: f64 },
}

impl Augment {
    pub fn validate(&self) -> Result<(), AugmentError> {
        let (s0, s1) = self.scale;
        if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0) {
            return Err(AugmentError::Scale { min: s0, max: s1 });
        }
        let (r0, r1) = self.ratio;
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return Err(AugmentError::Ratio { min: r0, max: r1 });
        }
        Ok(())
    }

    /// One line for pictures and logs, e.g. `RandomResizedCrop(scale=(0.08, 1), ratio=(0.75, 1.33)) + flip`.
    pub fn describe(&self) -> String {
        format!(
            "RandomResizedCrop(scale=({}, {}), ratio=({:.2}, {:.2})){}",
            self.scale.0,
            self.scale.1,
            self.ratio.0,
            self.ratio.1,
            if self.flip { " + RandomHorizontalFlip" } else { ", no flip" }
        )
    }
}

/// Python's `round`: halves go to the even neighbour.
fn py_round(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// torchvision's `RandomResizedCrop.get_params`: up to ten tries at a random area and aspect
/// ratio that fit, then a centre crop clamped to the ratio range.
pub fn random_resized_crop<R: Rng>(width: u32, height: u32, p: &Augment, rng: &mut R) -> Rect {
    let (w0, h0) = (i64::from(width), i64::from(height));
    let area = (w0 * h0) as f64;
    let (log_lo, log_hi) = (p.ratio.0.ln(), p.ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * rng.gen_range(p.scale.0..=p.scale.1);
        let aspect = rng.gen_range(log_lo..=log_hi).exp();
        let w = py_round((target_area * aspect).sqrt());
        let h = py_round((target_area / aspect).sqrt());
        if 0 < w && w <= w0 && 0 < h && h <= h0 {
            let i = rng.gen_range(0..=h0 - h);
            let j = rng.gen_range(0..=w0 - w);
            return Rect::new(j as u32, i as u32, w as u32, h as u32);
        }
    }
    let in_ratio = w0 as f64 / h0 as f64;
    let (w, h) = if in_ratio < p.ratio.0 {
        (w0, py_round(w0 as f64 / p.ratio.0))
    } else if in_ratio > p.ratio.1 {
        (py_round(h0 as f64 * p.ratio.1), h0)
    } else {
        (w0, h0)
    };
    let (w, h) = (w.clamp(1, w0), h.clamp(1, h0));
    Rect::new(((w0 - w) / 2) as u32, ((h0 - h) / 2) as u32, w as u32, h as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn crops_fit_and_respect_ranges() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let p = Augment::default();
        let mut areas = Vec::new();
        for _ in 0..2000 {
            let r = random_resized_crop(500, 375, &p, &mut rng);
            assert!(r.width >= 1 && r.height >= 1);
            assert!(r.x + r.width <= 500 && r.y + r.height <= 375);
            areas.push(f64::from(r.width * r.height) / (500.0 * 375.0));
        }
        let min = areas.iter().cloned().fold(f64::MAX, f64::min);
        let max = areas.iter().cloned().fold(0.0, f64::max);
        assert!(min < 0.12 && min > 0.07, "{min}");
        assert!(max > 0.9, "{max}");
    }

    #[test]
    fn extreme_aspect_falls_back_to_clamped_centre_crop() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        // 1000x10: no random crop with ratio <= 4/3 and area >= 8% fits; falls back.
        let r = random_resized_crop(1000, 10, &Augment::default(), &mut rng);
        assert_eq!((r.width, r.height), (13, 10));
        assert_eq!(r.x, (1000 - 13) / 2);
    }
}
