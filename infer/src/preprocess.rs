//! The deployment transform: the only place that turns a decoded RGB image into model input.
//!
//! It reproduces torchvision's eval transform on PIL images — `Resize(256)` (bilinear,
//! antialiased), `CenterCrop(224)`, `ToTensor()`, `Normalize(mean, std)` — down to Pillow's
//! fixed-point resampler, so the exported model sees the same numbers it was validated on.
//! Training reuses [`PreprocessConfig::resized_crop_into`] for its random crops, so train-time
//! and deploy-time pixels come from one resampler.

use image::RgbImage;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// ImageNet channel means (RGB), as used by torchvision's pretrained models.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Why an image could not be turned into model input.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PreprocessError {
    #[error("image has no pixels ({width}x{height})")]
    EmptyImage { width: u32, height: u32 },
    #[error("crop {rect:?} lies outside the {width}x{height} image")]
    CropOutOfBounds { rect: Rect, width: u32, height: u32 },
    #[error("output buffer holds {got} values, {expected} needed")]
    BufferSize { expected: usize, got: usize },
    #[error("invalid preprocessing settings: {0}")]
    InvalidConfig(String),
}

/// Resampling filter of the resize step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// Triangle filter, as PIL's `Image.BILINEAR`.
    Bilinear,
}

impl Interpolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Interpolation::Bilinear => "bilinear",
        }
    }
}

/// A rectangle in pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    pub fn new(x: u32, y: u32, width: u32, height: u32) -> Self {
        Rect { x, y, width, height }
    }

    fn fits_in(&self, width: u32, height: u32) -> bool {
        self.width > 0
            && self.height > 0
            && u64::from(self.x) + u64::from(self.width) <= u64::from(width)
            && u64::from(self.y) + u64::from(self.height) <= u64::from(height)
    }
}

/// Everything needed to turn an image into the model's input tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessConfig {
    /// The shorter side is resized to this many pixels (torchvision `Resize(int)`).
    pub resize_size: u32,
    /// Side of the square centre crop fed to the model.
    pub crop_size: u32,
    pub interpolation: Interpolation,
    /// Widen the filter when downscaling, as PIL always does.
    pub antialias: bool,
    /// Per-channel mean, in [0, 1] units, RGB order.
    pub mean: [f32; 3],
    /// Per-channel standard deviation, RGB order.
    pub std: [f32; 3],
    /// The colour transparent images are composited onto before the transform; none: their
    /// alpha is dropped, as PIL's `convert("RGB")` drops it (see [`crate::background`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<crate::background::Background>,
}

impl Default for PreprocessConfig {
    /// The seed's ImageNet settings: resize 256, centre crop 224, bilinear with antialiasing.
    fn default() -> Self {
        PreprocessConfig {
            resize_size: 256,
            crop_size: 224,
            interpolation: Interpolation::Bilinear,
            antialias: true,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            background: None,
        }
    }
}

impl PreprocessConfig {
    /// Checks the settings; every other method assumes they hold.
    pub fn validate(&self) -> Result<(), PreprocessError> {
        let bad = |msg: String| Err(PreprocessError::InvalidConfig(msg));
        if self.crop_size == 0 || self.crop_size > 4096 {
            return bad(format!("crop size {} not in 1..=4096", self.crop_size));
        }
        if self.resize_size < self.crop_size || self.resize_size > 8192 {
            return bad(format!(
                "resize size {} must be between the crop size {} and 8192",
                self.resize_size, self.crop_size
            ));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return bad(format!("std {:?} must be finite and positive", self.std));
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return bad(format!("mean {:?} must be finite", self.mean));
        }
        Ok(())
    }

    /// Number of `f32` values in one preprocessed image (`3 × crop × crop`).
    pub fn input_len(&self) -> usize {
        3 * self.crop_size as usize * self.crop_size as usize
    }

