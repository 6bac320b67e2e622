//! Decoding files to upright 8-bit RGB, the one pixel format the preprocessing takes.
//!
//! The format is recognised by content, not by extension (TGA, which has no signature, by its
//! header as Pillow does). Grayscale, alpha, 16-bit, palette and CMYK images are converted to
//! RGB as PIL's `convert("RGB")` converts them (alpha is dropped), and the EXIF orientation is
//! applied so that a rotated photo is classified upright. Dimensions are checked against
//! [`DecodeLimits`] from the header, before any pixel is decoded, and the decoders' own
//! allocations are capped from the same limit.
//!
//! Most formats go to the `image` crate. Files it refuses or reads otherwise than Pillow do
//! have their own paths here: BMP ([`bmp`]), ICO's choice of entry ([`ico`]), TGA headers
//! ([`tga`]), GIFs without a colour table, JPEG files cut short or with stray bytes ([`jpeg`]),
//! and TIFF ([`tiff_reader`]).
//!
//! Decoders are third-party code that can panic on input they do not expect: [`decode_file`]
//! and [`decode_bytes`] run them under [`crate::guard::isolate`], so such a file becomes
//! [`DecodeError::Crashed`] like any other bad file.

mod bmp;
mod ico;
mod jpeg;
mod lab;
mod tga;
mod tiff_reader;

use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::Path;

use image::metadata::Orientation;
use image::{DynamicImage, GrayImage, ImageDecoder, ImageFormat, ImageReader, Luma, RgbImage};
use thiserror::Error;

use crate::background::{composite, Background};
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

/// A decoded image, and what the decoding noticed about its file.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Pillow's `convert("RGB")`: alpha dropped.
    pub image: RgbImage,
    /// The alpha channel, when the image has transparent pixels (Pillow's `convert("RGBA")`
    /// alpha: an alpha channel, or a palette's or colour key's transparency). Kept for PNG,
    /// GIF, WebP, QOI, TGA and PNG-based ICO files; the alpha of BMP, BMP-based ICO and TIFF
    /// files is dropped while decoding.
    pub alpha: Option<GrayImage>,
    /// The file ends before its image data does (a JPEG cut short): the missing part was
    /// filled in, as libjpeg fills it. A field for callers to keep or skip such files, not an
    /// error.
    pub incomplete: bool,
}

impl Decoded {
    fn whole(image: RgbImage) -> Decoded {
        Decoded { image, alpha: None, incomplete: false }
    }

    /// The image as the model's preprocessing takes it: alpha dropped (`None`, as PIL's
    /// `convert("RGB")`), or composited onto `background`.
    pub fn flatten(self, background: Option<Background>) -> RgbImage {
        match (self.alpha, background) {
            (Some(alpha), Some(bg)) => {
                let mut image = self.image;
                composite(&mut image, &alpha, bg);
                image
            }
            _ => self.image,
        }
    }
}

/// Pillow's `convert("RGB")` of a decoded image, and its alpha channel when some pixel is not
/// opaque (16-bit alpha keeps its high byte, as Pillow reads it).
fn split_alpha(img: DynamicImage) -> (RgbImage, Option<GrayImage>) {
    let alpha = match &img {
        DynamicImage::ImageLumaA8(g) => {
            Some(GrayImage::from_fn(g.width(), g.height(), |x, y| Luma([g.get_pixel(x, y).0[1]])))
        }
        DynamicImage::ImageRgba8(c) => {
            Some(GrayImage::from_fn(c.width(), c.height(), |x, y| Luma([c.get_pixel(x, y).0[3]])))
        }
        DynamicImage::ImageLumaA16(g) => {
            Some(GrayImage::from_fn(g.width(), g.height(), |x, y| Luma([(g.get_pixel(x, y).0[1] >> 8) as u8])))
        }
        DynamicImage::ImageRgba16(c) => {
            Some(GrayImage::from_fn(c.width(), c.height(), |x, y| Luma([(c.get_pixel(x, y).0[3] >> 8) as u8])))
        }
        DynamicImage::ImageRgba32F(c) => Some(GrayImage::from_fn(c.width(), c.height(), |x, y| {
            Luma([(c.get_pixel(x, y).0[3].clamp(0.0, 1.0) * 255.0).round() as u8])
        })),
        _ => None,
    };
    // A GIF or an RGBA file whose pixels are all opaque has nothing to composite.
    let alpha = alpha.filter(|a| a.iter().any(|&v| v < 255));
    (to_rgb8(img), alpha)
}

