//! ONNX export, with no Python: the network is written as an ONNX graph (BatchNorm folded into
//! the convolutions) from the same architecture table the tch model is built from, with class
//! names and preprocessing in `metadata_props`. Every export verifies itself: the written file
//! is run through ONNX Runtime (the `infer` library) and compared with libtorch's eval-mode
//! forward pass before it replaces the target.

use std::path::{Path, PathBuf};

use infer::atomic::AtomicFile;
use infer::{Classifier, ExecutionProvider, ModelMetadata, PreprocessConfig};
use prost::Message;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::arch;
use crate::checkpoint::ModelInfo;
use crate::config::{Hyper, Observer, QuantizeSettings, BEST, DEFAULT_OUT, LAST, MODEL_ONNX, SUMMARY};
use crate::dataset::{self, Dataset, FileNotes, ScanOptions};
use crate::error::{CheckpointError, ExportError, QuantizeError, VerifyError, WeightsError};
use crate::model::{FoldedConv, ResNet};
use crate::onnx_proto::tensor_shape_proto::{dimension, Dimension};
use crate::onnx_proto::*;
use crate::quantize::{self, Calibration};
pub use crate::report::{ExportReport, Int8Report};
use crate::run_state;
use crate::weights::from_tch;

/// ONNX operator set of the exported graph (ONNX Runtime supports it since 1.14).
pub const OPSET: i64 = 17;
/// ONNX IR version of the exported file.
pub const IR_VERSION: i64 = 8;
/// Largest accepted difference between ONNX Runtime's and libtorch's logits.
pub const MAX_LOGIT_DIFF: f32 = 1e-4;

struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: attribute_type::INTS, ints: v.to_vec(), ..Default::default() }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: attribute_type::INT, i: v, ..Default::default() }
}

fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: attribute_type::FLOAT, f: v, ..Default::default() }
}

fn value_info(name: &str, dims: &[Dimension]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: FLOAT,
                shape: Some(TensorShapeProto { dim: dims.to_vec() }),
            })),
        }),
    }
}

fn dim(v: i64) -> Dimension {
    Dimension { value: Some(dimension::Value::DimValue(v)) }
}

fn batch_dim() -> Dimension {
    Dimension { value: Some(dimension::Value::DimParam("batch".into())) }
}

impl Graph {
    fn initializer(&mut self, name: &str, t: &Tensor) -> Result<String, ExportError> {
        let data = from_tch(&t.to_kind(Kind::Float))?;
        self.initializers.push(TensorProto {
            dims: data.shape,
            data_type: FLOAT,
            name: name.into(),
            raw_data: data.data,
        });
        Ok(name.to_string())
    }

    fn node(&mut self, op: &str, name: &str, inputs: Vec<String>, attribute: Vec<AttributeProto>) -> String {
        let output = name.to_string();
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![output.clone()],
            name: name.into(),
            op_type: op.into(),
            attribute,
            domain: String::new(),
        });
        output
    }

    fn conv(&mut self, x: &str, c: &FoldedConv, name: &str) -> Result<String, ExportError> {
        let w = self.initializer(&format!("{name}.weight"), &c.weight)?;
        let b = self.initializer(&format!("{name}.bias"), &c.bias)?;
        let k = c.weight.size()[2];
        let attrs = vec![
            ints("kernel_shape", &[k, k]),
            ints("strides", &[c.stride, c.stride]),
            ints("pads", &[c.padding; 4]),
            ints("dilations", &[1, 1]),
            int("group", 1),
        ];
        Ok(self.node("Conv", name, vec![x.into(), w, b], attrs))
    }

    fn relu(&mut self, x: &str) -> String {
        self.node("Relu", &format!("{x}.relu"), vec![x.into()], vec![])
    }
}

