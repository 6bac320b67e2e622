//! The classifier: an ONNX Runtime session of a `model.onnx`, its metadata, and the pipeline
//! that turns files into predictions.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use image::RgbImage;
use ort::ep;
use ort::session::builder::SessionBuilder;
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};
use rayon::prelude::*;
use serde::{Serialize, Serializer};

use crate::batching;
use crate::decode::{decode_file, DecodeLimits};
use crate::error::{one_line, InferError};
use crate::files::Input;
use crate::metadata::ModelMetadata;
use crate::runtime;

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecutionProvider {
    /// CUDA when it can be used, else the CPU (the reason is kept in [`Classifier::provider_note`]).
    #[default]
    Auto,
    /// CUDA on this device, or an error.
    Cuda(i32),
    Cpu,
}

impl FromStr for ExecutionProvider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(ExecutionProvider::Auto),
            "cpu" => Ok(ExecutionProvider::Cpu),
            "cuda" => Ok(ExecutionProvider::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .filter(|n| *n >= 0)
                .map(ExecutionProvider::Cuda)
                .ok_or_else(|| format!("'{s}' is not an execution provider: use auto, cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecutionProvider::Auto => write!(f, "auto"),
            ExecutionProvider::Cpu => write!(f, "cpu"),
            ExecutionProvider::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A class and its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scored {
    pub class_index: usize,
    pub label: String,
    pub probability: f32,
}

/// The classification of one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub class_index: usize,
    pub label: String,
    /// Probability of the predicted class.
    pub confidence: f32,
    /// The most probable classes, best first.
    pub top_k: Vec<Scored>,
}

/// The outcome for one input file.
#[derive(Debug)]
pub struct FileResult {
    pub path: PathBuf,
    pub result: Result<Prediction, InferError>,
}

impl Serialize for FileResult {
    /// `{"path", "class_index", "label", "confidence", "top_k"}` or `{"path", "error"}`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("path", &self.path.to_string_lossy())?;
        match &self.result {
            Ok(p) => {
                m.serialize_entry("class_index", &p.class_index)?;
                m.serialize_entry("label", &p.label)?;
                m.serialize_entry("confidence", &p.confidence)?;
                m.serialize_entry("top_k", &p.top_k)?;
            }
            Err(e) => m.serialize_entry("error", &error_reason(&self.path, e))?,
        }
        m.end()
    }
}

/// The message of a per-file error without the leading path (the record carries it).
pub fn error_reason(path: &Path, e: &InferError) -> String {
    let msg = e.to_string();
    let prefix = format!("{}: ", path.display());
    msg.strip_prefix(&prefix).map(str::to_string).unwrap_or(msg)
}

/// Configures and builds a [`Classifier`].
#[derive(Debug, Clone)]
pub struct ClassifierBuilder {
    model: PathBuf,
    provider: ExecutionProvider,
    threads: Option<usize>,
    batch_size: usize,
    top_k: usize,
    limits: DecodeLimits,
    decode_threads: Option<usize>,
}

impl ClassifierBuilder {
    pub fn new(model: impl Into<PathBuf>) -> Self {
        ClassifierBuilder {
            model: model.into(),
            provider: ExecutionProvider::Auto,
            threads: None,
            batch_size: 32,
            top_k: 5,
            limits: DecodeLimits::default(),
            decode_threads: None,
        }
    }

    pub fn execution_provider(mut self, provider: ExecutionProvider) -> Self {
        self.provider = provider;
        self
    }

    /// ONNX Runtime intra-op threads (default: ONNX Runtime's choice, one per core).
    pub fn intra_threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads.max(1));
        self
    }

    /// Images per inference call when classifying many.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Classes listed in each prediction's `top_k` (at most the class count).
    pub fn top_k(mut self, k: usize) -> Self {
        self.top_k = k.max(1);
        self
    }

    pub fn decode_limits(mut self, limits: DecodeLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Threads decoding and preprocessing files (default: one per core).
    pub fn decode_threads(mut self, threads: usize) -> Self {
        self.decode_threads = Some(threads.max(1));
        self
    }

    /// Loads the model, checks its shapes against its metadata, and starts a session.
    pub fn build(self) -> Result<Classifier, InferError> {
        let path = self.model.clone();
        if !path.is_file() {
            return Err(InferError::ModelNotFound(path));
        }
        let (session, provider, provider_note) = start_session(&path, self.provider, self.threads)?;
        let incompatible = |reason: String| InferError::Incompatible { path: path.clone(), reason };

        let [input] = session.inputs() else {
            return Err(incompatible(format!("{} inputs; one image tensor is expected", session.inputs().len())));
        };
        let input_name = input.name().to_string();
        let in_dims = tensor_dims(input.dtype())
            .ok_or_else(|| incompatible(format!("input '{}' is not a float32 tensor", input.name())))?;
        if in_dims.len() != 4 {
            return Err(incompatible(format!(
                "input '{}' has rank {} ({:?}); [batch, 3, height, width] is expected",
                input.name(),
                in_dims.len(),
                in_dims
            )));
        }
        if in_dims[1] != 3 && in_dims[1] != -1 {
            return Err(incompatible(format!(
                "input '{}' has {} channels; 3 (RGB) are expected",
                input.name(),
                in_dims[1]
            )));
        }
        // Prefer logits (softmax applied here); accept a model that only outputs probabilities.
        let outputs: Vec<(&str, Vec<i64>)> =
            session.outputs().iter().filter_map(|o| tensor_dims(o.dtype()).map(|d| (o.name(), d))).collect();
        let (output_name, out_dims, probabilities) = outputs
            .iter()
            .find(|(n, _)| *n == "logits")
            .map(|(n, d)| (n.to_string(), d.clone(), false))
            .or_else(|| {
                outputs.iter().find(|(n, _)| *n == "probabilities").map(|(n, d)| (n.to_string(), d.clone(), true))
            })
            .or_else(|| outputs.first().map(|(n, d)| (n.to_string(), d.clone(), false)))
            .ok_or_else(|| incompatible("no float32 tensor output".into()))?;
        if out_dims.len() != 2 {
            return Err(incompatible(format!(
                "output '{output_name}' has rank {} ({out_dims:?}); [batch, classes] is expected",
                out_dims.len()
            )));
        }
        let num_outputs = usize::try_from(out_dims[1]).ok();

        let md = session.metadata().map_err(|e| InferError::ModelLoad { path: path.clone(), reason: one_line(e) })?;
        let get = |k: &str| md.custom(k);
        let mut meta = ModelMetadata::from_props(&get, num_outputs)
            .map_err(|source| InferError::Metadata { path: path.clone(), source })?;
        drop(md);
        if let Some(n) = num_outputs {
            if meta.classes.len() != n {
                return Err(incompatible(format!(
                    "the model outputs {n} classes but its metadata names {}",
                    meta.classes.len()
                )));
            }
        } else if meta.classes_from_defaults {
            return Err(incompatible("class count unknown: no 'classes' metadata and a dynamic output size".into()));
        }
        for (axis, &d) in in_dims[2..].iter().enumerate() {
            let crop = i64::from(meta.preprocess.crop_size);
            if d > 0 && d != crop {
                if meta.toolkit.is_none()
                    && meta.preprocess == crate::PreprocessConfig::default()
                    && in_dims[2] == in_dims[3]
                {
                    // No size in the metadata: take the model's, keeping the 256/224 ratio.
                    meta.preprocess.crop_size = d as u32;
                    meta.preprocess.resize_size = meta.preprocess.resize_size.max((d as u32 * 256).div_ceil(224));
                } else {
                    let side = if axis == 0 { "height" } else { "width" };
                    return Err(incompatible(format!("input {side} is {d} but the metadata's input size is {crop}")));
                }
            }
        }
        let fixed_batch = usize::try_from(in_dims[0]).ok().filter(|&b| b > 0);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.decode_threads.unwrap_or(0))
            .thread_name(|i| format!("decode-{i}"))
            .build()
            .map_err(|e| InferError::Run(format!("cannot start decoding threads: {e}")))?;
        Ok(Classifier {
            session: Mutex::new(session),
            path,
            input_name,
            output_name,
            probabilities,
            fixed_batch,
            meta,
            provider,
            provider_note,
            batch_size: self.batch_size,
            top_k: self.top_k,
            limits: self.limits,
            pool: Arc::new(pool),
        })
    }
}

