//! What a `model.onnx` says about itself in its `metadata_props`: class names and the
//! preprocessing it expects. The exporter writes these keys and the classifier reads them, so
//! a model file is all a deployment needs.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::preprocess::{Interpolation, PreprocessConfig};

/// Version of this set of keys. Readers reject files from a newer version.
pub const METADATA_VERSION: u32 = 2;
/// The version written for models without a background colour: readers of version 1 read
/// them right. A model with one says version 2, so that a reader that would drop its alpha
/// refuses it instead of classifying differently from training.
const METADATA_VERSION_WITHOUT_BACKGROUND: u32 = 1;

/// The keys, as written into `ModelProto.metadata_props`.
pub mod keys {
    pub const METADATA_VERSION: &str = "metadata_version";
    pub const TOOLKIT: &str = "toolkit";
    pub const TOOLKIT_VERSION: &str = "toolkit_version";
    pub const ARCH: &str = "arch";
    /// JSON array of class names, in output index order.
    pub const CLASSES: &str = "classes";
    pub const NUM_CLASSES: &str = "num_classes";
    /// Side of the square model input (the centre crop).
    pub const INPUT_SIZE: &str = "input_size";
    /// The shorter image side is resized to this before the centre crop.
    pub const RESIZE_SIZE: &str = "resize_size";
    pub const INTERPOLATION: &str = "interpolation";
    pub const ANTIALIAS: &str = "antialias";
    /// JSON arrays of three numbers, applied after scaling pixels to [0, 1].
    pub const MEAN: &str = "mean";
    pub const STD: &str = "std";
    pub const CHANNEL_ORDER: &str = "channel_order";
    pub const LAYOUT: &str = "layout";
    pub const BEST_VAL_ACC: &str = "best_val_acc";
    pub const EPOCH: &str = "epoch";
    /// JSON object: how an int8 model was quantized and how it measured (see [`super::Quantization`]).
    pub const QUANTIZATION: &str = "quantization";
    /// `#rrggbb`: transparent images are composited onto this colour (version 2).
    pub const BACKGROUND: &str = "background";
}

/// How an int8 model was made from its float one, and how the two compared on the validation
/// images when it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantization {
    /// E.g. `int8 QDQ: per-channel symmetric int8 weights, per-tensor uint8 activations`.
    pub scheme: String,
    /// How activation ranges were measured, e.g. `percentile 99.999`.
    pub calibration: String,
    pub calibration_images: usize,
    pub validation_images: usize,
    /// Top-1 accuracy of the float model and of this one on those images.
    pub fp32_accuracy: f64,
    pub int8_accuracy: f64,
    /// Fraction of those images given the same class by both.
    pub top1_agreement: f64,
}

/// A labels file (`infer --labels FILE`) that cannot be read.
#[derive(Debug, Error)]
pub enum LabelsError {
    #[error("{path}: cannot read the labels file: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("{0}: no class names in the labels file (one name per line)")]
    Empty(std::path::PathBuf),
}

/// The class names in a labels file: one per line, in output order (a final line break and
/// Windows line ends are allowed; blank lines are not names).
pub fn read_labels(path: &std::path::Path) -> Result<Vec<String>, LabelsError> {
    let text = std::fs::read_to_string(path).map_err(|source| LabelsError::Io { path: path.to_path_buf(), source })?;
    let labels: Vec<String> =
        text.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
    if labels.is_empty() {
        return Err(LabelsError::Empty(path.to_path_buf()));
    }
    Ok(labels)
}

#[derive(Debug, Clone, Error, PartialEq)]
#[error("metadata key '{key}': {reason}")]
pub struct MetadataError {
    pub key: String,
    pub reason: String,
}

/// Everything `infer` needs to know about a model besides its graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// Class names in output index order.
    pub classes: Vec<String>,
    pub preprocess: PreprocessConfig,
    pub arch: Option<String>,
    pub best_val_acc: Option<f64>,
    pub epoch: Option<u64>,
    pub toolkit: Option<String>,
    pub toolkit_version: Option<String>,
    /// True when the file carried no class names (they are then `class_0`, `class_1`, ...).
    pub classes_from_defaults: bool,
    /// Present for an int8 model made by `train export --quantize int8`.
    #[serde(default)]
    pub quantization: Option<Quantization>,
}

