//! `train`: fine-tune ResNet image classifiers with libtorch (through tch) on a folder of
//! labelled images, keeping the best model as a torchvision-compatible `best.pt`.
//!
//! The binary is a thin layer over [`trainer::run`] and [`export::export_from_folder`], with
//! its settings in [`config`]; the modules each do one thing.

pub mod amp;
pub mod arch;
pub mod augment;
pub mod autoaugment;
pub mod board;
pub mod checkpoint;
pub mod cleaning;
pub mod config;
#[cfg(feature = "cli")]
pub mod console;
pub mod cpu_features;
pub mod dataset;
pub mod ddp;
pub mod device;
pub mod dist;
pub mod doctor;
pub mod ema;
pub mod error;
pub mod export;
pub mod loader;
pub mod loss;
pub mod lr_find;
pub mod mix;
pub mod model;
pub mod onnx_proto;
pub mod optim;
pub mod pickle;
pub mod plot;
pub mod quantize;
pub(crate) mod recipes;
pub mod report;
pub mod run_state;
pub mod sampler;
pub mod schedule;
pub mod shard;
pub mod steps;
pub mod stopping;
pub mod sweep;
pub mod tensorboard;
pub mod torch_file;
pub mod trainer;
pub mod weights;

pub use config::{
    ExportSettings, Hyper, Mode, Observer, QuantizeKind, QuantizeSettings, StopFlag, TrainConfig, WeightsSource,
};
pub use error::TrainError;
pub use trainer::run;
