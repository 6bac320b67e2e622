//! The classifier: an ONNX Runtime session of a `model.onnx` with its checked contract, and the
//! calls that turn images and files into predictions.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use image::RgbImage;
use ort::session::Session;
use ort::value::TensorRef;
use rayon::prelude::*;

use crate::contract::{self, Contract};
use crate::decode::DecodeLimits;
use crate::error::{first_line, InferError, ItemError};
use crate::guard;
use crate::metadata::ModelMetadata;
use crate::prediction::{Prediction, Ranked, Ranker};
use crate::prepare::{prepare_bytes, prepare_image, PreparedBatch};
use crate::provider::{self, ExecutionProvider};

/// Images per inference call when classifying many, unless the builder says otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 32;
/// Classes listed in each prediction's `top_k`, unless the builder says otherwise (the CLI
/// prints one per line by default: a table of five would be noise).
pub const DEFAULT_TOP_K: usize = 5;

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
    labels: Option<Vec<String>>,
}

impl ClassifierBuilder {
    pub fn new(model: impl Into<PathBuf>) -> Self {
        ClassifierBuilder {
            model: model.into(),
            provider: ExecutionProvider::Auto,
            threads: None,
            batch_size: DEFAULT_BATCH_SIZE,
            top_k: DEFAULT_TOP_K,
            limits: DecodeLimits::default(),
            decode_threads: None,
            labels: None,
        }
    }

    /// The class names of a model whose metadata names none (a model not made by `train`),
    /// in output order; their count must be the model's output size.
    pub fn labels(mut self, labels: Vec<String>) -> Self {
        self.labels = Some(labels);
        self
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
        let started = provider::start_session(&path, self.provider, self.threads)?;
        let contract = contract::check(&started.session, &path, self.labels.as_deref())?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.decode_threads.unwrap_or(0))
            .thread_name(|i| format!("decode-{i}"))
            .build()
            .map_err(|e| InferError::Run(format!("cannot start decoding threads: {e}")))?;
        let ranker =
            Ranker { classes: contract.meta.classes.clone(), top_k: self.top_k, probabilities: contract.probabilities };
        let classifier = Classifier {
            session: Mutex::new(started.session),
            path,
            contract,
            ranker,
            provider: started.provider,
            provider_note: started.note,
            batch_size: self.batch_size,
            limits: self.limits,
            pool: Arc::new(pool),
        };
        if classifier.contract.classes_unchecked {
            // The output size is only known by running: one blank image must give one row per
            // class the metadata names.
            let blank = vec![0.0; classifier.contract.meta.preprocess.input_len()];
            classifier.run(&blank).map_err(|e| InferError::Incompatible {
                path: classifier.path.clone(),
                reason: format!("a trial run failed: {}", crate::error::first_line(e)),
            })?;
        }
        Ok(classifier)
    }
}

/// An image classifier backed by an ONNX Runtime session. `Sync`: share it between threads
/// (inference calls take turns on the session; decoding runs in parallel).
pub struct Classifier {
    session: Mutex<Session>,
    path: PathBuf,
    contract: Contract,
    ranker: Ranker,
    provider: String,
    provider_note: Option<String>,
    batch_size: usize,
    limits: DecodeLimits,
    pool: Arc<rayon::ThreadPool>,
}

impl Classifier {
    /// A classifier with default settings: `auto` provider, batches of [`DEFAULT_BATCH_SIZE`],
    /// [`DEFAULT_TOP_K`] classes listed.
    pub fn new(model: impl Into<PathBuf>) -> Result<Classifier, InferError> {
        ClassifierBuilder::new(model).build()
    }

    pub fn builder(model: impl Into<PathBuf>) -> ClassifierBuilder {
        ClassifierBuilder::new(model)
    }

    pub fn metadata(&self) -> &ModelMetadata {
        &self.contract.meta
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

    pub(crate) fn decode_limits(&self) -> DecodeLimits {
        self.limits
    }

    pub(crate) fn pool(&self) -> &Arc<rayon::ThreadPool> {
        &self.pool
    }

    /// Raw model outputs (logits, or probabilities for a model that only has those) for
    /// preprocessed images: `input` is `n × 3 × size × size` values; returns `n × classes`.
    pub fn run(&self, input: &[f32]) -> Result<Vec<f32>, InferError> {
        let per_image = self.contract.meta.preprocess.input_len();
        if input.is_empty() || input.len() % per_image != 0 {
            return Err(InferError::BatchShape { got: input.len(), per_image });
        }
        let n = input.len() / per_image;
        let chunk = self.contract.fixed_batch.unwrap_or(n);
        let classes = self.contract.meta.classes.len();
        let mut out = Vec::with_capacity(n * classes);
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
            let values = guard::isolate("ONNX Runtime's bindings", || self.run_batch(data, chunk))
                .map_err(|p| InferError::Run(p.to_string()))??;
            if values.len() < count * classes {
                return Err(InferError::Run(format!(
                    "output holds {} values, {count} images x {classes} classes expected",
                    values.len()
                )));
            }
            out.extend_from_slice(&values[..count * classes]);
        }
        Ok(out)
    }

