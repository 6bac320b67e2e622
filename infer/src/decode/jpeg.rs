//! JPEG files as Pillow (libjpeg) reads them, cut short or with stray bytes included.
//!
//! The marker segments are walked before decoding. Stray bytes between segments (junk
//! before a marker, which libjpeg skips with a warning) are left out of the copy given to the
//! decoder, which would otherwise stop there. A file whose entropy-coded data ends without an
//! end-of-image marker — a download or copy cut short — is decoded as far as its data goes
//! and reported incomplete ([`super::Decoded::incomplete`]): like libjpeg, the decoder fills
//! what is missing instead of failing. Data after the end-of-image marker is ignored.

use std::io::{BufRead, Cursor, Read, Seek};

use image::codecs::jpeg::JpegDecoder;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder};

use super::{image_error, to_rgb8, upright, DecodeError, DecodeLimits, Decoded};

/// Start of image, and the first byte of the marker after it (what Pillow checks).
pub(super) const SOI: &[u8] = &[0xFF, 0xD8, 0xFF];
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;

/// What walking a file's markers found.
#[derive(Debug, PartialEq, Eq)]
struct Layout {
    /// The file as the decoder should see it: stray bytes between segments left out, ending
    /// at the end-of-image marker (one added when the file has none).
    data: Vec<u8>,
    /// The file ends before its end-of-image marker.
    incomplete: bool,
}

/// Walks the markers of `bytes` (which start with [`SOI`]).
fn layout(bytes: &[u8]) -> Result<Layout, DecodeError> {
    let mut data = Vec::with_capacity(bytes.len() + 2);
    data.extend_from_slice(&bytes[..2]);
    let mut i = 2;
    let mut scans = 0;
    loop {
        // Stray bytes before the next marker (libjpeg skips them, and so does Pillow).
        while i < bytes.len() && bytes[i] != 0xFF {
            i += 1;
        }
        // Fill bytes: any number of FF before the marker code.
        while i + 1 < bytes.len() && bytes[i + 1] == 0xFF {
            i += 1;
        }
        if i + 1 >= bytes.len() {
            if scans == 0 {
                return Err(DecodeError::Corrupt("truncated file (JPEG headers)".into()));
            }
            data.extend_from_slice(&[0xFF, EOI]);
            return Ok(Layout { data, incomplete: true });
        }
        let marker = bytes[i + 1];
        match marker {
            EOI => {
                data.extend_from_slice(&[0xFF, EOI]);
                return Ok(Layout { data, incomplete: false });
            }
            // Markers without a length: TEM, RSTn (between segments they carry nothing).
            0x01 | 0xD0..=0xD7 => {
                i += 2;
                continue;
            }
            _ => {}
        }
        if i + 4 > bytes.len() {
            if scans == 0 {
                return Err(DecodeError::Corrupt("truncated file (JPEG headers)".into()));
            }
            data.extend_from_slice(&[0xFF, EOI]);
            return Ok(Layout { data, incomplete: true });
        }
        let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
        if len < 2 {
            return Err(DecodeError::Corrupt(format!("JPEG: marker {marker:#04X} with a length of {len}")));
        }
        let end = i + 2 + len;
        if end > bytes.len() {
            if scans == 0 {
                return Err(DecodeError::Corrupt("truncated file (JPEG headers)".into()));
            }
            data.extend_from_slice(&bytes[i..]);
            data.extend_from_slice(&[0xFF, EOI]);
            return Ok(Layout { data, incomplete: true });
        }
        if marker != SOS {
            data.extend_from_slice(&bytes[i..end]);
            i = end;
            continue;
        }
        scans += 1;
        // Entropy-coded data: an FF in it is followed by 00 (a stuffed byte) or a restart
        // marker; any other marker ends it.
        let mut j = end;
        while j + 1 < bytes.len() && (bytes[j] != 0xFF || matches!(bytes[j + 1], 0x00 | 0xD0..=0xD7 | 0xFF)) {
            j += 1;
        }
        if j + 1 >= bytes.len() {
            data.extend_from_slice(&bytes[i..]);
            return Ok(Layout { data, incomplete: true });
        }
        data.extend_from_slice(&bytes[i..j]);
        i = j;
    }
}

/// Decodes a JPEG file (the reader is at its start).
pub(super) fn decode<R: BufRead + Seek>(mut reader: R, limits: DecodeLimits) -> Result<Decoded, DecodeError> {
    // A JPEG file's size bounds nothing, so its reading is capped like an allocation.
    let mut bytes = Vec::new();
    reader.by_ref().take(limits.max_alloc()).read_to_end(&mut bytes)?;
    decode_bytes(&bytes, limits)
}

fn decode_bytes(bytes: &[u8], limits: DecodeLimits) -> Result<Decoded, DecodeError> {
    let layout = layout(bytes)?;
    let mut decoder = JpegDecoder::new(Cursor::new(layout.data.as_slice())).map_err(image_error)?;
    let (width, height) = decoder.dimensions();
    limits.check(width, height)?;
    decoder.set_limits(super::image_limits(limits)).map_err(image_error)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(decoder).map_err(image_error)?;
    Ok(Decoded { image: upright(to_rgb8(img), orientation), alpha: None, incomplete: layout.incomplete })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8 * 3, y as u8 * 5, 7]));
        let mut buf = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(img).write_to(&mut buf, image::ImageFormat::Jpeg).unwrap();
        buf.into_inner()
    }

    #[test]
    fn complete_files_are_kept_as_they_are() {
        let jpg = jpeg(64, 48);
        let l = layout(&jpg).unwrap();
        assert_eq!((l.data.as_slice(), l.incomplete), (jpg.as_slice(), false));
        // Data after the end marker (as some cameras append) is left out.
        let mut trailing = jpg.clone();
        trailing.extend_from_slice(b"trailer data");
        assert_eq!(layout(&trailing).unwrap().data, jpg);
    }

    #[test]
    fn stray_bytes_before_a_marker_are_left_out() {
        let jpg = jpeg(64, 48);
        let sos = jpg.windows(2).position(|w| w == [0xFF, SOS]).unwrap();
        let mut junk = jpg[..sos].to_vec();
        junk.extend_from_slice(&[0x12, 0x34]);
        junk.extend_from_slice(&jpg[sos..]);
        let l = layout(&junk).unwrap();
        assert_eq!((l.data.as_slice(), l.incomplete), (jpg.as_slice(), false));
    }

    #[test]
    fn files_cut_short_decode_and_are_incomplete() {
        let jpg = jpeg(64, 48);
        let whole = decode_bytes(&jpg, DecodeLimits::default()).unwrap();
        assert!(!whole.incomplete);
        let no_eoi = decode_bytes(&jpg[..jpg.len() - 2], DecodeLimits::default()).unwrap();
        assert!(no_eoi.incomplete);
        assert_eq!(no_eoi.image, whole.image);
        let half = decode_bytes(&jpg[..jpg.len() * 3 / 4], DecodeLimits::default()).unwrap();
        assert!(half.incomplete);
        assert_eq!(half.image.dimensions(), (64, 48));
        // Cut inside the headers: nothing to decode.
        let sos = jpg.windows(2).position(|w| w == [0xFF, SOS]).unwrap();
        for cut in [3, 20, sos, sos + 4] {
            let err = decode_bytes(&jpg[..cut], DecodeLimits::default()).unwrap_err();
            assert!(err.to_string().contains("truncated"), "{cut}: {err}");
        }
    }
}