/// The ONNX model of `model` in eval mode, carrying `meta` in its metadata.
pub fn onnx_model(model: &ResNet, meta: &ModelMetadata, probabilities: bool) -> Result<ModelProto, ExportError> {
    let (stem, blocks) = model.folded_convs();
    let mut g = Graph { nodes: Vec::new(), initializers: Vec::new() };
    let mut x = g.conv("input", &stem, "conv1")?;
    x = g.relu(&x);
    x = g.node(
        "MaxPool",
        "maxpool",
        vec![x],
        vec![ints("kernel_shape", &[3, 3]), ints("strides", &[2, 2]), ints("pads", &[1, 1, 1, 1])],
    );
    // Blocks come stage by stage; name them as torchvision does (layer<stage>.<index>).
    let names =
        model.arch.layers.iter().enumerate().flat_map(|(s, &n)| (0..n).map(move |i| format!("layer{}.{i}", s + 1)));
    for (block, name) in blocks.iter().zip(names) {
        let mut y = x.clone();
        for (i, c) in block.convs.iter().enumerate() {
            y = g.conv(&y, c, &format!("{name}.conv{}", i + 1))?;
            if i + 1 < block.convs.len() {
                y = g.relu(&y);
            }
        }
        let shortcut = match &block.downsample {
            Some(d) => g.conv(&x, d, &format!("{name}.downsample"))?,
            None => x.clone(),
        };
        let sum = g.node("Add", &format!("{name}.add"), vec![y, shortcut], vec![]);
        x = g.relu(&sum);
    }
    x = g.node("GlobalAveragePool", "avgpool", vec![x], vec![]);
    x = g.node("Flatten", "flatten", vec![x], vec![int("axis", 1)]);
    let (fc_w, fc_b) = model.classifier_weights();
    let w = g.initializer("fc.weight", &fc_w)?;
    let b = g.initializer("fc.bias", &fc_b)?;
    let logits =
        g.node("Gemm", "logits", vec![x, w, b], vec![float("alpha", 1.0), float("beta", 1.0), int("transB", 1)]);
    let classes = model.num_classes;
    let mut outputs = vec![value_info(&logits, &[batch_dim(), dim(classes)])];
    if probabilities {
        let p = g.node("Softmax", "probabilities", vec![logits], vec![int("axis", 1)]);
        outputs.push(value_info(&p, &[batch_dim(), dim(classes)]));
    }
    let side = i64::from(meta.preprocess.crop_size);
    let graph = GraphProto {
        node: g.nodes,
        name: format!("{}_classifier", model.arch.name),
        initializer: g.initializers,
        doc_string: String::new(),
        input: vec![value_info("input", &[batch_dim(), dim(3), dim(side), dim(side)])],
        output: outputs,
    };
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        producer_name: crate::checkpoint::TOOLKIT_NAME.into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: String::new(),
        model_version: 1,
        doc_string: format!(
            "{} image classifier ({} classes). Input: RGB, NCHW float32, resized and normalised as the metadata says.",
            model.arch.name, classes
        ),
        graph: Some(graph),
        metadata_props: meta.to_props().into_iter().map(|(key, value)| StringStringEntryProto { key, value }).collect(),
    })
}

/// Writes `model` to `out` as ONNX after checking the written file with ONNX Runtime against
/// libtorch on `inputs` (preprocessed images, `n × 3 × size × size`). On any failure nothing is
/// left at `out` (an earlier file there stays as it was).
pub fn export(
    model: &ResNet,
    meta: &ModelMetadata,
    out: &Path,
    probabilities: bool,
    inputs: &[f32],
    real_images: bool,
) -> Result<ExportReport, ExportError> {
    let bytes = onnx_model(model, meta, probabilities)?.encode_to_vec();
    let write_err = |source| ExportError::Write { path: out.to_path_buf(), source };
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(write_err)?;
    let mut file = AtomicFile::create(out).map_err(write_err)?;
    std::io::Write::write_all(file.file(), &bytes).map_err(write_err)?;
    let (max_abs_diff, provider) = verify(model, meta, file.temp_path(), inputs)?;
    file.commit().map_err(write_err)?;
    let side = meta.preprocess.crop_size as usize;
    Ok(ExportReport {
        path: out.to_path_buf(),
        bytes: bytes.len(),
        images: inputs.len() / (3 * side * side),
        real_images,
        max_abs_diff,
        provider,
        int8: None,
    })
}

