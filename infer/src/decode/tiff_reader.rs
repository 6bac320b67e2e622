//! TIFF pixel data read strip by strip and tile by tile, for the layouts Pillow (libtiff) reads
//! and the `image`/`tiff` crates get wrong or refuse.
//!
//! The `tiff` crate parses the file's directory here; the pixel data is read by this module:
//! the whole-image reader of `tiff` 0.11 mis-sizes the bottom row of tiles of every plane but
//! the first in a planar (`PlanarConfiguration = 2`) image and panics, its chunk reader fails
//! on LZW tiles with right-edge padding, and `image` refuses palette and planar CMYK TIFFs.
//! `tiff` does not read fax (Group 3) data, LZMA, the reversed fill order, YCbCr JPEG data,
//! old-style JPEG, CIELab or integer samples wider than 16 bits either. Each strip or tile of
//! each plane is decompressed (none, LZW, Deflate, PackBits, LZMA, CCITT Group 3 1-D and
//! Group 4, JPEG), the horizontal predictor undone, and the rows placed into the picture,
//! clipped to the image.
//!
//! Colour conversions are Pillow's (`Image.convert("RGB")`), so training and deployment see what
//! torchvision sees: 16-bit colour samples keep their high byte; 16- and 32-bit integer grey
//! (Pillow's modes `I;16` and `I`) is clipped to 0–255 (negative values are 0); 1/2/4-bit grey
//! scales to 0–255; palettes index a 16-bit colour map by its high bytes; CMYK uses Pillow's
//! integer formula; CIELab goes through [`super::lab`]; 32-bit floating-point grey (Pillow's
//! mode `F`) is truncated and clipped to 0–255; premultiplied (associated) alpha is divided
//! out as Pillow's `RGBa` unpacker does. YCbCr JPEG data is decoded to RGB by the JPEG decoder
//! (as libtiff has libjpeg do), old-style JPEG from its embedded JPEG stream.
//!
//! Other layouts (other floating-point or signed samples, uncompressed YCbCr) return `None`
//! and go to the `image` crate.

use std::io::{Read, Seek, SeekFrom};

use image::metadata::Orientation;
use image::RgbImage;
use tiff::decoder::Decoder;
use tiff::tags::{ByteOrder, Tag};

use super::{DecodeError, DecodeLimits};

/// How the samples of one pixel become RGB.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Colour {
    /// Grey where 0 is black (`MinIsWhite` files are inverted while reading).
    Gray,
    Rgb,
    Cmyk,
    Palette,
    /// CIELab: L 0–255, a and b signed.
    Lab,
}

