//! Seeded mutation fuzzing of the decode + preprocess path `infer` uses ([`infer::prepare_file`]),
//! on stable Rust, in the ordinary test run.
//!
//! Every seed image in `tests/fixtures/images/` (each supported format and mode) is mutated
//! with a fixed seed — bit flips, interesting byte values, truncations, length-field and
//! dimension edits that understand each format's header, chunk duplication, insertions and
//! deletions — and each mutant goes through the real path. Pass: every mutant decodes or
//! returns an error, none takes more than a few seconds, and no allocation exceeds what the
//! pixel limit allows (measured by a counting allocator). Panics inside third-party decoders
//! are caught at the file's boundary by design; the test reports them per format and each
//! one found is kept as a regression input in `tests/fixtures/crashers/`.
//!
//! `FUZZ_MUTANTS=N` changes the number of mutants per seed (default 260);
//! `FUZZ_SAVE=DIR` writes every mutant that made a decoder panic into DIR.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use infer::{DecodeError, DecodeLimits, InferError, PreprocessConfig};

/// Counts, per thread, live bytes, their peak and the largest single request: the tests
/// measure what decoding one file allocates on the thread that decodes it.
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn grew(by: usize, request: usize) {
    let _ = LIVE.try_with(|l| {
        l.set(l.get() + by);
        let _ = PEAK.try_with(|p| p.set(p.get().max(l.get())));
    });
    let _ = LARGEST.try_with(|m| m.set(m.get().max(request)));
}

fn shrank(by: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(by)));
}

