//! From an image (a file, encoded bytes, or decoded pixels) to model input in one step: decode
//! ([`crate::decode`]), then the deployment transform ([`crate::preprocess`]), under the panic
//! guard. `infer`, the server and training's validation all prepare images through these
//! functions, so they see identical numbers; [`PreparedBatch`] then carries a batch of them to
//! the model and each item's result back.

use std::path::Path;

use image::RgbImage;

use crate::decode::{decode_bytes_with_status, decode_file_with_status, DecodeLimits, Decoded};
use crate::error::{InferError, ItemError};
use crate::guard;
use crate::prediction::Prediction;
use crate::preprocess::PreprocessConfig;

/// One image's model input, and what its decoding noticed.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedImage {
    /// `3 × size × size` values.
    pub input: Vec<f32>,
    /// The file ended before its image data did (see [`Decoded::incomplete`]).
    pub incomplete: bool,
}

/// One image's model input, or why it has none.
pub type Prepared = Result<PreparedImage, ItemError>;

/// Runs one preparation under the panic guard: a panic (in a decoder, say) is this item's
/// error, never the caller's.
fn guarded(context: &'static str, f: impl FnOnce() -> Prepared) -> Prepared {
    guard::isolate(context, f).unwrap_or_else(|p| Err(ItemError::Crashed(p)))
}

/// The model's input from a decoded file: transparency handled as the contract says, then
/// the eval transform.
fn transform(decoded: Decoded, preprocess: &PreprocessConfig) -> Prepared {
    let incomplete = decoded.incomplete;
    Ok(PreparedImage { input: preprocess.eval(&decoded.flatten(preprocess.background))?, incomplete })
}

/// Decodes `path` and applies the eval transform; any failure is this file's error.
pub fn prepare_file(path: &Path, preprocess: &PreprocessConfig, limits: DecodeLimits) -> Prepared {
    guarded("preparing an image", || transform(decode_file_with_status(path, limits)?, preprocess))
}

/// Decodes an encoded image (a file's bytes) and applies the eval transform.
pub fn prepare_bytes(bytes: &[u8], preprocess: &PreprocessConfig, limits: DecodeLimits) -> Prepared {
    guarded("preparing an image", || transform(decode_bytes_with_status(bytes, limits)?, preprocess))
}

/// Applies the eval transform to a decoded image.
pub fn prepare_image(img: &RgbImage, preprocess: &PreprocessConfig) -> Prepared {
    guarded("preprocessing", || Ok(PreparedImage { input: preprocess.eval(img)?, incomplete: false }))
}

/// A batch of prepared items on its way to the model: the ready inputs go in together, and
/// each item gets its own result back — the next prediction for a ready item, its own error
/// for the others.
#[derive(Debug)]
pub struct PreparedBatch(pub Vec<Prepared>);

impl PreparedBatch {
    /// Items with model input.
    pub fn ready(&self) -> usize {
        self.0.iter().filter(|p| p.is_ok()).count()
    }

    /// The ready items' inputs, concatenated in order (`n × 3 × size × size`), and `n`.
    pub fn input(&self) -> (Vec<f32>, usize) {
        let mut input = Vec::with_capacity(self.0.iter().flatten().map(|p| p.input.len()).sum());
        for p in self.0.iter().flatten() {
            input.extend_from_slice(&p.input);
        }
        (input, self.ready())
    }

    /// Pairs `predictions` (one per ready item, in order) with the items, each marked
    /// incomplete when its file was. When the model failed, every ready item fails with that
    /// error; failed items keep theirs.
    pub fn results(self, predictions: Result<Vec<Prediction>, InferError>) -> Vec<Result<Prediction, ItemError>> {
        let (mut predictions, failed) = match predictions {
            Ok(p) => (p.into_iter(), None),
            Err(e) => (Vec::new().into_iter(), Some(e)),
        };
        self.0
            .into_iter()
            .map(|p| {
                let prepared = p?;
                if let Some(e) = &failed {
                    return Err(ItemError::Batch(e.clone()));
                }
                let mut prediction =
                    predictions.next().ok_or_else(|| ItemError::Batch(InferError::Run("missing output".into())))?;
                prediction.incomplete = prepared.incomplete;
                Ok(prediction)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::DecodeError;

    fn ready(v: &[f32], incomplete: bool) -> Prepared {
        Ok(PreparedImage { input: v.to_vec(), incomplete })
    }

    fn batch() -> PreparedBatch {
        PreparedBatch(vec![
            ready(&[1.0, 2.0], false),
            Err(ItemError::Decode(DecodeError::Empty)),
            ready(&[3.0, 4.0], true),
        ])
    }

    fn prediction(label: &str) -> Prediction {
        Prediction { class_index: 0, label: label.into(), confidence: 1.0, top_k: Vec::new(), incomplete: false }
    }

    #[test]
    fn ready_inputs_go_in_together_and_results_come_back_in_place() {
        let b = batch();
        assert_eq!(b.input(), (vec![1.0, 2.0, 3.0, 4.0], 2));
        let r = b.results(Ok(vec![prediction("a"), prediction("b")]));
        assert_eq!(r[0].as_ref().unwrap().label, "a");
        assert!(matches!(r[1], Err(ItemError::Decode(DecodeError::Empty))));
        let last = r[2].as_ref().unwrap();
        assert_eq!((last.label.as_str(), last.incomplete), ("b", true), "the file's flag travels with its result");
        assert!(!r[0].as_ref().unwrap().incomplete);
    }

    #[test]
    fn a_failed_or_short_run_fails_the_ready_items_only() {
        let r = batch().results(Err(InferError::Run("boom".into())));
        assert_eq!(r[0].as_ref().unwrap_err().to_string(), "inference failed: boom");
        assert!(matches!(r[1], Err(ItemError::Decode(_))));
        assert_eq!(r[2].as_ref().unwrap_err().to_string(), "inference failed: boom");
        let r = batch().results(Ok(vec![prediction("a")]));
        assert_eq!(r[2].as_ref().unwrap_err().to_string(), "inference failed: missing output");
    }

    #[test]
    fn a_panicking_preparation_is_the_items_error() {
        let p = guarded("preparing an image", || panic!("decoder bug"));
        assert_eq!(p.unwrap_err().to_string(), "internal error in preparing an image: decoder bug");
    }
}