impl ModelMetadata {
    /// The key/value pairs to store in the model file.
    pub fn to_props(&self) -> Vec<(String, String)> {
        fn json<T: Serialize + ?Sized>(v: &T) -> String {
            serde_json::to_string(v).expect("plain values serialise")
        }
        let p = &self.preprocess;
        let mut props = vec![
            (keys::METADATA_VERSION, self.version().to_string()),
            (keys::CLASSES, json(&self.classes[..])),
            (keys::NUM_CLASSES, self.classes.len().to_string()),
            (keys::INPUT_SIZE, p.crop_size.to_string()),
            (keys::RESIZE_SIZE, p.resize_size.to_string()),
            (keys::INTERPOLATION, p.interpolation.as_str().to_string()),
            (keys::ANTIALIAS, p.antialias.to_string()),
            (keys::MEAN, json(&p.mean)),
            (keys::STD, json(&p.std)),
            (keys::CHANNEL_ORDER, "RGB".to_string()),
            (keys::LAYOUT, "NCHW".to_string()),
        ];
        let optional = [
            (keys::TOOLKIT, self.toolkit.clone()),
            (keys::TOOLKIT_VERSION, self.toolkit_version.clone()),
            (keys::ARCH, self.arch.clone()),
            (keys::BEST_VAL_ACC, self.best_val_acc.map(|a| a.to_string())),
            (keys::EPOCH, self.epoch.map(|e| e.to_string())),
            (keys::QUANTIZATION, self.quantization.as_ref().map(json)),
            (keys::BACKGROUND, p.background.map(|b| b.to_string())),
        ];
        props.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        props.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// The oldest metadata version that holds everything this model needs.
    pub fn version(&self) -> u32 {
        match self.preprocess.background {
            Some(_) => METADATA_VERSION,
            None => METADATA_VERSION_WITHOUT_BACKGROUND,
        }
    }

    /// Reads the keys through `get`; absent preprocessing keys take the seed's ImageNet
    /// defaults and absent class names become `class_<i>` for `num_outputs` outputs.
    pub fn from_props(get: &dyn Fn(&str) -> Option<String>, num_outputs: Option<usize>) -> Result<Self, MetadataError> {
        let err = |key: &str, reason: String| MetadataError { key: key.to_string(), reason };
        fn parse<T: serde::de::DeserializeOwned>(key: &str, v: &str) -> Result<T, MetadataError> {
            serde_json::from_str(v).map_err(|e| MetadataError { key: key.to_string(), reason: format!("'{v}': {e}") })
        }
        if let Some(v) = get(keys::METADATA_VERSION) {
            let version: u32 = parse(keys::METADATA_VERSION, &v)?;
            if version > METADATA_VERSION {
                return Err(err(
                    keys::METADATA_VERSION,
                    format!("version {version} is newer than this reader's {METADATA_VERSION}"),
                ));
            }
        }
        let defaults = PreprocessConfig::default();
        let mut p = defaults.clone();
        if let Some(v) = get(keys::INPUT_SIZE) {
            p.crop_size = parse(keys::INPUT_SIZE, &v)?;
        }
        if let Some(v) = get(keys::RESIZE_SIZE) {
            p.resize_size = parse(keys::RESIZE_SIZE, &v)?;
        }
        if let Some(v) = get(keys::INTERPOLATION) {
            p.interpolation = match v.as_str() {
                "bilinear" => Interpolation::Bilinear,
                other => return Err(err(keys::INTERPOLATION, format!("'{other}' is not supported (only bilinear)"))),
            };
        }
        if let Some(v) = get(keys::ANTIALIAS) {
            p.antialias = parse(keys::ANTIALIAS, &v)?;
        }
        if let Some(v) = get(keys::MEAN) {
            p.mean = parse(keys::MEAN, &v)?;
        }
        if let Some(v) = get(keys::STD) {
            p.std = parse(keys::STD, &v)?;
        }
        if let Some(v) = get(keys::BACKGROUND) {
            p.background =
                Some(v.parse().map_err(|e: crate::background::BackgroundError| err(keys::BACKGROUND, e.to_string()))?);
        }
        if let Some(v) = get(keys::CHANNEL_ORDER) {
            if v != "RGB" {
                return Err(err(keys::CHANNEL_ORDER, format!("'{v}' is not supported (only RGB)")));
            }
        }
        if let Some(v) = get(keys::LAYOUT) {
            if v != "NCHW" {
                return Err(err(keys::LAYOUT, format!("'{v}' is not supported (only NCHW)")));
            }
        }
        p.validate().map_err(|e| err("preprocessing", e.to_string()))?;

        let (classes, classes_from_defaults) = match get(keys::CLASSES) {
            Some(v) => (parse::<Vec<String>>(keys::CLASSES, &v)?, false),
            None => ((0..num_outputs.unwrap_or(0)).map(|i| format!("class_{i}")).collect(), true),
        };
        if let Some(v) = get(keys::NUM_CLASSES) {
            let n: usize = parse(keys::NUM_CLASSES, &v)?;
            if !classes_from_defaults && n != classes.len() {
                return Err(err(keys::NUM_CLASSES, format!("{n}, but {} class names are listed", classes.len())));
            }
        }
        let number = |key: &str| -> Result<Option<f64>, MetadataError> { get(key).map(|v| parse(key, &v)).transpose() };
        Ok(ModelMetadata {
            classes,
            preprocess: p,
            arch: get(keys::ARCH),
            best_val_acc: number(keys::BEST_VAL_ACC)?,
            epoch: get(keys::EPOCH).map(|v| parse(keys::EPOCH, &v)).transpose()?,
            toolkit: get(keys::TOOLKIT),
            toolkit_version: get(keys::TOOLKIT_VERSION),
            classes_from_defaults,
            quantization: get(keys::QUANTIZATION).map(|v| parse(keys::QUANTIZATION, &v)).transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn meta() -> ModelMetadata {
        ModelMetadata {
            classes: vec!["ants".into(), "bees".into()],
            preprocess: PreprocessConfig::default(),
            arch: Some("resnet18".into()),
            best_val_acc: Some(0.94),
            epoch: Some(7),
            toolkit: Some("t".into()),
            toolkit_version: Some("0.1.0".into()),
            classes_from_defaults: false,
            quantization: None,
        }
    }

    fn read(props: &HashMap<String, String>, n: Option<usize>) -> Result<ModelMetadata, MetadataError> {
        ModelMetadata::from_props(&|k| props.get(k).cloned(), n)
    }

    #[test]
    fn round_trip() {
        let props: HashMap<String, String> = meta().to_props().into_iter().collect();
        assert_eq!(props["classes"], r#"["ants","bees"]"#);
        assert_eq!(props["mean"], "[0.485,0.456,0.406]");
        assert_eq!(read(&props, Some(2)).unwrap(), meta());
    }

    #[test]
    fn quantization_round_trips() {
        let q = Quantization {
            scheme: "int8 QDQ".into(),
            calibration: "percentile 99.999".into(),
            calibration_images: 300,
            validation_images: 153,
            fp32_accuracy: 0.93,
            int8_accuracy: 0.92,
            top1_agreement: 0.99,
        };
        let m = ModelMetadata { quantization: Some(q), ..meta() };
        let props: HashMap<String, String> = m.to_props().into_iter().collect();
        assert!(props["quantization"].contains("\"calibration\":\"percentile 99.999\""));
        assert_eq!(read(&props, Some(2)).unwrap(), m);
    }

    #[test]
    fn a_background_round_trips_and_raises_the_version() {
        assert_eq!(meta().to_props().iter().find(|(k, _)| k == "metadata_version").unwrap().1, "1");
        let mut m = meta();
        m.preprocess.background = Some(crate::Background([0x33, 0x66, 0x99]));
        let props: HashMap<String, String> = m.to_props().into_iter().collect();
        assert_eq!((props["background"].as_str(), props["metadata_version"].as_str()), ("#336699", "2"));
        assert_eq!(read(&props, Some(2)).unwrap(), m);
        let mut bad = props.clone();
        bad.insert("background".into(), "teal".into());
        assert_eq!(read(&bad, Some(2)).unwrap_err().key, "background");
    }

    #[test]
    fn defaults_when_absent() {
        let m = read(&HashMap::new(), Some(3)).unwrap();
        assert_eq!(m.classes, ["class_0", "class_1", "class_2"]);
        assert!(m.classes_from_defaults);
        assert_eq!(m.preprocess, PreprocessConfig::default());
    }

    #[test]
    fn rejects_bad_values() {
        let bad = |k: &str, v: &str| {
            let mut props: HashMap<String, String> = meta().to_props().into_iter().collect();
            props.insert(k.into(), v.into());
            read(&props, Some(2)).unwrap_err()
        };
        assert_eq!(bad("mean", "[1,2]").key, "mean");
        assert_eq!(bad("interpolation", "bicubic").key, "interpolation");
        assert_eq!(bad("num_classes", "3").key, "num_classes");
        assert_eq!(bad("metadata_version", "99").key, "metadata_version");
        assert_eq!(bad("classes", "ants,bees").key, "classes");
        assert_eq!(bad("std", "[0,1,1]").key, "preprocessing");
    }
}
