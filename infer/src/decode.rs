//! Decoding files to upright 8-bit RGB, the one pixel format the preprocessing takes.
//!
//! The format is recognised by content, not by extension. Grayscale, alpha, 16-bit, palette and
//! CMYK images are converted to RGB (alpha is dropped, as PIL's `convert("RGB")` does), and the
//! EXIF orientation is applied so that a rotated photo is classified upright. Dimensions are
//! checked against [`DecodeLimits`] from the header, before any pixel is decoded, and the
//! decoders' own allocations are capped from the same limit.
//!
//! Decoders are third-party code that can panic on input they do not expect: [`decode_file`]
//! and [`decode_bytes`] run them under [`crate::guard::isolate`], so such a file becomes
//! [`DecodeError::Crashed`] like any other bad file.

mod tiff_reader;

use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read, Seek};
use std::path::Path;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use thiserror::Error;

use crate::guard;

/// Default pixel limit: 64 megapixels (8000 × 8000), about 200 MB decoded.
pub const DEFAULT_MAX_PIXELS: u64 = 64_000_000;

/// Bounds on what a decoder may allocate, checked before decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted `width × height`.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_pixels: DEFAULT_MAX_PIXELS }
    }
}

impl DecodeLimits {
    /// The most a decoder may allocate: the widest pixel format (16-bit RGBA, 8 bytes a pixel)
    /// at the pixel limit, plus room for a decoder's working buffers.
    pub fn max_alloc(&self) -> u64 {
        self.max_pixels.saturating_mul(8).saturating_add(32 << 20)
    }

    /// Checks declared dimensions against the limit.
    pub fn check(&self, width: u32, height: u32) -> Result<(), DecodeError> {
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.max_pixels {
            return Err(DecodeError::TooLarge { width, height, pixels, limit: self.max_pixels });
        }
        if pixels == 0 {
            return Err(DecodeError::NoPixels { width, height });
        }
        Ok(())
    }
}

/// Why a file could not be decoded. Messages are one line and never repeat the path, so callers
/// can print `path: error`.
#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("cannot read file: {0}")]
    Io(#[from] std::io::Error),
    #[error("empty file")]
    Empty,
    #[error("not an image (unrecognised format)")]
    UnknownFormat,
    #[error("image is {width}x{height} = {pixels} pixels, above the limit of {limit}")]
    TooLarge { width: u32, height: u32, pixels: u64, limit: u64 },
    #[error("image has no pixels ({width}x{height})")]
    NoPixels { width: u32, height: u32 },
    #[error("corrupt or unsupported image: {0}")]
    Corrupt(String),
    /// The decoder panicked on this file (a bug in it, caught at the file's boundary).
    #[error("the image decoder crashed on this file ({0})")]
    Crashed(String),
}

/// Runs one decode under the panic guard.
fn guarded(f: impl FnOnce() -> Result<RgbImage, DecodeError>) -> Result<RgbImage, DecodeError> {
    guard::isolate("the image decoder", f).unwrap_or_else(|p| Err(DecodeError::Crashed(p.message)))
}

/// Decodes the file at `path` into upright 8-bit RGB.
pub fn decode_file(path: &Path, limits: DecodeLimits) -> Result<RgbImage, DecodeError> {
    guarded(|| decode_file_unguarded(path, limits))
}

fn decode_file_unguarded(path: &Path, limits: DecodeLimits) -> Result<RgbImage, DecodeError> {
    let file = File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Err(DecodeError::Empty);
    }
    let mut reader = BufReader::new(file);
    if reader.fill_buf()?.starts_with(JPEG_SOI) {
        // JPEGs are checked for completeness first, which needs the whole file.
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes)?;
        return decode_bytes_unguarded(&bytes, limits);
    }
    decode_reader(reader, limits)
}

/// Decodes an encoded image held in memory into upright 8-bit RGB.
pub fn decode_bytes(bytes: &[u8], limits: DecodeLimits) -> Result<RgbImage, DecodeError> {
    guarded(|| decode_bytes_unguarded(bytes, limits))
}

fn decode_bytes_unguarded(bytes: &[u8], limits: DecodeLimits) -> Result<RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.starts_with(JPEG_SOI) && !jpeg_is_complete(bytes) {
        return Err(DecodeError::Corrupt("truncated JPEG (no end-of-image marker after the image data)".into()));
    }
    decode_reader(Cursor::new(bytes), limits)
}

const JPEG_SOI: &[u8] = &[0xFF, 0xD8, 0xFF];

/// Whether a JPEG's image data is followed by its end-of-image marker. The JPEG decoder fills
/// a cut-off image with grey instead of failing (PIL refuses it), so this is checked apart:
/// marker segments are skipped up to the first scan; after it, entropy-coded data cannot hold
/// the bytes FF D9 (an FF there is always followed by 00 or a restart marker).
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let mut i = 2;
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            return false;
        }
        let marker = bytes[i + 1];
        match marker {
            0xFF => i += 1, // fill byte
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => i += 2,
            _ => {
                let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
                if marker == 0xDA {
                    let scan = (i + 2 + len).min(bytes.len());
                    return bytes[scan..].windows(2).any(|w| w == [0xFF, 0xD9]);
                }
                i += 2 + len;
            }
        }
    }
    false
}