/// How [`export_checkpoint`] finds what it needs.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Also output softmax probabilities (`probabilities`), besides `logits`.
    pub probabilities: bool,
    /// Images for the verification batch (the first 32 readable ones are used); random
    /// input when none.
    pub images: Vec<PathBuf>,
    /// For weight files without this toolkit's record (a plain torchvision state dict): the
    /// architecture and class names. With a record, `arch` must agree with it.
    pub arch: Option<String>,
    pub classes: Option<Vec<String>>,
    /// Also write an int8 model beside the float one.
    pub quantize: Option<QuantizeOptions>,
}

/// The int8 export's inputs and settings.
#[derive(Debug, Clone, Default)]
pub struct QuantizeOptions {
    pub calibration: Calibration,
    /// Training images whose activations set the ranges.
    pub calibration_images: Vec<PathBuf>,
    /// Labelled validation images for the accuracy gate...
    pub validation: Vec<(PathBuf, usize)>,
    /// ...labelled with indices into these classes, which must be the model's.
    pub classes: Vec<String>,
    /// Keep a model the gate refuses.
    pub force: bool,
}

/// The accuracy gate: the int8 model may lose at most this much top-1 accuracy...
pub const MAX_ACCURACY_DROP: f64 = 0.01;
/// ...and must agree with the float model's top-1 on at least this fraction of images.
pub const MIN_AGREEMENT: f64 = 0.98;

/// Images in the verification batch at most.
pub const VERIFY_IMAGES: usize = 32;
/// Validation images decoded and run through both models at a time by the accuracy gate.
pub const GATE_CHUNK: usize = 32;

/// Exports a checkpoint (`best.pt`, `last.pt`, or a torchvision state dict with
/// [`ExportOptions::arch`] and [`ExportOptions::classes`]) to `out`.
pub fn export_checkpoint(weights: &Path, out: &Path, opts: &ExportOptions) -> Result<ExportReport, ExportError> {
    if !weights.is_file() {
        return Err(ExportError::NotFound(weights.to_path_buf()));
    }
    let info = match crate::checkpoint::read_info(weights) {
        Ok(info) => info,
        Err(CheckpointError::Invalid { .. }) if opts.arch.is_some() && opts.classes.is_some() => ModelInfo::new(
            opts.arch.as_deref().unwrap_or_default(),
            opts.classes.clone().unwrap_or_default(),
            infer::PreprocessConfig::default(),
            0,
            None,
        ),
        Err(CheckpointError::Invalid { path, reason }) => return Err(ExportError::NoRecord { path, reason }),
        Err(e) => return Err(e.into()),
    };
    let file = || weights.to_path_buf();
    if let Some(a) = opts.arch.as_ref().filter(|a| **a != info.arch) {
        return Err(ExportError::ArchMismatch { path: file(), holds: info.arch.clone(), asked: a.clone() });
    }
    let arch =
        arch::by_name(&info.arch).ok_or_else(|| ExportError::UnknownArch { path: file(), arch: info.arch.clone() })?;
    if info.classes.len() < 2 {
        return Err(ExportError::TooFewClasses { path: file(), found: info.classes.len() });
    }
    let model = ResNet::new(arch, info.classes.len() as i64, Device::Cpu);
    let state = crate::weights::read_state_dict(weights)?;
    model.load_state(&state, false).map_err(|e| match e {
        WeightsError::Mismatch { .. } => ExportError::DoesNotFit { path: file(), source: Box::new(e) },
        other => other.into(),
    })?;
    let meta = ModelMetadata {
        classes: info.classes.clone(),
        preprocess: info.preprocess.clone(),
        arch: Some(info.arch.clone()),
        best_val_acc: info.val_acc,
        epoch: (info.epoch > 0).then_some(info.epoch as u64),
        toolkit: Some(crate::checkpoint::TOOLKIT_NAME.into()),
        toolkit_version: Some(env!("CARGO_PKG_VERSION").into()),
        classes_from_defaults: false,
        quantization: None,
    };
    let (inputs, real) = verification_inputs(&opts.images, &info.preprocess);
    let mut report = export(&model, &meta, out, opts.probabilities, &inputs, real)?;
    if let Some(q) = &opts.quantize {
        report.int8 = Some(export_int8(&model, &meta, out, opts.probabilities, q)?);
    }
    Ok(report)
}

