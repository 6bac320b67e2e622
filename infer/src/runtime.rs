//! Finding and loading ONNX Runtime's shared library, once per process.
//!
//! Tried in order: `ORT_DYLIB_PATH`; `libonnxruntime.so` beside the executable; the project's
//! set-up location (`.venv/onnxruntime/libonnxruntime.so` in the source tree this crate was
//! built from). The error names everything that was tried.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::error::{first_line, InferError};

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();
static LOADED: OnceLock<PathBuf> = OnceLock::new();

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
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    out.push(crate_dir.parent().unwrap_or(&crate_dir).join(".venv/onnxruntime").join(LIB_NAME));
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
                let _ = LOADED.set(path.clone());
                return builder
                    .with_name("infer")
                    .build()
                    .map_err(|e| format!("{}: {}", path.display(), first_line(e)));
            }
            Err(e) => tried.push(format!("{} ({})", path.display(), first_line(e))),
        }
    }
    Err(format!("tried {}; set ORT_DYLIB_PATH to libonnxruntime.so, or run scripts/setup.sh", tried.join(", ")))
}

/// The library file ONNX Runtime was loaded from (as found, before following links: ONNX Runtime
/// looks for its provider libraries beside this path).
pub fn loaded_library() -> Option<PathBuf> {
    LOADED.get().cloned()
}

/// ONNX Runtime's version, from the loaded library itself.
pub fn version() -> Option<String> {
    let path = loaded_library()?;
    // SAFETY: the library is already loaded (this only takes another reference to it), and
    // OrtGetApiBase and GetVersionString are ONNX Runtime's stable C entry points.
    unsafe {
        let lib = libloading::Library::new(&path).ok()?;
        let base: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
            lib.get(b"OrtGetApiBase\0").ok()?;
        let base = base();
        if base.is_null() {
            return None;
        }
        let v = ((*base).GetVersionString)();
        Some(std::ffi::CStr::from_ptr(v).to_string_lossy().into_owned())
    }
}

/// The process-wide ONNX Runtime environment.
pub fn environment() -> Result<&'static ort::environment::Environment, InferError> {
    ENVIRONMENT.get_or_init(load).as_ref().map_err(|e| InferError::Runtime(e.clone()))
}