impl Colour {
    /// Samples of a pixel that the conversion reads (alpha and extra samples are ignored).
    fn used_samples(self) -> usize {
        match self {
            Colour::Gray | Colour::Palette => 1,
            Colour::Rgb | Colour::Lab => 3,
            Colour::Cmyk => 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Compression {
    None,
    Lzw,
    Deflate,
    PackBits,
    Lzma,
    /// CCITT Group 3, one-dimensional (with end-of-line codes).
    Fax3,
    Fax4,
    /// JPEG data (Compression 7) decoded to RGB or grey; the directory's JPEGTables are
    /// prepended to each strip or tile.
    Jpeg,
}

/// Everything about the layout that the reading needs, from the directory.
struct Layout {
    width: u32,
    height: u32,
    colour: Colour,
    bits: u8,
    /// Samples per pixel in the file (including alpha and extra samples).
    samples: usize,
    planar: bool,
    invert: bool,
    compression: Compression,
    predictor: bool,
    big_endian: bool,
    /// 32-bit IEEE samples (`SampleFormat = 3`).
    float: bool,
    /// Signed integer samples (`SampleFormat = 2`; grey only).
    signed: bool,
    /// Bits stored least significant first (`FillOrder = 2`; bilevel only).
    reversed_bits: bool,
    /// The first extra sample is premultiplied (associated) alpha, divided out as Pillow does.
    premultiplied: bool,
    /// The JPEG tables stream shared by every strip or tile (JPEG compression).
    jpeg_tables: Option<Vec<u8>>,
    /// Strip or tile size; strips are as wide as the image.
    chunk_w: u32,
    chunk_h: u32,
    offsets: Vec<u64>,
    byte_counts: Vec<u64>,
}

fn corrupt(msg: impl Into<String>) -> DecodeError {
    DecodeError::Corrupt(format!("TIFF: {}", msg.into()))
}

fn tiff_error(e: tiff::TiffError) -> DecodeError {
    match e {
        tiff::TiffError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            DecodeError::Corrupt("truncated file".into())
        }
        tiff::TiffError::LimitsExceeded => corrupt("directory values exceed the decoding limits"),
        other => DecodeError::Corrupt(super::collapse_whitespace(&format!("TIFF: {other}"))),
    }
}

/// Checks that no entry of the first directory declares more data than the file holds, and
/// returns where the first directory's link to the next one lies (offset and width).
///
/// The `tiff` crate reserves room for a tag's declared value count before reading the values
/// (with a 256 MiB default cap, and no way to lower it before the first directory is read), so
/// a 20-byte entry can make it allocate hundreds of megabytes. Both TIFF paths run this first.
pub(super) fn check_directory<R: Read + Seek>(reader: &mut R) -> Result<(u64, u64), DecodeError> {
    let start = reader.stream_position()?;
    let file_len = reader.seek(SeekFrom::End(0))?.saturating_sub(start);
    let mut head = [0u8; 16];
    reader.seek(SeekFrom::Start(start))?;
    let got = reader.by_ref().take(16).read(&mut head)?;
    let big_endian = head.starts_with(b"MM");
    let u = |b: &[u8]| -> u64 {
        if big_endian {
            b.iter().fold(0, |v, &x| v << 8 | u64::from(x))
        } else {
            b.iter().rev().fold(0, |v, &x| v << 8 | u64::from(x))
        }
    };
    if got < 8 {
        return Err(DecodeError::Corrupt("truncated file".into()));
    }
    let bigtiff = got >= 16 && u(&head[2..4]) == 43;
    let (ifd, count_len, entry_len, value_len) =
        if bigtiff { (u(&head[8..16]), 8, 20, 8) } else { (u(&head[4..8]), 2, 12, 4) };
    let mut read_at = |at: u64, n: usize| -> Result<Vec<u8>, DecodeError> {
        let mut buf = vec![0u8; n];
        reader.seek(SeekFrom::Start(start.saturating_add(at)))?;
        reader.read_exact(&mut buf).map_err(|_| DecodeError::Corrupt("truncated file (TIFF directory)".into()))?;
        Ok(buf)
    };
    let entries = u(&read_at(ifd, count_len)?);
    // A directory can hold at most as many entries as the file has room for.
    if entries.saturating_mul(entry_len as u64) > file_len {
        return Err(corrupt(format!("directory declares {entries} entries")));
    }
    let table = read_at(ifd + count_len as u64, entries as usize * entry_len)?;
    for entry in table.chunks_exact(entry_len) {
        let (tag, kind) = (u(&entry[0..2]), u(&entry[2..4]));
        let count = u(&entry[4..4 + value_len]);
        let size: u64 = match kind {
            3 | 8 => 2,
            4 | 9 | 11 | 13 => 4,
            5 | 10 | 12 | 16 | 17 | 18 => 8,
            _ => 1,
        };
        if count.saturating_mul(size) > file_len {
            return Err(corrupt(format!("tag {tag} declares {count} values, more than the file holds")));
        }
    }
    reader.seek(SeekFrom::Start(start))?;
    let next = start + ifd + count_len as u64 + table.len() as u64;
    Ok((next, value_len as u64))
}

/// A TIFF file seen with its first directory as the only one: the link to the next directory
/// reads as 0. Only the first page is decoded (as Pillow opens it), and `tiff` refuses a file
/// whose directories form a cycle before anything is read; Pillow reads the first page of
/// such a file, and so does this.
pub(super) struct FirstPage<R> {
    inner: R,
    /// Where the link lies, and its width.
    link: (u64, u64),
    pos: u64,
}

impl<R: Seek> FirstPage<R> {
    pub(super) fn new(mut inner: R, link: (u64, u64)) -> std::io::Result<FirstPage<R>> {
        let pos = inner.stream_position()?;
        Ok(FirstPage { inner, link, pos })
    }
}

impl<R: Read> Read for FirstPage<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let (at, len) = self.link;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            let p = self.pos + i as u64;
            if p >= at && p < at + len {
                *b = 0;
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Seek> Seek for FirstPage<R> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = self.inner.seek(to)?;
        Ok(self.pos)
    }
}

/// Decodes a TIFF whose layout this module handles; `Ok(None)` leaves it to the `image` crate.
pub(super) fn decode<R: Read + Seek>(
    reader: R,
    limits: DecodeLimits,
) -> Result<Option<(RgbImage, Orientation)>, DecodeError> {
    let mut dec = Decoder::new(reader).map_err(tiff_error)?;
    let (width, height) = dec.dimensions().map_err(tiff_error)?;
    limits.check(width, height)?;
    let orientation = dec
        .find_tag_unsigned::<u16>(Tag::Orientation)
        .map_err(tiff_error)?
        .and_then(|v| Orientation::from_exif(v.min(255) as u8))
        .unwrap_or(Orientation::NoTransforms);
    if dec.find_tag_unsigned::<u16>(Tag::Compression).map_err(tiff_error)? == Some(OLD_JPEG) {
        return old_jpeg(&mut dec, width, height, limits).map(|img| Some((img, orientation)));
    }
    let Some(layout) = layout(&mut dec, width, height)? else { return Ok(None) };
    let palette = match layout.colour {
        Colour::Palette => Some(read_palette(&mut dec, layout.bits)?),
        _ => None,
    };
    let img = read_pixels(dec.inner(), &layout, palette.as_deref(), limits)?;
    Ok(Some((img, orientation)))
}

const OLD_JPEG: u16 = 6;

/// Old-style JPEG (Compression 6), as scanners and early cameras wrote it: decoded from the
/// complete JPEG stream that `JPEGInterchangeFormat` points at, which libtiff reads too. Files
/// without one (tables spread over the old JPEG tags) are refused.
fn old_jpeg<R: Read + Seek>(
    dec: &mut Decoder<R>,
    width: u32,
    height: u32,
    limits: DecodeLimits,
) -> Result<RgbImage, DecodeError> {
    let mut tag = |t: u16| dec.find_tag_unsigned::<u64>(Tag::from_u16_exhaustive(t)).map_err(tiff_error);
    let (Some(offset), length) = (tag(513)?, tag(514)?) else {
        return Err(corrupt("old-style JPEG without a JPEGInterchangeFormat stream"));
    };
    let file = dec.inner();
    let file_len = file.seek(SeekFrom::End(0))?;
    let end = length.map_or(file_len, |l| offset.saturating_add(l).min(file_len));
    if offset >= end {
        return Err(DecodeError::Corrupt("truncated file (old-style JPEG stream)".into()));
    }
    let mut data = Vec::new();
    file.seek(SeekFrom::Start(offset))?;
    file.take((end - offset).min(limits.max_alloc())).read_to_end(&mut data)?;
    // Decoded as JPEG only: any other format here could lead back to this function.
    if !data.starts_with(super::jpeg::SOI) {
        return Err(corrupt("old-style JPEG stream that is not a JPEG stream"));
    }
    let decoded = super::jpeg::decode(std::io::Cursor::new(data), limits)?;
    if decoded.image.dimensions() != (width, height) {
        let (w, h) = decoded.image.dimensions();
        return Err(corrupt(format!("old-style JPEG stream of {w}x{h} in a {width}x{height} image")));
    }
    Ok(decoded.image)
}

/// Reads the directory into a [`Layout`], or `None` for layouts left to the `image` crate.
fn layout<R: Read + Seek>(dec: &mut Decoder<R>, width: u32, height: u32) -> Result<Option<Layout>, DecodeError> {
    let mut u16_tag = |tag: Tag| dec.find_tag_unsigned::<u16>(tag).map_err(tiff_error);
    let photometric = u16_tag(Tag::PhotometricInterpretation)?;
    let compression = match u16_tag(Tag::Compression)?.unwrap_or(1) {
        1 => Compression::None,
        3 => Compression::Fax3,
        4 => Compression::Fax4,
        5 => Compression::Lzw,
        7 => Compression::Jpeg,
        8 | 32946 => Compression::Deflate,
        32773 => Compression::PackBits,
        34925 => Compression::Lzma,
        _ => return Ok(None),
    };
    let predictor = match u16_tag(Tag::Predictor)?.unwrap_or(1) {
        1 => false,
        2 => true,
        _ => return Ok(None),
    };
    let planar = u16_tag(Tag::PlanarConfiguration)?.unwrap_or(1) == 2;
    let samples = usize::from(u16_tag(Tag::SamplesPerPixel)?.unwrap_or(1));
    let reversed_bits = u16_tag(Tag::FillOrder)?.unwrap_or(1) == 2;
    // Group 3 with 2-D coding (T4Options bit 0) is not read here.
    let t4_options = dec.find_tag_unsigned::<u32>(Tag::Unknown(292)).map_err(tiff_error)?.unwrap_or(0);
    if compression == Compression::Fax3 && t4_options & 1 != 0 {
        return Err(corrupt("CCITT Group 3 with 2-D coding is not supported"));
    }
    let (float, signed) = match dec.find_tag_unsigned_vec::<u16>(Tag::SampleFormat).map_err(tiff_error)?.as_deref() {
        None => (false, false),
        Some(f) if f.iter().all(|&s| s == 1) => (false, false),
        Some(f) if f.iter().all(|&s| s == 2) => (false, true),
        Some(f) if f.iter().all(|&s| s == 3) => (true, false),
        Some(_) => return Ok(None),
    };
    let bits = dec.find_tag_unsigned_vec::<u16>(Tag::BitsPerSample).map_err(tiff_error)?.unwrap_or(vec![1]);
    let Some(&first) = bits.first() else { return Ok(None) };
    if bits.iter().any(|&b| b != first) {
        return Ok(None);
    }
    let bits = u8::try_from(first).unwrap_or(0);
    let fax = matches!(compression, Compression::Fax3 | Compression::Fax4);
    if (fax && bits != 1) || (reversed_bits && (bits != 1 || !matches!(compression, Compression::None) && !fax)) {
        return Ok(None);
    }
    // Pillow reads floating-point samples only as one-channel 32-bit grey, and signed ones
    // only as 16- or 32-bit grey.
    if (float && (bits != 32 || samples != 1 || predictor))
        || (signed && !matches!(bits, 16 | 32))
        || (bits == 32 && predictor)
    {
        return Ok(None);
    }
    let Some((colour, invert)) = colour_of(photometric, bits) else { return Ok(None) };
    if (signed || bits == 32) && colour != Colour::Gray {
        return Ok(None);
    }
    // YCbCr JPEG data, which the JPEG decoder turns into RGB (as libtiff has libjpeg do), is
    // read here; RGB and grey JPEG data, and uncompressed YCbCr, go to the `image` crate.
    let ycbcr_jpeg = photometric == Some(6) && compression == Compression::Jpeg;
    let readable = ycbcr_jpeg && !planar && samples == 3 && !predictor;
    if (photometric == Some(6) || compression == Compression::Jpeg) && !readable {
        return Ok(None);
    }
    if samples < colour.used_samples() || samples > 16 {
        return Err(corrupt(format!("{samples} samples per pixel for a {colour:?} image")));
    }
    if predictor && (bits < 8 || compression == Compression::Jpeg) {
        return Err(corrupt("horizontal predictor with fewer than 8 bits per sample"));
    }
    let extra = dec.find_tag_unsigned_vec::<u16>(Tag::ExtraSamples).map_err(tiff_error)?.unwrap_or_default();
    let premultiplied = extra.first() == Some(&1) && samples > colour.used_samples() && bits == 8;
    let tiled = dec.find_tag(Tag::TileWidth).map_err(tiff_error)?.is_some();
    let mut u32_tag = |tag: Tag| dec.find_tag_unsigned::<u32>(tag).map_err(tiff_error);
    let (chunk_w, chunk_h) = if tiled {
        (u32_tag(Tag::TileWidth)?.unwrap_or(0), u32_tag(Tag::TileLength)?.unwrap_or(0))
    } else {
        (width, u32_tag(Tag::RowsPerStrip)?.unwrap_or(height).min(height))
    };
    if chunk_w == 0 || chunk_h == 0 {
        return Err(corrupt("zero-sized tiles or strips"));
    }
    if fax && chunk_w > u32::from(u16::MAX) {
        return Err(corrupt(format!("fax data {chunk_w} pixels wide")));
    }
    let (offsets_tag, counts_tag) =
        if tiled { (Tag::TileOffsets, Tag::TileByteCounts) } else { (Tag::StripOffsets, Tag::StripByteCounts) };
    let mut u64_vec = |tag: Tag| dec.find_tag_unsigned_vec::<u64>(tag).map_err(tiff_error);
    let offsets = u64_vec(offsets_tag)?.ok_or_else(|| corrupt("no strip or tile offsets"))?;
    let byte_counts = u64_vec(counts_tag)?.ok_or_else(|| corrupt("no strip or tile byte counts"))?;
    let jpeg_tables = match compression {
        Compression::Jpeg => dec.find_tag_unsigned_vec::<u8>(Tag::JPEGTables).map_err(tiff_error)?,
        _ => None,
    };
    let big_endian = dec.byte_order() == ByteOrder::BigEndian;
    Ok(Some(Layout {
        width,
        height,
        colour,
        bits,
        samples,
        planar,
        invert,
        compression,
        predictor,
        big_endian,
        float,
        signed,
        reversed_bits,
        premultiplied,
        jpeg_tables,
        chunk_w,
        chunk_h,
        offsets,
        byte_counts,
    }))
}

/// How a photometric interpretation and sample size become RGB, and whether grey is stored
/// with 0 as white; `None` for what this module leaves to the `image` crate.
fn colour_of(photometric: Option<u16>, bits: u8) -> Option<(Colour, bool)> {
    Some(match (photometric, bits) {
        (Some(1), 32) => (Colour::Gray, false),
        // Pillow reads 16-bit grey as `I;16` whichever value is white (no inversion).
        (Some(0 | 1), 16) => (Colour::Gray, false),
        (Some(0), 1 | 2 | 4 | 8) => (Colour::Gray, true),
        (Some(1), 1 | 2 | 4 | 8) => (Colour::Gray, false),
        (Some(2), 8 | 16) => (Colour::Rgb, false),
        // YCbCr: as JPEG data only (see `layout`), decoded to RGB.
        (Some(6), 8) => (Colour::Rgb, false),
        (Some(8), 8) => (Colour::Lab, false),
        (Some(3), 1 | 2 | 4 | 8) => (Colour::Palette, false),
        (Some(5), 8 | 16) => (Colour::Cmyk, false),
        _ => return None,
    })
}

/// Reads every strip or tile and converts the pixels to RGB.
fn read_pixels<R: Read + Seek>(
    file: &mut R,
    l: &Layout,
    palette: Option<&[[u8; 3]]>,
    limits: DecodeLimits,
) -> Result<RgbImage, DecodeError> {
    let file_len = file.seek(SeekFrom::End(0))?;
    let across = l.width.div_ceil(l.chunk_w) as usize;
    let per_plane = across * l.height.div_ceil(l.chunk_h) as usize;
    let planes = if l.planar { l.colour.used_samples() + usize::from(l.premultiplied) } else { 1 };
    let row_bytes = (l.chunk_w as usize * l.step() * usize::from(l.bits)).div_ceil(8);
    if (row_bytes as u64).saturating_mul(u64::from(l.chunk_h)) > limits.max_alloc() {
        return Err(corrupt(format!("{}x{} strips or tiles exceed the decoding limits", l.chunk_w, l.chunk_h)));
    }
    let required = planes * per_plane;
    if l.offsets.len() < required || l.byte_counts.len() < required {
        return Err(corrupt(format!(
            "{} strip or tile offsets and {} byte counts for {required} strips or tiles",
            l.offsets.len(),
            l.byte_counts.len()
        )));
    }
    let (w, h) = (l.width as usize, l.height as usize);
    let mut rgb = vec![0u8; w * h * 3];
    for unit in 0..per_plane {
        let x0 = (unit % across) * l.chunk_w as usize;
        let y0 = (unit / across) * l.chunk_h as usize;
        let region = Region { x0, y0, w: (l.chunk_w as usize).min(w - x0), h: (l.chunk_h as usize).min(h - y0) };
        let chunks = (0..planes)
            .map(|plane| read_chunk(file, file_len, l, unit + plane * per_plane, row_bytes, region.h))
            .collect::<Result<Vec<_>, _>>()?;
        place(&mut rgb, w, l, palette, &chunks, row_bytes, region)?;
    }
    Ok(RgbImage::from_raw(l.width, l.height, rgb).expect("buffer sized for the image"))
}

/// Where a strip or tile lands in the image (clipped to it).
#[derive(Debug, Clone, Copy)]
struct Region {
    x0: usize,
    y0: usize,
    w: usize,
    h: usize,
}

impl Layout {
    /// Samples of one pixel inside a chunk.
    fn step(&self) -> usize {
        if self.planar {
            1
        } else {
            self.samples
        }
    }
}

/// The first `rows` rows of strip or tile `index`, as samples (see [`samples_of`]).
fn read_chunk<R: Read + Seek>(
    file: &mut R,
    file_len: u64,
    l: &Layout,
    index: usize,
    row_bytes: usize,
    rows: usize,
) -> Result<Vec<u16>, DecodeError> {
    let (offset, count) = (l.offsets[index], l.byte_counts[index]);
    if offset.checked_add(count).is_none_or(|end| end > file_len) {
        return Err(DecodeError::Corrupt(format!("truncated file (chunk {index} lies beyond its end)")));
    }
    let mut raw = Vec::with_capacity(count as usize);
    file.seek(SeekFrom::Start(offset))?;
    file.by_ref().take(count).read_to_end(&mut raw)?;
    if l.reversed_bits {
        raw.iter_mut().for_each(|b| *b = b.reverse_bits());
    }
    let want = row_bytes * rows;
    let data = decompress(&raw, l, want, row_bytes).map_err(|e| corrupt(format!("chunk {index}: {e}")))?;
    if data.len() < want {
        return Err(corrupt(format!("chunk {index} holds {} bytes, {want} needed", data.len())));
    }
    Ok(samples_of(&data[..want], l, row_bytes, l.step()))
}

/// Converts the pixels of one strip or tile (a sample array per plane) into `rgb`.
fn place(
    rgb: &mut [u8],
    width: usize,
    l: &Layout,
    palette: Option<&[[u8; 3]]>,
    chunks: &[Vec<u16>],
    row_bytes: usize,
    r: Region,
) -> Result<(), DecodeError> {
    let step = l.step();
    let row_len = if l.bits < 8 { row_bytes } else { row_bytes / (usize::from(l.bits) / 8) };
    // Grey samples wider than 8 bits are already clipped to 8 bits by `samples_of`.
    let high_byte = l.bits == 16 && l.colour != Colour::Gray;
    let to8 = |v: u16| -> u8 {
        if high_byte {
            (v >> 8) as u8
        } else {
            v as u8
        }
    };
    let alpha_at = l.colour.used_samples();
    for y in 0..r.h {
        let at = y * row_len;
        let out_row = &mut rgb[((r.y0 + y) * width + r.x0) * 3..][..r.w * 3];
        for (x, px) in out_row.chunks_exact_mut(3).enumerate() {
            let sample = |s: usize| if l.planar { chunks[s][at + x] } else { chunks[0][at + x * step + s] };
            match l.colour {
                Colour::Gray | Colour::Palette if l.bits < 8 => {
                    let v = unpack(&chunks[0][at..], x, l.bits);
                    match palette {
                        Some(map) => px.copy_from_slice(&map[usize::from(v)]),
                        None => px.fill(scale_low_bits(v, l.bits)),
                    }
                }
                Colour::Gray if l.premultiplied => px.fill(unpremultiply(to8(sample(0)), to8(sample(alpha_at)))),
                Colour::Gray => px.fill(to8(sample(0))),
                Colour::Palette => {
                    let map = palette.ok_or_else(|| corrupt("no colour map"))?;
                    px.copy_from_slice(&map[usize::from(sample(0)).min(map.len() - 1)]);
                }
                Colour::Rgb => {
                    let alpha = if l.premultiplied { Some(to8(sample(alpha_at))) } else { None };
                    for (c, p) in px.iter_mut().enumerate() {
                        *p = alpha.map_or(to8(sample(c)), |a| unpremultiply(to8(sample(c)), a));
                    }
                }
                Colour::Lab => {
                    let [l_, a, b] = [0, 1, 2].map(|s| to8(sample(s)));
                    px.copy_from_slice(&super::lab::to_rgb(l_, a as i8, b as i8));
                }
                Colour::Cmyk => {
                    let [c, m, y, k] = [0, 1, 2, 3].map(|s| to8(sample(s)));
                    px.copy_from_slice(&cmyk_to_rgb(c, m, y, k));
                }
            }
        }
    }
    Ok(())
}

/// Decompresses one strip or tile, producing at most `want` bytes (`row_bytes` a row).
fn decompress(raw: &[u8], l: &Layout, want: usize, row_bytes: usize) -> Result<Vec<u8>, String> {
    match l.compression {
        Compression::Lzma => lzma(raw, want),
        Compression::Fax3 | Compression::Fax4 => Ok(fax(raw, l, want, row_bytes)),
        Compression::Jpeg => jpeg(raw, l, want),
        Compression::None => Ok(raw[..raw.len().min(want)].to_vec()),
        Compression::Lzw => {
            let mut out = vec![0u8; want];
            let mut decoder = weezl::decode::Decoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8);
            let (mut read, mut written) = (0, 0);
            // Stops at the end code, when `want` bytes are out, or when nothing moves (the input
            // is used up and the decoder's pending output flushed).
            while written < want {
                let r = decoder.decode_bytes(&raw[read..], &mut out[written..]);
                read += r.consumed_in;
                written += r.consumed_out;
                match r.status {
                    Ok(weezl::LzwStatus::Ok) if r.consumed_in + r.consumed_out > 0 => {}
                    Ok(_) => break,
                    Err(e) => return Err(format!("LZW data: {e}")),
                }
            }
            out.truncate(written);
            Ok(out)
        }
        Compression::Deflate => {
            let mut out = Vec::with_capacity(want);
            flate2::read::ZlibDecoder::new(raw)
                .take(want as u64)
                .read_to_end(&mut out)
                .map_err(|e| format!("Deflate data: {e}"))?;
            Ok(out)
        }
        Compression::PackBits => Ok(packbits(raw, want)),
    }
}

