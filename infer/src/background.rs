//! Transparency on purpose: what becomes of an image's alpha channel on its way to RGB.
//!
//! By default alpha is dropped, as PIL's `convert("RGB")` drops it (torchvision's behaviour):
//! a drawing on a transparent background then shows whatever colour its invisible pixels hold,
//! often black. A model trained with `train --background COLOUR` instead sees each image
//! composited onto that colour, as `Image.alpha_composite(Image.new("RGBA", size, COLOUR),
//! img.convert("RGBA")).convert("RGB")` gives it; the colour is part of the model's
//! preprocessing contract, so `infer`, `infer serve` and int8 calibration composite alike.

use std::fmt;
use std::str::FromStr;

use image::{GrayImage, RgbImage};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// The opaque colour transparent pixels are composited onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Background(pub [u8; 3]);

impl Background {
    pub const WHITE: Background = Background([255, 255, 255]);
    pub const BLACK: Background = Background([0, 0, 0]);
}

/// A colour that is not `white`, `black` or `#RRGGBB`.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("'{0}' is not a colour: use white, black or #RRGGBB")]
pub struct BackgroundError(pub String);

impl FromStr for Background {
    type Err = BackgroundError;

    fn from_str(s: &str) -> Result<Background, BackgroundError> {
        let bad = || BackgroundError(s.to_string());
        match s.trim().to_ascii_lowercase().as_str() {
            "white" => Ok(Background::WHITE),
            "black" => Ok(Background::BLACK),
            hex => {
                let digits = hex.strip_prefix('#').filter(|d| d.len() == 6 && d.is_ascii()).ok_or_else(bad)?;
                let byte = |i: usize| u8::from_str_radix(&digits[i..i + 2], 16).map_err(|_| bad());
                Ok(Background([byte(0)?, byte(2)?, byte(4)?]))
            }
        }
    }
}

impl fmt::Display for Background {
    /// `#rrggbb`, the form the model's metadata holds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [r, g, b] = self.0;
        write!(f, "#{r:02x}{g:02x}{b:02x}")
    }
}

impl Serialize for Background {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Background {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Background, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Composites `image` (its alpha in `alpha`) onto `background` in place, with Pillow's
/// `ImagingAlphaComposite` arithmetic (libImaging/AlphaComposite.c) for an opaque destination,
/// so that the result equals PIL's to the level.
pub fn composite(image: &mut RgbImage, alpha: &GrayImage, background: Background) {
    const PRECISION_BITS: u32 = 7;
    let shift_div_255 = |a: u32| ((a >> 8) + a) >> 8;
    for (px, a) in image.pixels_mut().zip(alpha.iter()) {
        let a = u32::from(*a);
        if a == 255 {
            continue;
        }
        if a == 0 {
            px.0 = background.0;
            continue;
        }
        // Destination alpha is 255: blend = 255 * (255 - a), out alpha 255 * 255.
        let outa255 = a * 255 + 255 * (255 - a);
        let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / outa255;
        let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
        for (c, bg) in px.0.iter_mut().zip(background.0) {
            let t = u32::from(*c) * coef1 + u32::from(bg) * coef2;
            *c = (shift_div_255(t + (0x80 << PRECISION_BITS)) >> PRECISION_BITS) as u8;
        }
    }
}

/// Whether an RGB image is nearly one colour: every channel within a few levels of its mean
/// almost everywhere (what a transparent drawing becomes when alpha is dropped).
pub fn nearly_uniform(image: &RgbImage) -> bool {
    let n = (image.width() as usize * image.height() as usize).max(1);
    let mut sum = [0u64; 3];
    for p in image.pixels() {
        for (s, v) in sum.iter_mut().zip(p.0) {
            *s += u64::from(v);
        }
    }
    let mean = sum.map(|s| s as f64 / n as f64);
    let off = image.pixels().filter(|p| (0..3).any(|c| (f64::from(p.0[c]) - mean[c]).abs() > 8.0)).count();
    off * 100 < n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_parse_and_print_as_the_metadata_holds_them() {
        assert_eq!("white".parse(), Ok(Background::WHITE));
        assert_eq!(" Black ".parse(), Ok(Background::BLACK));
        assert_eq!("#10A0fF".parse(), Ok(Background([0x10, 0xa0, 0xff])));
        assert_eq!(Background([0x10, 0xa0, 0xff]).to_string(), "#10a0ff");
        for bad in ["red", "#12345", "#1234567", "#12345g", "", "#ééé"] {
            assert!(bad.parse::<Background>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&Background::WHITE).unwrap();
        assert_eq!(json, "\"#ffffff\"");
        assert_eq!(serde_json::from_str::<Background>(&json).unwrap(), Background::WHITE);
    }

    #[test]
    fn compositing_follows_pillows_arithmetic() {
        // Measured with Pillow 13: alpha_composite(new("RGBA", (1, 1), (255, 255, 255, 255)), pixel).
        let cases =
            [([200u8, 10, 0], 128u8, [227, 132, 127]), ([0, 0, 0], 1, [254, 254, 254]), ([9, 9, 9], 0, [255; 3])];
        for (rgb, a, want) in cases {
            let mut img = RgbImage::from_pixel(1, 1, image::Rgb(rgb));
            composite(&mut img, &GrayImage::from_pixel(1, 1, image::Luma([a])), Background::WHITE);
            assert_eq!(img.get_pixel(0, 0).0, want, "{rgb:?} at alpha {a}");
        }
        let mut img = RgbImage::from_pixel(1, 1, image::Rgb([1, 2, 3]));
        composite(&mut img, &GrayImage::from_pixel(1, 1, image::Luma([255])), Background::BLACK);
        assert_eq!(img.get_pixel(0, 0).0, [1, 2, 3]);
    }

    #[test]
    fn uniformity() {
        assert!(nearly_uniform(&RgbImage::from_pixel(20, 20, image::Rgb([0, 0, 0]))));
        let stripes = RgbImage::from_fn(20, 20, |x, _| image::Rgb([if x < 10 { 0 } else { 200 }; 3]));
        assert!(!nearly_uniform(&stripes));
    }
}
