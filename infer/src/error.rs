//! Typed errors of the inference library, every message a single line. [`InferError`] is about
//! the model and the runtime and names the model file; [`ItemError`] is about one input and
//! carries no path: the [`crate::FileResult`] it sits in does, attached once where the file is
//! handled.

use std::path::PathBuf;

use thiserror::Error;

use crate::decode::DecodeError;
use crate::guard::Panicked;
use crate::metadata::MetadataError;
use crate::preprocess::PreprocessError;

/// `Clone`: a batch that fails gives each of its items the same error.
#[derive(Debug, Clone, Error)]
pub enum InferError {
    /// The ONNX Runtime shared library could not be loaded.
    #[error("cannot load ONNX Runtime: {0}")]
    Runtime(String),
    #[error("{0}: model file not found")]
    ModelNotFound(PathBuf),
    #[error("{path}: not a usable ONNX model: {reason}")]
    ModelLoad { path: PathBuf, reason: String },
    #[error("{path}: incompatible model: {reason}")]
    Incompatible { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Metadata { path: PathBuf, source: MetadataError },
    /// A strictly requested execution provider could not be used.
    #[error("execution provider {provider}: {reason}")]
    Provider { provider: String, reason: String },
    #[error("inference failed: {0}")]
    Run(String),
    #[error("input holds {got} values, not a whole number of {per_image}-value images")]
    BatchShape { got: usize, per_image: usize },
}

/// Why one input could not be classified.
#[derive(Debug, Error)]
pub enum ItemError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    /// The path itself: missing, a broken link, an unreadable folder.
    #[error("{0}")]
    Path(String),
    /// The batch holding this input failed in the model.
    #[error(transparent)]
    Batch(#[from] InferError),
    /// A panic caught at the item's boundary (see [`crate::guard`]).
    #[error(transparent)]
    Crashed(#[from] Panicked),
}

/// The first line of a message, trimmed: messages from ONNX Runtime and libtorch can carry
/// long details or C++ backtraces after it. The one helper every error path uses.
pub fn first_line(s: impl std::fmt::Display) -> String {
    s.to_string().lines().next().unwrap_or("").trim().to_string()
}