/// PackBits runs, producing at most `want` bytes.
fn packbits(raw: &[u8], want: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(want);
    let mut i = 0;
    while i < raw.len() && out.len() < want {
        let n = raw[i] as i8;
        i += 1;
        match n {
            0..=127 => {
                let run = &raw[i..raw.len().min(i + n as usize + 1)];
                out.extend_from_slice(run);
                i += run.len();
            }
            -127..=-1 => {
                if let Some(&b) = raw.get(i) {
                    out.extend(std::iter::repeat_n(b, (1 - n as isize) as usize));
                }
                i += 1;
            }
            -128 => {} // no-op
        }
    }
    out.truncate(want);
    out
}

/// A chunk's rows as samples: 16-bit values in host order with the predictor undone; 8-bit
/// values widened; packed sub-byte rows kept one byte per value (see [`unpack`]); 16- and
/// 32-bit grey (integer or floating-point) already converted to 0–255 as Pillow does. Grey
/// that the file stores with 0 as white is inverted here.
fn samples_of(data: &[u8], l: &Layout, row_bytes: usize, step: usize) -> Vec<u16> {
    if l.bits == 32 {
        return data
            .chunks_exact(4)
            .map(|b| {
                let b = [b[0], b[1], b[2], b[3]];
                let bits = if l.big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) };
                // Pillow's mode `I` is signed 32-bit, unsigned files included (`I;32N`).
                let v = if l.float { float_to_u8(f32::from_bits(bits)) } else { (bits as i32).clamp(0, 255) as u8 };
                u16::from(v)
            })
            .collect();
    }
    let mut values: Vec<u16> = if l.bits == 16 {
        data.chunks_exact(2)
            .map(|b| if l.big_endian { u16::from_be_bytes([b[0], b[1]]) } else { u16::from_le_bytes([b[0], b[1]]) })
            .collect()
    } else {
        data.iter().map(|&b| u16::from(b)).collect()
    };
    let row_len = if l.bits == 16 { row_bytes / 2 } else { row_bytes };
    if l.predictor {
        for row in values.chunks_mut(row_len) {
            for i in step..row.len() {
                row[i] = if l.bits == 16 {
                    row[i].wrapping_add(row[i - step])
                } else {
                    (row[i] as u8).wrapping_add(row[i - step] as u8).into()
                };
            }
        }
    }
    if l.invert {
        for v in &mut values {
            *v = 0xff - *v; // sub-byte samples: inverting the packed byte inverts each value
        }
    }
    if l.bits == 16 && l.colour == Colour::Gray {
        // Pillow's `I;16` (and signed `I`) to 8 bits: clipped.
        for v in &mut values {
            *v = if l.signed { (*v as i16).clamp(0, 255) as u16 } else { u16::from(super::clip_u16(*v)) };
        }
    }
    values
}

