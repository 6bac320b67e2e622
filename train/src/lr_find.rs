//! The learning-rate finder's arithmetic (Smith's range test as fastai's `lr_find` and
//! pytorch-lr-finder run it), without the sweep loop itself, which needs the model and the
//! loader and belongs to the trainer:
//!
//! * rates grow exponentially, `lr_i = start · (end / start)^(i / (n − 1))` for `i = 0..n`
//!   (pytorch-lr-finder's `ExponentialLR`; fastai's `SchedExp` divides by `n` instead and so
//!   never reaches `end`);
//! * the recorded loss is fastai's `AvgSmoothLoss(beta=0.98)`: `avg = β·avg + (1 − β)·loss`,
//!   debiased as `avg / (1 − β^(i+1))`;
//! * the sweep stops when the smoothed loss exceeds 4× the best so far (fastai's and
//!   pytorch-lr-finder's `diverge_th=4`), when a loss is not finite, or after `n` steps;
//! * the suggestion is fastai's default, `valley` ("the longest valley"): over the smoothed
//!   curve without its first `n // 10` and last 5 points (as `lr_find` trims it), the longest
//!   decreasing run of losses (a longest decreasing subsequence, O(n²) as fastai), and within it
//!   the point 1/3 + 1/6 of the way along — a rate where the loss still falls steadily, less
//!   aggressive than fastai's older `steep` (steepest descent of the smoothed curve), which is
//!   available too, as is `minimum` (a tenth of the rate at the lowest loss).

use image::RgbImage;
use infer::canvas::{Canvas, BLACK, BLUE, GRID, LINE, RED};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Finder settings that cannot be used.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum LrFindError {
    #[error("--lr-find needs 0 < start ({start}) < end ({end})")]
    Range { start: f64, end: f64 },
    #[error("--lr-find needs at least 6 steps, got {0}")]
    Steps(usize),
    #[error("lr finder smoothing beta must be in [0, 1), got {0}")]
    Beta(f64),
    #[error("lr finder divergence factor must be > 1, got {0}")]
    Diverge(f64),
}

/// How the finder picks its suggestion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Suggest {
    /// fastai's `valley` (its default since 2.5).
    #[default]
    Valley,
    /// fastai's `steep`: the rate where the smoothed loss falls fastest per log-rate.
    Steep,
    /// fastai's `minimum`: a tenth of the rate with the lowest smoothed loss.
    Minimum,
}

/// The sweep: fastai's defaults (`start_lr=1e-7, end_lr=10, num_it=100`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrFindSettings {
    pub start_lr: f64,
    pub end_lr: f64,
    pub num_steps: usize,
    /// Smoothing of the recorded loss.
    pub beta: f64,
    /// Stop when the smoothed loss exceeds this many times the best.
    pub diverge_factor: f64,
    pub suggest: Suggest,
}

impl Default for LrFindSettings {
    fn default() -> Self {
        LrFindSettings {
            start_lr: 1e-7,
            end_lr: 10.0,
            num_steps: 100,
            beta: 0.98,
            diverge_factor: 4.0,
            suggest: Suggest::Valley,
        }
    }
}

impl LrFindSettings {
    pub fn validate(&self) -> Result<(), LrFindError> {
        if !(self.start_lr > 0.0 && self.start_lr < self.end_lr && self.end_lr.is_finite()) {
            return Err(LrFindError::Range { start: self.start_lr, end: self.end_lr });
        }
        if self.num_steps < 6 {
            return Err(LrFindError::Steps(self.num_steps));
        }
        if !(0.0..1.0).contains(&self.beta) {
            return Err(LrFindError::Beta(self.beta));
        }
        if self.diverge_factor.is_nan() || self.diverge_factor <= 1.0 {
            return Err(LrFindError::Diverge(self.diverge_factor));
        }
        Ok(())
    }
}

/// What [`LrFinder::record`] tells the sweep loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// The last step was taken.
    Done,
    /// The smoothed loss passed the divergence threshold.
    Diverged,
    /// The loss was NaN or infinite.
    NotFinite,
}

/// A suggested rate and the point of the curve it comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Suggestion {
    pub lr: f64,
    /// The (rate, smoothed loss) point to mark on the plot.
    pub point: (f64, f64),
    pub method: Suggest,
}

