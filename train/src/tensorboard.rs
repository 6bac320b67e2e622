//! TensorBoard event files, written without TensorFlow: a TFRecord stream (length, masked
//! CRC-32C of the length, data, masked CRC-32C of the data) of `tensorboard.Event` protocol
//! buffers — what PyTorch's `SummaryWriter` writes — with scalars, PNG images, Markdown text and
//! the hparams plugin's experiment and session records.
//!
//! `tensorboard --logdir models` then shows a run's curves, pictures, settings and summary.
//! Each process writes its own file (`events.out.tfevents.<time>.<host>.<pid>.train`); a resumed
//! run adds a file beside the first and continues its steps, and TensorBoard joins them into
//! the same curves.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use image::RgbImage;
use prost::Message;

/// The protocol buffers written, with TensorBoard's field numbers
/// (tensorboard/compat/proto/event.proto, summary.proto, tensor.proto and the hparams plugin's
/// plugin_data.proto and api.proto).
pub mod proto {
    use std::collections::BTreeMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Event {
        #[prost(double, tag = "1")]
        pub wall_time: f64,
        #[prost(int64, tag = "2")]
        pub step: i64,
        #[prost(string, optional, tag = "3")]
        pub file_version: Option<String>,
        #[prost(message, optional, tag = "5")]
        pub summary: Option<Summary>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Summary {
        #[prost(message, repeated, tag = "1")]
        pub value: Vec<Value>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Value {
        #[prost(string, tag = "1")]
        pub tag: String,
        #[prost(message, optional, tag = "9")]
        pub metadata: Option<SummaryMetadata>,
        #[prost(float, optional, tag = "2")]
        pub simple_value: Option<f32>,
        #[prost(message, optional, tag = "4")]
        pub image: Option<Image>,
        #[prost(message, optional, tag = "8")]
        pub tensor: Option<TensorProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Image {
        #[prost(int32, tag = "1")]
        pub height: i32,
        #[prost(int32, tag = "2")]
        pub width: i32,
        #[prost(int32, tag = "3")]
        pub colorspace: i32,
        #[prost(bytes = "vec", tag = "4")]
        pub encoded_image_string: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SummaryMetadata {
        #[prost(message, optional, tag = "1")]
        pub plugin_data: Option<PluginData>,
        /// `DataClass`: 1 scalar, 2 tensor, 3 blob sequence.
        #[prost(int32, tag = "4")]
        pub data_class: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PluginData {
        #[prost(string, tag = "1")]
        pub plugin_name: String,
        #[prost(bytes = "vec", tag = "2")]
        pub content: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorProto {
        /// `DataType`: 7 is `DT_STRING`.
        #[prost(int32, tag = "1")]
        pub dtype: i32,
        #[prost(message, optional, tag = "2")]
        pub tensor_shape: Option<TensorShapeProto>,
        #[prost(bytes = "vec", repeated, tag = "8")]
        pub string_val: Vec<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorShapeProto {
        #[prost(message, repeated, tag = "2")]
        pub dim: Vec<Dim>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dim {
        #[prost(int64, tag = "1")]
        pub size: i64,
    }

    /// The hparams plugin's content (`tensorboard.hparams.HParamsPluginData`).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HParamsPluginData {
        #[prost(int32, tag = "1")]
        pub version: i32,
        #[prost(message, optional, tag = "2")]
        pub experiment: Option<Experiment>,
        #[prost(message, optional, tag = "3")]
        pub session_start_info: Option<SessionStartInfo>,
        #[prost(message, optional, tag = "4")]
        pub session_end_info: Option<SessionEndInfo>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Experiment {
        #[prost(double, tag = "3")]
        pub time_created_secs: f64,
        #[prost(message, repeated, tag = "4")]
        pub hparam_infos: Vec<HParamInfo>,
        #[prost(message, repeated, tag = "5")]
        pub metric_infos: Vec<MetricInfo>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HParamInfo {
        #[prost(string, tag = "1")]
        pub name: String,
        /// `DataType`: 1 string, 2 bool, 3 float64.
        #[prost(int32, tag = "4")]
        pub r#type: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MetricInfo {
        #[prost(message, optional, tag = "1")]
        pub name: Option<MetricName>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MetricName {
        #[prost(string, tag = "1")]
        pub group: String,
        #[prost(string, tag = "2")]
        pub tag: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SessionStartInfo {
        #[prost(btree_map = "string, message", tag = "1")]
        pub hparams: BTreeMap<String, ProtoValue>,
        #[prost(double, tag = "5")]
        pub start_time_secs: f64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SessionEndInfo {
        /// `Status`: 1 success, 2 failure.
        #[prost(int32, tag = "1")]
        pub status: i32,
        #[prost(double, tag = "2")]
        pub end_time_secs: f64,
    }

    /// `google.protobuf.Value`, the three kinds hparams take.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ProtoValue {
        #[prost(double, optional, tag = "2")]
        pub number_value: Option<f64>,
        #[prost(string, optional, tag = "3")]
        pub string_value: Option<String>,
        #[prost(bool, optional, tag = "4")]
        pub bool_value: Option<bool>,
    }
}

use proto::*;

/// A hyper-parameter's value, as the hparams dashboard shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum HParam {
    Number(f64),
    Text(String),
    Flag(bool),
}

impl HParam {
    fn proto(&self) -> ProtoValue {
        match self {
            HParam::Number(v) => ProtoValue { number_value: Some(*v), ..Default::default() },
            HParam::Text(v) => ProtoValue { string_value: Some(v.clone()), ..Default::default() },
            HParam::Flag(v) => ProtoValue { bool_value: Some(*v), ..Default::default() },
        }
    }

    fn data_type(&self) -> i32 {
        match self {
            HParam::Text(_) => 1,
            HParam::Flag(_) => 2,
            HParam::Number(_) => 3,
        }
    }

    /// Flattens JSON settings into hparams: nested keys joined with `.`, lists as text.
    pub fn flatten(v: &serde_json::Value) -> BTreeMap<String, HParam> {
        fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, HParam>) {
            let key = |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        walk(&key(k), v, out);
                    }
                }
                serde_json::Value::Number(n) => {
                    out.insert(prefix.to_string(), HParam::Number(n.as_f64().unwrap_or(f64::NAN)));
                }
                serde_json::Value::Bool(b) => {
                    out.insert(prefix.to_string(), HParam::Flag(*b));
                }
                serde_json::Value::String(s) => {
                    out.insert(prefix.to_string(), HParam::Text(s.clone()));
                }
                serde_json::Value::Null => {}
                other => {
                    out.insert(prefix.to_string(), HParam::Text(other.to_string()));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk("", v, &mut out);
        out
    }
}

/// CRC-32C (Castagnoli), as TFRecord frames use it.
fn crc32c(data: &[u8]) -> u32 {
    const fn table() -> [u32; 256] {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    }
    static TABLE: [u32; 256] = table();
    !data.iter().fold(!0u32, |c, &b| TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8))
}

/// TFRecord's masked CRC, so that CRCs of CRCs do not look like data.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xA282_EAD8)
}

/// One TFRecord frame around `data`.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The tags of the hparams plugin's three records, as `SummaryWriter.add_hparams` writes them.
const EXPERIMENT_TAG: &str = "_hparams_/experiment";
const SESSION_START_TAG: &str = "_hparams_/session_start_info";
const SESSION_END_TAG: &str = "_hparams_/session_end_info";

/// An event file being written.
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// Starts a new event file in `dir` (created if missing).
    pub fn create(dir: &Path) -> std::io::Result<EventWriter> {
        std::fs::create_dir_all(dir)?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
            .unwrap_or_else(|| "localhost".into());
        let secs = now() as u64;
        // The first free name: two writers of one process in one second get their own files.
        let path = (0..)
            .map(|n| dir.join(format!("events.out.tfevents.{secs}.{host}.{}.{n}.train", std::process::id())))
            .find(|p| !p.exists())
            .expect("an unused name");
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        let mut w = EventWriter { out: BufWriter::new(file), path };
        w.event(Event { wall_time: now(), step: 0, file_version: Some("brain.Event:2".into()), summary: None })?;
        w.out.flush()?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn event(&mut self, e: Event) -> std::io::Result<()> {
        self.out.write_all(&record(&e.encode_to_vec()))
    }

    fn values(&mut self, step: i64, value: Vec<Value>) -> std::io::Result<()> {
        let summary = Some(Summary { value });
        self.event(Event { wall_time: now(), step, file_version: None, summary })
    }

    /// A point of the curve `tag`.
    pub fn scalar(&mut self, tag: &str, step: i64, value: f64) -> std::io::Result<()> {
        let v = Value { tag: tag.into(), simple_value: Some(value as f32), ..Default::default() };
        self.values(step, vec![v])
    }

    /// A picture, stored as PNG.
    pub fn image(&mut self, tag: &str, step: i64, img: &RgbImage) -> std::io::Result<()> {
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).map_err(std::io::Error::other)?;
        let image =
            Image { height: img.height() as i32, width: img.width() as i32, colorspace: 3, encoded_image_string: png };
        self.values(step, vec![Value { tag: tag.into(), image: Some(image), ..Default::default() }])
    }

    /// Markdown text, for the text dashboard.
    pub fn text(&mut self, tag: &str, step: i64, markdown: &str) -> std::io::Result<()> {
        let metadata = SummaryMetadata {
            plugin_data: Some(PluginData { plugin_name: "text".into(), content: Vec::new() }),
            data_class: 2,
        };
        let tensor = TensorProto {
            dtype: 7,
            tensor_shape: Some(TensorShapeProto { dim: Vec::new() }),
            string_val: vec![markdown.as_bytes().to_vec()],
        };
        self.values(
            step,
            vec![Value { tag: tag.into(), metadata: Some(metadata), tensor: Some(tensor), ..Default::default() }],
        )
    }

    fn hparams_record(&mut self, tag: &str, data: HParamsPluginData) -> std::io::Result<()> {
        let metadata = SummaryMetadata {
            plugin_data: Some(PluginData { plugin_name: "hparams".into(), content: data.encode_to_vec() }),
            data_class: 0,
        };
        self.values(0, vec![Value { tag: tag.into(), metadata: Some(metadata), ..Default::default() }])
    }

    /// The run's settings for the hparams dashboard, with the scalar tags that are its metrics
    /// (`SummaryWriter.add_hparams`' experiment and session start).
    pub fn hparams(&mut self, hparams: &BTreeMap<String, HParam>, metrics: &[&str]) -> std::io::Result<()> {
        let experiment = Experiment {
            time_created_secs: now(),
            hparam_infos: hparams.iter().map(|(k, v)| HParamInfo { name: k.clone(), r#type: v.data_type() }).collect(),
            metric_infos: metrics
                .iter()
                .map(|m| MetricInfo { name: Some(MetricName { group: String::new(), tag: (*m).into() }) })
                .collect(),
        };
        self.hparams_record(EXPERIMENT_TAG, HParamsPluginData { experiment: Some(experiment), ..Default::default() })?;
        let start = SessionStartInfo {
            hparams: hparams.iter().map(|(k, v)| (k.clone(), v.proto())).collect(),
            start_time_secs: now(),
        };
        self.hparams_record(
            SESSION_START_TAG,
            HParamsPluginData { session_start_info: Some(start), ..Default::default() },
        )
    }

    /// The end of the hparams session: finished (`true`) or stopped.
    pub fn hparams_end(&mut self, success: bool) -> std::io::Result<()> {
        let end = SessionEndInfo { status: if success { 1 } else { 2 }, end_time_secs: now() };
        self.hparams_record(SESSION_END_TAG, HParamsPluginData { session_end_info: Some(end), ..Default::default() })
    }

    /// Writes what is buffered, so that TensorBoard sees it now.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_frames() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        let r = record(b"abc");
        assert_eq!(r.len(), 3 + 16);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
    }

    #[test]
    fn settings_flatten_into_hparams() {
        let v = serde_json::json!({"arch": "resnet18", "optim": {"lr": 0.001, "betas": [0.9, 0.999]}, "amp": false, "x": null});
        let h = HParam::flatten(&v);
        assert_eq!(h["arch"], HParam::Text("resnet18".into()));
        assert_eq!(h["optim.lr"], HParam::Number(0.001));
        assert_eq!(h["optim.betas"], HParam::Text("[0.9,0.999]".into()));
        assert_eq!(h["amp"], HParam::Flag(false));
        assert!(!h.contains_key("x"));
    }
}