// SAFETY: forwards to the system allocator; the counters are const-initialised thread-locals
// without destructors, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size(), layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size(), layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrank(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grew(new_size - layout.size(), new_size);
        } else {
            shrank(layout.size() - new_size);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What happened to one input.
enum Outcome {
    Decoded,
    Error,
    /// A decoder panicked and the panic was caught at the file's boundary.
    Caught(String),
}

/// Runs one file through the path `infer` uses; returns the outcome, or the reason it broke a
/// rule (multi-line message, allocation over `budget`, non-finite values, too slow).
fn check_one(path: &Path, limits: DecodeLimits, budget: usize) -> Result<(Outcome, Duration), String> {
    let preprocess = PreprocessConfig::default();
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    LARGEST.with(|m| m.set(0));
    let t = Instant::now();
    let result = infer::prepare_file(path, &preprocess, limits);
    let took = t.elapsed();
    let (largest, peak) = (LARGEST.with(Cell::get), PEAK.with(Cell::get) - base);
    if largest > budget || peak > budget {
        return Err(format!("allocated {largest} bytes at once, {peak} at peak (budget {budget})"));
    }
    if took > Duration::from_secs(5) {
        return Err(format!("took {took:?}"));
    }
    let outcome = match result {
        Ok(t) if t.len() == preprocess.input_len() && t.iter().all(|v| v.is_finite()) => Outcome::Decoded,
        Ok(_) => return Err("model input of the wrong size or with non-finite values".into()),
        Err(e) => {
            let msg = e.to_string();
            if msg.contains('\n') {
                return Err(format!("multi-line error: {msg}"));
            }
            let crashed = matches!(e, InferError::Decode { source: DecodeError::Crashed(_), .. })
                || msg.contains("internal error");
            if crashed {
                Outcome::Caught(infer::prediction::error_reason(path, &e))
            } else {
                Outcome::Error
            }
        }
    };
    Ok((outcome, took))
}

/// SplitMix64: a fixed seed gives the same mutants on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// A numeric field in a file header: where it is, its width in bytes and byte order.
#[derive(Debug, Clone, Copy)]
struct Field {
    at: usize,
    size: usize,
    big_endian: bool,
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

/// The length, size and dimension fields of a seed, found by walking its format's structure.
fn fields(b: &[u8]) -> Vec<Field> {
    let mut out = Vec::new();
    let f = |at, size, big_endian| Field { at, size, big_endian };
    if b.starts_with(b"\x89PNG") {
        // chunk lengths, and IHDR's width and height
        let mut at = 8;
        while at + 8 <= b.len() {
            out.push(f(at, 4, true));
            let Some(len) = u32_at(b, at, true) else { break };
            at += 12 + len;
        }
        out.extend([f(16, 4, true), f(20, 4, true)]);
    } else if b.starts_with(&[0xFF, 0xD8]) {
        // segment lengths; SOF height and width
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
    } else if b.starts_with(b"GIF8") {
        out.extend([f(6, 2, false), f(8, 2, false)]);
        // the first image descriptor's position and size
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
    } else if b.starts_with(b"BM") {
        out.extend([f(2, 4, false), f(10, 4, false), f(14, 4, false), f(18, 4, false), f(22, 4, false)]);
        out.extend([f(28, 2, false), f(34, 4, false), f(46, 4, false)]);
    } else if b.starts_with(b"II*\0") || b.starts_with(b"MM\0*") {
        // every directory entry's count and value
        let big = b[0] == b'M';
        if let Some(ifd) = u32_at(b, 4, big) {
            out.push(f(4, 4, big));
            let n = if big { be16(b, ifd) } else { le16(b, ifd) }.unwrap_or(0);
            for i in 0..n.min(64) {
                let e = ifd + 2 + 12 * i;
                out.extend([f(e + 4, 4, big), f(e + 8, 4, big), f(e + 8, 2, big)]);
            }
        }
    } else if b.starts_with(b"RIFF") {
        out.extend([f(4, 4, false), f(16, 4, false)]);
        match b.get(12..16) {
            Some(b"VP8L") => out.push(f(21, 4, false)),
            Some(b"VP8 ") => out.extend([f(26, 2, false), f(28, 2, false)]),
            Some(b"VP8X") => out.extend([f(24, 3, false), f(27, 3, false)]),
            _ => {}
        }
    }
    out.retain(|f| f.at + f.size <= b.len());
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
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
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
                let max = (1u64 << (8 * f.size)) - 1;
                let v = match rng.below(9) {
                    0 => 0,
                    1 => 1,
                    2 => max,
                    3 => max / 2 + 1,
                    4 => old.wrapping_add(1) & max,
                    5 => old.wrapping_sub(1) & max,
                    6 => (old << 4) & max,
                    7 => 0x10000 & max,
                    _ => rng.next() & max,
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
                let junk: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
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

fn seeds() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/images");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("seed folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| !p.extension().is_some_and(|e| e == "py" || e == "md"))
        .collect();
    files.sort();
    files
}

#[test]
fn mutants_of_every_format_decode_or_fail_cleanly() {
    let per_seed: usize = std::env::var("FUZZ_MUTANTS").ok().and_then(|v| v.parse().ok()).unwrap_or(750);
    let save = std::env::var_os("FUZZ_SAVE").map(PathBuf::from);
    // A small pixel limit makes "no allocation beyond the limit" a sharp check.
    let limits = DecodeLimits { max_pixels: 1 << 20 };
    let budget = limits.max_alloc() as usize + (4 << 20);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mutant");
    let started = Instant::now();
    let seeds = seeds();
    let (mut total, mut decoded) = (0usize, 0usize);
    let mut caught: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut slowest = (Duration::ZERO, String::new());
    let mut problems = Vec::new();
    for seed_path in &seeds {
        let name = seed_path.file_name().unwrap().to_string_lossy().into_owned();
        let seed = std::fs::read(seed_path).unwrap();
        let mut rng = Rng(0x5EED ^ seed.iter().fold(0u64, |h, &b| h.rotate_left(5) ^ u64::from(b)));
        for i in 0..per_seed {
            let mutant = mutate(&seed, &mut rng);
            std::fs::write(&file, &mutant).unwrap();
            total += 1;
            let keep = |why: &str| {
                if let Some(dir) = &save {
                    std::fs::create_dir_all(dir).unwrap();
                    std::fs::write(dir.join(format!("{name}.{i}.{why}.bin")), &mutant).unwrap();
                }
            };
            match check_one(&file, limits, budget) {
                Ok((outcome, took)) => {
                    match outcome {
                        Outcome::Decoded => decoded += 1,
                        Outcome::Error => {}
                        Outcome::Caught(reason) => {
                            keep("panic");
                            caught.entry(name.clone()).or_default().push(format!("#{i}: {reason}"));
                        }
                    }
                    if took > slowest.0 {
                        slowest = (took, format!("{name} #{i}"));
                    }
                }
                Err(problem) => {
                    keep("problem");
                    problems.push(format!("{name} #{i}: {problem}"));
                }
            }
        }
    }
    let n_caught: usize = caught.values().map(Vec::len).sum();
    println!(
        "{total} mutants of {} seeds in {:.1} s: {decoded} decoded, {} errors ({n_caught} of them decoder panics caught); slowest {:?} ({})",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        total - decoded,
        slowest.0,
        slowest.1
    );
    for (seed, list) in &caught {
        println!("  {seed}: {} panics caught, e.g. {}", list.len(), list[0]);
    }
    assert!(problems.is_empty(), "{} mutants broke a rule:\n{}", problems.len(), problems.join("\n"));
}

/// Inputs that once broke a rule (kept from runs of the test above, see the folder's README):
/// each must now decode or fail within the same bounds.
#[test]
fn recorded_crashers_fail_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/crashers");
    let limits = DecodeLimits { max_pixels: 1 << 20 };
    let budget = limits.max_alloc() as usize + (4 << 20);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("crashers folder")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|e| e != "md"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "regression inputs missing");
    for path in &files {
        let outcome = check_one(path, limits, budget).unwrap_or_else(|p| panic!("{}: {p}", path.display()));
        if let (Outcome::Caught(reason), _) = outcome {
            println!("{}: decoder panic caught: {reason}", path.display());
        }
    }
    println!("{} recorded inputs checked", files.len());
}