/// Runs one decode under the panic guard.
fn guarded(f: impl FnOnce() -> Result<Decoded, DecodeError>) -> Result<Decoded, DecodeError> {
    guard::isolate("the image decoder", f).unwrap_or_else(|p| Err(DecodeError::Crashed(p.message)))
}

/// Decodes the file at `path` into upright 8-bit RGB.
pub fn decode_file(path: &Path, limits: DecodeLimits) -> Result<RgbImage, DecodeError> {
    decode_file_with_status(path, limits).map(|d| d.image)
}

/// Decodes the file at `path` into upright 8-bit RGB, saying whether the file was incomplete.
pub fn decode_file_with_status(path: &Path, limits: DecodeLimits) -> Result<Decoded, DecodeError> {
    guarded(|| {
        let file = File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Err(DecodeError::Empty);
        }
        decode_reader(BufReader::new(file), limits)
    })
}

/// Decodes an encoded image held in memory into upright 8-bit RGB.
pub fn decode_bytes(bytes: &[u8], limits: DecodeLimits) -> Result<RgbImage, DecodeError> {
    decode_bytes_with_status(bytes, limits).map(|d| d.image)
}

/// Decodes an encoded image held in memory, saying whether it was incomplete.
pub fn decode_bytes_with_status(bytes: &[u8], limits: DecodeLimits) -> Result<Decoded, DecodeError> {
    guarded(|| {
        if bytes.is_empty() {
            return Err(DecodeError::Empty);
        }
        decode_reader(Cursor::new(bytes), limits)
    })
}

/// The formats with a path of their own, by their first bytes; `image` reads the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniffed {
    Jpeg,
    Tiff,
    Bmp,
    Ico,
    /// A GIF without a global colour table.
    GifWithoutColours,
    Other(ImageFormat),
    /// No signature: TGA when its header is one Pillow accepts.
    Unknown,
}

/// TIFF's byte orders and versions, BigTIFF (version 43) included.
pub(crate) fn is_tiff(head: &[u8]) -> bool {
    [b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"].iter().any(|m| head.starts_with(*m))
}

fn sniff_format(head: &[u8]) -> Sniffed {
    if head.starts_with(jpeg::SOI) {
        return Sniffed::Jpeg;
    }
    if is_tiff(head) {
        return Sniffed::Tiff;
    }
    match image::guess_format(head) {
        Ok(ImageFormat::Bmp) => Sniffed::Bmp,
        Ok(ImageFormat::Ico) => Sniffed::Ico,
        // The screen descriptor's flags byte: bit 7 says a global colour table follows.
        Ok(ImageFormat::Gif) if head.len() > 10 && head[10] & 0x80 == 0 => Sniffed::GifWithoutColours,
        Ok(format) => Sniffed::Other(format),
        Err(_) => Sniffed::Unknown,
    }
}

fn decode_reader<R: BufRead + Seek>(mut reader: R, limits: DecodeLimits) -> Result<Decoded, DecodeError> {
    let head = reader.fill_buf()?;
    let head = head[..head.len().min(32)].to_vec();
    match sniff_format(&head) {
        Sniffed::Jpeg => jpeg::decode(reader, limits),
        Sniffed::Tiff => {
            let link = tiff_reader::check_directory(&mut reader)?;
            let start = reader.stream_position()?;
            let mut reader = tiff_reader::FirstPage::new(reader, link)?;
            if let Some((img, orientation)) = tiff_reader::decode(&mut reader, limits)? {
                return Ok(Decoded::whole(upright(img, orientation)));
            }
            reader.seek(SeekFrom::Start(start))?;
            decode_with_image(BufReader::new(reader), Some(ImageFormat::Tiff), limits)
        }
        Sniffed::Bmp => bmp::decode_file(&mut reader, limits).map(Decoded::whole),
        Sniffed::Ico => ico::decode(&mut reader, limits),
        Sniffed::GifWithoutColours => decode_gif_without_colours(reader, limits),
        Sniffed::Other(format) => decode_with_image(reader, Some(format), limits),
        Sniffed::Unknown => match tga::header(&head) {
            Some(header) => tga::decode(reader, header, limits),
            None => Err(DecodeError::UnknownFormat),
        },
    }
}

/// `image`'s reading of a format, converted as Pillow converts it.
fn decode_with_image<R: BufRead + Seek>(
    reader: R,
    format: Option<ImageFormat>,
    limits: DecodeLimits,
) -> Result<Decoded, DecodeError> {
    let mut reader = ImageReader::new(reader);
    match format {
        Some(f) => reader.set_format(f),
        None => reader = reader.with_guessed_format()?,
    }
    let mut decoder = reader_decoder(reader, limits)?;
    let (width, height) = decoder.dimensions();
    limits.check(width, height)?;
    // A missing or unreadable EXIF block just means "upright".
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(decoder).map_err(image_error)?;
    let (rgb, alpha) = split_alpha(img);
    Ok(Decoded {
        image: upright(rgb, orientation),
        alpha: alpha.map(|a| upright_alpha(a, orientation)),
        incomplete: false,
    })
}

fn reader_decoder<'a, R: BufRead + Seek + 'a>(
    mut reader: ImageReader<R>,
    limits: DecodeLimits,
) -> Result<Box<dyn ImageDecoder + 'a>, DecodeError> {
    if reader.format().is_none() {
        return Err(DecodeError::UnknownFormat);
    }
    reader.limits(image_limits(limits));
    reader.into_decoder().map(|d| Box::new(d) as Box<dyn ImageDecoder>).map_err(image_error)
}