/// The `x`-th `bits`-bit value of a row of packed bytes (most significant bits first).
fn unpack(row: &[u16], x: usize, bits: u8) -> u16 {
    let bit = x * usize::from(bits);
    let byte = row[bit / 8];
    let shift = 8 - usize::from(bits) - bit % 8;
    (byte >> shift) & ((1 << bits) - 1)
}

/// Pillow's conversion of a mode `F` value to 8 bits: truncated towards zero, clipped to
/// 0–255; NaN is 0 (Rust's saturating float-to-integer cast does exactly that).
fn float_to_u8(v: f32) -> u8 {
    v as u8
}

/// Pillow's expansion of 1-, 2- and 4-bit grey to 8 bits.
fn scale_low_bits(v: u16, bits: u8) -> u8 {
    (v * (255 / ((1 << bits) - 1))) as u8
}

/// Pillow's `cmyk2rgb` (libImaging/Convert.c), in its integer arithmetic.
fn cmyk_to_rgb(c: u8, m: u8, y: u8, k: u8) -> [u8; 3] {
    let nk = 255 - i32::from(k);
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    [c, m, y].map(|v| (nk - muldiv255(i32::from(v), nk)).clamp(0, 255) as u8)
}

/// Pillow's `RGBa` unpacker: a premultiplied sample divided by its alpha (0 when alpha is 0).
fn unpremultiply(v: u8, alpha: u8) -> u8 {
    match alpha {
        0 => 0,
        255 => v,
        a => (u32::from(v) * 255 / u32::from(a)).min(255) as u8,
    }
}

