//! A session over any ONNX model held in memory that returns every float output by name — for
//! tools that look inside a model (the int8 export's calibration reads intermediate tensors
//! this way), not for classifying.

use ort::session::Session;
use ort::value::TensorRef;

use crate::error::{first_line, InferError};

/// A model's session with its input name and output names.
pub struct Probe {
    session: Session,
    input: String,
    outputs: Vec<String>,
}

impl Probe {
    /// Loads a model from its serialised bytes (one float input).
    pub fn from_bytes(bytes: &[u8], threads: Option<usize>) -> Result<Probe, InferError> {
        let load = |reason: String| InferError::ModelLoad { path: "<in memory>".into(), reason };
        let mut builder = crate::provider::base_builder(threads).map_err(load)?;
        let session = builder.commit_from_memory(bytes).map_err(|e| load(first_line(e)))?;
        let input = session.inputs().first().map(|i| i.name().to_string()).unwrap_or_default();
        let outputs = session.outputs().iter().map(|o| o.name().to_string()).collect();
        Ok(Probe { session, input, outputs })
    }

    /// The output names, in the model's order.
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    /// Runs `input` (of `shape`) and returns every output's values, in [`Probe::outputs`] order.
    pub fn run(&mut self, input: &[f32], shape: [i64; 4]) -> Result<Vec<Vec<f32>>, InferError> {
        let run = |e: ort::Error| InferError::Run(first_line(e));
        let tensor = TensorRef::from_array_view((shape, input)).map_err(run)?;
        let results = self.session.run(ort::inputs![self.input.as_str() => tensor]).map_err(run)?;
        let mut out = Vec::with_capacity(self.outputs.len());
        for name in &self.outputs {
            let value = results.get(name).ok_or_else(|| InferError::Run(format!("no output '{name}'")))?;
            let (_, values) = value.try_extract_tensor::<f32>().map_err(run)?;
            out.push(values.to_vec());
        }
        Ok(out)
    }
}
