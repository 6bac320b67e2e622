//! Automatic augmentation policies on 8-bit RGB images, as torchvision.transforms.v2 applies
//! them to PIL images: `TrivialAugmentWide`, `RandAugment(num_ops, magnitude)` and
//! `ColorJitter(brightness, contrast, saturation, hue)`; and `RandomErasing`, which torchvision
//! applies to the normalised float tensor and so is here on the CHW `f32` model input.
//!
//! Each operation takes its parameters explicitly ([`apply`]); the policies draw the operation
//! and its magnitude from a caller's seeded [`rand::Rng`], with torchvision's distributions
//! (not its random stream: the loader seeds one generator per sample).
//!
//! # Reference and exactness
//!
//! torchvision's v2 functionals dispatch a PIL image to Pillow, so the reference of the
//! operations below is Pillow's C code as torchvision calls it (Pillow 13 in the venv); the
//! parity test `tests/tests/augment_parity.rs` runs torchvision on the same pictures.
//!
//! * Exact (bit for bit): Identity; ShearX/ShearY/TranslateX/TranslateY/Rotate (torchvision's
//!   inverse affine matrix in double precision, then Pillow's nearest-neighbour affine: its
//!   16.16 fixed-point path, the scale-only path for translations, the transposes for 90/180/270°
//!   and Python's `round(·, 15)` of the rotation matrix); Brightness, Color, Contrast and
//!   Sharpness (Pillow's `ImageEnhance`: `Image.blend` in C `float` with truncation, the
//!   fixed-point ITU-R 601 luma, the integer-rounded mean grey, the `SMOOTH` 3×3 filter with its
//!   `+0.5` offset and untouched border); Posterize (bit mask), Solarize (`i < threshold`),
//!   AutoContrast (per-channel `int(i·scale + offset)`) and Equalize (Pillow's integer `step`
//!   histogram algorithm, the one torchvision's uint8-tensor kernel copies).
//! * Hue (ColorJitter only) follows torchvision's float32 tensor kernel (`_rgb_to_hsv`,
//!   `_hsv_to_rgb`, ×255.999 truncation), not Pillow's 8-bit HSV round trip that torchvision
//!   would use on a PIL image (up to 14 levels apart from ours): the same float32 operations in
//!   the same order, equal to the tensor kernel in the parity test.
//!
//! Measured by the parity test (a seed photo, two generated pictures, every operation at 1 to 18
//! magnitudes): every operation equal to torchvision-on-PIL, max |diff| 0. For information,
//! torchvision's own uint8-tensor kernels differ from its PIL ones by up to 2 levels for
//! Contrast (unrounded mean grey), 1 for Color and AutoContrast, and by whole pixels at a few
//! rotated edges (`grid_sample` against Pillow's fixed-point sampling).
//!
//! The magnitude bins are `torch.linspace` in float32, reproduced with its fused
//! multiply-add (so e.g. TrivialAugmentWide's TranslateX bin 15 is 15.999999, i.e. 15 pixels,
//! as in torchvision on this machine).

use std::fmt;
use std::str::FromStr;

use image::{Rgb, RgbImage};
use infer::preprocess::{resample, PreprocessError};
use infer::{PreprocessConfig, Rect};
use rand::Rng;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// One operation of the augmentation space, in the order of torchvision's
/// `TrivialAugmentWide._AUGMENTATION_SPACE` (and `RandAugment`'s, which is the same set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    Identity,
    ShearX,
    ShearY,
    TranslateX,
    TranslateY,
    Rotate,
    Brightness,
    Color,
    Contrast,
    Sharpness,
    Posterize,
    Solarize,
    AutoContrast,
    Equalize,
}

impl Op {
    /// Every operation, in torchvision's order (the policies draw uniformly from these).
    pub const ALL: [Op; 14] = [
        Op::Identity,
        Op::ShearX,
        Op::ShearY,
        Op::TranslateX,
        Op::TranslateY,
        Op::Rotate,
        Op::Brightness,
        Op::Color,
        Op::Contrast,
        Op::Sharpness,
        Op::Posterize,
        Op::Solarize,
        Op::AutoContrast,
        Op::Equalize,
    ];

    /// torchvision's name (`transform_id`).
    pub fn name(self) -> &'static str {
        match self {
            Op::Identity => "Identity",
            Op::ShearX => "ShearX",
            Op::ShearY => "ShearY",
            Op::TranslateX => "TranslateX",
            Op::TranslateY => "TranslateY",
            Op::Rotate => "Rotate",
            Op::Brightness => "Brightness",
            Op::Color => "Color",
            Op::Contrast => "Contrast",
            Op::Sharpness => "Sharpness",
            Op::Posterize => "Posterize",
            Op::Solarize => "Solarize",
            Op::AutoContrast => "AutoContrast",
            Op::Equalize => "Equalize",
        }
    }

    /// Whether the policies flip the magnitude's sign with probability ½ (`signed` in the space).
    pub fn signed(self) -> bool {
        matches!(
            self,
            Op::ShearX
                | Op::ShearY
                | Op::TranslateX
                | Op::TranslateY
                | Op::Rotate
                | Op::Brightness
                | Op::Color
                | Op::Contrast
                | Op::Sharpness
        )
    }
}

impl FromStr for Op {
    type Err = AutoAugmentError;

    /// torchvision's name, e.g. `ShearX`.
    fn from_str(s: &str) -> Result<Op, AutoAugmentError> {
        Op::ALL.into_iter().find(|op| op.name() == s).ok_or_else(|| AutoAugmentError::UnknownOp(s.to_string()))
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Settings of the augmentation policies that cannot be used.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum AutoAugmentError {
    #[error("unknown augmentation policy '{0}' (known: trivialaugment, randaugment, randaugment:N:M)")]
    UnknownPolicy(String),
    #[error("unknown augmentation operation '{0}'")]
    UnknownOp(String),
    #[error("{0}: need at least 2 magnitude bins")]
    Bins(String),
    #[error("RandAugment magnitude {magnitude} is not below the number of bins {bins}")]
    Magnitude { magnitude: usize, bins: usize },
    #[error("--color-jitter '{0}': expected B[,C,S,H], numbers >= 0 (hue at most 0.5)")]
    ColorJitter(String),
    #[error("random erasing: {0}")]
    Erasing(String),
}

// ---------------------------------------------------------------------------------------------
// Magnitude bins

/// `torch.linspace(start, end, steps)` in float32 on the CPU: the step in float32, the first half
/// counted from `start` and the second from `end`, each with one fused multiply-add (as the
/// vectorised kernel computes them).
pub fn linspace(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    if steps <= 1 {
        return vec![s; steps];
    }
    let step = (e - s) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| if i < half { step.mul_add(i as f32, s) } else { (-step).mul_add((steps - i - 1) as f32, e) })
        .collect()
}

/// `(8 - (torch.arange(bins) / ((bins - 1) / span))).round().int()`: Posterize's bits per bin.
fn posterize_bins(bins: usize, span: f64) -> Vec<f32> {
    let d = ((bins as f64 - 1.0) / span) as f32;
    (0..bins).map(|i| (8.0f32 - i as f32 / d).round_ties_even()).collect()
}

/// Which policy's augmentation space (they differ in the magnitude ranges).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Space {
    TrivialAugmentWide,
    RandAugment,
}