/// LZMA data: an .xz stream (as libtiff writes it). Its LZMA2 chunks declare their sizes, and
/// the stream is refused when they add up to more than the strip or tile holds, before any
/// decoding: the decoder keeps its whole output in memory.
fn lzma(raw: &[u8], want: usize) -> Result<Vec<u8>, String> {
    let declared = xz_unpacked_size(raw).ok_or("LZMA data: not an .xz stream of LZMA2 data")?;
    if declared > want as u64 + (1 << 20) {
        return Err(format!("LZMA data of {declared} bytes for {want}"));
    }
    let mut out = Vec::with_capacity(want);
    lzma_rs::xz_decompress(&mut std::io::Cursor::new(raw), &mut out).map_err(|e| format!("LZMA data: {e}"))?;
    out.truncate(want);
    Ok(out)
}

/// The total of the unpacked sizes that the LZMA2 chunks of an .xz stream's blocks declare.
fn xz_unpacked_size(xz: &[u8]) -> Option<u64> {
    if !xz.starts_with(b"\xFD7zXZ\0") {
        return None;
    }
    let mut at = 12;
    let mut total = 0u64;
    // Blocks, until the index (a zero byte where a block header would start).
    while *xz.get(at)? != 0 {
        let header_len = (usize::from(xz[at]) + 1) * 4;
        at += header_len;
        // LZMA2 chunks: a control byte, then sizes; 0 ends the block's data.
        loop {
            let control = *xz.get(at)?;
            match control {
                0 => {
                    at += 1;
                    break;
                }
                1 | 2 => {
                    let size = usize::from(u16::from_be_bytes([*xz.get(at + 1)?, *xz.get(at + 2)?])) + 1;
                    total += size as u64;
                    at += 3 + size;
                }
                0x80..=0xFF => {
                    let unpacked = (usize::from(control & 0x1F) << 16)
                        + usize::from(u16::from_be_bytes([*xz.get(at + 1)?, *xz.get(at + 2)?]))
                        + 1;
                    let packed = usize::from(u16::from_be_bytes([*xz.get(at + 3)?, *xz.get(at + 4)?])) + 1;
                    let props = usize::from(control >= 0xC0);
                    total += unpacked as u64;
                    at += 5 + props + packed;
                }
                _ => return None,
            }
        }
        // Block padding to four bytes, then the check (its size from the stream flags).
        at = at.div_ceil(4) * 4;
        at += match xz[7] & 0x0F {
            0 => 0,
            1 => 4,
            4 => 8,
            10 => 32,
            _ => return None,
        };
    }
    Some(total)
}