impl QuantizeOptions {
    /// Calibration and gate images from a scanned data set: `q.calibration_images` training
    /// images drawn with a fixed seed, and every validation image.
    pub fn from_dataset(ds: &Dataset, q: &QuantizeSettings) -> Self {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let mut train: Vec<PathBuf> = ds.train.iter().map(|s| s.path.clone()).collect();
        train.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(0x1A78));
        train.truncate(q.calibration_images);
        QuantizeOptions {
            calibration: q.calibration,
            calibration_images: train,
            validation: ds.val.iter().map(|s| (s.path.clone(), s.label)).collect(),
            classes: ds.classes.clone(),
            force: q.force,
        }
    }
}

/// `train export`: a checkpoint to export, where to, and what to check it on.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    pub weights: PathBuf,
    pub out: PathBuf,
    /// A data folder (its validation folder verifies the export; with `quantize`, the split
    /// of the run that wrote `weights` gives the calibration and gate images), or an image.
    pub data: Option<PathBuf>,
    pub probabilities: bool,
    /// For a state dict without this toolkit's record (see [`ExportOptions`]).
    pub arch: Option<String>,
    pub classes: Option<Vec<String>>,
    pub quantize: Option<QuantizeSettings>,
}

impl Default for ExportRequest {
    /// The default run's `best.pt` to its `model.onnx`, on random inputs, float only.
    fn default() -> Self {
        ExportRequest {
            weights: Path::new(DEFAULT_OUT).join(BEST),
            out: Path::new(DEFAULT_OUT).join(MODEL_ONNX),
            data: None,
            probabilities: false,
            arch: None,
            classes: None,
            quantize: None,
        }
    }
}

impl ExportRequest {
    /// What [`export_checkpoint`] needs: the verification images and, with `quantize`, the
    /// data folder scanned with the split of the run that wrote the weights (its `last.pt` or
    /// `summary.json`; the defaults when there is neither), which `obs` is told.
    pub fn options(&self, obs: &mut dyn Observer) -> Result<ExportOptions, ExportError> {
        let images = match &self.data {
            Some(d) if d.is_dir() => dataset::validation_images(d),
            Some(f) => vec![f.clone()],
            None => Vec::new(),
        };
        let quantize = match (&self.quantize, &self.data) {
            (None, _) => None,
            (Some(_), None) => return Err(ExportError::QuantizeNeedsData),
            (Some(q), Some(d)) => Some(QuantizeOptions::from_dataset(&self.run_split(d, obs)?, q)),
        };
        Ok(ExportOptions {
            probabilities: self.probabilities,
            images,
            arch: self.arch.clone(),
            classes: self.classes.clone(),
            quantize,
        })
    }

    /// `data` split into training and validation images as the run that wrote the weights
    /// split it.
    fn run_split(&self, data: &Path, obs: &mut dyn Observer) -> Result<Dataset, ExportError> {
        let recorded = run_state::recorded_split(&self.weights);
        let defaults = Hyper::default();
        let (val_fraction, seed, val_dir) = match &recorded {
            Some(r) => (r.val_fraction, r.seed, r.val_dir.as_deref()),
            None => (defaults.val_fraction, defaults.seed, defaults.val_dir.as_deref()),
        };
        // Unreadable files are left to the gate, which skips them.
        let ds =
            dataset::scan(data, &ScanOptions { val_fraction, seed, val_dir, check: &|_| Ok(FileNotes::default()) })?;
        let split = ds.describe_split();
        match &recorded {
            Some(r) => {
                obs.info(&format!("validation split from {}: {split}", r.source.display()));
                let same =
                    |a: &Path, b: &Path| a.canonicalize().ok().zip(b.canonicalize().ok()).is_none_or(|(a, b)| a == b);
                if let Some(trained) = r.data.as_deref().filter(|t| !same(t, data)) {
                    obs.warn(&format!(
                        "the run trained on {}, not {}: its validation images may not be these",
                        trained.display(),
                        data.display()
                    ));
                }
            }
            None => obs.info(&format!(
                "validation split: {split} (the defaults: no {LAST} or {SUMMARY} of the run beside {})",
                self.weights.display()
            )),
        }
        Ok(ds)
    }
}