/// The magnitude of each bin of `op` for an image of `height × width`, or `None` for operations
/// without one (Identity, AutoContrast, Equalize): torchvision's `_AUGMENTATION_SPACE` tables.
pub fn magnitudes(space: Space, op: Op, bins: usize, height: u32, width: u32) -> Option<Vec<f32>> {
    let wide = space == Space::TrivialAugmentWide;
    let lin = |end: f64| Some(linspace(0.0, end, bins));
    match op {
        Op::Identity | Op::AutoContrast | Op::Equalize => None,
        Op::ShearX | Op::ShearY => lin(if wide { 0.99 } else { 0.3 }),
        Op::TranslateX => lin(if wide { 32.0 } else { 150.0 / 331.0 * f64::from(width) }),
        Op::TranslateY => lin(if wide { 32.0 } else { 150.0 / 331.0 * f64::from(height) }),
        Op::Rotate => lin(if wide { 135.0 } else { 30.0 }),
        Op::Brightness | Op::Color | Op::Contrast | Op::Sharpness => lin(if wide { 0.99 } else { 0.9 }),
        Op::Posterize => Some(posterize_bins(bins, if wide { 6.0 } else { 4.0 })),
        Op::Solarize => Some(linspace(1.0, 0.0, bins)),
    }
}

// ---------------------------------------------------------------------------------------------
// The operations

/// Applies `op` with `magnitude` as torchvision's `_AutoAugmentBase._apply_image_or_video_transform`
/// does on a PIL image, with nearest interpolation and fill 0:
///
/// * ShearX/Y: `affine(shear=degrees(atan(m)), center=[0, 0])`;
/// * TranslateX/Y: `affine(translate=int(m))` (pixels, truncated toward zero);
/// * Rotate: `rotate(m)` degrees counter-clockwise about the centre;
/// * Brightness, Color (saturation), Contrast, Sharpness: factor `1 + m`;
/// * Posterize: `int(m)` bits kept (1..=8; outside that torchvision/Pillow raise, here it clamps);
/// * Solarize: pixels `>= 255·m` inverted;
/// * AutoContrast, Equalize, Identity: `m` unused.
pub fn apply(op: Op, magnitude: f64, img: &RgbImage) -> RgbImage {
    let zero = [0.0, 0.0];
    match op {
        Op::Identity => img.clone(),
        Op::ShearX => affine(img, 0.0, zero, 1.0, [magnitude.atan().to_degrees(), 0.0], Some(zero)),
        Op::ShearY => affine(img, 0.0, zero, 1.0, [0.0, magnitude.atan().to_degrees()], Some(zero)),
        Op::TranslateX => affine(img, 0.0, [magnitude.trunc(), 0.0], 1.0, zero, None),
        Op::TranslateY => affine(img, 0.0, [0.0, magnitude.trunc()], 1.0, zero, None),
        Op::Rotate => rotate(img, magnitude),
        Op::Brightness => adjust_brightness(img, 1.0 + magnitude),
        Op::Color => adjust_saturation(img, 1.0 + magnitude),
        Op::Contrast => adjust_contrast(img, 1.0 + magnitude),
        Op::Sharpness => adjust_sharpness(img, 1.0 + magnitude),
        Op::Posterize => posterize(img, magnitude.trunc().clamp(1.0, 8.0) as u32),
        Op::Solarize => solarize(img, 255.0 * magnitude),
        Op::AutoContrast => autocontrast(img),
        Op::Equalize => equalize(img),
    }
}

/// torchvision's `_get_inverse_affine_matrix` (v2, `inverted=True`): the output-to-input matrix
/// `[a, b, c, d, e, f]` of `T · C · RSS · C⁻¹` for angle and shears in degrees.
pub fn inverse_affine_matrix(
    center: [f64; 2],
    angle: f64,
    translate: [f64; 2],
    scale: f64,
    shear: [f64; 2],
) -> [f64; 6] {
    let rot = angle.to_radians();
    let sx = shear[0].to_radians();
    let sy = shear[1].to_radians();
    let [cx, cy] = center;
    let [tx, ty] = translate;
    let cos_sy = sy.cos();
    let tan_sx = sx.tan();
    let rot_minus_sy = rot - sy;
    let cx_plus_tx = cx + tx;
    let cy_plus_ty = cy + ty;
    let a = rot_minus_sy.cos() / cos_sy;
    let b = -(a * tan_sx + rot.sin());
    let c = rot_minus_sy.sin() / cos_sy;
    let d = rot.cos() - c * tan_sx;
    let mut m = [d / scale, -b / scale, 0.0, -c / scale, a / scale, 0.0];
    m[2] += cx - m[0] * cx_plus_tx - m[1] * cy_plus_ty;
    m[5] += cy - m[3] * cx_plus_tx - m[4] * cy_plus_ty;
    m
}

/// torchvision's `affine` on a PIL image: centre `[w/2, h/2]` unless given, nearest, fill 0.
pub fn affine(
    img: &RgbImage,
    angle: f64,
    translate: [f64; 2],
    scale: f64,
    shear: [f64; 2],
    center: Option<[f64; 2]>,
) -> RgbImage {
    let center = center.unwrap_or([f64::from(img.width()) * 0.5, f64::from(img.height()) * 0.5]);
    affine_nearest(img, &inverse_affine_matrix(center, angle, translate, scale, shear))
}

/// Python's `x % y` for floats (the result takes the divisor's sign).
fn py_mod(x: f64, y: f64) -> f64 {
    let m = x % y;
    if m != 0.0 {
        if (y < 0.0) != (m < 0.0) {
            m + y
        } else {
            m
        }
    } else {
        0.0f64.copysign(y)
    }
}

/// Python's `round(x, 15)`: the nearest 15-decimal number, read back as a double.
fn round15(x: f64) -> f64 {
    format!("{x:.15}").parse().unwrap_or(x)
}

/// Pillow's `Image.rotate(angle, NEAREST, expand=False, fillcolor=0)` (what torchvision's
/// `rotate` calls for a PIL image): degrees counter-clockwise about `(w/2, h/2)`; exact
/// transposes for 0 and 180° and, on square images, 90 and 270°.
pub fn rotate(img: &RgbImage, angle: f64) -> RgbImage {
    let angle = py_mod(angle, 360.0);
    let (w, h) = img.dimensions();
    if angle == 0.0 {
        return img.clone();
    }
    if angle == 180.0 {
        return image::imageops::rotate180(img);
    }
    if (angle == 90.0 || angle == 270.0) && w == h {
        // Pillow's ROTATE_90 turns counter-clockwise, image's rotate90 clockwise.
        return if angle == 90.0 { image::imageops::rotate270(img) } else { image::imageops::rotate90(img) };
    }
    let (cx, cy) = (f64::from(w) / 2.0, f64::from(h) / 2.0);
    let a = -angle.to_radians();
    let mut m = [round15(a.cos()), round15(a.sin()), 0.0, round15(-a.sin()), round15(a.cos()), 0.0];
    let (x, y) = (-cx, -cy);
    // Pillow: `a * x + b * y + c` with c = 0.0, which adds nothing.
    m[2] = m[0] * x + m[1] * y;
    m[5] = m[3] * x + m[4] * y;
    m[2] += cx;
    m[5] += cy;
    affine_nearest(img, &m)
}

