//! BMP and DIB (the bitmaps inside ICO files), read as Pillow's `BmpImagePlugin` reads them.
//!
//! `image`'s BMP decoder refuses OS/2 2.x headers (64 bytes) and run-length bitmaps stored top
//! down, which Pillow opens, widens 5- and 6-bit colour by rounding where Pillow truncates,
//! and fills the pixels an RLE "delta" skips otherwise than Pillow; the format is small
//! enough to read here with Pillow's rules throughout:
//!
//! - headers of 12 (OS/2 1.x), 40, 52, 56, 64 (OS/2 2.x), 108 (V4) and 124 (V5) bytes; rows
//!   bottom-up, or top-down for a negative height;
//! - 1-, 4- and 8-bit palette images (a palette that is a grey ramp gives the index itself as
//!   grey, any index beyond another palette is black), uncompressed or RLE4/RLE8 (Pillow's
//!   decoding of the runs, skipped pixels being index 0);
//! - 16-bit 5-5-5 (uncompressed or bit fields) and 5-6-5 (bit fields), widened as
//!   `v * 255 / 31` and `v * 255 / 63` truncated; 24-bit; 32-bit with any byte-aligned bit
//!   fields (alpha is dropped).
//!
//! Other compressions (JPEG or PNG inside, Huffman, RLE24) and other bit-field layouts are
//! refused, as Pillow refuses them. Dimensions are checked against [`DecodeLimits`] before
//! anything is allocated, and no read is longer than the image needs.

use std::io::{Read, Seek, SeekFrom};

use image::RgbImage;

use super::{DecodeError, DecodeLimits};

const RAW: u32 = 0;
const RLE8: u32 = 1;
const RLE4: u32 = 2;
const BITFIELDS: u32 = 3;

fn corrupt(msg: impl Into<String>) -> DecodeError {
    DecodeError::Corrupt(format!("BMP: {}", msg.into()))
}