    /// Size of the resized image and the centre-crop window inside it, for a `width × height`
    /// input: torchvision's `Resize(resize_size)` then `CenterCrop(crop_size)`.
    pub fn eval_geometry(&self, width: u32, height: u32) -> Result<(u32, u32, Rect), PreprocessError> {
        if width == 0 || height == 0 {
            return Err(PreprocessError::EmptyImage { width, height });
        }
        let (short, long) = if width <= height { (width, height) } else { (height, width) };
        let new_short = u64::from(self.resize_size);
        // Python's `int(size * long / short)`: a float division, truncated.
        let new_long = (new_short * u64::from(long)) as f64 / f64::from(short);
        let new_long = new_long.min(f64::from(u32::MAX)) as u32;
        let (rw, rh) = if width <= height { (self.resize_size, new_long) } else { (new_long, self.resize_size) };
        let c = self.crop_size;
        // torchvision: int(round((h - c) / 2.0)), Python rounds half to even.
        let top = (f64::from(rh - c) / 2.0).round_ties_even() as u32;
        let left = (f64::from(rw - c) / 2.0).round_ties_even() as u32;
        Ok((rw, rh, Rect::new(left, top, c, c)))
    }

    /// The eval (deployment) transform into `out`, a CHW `f32` buffer of [`Self::input_len`].
    pub fn eval_into(&self, img: &RgbImage, out: &mut [f32]) -> Result<(), PreprocessError> {
        self.check_out(out)?;
        let (rw, rh, window) = self.eval_geometry(img.width(), img.height())?;
        let full = Rect::new(0, 0, img.width(), img.height());
        let cropped = resample(img, full, rw, rh, window, self.antialias)?;
        self.normalize_into(&cropped, false, out);
        Ok(())
    }

    /// The eval transform, allocating its output.
    pub fn eval(&self, img: &RgbImage) -> Result<Vec<f32>, PreprocessError> {
        let mut out = vec![0.0; self.input_len()];
        self.eval_into(img, &mut out)?;
        Ok(out)
    }

    /// torchvision's `resized_crop` then optional horizontal flip and normalisation: the region
    /// `crop` of `img` is resized to `crop_size × crop_size`. Training's random crops use this.
    pub fn resized_crop_into(
        &self,
        img: &RgbImage,
        crop: Rect,
        flip: bool,
        out: &mut [f32],
    ) -> Result<(), PreprocessError> {
        self.check_out(out)?;
        let c = self.crop_size;
        let resized = resample(img, crop, c, c, Rect::new(0, 0, c, c), self.antialias)?;
        self.normalize_into(&resized, flip, out);
        Ok(())
    }

    fn check_out(&self, out: &[f32]) -> Result<(), PreprocessError> {
        if out.len() != self.input_len() {
            return Err(PreprocessError::BufferSize { expected: self.input_len(), got: out.len() });
        }
        Ok(())
    }