fn decode_reader<R: BufRead + Seek>(mut reader: R, limits: DecodeLimits) -> Result<RgbImage, DecodeError> {
    let format = image::guess_format(reader.fill_buf()?).ok();
    if format == Some(ImageFormat::Tiff) {
        tiff_reader::check_directory(&mut reader)?;
        let start = reader.stream_position()?;
        if let Some((img, orientation)) = tiff_reader::decode(&mut reader, limits)? {
            return Ok(upright(img, orientation));
        }
        reader.seek(std::io::SeekFrom::Start(start))?;
    }
    let mut reader = ImageReader::new(reader).with_guessed_format()?;
    if reader.format().is_none() {
        return Err(DecodeError::UnknownFormat);
    }
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_alloc());
    reader.limits(image_limits);
    let mut decoder = reader.into_decoder().map_err(image_error)?;
    let (width, height) = decoder.dimensions();
    limits.check(width, height)?;
    // A missing or unreadable EXIF block just means "upright".
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(decoder).map_err(image_error)?;
    Ok(upright(to_rgb8(img), orientation))
}

fn upright(img: RgbImage, orientation: Orientation) -> RgbImage {
    if orientation == Orientation::NoTransforms {
        return img;
    }
    let mut dynamic = DynamicImage::ImageRgb8(img);
    dynamic.apply_orientation(orientation);
    match dynamic {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    }
}

/// Pillow's `convert("RGB")`: alpha is dropped, and 16-bit samples keep their high byte (as
/// Pillow's unpackers do; `image`'s own conversion rounds instead, one level apart).
fn to_rgb8(img: DynamicImage) -> RgbImage {
    fn high(v: u16) -> u8 {
        (v >> 8) as u8
    }
    let (w, h) = (img.width(), img.height());
    let from = |f: &dyn Fn(u32, u32) -> [u8; 3]| RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageLuma16(g) => from(&|x, y| [high(g.get_pixel(x, y).0[0]); 3]),
        DynamicImage::ImageLumaA16(g) => from(&|x, y| [high(g.get_pixel(x, y).0[0]); 3]),
        DynamicImage::ImageRgb16(c) => from(&|x, y| c.get_pixel(x, y).0.map(high)),
        DynamicImage::ImageRgba16(c) => from(&|x, y| {
            let [r, g, b, _] = c.get_pixel(x, y).0;
            [r, g, b].map(high)
        }),
        other => other.to_rgb8(),
    }
}

fn image_error(e: image::ImageError) -> DecodeError {
    match e {
        image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            DecodeError::Corrupt("truncated file".into())
        }
        image::ImageError::IoError(io) => DecodeError::Io(io),
        image::ImageError::Unsupported(u) => DecodeError::Corrupt(collapse_whitespace(&u.to_string())),
        other => DecodeError::Corrupt(collapse_whitespace(&other.to_string())),
    }
}

/// A decoder's message on one line, runs of whitespace (line breaks included) made one space.
pub(super) fn collapse_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Reads at most `n` leading bytes of a file: enough to sniff its format cheaply.
pub fn sniff(path: &Path, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(n);
    File::open(path)?.take(n as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Luma, LumaA, Rgb, Rgba};

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, format).unwrap();
        buf.into_inner()
    }

    #[test]
    fn converts_modes_to_rgb() {
        let gray = DynamicImage::ImageLuma8(image::ImageBuffer::from_pixel(4, 3, Luma([77u8])));
        let rgb = decode_bytes(&encode(&gray, ImageFormat::Png), DecodeLimits::default()).unwrap();
        assert_eq!(rgb.get_pixel(0, 0), &Rgb([77, 77, 77]));

        let la = DynamicImage::ImageLumaA8(image::ImageBuffer::from_pixel(4, 3, LumaA([10u8, 0])));
        let rgb = decode_bytes(&encode(&la, ImageFormat::Png), DecodeLimits::default()).unwrap();
        assert_eq!(rgb.get_pixel(1, 1), &Rgb([10, 10, 10]));

        let rgba = DynamicImage::ImageRgba8(image::ImageBuffer::from_pixel(4, 3, Rgba([1u8, 2, 3, 0])));
        let rgb = decode_bytes(&encode(&rgba, ImageFormat::Png), DecodeLimits::default()).unwrap();
        assert_eq!(rgb.get_pixel(3, 2), &Rgb([1, 2, 3]));

        let deep = DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(4, 3, Rgb([65535u16, 0, 32896])));
        let rgb = decode_bytes(&encode(&deep, ImageFormat::Png), DecodeLimits::default()).unwrap();
        assert_eq!(rgb.get_pixel(0, 0), &Rgb([255, 0, 128]));
    }

    #[test]
    fn truncated_jpegs_are_rejected() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(64, 48, |x, y| Rgb([x as u8 * 3, y as u8 * 5, 7])));
        let jpg = encode(&img, ImageFormat::Jpeg);
        assert!(jpeg_is_complete(&jpg));
        assert!(decode_bytes(&jpg, DecodeLimits::default()).is_ok());
        for cut in [jpg.len() - 2, jpg.len() / 2, 200] {
            let err = decode_bytes(&jpg[..cut], DecodeLimits::default()).unwrap_err();
            assert!(err.to_string().contains("truncated"), "{cut}: {err}");
        }
        // Data after the end marker (as some cameras append) is fine.
        let mut trailing = jpg.clone();
        trailing.extend_from_slice(b"trailer data");
        assert!(decode_bytes(&trailing, DecodeLimits::default()).is_ok());
    }

    #[test]
    fn reports_bad_input() {
        let limits = DecodeLimits::default();
        assert!(matches!(decode_bytes(b"", limits), Err(DecodeError::Empty)));
        assert!(matches!(decode_bytes(b"hello, not an image", limits), Err(DecodeError::UnknownFormat)));
        let png = encode(&DynamicImage::ImageRgb8(RgbImage::new(64, 64)), ImageFormat::Png);
        let err = decode_bytes(&png[..png.len() / 2], limits).unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt(_)), "{err:?}");
        let small = DecodeLimits { max_pixels: 100 };
        assert!(matches!(decode_bytes(&png, small), Err(DecodeError::TooLarge { .. })));
    }
}
