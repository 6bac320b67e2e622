//! int8 export, entirely in Rust: activation ranges measured on calibration images, then the
//! float graph rewritten with QuantizeLinear/DequantizeLinear pairs in the form ONNX Runtime
//! fuses into integer kernels (QDQ) — the graph ONNX Runtime's own Python quantizer writes for
//! this network with `QuantFormat.QDQ, per_channel=True, QUInt8 activations, QInt8 weights`:
//!
//! - weights: int8, symmetric, one scale per output channel (`DequantizeLinear`, axis 0);
//! - biases: int32 with scale `input scale × weight scale`, zero point 0;
//! - activations: uint8, asymmetric, one scale per tensor (`QuantizeLinear` → `DequantizeLinear`
//!   after every convolution, residual addition and pooling); a ReLU after a convolution or an
//!   addition disappears into its output's quantization (range `[0, max]`, zero point 0);
//! - the classifier (`Gemm`) takes quantized input and weights; its logits stay float, so that
//!   probabilities keep their precision.
//!
//! Calibration runs the float graph with every such tensor as an extra output through ONNX
//! Runtime and keeps, per tensor, its extremes and a histogram of each sign's magnitudes, from
//! which [`Calibration::MinMax`] or [`Calibration::Percentile`] ranges are taken.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use infer::probe::Probe;
use thiserror::Error;

use crate::error::{ExportError, QuantizeError};
use crate::onnx_proto::*;

/// `TensorProto.DataType` values.
const UINT8: i32 = 2;
const INT8: i32 = 3;
const INT32: i32 = 6;

/// How activation ranges are taken from the calibration statistics.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Calibration {
    /// Each of [`AUTO_CANDIDATES`] is tried, and the one whose logits stay closest to the
    /// float model's on the calibration images is kept: which wins depends on the network's
    /// activations (on the seed data the two are within a few per cent of each other).
    #[default]
    Auto,
    /// The smallest and largest values seen.
    MinMax,
    /// On each side of zero, the magnitude below which this percentage of values lies (outliers
    /// beyond it are clipped, for finer steps everywhere else).
    Percentile(f64),
}

/// The percentile of `percentile` without a value.
pub const DEFAULT_PERCENTILE: f64 = 99.999;

/// What [`Calibration::Auto`] chooses from.
pub const AUTO_CANDIDATES: [Calibration; 2] = [Calibration::MinMax, Calibration::Percentile(DEFAULT_PERCENTILE)];

/// Images per ONNX Runtime call when calibrating and comparing quantized models.
pub const PROBE_BATCH: usize = 8;

impl fmt::Display for Calibration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Calibration::Auto => write!(f, "auto"),
            Calibration::MinMax => write!(f, "minmax"),
            Calibration::Percentile(p) => write!(f, "percentile {p}"),
        }
    }
}

/// A calibration method that is not one.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("'{0}' is not a calibration method: use auto, minmax, percentile or percentile:P (0 < P <= 100)")]
pub struct CalibrationParseError(pub String);

impl FromStr for Calibration {
    type Err = CalibrationParseError;
    /// `auto`, `minmax`, `percentile` ([`DEFAULT_PERCENTILE`]) or `percentile:P`.
    fn from_str(s: &str) -> Result<Self, CalibrationParseError> {
        let bad = || CalibrationParseError(s.to_string());
        match s {
            "auto" => Ok(Calibration::Auto),
            "minmax" => Ok(Calibration::MinMax),
            "percentile" => Ok(Calibration::Percentile(DEFAULT_PERCENTILE)),
            _ => {
                let p: f64 = s.strip_prefix("percentile:").ok_or_else(bad)?.parse().map_err(|_| bad())?;
                if p > 0.0 && p <= 100.0 {
                    Ok(Calibration::Percentile(p))
                } else {
                    Err(bad())
                }
            }
        }
    }
}

const BINS: usize = 2048;

/// A histogram of magnitudes over `[0, top]`, doubling its range (and merging bins in pairs)
/// when a larger value arrives.
#[derive(Debug, Clone)]
struct Magnitudes {
    counts: Vec<u64>,
    top: f32,
}

impl Magnitudes {
    fn new() -> Self {
        Magnitudes { counts: vec![0; BINS], top: 0.0 }
    }