/// CCITT fax data (Group 3 one-dimensional, Group 4) as packed rows, 1 bits for black (as
/// libtiff gives them; the photometric interpretation then says which is white). Rows the
/// data does not reach stay white; the caller checks the length.
fn fax(raw: &[u8], l: &Layout, want: usize, row_bytes: usize) -> Vec<u8> {
    let width = u16::try_from(l.chunk_w).unwrap_or(u16::MAX);
    let rows = want / row_bytes.max(1);
    let mut out = vec![0u8; want];
    let mut row = 0;
    let mut line = |transitions: &[u16]| {
        if row < rows {
            let dst = &mut out[row * row_bytes..][..row_bytes];
            for (x, colour) in fax::decoder::pels(transitions, width).enumerate() {
                if colour == fax::Color::Black {
                    dst[x / 8] |= 0x80 >> (x % 8);
                }
            }
        }
        row += 1;
    };
    let height = u16::try_from(rows).unwrap_or(u16::MAX);
    if l.compression == Compression::Fax4 {
        fax::decoder::decode_g4(raw.iter().copied(), width, Some(height), &mut line);
        return out;
    }
    let bytes = raw.iter().map(|&b| Ok::<u8, std::convert::Infallible>(b));
    let Ok(mut decoder) = fax::decoder::Group3Decoder::new(bytes) else { return out };
    for _ in 0..rows {
        match decoder.advance() {
            Ok(fax::decoder::DecodeStatus::Incomplete) => line(decoder.transitions()),
            // A strip's last line has no end-of-line code after it (libtiff writes none), which
            // the decoder reports as an error: the line is complete all the same.
            Ok(fax::decoder::DecodeStatus::End) | Err(_) => {
                line(decoder.transitions());
                break;
            }
        }
    }
    out
}