/// Pillow's `COORD`: −1 for negative coordinates, else truncation.
fn coord(v: f64) -> i64 {
    if v < 0.0 {
        -1
    } else {
        v as i64
    }
}

/// Pillow's `ImagingTransformAffine` with nearest resampling into a same-sized image filled with
/// 0: output pixel `(x, y)` takes the input pixel at `a · (x + ½, y + ½)`. Like Pillow, it takes
/// the scale-only path when the matrix has no rotation or shear, else the 16.16 fixed-point path
/// when every corner maps within ±32768, else the double-precision loop.
pub fn affine_nearest(img: &RgbImage, a: &[f64; 6]) -> RgbImage {
    let (w, h) = img.dimensions();
    let mut out = RgbImage::new(w, h);
    if w == 0 || h == 0 {
        return out;
    }
    let (wi, hi) = (i64::from(w), i64::from(h));
    let src = |x: i64, y: i64| *img.get_pixel(x as u32, y as u32);
    if a[1] == 0.0 && a[3] == 0.0 {
        // ImagingScaleAffine
        let mut xo = a[2] + a[0] * 0.5;
        let mut yo = a[5] + a[4] * 0.5;
        let (mut xmin, mut xmax) = (wi, 0i64);
        let mut xintab = vec![0i64; w as usize];
        for (x, slot) in xintab.iter_mut().enumerate() {
            let xin = coord(xo);
            if (0..wi).contains(&xin) {
                xmax = x as i64 + 1;
                xmin = xmin.min(x as i64);
                *slot = xin;
            }
            xo += a[0];
        }
        for y in 0..h {
            let yi = coord(yo);
            if (0..hi).contains(&yi) {
                for x in xmin..xmax {
                    out.put_pixel(x as u32, y, src(xintab[x as usize], yi));
                }
            }
            yo += a[4];
        }
        return out;
    }
    let fits =
        |x: f64, y: f64| (x * a[0] + y * a[1] + a[2]).abs() < 32768.0 && (x * a[3] + y * a[4] + a[5]).abs() < 32768.0;
    let (fw, fh) = (f64::from(w), f64::from(h));
    if fits(0.0, 0.0) && fits(fw, fh) && fits(0.0, fh) && fits(fw, 0.0) {
        // affine_fixed: 16.16 fixed point.
        let fix = |v: f64| {
            let v = v * 65536.0 + 0.5;
            if v < 0.0 {
                v.floor() as i32
            } else {
                v as i32
            }
        };
        let (a0, a1, a3, a4) = (fix(a[0]), fix(a[1]), fix(a[3]), fix(a[4]));
        let mut a2 = fix(a[2] + a[0] * 0.5 + a[1] * 0.5);
        let mut a5 = fix(a[5] + a[3] * 0.5 + a[4] * 0.5);
        for y in 0..h {
            let (mut xx, mut yy) = (a2, a5);
            for x in 0..w {
                let xin = i64::from(xx >> 16);
                if (0..wi).contains(&xin) {
                    let yin = i64::from(yy >> 16);
                    if (0..hi).contains(&yin) {
                        out.put_pixel(x, y, src(xin, yin));
                    }
                }
                xx = xx.wrapping_add(a0);
                yy = yy.wrapping_add(a3);
            }
            a2 = a2.wrapping_add(a1);
            a5 = a5.wrapping_add(a4);
        }
        return out;
    }
    // The floating-point loop, for coordinates beyond the fixed-point range.
    let mut xo = a[2] + a[1] * 0.5 + a[0] * 0.5;
    let mut yo = a[5] + a[4] * 0.5 + a[3] * 0.5;
    for y in 0..h {
        let (mut xx, mut yy) = (xo, yo);
        for x in 0..w {
            let xin = coord(xx);
            if (0..wi).contains(&xin) {
                let yin = coord(yy);
                if (0..hi).contains(&yin) {
                    out.put_pixel(x, y, src(xin, yin));
                }
            }
            xx += a[0];
            yy += a[3];
        }
        xo += a[1];
        yo += a[4];
    }
    out
}

/// Pillow's `Image.blend(im1, im2, alpha)`: `im1 + alpha·(im2 − im1)` in C `float`, truncated,
/// and clipped to 0..=255 when `alpha` is outside [0, 1]. `ImageEnhance` calls it with the
/// "degenerate" image first and the factor as `alpha`.
pub fn blend(im1: &RgbImage, im2: &RgbImage, alpha: f64) -> RgbImage {
    let alpha = alpha as f32;
    if alpha == 0.0 {
        return im1.clone();
    }
    if alpha == 1.0 {
        return im2.clone();
    }
    let inside = (0.0..=1.0).contains(&alpha);
    let raw: Vec<u8> = im1
        .as_raw()
        .iter()
        .zip(im2.as_raw())
        .map(|(&p, &q)| {
            let v = f32::from(p) + alpha * (i32::from(q) - i32::from(p)) as f32;
            if inside {
                v as u8
            } else if v <= 0.0 {
                0
            } else if v >= 255.0 {
                255
            } else {
                v as u8
            }
        })
        .collect();
    RgbImage::from_raw(im1.width(), im1.height(), raw).expect("same size")
}

/// Pillow's RGB → L conversion (ITU-R 601-2 luma in 16-bit fixed point, rounded).
fn luma(p: &Rgb<u8>) -> u8 {
    let [r, g, b] = p.0.map(u32::from);
    ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
}

/// `ImageEnhance.Brightness(img).enhance(factor)`: blend with black.
pub fn adjust_brightness(img: &RgbImage, factor: f64) -> RgbImage {
    blend(&RgbImage::new(img.width(), img.height()), img, factor)
}

/// `ImageEnhance.Color(img).enhance(factor)`: blend with the image's grey version.
pub fn adjust_saturation(img: &RgbImage, factor: f64) -> RgbImage {
    let grey = RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let l = luma(img.get_pixel(x, y));
        Rgb([l, l, l])
    });
    blend(&grey, img, factor)
}

/// `ImageEnhance.Contrast(img).enhance(factor)`: blend with a flat grey at the mean luma,
/// rounded to an integer (`int(mean + 0.5)`).
pub fn adjust_contrast(img: &RgbImage, factor: f64) -> RgbImage {
    let n = u64::from(img.width()) * u64::from(img.height());
    let sum: u64 = img.pixels().map(|p| u64::from(luma(p))).sum();
    let mean = if n == 0 { 0.0 } else { sum as f64 / n as f64 };
    let m = (mean + 0.5) as u8;
    blend(&RgbImage::from_pixel(img.width(), img.height(), Rgb([m, m, m])), img, factor)
}