    fn add(&mut self, m: f32) {
        if m > self.top {
            if self.top == 0.0 {
                self.top = m.max(1e-6);
            }
            while m > self.top {
                for i in 0..BINS / 2 {
                    self.counts[i] = self.counts[2 * i] + self.counts[2 * i + 1];
                }
                self.counts[BINS / 2..].fill(0);
                self.top *= 2.0;
            }
        }
        let bin = ((m / self.top) * BINS as f32) as usize;
        self.counts[bin.min(BINS - 1)] += 1;
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The magnitude below which `percent` of the values lie (upper edge of that bin).
    fn percentile(&self, percent: f64) -> f32 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        let wanted = (total as f64 * percent / 100.0).ceil() as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= wanted {
                return (i + 1) as f32 / BINS as f32 * self.top;
            }
        }
        self.top
    }
}

/// What calibration keeps of one tensor.
#[derive(Debug, Clone)]
pub struct Stats {
    min: f32,
    max: f32,
    positive: Magnitudes,
    negative: Magnitudes,
}

impl Default for Stats {
    fn default() -> Self {
        Stats { min: f32::INFINITY, max: f32::NEG_INFINITY, positive: Magnitudes::new(), negative: Magnitudes::new() }
    }
}

impl Stats {
    pub fn add(&mut self, values: &[f32]) {
        for &v in values.iter().filter(|v| v.is_finite()) {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
            if v >= 0.0 {
                self.positive.add(v);
            } else {
                self.negative.add(-v);
            }
        }
    }

    /// The range to quantize to.
    pub fn range(&self, method: Calibration) -> (f32, f32) {
        if self.min > self.max {
            return (0.0, 0.0);
        }
        match method {
            Calibration::MinMax | Calibration::Auto => (self.min, self.max),
            Calibration::Percentile(p) => {
                let hi = if self.max > 0.0 { self.positive.percentile(p).min(self.max) } else { self.max };
                let lo = if self.min < 0.0 { -self.negative.percentile(p).min(-self.min) } else { self.min };
                (lo, hi)
            }
        }
    }
}

/// uint8 asymmetric parameters for a range (widened to include zero, as ONNX Runtime does).
fn activation_params((lo, hi): (f32, f32)) -> (f32, u8) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    if hi - lo <= f32::EPSILON {
        return (1.0, 0);
    }
    let scale = (hi - lo) / 255.0;
    let zero = (-lo / scale).round().clamp(0.0, 255.0) as u8;
    (scale, zero)
}

/// The tensors whose ranges calibration measures, for a float graph written by the exporter:
/// the input, and the output of every convolution, addition (after their ReLU when one
/// follows) and global average pool.
pub fn calibrated_tensors(model: &ModelProto) -> Vec<String> {
    let graph = model.graph.as_ref().expect("the exporter writes a graph");
    let relu_of = relu_outputs(graph);
    let mut out = vec!["input".to_string()];
    for n in &graph.node {
        if matches!(n.op_type.as_str(), "Conv" | "Add" | "GlobalAveragePool") {
            let o = &n.output[0];
            out.push(relu_of.get(o).cloned().unwrap_or_else(|| o.clone()));
        }
    }
    out
}

/// For each tensor read only by a ReLU, that ReLU's output.
fn relu_outputs(graph: &GraphProto) -> HashMap<String, String> {
    let mut readers: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
    for n in &graph.node {
        for i in &n.input {
            readers.entry(i.as_str()).or_default().push(n);
        }
    }
    readers
        .into_iter()
        .filter_map(|(t, r)| match r.as_slice() {
            [only] if only.op_type == "Relu" => Some((t.to_string(), only.output[0].clone())),
            _ => None,
        })
        .collect()
}

fn float_output(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type: FLOAT, shape: None })),
        }),
    }
}

/// What calibration measured: each tensor's statistics, and the float model's logits on the
/// calibration images (to compare quantized models with).
pub struct Measured {
    pub stats: HashMap<String, Stats>,
    pub logits: Vec<f32>,
}

/// Runs `model` over `inputs` (preprocessed images, `n × 3 × side × side`) [`PROBE_BATCH`]
/// images at a time, handing `each` the output names, then every batch's input and outputs.
fn probe_batches(
    model: &ModelProto,
    inputs: &[f32],
    side: usize,
    mut each: impl FnMut(&[String], &[f32], Vec<Vec<f32>>) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    let mut probe = Probe::from_bytes(&prost::Message::encode_to_vec(model), None)?;
    let per_image = 3 * side * side;
    for chunk in inputs.chunks(PROBE_BATCH * per_image) {
        let n = (chunk.len() / per_image) as i64;
        let values = probe.run(chunk, [n, 3, side as i64, side as i64])?;
        each(probe.outputs(), chunk, values)?;
    }
    Ok(())
}