/// JPEG data of one strip or tile, with the directory's tables, decoded to RGB or grey.
fn jpeg(raw: &[u8], l: &Layout, want: usize) -> Result<Vec<u8>, String> {
    // The tables stream is SOI, tables, EOI: its EOI and the data's SOI are left out.
    let mut stream = Vec::with_capacity(raw.len() + l.jpeg_tables.as_ref().map_or(0, Vec::len));
    match &l.jpeg_tables {
        Some(t) if t.len() >= 4 && raw.len() >= 2 => {
            stream.extend_from_slice(&t[..t.len() - 2]);
            stream.extend_from_slice(&raw[2..]);
        }
        _ => stream.extend_from_slice(raw),
    }
    let colour = if l.colour == Colour::Gray {
        zune_jpeg::zune_core::colorspace::ColorSpace::Luma
    } else {
        zune_jpeg::zune_core::colorspace::ColorSpace::RGB
    };
    let options =
        zune_jpeg::zune_core::options::DecoderOptions::default().set_strict_mode(false).jpeg_set_out_colorspace(colour);
    let mut decoder =
        zune_jpeg::JpegDecoder::new_with_options(zune_jpeg::zune_core::bytestream::ZCursor::new(&stream[..]), options);
    decoder.decode_headers().map_err(|e| format!("JPEG data: {}", super::collapse_whitespace(&format!("{e:?}"))))?;
    let (w, h) = decoder.dimensions().ok_or("JPEG data without dimensions")?;
    if w as u64 * h as u64 * colour.num_components() as u64 > want as u64 + (1 << 20) {
        return Err(format!("JPEG data of {w}x{h} pixels for a {}x{} chunk", l.chunk_w, l.chunk_h));
    }
    let mut out =
        decoder.decode().map_err(|e| format!("JPEG data: {}", super::collapse_whitespace(&format!("{e:?}"))))?;
    // A strip's JPEG data is as wide as the strip; rows are then whole.
    if w as u32 != l.chunk_w {
        return Err(format!("JPEG data {w} pixels wide in a chunk of {}", l.chunk_w));
    }
    out.truncate(want);
    Ok(out)
}

