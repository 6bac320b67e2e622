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
//! `FUZZ_MUTANTS=N` changes the number of mutants per seed (default 750);
//! `FUZZ_SAVE=DIR` writes every mutant that made a decoder panic or broke a rule into DIR.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use infer::{DecodeError, DecodeLimits, ItemError, PreprocessConfig};
use toolkit_tests::alloc::{measure, Counting};
use toolkit_tests::mutate::{mutate, Rng};
use toolkit_tests::{fixture_files, repo_root};

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
    let t = Instant::now();
    let (result, largest, peak) = measure(|| infer::prepare_file(path, &preprocess, limits));
    let took = t.elapsed();
    if largest > budget || peak > budget {
        return Err(format!("allocated {largest} bytes at once, {peak} at peak (budget {budget})"));
    }
    if took > Duration::from_secs(5) {
        return Err(format!("took {took:?}"));
    }
    let outcome = match result {
        Ok(t) if t.input.len() == preprocess.input_len() && t.input.iter().all(|v| v.is_finite()) => Outcome::Decoded,
        Ok(_) => return Err("model input of the wrong size or with non-finite values".into()),
        Err(e) => {
            let msg = e.to_string();
            if msg.contains('\n') {
                return Err(format!("multi-line error: {msg}"));
            }
            let crashed = matches!(e, ItemError::Decode(DecodeError::Crashed(_)) | ItemError::Crashed(_));
            if crashed {
                Outcome::Caught(msg)
            } else {
                Outcome::Error
            }
        }
    };
    Ok((outcome, took))
}

fn seeds() -> Vec<PathBuf> {
    fixture_files("images")
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
    let dir = repo_root().join("tests/fixtures/crashers");
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
