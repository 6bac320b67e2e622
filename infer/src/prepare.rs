//! From an image file to model input in one step: decode ([`crate::decode`]), then the
//! deployment transform ([`crate::preprocess`]). `infer`, the server and training's
//! validation all load files through this function, so they see identical numbers.

use std::path::Path;

use crate::decode::{decode_file, DecodeLimits};
use crate::error::ItemError;
use crate::guard;
use crate::preprocess::PreprocessConfig;

/// Decodes `path` and applies the eval transform; any failure, including a panic in a
/// decoder, is this file's error.
pub fn prepare_file(path: &Path, preprocess: &PreprocessConfig, limits: DecodeLimits) -> Result<Vec<f32>, ItemError> {
    guard::isolate("preparing an image", || Ok(preprocess.eval(&decode_file(path, limits)?)?))
        .unwrap_or_else(|p| Err(ItemError::Crashed(p)))
}