/// Runs the float model on the calibration `inputs` (preprocessed images, `n × 3 × side ×
/// side`) and returns the statistics of each of `tensors`.
pub fn calibrate(model: &ModelProto, tensors: &[String], inputs: &[f32], side: usize) -> Result<Measured, ExportError> {
    let mut probe_model = model.clone();
    let graph = probe_model.graph.as_mut().expect("the exporter writes a graph");
    // The input's statistics come from the inputs themselves; the rest from the graph.
    let inner: Vec<&String> = tensors.iter().filter(|t| *t != "input").collect();
    graph.output = inner.iter().map(|t| float_output(t)).chain([float_output("logits")]).collect();
    let mut stats: HashMap<String, Stats> = tensors.iter().map(|t| (t.clone(), Stats::default())).collect();
    let mut logits = Vec::new();
    probe_batches(&probe_model, inputs, side, |names, chunk, values| {
        stats.get_mut("input").expect("input listed").add(chunk);
        for (name, v) in names.iter().zip(values) {
            match stats.get_mut(name) {
                Some(s) => s.add(&v),
                None if name == "logits" => logits.extend(v),
                None => {}
            }
        }
        Ok(())
    })?;
    Ok(Measured { stats, logits })
}

/// Mean absolute difference between a quantized model's logits and the float model's
/// (`measured.logits`) on the calibration inputs.
pub fn logit_error(int8: &ModelProto, measured: &Measured, inputs: &[f32], side: usize) -> Result<f32, ExportError> {
    let mut logits = Vec::with_capacity(measured.logits.len());
    probe_batches(int8, inputs, side, |names, _, mut values| {
        let at = names.iter().position(|o| o == "logits").ok_or(QuantizeError::NoLogits)?;
        logits.extend(values.swap_remove(at));
        Ok(())
    })?;
    let sum: f64 = logits.iter().zip(&measured.logits).map(|(a, b)| f64::from((a - b).abs())).sum();
    Ok((sum / measured.logits.len().max(1) as f64) as f32)
}

/// The int8 model for `method` ([`Calibration::Auto`]: the better of [`AUTO_CANDIDATES`] by
/// [`logit_error`]), the method used, and its logit error.
pub fn best_quantized(
    model: &ModelProto,
    measured: &Measured,
    method: Calibration,
    inputs: &[f32],
    side: usize,
) -> Result<(ModelProto, Calibration, f32), ExportError> {
    let candidates: &[Calibration] = match method {
        Calibration::Auto => &AUTO_CANDIDATES,
        _ => std::slice::from_ref(&method),
    };
    let mut best: Option<(ModelProto, Calibration, f32)> = None;
    for &m in candidates {
        let ranges = measured.stats.iter().map(|(t, s)| (t.clone(), s.range(m))).collect();
        let q = quantize(model, &ranges)?;
        let err = logit_error(&q, measured, inputs, side)?;
        if best.as_ref().is_none_or(|b| err < b.2) {
            best = Some((q, m, err));
        }
    }
    Ok(best.expect("at least one candidate"))
}

/// Builds the QDQ graph of a float graph written by the exporter.
struct Rewrite<'a> {
    initializers: HashMap<&'a str, &'a TensorProto>,
    ranges: &'a HashMap<String, (f32, f32)>,
    nodes: Vec<NodeProto>,
    new_initializers: Vec<TensorProto>,
    /// For each quantized activation: its dequantized name and its scale.
    dequantized: HashMap<String, (String, f32)>,
}

fn scalar(name: String, data_type: i32, raw: Vec<u8>) -> TensorProto {
    TensorProto { dims: vec![], data_type, name, raw_data: raw }
}

fn vector(name: String, data_type: i32, raw: Vec<u8>, len: usize) -> TensorProto {
    TensorProto { dims: vec![len as i64], data_type, name, raw_data: raw }
}

