//! Seeded mutation of valid files into hostile ones, for the tests that attack the places
//! reading outside input (images, weight files, checkpoints, ONNX models). The same seed gives
//! the same mutants on every machine.
//!
//! A mutant is one to three of: bit flips, interesting byte values, truncation, an edit of a
//! length, size or dimension field that [`fields`] finds by walking the format's structure
//! (PNG, JPEG, GIF, BMP, TIFF, WebP, zip, safetensors; PNM headers as text), duplication of a
//! chunk, insertion and deletion.

pub use test_support::Rng;

/// A numeric field in a file header: where it is, its width in bytes and byte order.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub at: usize,
    pub size: usize,
    pub big_endian: bool,
}

fn be16(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?])))
}
fn le16(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?])))
}
fn u32_at(b: &[u8], at: usize, big: bool) -> Option<usize> {
    let s: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(if big { u32::from_be_bytes(s) } else { u32::from_le_bytes(s) } as usize)
}

fn f(at: usize, size: usize, big_endian: bool) -> Field {
    Field { at, size, big_endian }
}

/// The length, size and dimension fields of a seed, found by walking its format's structure.
pub fn fields(b: &[u8]) -> Vec<Field> {
    let mut out = if b.starts_with(b"\x89PNG") {
        png_fields(b)
    } else if b.starts_with(&[0xFF, 0xD8]) {
        jpeg_fields(b)
    } else if b.starts_with(b"GIF8") {
        gif_fields(b)
    } else if b.starts_with(b"BM") {
        let mut v = vec![f(2, 4, false), f(10, 4, false), f(14, 4, false), f(18, 4, false), f(22, 4, false)];
        v.extend([f(28, 2, false), f(34, 4, false), f(46, 4, false)]);
        v
    } else if b.starts_with(b"II*\0") || b.starts_with(b"MM\0*") {
        tiff_fields(b)
    } else if b.starts_with(b"PK\x03\x04") {
        zip_fields(b)
    } else if b.len() >= 8 && b.get(8) == Some(&b'{') {
        vec![f(0, 8, false)] // safetensors: the header length
    } else if b.starts_with(b"RIFF") {
        webp_fields(b)
    } else {
        Vec::new()
    };
    out.retain(|f| f.at + f.size <= b.len());
    out
}

/// Chunk lengths, and IHDR's width and height.
fn png_fields(b: &[u8]) -> Vec<Field> {
    let mut out = Vec::new();
    let mut at = 8;
    while at + 8 <= b.len() {
        out.push(f(at, 4, true));
        let Some(len) = u32_at(b, at, true) else { break };
        at += 12 + len;
    }
    out.extend([f(16, 4, true), f(20, 4, true)]);
    out
}

/// Segment lengths; SOF height and width.
fn jpeg_fields(b: &[u8]) -> Vec<Field> {
    let mut out = Vec::new();
    let mut at = 2;
    while at + 4 <= b.len() && b[at] == 0xFF {
        let marker = b[at + 1];
        out.push(f(at + 2, 2, true));
        if matches!(marker, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF) {
            out.extend([f(at + 5, 2, true), f(at + 7, 2, true)]);
        }
        if marker == 0xDA {
            break;
        }
        at += 2 + be16(b, at + 2).unwrap_or(0);
    }
    out
}

/// The logical screen, and the first image descriptor's position and size.
fn gif_fields(b: &[u8]) -> Vec<Field> {
    let mut out = vec![f(6, 2, false), f(8, 2, false)];
    let gct = if b.get(10).is_some_and(|p| p & 0x80 != 0) { 3 << ((b[10] & 7) + 1) } else { 0 };
    let mut at = 13 + gct;
    while at < b.len() {
        match b[at] {
            0x2C => {
                out.extend((0..4).map(|i| f(at + 1 + 2 * i, 2, false)));
                break;
            }
            0x21 => {
                at += 2;
                while at < b.len() && b[at] != 0 {
                    at += 1 + b[at] as usize;
                }
                at += 1;
            }
            _ => break,
        }
    }
    out
}

/// Every directory entry's count and value.
fn tiff_fields(b: &[u8]) -> Vec<Field> {
    let mut out = Vec::new();
    let big = b[0] == b'M';
    if let Some(ifd) = u32_at(b, 4, big) {
        out.push(f(4, 4, big));
        let n = if big { be16(b, ifd) } else { le16(b, ifd) }.unwrap_or(0);
        for i in 0..n.min(64) {
            let e = ifd + 2 + 12 * i;
            out.extend([f(e + 4, 4, big), f(e + 8, 4, big), f(e + 8, 2, big)]);
        }
    }
    out
}

