//! Finding and loading ONNX Runtime's shared library, once per process.
//!
//! Tried in order: `ORT_DYLIB_PATH`; `libonnxruntime.so` beside the executable; the project's
//! set-up location (`.venv/onnxruntime/libonnxruntime.so` in the source tree this crate was
//! built from). The error names everything that was tried.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::error::{one_line, InferError};

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

const LIB_NAME: &str = "libonnxruntime.so";

/// Candidate library paths, in the order they are tried.
pub fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(|p| p.to_path_buf())) {
        out.push(dir.join(LIB_NAME));
    }
    out.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/onnxruntime").join(LIB_NAME));
    out
}

fn load() -> Result<ort::environment::Environment, String> {
    let mut tried = Vec::new();
    for path in candidates() {
        if !path.exists() {
            tried.push(format!("{} (missing)", path.display()));
            continue;
        }
        match ort::init_from(&path) {
            Ok(builder) => {
                return builder.with_name("infer").build().map_err(|e| format!("{}: {}", path.display(), one_line(e)));
            }
            Err(e) => tried.push(format!("{} ({})", path.display(), one_line(e))),
        }
    }
    Err(format!("tried {}; set ORT_DYLIB_PATH to libonnxruntime.so, or run scripts/setup.sh", tried.join(", ")))
}

/// The process-wide ONNX Runtime environment.
pub fn environment() -> Result<&'static ort::environment::Environment, InferError> {
    ENVIRONMENT.get_or_init(load).as_ref().map_err(|e| InferError::Runtime(e.clone()))
}
