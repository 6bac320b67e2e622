//! Helpers for the `infer` tests: test models and images made with the project's venv.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `tests/python/<script>` with the venv's Python; panics with its stderr on failure.
pub fn python(script: &str, args: &[&std::ffi::OsStr]) {
    let exe = repo_root().join(".venv/bin/python");
    assert!(exe.exists(), "{} missing: run scripts/setup.sh first", exe.display());
    let out =
        Command::new(exe).arg(repo_root().join("tests/python").join(script)).args(args).output().expect("run python");
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A tiny 3-class (red, green, blue) ONNX model, see `tests/python/make_tiny_onnx.py`.
pub fn tiny_model(dir: &Path, kind: &str) -> PathBuf {
    let out = dir.join(format!("tiny_{kind}.onnx"));
    python("make_tiny_onnx.py", &[out.as_os_str(), "--kind".as_ref(), kind.as_ref()]);
    out
}

/// A solid-colour image with a little texture.
pub fn colour_image(rgb: [u8; 3], w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let t = ((x * 7 + y * 3) % 16) as u8;
        image::Rgb([rgb[0].saturating_add(t), rgb[1].saturating_add(t), rgb[2].saturating_add(t)])
    })
}

pub const RED: [u8; 3] = [220, 30, 30];
pub const GREEN: [u8; 3] = [30, 200, 40];
pub const BLUE: [u8; 3] = [20, 40, 220];
