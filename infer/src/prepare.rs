//! From an image (a file, encoded bytes, or decoded pixels) to model input in one step: decode
//! ([`crate::decode`]), then the deployment transform ([`crate::preprocess`]), under the panic
//! guard. `infer`, the server and training's validation all prepare images through these
//! functions, so they see identical numbers; [`PreparedBatch`] then carries a batch of them to
//! the model and each item's result back.

use std::path::Path;

use image::RgbImage;

use crate::decode::{decode_bytes, decode_file, DecodeLimits};
use crate::error::{InferError, ItemError};
use crate::guard;
use crate::preprocess::PreprocessConfig;

/// One image's model input (`3 × size × size` values), or why it has none.
pub type Prepared = Result<Vec<f32>, ItemError>;

/// Runs one preparation under the panic guard: a panic (in a decoder, say) is this item's
/// error, never the caller's.
fn guarded(context: &'static str, f: impl FnOnce() -> Prepared) -> Prepared {
    guard::isolate(context, f).unwrap_or_else(|p| Err(ItemError::Crashed(p)))
}

/// Decodes `path` and applies the eval transform; any failure is this file's error.
pub fn prepare_file(path: &Path, preprocess: &PreprocessConfig, limits: DecodeLimits) -> Prepared {
    guarded("preparing an image", || Ok(preprocess.eval(&decode_file(path, limits)?)?))
}

/// Decodes an encoded image (a file's bytes) and applies the eval transform.
pub fn prepare_bytes(bytes: &[u8], preprocess: &PreprocessConfig, limits: DecodeLimits) -> Prepared {
    guarded("preparing an image", || Ok(preprocess.eval(&decode_bytes(bytes, limits)?)?))
}

/// Applies the eval transform to a decoded image.
pub fn prepare_image(img: &RgbImage, preprocess: &PreprocessConfig) -> Prepared {
    guarded("preprocessing", || Ok(preprocess.eval(img)?))
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
        let mut input = Vec::with_capacity(self.0.iter().flatten().map(Vec::len).sum());
        for p in self.0.iter().flatten() {
            input.extend_from_slice(p);
        }
        (input, self.ready())
    }

    /// Pairs `outputs` (one per ready item, in order) with the items. When the model failed,
    /// every ready item fails with that error; failed items keep theirs.
    pub fn results<T>(self, outputs: Result<Vec<T>, InferError>) -> Vec<Result<T, ItemError>> {
        let (mut outputs, failed) = match outputs {
            Ok(o) => (o.into_iter(), None),
            Err(e) => (Vec::new().into_iter(), Some(e)),
        };
        self.0
            .into_iter()
            .map(|p| {
                let _ready = p?;
                match &failed {
                    Some(e) => Err(ItemError::Batch(e.clone())),
                    None => outputs.next().ok_or_else(|| ItemError::Batch(InferError::Run("missing output".into()))),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::DecodeError;

    fn batch() -> PreparedBatch {
        PreparedBatch(vec![Ok(vec![1.0, 2.0]), Err(ItemError::Decode(DecodeError::Empty)), Ok(vec![3.0, 4.0])])
    }

    #[test]
    fn ready_inputs_go_in_together_and_results_come_back_in_place() {
        let b = batch();
        assert_eq!(b.input(), (vec![1.0, 2.0, 3.0, 4.0], 2));
        let r = b.results(Ok(vec!['a', 'b']));
        assert_eq!(r[0].as_ref().unwrap(), &'a');
        assert!(matches!(r[1], Err(ItemError::Decode(DecodeError::Empty))));
        assert_eq!(r[2].as_ref().unwrap(), &'b');
    }

    #[test]
    fn a_failed_or_short_run_fails_the_ready_items_only() {
        let r = batch().results::<char>(Err(InferError::Run("boom".into())));
        assert_eq!(r[0].as_ref().unwrap_err().to_string(), "inference failed: boom");
        assert!(matches!(r[1], Err(ItemError::Decode(_))));
        assert_eq!(r[2].as_ref().unwrap_err().to_string(), "inference failed: boom");
        let r = batch().results(Ok(vec!['a']));
        assert_eq!(r[2].as_ref().unwrap_err().to_string(), "inference failed: missing output");
    }

    #[test]
    fn a_panicking_preparation_is_the_items_error() {
        let p = guarded("preparing an image", || panic!("decoder bug"));
        assert_eq!(p.unwrap_err().to_string(), "internal error in preparing an image: decoder bug");
    }
}