fn truncated(what: &str) -> DecodeError {
    DecodeError::Corrupt(format!("truncated file (BMP {what})"))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// How a pixel's bytes become RGB.
#[derive(Debug, Clone, PartialEq)]
enum Pixels {
    /// 1-, 4- or 8-bit indices into a colour map.
    Palette(Palette),
    /// 16-bit 5-5-5 (`green_bits` 5) or 5-6-5 (`green_bits` 6).
    Rgb16 {
        green_bits: u32,
    },
    Bgr24,
    /// 32-bit: which byte holds red, green and blue.
    Rgb32 {
        r: usize,
        g: usize,
        b: usize,
    },
}

/// A colour map as Pillow applies it.
#[derive(Debug, Clone, PartialEq)]
enum Palette {
    /// The map is a grey ramp (or black and white for two colours): the index is the grey.
    Grey {
        bilevel: bool,
    },
    Colours(Vec<[u8; 3]>),
}

impl Palette {
    fn rgb(&self, index: u8) -> [u8; 3] {
        match self {
            Palette::Grey { bilevel: true } => [if index == 0 { 0 } else { 255 }; 3],
            Palette::Grey { bilevel: false } => [index; 3],
            Palette::Colours(c) => c.get(usize::from(index)).copied().unwrap_or([0; 3]),
        }
    }
}

/// What the header says.
#[derive(Debug)]
struct Info {
    header_size: u32,
    width: u32,
    height: u32,
    bits: u16,
    compression: u32,
    /// Colours in the map (the header's count, else `2^bits`).
    colours: u32,
    top_down: bool,
    /// Bytes of a colour-map entry: 3 (OS/2 1.x) or 4.
    entry_len: usize,
    /// Red, green, blue and alpha bit fields, when the header holds them.
    masks: Option<[u32; 4]>,
}

fn read_info<R: Read>(r: &mut R) -> Result<Info, DecodeError> {
    let mut size = [0u8; 4];
    r.read_exact(&mut size).map_err(|_| truncated("header"))?;
    let header_size = u32::from_le_bytes(size);
    if !matches!(header_size, 12 | 40 | 52 | 56 | 64 | 108 | 124) {
        return Err(corrupt(format!("unsupported header of {header_size} bytes")));
    }
    let mut h = vec![0u8; header_size as usize];
    h[..4].copy_from_slice(&size);
    r.read_exact(&mut h[4..]).map_err(|_| truncated("header"))?;
    if header_size == 12 {
        return Ok(Info {
            header_size,
            width: u32::from(u16_at(&h, 4)),
            height: u32::from(u16_at(&h, 6)),
            bits: u16_at(&h, 10),
            compression: RAW,
            colours: 0,
            top_down: false,
            entry_len: 3,
            masks: None,
        });
    }
    // Pillow takes the height as negative when its top byte is FF.
    let raw_height = u32_at(&h, 8);
    let top_down = h[11] == 0xFF;
    let compression = u32_at(&h, 16);
    let masks = (compression == BITFIELDS && header_size >= 52).then(|| {
        let alpha = if header_size >= 56 { u32_at(&h, 52) } else { 0 };
        [u32_at(&h, 40), u32_at(&h, 44), u32_at(&h, 48), alpha]
    });
    Ok(Info {
        header_size,
        width: u32_at(&h, 4),
        height: if top_down { raw_height.wrapping_neg() } else { raw_height },
        bits: u16_at(&h, 14),
        compression,
        colours: u32_at(&h, 32),
        top_down,
        entry_len: 4,
        masks,
    })
}

/// The byte (0–3) a byte-aligned 32-bit field covers.
fn byte_of(mask: u32) -> Option<usize> {
    (0..4).find(|&i| mask == 0xFF << (8 * i))
}

fn pixels_of<R: Read>(r: &mut R, info: &Info) -> Result<Pixels, DecodeError> {
    let bitfields = info.compression == BITFIELDS;
    let masks = match (bitfields, info.masks) {
        (false, _) => None,
        (true, Some(m)) => Some(m),
        // A 40-byte header: the three fields follow it.
        (true, None) => {
            let mut m = [0u8; 12];
            r.read_exact(&mut m).map_err(|_| truncated("bit fields"))?;
            Some([u32_at(&m, 0), u32_at(&m, 4), u32_at(&m, 8), 0])
        }
    };
    let unsupported = || corrupt(format!("unsupported bit fields for {} bits", info.bits));
    match (info.bits, masks) {
        (1 | 4 | 8, None) => Ok(Pixels::Palette(read_palette(r, info)?)),
        (16, None) => Ok(Pixels::Rgb16 { green_bits: 5 }),
        (16, Some([0x7C00, 0x3E0, 0x1F, _])) => Ok(Pixels::Rgb16 { green_bits: 5 }),
        (16, Some([0xF800, 0x7E0, 0x1F, _])) => Ok(Pixels::Rgb16 { green_bits: 6 }),
        (24, None | Some([0xFF_0000, 0xFF00, 0xFF, _])) => Ok(Pixels::Bgr24),
        (32, None | Some([0, 0, 0, _])) => Ok(Pixels::Rgb32 { r: 2, g: 1, b: 0 }),
        (32, Some([r, g, b, _])) => match (byte_of(r), byte_of(g), byte_of(b)) {
            (Some(r), Some(g), Some(b)) if r != g && g != b && r != b => Ok(Pixels::Rgb32 { r, g, b }),
            _ => Err(unsupported()),
        },
        (1 | 4 | 8 | 16 | 24, Some(_)) => Err(unsupported()),
        (bits, _) => Err(corrupt(format!("unsupported depth of {bits} bits"))),
    }
}

/// The colour map, read where Pillow reads it: right after the header (and bit fields).
fn read_palette<R: Read>(r: &mut R, info: &Info) -> Result<Palette, DecodeError> {
    let n = info.colours;
    if n == 0 || n > 65536 {
        return Err(corrupt(format!("a colour map of {n} colours")));
    }
    let mut raw = vec![0u8; n as usize * info.entry_len];
    r.read_exact(&mut raw).map_err(|_| truncated("colour map"))?;
    let colours: Vec<[u8; 3]> = raw.chunks_exact(info.entry_len).map(|e| [e[2], e[1], e[0]]).collect();
    // Pillow's test for a grey image: black and white for two colours, else entry i is (i, i, i).
    let grey = if n == 2 {
        colours == [[0; 3], [255; 3]]
    } else {
        colours.iter().enumerate().all(|(i, c)| *c == [i as u8; 3])
    };
    Ok(if grey { Palette::Grey { bilevel: n == 2 } } else { Palette::Colours(colours) })
}

/// Decodes a BMP file (the reader is at its start).
pub(super) fn decode_file<R: Read + Seek>(r: &mut R, limits: DecodeLimits) -> Result<RgbImage, DecodeError> {
    let start = r.stream_position()?;
    let mut head = [0u8; 14];
    r.read_exact(&mut head).map_err(|_| truncated("file header"))?;
    decode(r, start, Some(u32_at(&head, 10)), false, limits)
}

/// Decodes a DIB: a bitmap without the file header, its pixels right after its colour map.
/// In an icon (`icon`), the height counts the AND mask's rows too, and is halved.
pub(super) fn decode_dib<R: Read + Seek>(r: &mut R, icon: bool, limits: DecodeLimits) -> Result<RgbImage, DecodeError> {
    let start = r.stream_position()?;
    decode(r, start, None, icon, limits)
}

fn decode<R: Read + Seek>(
    r: &mut R,
    start: u64,
    data_offset: Option<u32>,
    icon: bool,
    limits: DecodeLimits,
) -> Result<RgbImage, DecodeError> {
    let mut info = read_info(r)?;
    if icon {
        info.height /= 2;
    }
    limits.check(info.width, info.height)?;
    if info.colours == 0 {
        info.colours = 1u32.checked_shl(u32::from(info.bits)).unwrap_or(0);
    }
    let pixels = pixels_of(r, &info)?;
    let at = match data_offset {
        // An offset that points at the colour map itself is taken as pointing past it.
        Some(o) if u64::from(o) == 14 + u64::from(info.header_size) && info.bits <= 8 => {
            start + u64::from(o) + u64::from(info.colours) * info.entry_len as u64
        }
        Some(o) => start + u64::from(o),
        None => r.stream_position()?,
    };
    r.seek(SeekFrom::Start(at))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let mut rgb = vec![0u8; w * h * 3];
    match (info.compression, &pixels) {
        (RLE8 | RLE4, Pixels::Palette(palette)) => {
            let indices = rle(r, at - start, w, h, info.compression == RLE4)?;
            for (row, out) in rows_in_file_order(&mut rgb, w, h, info.top_down).enumerate() {
                for (px, &i) in out.chunks_exact_mut(3).zip(&indices[row * w..][..w]) {
                    px.copy_from_slice(&palette.rgb(i));
                }
            }
        }
        (RLE8 | RLE4, _) => return Err(corrupt(format!("run-length compression of {}-bit pixels", info.bits))),
        (RAW | BITFIELDS, _) => {
            let stride = (w * usize::from(info.bits)).div_ceil(32) * 4;
            let mut row = vec![0u8; stride];
            for out in rows_in_file_order(&mut rgb, w, h, info.top_down) {
                r.read_exact(&mut row).map_err(|_| truncated("pixel data"))?;
                convert_row(&row, &pixels, info.bits, out);
            }
        }
        (other, _) => return Err(corrupt(format!("unsupported compression {other}"))),
    }
    Ok(RgbImage::from_raw(info.width, info.height, rgb).expect("buffer sized for the image"))
}

/// The output rows in the order the file stores them (bottom row first unless top-down).
fn rows_in_file_order(rgb: &mut [u8], w: usize, h: usize, top_down: bool) -> impl Iterator<Item = &mut [u8]> {
    let rows = rgb.chunks_exact_mut(w * 3);
    let rows: Box<dyn Iterator<Item = &mut [u8]> + '_> = if top_down { Box::new(rows) } else { Box::new(rows.rev()) };
    rows.take(h)
}

/// Pillow's widening of a `bits`-bit colour value: `v * 255 / max`, truncated.
fn widen(v: u16, bits: u32) -> u8 {
    let max = (1u32 << bits) - 1;
    (u32::from(v) * 255 / max) as u8
}

fn convert_row(row: &[u8], pixels: &Pixels, bits: u16, out: &mut [u8]) {
    for (x, px) in out.chunks_exact_mut(3).enumerate() {
        let rgb = match pixels {
            Pixels::Palette(p) => {
                let bits = usize::from(bits);
                let bit = x * bits;
                let index = (row[bit / 8] >> (8 - bits - bit % 8)) & ((1u16 << bits) - 1) as u8;
                p.rgb(index)
            }
            Pixels::Rgb16 { green_bits } => {
                let v = u16_at(row, 2 * x);
                let g = *green_bits;
                [widen(v >> (5 + g), 5), widen((v >> 5) & ((1 << g) - 1), g), widen(v & 31, 5)]
            }
            Pixels::Bgr24 => [row[3 * x + 2], row[3 * x + 1], row[3 * x]],
            Pixels::Rgb32 { r, g, b } => [row[4 * x + r], row[4 * x + g], row[4 * x + b]],
        };
        px.copy_from_slice(&rgb);
    }
}

/// Pillow's RLE4/RLE8 decoding (`BmpRleDecoder`): indices in file row order, `w × h` of them.
/// `pos` is the data's offset in the file, for the word alignment of absolute runs.
fn rle<R: Read>(r: &mut R, mut pos: u64, w: usize, h: usize, rle4: bool) -> Result<Vec<u8>, DecodeError> {
    let dest = w * h;
    let mut data: Vec<u8> = Vec::with_capacity(dest);
    let mut x = 0usize;
    let mut next = |n: usize, pos: &mut u64| -> Vec<u8> {
        let mut buf = Vec::with_capacity(n);
        let got = r.by_ref().take(n as u64).read_to_end(&mut buf).unwrap_or(0);
        *pos += got as u64;
        buf
    };
    while data.len() < dest {
        let pair = next(2, &mut pos);
        let [count, byte] = pair[..] else { break };
        if count > 0 {
            // Encoded mode: a run, cut at the end of the row.
            let n = usize::from(count).min(w.saturating_sub(x));
            if rle4 {
                data.extend((0..n).map(|i| if i % 2 == 0 { byte >> 4 } else { byte & 0x0F }));
            } else {
                data.extend(std::iter::repeat_n(byte, n));
            }
            x += n;
            continue;
        }
        match byte {
            0 => {
                // End of line.
                let pad = (w - data.len() % w) % w;
                data.extend(std::iter::repeat_n(0, pad));
                x = 0;
            }
            1 => break,
            2 => {
                let d = next(2, &mut pos);
                let [right, up] = d[..] else { break };
                let skip = (usize::from(right) + usize::from(up) * w).min(dest - data.len());
                data.extend(std::iter::repeat_n(0, skip));
                x = data.len() % w;
            }
            n => {
                // Absolute mode: `n` literal indices, padded to a 16-bit boundary.
                let count = (dest - data.len()).min(usize::from(n));
                let want = if rle4 { count.div_ceil(2) } else { count };
                let bytes = next(want, &mut pos);
                if rle4 {
                    for (i, b) in bytes.iter().enumerate() {
                        data.push(b >> 4);
                        if i * 2 + 1 < count {
                            data.push(b & 0x0F);
                        }
                    }
                } else {
                    data.extend_from_slice(&bytes);
                }
                if bytes.len() < want || data.len() == dest {
                    break;
                }
                x += usize::from(n);
                if pos % 2 != 0 {
                    next(1, &mut pos);
                }
            }
        }
    }
    // Pillow fails on data that ends early; the rest is index 0 here.
    data.resize(dest, 0);
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn widening_is_pillows() {
        // Measured with Pillow 13 (raw modes BGR;15 and BGR;16).
        assert_eq!([3, 4, 31].map(|v| widen(v, 5)), [24, 32, 255]);
        assert_eq!([2, 10, 22, 63].map(|v| widen(v, 6)), [8, 40, 89, 255]);
    }

    #[test]
    fn rle_runs_as_pillow_reads_them() {
        // 4 wide, 3 high: a run of 3, end of line; absolute 1 2 3 (padded to an even length),
        // end of line; a delta of one pixel right, then the end of the bitmap (the rest is 0).
        let data = [3, 7, 0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 0, 2, 1, 0, 0, 1];
        let out = rle(&mut Cursor::new(&data[..]), 0, 4, 3, false).unwrap();
        assert_eq!(out, [7, 7, 7, 0, 1, 2, 3, 0, 0, 0, 0, 0]);
        // RLE4: a run of 5 alternating 0xA and 0xB.
        let out = rle(&mut Cursor::new(&[5u8, 0xAB, 0, 1][..]), 0, 6, 1, true).unwrap();
        assert_eq!(out, [0xA, 0xB, 0xA, 0xB, 0xA, 0]);
    }

    #[test]
    fn palettes_as_pillow_applies_them() {
        let colours = Palette::Colours(vec![[1, 2, 3], [4, 5, 6]]);
        assert_eq!([0, 1, 2].map(|i| colours.rgb(i)), [[1, 2, 3], [4, 5, 6], [0, 0, 0]]);
        assert_eq!(Palette::Grey { bilevel: false }.rgb(200), [200; 3]);
        assert_eq!(Palette::Grey { bilevel: true }.rgb(1), [255; 3]);
    }
}
