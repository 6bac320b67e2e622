//! Typed errors of the inference library. Per-file errors name the file; every message is a
//! single line.

use std::path::PathBuf;

use thiserror::Error;

use crate::decode::DecodeError;
use crate::guard::Panicked;
use crate::metadata::MetadataError;
use crate::preprocess::PreprocessError;

#[derive(Debug, Error)]
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
    #[error("{path}: {source}")]
    Decode { path: PathBuf, source: DecodeError },
    #[error("{path}: {source}")]
    Preprocess { path: PathBuf, source: PreprocessError },
    #[error("{path}: {reason}")]
    Input { path: PathBuf, reason: String },
    #[error("inference failed: {0}")]
    Run(String),
    #[error("input holds {got} values, not a whole number of {per_image}-value images")]
    BatchShape { got: usize, per_image: usize },
    /// A panic caught at an item boundary (see [`crate::guard`]).
    #[error(transparent)]
    Panicked(#[from] Panicked),
}

/// First line of a message from ONNX Runtime, which can be long.
pub(crate) fn one_line(s: impl std::fmt::Display) -> String {
    s.to_string().lines().next().unwrap_or("").trim().to_string()
}
