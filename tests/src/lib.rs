//! Helpers shared by the cross-crate tests in `tests/tests/`.

pub mod alloc;
pub mod mutate;

pub use test_support::*;

use std::path::{Path, PathBuf};

/// Sorted image files under `dir` (recursively).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Writes `f32` values little-endian, as the Python helpers read them.
pub fn write_f32(path: &Path, values: &[f32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).expect("write f32 file");
}

/// Reads little-endian `f32` values.
pub fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .expect("read f32 file")
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect()
}

/// Writes a torchvision-format weights file with `tests/python/make_weights.py`.
pub fn make_weights(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let mut all: Vec<&std::ffi::OsStr> = vec![out.as_os_str()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    run_python("make_weights.py", &all);
    out
}

/// `n` preprocessed model inputs: seed val images when the dataset is present, else
/// generated pictures, through the deployment transform.
pub fn model_inputs(n: usize) -> Vec<f32> {
    let cfg = infer::PreprocessConfig::default();
    let mut out = Vec::with_capacity(n * cfg.input_len());
    let files = seed_data().map(|d| files_under(&d.join("val"))).unwrap_or_default();
    for i in 0..n {
        let img = match files.get(i * 7) {
            Some(path) => infer::decode_file(path, infer::DecodeLimits::default()).expect("decode seed image"),
            None => image::RgbImage::from_fn(300 + i as u32 * 10, 260, |x, y| {
                image::Rgb([(x * 3 + y) as u8, (y * 5 + i as u32 * 40) as u8, ((x ^ y) * 2) as u8])
            }),
        };
        out.extend(cfg.eval(&img).expect("preprocess"));
    }
    out
}

/// Largest absolute difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