/// `train export`: [`export_checkpoint`] with the options of `req` ([`ExportRequest::options`]).
pub fn export_from_folder(req: &ExportRequest, obs: &mut dyn Observer) -> Result<ExportReport, ExportError> {
    export_checkpoint(&req.weights, &req.out, &req.options(obs)?)
}

/// Where the int8 model of `out` goes: `model.onnx` → `model.int8.onnx`.
pub fn int8_path(out: &Path) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    out.with_file_name(format!("{stem}.int8.onnx"))
}

/// Calibrates, quantizes and gates the int8 model of `model` (whose float export is at
/// `fp32`), and writes it beside it when the gate passes (or `force`).
fn export_int8(
    model: &ResNet,
    meta: &ModelMetadata,
    fp32: &Path,
    probabilities: bool,
    q: &QuantizeOptions,
) -> Result<Int8Report, ExportError> {
    if q.classes != meta.classes {
        return Err(QuantizeError::ClassesDiffer { data: q.classes.clone(), model: meta.classes.clone() }.into());
    }
    let float = onnx_model(model, meta, probabilities)?;
    let (inputs, used) = preprocessed(&q.calibration_images, &meta.preprocess, usize::MAX);
    if used == 0 {
        return Err(QuantizeError::NoCalibrationImage.into());
    }
    let side = meta.preprocess.crop_size as usize;
    let tensors = quantize::calibrated_tensors(&float);
    let measured = quantize::calibrate(&float, &tensors, &inputs, side)?;
    let (mut int8, method, error) = quantize::best_quantized(&float, &measured, q.calibration, &inputs, side)?;
    let out = int8_path(fp32);
    let write_err = |source| ExportError::Write { path: out.clone(), source };

    // The gate compares the two models as deployed, on the validation images.
    let mut trial = AtomicFile::create(&out).map_err(write_err)?;
    std::io::Write::write_all(trial.file(), &int8.encode_to_vec()).map_err(write_err)?;
    let gate = compare(fp32, trial.temp_path(), &q.validation, &meta.preprocess)?;
    drop(trial);
    let quantization = infer::Quantization {
        scheme: "int8 QDQ: per-channel symmetric int8 weights, per-tensor uint8 activations".into(),
        calibration: match q.calibration {
            Calibration::Auto => {
                format!("{method} (auto; mean |logit difference| {error:.4} on the calibration images)")
            }
            _ => format!("{method} (mean |logit difference| {error:.4} on the calibration images)"),
        },
        calibration_images: used,
        validation_images: gate.images,
        fp32_accuracy: gate.fp32_accuracy,
        int8_accuracy: gate.int8_accuracy,
        top1_agreement: gate.agreement,
    };
    let passed =
        gate.fp32_accuracy - gate.int8_accuracy <= MAX_ACCURACY_DROP + 1e-12 && gate.agreement >= MIN_AGREEMENT;
    if !passed && !q.force {
        return Err(ExportError::GateRefused {
            quantization,
            max_drop: MAX_ACCURACY_DROP,
            min_agreement: MIN_AGREEMENT,
        });
    }
    let meta = ModelMetadata { quantization: Some(quantization.clone()), ..meta.clone() };
    int8.metadata_props =
        meta.to_props().into_iter().map(|(key, value)| StringStringEntryProto { key, value }).collect();
    let bytes = int8.encode_to_vec();
    let mut file = AtomicFile::create(&out).map_err(write_err)?;
    std::io::Write::write_all(file.file(), &bytes).map_err(write_err)?;
    file.commit().map_err(write_err)?;
    Ok(Int8Report { path: out, bytes: bytes.len(), quantization, passed })
}