fn floats(t: &TensorProto) -> Vec<f32> {
    t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

impl Rewrite<'_> {
    fn node(
        &mut self,
        op: &str,
        name: String,
        inputs: Vec<String>,
        outputs: Vec<String>,
        attribute: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            input: inputs,
            output: outputs,
            name,
            op_type: op.into(),
            attribute,
            domain: String::new(),
        });
    }

    /// Quantizes activation `t` with the parameters of `params_of` (its own when the same):
    /// `t → QuantizeLinear → DequantizeLinear → t_dq`.
    fn quantize(&mut self, t: &str, params_of: &str) -> Result<(), ExportError> {
        let (scale_name, zero_name) = (format!("{params_of}_scale"), format!("{params_of}_zero_point"));
        let scale = if params_of == t {
            let range = *self.ranges.get(t).ok_or_else(|| QuantizeError::NoRange(t.to_string()))?;
            let (scale, zero) = activation_params(range);
            self.new_initializers.push(scalar(scale_name.clone(), FLOAT, scale.to_le_bytes().to_vec()));
            self.new_initializers.push(scalar(zero_name.clone(), UINT8, vec![zero]));
            scale
        } else {
            self.dequantized.get(params_of).map(|d| d.1).ok_or_else(|| QuantizeError::NotQuantized(params_of.into()))?
        };
        let (q, dq) = (format!("{t}_quantized"), format!("{t}_dequantized"));
        self.node(
            "QuantizeLinear",
            q.clone(),
            vec![t.into(), scale_name.clone(), zero_name.clone()],
            vec![q.clone()],
            vec![],
        );
        self.node("DequantizeLinear", dq.clone(), vec![q, scale_name, zero_name], vec![dq.clone()], vec![]);
        self.dequantized.insert(t.to_string(), (dq, scale));
        Ok(())
    }

    /// The dequantized name of an activation input.
    fn input(&self, t: &str) -> Result<(String, f32), ExportError> {
        self.dequantized.get(t).cloned().ok_or_else(|| QuantizeError::NotQuantized(format!("input {t}")).into())
    }

    /// Per-output-channel symmetric int8 weights and int32 bias (scale `input × weight`),
    /// each behind a `DequantizeLinear` on axis 0. Returns the two dequantized names.
    fn weights(&mut self, w: &str, b: &str, input_scale: f32) -> Result<(String, String), ExportError> {
        let missing = |n: &str| QuantizeError::NoInitializer(n.into());
        let (wt, bt) = (
            *self.initializers.get(w).ok_or_else(|| missing(w))?,
            *self.initializers.get(b).ok_or_else(|| missing(b))?,
        );
        let (values, bias) = (floats(wt), floats(bt));
        let channels = wt.dims[0] as usize;
        let per = values.len() / channels.max(1);
        let mut q = Vec::with_capacity(values.len());
        let mut scales = Vec::with_capacity(channels);
        for c in values.chunks(per) {
            let amax = c.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
            scales.push(s);
            q.extend(c.iter().map(|v| (v / s).round().clamp(-127.0, 127.0) as i8 as u8));
        }
        let bias_scales: Vec<f32> = scales.iter().map(|s| s * input_scale).collect();
        let qb: Vec<u8> = bias
            .iter()
            .zip(&bias_scales)
            .flat_map(|(b, s)| ((b / s).round().clamp(i32::MIN as f32, i32::MAX as f32) as i32).to_le_bytes())
            .collect();
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let init = &mut self.new_initializers;
        init.push(TensorProto { dims: wt.dims.clone(), data_type: INT8, name: format!("{w}_quantized"), raw_data: q });
        init.push(vector(format!("{w}_scale"), FLOAT, f32s(&scales), channels));
        init.push(vector(format!("{w}_zero_point"), INT8, vec![0; channels], channels));
        init.push(vector(format!("{b}_quantized"), INT32, qb, channels));
        init.push(vector(format!("{b}_scale"), FLOAT, f32s(&bias_scales), channels));
        init.push(vector(format!("{b}_zero_point"), INT32, vec![0; 4 * channels], channels));
        let axis =
            vec![AttributeProto { name: "axis".into(), r#type: attribute_type::INT, i: 0, ..Default::default() }];
        let (wd, bd) = (format!("{w}_dequantized"), format!("{b}_dequantized"));
        for (t, out) in [(w, &wd), (b, &bd)] {
            let inputs = vec![format!("{t}_quantized"), format!("{t}_scale"), format!("{t}_zero_point")];
            self.node("DequantizeLinear", out.clone(), inputs, vec![out.clone()], axis.clone());
        }
        Ok((wd, bd))
    }
}

/// The QDQ model of a float model written by the exporter, with activation `ranges` for
/// [`calibrated_tensors`].
pub fn quantize(model: &ModelProto, ranges: &HashMap<String, (f32, f32)>) -> Result<ModelProto, ExportError> {
    let graph = model.graph.as_ref().expect("the exporter writes a graph");
    let relu_of = relu_outputs(graph);
    let mut rw = Rewrite {
        initializers: graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect(),
        ranges,
        nodes: Vec::new(),
        new_initializers: Vec::new(),
        dequantized: HashMap::new(),
    };
    rw.quantize("input", "input")?;
    for n in &graph.node {
        // A ReLU is absorbed by the quantization of its input's producer.
        let out = relu_of.get(&n.output[0]).cloned().unwrap_or_else(|| n.output[0].clone());
        match n.op_type.as_str() {
            "Relu" if relu_of.values().any(|r| *r == n.output[0]) => {}
            "Conv" | "Gemm" => {
                let (x, s) = rw.input(&n.input[0])?;
                let (w, b) = rw.weights(&n.input[1], &n.input[2], s)?;
                rw.node(&n.op_type, n.name.clone(), vec![x, w, b], vec![out.clone()], n.attribute.clone());
                if n.op_type == "Conv" {
                    rw.quantize(&out, &out)?;
                }
            }
            "Add" => {
                let inputs = n.input.iter().map(|i| rw.input(i).map(|d| d.0)).collect::<Result<Vec<_>, _>>()?;
                rw.node("Add", n.name.clone(), inputs, vec![out.clone()], vec![]);
                rw.quantize(&out, &out)?;
            }
            "GlobalAveragePool" => {
                let (x, _) = rw.input(&n.input[0])?;
                rw.node(&n.op_type, n.name.clone(), vec![x], vec![out.clone()], n.attribute.clone());
                rw.quantize(&out, &out)?;
            }
            // Order-preserving operations keep their input's scale.
            "MaxPool" | "Flatten" => {
                let (x, _) = rw.input(&n.input[0])?;
                rw.node(&n.op_type, n.name.clone(), vec![x], vec![out.clone()], n.attribute.clone());
                rw.quantize(&out, &n.input[0])?;
            }
            _ => rw.nodes.push(n.clone()),
        }
    }
    let mut q = model.clone();
    let g = q.graph.as_mut().expect("cloned with its graph");
    g.node = rw.nodes;
    g.initializer = rw.new_initializers;
    g.name = format!("{}_int8", g.name);
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_methods_parse_and_print() {
        assert_eq!("minmax".parse(), Ok(Calibration::MinMax));
        assert_eq!("auto".parse(), Ok(Calibration::Auto));
        assert_eq!("percentile".parse(), Ok(Calibration::Percentile(DEFAULT_PERCENTILE)));
        assert_eq!("percentile:99.9".parse(), Ok(Calibration::Percentile(99.9)));
        assert!("percentile:101".parse::<Calibration>().is_err());
        assert!("entropy".parse::<Calibration>().is_err());
        assert_eq!(Calibration::Percentile(99.99).to_string(), "percentile 99.99");
    }

    #[test]
    fn percentile_clips_outliers_and_minmax_keeps_them() {
        let mut s = Stats::default();
        let mut values: Vec<f32> = (0..100_000).map(|i| (i % 1000) as f32 / 1000.0).collect();
        values.push(50.0); // one outlier
        values.extend((0..1000).map(|i| -(i as f32) / 2000.0));
        s.add(&values);
        assert_eq!(s.range(Calibration::MinMax), (-0.4995, 50.0));
        let (lo, hi) = s.range(Calibration::Percentile(99.9));
        assert!(hi > 0.95 && hi < 1.1, "{hi}");
        assert!(lo < -0.45 && lo > -0.55, "{lo}");
    }

    #[test]
    fn activation_parameters_include_zero() {
        let (scale, zero) = activation_params((0.0, 2.55));
        assert!((scale - 0.01).abs() < 1e-6 && zero == 0);
        let (scale, zero) = activation_params((-1.0, 1.0));
        assert!((scale - 2.0 / 255.0).abs() < 1e-6 && (127..=128).contains(&zero), "{zero}");
        assert_eq!(activation_params((0.5, 0.5)).1, 0, "widened to include zero");
        assert_eq!(activation_params((0.0, 0.0)), (1.0, 0));
    }
}
