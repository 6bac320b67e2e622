//! The streaming entry point: results of many inputs, in input order, as soon as each batch
//! is inferred, while the next batches are decoded on the thread pool. The CLI and any
//! embedding program consume the same iterator.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use crate::batching::{self, BatchStream};
use crate::classifier::Classifier;
use crate::error::ItemError;
use crate::files::Input;
use crate::prediction::{FileResult, Prediction};
use crate::prepare::{prepare_file, Prepared, PreparedBatch};

/// How many batches are decoded ahead of inference.
const PREFETCH: usize = 2;

/// Iterator over the [`FileResult`]s of a [`Classifier::classify_stream`] call.
pub struct ResultStream<'a> {
    classifier: &'a Classifier,
    /// Inputs not yet yielded, in order; files among them are being decoded by `batches`.
    inputs: VecDeque<Input>,
    batches: BatchStream<Prepared>,
    /// Results of the current batch not yet yielded.
    ready: VecDeque<FileResult>,
}

impl<'a> ResultStream<'a> {
    pub(crate) fn new(classifier: &'a Classifier, inputs: Vec<Input>) -> ResultStream<'a> {
        let files = crate::files::file_paths(&inputs);
        let preprocess = classifier.metadata().preprocess.clone();
        let limits = classifier.decode_limits();
        let load = move |path: &PathBuf, _| prepare_file(path, &preprocess, limits);
        let order = (0..files.len()).collect();
        let batches = batching::stream(
            Arc::clone(classifier.pool()),
            Arc::new(files),
            order,
            classifier.batch_size(),
            PREFETCH,
            load,
        );
        ResultStream { classifier, inputs: inputs.into(), batches, ready: VecDeque::new() }
    }

    /// Infers the next decoded batch into `ready`, pairing results with the files in order.
    fn infer_next_batch(&mut self) -> bool {
        let Some(batch) = self.batches.next() else { return false };
        let results = self.classifier.classify_prepared(PreparedBatch(batch));
        let mut files = self.inputs.iter().filter_map(|i| if let Input::File(p) = i { Some(p) } else { None });
        for result in results {
            let path = files.next().cloned().unwrap_or_default();
            self.ready.push_back(FileResult { path, result });
        }
        true
    }
}

impl Iterator for ResultStream<'_> {
    type Item = FileResult;

    fn next(&mut self) -> Option<FileResult> {
        match self.inputs.front()? {
            Input::Error(_) => match self.inputs.pop_front() {
                Some(Input::Error(e)) => Some(e),
                _ => None,
            },
            Input::File(_) => {
                if self.ready.is_empty() && !self.infer_next_batch() {
                    return None;
                }
                self.inputs.pop_front();
                self.ready.pop_front()
            }
        }
    }
}

/// Classifying many files: everything goes through [`ResultStream`].
impl Classifier {
    /// Streams the results of `inputs` in order: files are decoded and preprocessed in
    /// parallel, ahead of inference, and classified in batches; [`Input::Error`] entries come
    /// out where they stand. Dropping the iterator stops the work after the batches in flight.
    pub fn classify_stream(&self, inputs: Vec<Input>) -> ResultStream<'_> {
        ResultStream::new(self, inputs)
    }

    /// Classifies files, calling `on_result` for each, in order, as soon as its batch is done.
    pub fn classify_files_with(&self, paths: Vec<PathBuf>, mut on_result: impl FnMut(FileResult)) {
        for r in self.classify_stream(paths.into_iter().map(Input::File).collect()) {
            on_result(r);
        }
    }

    /// Classifies one image file: decoded and preprocessed as the model's contract says
    /// (transparency included), like every file `infer` reads.
    pub fn classify_file(&self, path: impl Into<PathBuf>) -> Result<Prediction, ItemError> {
        let mut results = self.classify_stream(vec![Input::File(path.into())]);
        results.next().map_or_else(|| Err(ItemError::Batch(crate::InferError::Run("no output".into()))), |r| r.result)
    }

    /// Classifies files; one result per path, in order.
    pub fn classify_files(&self, paths: Vec<PathBuf>) -> Vec<FileResult> {
        self.classify_stream(paths.into_iter().map(Input::File).collect()).collect()
    }

    /// Classifies files and folders: folders are searched recursively in sorted order for
    /// images (by extension or content, see [`crate::files`]). Unusable paths get error
    /// results where they stand; everything else is classified.
    pub fn classify_paths(&self, paths: &[PathBuf]) -> Vec<FileResult> {
        self.classify_stream(crate::files::collect(paths).items).collect()
    }
}