/// Top-1 of the float and int8 models on labelled images.
struct Gate {
    images: usize,
    fp32_accuracy: f64,
    int8_accuracy: f64,
    agreement: f64,
}

/// Runs both models on the validation images, each decoded and preprocessed once,
/// [`GATE_CHUNK`] at a time; unreadable images are left out.
fn compare(
    fp32: &Path,
    int8: &Path,
    images: &[(PathBuf, usize)],
    preprocess: &PreprocessConfig,
) -> Result<Gate, ExportError> {
    let build = |model: &Path| Classifier::builder(model).execution_provider(ExecutionProvider::Cpu).build();
    let (a, b) = (build(fp32)?, build(int8)?);
    let top1 = |c: &Classifier, input: &[f32]| -> Result<Vec<usize>, ExportError> {
        Ok(c.predictions(&c.run(input)?).into_iter().map(|p| p.class_index).collect())
    };
    // (truth, fp32's top-1, int8's top-1) per readable image.
    let mut rows: Vec<(usize, usize, usize)> = Vec::with_capacity(images.len());
    for chunk in images.chunks(GATE_CHUNK) {
        let prepared: Vec<(usize, Vec<f32>)> = chunk
            .par_iter()
            .filter_map(|(path, truth)| {
                infer::prepare_file(path, preprocess, infer::DecodeLimits::default()).ok().map(|x| (*truth, x.input))
            })
            .collect();
        if prepared.is_empty() {
            continue;
        }
        let input: Vec<f32> = prepared.iter().flat_map(|(_, x)| x.iter().copied()).collect();
        let (x, y) = (top1(&a, &input)?, top1(&b, &input)?);
        rows.extend(prepared.iter().zip(x.into_iter().zip(y)).map(|((truth, _), (x, y))| (*truth, x, y)));
    }
    if rows.is_empty() {
        return Err(QuantizeError::NoValidationImage.into());
    }
    let n = rows.len() as f64;
    let share = |f: &dyn Fn(&(usize, usize, usize)) -> bool| rows.iter().filter(|r| f(r)).count() as f64 / n;
    Ok(Gate {
        images: rows.len(),
        fp32_accuracy: share(&|r| r.0 == r.1),
        int8_accuracy: share(&|r| r.0 == r.2),
        agreement: share(&|r| r.1 == r.2),
    })
}

/// Up to `max` preprocessed images (the deployment transform) of the readable files, and how
/// many.
fn preprocessed(images: &[PathBuf], preprocess: &PreprocessConfig, max: usize) -> (Vec<f32>, usize) {
    let mut out = Vec::new();
    let mut n = 0;
    for path in images {
        if n == max {
            break;
        }
        if let Ok(t) = infer::prepare_file(path, preprocess, infer::DecodeLimits::default()).map(|p| p.input) {
            out.extend(t);
            n += 1;
        }
    }
    (out, n)
}

/// Up to [`VERIFY_IMAGES`] preprocessed images, or a seeded random batch when none decode.
fn verification_inputs(images: &[PathBuf], preprocess: &PreprocessConfig) -> (Vec<f32>, bool) {
    let (out, n) = preprocessed(images, preprocess, VERIFY_IMAGES);
    if n > 0 {
        return (out, true);
    }
    let side = i64::from(preprocess.crop_size);
    let g = Tensor::randn([4 * 3 * side * side], (Kind::Float, Device::Cpu));
    (Vec::<f32>::try_from(g).unwrap_or_default(), false)
}