/// The colour map of a palette image: `2^bits` RGB entries from the 16-bit `ColorMap` tag.
fn read_palette<R: Read + Seek>(dec: &mut Decoder<R>, bits: u8) -> Result<Vec<[u8; 3]>, DecodeError> {
    let n = 1usize << bits;
    let map = dec
        .find_tag_unsigned_vec::<u16>(Tag::ColorMap)
        .map_err(tiff_error)?
        .ok_or_else(|| corrupt("palette image without a colour map"))?;
    if map.len() < 3 * n {
        return Err(corrupt(format!("colour map has {} values, {} needed", map.len(), 3 * n)));
    }
    Ok((0..n).map(|i| [map[i], map[n + i], map[2 * n + i]].map(|v| (v >> 8) as u8)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pillow_conversions() {
        assert_eq!(cmyk_to_rgb(0, 0, 0, 0), [255, 255, 255]);
        assert_eq!(cmyk_to_rgb(255, 255, 255, 255), [0, 0, 0]);
        assert_eq!(cmyk_to_rgb(128, 0, 64, 32), [111, 223, 167]);
        assert_eq!(scale_low_bits(1, 1), 255);
        // Measured with Pillow 13: `Image.fromarray(values, "F").convert("RGB")`.
        let values = [-3.7, -0.5, 0.4, 0.5, 0.6, 1.5, 2.5, 2.49, 254.5, 254.6, 255.4, 255.5, 300.0];
        let pillow = [0, 0, 0, 0, 0, 1, 2, 2, 254, 254, 255, 255, 255];
        assert_eq!(values.map(float_to_u8), pillow);
        assert_eq!([f32::NAN, f32::INFINITY, f32::NEG_INFINITY].map(float_to_u8), [0, 255, 0]);
        assert_eq!(scale_low_bits(2, 2), 170);
        assert_eq!(scale_low_bits(15, 4), 255);
        // 0b1011_0010: 2-bit values 2, 3, 0, 2
        let row = [0b1011_0010u16];
        assert_eq!((0..4).map(|x| unpack(&row, x, 2)).collect::<Vec<_>>(), [2, 3, 0, 2]);
    }

    #[test]
    fn packbits_runs() {
        // literal run of 3, repeat 'z' 4 times, no-op, literal 1
        let raw = [2, b'a', b'b', b'c', 0xfd, b'z', 0x80, 0, b'q'];
        assert_eq!(packbits(&raw, 100), b"abczzzzq");
        assert_eq!(packbits(&raw, 5), b"abczz");
    }
}
