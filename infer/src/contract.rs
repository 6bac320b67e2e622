//! What a loaded model promises — one float32 image input `[batch, 3, size, size]`, one
//! `[batch, classes]` output, class names and preprocessing in its metadata — checked against
//! the session before the first image is classified, so a model from elsewhere fails at load
//! time with one line instead of during a run.

use std::path::Path;

use ort::session::Session;
use ort::value::{TensorElementType, ValueType};

use crate::error::{first_line, InferError};
use crate::metadata::ModelMetadata;

/// Largest fixed batch size accepted from a model file: a larger one would make every call
/// allocate a batch that big.
pub const MAX_FIXED_BATCH: usize = 4096;
/// Largest class count accepted (the output row length).
pub const MAX_CLASSES: usize = 1_000_000;

/// The checked facts of a model.
#[derive(Debug, Clone)]
pub(crate) struct Contract {
    pub input_name: String,
    pub output_name: String,
    /// The output holds probabilities (a model without a `logits` output).
    pub probabilities: bool,
    /// The model's batch size when it is not symbolic.
    pub fixed_batch: Option<usize>,
    /// The class count is not in the model's declared output shape: it is checked by running
    /// the model once ([`crate::Classifier`] does, before it is returned).
    pub classes_unchecked: bool,
    pub meta: ModelMetadata,
}

fn tensor_dims(t: &ValueType) -> Option<Vec<i64>> {
    match t {
        ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } => Some(shape.to_vec()),
        _ => None,
    }
}

/// Reads and checks the contract of `session` (loaded from `path`); `labels` name the classes
/// of a model whose metadata names none.
pub(crate) fn check(session: &Session, path: &Path, labels: Option<&[String]>) -> Result<Contract, InferError> {
    let incompatible = |reason: String| InferError::Incompatible { path: path.to_path_buf(), reason };
    let (input_name, in_dims) = image_input(session).map_err(incompatible)?;
    let (output_name, out_dims, probabilities) = class_output(session).map_err(incompatible)?;
    let num_outputs = usize::try_from(out_dims[1]).ok();
    if num_outputs.is_some_and(|n| n == 0 || n > MAX_CLASSES) {
        return Err(incompatible(format!("output '{output_name}' has {} classes", out_dims[1])));
    }
    let md =
        session.metadata().map_err(|e| InferError::ModelLoad { path: path.to_path_buf(), reason: first_line(e) })?;
    let get = |k: &str| md.custom(k);
    let mut meta = ModelMetadata::from_props(&get, num_outputs)
        .map_err(|source| InferError::Metadata { path: path.to_path_buf(), source })?;
    drop(md);
    if let Some(labels) = labels {
        if !meta.classes_from_defaults {
            let n = meta.classes.len();
            return Err(incompatible(format!(
                "the model names its {n} classes itself; --labels is for models that name none"
            )));
        }
        meta.classes = labels.to_vec();
        meta.classes_from_defaults = false;
    }
    let named_by = if labels.is_some() { "--labels" } else { "its metadata" };
    check_classes(&meta, num_outputs, named_by).map_err(incompatible)?;
    fit_input_size(&mut meta, in_dims[2], in_dims[3]).map_err(incompatible)?;
    let fixed_batch = usize::try_from(in_dims[0]).ok().filter(|&b| b > 0);
    if let Some(b) = fixed_batch.filter(|&b| b > MAX_FIXED_BATCH) {
        return Err(incompatible(format!("fixed batch size {b} is above the supported {MAX_FIXED_BATCH}")));
    }
    Ok(Contract { input_name, output_name, probabilities, fixed_batch, classes_unchecked: num_outputs.is_none(), meta })
}

/// The one float32 `[batch, 3, height, width]` input: its name and dimensions.
fn image_input(session: &Session) -> Result<(String, Vec<i64>), String> {
    let [input] = session.inputs() else {
        return Err(format!("{} inputs; one image tensor is expected", session.inputs().len()));
    };
    let name = input.name();
    let dims = tensor_dims(input.dtype()).ok_or_else(|| format!("input '{name}' is not a float32 tensor"))?;
    if dims.len() != 4 {
        return Err(format!(
            "input '{name}' has rank {} ({dims:?}); [batch, 3, height, width] is expected",
            dims.len()
        ));
    }
    if dims[1] != 3 && dims[1] != -1 {
        return Err(format!("input '{name}' has {} channels; 3 (RGB) are expected", dims[1]));
    }
    Ok((name.to_string(), dims))
}

/// The `[batch, classes]` output: `logits` preferred (softmax is applied here), else
/// `probabilities`, else the first float output. Returns its name, dimensions, and whether it
/// holds probabilities.
fn class_output(session: &Session) -> Result<(String, Vec<i64>, bool), String> {
    let outputs: Vec<(&str, Vec<i64>)> =
        session.outputs().iter().filter_map(|o| tensor_dims(o.dtype()).map(|d| (o.name(), d))).collect();
    let pick = |name: &str, probabilities| {
        outputs.iter().find(|(n, _)| *n == name).map(|(n, d)| (n.to_string(), d.clone(), probabilities))
    };
    let (name, dims, probabilities) = pick("logits", false)
        .or_else(|| pick("probabilities", true))
        .or_else(|| outputs.first().map(|(n, d)| (n.to_string(), d.clone(), false)))
        .ok_or("no float32 tensor output")?;
    if dims.len() != 2 {
        return Err(format!("output '{name}' has rank {} ({dims:?}); [batch, classes] is expected", dims.len()));
    }
    Ok((name, dims, probabilities))
}

/// The class names must match the output size when it is known; `named_by` says where the
/// names come from.
fn check_classes(meta: &ModelMetadata, num_outputs: Option<usize>, named_by: &str) -> Result<(), String> {
    match num_outputs {
        Some(n) if meta.classes.len() != n => {
            Err(format!("the model outputs {n} classes but {named_by} names {}", meta.classes.len()))
        }
        None if meta.classes_from_defaults => {
            Err("class count unknown: no 'classes' metadata and a dynamic output size".into())
        }
        None if meta.classes.is_empty() || meta.classes.len() > MAX_CLASSES => {
            Err(format!("metadata names {} classes", meta.classes.len()))
        }
        _ => Ok(()),
    }
}

/// The model's fixed input size must be the metadata's; a model without size metadata (not
/// one of ours) takes its fixed square input's size, keeping the 256/224 resize ratio.
fn fit_input_size(meta: &mut ModelMetadata, height: i64, width: i64) -> Result<(), String> {
    let unstated = meta.toolkit.is_none() && meta.preprocess == crate::PreprocessConfig::default();
    if unstated && height > 0 && height == width && height <= 4096 {
        meta.preprocess.crop_size = height as u32;
        meta.preprocess.resize_size = meta.preprocess.resize_size.max((height as u32 * 256).div_ceil(224));
    }
    let crop = i64::from(meta.preprocess.crop_size);
    for (side, d) in [("height", height), ("width", width)] {
        if d > 0 && d != crop {
            return Err(format!("input {side} is {d} but the metadata's input size is {crop}"));
        }
    }
    Ok(())
}