/// Pillow's `ImageFilter.SMOOTH` (3×3 kernel 1 1 1 / 1 5 1 / 1 1 1 over 13) on an RGB image:
/// float accumulation from 0.5, truncation; the border rows and columns are copied.
pub fn smooth(img: &RgbImage) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w < 3 || h < 3 {
        return img.clone();
    }
    let k: [f32; 9] = [1.0, 1.0, 1.0, 1.0, 5.0, 1.0, 1.0, 1.0, 1.0].map(|v: f32| v / 13.0f32);
    let raw = img.as_raw();
    let mut out = raw.clone();
    let at = |x: usize, y: usize, c: usize| f32::from(raw[(y * w + x) * 3 + c]);
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            for c in 0..3 {
                // KERNEL1x3 row by row: y+1 with kernel[0..3], y with [3..6], y-1 with [6..9].
                let row =
                    |yy: usize, kk: &[f32]| at(x - 1, yy, c) * kk[0] + at(x, yy, c) * kk[1] + at(x + 1, yy, c) * kk[2];
                let mut ss = 0.5f32;
                ss += row(y + 1, &k[0..3]);
                ss += row(y, &k[3..6]);
                ss += row(y - 1, &k[6..9]);
                out[(y * w + x) * 3 + c] = ss.clamp(0.0, 255.0) as u8;
            }
        }
    }
    RgbImage::from_raw(img.width(), img.height(), out).expect("same size")
}

/// `ImageEnhance.Sharpness(img).enhance(factor)`: blend with the smoothed image.
pub fn adjust_sharpness(img: &RgbImage, factor: f64) -> RgbImage {
    blend(&smooth(img), img, factor)
}

/// Applies one lookup table per channel.
fn point(img: &RgbImage, luts: &[[u8; 256]; 3]) -> RgbImage {
    let mut out = img.clone();
    for p in out.pixels_mut() {
        for c in 0..3 {
            p.0[c] = luts[c][usize::from(p.0[c])];
        }
    }
    out
}

/// `ImageOps.posterize(img, bits)`: keeps the `bits` high bits of each channel.
pub fn posterize(img: &RgbImage, bits: u32) -> RgbImage {
    let bits = bits.clamp(1, 8);
    let mask = !((1u32 << (8 - bits)) - 1) as u8;
    let lut: [u8; 256] = std::array::from_fn(|i| i as u8 & mask);
    point(img, &[lut; 3])
}

/// `ImageOps.solarize(img, threshold)`: values `>= threshold` become `255 − v`.
pub fn solarize(img: &RgbImage, threshold: f64) -> RgbImage {
    let lut: [u8; 256] = std::array::from_fn(|i| if (i as f64) < threshold { i as u8 } else { 255 - i as u8 });
    point(img, &[lut; 3])
}

fn histograms(img: &RgbImage) -> [[u64; 256]; 3] {
    let mut h = [[0u64; 256]; 3];
    for p in img.pixels() {
        for c in 0..3 {
            h[c][usize::from(p.0[c])] += 1;
        }
    }
    h
}

/// `ImageOps.autocontrast(img)` (no cutoff): each channel stretched from its lowest to its
/// highest value, `int(i·scale + offset)` clamped.
pub fn autocontrast(img: &RgbImage) -> RgbImage {
    let luts = histograms(img).map(|h| {
        let lo = (0..256).find(|&i| h[i] != 0).unwrap_or(0);
        let hi = (0..256).rev().find(|&i| h[i] != 0).unwrap_or(0);
        if hi <= lo {
            return std::array::from_fn(|i| i as u8);
        }
        let scale = 255.0 / (hi - lo) as f64;
        let offset = -(lo as f64) * scale;
        std::array::from_fn(|i| ((i as f64 * scale + offset) as i64).clamp(0, 255) as u8)
    });
    point(img, &luts)
}

/// `ImageOps.equalize(img)`: per channel, `step = (count − count of the last used value) // 255`
/// and `lut[i] = (step // 2 + Σ_{j<i} h[j]) // step`; identity when a channel has one value or
/// `step` is 0.
pub fn equalize(img: &RgbImage) -> RgbImage {
    let luts = histograms(img).map(|h| {
        let used: Vec<u64> = h.iter().copied().filter(|&c| c != 0).collect();
        let identity = std::array::from_fn(|i| i as u8);
        if used.len() <= 1 {
            return identity;
        }
        let step = (used.iter().sum::<u64>() - used[used.len() - 1]) / 255;
        if step == 0 {
            return identity;
        }
        let mut n = step / 2;
        std::array::from_fn(|i| {
            let v = (n / step).min(255) as u8;
            n += h[i];
            v
        })
    });
    point(img, &luts)
}

/// torchvision's `adjust_hue` kernel for uint8 tensors, in float32: `/255` (as a multiply by
/// `1/255`), RGB → HSV, `h = (h + factor) mod 1`, HSV → RGB, then `× 255.999` truncated.
/// `factor` in [−0.5, 0.5].
pub fn adjust_hue(img: &RgbImage, factor: f64) -> RgbImage {
    let to_unit = (1.0f64 / 255.0) as f32;
    let to_u8 = (255.0f64 + 1.0 - 1e-3) as f32;
    let hue = factor as f32;
    let mut out = img.clone();
    for p in out.pixels_mut() {
        let [r, g, b] = p.0.map(|v| f32::from(v) * to_unit);
        let (h, s, v) = rgb_to_hsv(r, g, b);
        let h = torch_remainder(h + hue, 1.0);
        let rgb = hsv_to_rgb(h, s, v);
        p.0 = rgb.map(|c| (c * to_u8) as u8);
    }
    out
}

/// `torch.remainder` for floats: `fmod`, moved into the divisor's sign.
fn torch_remainder(a: f32, b: f32) -> f32 {
    let m = a % b;
    if m != 0.0 && ((b < 0.0) != (m < 0.0)) {
        m + b
    } else {
        m
    }
}

/// torchvision v2's `_rgb_to_hsv`, element by element in the same float32 operations.
fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let eqc = maxc == minc;
    let range = maxc - minc;
    let s = range / if eqc { 1.0 } else { maxc };
    let div = if eqc { 1.0 } else { range };
    let (rc, gc, bc) = ((maxc - r) / div, (maxc - g) / div, (maxc - b) / div);
    let maxc_neq_r = maxc != r;
    let maxc_eq_g = maxc == g;
    let flag = |m: bool| if m { 1.0f32 } else { 0.0 };
    let hg = (rc + 2.0 - bc) * flag(maxc_eq_g && maxc_neq_r);
    let hr = (bc - gc) * flag(!maxc_neq_r);
    let hb = (gc + 4.0 - rc) * flag(maxc_neq_r && !maxc_eq_g);
    let h = hr + hg + hb;
    let h = (h * (1.0f64 / 6.0) as f32 + 1.0) % 1.0;
    (h, s, maxc)
}