/// Every local header's and central directory entry's sizes, and the end record.
fn zip_fields(b: &[u8]) -> Vec<Field> {
    let mut out = Vec::new();
    for at in 0..b.len().saturating_sub(4) {
        match &b[at..at + 4] {
            b"PK\x03\x04" => out.extend([f(at + 18, 4, false), f(at + 22, 4, false), f(at + 26, 2, false)]),
            b"PK\x01\x02" => out.extend([f(at + 20, 4, false), f(at + 24, 4, false), f(at + 42, 4, false)]),
            b"PK\x05\x06" => out.extend([f(at + 10, 2, false), f(at + 12, 4, false), f(at + 16, 4, false)]),
            _ => {}
        }
    }
    out
}

/// The RIFF and chunk sizes, and the frame's dimensions.
fn webp_fields(b: &[u8]) -> Vec<Field> {
    let mut out = vec![f(4, 4, false), f(16, 4, false)];
    match b.get(12..16) {
        Some(b"VP8L") => out.push(f(21, 4, false)),
        Some(b"VP8 ") => out.extend([f(26, 2, false), f(28, 2, false)]),
        Some(b"VP8X") => out.extend([f(24, 3, false), f(27, 3, false)]),
        _ => {}
    }
    out
}

fn write_field(b: &mut [u8], f: Field, v: u64) {
    let bytes = if f.big_endian { v.to_be_bytes()[8 - f.size..].to_vec() } else { v.to_le_bytes()[..f.size].to_vec() };
    b[f.at..f.at + f.size].copy_from_slice(&bytes);
}

fn read_field(b: &[u8], f: Field) -> u64 {
    let s = &b[f.at..f.at + f.size];
    if f.big_endian {
        s.iter().fold(0, |v, &x| v << 8 | u64::from(x))
    } else {
        s.iter().rev().fold(0, |v, &x| v << 8 | u64::from(x))
    }
}

/// PNM headers are text: replace one of the numbers.
fn edit_pnm_number(b: &mut Vec<u8>, rng: &mut Rng) {
    let header_end = b.len().min(32);
    let starts: Vec<usize> =
        (0..header_end).filter(|&i| b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_digit()) && i > 1).collect();
    if starts.is_empty() {
        return;
    }
    let s = rng.pick(&starts);
    let e = (s..b.len()).find(|&i| !b[i].is_ascii_digit()).unwrap_or(b.len());
    let v = rng.pick(&["0", "1", "65535", "65536", "4294967295", "99999999999", "-1", "3"]);
    b.splice(s..e, v.bytes());
}

const INTERESTING8: [u8; 8] = [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF, 0x10, 0x40];

/// One mutant of `seed`: one to three mutations.
pub fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    let fields = fields(seed);
    for _ in 0..1 + rng.below(3) {
        if b.is_empty() {
            break;
        }
        match rng.below(9) {
            0 => {
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(b.len());
                    b[i] ^= 1 << rng.below(8);
                }
            }
            1 => {
                let i = rng.below(b.len());
                b[i] = rng.pick(&INTERESTING8);
            }
            2 => {
                let cut = rng.below(b.len());
                b.truncate(cut);
            }
            3 | 4 if !fields.is_empty() => {
                let f = rng.pick(&fields);
                if f.at + f.size > b.len() {
                    continue;
                }
                let old = read_field(&b, f);
                let max = if f.size >= 8 { u64::MAX } else { (1u64 << (8 * f.size)) - 1 };
                let v = match rng.below(9) {
                    0 => 0,
                    1 => 1,
                    2 => max,
                    3 => max / 2 + 1,
                    4 => old.wrapping_add(1) & max,
                    5 => old.wrapping_sub(1) & max,
                    6 => (old << 4) & max,
                    7 => 0x10000 & max,
                    _ => rng.next_u64() & max,
                };
                write_field(&mut b, f, v);
            }
            3 | 4 => edit_pnm_number(&mut b, rng),
            5 => {
                // duplicate a chunk of the file in place
                let start = rng.below(b.len());
                let len = 1 + rng.below((b.len() - start).min(512));
                let chunk = b[start..start + len].to_vec();
                let at = rng.below(b.len() + 1);
                b.splice(at..at, chunk);
            }
            6 => {
                let start = rng.below(b.len());
                let len = 1 + rng.below((b.len() - start).min(64));
                b.drain(start..start + len);
            }
            7 => {
                let at = rng.below(b.len() + 1);
                let junk: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next_u64() as u8).collect();
                b.splice(at..at, junk);
            }
            _ => {
                // overwrite a run with one interesting value
                let start = rng.below(b.len());
                let len = 1 + rng.below((b.len() - start).min(32));
                let v = rng.pick(&INTERESTING8);
                b[start..start + len].fill(v);
            }
        }
    }
    b
}