/// The sweep's state: call [`Self::lr`] for the rate of step `i`, train one batch at it, then
/// [`Self::record`] its loss; stop when the verdict is not `Continue`.
#[derive(Debug, Clone, PartialEq)]
pub struct LrFinder {
    settings: LrFindSettings,
    lrs: Vec<f64>,
    losses: Vec<f64>,
    smoothed: Vec<f64>,
    avg: f64,
    best: f64,
}

impl LrFinder {
    pub fn new(settings: LrFindSettings) -> Result<LrFinder, LrFindError> {
        settings.validate()?;
        Ok(LrFinder {
            settings,
            lrs: Vec::new(),
            losses: Vec::new(),
            smoothed: Vec::new(),
            avg: 0.0,
            best: f64::INFINITY,
        })
    }

    pub fn settings(&self) -> &LrFindSettings {
        &self.settings
    }

    /// The rate of step `step` (0-based): `start · (end/start)^(step/(n−1))`.
    pub fn lr(&self, step: usize) -> f64 {
        let s = &self.settings;
        let r = step as f64 / (s.num_steps - 1) as f64;
        s.start_lr * (s.end_lr / s.start_lr).powf(r)
    }

    /// Records the loss of the next step (steps are recorded in order from 0).
    pub fn record(&mut self, loss: f64) -> Verdict {
        let step = self.losses.len();
        let lr = self.lr(step);
        if !loss.is_finite() {
            return Verdict::NotFinite;
        }
        let beta = self.settings.beta;
        self.avg = beta * self.avg + (1.0 - beta) * loss;
        let smooth = self.avg / (1.0 - beta.powi(step as i32 + 1));
        self.lrs.push(lr);
        self.losses.push(loss);
        self.smoothed.push(smooth);
        if smooth < self.best {
            self.best = smooth;
        }
        if smooth > self.settings.diverge_factor * self.best {
            return Verdict::Diverged;
        }
        if self.losses.len() >= self.settings.num_steps {
            return Verdict::Done;
        }
        Verdict::Continue
    }

    /// Rates and smoothed losses recorded so far.
    pub fn curve(&self) -> (&[f64], &[f64]) {
        (&self.lrs, &self.smoothed)
    }

    /// The raw batch losses recorded so far.
    pub fn raw_losses(&self) -> &[f64] {
        &self.losses
    }

    /// The points the suggestion is chosen from: fastai's `[num_it // 10 : -5]`.
    fn trimmed(&self) -> (&[f64], &[f64]) {
        let n = self.lrs.len();
        let lo = self.settings.num_steps / 10;
        let hi = n.saturating_sub(5);
        if lo >= hi {
            return (&[], &[]);
        }
        (&self.lrs[lo..hi], &self.smoothed[lo..hi])
    }

    /// The suggested rate by the settings' method; `None` when too few points were recorded.
    pub fn suggestion(&self) -> Option<Suggestion> {
        self.suggest(self.settings.suggest)
    }

    /// The suggested rate by `method`.
    pub fn suggest(&self, method: Suggest) -> Option<Suggestion> {
        let (lrs, losses) = self.trimmed();
        let (lr, point) = match method {
            Suggest::Valley => valley(lrs, losses)?,
            Suggest::Steep => steep(lrs, losses)?,
            Suggest::Minimum => minimum(lrs, losses)?,
        };
        Some(Suggestion { lr, point, method })
    }

    /// Smoothed loss against rate on a log axis (without the last 5 points, as fastai plots
    /// it), the suggestion marked in red.
    pub fn plot(&self) -> RgbImage {
        let n = self.lrs.len();
        let end = if n > 5 { n - 5 } else { n };
        plot_curve(&self.lrs[..end], &self.smoothed[..end], self.suggestion())
    }
}

/// fastai's `valley`.
pub fn valley(lrs: &[f64], losses: &[f64]) -> Option<(f64, (f64, f64))> {
    let n = losses.len();
    if n == 0 {
        return None;
    }
    let (mut max_start, mut max_end) = (0i64, 0usize);
    let mut lds = vec![1usize; n];
    for i in 1..n {
        for j in 0..i {
            if losses[i] < losses[j] && lds[i] < lds[j] + 1 {
                lds[i] = lds[j] + 1;
            }
            if lds[max_end] < lds[i] {
                max_end = i;
                max_start = max_end as i64 - lds[max_end] as i64;
            }
        }
    }
    let sections = (max_end as i64 - max_start) as f64 / 3.0;
    let idx = max_start + sections as i64 + (sections / 2.0) as i64;
    // Python indexing: −1 is the last point.
    let idx = if idx < 0 { idx + n as i64 } else { idx } as usize;
    let idx = idx.min(n - 1);
    Some((lrs[idx], (lrs[idx], losses[idx])))
}