    /// One session call on exactly `batch` images.
    fn run_batch(&self, data: &[f32], batch: usize) -> Result<Vec<f32>, InferError> {
        let side = i64::from(self.contract.meta.preprocess.crop_size);
        let tensor = TensorRef::from_array_view(([batch as i64, 3, side, side], data))
            .map_err(|e| InferError::Run(first_line(e)))?;
        // A panic elsewhere while holding the lock leaves ONNX Runtime's session intact.
        let mut session = self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let outputs = session
            .run(ort::inputs![self.contract.input_name.as_str() => tensor])
            .map_err(|e| InferError::Run(first_line(e)))?;
        let name = &self.contract.output_name;
        let value = outputs.get(name).ok_or_else(|| InferError::Run(format!("no output '{name}'")))?;
        let (dims, values) = value.try_extract_tensor::<f32>().map_err(|e| InferError::Run(first_line(e)))?;
        let classes = self.contract.meta.classes.len();
        if dims.len() != 2 || dims[1] != classes as i64 || dims[0] != batch as i64 {
            return Err(InferError::Run(format!(
                "output shape {:?} does not fit {batch} images x {classes} classes (the metadata names {classes})",
                &dims[..]
            )));
        }
        Ok(values.to_vec())
    }

    /// Each row of model outputs (`n × classes`) ranked: every class's probability and a
    /// prediction listing `top_k` classes, from one softmax per row.
    pub fn rank(&self, outputs: &[f32], top_k: usize) -> Vec<Ranked> {
        self.ranker.rank(outputs, top_k)
    }

    /// Predictions from model outputs (`n × classes`).
    pub fn predictions(&self, outputs: &[f32]) -> Vec<Prediction> {
        self.predictions_top(outputs, self.ranker.top_k)
    }

    /// Predictions from model outputs, listing `top_k` classes each (instead of the
    /// builder's number).
    pub fn predictions_top(&self, outputs: &[f32], top_k: usize) -> Vec<Prediction> {
        self.rank(outputs, top_k).into_iter().map(|r| r.prediction).collect()
    }

    /// Class probabilities (`n × classes`) from model outputs.
    pub fn probabilities(&self, outputs: &[f32]) -> Vec<f32> {
        self.rank(outputs, 1).into_iter().flat_map(|r| r.probabilities).collect()
    }

    /// Decodes and preprocesses encoded image files (their bytes) in parallel on the decoding
    /// threads: one model input, or one error, per image.
    pub fn prepare_encoded(&self, images: &[&[u8]]) -> PreparedBatch {
        let (preprocess, limits) = (&self.contract.meta.preprocess, self.limits);
        PreparedBatch(self.pool.install(|| images.par_iter().map(|b| prepare_bytes(b, preprocess, limits)).collect()))
    }

    /// Preprocesses decoded images in parallel on the decoding threads.
    pub fn prepare_images(&self, imgs: &[RgbImage]) -> PreparedBatch {
        let preprocess = &self.contract.meta.preprocess;
        PreparedBatch(self.pool.install(|| imgs.par_iter().map(|img| prepare_image(img, preprocess)).collect()))
    }

    /// Preprocesses one decoded image into model input.
    pub fn preprocess(&self, img: &RgbImage) -> Result<Vec<f32>, crate::preprocess::PreprocessError> {
        self.contract.meta.preprocess.eval(img)
    }

    /// The predictions of a batch's ready items, in order (none when no item is ready).
    fn run_prepared(&self, batch: &PreparedBatch) -> Result<Vec<Prediction>, InferError> {
        let (input, n) = batch.input();
        if n == 0 {
            return Ok(Vec::new());
        }
        Ok(self.predictions(&self.run(&input)?))
    }

    /// Classifies a prepared batch as one model call; each item gets its own result (a model
    /// failure becomes the error of every item that reached it).
    pub fn classify_prepared(&self, batch: PreparedBatch) -> Vec<Result<Prediction, ItemError>> {
        let predictions = self.run_prepared(&batch);
        batch.results(predictions)
    }

    /// Classifies one decoded image.
    pub fn classify(&self, img: &RgbImage) -> Result<Prediction, ItemError> {
        let out = self.classify_images(std::slice::from_ref(img))?;
        out.into_iter().next().unwrap_or_else(|| Err(ItemError::Batch(InferError::Run("no output".into()))))
    }

    /// Classifies decoded images as one batch; each gets its own result (`Err` when the model
    /// itself fails).
    pub fn classify_images(&self, imgs: &[RgbImage]) -> Result<Vec<Result<Prediction, ItemError>>, InferError> {
        let batch = self.prepare_images(imgs);
        let predictions = self.run_prepared(&batch)?;
        Ok(batch.results(Ok(predictions)))
    }
}