/// Runs the file through ONNX Runtime and libtorch; returns the largest logit difference.
fn verify(model: &ResNet, meta: &ModelMetadata, path: &Path, inputs: &[f32]) -> Result<(f32, String), ExportError> {
    let classifier = Classifier::builder(path).execution_provider(ExecutionProvider::Cpu).build()?;
    if classifier.metadata().classes != meta.classes {
        return Err(VerifyError::ClassesReadBack.into());
    }
    let ort = classifier.run(inputs)?;
    let side = i64::from(meta.preprocess.crop_size);
    let n = (inputs.len() as i64) / (3 * side * side);
    let x = Tensor::from_slice(inputs).view([n, 3, side, side]).to_device(model.device);
    let torch = tch::no_grad(|| model.forward(&x, false)).to_device(Device::Cpu).to_kind(Kind::Float);
    let torch = Vec::<f32>::try_from(torch.flatten(0, -1))?;
    let classes = meta.classes.len();
    let max = torch.iter().zip(&ort).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let argmax = |row: &[f32]| row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
    let top1_differs = torch.chunks(classes).zip(ort.chunks(classes)).filter(|(a, b)| argmax(a) != argmax(b)).count();
    if torch.iter().chain(&ort).any(|v| !v.is_finite()) {
        return Err(VerifyError::NonFinite.into());
    }
    if max > MAX_LOGIT_DIFF || top1_differs > 0 {
        return Err(VerifyError::Disagree { max, bound: MAX_LOGIT_DIFF, top1_differs, images: n as usize }.into());
    }
    Ok((max, classifier.provider().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::by_name;

    fn meta(classes: usize) -> ModelMetadata {
        ModelMetadata {
            classes: (0..classes).map(|i| format!("c{i}")).collect(),
            preprocess: infer::PreprocessConfig::default(),
            arch: Some("resnet18".into()),
            best_val_acc: Some(0.5),
            epoch: Some(1),
            toolkit: Some(crate::checkpoint::TOOLKIT_NAME.into()),
            toolkit_version: Some(env!("CARGO_PKG_VERSION").into()),
            classes_from_defaults: false,
            quantization: None,
        }
    }

    fn inputs(n: i64) -> Vec<f32> {
        Vec::<f32>::try_from(Tensor::randn([n * 3 * 224 * 224], (Kind::Float, Device::Cpu))).unwrap()
    }

    #[test]
    fn export_verifies_and_writes() {
        tch::manual_seed(3);
        let model = ResNet::new(by_name("resnet18").unwrap(), 4, Device::Cpu);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("model.onnx");
        let report = export(&model, &meta(4), &out, true, &inputs(2), false).unwrap();
        println!("max |diff| {:e}, {} bytes", report.max_abs_diff, report.bytes);
        assert!(out.is_file());
        assert_eq!(report.images, 2);
        assert!(report.max_abs_diff <= MAX_LOGIT_DIFF);
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1);
    }

    #[test]
    fn the_gate_states_its_thresholds() {
        let quantization = infer::Quantization {
            scheme: String::new(),
            calibration: String::new(),
            calibration_images: 8,
            validation_images: 50,
            fp32_accuracy: 0.9,
            int8_accuracy: 0.8,
            top1_agreement: 0.9,
        };
        let err = ExportError::GateRefused { quantization, max_drop: MAX_ACCURACY_DROP, min_agreement: MIN_AGREEMENT };
        let msg = err.to_string();
        assert!(msg.contains("top-1 agreement 90.00% on 50 validation images"), "{msg}");
        assert!(msg.contains("may lose at most 1 point and must agree on 98%"), "{msg}");
    }

    #[test]
    fn a_file_that_disagrees_is_rejected_and_not_written() {
        tch::manual_seed(4);
        let a = ResNet::new(by_name("resnet18").unwrap(), 3, Device::Cpu);
        let b = ResNet::new(by_name("resnet18").unwrap(), 3, Device::Cpu);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.onnx");
        std::fs::write(&file, onnx_model(&a, &meta(3), false).unwrap().encode_to_vec()).unwrap();
        let err = verify(&b, &meta(3), &file, &inputs(2)).unwrap_err();
        assert!(matches!(err, ExportError::Mismatch(VerifyError::Disagree { .. })), "{err}");
        assert!(err.to_string().contains("disagree"), "{err}");
    }
}