/// fastai's `steep`: the left point of the steepest descending segment in log-rate.
pub fn steep(lrs: &[f64], losses: &[f64]) -> Option<(f64, (f64, f64))> {
    if lrs.len() < 2 {
        return None;
    }
    let mut best = (f64::INFINITY, 0usize);
    for i in 0..lrs.len() - 1 {
        let g = (losses[i + 1] - losses[i]) / (lrs[i + 1].ln() - lrs[i].ln());
        if g < best.0 {
            best = (g, i);
        }
    }
    let i = best.1;
    Some((lrs[i], (lrs[i], losses[i])))
}

/// fastai's `minimum`: a tenth of the rate at the lowest loss.
pub fn minimum(lrs: &[f64], losses: &[f64]) -> Option<(f64, (f64, f64))> {
    let i = (0..losses.len()).min_by(|&a, &b| losses[a].total_cmp(&losses[b]))?;
    Some((lrs[i] / 10.0, (lrs[i], losses[i])))
}

/// `1e-3` style label of a power of ten.
fn decade_label(e: i32) -> String {
    format!("1e{e}")
}

/// The finder's figure: loss against learning rate, log axis.
pub fn plot_curve(lrs: &[f64], losses: &[f64], suggestion: Option<Suggestion>) -> RgbImage {
    let (w, h) = (640i64, 420i64);
    let (left, right, top, bottom) = (70i64, 20i64, 40i64, 50i64);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let mut cv = Canvas::new(w as u32, h as u32);
    let title = match suggestion {
        Some(s) => format!("learning-rate finder — suggested {:.2e} ({:?})", s.lr, s.method).to_lowercase(),
        None => "learning-rate finder".to_string(),
    };
    cv.text(w / 2 - Canvas::text_width(&title, 1) / 2, 10, &title, BLACK, 1);
    let pts: Vec<(f64, f64)> =
        lrs.iter().zip(losses).filter(|(l, v)| **l > 0.0 && v.is_finite()).map(|(l, v)| (l.log10(), *v)).collect();
    if pts.is_empty() {
        cv.text(left + 10, top + ph / 2, "no points recorded", BLACK, 1);
        return cv.img;
    }
    let (xmin, xmax) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (ymin, ymax) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (xmin, xmax) = (xmin.floor(), xmax.ceil().max(xmin.floor() + 1.0));
    let pad = ((ymax - ymin) * 0.05).max(1e-6);
    let (ymin, ymax) = (ymin - pad, ymax + pad);
    let xs = |x: f64| left + ((x - xmin) / (xmax - xmin) * pw as f64).round() as i64;
    let ys = |y: f64| top + ph - ((y - ymin) / (ymax - ymin) * ph as f64).round() as i64;
    for e in xmin as i32..=xmax as i32 {
        let x = xs(f64::from(e));
        cv.line((x, top), (x, top + ph), GRID, 1);
        let label = decade_label(e);
        cv.text(x - Canvas::text_width(&label, 1) / 2, top + ph + 6, &label, BLACK, 1);
    }
    for i in 0..=4 {
        let v = ymin + (ymax - ymin) * f64::from(i) / 4.0;
        let y = ys(v);
        cv.line((left, y), (left + pw, y), GRID, 1);
        let label = format!("{v:.3}");
        cv.text(left - Canvas::text_width(&label, 1) - 6, y - LINE / 2, &label, BLACK, 1);
    }
    cv.line((left, top), (left, top + ph), BLACK, 1);
    cv.line((left, top + ph), (left + pw, top + ph), BLACK, 1);
    cv.text(left + pw / 2 - 40, top + ph + 26, "learning rate (log)", BLACK, 1);
    cv.text(8, top - 20, "loss", BLACK, 1);
    for pair in pts.windows(2) {
        cv.line((xs(pair[0].0), ys(pair[0].1)), (xs(pair[1].0), ys(pair[1].1)), BLUE, 2);
    }
    if let Some(s) = suggestion {
        let (x, y) = (xs(s.point.0.log10()), ys(s.point.1));
        cv.fill(x - 4, y - 4, 9, 9, RED);
    }
    cv.img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_rates() {
        let f = LrFinder::new(LrFindSettings::default()).unwrap();
        assert!((f.lr(0) - 1e-7).abs() < 1e-20);
        assert!((f.lr(99) - 10.0).abs() < 1e-12);
        let ratio = f.lr(51) / f.lr(50);
        assert!((ratio - (1e8f64).powf(1.0 / 99.0)).abs() < 1e-12);
    }

    #[test]
    fn smoothing_is_debiased_and_divergence_stops() {
        let mut f = LrFinder::new(LrFindSettings::default()).unwrap();
        assert_eq!(f.record(2.0), Verdict::Continue);
        // Debiased: a constant loss stays itself.
        assert!((f.curve().1[0] - 2.0).abs() < 1e-12);
        assert_eq!(f.record(2.0), Verdict::Continue);
        assert!((f.curve().1[1] - 2.0).abs() < 1e-12);
        f.record(1.0);
        let avg = 0.98 * (0.98 * 0.02 * 2.0 + 0.02 * 2.0) + 0.02 * 1.0;
        assert!((f.curve().1[2] - avg / (1.0 - 0.98f64.powi(3))).abs() < 1e-12);
        let mut v = Verdict::Continue;
        while v == Verdict::Continue {
            v = f.record(1000.0);
        }
        assert_eq!(v, Verdict::Diverged);
        assert_eq!(f.record(f64::NAN), Verdict::NotFinite);
        let mut g = LrFinder::new(LrFindSettings { num_steps: 6, ..Default::default() }).unwrap();
        let verdicts: Vec<Verdict> = (0..6).map(|_| g.record(1.0)).collect();
        assert_eq!(verdicts[5], Verdict::Done);
    }

    #[test]
    fn valley_steep_and_minimum_as_fastai() {
        // A loss that is flat, falls from index 10 to 40, then rises.
        let lrs: Vec<f64> = (0..60).map(|i| 1e-5 * 1.2f64.powi(i)).collect();
        let losses: Vec<f64> = (0..60)
            .map(|i| match i {
                0..10 => 2.0 + 0.001 * (i % 2) as f64,
                10..40 => 2.0 - 0.05 * (i - 10) as f64,
                _ => 0.5 + 0.1 * (i - 40) as f64,
            })
            .collect();
        // The longest decreasing run ends at 39; fastai's indices: start = end − length.
        let (lr, (_, loss)) = valley(&lrs, &losses).unwrap();
        let idx = lrs.iter().position(|&l| l == lr).unwrap();
        assert!((14..=26).contains(&idx), "{idx}");
        assert_eq!(loss, losses[idx]);
        let (s, _) = steep(&lrs, &losses).unwrap();
        let si = lrs.iter().position(|&l| l == s).unwrap();
        assert!((10..40).contains(&si), "{si}");
        let (m, (at, _)) = minimum(&lrs, &losses).unwrap();
        assert_eq!(at, lrs[40]);
        assert_eq!(m, lrs[40] / 10.0);
        assert!(valley(&[], &[]).is_none());
    }

    #[test]
    fn suggestion_uses_fastais_trim_and_plots() {
        let mut f = LrFinder::new(LrFindSettings { num_steps: 50, ..Default::default() }).unwrap();
        // The loss falls with the log rate, then blows up.
        let mut v = Verdict::Continue;
        let mut i = 0;
        while v == Verdict::Continue {
            let x = (f.lr(i).log10() + 7.0) / 8.0; // 0 → 1 over the sweep
            let loss = if x < 0.7 { 2.5 - 2.0 * x } else { 1.1 + 300.0 * (x - 0.7) };
            v = f.record(loss);
            i += 1;
        }
        assert_eq!(v, Verdict::Diverged);
        let s = f.suggestion().unwrap();
        assert!(s.lr > 1e-6 && s.lr < 1e-1, "{}", s.lr);
        let img = f.plot();
        assert_eq!(img.dimensions(), (640, 420));
        assert!(img.pixels().filter(|p| **p == RED).count() > 40);
        assert!(img.pixels().filter(|p| **p == BLUE).count() > 100);
        let empty = LrFinder::new(LrFindSettings::default()).unwrap();
        assert!(empty.suggestion().is_none());
        assert_eq!(empty.plot().dimensions(), (640, 420));
        assert!(LrFindSettings { start_lr: 1.0, end_lr: 0.5, ..Default::default() }.validate().is_err());
        assert!(LrFindSettings { num_steps: 3, ..Default::default() }.validate().is_err());
    }
}