/// torchvision v2's `_hsv_to_rgb`, element by element.
fn hsv_to_rgb(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h6 = h * 6.0;
    let i = h6.floor();
    let f = h6 - i;
    let i = (i as i32).rem_euclid(6);
    let sxf = s * f;
    let one_minus_s = 1.0 - s;
    let q = ((1.0 - sxf) * v).clamp(0.0, 1.0);
    let t = ((sxf + one_minus_s) * v).clamp(0.0, 1.0);
    let p = (one_minus_s * v).clamp(0.0, 1.0);
    match i {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

// ---------------------------------------------------------------------------------------------
// Policies

/// An automatic augmentation policy (`--auto-augment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum Policy {
    /// `TrivialAugmentWide(num_magnitude_bins)`: one operation, uniformly drawn, at a uniformly
    /// drawn magnitude bin.
    TrivialAugmentWide { num_magnitude_bins: usize },
    /// `RandAugment(num_ops, magnitude, num_magnitude_bins)`: `num_ops` operations, each uniformly
    /// drawn, all at magnitude bin `magnitude`.
    RandAugment { num_ops: usize, magnitude: usize, num_magnitude_bins: usize },
}

impl Policy {
    /// torchvision's defaults: 31 bins; RandAugment with 2 operations at magnitude 9.
    pub const TRIVIAL_AUGMENT_WIDE: Policy = Policy::TrivialAugmentWide { num_magnitude_bins: 31 };
    pub const RAND_AUGMENT: Policy = Policy::RandAugment { num_ops: 2, magnitude: 9, num_magnitude_bins: 31 };

    pub fn validate(&self) -> Result<(), AutoAugmentError> {
        match *self {
            Policy::TrivialAugmentWide { num_magnitude_bins } if num_magnitude_bins < 2 => {
                Err(AutoAugmentError::Bins("TrivialAugmentWide".into()))
            }
            Policy::RandAugment { num_magnitude_bins, .. } if num_magnitude_bins < 2 => {
                Err(AutoAugmentError::Bins("RandAugment".into()))
            }
            Policy::RandAugment { magnitude, num_magnitude_bins, .. } if magnitude >= num_magnitude_bins => {
                Err(AutoAugmentError::Magnitude { magnitude, bins: num_magnitude_bins })
            }
            _ => Ok(()),
        }
    }

    /// The operations and signed magnitudes for one image of `height × width`, drawn as the
    /// policy's `forward` draws them (op uniform over [`Op::ALL`]; sign flipped with probability ½
    /// for signed operations; magnitude 0 for operations without one).
    pub fn draw<R: Rng>(&self, height: u32, width: u32, rng: &mut R) -> Vec<(Op, f64)> {
        let (space, count, bins) = match *self {
            Policy::TrivialAugmentWide { num_magnitude_bins } => (Space::TrivialAugmentWide, 1, num_magnitude_bins),
            Policy::RandAugment { num_ops, num_magnitude_bins, .. } => {
                (Space::RandAugment, num_ops, num_magnitude_bins)
            }
        };
        (0..count)
            .map(|_| {
                let op = Op::ALL[rng.gen_range(0..Op::ALL.len())];
                let magnitude = match magnitudes(space, op, bins, height, width) {
                    Some(table) => {
                        let bin = match *self {
                            Policy::TrivialAugmentWide { .. } => rng.gen_range(0..bins),
                            Policy::RandAugment { magnitude, .. } => magnitude.min(bins - 1),
                        };
                        let m = f64::from(table[bin]);
                        if op.signed() && rng.gen_bool(0.5) {
                            -m
                        } else {
                            m
                        }
                    }
                    None => 0.0,
                };
                (op, magnitude)
            })
            .collect()
    }

    /// Draws and applies the policy to `img`.
    pub fn apply<R: Rng>(&self, img: &RgbImage, rng: &mut R) -> RgbImage {
        let mut out = img.clone();
        for (op, m) in self.draw(img.height(), img.width(), rng) {
            out = apply(op, m, &out);
        }
        out
    }

    /// E.g. `TrivialAugmentWide(num_magnitude_bins=31)`.
    pub fn describe(&self) -> String {
        match *self {
            Policy::TrivialAugmentWide { num_magnitude_bins } => {
                format!("TrivialAugmentWide(num_magnitude_bins={num_magnitude_bins})")
            }
            Policy::RandAugment { num_ops, magnitude, num_magnitude_bins } => {
                format!(
                    "RandAugment(num_ops={num_ops}, magnitude={magnitude}, num_magnitude_bins={num_magnitude_bins})"
                )
            }
        }
    }
}

impl FromStr for Policy {
    type Err = AutoAugmentError;

    /// `trivialaugment` (also `trivial-augment-wide`, `ta-wide`), `randaugment`, or
    /// `randaugment:N:M` (N operations at magnitude M of 31 bins).
    fn from_str(s: &str) -> Result<Policy, AutoAugmentError> {
        let lower = s.trim().to_ascii_lowercase();
        let mut parts = lower.split(':');
        let name = parts.next().unwrap_or("");
        let args: Vec<&str> = parts.collect();
        let bad = || AutoAugmentError::UnknownPolicy(s.to_string());
        let policy = match (name, args.as_slice()) {
            ("trivialaugment" | "trivial-augment-wide" | "trivialaugmentwide" | "ta-wide", []) => {
                Policy::TRIVIAL_AUGMENT_WIDE
            }
            ("randaugment" | "rand-augment", []) => Policy::RAND_AUGMENT,
            ("randaugment" | "rand-augment", [n, m]) => Policy::RandAugment {
                num_ops: n.parse().map_err(|_| bad())?,
                magnitude: m.parse().map_err(|_| bad())?,
                num_magnitude_bins: 31,
            },
            _ => return Err(bad()),
        };
        policy.validate()?;
        Ok(policy)
    }
}

/// `ColorJitter(brightness, contrast, saturation, hue)` with scalar strengths (`--color-jitter
/// B[,C,S,H]`): factors uniform in `[max(0, 1 − B), 1 + B]` etc., hue in `[−H, H]`; a strength of
/// 0 leaves that adjustment out. The four adjustments run in a random order, as torchvision's
/// `randperm(4)`; brightness, contrast and saturation are Pillow's enhancers (exact), hue is the
/// tensor kernel ([`adjust_hue`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct ColorJitter {
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    pub hue: f64,
}

/// One drawn [`ColorJitter`]: the order and the factors (`None`: adjustment off).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JitterDraw {
    /// Indices 0 brightness, 1 contrast, 2 saturation, 3 hue, in the order applied.
    pub order: [usize; 4],
    pub brightness: Option<f64>,
    pub contrast: Option<f64>,
    pub saturation: Option<f64>,
    pub hue: Option<f64>,
}

impl ColorJitter {
    pub fn validate(&self) -> Result<(), AutoAugmentError> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if !(ok(self.brightness) && ok(self.contrast) && ok(self.saturation) && ok(self.hue) && self.hue <= 0.5) {
            return Err(AutoAugmentError::ColorJitter(self.describe()));
        }
        Ok(())
    }

    /// The factor range of a strength, as torchvision's `_check_input` (`None` when it is the
    /// identity).
    fn range(strength: f64, center: f64, clip: bool) -> Option<(f64, f64)> {
        let lo = center - strength;
        let lo = if clip { lo.max(0.0) } else { lo };
        let hi = center + strength;
        (!(lo == center && hi == center)).then_some((lo, hi))
    }

    pub fn draw<R: Rng>(&self, rng: &mut R) -> JitterDraw {
        let mut order = [0, 1, 2, 3];
        rand::seq::SliceRandom::shuffle(&mut order[..], rng);
        let mut uniform = |r: Option<(f64, f64)>| r.map(|(lo, hi)| if lo < hi { rng.gen_range(lo..hi) } else { lo });
        JitterDraw {
            order,
            brightness: uniform(Self::range(self.brightness, 1.0, true)),
            contrast: uniform(Self::range(self.contrast, 1.0, true)),
            saturation: uniform(Self::range(self.saturation, 1.0, true)),
            hue: uniform(Self::range(self.hue, 0.0, false)),
        }
    }

    /// Applies a drawn jitter.
    pub fn apply_draw(d: &JitterDraw, img: &RgbImage) -> RgbImage {
        let mut out = img.clone();
        for i in d.order {
            out = match (i, d.brightness, d.contrast, d.saturation, d.hue) {
                (0, Some(f), ..) => adjust_brightness(&out, f),
                (1, _, Some(f), ..) => adjust_contrast(&out, f),
                (2, _, _, Some(f), _) => adjust_saturation(&out, f),
                (3, .., Some(f)) => adjust_hue(&out, f),
                _ => out,
            };
        }
        out
    }

    /// Draws and applies the jitter to `img`.
    pub fn apply<R: Rng>(&self, img: &RgbImage, rng: &mut R) -> RgbImage {
        Self::apply_draw(&self.draw(rng), img)
    }

    /// E.g. `ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0)`.
    pub fn describe(&self) -> String {
        format!(
            "ColorJitter(brightness={}, contrast={}, saturation={}, hue={})",
            self.brightness, self.contrast, self.saturation, self.hue
        )
    }
}