    /// `ToTensor` + `Normalize`, HWC u8 to CHW f32, in float32 arithmetic as torchvision does.
    fn normalize_into(&self, img: &RgbImage, flip: bool, out: &mut [f32]) {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, slot) in table.iter_mut().enumerate() {
                *slot = (v as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        let plane = w * h;
        let raw = img.as_raw();
        for y in 0..h {
            let row = &raw[y * w * 3..(y + 1) * w * 3];
            for x in 0..w {
                let dst = y * w + if flip { w - 1 - x } else { x };
                let px = &row[x * 3..x * 3 + 3];
                out[dst] = lut[0][px[0] as usize];
                out[plane + dst] = lut[1][px[1] as usize];
                out[2 * plane + dst] = lut[2][px[2] as usize];
            }
        }
    }
}

/// Pillow's fixed-point precision for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Filter taps of one output pixel along one axis.
struct Taps {
    /// First input index.
    start: usize,
    /// Fixed-point weights for inputs `start..start + weights.len()`.
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear filter, restricted to
/// outputs `first..first + count` of a resize from `in_size` to `out_size`.
fn taps(in_size: u32, out_size: u32, first: u32, count: u32, antialias: bool) -> Vec<Taps> {
    let scale = f64::from(in_size) / f64::from(out_size);
    let filterscale = if antialias { scale.max(1.0) } else { 1.0 };
    let support = filterscale; // bilinear support is 1.0
    let ss = 1.0 / filterscale;
    (first..first + count)
        .map(|xx| {
            let center = (f64::from(xx) + 0.5) * scale;
            // C casts truncate toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
            let n = (xmax - xmin).max(0) as usize;
            let raw: Vec<f64> = (0..n)
                .map(|x| {
                    let d = ((x as i64 + xmin) as f64 - center + 0.5) * ss;
                    (1.0 - d.abs()).max(0.0)
                })
                .collect();
            let sum: f64 = raw.iter().sum();
            let one = f64::from(1u32 << PRECISION_BITS);
            let weights = raw
                .iter()
                .map(|&k| {
                    let k = if sum != 0.0 { k / sum } else { k };
                    if k < 0.0 {
                        (-0.5 + k * one) as i32
                    } else {
                        (0.5 + k * one) as i32
                    }
                })
                .collect();
            Taps { start: xmin as usize, weights }
        })
        .collect()
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes the `region` of `src` (treated as a whole image, as after a PIL crop) to a virtual
/// `out_w × out_h` image and returns only its `window`. Two separable passes, horizontal first,
/// with an 8-bit intermediate — Pillow's `ImagingResample` exactly, but computing only the
/// rows and columns the window needs.
pub fn resample(
    src: &RgbImage,
    region: Rect,
    out_w: u32,
    out_h: u32,
    window: Rect,
    antialias: bool,
) -> Result<RgbImage, PreprocessError> {
    if src.width() == 0 || src.height() == 0 {
        return Err(PreprocessError::EmptyImage { width: src.width(), height: src.height() });
    }
    if !region.fits_in(src.width(), src.height()) {
        return Err(PreprocessError::CropOutOfBounds { rect: region, width: src.width(), height: src.height() });
    }
    if !window.fits_in(out_w, out_h) {
        return Err(PreprocessError::CropOutOfBounds { rect: window, width: out_w, height: out_h });
    }
    let htaps = taps(region.width, out_w, window.x, window.width, antialias);
    let vtaps = taps(region.height, out_h, window.y, window.height, antialias);

    // Input rows (relative to the region) that the vertical pass reads.
    let row_first = vtaps.iter().map(|t| t.start).min().unwrap_or(0);
    let row_last = vtaps.iter().map(|t| t.start + t.weights.len()).max().unwrap_or(0);
    let rows = row_last.saturating_sub(row_first);

    let stride = src.width() as usize * 3;
    let raw = src.as_raw();
    let ww = window.width as usize;
    let half = 1i32 << (PRECISION_BITS - 1);

    // Horizontal pass: `rows` rows × window columns.
    let mut tmp = vec![0u8; rows * ww * 3];
    for r in 0..rows {
        let y = region.y as usize + row_first + r;
        let line = &raw[y * stride + region.x as usize * 3..];
        let dst = &mut tmp[r * ww * 3..(r + 1) * ww * 3];
        for (o, t) in htaps.iter().enumerate() {
            let (mut s0, mut s1, mut s2) = (half, half, half);
            let px = &line[t.start * 3..(t.start + t.weights.len()) * 3];
            for (k, p) in t.weights.iter().zip(px.chunks_exact(3)) {
                s0 += i32::from(p[0]) * k;
                s1 += i32::from(p[1]) * k;
                s2 += i32::from(p[2]) * k;
            }
            dst[o * 3] = clip8(s0);
            dst[o * 3 + 1] = clip8(s1);
            dst[o * 3 + 2] = clip8(s2);
        }
    }

    // Vertical pass over the intermediate rows.
    let wh = window.height as usize;
    let mut out = vec![0u8; wh * ww * 3];
    let mut acc = vec![0i32; ww * 3];
    for (o, t) in vtaps.iter().enumerate() {
        acc.fill(half);
        for (i, k) in t.weights.iter().enumerate() {
            let r = t.start + i - row_first;
            let line = &tmp[r * ww * 3..(r + 1) * ww * 3];
            for (a, p) in acc.iter_mut().zip(line) {
                *a += i32::from(*p) * k;
            }
        }
        for (d, a) in out[o * ww * 3..(o + 1) * ww * 3].iter_mut().zip(&acc) {
            *d = clip8(*a);
        }
    }
    Ok(RgbImage::from_raw(window.width, window.height, out).expect("buffer sized for the window"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, ((x + y) % 256) as u8]))
    }