fn tensor_dims(t: &ValueType) -> Option<Vec<i64>> {
    match t {
        ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } => Some(shape.to_vec()),
        _ => None,
    }
}

fn base_builder(threads: Option<usize>) -> Result<SessionBuilder, String> {
    let env = runtime::environment().map_err(|e| e.to_string())?;
    let b = Session::builder(env).map_err(one_line)?;
    match threads {
        Some(t) => b.with_intra_threads(t).map_err(one_line),
        None => Ok(b),
    }
}

/// Starts a session on the requested provider; returns it, the provider that runs it, and
/// why CUDA was not used when `Auto` fell back to the CPU.
fn start_session(
    path: &Path,
    provider: ExecutionProvider,
    threads: Option<usize>,
) -> Result<(Session, String, Option<String>), InferError> {
    // Checked first so that a missing runtime is reported as such, not as a provider problem.
    runtime::environment()?;
    let load_err = |reason: String| InferError::ModelLoad { path: path.to_path_buf(), reason };
    let cpu = || -> Result<Session, InferError> {
        base_builder(threads).map_err(load_err)?.commit_from_file(path).map_err(|e| load_err(one_line(e)))
    };
    let cuda = |id: i32| -> Result<Session, String> {
        let mut b = base_builder(threads)?
            .with_execution_providers([ep::CUDA::default().with_device_id(id).build().error_on_failure()])
            .map_err(one_line)?;
        b.commit_from_file(path).map_err(one_line)
    };
    match provider {
        ExecutionProvider::Cpu => Ok((cpu()?, "CPUExecutionProvider".into(), None)),
        ExecutionProvider::Cuda(id) => match cuda(id) {
            Ok(s) => Ok((s, format!("CUDAExecutionProvider (device {id})"), None)),
            Err(reason) => {
                // A model that loads nowhere is a model problem, not a provider one.
                cpu()?;
                Err(InferError::Provider { provider: format!("cuda:{id}"), reason })
            }
        },
        ExecutionProvider::Auto => match cuda(0) {
            Ok(s) => Ok((s, "CUDAExecutionProvider (device 0)".into(), None)),
            Err(reason) => Ok((cpu()?, "CPUExecutionProvider".into(), Some(format!("CUDA not used: {reason}")))),
        },
    }
}

