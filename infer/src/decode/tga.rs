//! TGA (Truevision Targa), which has no signature: a file no other format claims is taken as
//! TGA when its header is one Pillow accepts ([`header`]), as Pillow itself does. The pixels
//! are `image`'s TGA decoder's, with two corrections for Pillow's reading:
//!
//! - the header's count of alpha ("attribute") bits, which writers fill in carelessly and
//!   Pillow ignores, is set from the pixel depth before `image` sees it (it refuses, say, a
//!   16-bit grey+alpha file that declares no alpha bits);
//! - 5-bit colour (16-bit pixels or colour maps) is widened as Pillow widens it,
//!   `v * 255 / 31` truncated, where `image` rounds (one level apart for some values).

use std::io::{Cursor, Read};

use image::codecs::tga::TgaDecoder;
use image::{DynamicImage, ImageDecoder};

use super::{image_error, split_alpha, DecodeError, DecodeLimits, Decoded};

const HEADER_LEN: usize = 18;

/// The fields of a TGA header that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    image_type: u8,
    /// Bits of a pixel (of a colour-map index for colour-mapped images).
    depth: u8,
    /// Bits of a colour-map entry (0 without a colour map).
    map_depth: u8,
    raw: [u8; HEADER_LEN],
}

/// The header of a file Pillow opens as TGA, or `None`. Pillow's checks: a colour-map type of
/// 0 or 1, non-zero dimensions, a depth of 8, 16, 24 or 32 bits (1 is Pillow's too, but not
/// `image`'s), a known image type and a bottom or top origin; and for colour-mapped images
/// a map of 15-, 16-, 24- or 32-bit entries.
pub(super) fn header(head: &[u8]) -> Option<Header> {
    let raw: [u8; HEADER_LEN] = head.get(..HEADER_LEN)?.try_into().ok()?;
    let (map_type, image_type, depth) = (raw[1], raw[2], raw[16]);
    let (width, height) = (u16::from_le_bytes([raw[12], raw[13]]), u16::from_le_bytes([raw[14], raw[15]]));
    let map_depth = if map_type == 1 { raw[7] } else { 0 };
    let known = match image_type & !8 {
        1 => map_type == 1 && depth == 8 && matches!(map_depth, 15 | 16 | 24 | 32),
        2 => matches!(depth, 16 | 24 | 32),
        3 => matches!(depth, 8 | 16),
        _ => false,
    };
    // Bits 6-7 of the descriptor (interleaving) must be clear for an origin Pillow knows.
    let ok = map_type <= 1 && width > 0 && height > 0 && known && image_type & !0x0B == 0 && raw[17] & 0xC0 == 0;
    ok.then_some(Header { image_type, depth, map_depth, raw })
}

/// Decodes a TGA file whose header is `h` (the reader is at its start).
pub(super) fn decode<R: Read>(mut reader: R, h: Header, limits: DecodeLimits) -> Result<Decoded, DecodeError> {
    let mut raw = h.raw;
    reader.read_exact(&mut [0u8; HEADER_LEN])?;
    // The alpha bits implied by the pixel format, as Pillow reads it.
    let colour_bits = if h.map_depth > 0 { h.map_depth } else { h.depth };
    let alpha_bits = match (h.image_type & !8, colour_bits) {
        (3, 16) | (_, 32) => 8,
        _ => 0,
    };
    raw[17] = (raw[17] & 0xF0) | alpha_bits;
    let mut decoder = TgaDecoder::new(Cursor::new(raw).chain(reader)).map_err(image_error)?;
    let (width, height) = decoder.dimensions();
    limits.check(width, height)?;
    decoder.set_limits(super::image_limits(limits)).map_err(image_error)?;
    let (mut img, alpha) = split_alpha(DynamicImage::from_decoder(decoder).map_err(image_error)?);
    if h.image_type & !8 != 3 && colour_bits <= 16 {
        let pillow = five_bit_table();
        for v in img.iter_mut() {
            *v = pillow[usize::from(*v)];
        }
    }
    Ok(Decoded { image: img, alpha, incomplete: false })
}

/// From `image`'s widening of a 5-bit value (rounded) to Pillow's (truncated); both are
/// one-to-one, so the 8-bit value tells the 5-bit one.
fn five_bit_table() -> [u8; 256] {
    let mut t = [0u8; 256];
    for v in 0..32u32 {
        let rounded = (v * 255 + 15) / 31;
        t[rounded as usize] = (v * 255 / 31) as u8;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pillow_accepts_these_headers_only() {
        let mut h = [0u8; HEADER_LEN];
        h[2] = 2;
        h[12] = 4;
        h[14] = 3;
        h[16] = 24;
        assert!(header(&h).is_some());
        h[2] = 10; // RLE
        assert!(header(&h).is_some());
        h[16] = 12;
        assert!(header(&h).is_none());
        h[16] = 24;
        h[14] = 0; // no rows
        assert!(header(&h).is_none());
        assert!(header(b"hello, not an image, not a TGA").is_none());
    }

    #[test]
    fn five_bit_values_widen_as_pillow_widens_them() {
        let t = five_bit_table();
        // Measured with Pillow 13 (`Image.frombytes("RGB", .., "raw", "BGR;15")`).
        let pillow = [0, 8, 16, 24, 32, 41, 49, 57, 65, 74, 82, 90, 98, 106, 115, 123];
        for (v, p) in pillow.iter().enumerate() {
            assert_eq!(t[((v as u32 * 255 + 15) / 31) as usize], *p);
        }
    }
}