impl FromStr for ColorJitter {
    type Err = AutoAugmentError;

    /// `B`, `B,C`, `B,C,S` or `B,C,S,H`; a single number applies to brightness, contrast and
    /// saturation (timm's `--color-jitter 0.4` convention), with no hue.
    fn from_str(s: &str) -> Result<ColorJitter, AutoAugmentError> {
        let bad = || AutoAugmentError::ColorJitter(s.to_string());
        let values: Vec<f64> =
            s.split(',').map(|v| v.trim().parse::<f64>().map_err(|_| bad())).collect::<Result<_, _>>()?;
        let j = match values.as_slice() {
            [b] => ColorJitter { brightness: *b, contrast: *b, saturation: *b, hue: 0.0 },
            [b, c] => ColorJitter { brightness: *b, contrast: *c, ..Default::default() },
            [b, c, sat] => ColorJitter { brightness: *b, contrast: *c, saturation: *sat, hue: 0.0 },
            [b, c, sat, h] => ColorJitter { brightness: *b, contrast: *c, saturation: *sat, hue: *h },
            _ => return Err(bad()),
        };
        j.validate().map_err(|_| bad())?;
        Ok(j)
    }
}

/// `RandomErasing(p, scale, ratio, value)` on a normalised CHW `f32` image, as torchvision
/// applies it after `ToTensor`/`Normalize` (with `value=0`, erased pixels are the channel means).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandomErasing {
    /// Probability of erasing a rectangle in an image.
    pub p: f64,
    /// Range of the erased area, as a fraction of the image's.
    pub scale: (f64, f64),
    /// Range of the rectangle's aspect ratio (height / width, as torchvision's `h = sqrt(area·r)`).
    pub ratio: (f64, f64),
    /// The value written into the rectangle (the same for every channel).
    pub value: f32,
}

impl Default for RandomErasing {
    /// torchvision's defaults: `p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0`.
    fn default() -> Self {
        RandomErasing { p: 0.5, scale: (0.02, 0.33), ratio: (0.3, 3.3), value: 0.0 }
    }
}

/// The rectangle one [`RandomErasing`] draw erases: rows `top..top+height`, columns
/// `left..left+width`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EraseRect {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

impl RandomErasing {
    pub fn validate(&self) -> Result<(), AutoAugmentError> {
        let bad = |m: String| Err(AutoAugmentError::Erasing(m));
        if !(0.0..=1.0).contains(&self.p) {
            return bad(format!("probability {} not in [0, 1]", self.p));
        }
        let (s0, s1) = self.scale;
        if !(0.0 <= s0 && s0 <= s1 && s1 <= 1.0) {
            return bad(format!("scale ({s0}, {s1}) needs 0 <= min <= max <= 1"));
        }
        let (r0, r1) = self.ratio;
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return bad(format!("ratio ({r0}, {r1}) needs 0 < min <= max"));
        }
        if !self.value.is_finite() {
            return bad(format!("value {} is not finite", self.value));
        }
        Ok(())
    }

    /// torchvision's `RandomErasing.make_params` after the probability draw: up to ten tries at
    /// an area and a log-uniform ratio whose rounded rectangle fits strictly inside; `None` when
    /// the image is not erased (probability, or no try fitted).
    pub fn draw<R: Rng>(&self, height: usize, width: usize, rng: &mut R) -> Option<EraseRect> {
        if rng.gen::<f64>() >= self.p {
            return None;
        }
        let area = (height * width) as f64;
        let (log_lo, log_hi) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let erase_area = area * uniform(rng, self.scale.0, self.scale.1);
            let aspect = uniform(rng, log_lo, log_hi).exp();
            let h = (erase_area * aspect).sqrt().round_ties_even() as usize;
            let w = (erase_area / aspect).sqrt().round_ties_even() as usize;
            if !(h < height && w < width) {
                continue;
            }
            let top = rng.gen_range(0..=height - h);
            let left = rng.gen_range(0..=width - w);
            return Some(EraseRect { top, left, height: h, width: w });
        }
        None
    }

    /// Writes [`Self::value`] into `rect` of every channel of the CHW image `chw`
    /// (`channels × height × width` values).
    pub fn erase(&self, chw: &mut [f32], height: usize, width: usize, rect: EraseRect) {
        let plane = height * width;
        for ch in chw.chunks_exact_mut(plane) {
            for y in rect.top..rect.top + rect.height {
                ch[y * width + rect.left..y * width + rect.left + rect.width].fill(self.value);
            }
        }
    }

    /// Draws and erases; returns the rectangle erased, if any.
    pub fn apply<R: Rng>(&self, chw: &mut [f32], height: usize, width: usize, rng: &mut R) -> Option<EraseRect> {
        let rect = self.draw(height, width, rng)?;
        self.erase(chw, height, width, rect);
        Some(rect)
    }
}

/// `torch.empty(1).uniform_(lo, hi)`: `lo` when the range is empty.
fn uniform<R: Rng>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    if lo < hi {
        rng.gen_range(lo..hi)
    } else {
        lo
    }
}

/// The pixel-level training augmentation beyond the crop and flip: an automatic policy, then
/// colour jitter, on the cropped 8-bit image; random erasing on the normalised tensor.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PixelAugment {
    pub policy: Option<Policy>,
    pub color_jitter: Option<ColorJitter>,
    pub random_erasing: Option<RandomErasing>,
}

impl PixelAugment {
    pub fn validate(&self) -> Result<(), AutoAugmentError> {
        if let Some(p) = &self.policy {
            p.validate()?;
        }
        if let Some(j) = &self.color_jitter {
            j.validate()?;
        }
        if let Some(e) = &self.random_erasing {
            e.validate()?;
        }
        Ok(())
    }

    /// Whether the 8-bit stage does anything (else the loader can keep its direct f32 path).
    pub fn touches_pixels(&self) -> bool {
        self.policy.is_some() || self.color_jitter.is_some()
    }

    /// The 8-bit stage: the policy, then the colour jitter.
    pub fn apply_u8<R: Rng>(&self, img: &RgbImage, rng: &mut R) -> RgbImage {
        let mut out = match &self.policy {
            Some(p) => p.apply(img, rng),
            None => img.clone(),
        };
        if let Some(j) = &self.color_jitter {
            out = j.apply(&out, rng);
        }
        out
    }