fn image_limits(limits: DecodeLimits) -> image::Limits {
    let mut l = image::Limits::default();
    l.max_alloc = Some(limits.max_alloc());
    l
}

/// A GIF without a colour table, which Pillow reads as grey (index `i` is grey level `i`):
/// the same file given a grey colour table, for `image`'s decoder, which otherwise refuses it.
fn decode_gif_without_colours<R: Read>(reader: R, limits: DecodeLimits) -> Result<Decoded, DecodeError> {
    const SCREEN_DESCRIPTOR_END: usize = 13;
    let mut bytes = Vec::new();
    reader.take(limits.max_alloc()).read_to_end(&mut bytes)?;
    if bytes.len() < SCREEN_DESCRIPTOR_END {
        return Err(DecodeError::Corrupt("truncated file".into()));
    }
    // Flags: a global table (bit 7) of 2^(7+1) entries.
    bytes[10] |= 0x87;
    let grey: Vec<u8> = (0..=255u8).flat_map(|v| [v, v, v]).collect();
    bytes.splice(SCREEN_DESCRIPTOR_END..SCREEN_DESCRIPTOR_END, grey);
    decode_with_image(Cursor::new(bytes), Some(ImageFormat::Gif), limits)
}

/// [`upright`] for an alpha channel.
fn upright_alpha(alpha: GrayImage, orientation: Orientation) -> GrayImage {
    if orientation == Orientation::NoTransforms {
        return alpha;
    }
    let mut dynamic = DynamicImage::ImageLuma8(alpha);
    dynamic.apply_orientation(orientation);
    dynamic.to_luma8()
}

pub(super) fn upright(img: RgbImage, orientation: Orientation) -> RgbImage {
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

/// Pillow's `convert("RGB")`: alpha is dropped; 16-bit colour samples keep their high byte (as
/// Pillow's unpackers do; `image`'s own conversion rounds instead, one level apart); 16-bit
/// greyscale (Pillow's mode `I;16`) is clipped to 0–255, as Pillow's conversion clips it.
fn to_rgb8(img: DynamicImage) -> RgbImage {
    fn high(v: u16) -> u8 {
        (v >> 8) as u8
    }
    let (w, h) = (img.width(), img.height());
    let from = |f: &dyn Fn(u32, u32) -> [u8; 3]| RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageLuma16(g) => from(&|x, y| [clip_u16(g.get_pixel(x, y).0[0]); 3]),
        // Pillow reads 16-bit grey with alpha as 8-bit `LA`, from the high bytes.
        DynamicImage::ImageLumaA16(g) => from(&|x, y| [high(g.get_pixel(x, y).0[0]); 3]),
        DynamicImage::ImageRgb16(c) => from(&|x, y| c.get_pixel(x, y).0.map(high)),
        DynamicImage::ImageRgba16(c) => from(&|x, y| {
            let [r, g, b, _] = c.get_pixel(x, y).0;
            [r, g, b].map(high)
        }),
        other => other.to_rgb8(),
    }
}

/// Pillow's conversion of an integer grey sample (modes `I;16`, `I`) to 8 bits: clipped.
pub(super) fn clip_u16(v: u16) -> u8 {
    v.min(255) as u8
}

pub(super) fn image_error(e: image::ImageError) -> DecodeError {
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
