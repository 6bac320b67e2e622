//! From an image file to model input in one step: decode ([`crate::decode`]), then the
//! deployment transform ([`crate::preprocess`]). `infer`, the server and training's
//! validation all load files through this function, so they see identical numbers.

use std::path::Path;

use crate::decode::{decode_file, DecodeLimits};
use crate::error::InferError;
use crate::guard;
use crate::preprocess::PreprocessConfig;

/// Decodes `path` and applies the eval transform; any failure, including a panic in a
/// decoder, is this file's error naming it.
pub fn prepare_file(path: &Path, preprocess: &PreprocessConfig, limits: DecodeLimits) -> Result<Vec<f32>, InferError> {
    let named = |reason: String| InferError::Input { path: path.to_path_buf(), reason };
    guard::isolate("preparing an image", || {
        let img =
            decode_file(path, limits).map_err(|source| InferError::Decode { path: path.to_path_buf(), source })?;
        preprocess.eval(&img).map_err(|source| InferError::Preprocess { path: path.to_path_buf(), source })
    })
    .unwrap_or_else(|p| Err(named(p.to_string())))
}