    /// The tensor stage: random erasing of the normalised CHW image.
    pub fn apply_f32<R: Rng>(&self, chw: &mut [f32], height: usize, width: usize, rng: &mut R) -> Option<EraseRect> {
        self.random_erasing.as_ref().and_then(|e| e.apply(chw, height, width, rng))
    }

    /// One line for logs, e.g. `TrivialAugmentWide(num_magnitude_bins=31) + RandomErasing(p=0.25)`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = &self.policy {
            parts.push(p.describe());
        }
        if let Some(j) = &self.color_jitter {
            parts.push(j.describe());
        }
        if let Some(e) = &self.random_erasing {
            parts
                .push(format!("RandomErasing(p={}, scale={:?}, ratio={:?}, value={})", e.p, e.scale, e.ratio, e.value));
        }
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(" + ")
        }
    }
}

/// The training transform with pixel augmentation, in torchvision's order:
/// `RandomResizedCrop` (the region `crop` resized to `crop_size²` by the deployment resampler,
/// as [`PreprocessConfig::resized_crop_into`]), `RandomHorizontalFlip` (`flip`), the 8-bit stage
/// of `aug` (policy, colour jitter), `ToTensor` + `Normalize` into the CHW buffer `out`, then
/// random erasing. With nothing in `aug` it writes exactly what `resized_crop_into` writes.
pub fn resized_crop_augment_into<R: Rng>(
    pre: &PreprocessConfig,
    img: &RgbImage,
    crop: Rect,
    flip: bool,
    aug: &PixelAugment,
    rng: &mut R,
    out: &mut [f32],
) -> Result<Option<EraseRect>, PreprocessError> {
    if out.len() != pre.input_len() {
        return Err(PreprocessError::BufferSize { expected: pre.input_len(), got: out.len() });
    }
    let c = pre.crop_size;
    let mut resized = resample(img, crop, c, c, Rect::new(0, 0, c, c), pre.antialias)?;
    if flip {
        image::imageops::flip_horizontal_in_place(&mut resized);
    }
    let augmented = aug.apply_u8(&resized, rng);
    normalize_into(&augmented, pre.mean, pre.std, out);
    let side = c as usize;
    Ok(aug.apply_f32(out, side, side, rng))
}