    #[test]
    fn geometry_matches_torchvision_rules() {
        let cfg = PreprocessConfig::default();
        // 500x375 landscape: short side 375 -> 256, long int(256*500/375) = 341.
        let (w, h, crop) = cfg.eval_geometry(500, 375).unwrap();
        assert_eq!((w, h), (341, 256));
        // (341-224)/2 = 58.5 rounds half to even -> 58; (256-224)/2 = 16.
        assert_eq!(crop, Rect::new(58, 16, 224, 224));
        let (w, h, crop) = cfg.eval_geometry(375, 500).unwrap();
        assert_eq!((w, h), (256, 341));
        assert_eq!(crop, Rect::new(16, 58, 224, 224));
        // (343-224)/2 = 59.5 -> 60 (half to even).
        let (_, _, crop) = cfg.eval_geometry(343, 256).unwrap();
        assert_eq!(crop.x, 60);
        assert!(cfg.eval_geometry(0, 10).is_err());
    }

    #[test]
    fn identity_resize_is_exact() {
        let img = gradient(40, 30);
        let out = resample(&img, Rect::new(0, 0, 40, 30), 40, 30, Rect::new(0, 0, 40, 30), true).unwrap();
        assert_eq!(out, img);
    }

    #[test]
    fn window_equals_crop_of_full_resize() {
        let img = gradient(97, 61);
        let full = resample(&img, Rect::new(0, 0, 97, 61), 53, 40, Rect::new(0, 0, 53, 40), true).unwrap();
        let win = resample(&img, Rect::new(0, 0, 97, 61), 53, 40, Rect::new(7, 5, 30, 20), true).unwrap();
        for y in 0..20 {
            for x in 0..30 {
                assert_eq!(win.get_pixel(x, y), full.get_pixel(x + 7, y + 5));
            }
        }
    }

    #[test]
    fn uniform_image_stays_uniform_and_normalises() {
        let img = RgbImage::from_pixel(300, 200, image::Rgb([255, 128, 0]));
        let cfg = PreprocessConfig::default();
        let t = cfg.eval(&img).unwrap();
        let plane = 224 * 224;
        assert!((t[0] - (1.0 - 0.485) / 0.229).abs() < 1e-6);
        assert!((t[plane] - (128.0 / 255.0 - 0.456) / 0.224).abs() < 1e-6);
        assert!((t[2 * plane] - (0.0 - 0.406) / 0.225).abs() < 1e-6);
        assert!(t.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn flip_mirrors_columns() {
        let img = gradient(64, 48);
        let cfg = PreprocessConfig { resize_size: 32, crop_size: 32, ..Default::default() };
        let mut a = vec![0.0; cfg.input_len()];
        let mut b = vec![0.0; cfg.input_len()];
        let crop = Rect::new(3, 4, 40, 30);
        cfg.resized_crop_into(&img, crop, false, &mut a).unwrap();
        cfg.resized_crop_into(&img, crop, true, &mut b).unwrap();
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    assert_eq!(a[c * 1024 + y * 32 + x], b[c * 1024 + y * 32 + 31 - x]);
                }
            }
        }
    }

    #[test]
    fn rejects_bad_input() {
        let cfg = PreprocessConfig::default();
        let img = gradient(10, 10);
        assert!(matches!(
            cfg.resized_crop_into(&img, Rect::new(5, 5, 10, 10), false, &mut vec![0.0; cfg.input_len()]),
            Err(PreprocessError::CropOutOfBounds { .. })
        ));
        assert!(matches!(cfg.eval_into(&img, &mut [0.0; 3]), Err(PreprocessError::BufferSize { .. })));
        let bad = PreprocessConfig { resize_size: 100, ..Default::default() };
        assert!(bad.validate().is_err());
        assert!(PreprocessConfig::default().validate().is_ok());
    }

    #[test]
    fn extreme_aspect_ratio_only_computes_the_window() {
        // 1 x 4000 would resize to 256 x 1_024_000; only the 224 x 224 window is computed.
        let img = gradient(1, 4000);
        let t = PreprocessConfig::default().eval(&img).unwrap();
        assert_eq!(t.len(), 3 * 224 * 224);
    }
}
