//! ICO (Windows icons): the entry Pillow opens, read as Pillow reads it.
//!
//! Pillow opens the largest entry and, among entries of that size, the one of the lowest
//! colour depth (it sorts by depth, then by size); `image`'s ICO decoder picks the deepest
//! first, and refuses PNG entries that are not RGBA. So the directory is read here, and the
//! chosen entry goes to the PNG decoder or, for a BMP entry (a DIB whose height counts the
//! AND mask too), to [`super::bmp`]. The AND mask only makes pixels transparent, which
//! `convert("RGB")` drops, so it is not read.

use std::io::{Cursor, Read, Seek, SeekFrom};

use image::ImageFormat;

use super::{bmp, DecodeError, DecodeLimits, Decoded};

/// One directory entry: what Pillow sorts on, and where the data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    square: u32,
    depth: u32,
    size: u32,
    offset: u32,
}

fn corrupt(msg: impl Into<String>) -> DecodeError {
    DecodeError::Corrupt(format!("ICO: {}", msg.into()))
}

/// The entry Pillow opens: the largest, then the lowest colour depth, then the first.
fn choose(entries: &[Entry]) -> Option<Entry> {
    let mut sorted = entries.to_vec();
    // Pillow's two stable sorts: by depth, then by size, largest first.
    sorted.sort_by_key(|e| e.depth);
    sorted.sort_by_key(|e| std::cmp::Reverse(e.square));
    sorted.first().copied()
}

fn read_entries<R: Read>(reader: &mut R) -> Result<Vec<Entry>, DecodeError> {
    let mut head = [0u8; 6];
    reader.read_exact(&mut head).map_err(|_| DecodeError::Corrupt("truncated file".into()))?;
    let count = u16::from_le_bytes([head[4], head[5]]);
    let mut table = vec![0u8; usize::from(count) * 16];
    reader.read_exact(&mut table).map_err(|_| DecodeError::Corrupt("truncated file (ICO directory)".into()))?;
    Ok(table
        .chunks_exact(16)
        .map(|e| {
            let side = |b: u8| if b == 0 { 256 } else { u32::from(b) };
            let (colours, bpp) = (u32::from(e[2]), u32::from(u16::from_le_bytes([e[6], e[7]])));
            // Pillow's colour depth: the bit count, else log2 of the colour count, else 256.
            let depth = match (bpp, colours) {
                (0, 0 | 1) => 256,
                (0, n) => n.next_power_of_two().trailing_zeros(),
                (b, _) => b,
            };
            let u32_at = |at: usize| u32::from_le_bytes([e[at], e[at + 1], e[at + 2], e[at + 3]]);
            Entry { square: side(e[0]) * side(e[1]), depth, size: u32_at(8), offset: u32_at(12) }
        })
        .collect())
}

/// Decodes the entry of an ICO file that Pillow opens (the reader is at its start).
pub(super) fn decode<R: Read + Seek>(reader: &mut R, limits: DecodeLimits) -> Result<Decoded, DecodeError> {
    let start = reader.stream_position()?;
    let file_len = reader.seek(SeekFrom::End(0))?.saturating_sub(start);
    reader.seek(SeekFrom::Start(start))?;
    let entries = read_entries(reader)?;
    let entry = choose(&entries).ok_or_else(|| corrupt("no images in the directory"))?;
    let offset = u64::from(entry.offset);
    if offset >= file_len {
        return Err(DecodeError::Corrupt("truncated file (ICO entry beyond its end)".into()));
    }
    // The declared size is only a hint (Pillow reads on to the end of the file); the file
    // bounds it, and so does the allocation limit.
    let len = (file_len - offset).min(limits.max_alloc());
    let mut data = Vec::new();
    reader.seek(SeekFrom::Start(start + offset))?;
    reader.take(len).read_to_end(&mut data)?;
    if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        return super::decode_with_image(Cursor::new(data), Some(ImageFormat::Png), limits);
    }
    bmp::decode_dib(&mut Cursor::new(data), true, limits).map(Decoded::whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pillow_opens_the_largest_entry_of_the_lowest_depth() {
        let e = |side: u32, depth: u32, offset: u32| Entry { square: side * side, depth, size: 0, offset };
        let entries = [e(16, 32, 1), e(32, 8, 2), e(32, 4, 3), e(32, 32, 4), e(24, 1, 5)];
        assert_eq!(choose(&entries).unwrap().offset, 3);
        assert_eq!(choose(&[e(32, 8, 2), e(32, 8, 7)]).unwrap().offset, 2);
        assert!(choose(&[]).is_none());
    }
}