/// `ToTensor` + `Normalize`: HWC bytes to CHW `(v/255 − mean)/std` in float32, the arithmetic of
/// the deployment transform.
pub fn normalize_into(img: &RgbImage, mean: [f32; 3], std: [f32; 3], out: &mut [f32]) {
    let plane = img.width() as usize * img.height() as usize;
    let lut: [[f32; 256]; 3] = std::array::from_fn(|c| std::array::from_fn(|v| (v as f32 / 255.0 - mean[c]) / std[c]));
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = lut[c][usize::from(px.0[c])];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn picture(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7 + y) as u8, (y * 11 + 3 * x) as u8, ((x ^ y) * 5) as u8]))
    }

    #[test]
    fn magnitude_tables_are_torchvisions() {
        // TrivialAugmentWide's Posterize bins, printed by torchvision.
        let bits: Vec<i32> = magnitudes(Space::TrivialAugmentWide, Op::Posterize, 31, 10, 10)
            .unwrap()
            .iter()
            .map(|&v| v as i32)
            .collect();
        assert_eq!(bits, [8, 8, 8, 7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 5, 5, 5, 5, 5, 4, 4, 4, 4, 4, 3, 3, 3, 3, 3, 2, 2, 2]);
        let bits: Vec<i32> =
            magnitudes(Space::RandAugment, Op::Posterize, 31, 10, 10).unwrap().iter().map(|&v| v as i32).collect();
        assert_eq!(bits, [8, 8, 8, 8, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 6, 6, 5, 5, 5, 5, 5, 5, 5, 5, 4, 4, 4, 4]);
        // torch.linspace(0, 32, 31)[15] is 15.999999 (fused multiply-add from the end).
        let t = magnitudes(Space::TrivialAugmentWide, Op::TranslateX, 31, 10, 10).unwrap();
        assert_eq!(t[15], 15.999999_f32);
        assert_eq!(t[30], 32.0);
        assert_eq!(linspace(0.0, 0.99, 31)[15], 0.495_f32);
        assert!(magnitudes(Space::RandAugment, Op::Equalize, 31, 1, 1).is_none());
    }

    #[test]
    fn posterize_solarize_and_identity() {
        let img = picture(9, 7);
        let p = posterize(&img, 3);
        assert!(p.as_raw().iter().zip(img.as_raw()).all(|(a, b)| *a == b & 0b1110_0000));
        let s = solarize(&img, 128.0);
        for (a, b) in s.as_raw().iter().zip(img.as_raw()) {
            assert_eq!(*a, if *b < 128 { *b } else { 255 - b });
        }
        assert_eq!(apply(Op::Identity, 3.0, &img), img);
        assert_eq!(apply(Op::Solarize, 1.0, &img), img, "threshold 255: only 255 inverts, 0 stays 0");
    }

    #[test]
    fn geometry() {
        let img = picture(11, 8);
        // Translating by +3 pixels: column x comes from x − 3, the first three are fill.
        let t = apply(Op::TranslateX, 3.7, &img);
        for y in 0..8 {
            for x in 0..11 {
                let want = if x < 3 { Rgb([0, 0, 0]) } else { *img.get_pixel(x - 3, y) };
                assert_eq!(*t.get_pixel(x, y), want, "({x}, {y})");
            }
        }
        // A full turn and 180° are exact.
        assert_eq!(rotate(&img, 360.0), img);
        assert_eq!(rotate(&img, -180.0), image::imageops::rotate180(&img));
        // A square image turned 90° counter-clockwise: the top-right corner comes to the top-left.
        let sq = picture(6, 6);
        assert_eq!(rotate(&sq, 90.0).get_pixel(0, 0), sq.get_pixel(5, 0));
        // A shear about the origin leaves the first row in place.
        let s = apply(Op::ShearX, 0.3, &img);
        assert_eq!(s.get_pixel(0, 0), img.get_pixel(0, 0));
    }

    #[test]
    fn enhancers_at_their_limits() {
        let img = picture(13, 9);
        assert_eq!(adjust_brightness(&img, 1.0), img);
        assert!(adjust_brightness(&img, 0.0).as_raw().iter().all(|&v| v == 0));
        let grey = adjust_saturation(&img, 0.0);
        assert!(grey.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
        let flat = adjust_contrast(&img, 0.0);
        assert!(flat.pixels().all(|p| p == flat.get_pixel(0, 0)));
        // Smoothing keeps the border and blends the inside.
        let sm = smooth(&img);
        assert_eq!(sm.get_pixel(0, 4), img.get_pixel(0, 4));
        assert_eq!(sm.get_pixel(12, 8), img.get_pixel(12, 8));
        assert_eq!(adjust_sharpness(&img, 1.0), img);
    }

    #[test]
    fn autocontrast_and_equalize_stretch() {
        let img = RgbImage::from_fn(16, 4, |x, _| Rgb([100 + x as u8, 50, 10 * x as u8]));
        let a = autocontrast(&img);
        assert_eq!(a.get_pixel(0, 0).0, [0, 50, 0]);
        assert_eq!(a.get_pixel(15, 0).0, [255, 50, 255]);
        let e = equalize(&img);
        // 16 equally frequent values: step = (64 − 4) // 255 = 0, so the identity.
        assert_eq!(e, img);
        let big = RgbImage::from_fn(64, 64, |x, y| Rgb([((x + y) / 2) as u8, (x * 4) as u8, 7]));
        let e = equalize(&big);
        assert!(e.pixels().any(|p| p.0[0] > 200), "stretched up");
        assert!(e.pixels().all(|p| p.0[2] == 7), "a one-valued channel is left alone");
    }

    #[test]
    fn hue_round_trip_and_shift() {
        let img = picture(17, 5);
        let same = adjust_hue(&img, 0.0);
        let diff = same.as_raw().iter().zip(img.as_raw()).map(|(a, b)| (*a as i32 - *b as i32).abs()).max();
        assert!(diff.unwrap() <= 1, "{diff:?}");
        let red = RgbImage::from_pixel(2, 2, Rgb([255, 0, 0]));
        assert_eq!(adjust_hue(&red, 1.0 / 3.0).get_pixel(0, 0).0, [0, 255, 0]);
    }

    #[test]
    fn policies_draw_from_the_whole_space() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut seen = std::collections::HashSet::new();
        let mut negative = 0;
        for _ in 0..2000 {
            let d = Policy::TRIVIAL_AUGMENT_WIDE.draw(40, 30, &mut rng);
            assert_eq!(d.len(), 1);
            let (op, m) = d[0];
            seen.insert(op);
            if m < 0.0 {
                negative += 1;
                assert!(op.signed());
            }
            if !op.signed() && op != Op::Posterize && op != Op::Solarize {
                assert_eq!(m, 0.0);
            }
        }
        assert_eq!(seen.len(), 14);
        assert!(negative > 400 && negative < 900, "{negative}");
        let ra = Policy::RAND_AUGMENT.draw(100, 200, &mut rng);
        assert_eq!(ra.len(), 2);
        for (op, m) in ra {
            if op == Op::Rotate {
                assert_eq!(m.abs(), 9.0, "bin 9 of linspace(0, 30, 31)");
            }
        }
        // Seeded: the same draws again.
        let a = Policy::RAND_AUGMENT.apply(&picture(20, 20), &mut ChaCha8Rng::seed_from_u64(9));
        let b = Policy::RAND_AUGMENT.apply(&picture(20, 20), &mut ChaCha8Rng::seed_from_u64(9));
        assert_eq!(a, b);
    }

    #[test]
    fn parsing_and_validation() {
        assert_eq!("trivialaugment".parse::<Policy>().unwrap(), Policy::TRIVIAL_AUGMENT_WIDE);
        assert_eq!(
            "randaugment:3:12".parse::<Policy>().unwrap(),
            Policy::RandAugment { num_ops: 3, magnitude: 12, num_magnitude_bins: 31 }
        );
        assert!(matches!("randaugment:2:31".parse::<Policy>(), Err(AutoAugmentError::Magnitude { .. })));
        assert!("autoaugment".parse::<Policy>().is_err());
        let j: ColorJitter = "0.4".parse().unwrap();
        assert_eq!(j, ColorJitter { brightness: 0.4, contrast: 0.4, saturation: 0.4, hue: 0.0 });
        let j: ColorJitter = "0.2,0.3,0.4,0.1".parse().unwrap();
        assert_eq!(j.hue, 0.1);
        assert!("0.2,0.3,0.4,0.6".parse::<ColorJitter>().is_err());
        assert!("-1".parse::<ColorJitter>().is_err());
        let e = RandomErasing { p: 1.5, ..Default::default() };
        assert!(e.validate().is_err());
        let json =
            serde_json::to_string(&PixelAugment { policy: Some(Policy::RAND_AUGMENT), ..Default::default() }).unwrap();
        let back: PixelAugment = serde_json::from_str(&json).unwrap();
        assert_eq!(back.policy, Some(Policy::RAND_AUGMENT));
    }

    #[test]
    fn color_jitter_ranges_and_order() {
        let j = ColorJitter { brightness: 0.5, contrast: 0.0, saturation: 2.0, hue: 0.1 };
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..500 {
            let d = j.draw(&mut rng);
            let b = d.brightness.unwrap();
            assert!((0.5..1.5).contains(&b));
            assert!(d.contrast.is_none());
            assert!((0.0..3.0).contains(&d.saturation.unwrap()), "lower end clipped at 0");
            assert!(d.hue.unwrap().abs() <= 0.1);
            let mut o = d.order;
            o.sort();
            assert_eq!(o, [0, 1, 2, 3]);
        }
    }

    #[test]
    fn augmented_transform_without_augmentation_is_the_plain_one() {
        let pre = PreprocessConfig { resize_size: 40, crop_size: 32, ..Default::default() };
        let img = picture(71, 53);
        let rect = Rect::new(5, 3, 50, 41);
        for flip in [false, true] {
            let mut plain = vec![0.0; pre.input_len()];
            pre.resized_crop_into(&img, rect, flip, &mut plain).unwrap();
            let mut ours = vec![0.0; pre.input_len()];
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            let erased =
                resized_crop_augment_into(&pre, &img, rect, flip, &PixelAugment::default(), &mut rng, &mut ours)
                    .unwrap();
            assert_eq!(erased, None);
            assert_eq!(plain, ours, "flip {flip}");
        }
        // With a policy and erasing: deterministic for a seed, and different from the plain one.
        let aug = PixelAugment {
            policy: Some(Policy::TRIVIAL_AUGMENT_WIDE),
            color_jitter: Some(ColorJitter { brightness: 0.4, ..Default::default() }),
            random_erasing: Some(RandomErasing { p: 1.0, ..Default::default() }),
        };
        let run = |seed| {
            let mut out = vec![0.0; pre.input_len()];
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let r = resized_crop_augment_into(&pre, &img, rect, false, &aug, &mut rng, &mut out).unwrap();
            (out, r)
        };
        let (a, ra) = run(3);
        assert_eq!(run(3).0, a);
        assert!(ra.is_some());
        assert!(a.iter().filter(|&&v| v == 0.0).count() >= 3 * ra.unwrap().height * ra.unwrap().width);
        let mut short = vec![0.0; 5];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert!(resized_crop_augment_into(&pre, &img, rect, false, &aug, &mut rng, &mut short).is_err());
    }

    #[test]
    fn random_erasing_fits_and_follows_p() {
        let e = RandomErasing { p: 0.5, ..Default::default() };
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (h, w) = (24, 32);
        let mut erased = 0;
        for _ in 0..2000 {
            let mut img = vec![1.0f32; 3 * h * w];
            if let Some(r) = e.apply(&mut img, h, w, &mut rng) {
                erased += 1;
                assert!(r.height < h && r.width < w && r.top + r.height <= h && r.left + r.width <= w);
                let zeros = img.iter().filter(|&&v| v == 0.0).count();
                assert_eq!(zeros, 3 * r.height * r.width);
                let frac = (r.height * r.width) as f64 / (h * w) as f64;
                assert!(frac > 0.005 && frac < 0.45, "{frac}");
            }
        }
        assert!((850..1150).contains(&erased), "{erased}");
        let never = RandomErasing { p: 0.0, ..Default::default() };
        assert!(never.draw(h, w, &mut rng).is_none());
    }
}