/// An image classifier backed by an ONNX Runtime session. `Sync`: share it between threads
/// (inference calls take turns on the session; decoding runs in parallel).
pub struct Classifier {
    session: Mutex<Session>,
    path: PathBuf,
    input_name: String,
    output_name: String,
    probabilities: bool,
    fixed_batch: Option<usize>,
    meta: ModelMetadata,
    provider: String,
    provider_note: Option<String>,
    batch_size: usize,
    top_k: usize,
    limits: DecodeLimits,
    pool: Arc<rayon::ThreadPool>,
}

impl Classifier {
    /// A classifier with default settings: `auto` provider, batches of 32, top 5.
    pub fn new(model: impl Into<PathBuf>) -> Result<Classifier, InferError> {
        ClassifierBuilder::new(model).build()
    }

    pub fn builder(model: impl Into<PathBuf>) -> ClassifierBuilder {
        ClassifierBuilder::new(model)
    }

    pub fn metadata(&self) -> &ModelMetadata {
        &self.meta
    }

    pub fn model_path(&self) -> &Path {
        &self.path
    }

    /// The execution provider running the model, e.g. `CPUExecutionProvider`.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// Why `auto` did not use CUDA, if it did not.
    pub fn provider_note(&self) -> Option<&str> {
        self.provider_note.as_deref()
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Raw model outputs (logits, or probabilities for a model that only has those) for
    /// preprocessed images: `input` is `n × 3 × size × size` values; returns `n × classes`.
    pub fn run(&self, input: &[f32]) -> Result<Vec<f32>, InferError> {
        let side = self.meta.preprocess.crop_size as usize;
        let per_image = 3 * side * side;
        if input.is_empty() || input.len() % per_image != 0 {
            return Err(InferError::BatchShape { got: input.len(), per_image });
        }
        let n = input.len() / per_image;
        let chunk = self.fixed_batch.unwrap_or(n);
        let mut out = Vec::with_capacity(n * self.meta.classes.len());
        for part in input.chunks(chunk * per_image) {
            let count = part.len() / per_image;
            // A model with a fixed batch size gets whole batches; padding rows are dropped.
            let padded;
            let data = if count < chunk {
                padded = [part, &vec![0.0; (chunk - count) * per_image]].concat();
                &padded[..]
            } else {
                part
            };
            let shape = [chunk as i64, 3, side as i64, side as i64];
            let tensor = TensorRef::from_array_view((shape, data)).map_err(|e| InferError::Run(one_line(e)))?;
            let mut session =
                self.session.lock().map_err(|_| InferError::Run("session poisoned by an earlier panic".into()))?;
            let outputs = session
                .run(ort::inputs![self.input_name.as_str() => tensor])
                .map_err(|e| InferError::Run(one_line(e)))?;
            let value = outputs
                .get(&self.output_name)
                .ok_or_else(|| InferError::Run(format!("no output '{}'", self.output_name)))?;
            let (dims, values) = value.try_extract_tensor::<f32>().map_err(|e| InferError::Run(one_line(e)))?;
            let classes = self.meta.classes.len();
            if dims.len() != 2 || dims[1] as usize != classes || values.len() < count * classes {
                return Err(InferError::Run(format!(
                    "output shape {:?} does not fit {count} images x {classes} classes",
                    &dims[..]
                )));
            }
            out.extend_from_slice(&values[..count * classes]);
        }
        Ok(out)
    }

    /// Predictions from model outputs (`n × classes`).
    pub fn predictions(&self, outputs: &[f32]) -> Vec<Prediction> {
        let classes = self.meta.classes.len().max(1);
        outputs
            .chunks(classes)
            .map(|row| {
                let probs = if self.probabilities { row.to_vec() } else { softmax(row) };
                let mut order: Vec<usize> = (0..probs.len()).collect();
                order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
                let top_k: Vec<Scored> = order
                    .iter()
                    .take(self.top_k)
                    .map(|&i| Scored { class_index: i, label: self.meta.classes[i].clone(), probability: probs[i] })
                    .collect();
                Prediction {
                    class_index: top_k[0].class_index,
                    label: top_k[0].label.clone(),
                    confidence: top_k[0].probability,
                    top_k,
                }
            })
            .collect()
    }

    /// Preprocesses one decoded image into model input.
    pub fn preprocess(&self, img: &RgbImage) -> Result<Vec<f32>, crate::preprocess::PreprocessError> {
        self.meta.preprocess.eval(img)
    }

    /// Classifies one decoded image.
    pub fn classify(&self, img: &RgbImage) -> Result<Prediction, InferError> {
        let mut out = self.classify_images(std::slice::from_ref(img))?;
        out.pop().ok_or_else(|| InferError::Run("no output".into()))?
    }

    /// Classifies decoded images as one batch; each gets its own result.
    pub fn classify_images(&self, imgs: &[RgbImage]) -> Result<Vec<Result<Prediction, InferError>>, InferError> {
        let prepared: Vec<_> = self.pool.install(|| imgs.par_iter().map(|img| self.preprocess(img)).collect());
        let mut input = Vec::new();
        for p in prepared.iter().flatten() {
            input.extend_from_slice(p);
        }
        let mut predictions =
            if input.is_empty() { Vec::new() } else { self.predictions(&self.run(&input)?) }.into_iter();
        Ok(prepared
            .into_iter()
            .map(|p| match p {
                Ok(_) => predictions.next().ok_or_else(|| InferError::Run("missing output".into())),
                Err(source) => Err(InferError::Preprocess { path: PathBuf::from("<image>"), source }),
            })
            .collect())
    }

    /// Classifies files, calling `on_result` for each, in order, as soon as its batch is done.
    /// Decoding and preprocessing of the next batches run in parallel with inference.
    pub fn classify_files_with(&self, paths: Vec<PathBuf>, mut on_result: impl FnMut(FileResult)) {
        let preprocess = self.meta.preprocess.clone();
        let limits = self.limits;
        let load = move |path: &PathBuf, _| -> Result<Vec<f32>, InferError> {
            let img = decode_file(path, limits).map_err(|source| InferError::Decode { path: path.clone(), source })?;
            preprocess.eval(&img).map_err(|source| InferError::Preprocess { path: path.clone(), source })
        };
        let paths = Arc::new(paths);
        let order = (0..paths.len()).collect();
        let stream = batching::stream(Arc::clone(&self.pool), Arc::clone(&paths), order, self.batch_size, 2, load);
        let mut next = 0;
        for batch in stream {
            let mut input = Vec::new();
            for tensor in batch.iter().flatten() {
                input.extend_from_slice(tensor);
            }
            let outputs = if input.is_empty() { Ok(Vec::new()) } else { self.run(&input) };
            let mut predictions = outputs.as_ref().map(|o| self.predictions(o).into_iter());
            for item in batch {
                let path = paths[next].clone();
                next += 1;
                let result = match (item, &mut predictions) {
                    (Err(e), _) => Err(e),
                    (Ok(_), Ok(p)) => p.next().ok_or_else(|| InferError::Run("missing output".into())),
                    (Ok(_), Err(e)) => Err(InferError::Input { path: path.clone(), reason: e.to_string() }),
                };
                on_result(FileResult { path, result });
            }
        }
    }

    /// Classifies files; one result per path, in order.
    pub fn classify_files(&self, paths: Vec<PathBuf>) -> Vec<FileResult> {
        let mut out = Vec::with_capacity(paths.len());
        self.classify_files_with(paths, |r| out.push(r));
        out
    }

    /// Classifies files and folders: folders are searched recursively in sorted order for
    /// images (by extension or content, see [`crate::files`]). Unusable paths get error
    /// results where they stand; everything else is classified.
    pub fn classify_paths(&self, paths: &[PathBuf]) -> Vec<FileResult> {
        let items = crate::files::collect(paths).items;
        let files = crate::files::file_paths(&items);
        let mut results = self.classify_files(files).into_iter();
        items
            .into_iter()
            .filter_map(|i| match i {
                Input::File(_) => results.next(),
                Input::Error(e) => Some(e),
            })
            .collect()
    }
}

fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_providers() {
        assert_eq!("auto".parse(), Ok(ExecutionProvider::Auto));
        assert_eq!("cuda:1".parse(), Ok(ExecutionProvider::Cuda(1)));
        assert!("gpu".parse::<ExecutionProvider>().is_err());
        assert!("cuda:-1".parse::<ExecutionProvider>().is_err());
    }

    #[test]
    fn softmax_is_stable() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && p[2] == 0.0);
    }

    #[test]
    fn error_records_drop_the_path() {
        let path = PathBuf::from("/x/y.jpg");
        let e = InferError::Decode { path: path.clone(), source: crate::DecodeError::Empty };
        assert_eq!(error_reason(&path, &e), "empty file");
        let json = serde_json::to_string(&FileResult { path, result: Err(e) }).unwrap();
        assert_eq!(json, r#"{"path":"/x/y.jpg","error":"empty file"}"#);
    }
}
