//! Helpers shared by the cross-crate tests in `tests/tests/`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The project's venv Python (made by `scripts/setup.sh`), with unbuffered output.
pub fn python() -> Command {
    let exe = repo_root().join(".venv/bin/python");
    assert!(exe.exists(), "{} missing: run scripts/setup.sh first", exe.display());
    let mut cmd = Command::new(exe);
    cmd.env("PYTHONUNBUFFERED", "1");
    cmd
}

/// Runs a script from `tests/python/` with the venv's Python and panics with its output on failure.
pub fn run_python(script: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = python()
        .arg(repo_root().join("tests/python").join(script))
        .args(args)
        .output()
        .expect("start python");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The seed's dataset, when present (`data/hymenoptera_data`, else `../shared/data/...`).
pub fn seed_data() -> Option<PathBuf> {
    let root = repo_root();
    [root.join("data/hymenoptera_data"), root.join("../shared/data/hymenoptera_data")]
        .into_iter()
        .find(|p| p.join("val").is_dir())
}

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
