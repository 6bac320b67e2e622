//! `infer`: classify images with a `model.onnx` exported by `train`, on CUDA or the CPU.
//!
//! ```no_run
//! use infer::{Classifier, ExecutionProvider};
//!
//! # fn main() -> Result<(), infer::InferError> {
//! let classifier = Classifier::builder("models/model.onnx")
//!     .execution_provider(ExecutionProvider::Auto)
//!     .batch_size(16)
//!     .build()?;
//! println!("running on {}", classifier.provider());
//! for r in classifier.classify_files(vec!["ant.jpg".into(), "bee.jpg".into()]) {
//!     match &r.result {
//!         Ok(p) => println!("{}: {} ({:.1}%)", r.path.display(), p.label, 100.0 * p.confidence),
//!         Err(e) => eprintln!("{}: {e}", r.path.display()),
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The model file carries its class names and preprocessing ([`metadata`]); the crate also
//! owns that preprocessing ([`preprocess`]) and image decoding ([`decode`]), which training
//! validates with, so the two can never drift apart.

pub mod atomic;
pub mod background;
pub mod batching;
#[cfg(feature = "draw")]
pub mod canvas;
pub mod classifier;
mod contract;
pub mod cuda;
pub mod decode;
pub mod device;
pub mod doctor;
pub mod elf;
pub mod error;
pub mod evaluation;
pub mod files;
#[cfg(feature = "draw")]
pub mod gallery;
pub mod guard;
#[cfg(feature = "draw")]
pub mod job;
pub mod metadata;
pub mod prediction;
pub mod prepare;
pub mod preprocess;
pub mod probe;
pub mod provider;
pub mod records;
pub mod runtime;
#[cfg(feature = "server")]
pub mod serve;
pub mod shard;
pub mod stream;

/// The README's and docs/infer.md's library examples compile as written (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExample;

#[cfg(doctest)]
#[doc = include_str!("../../docs/infer.md")]
pub struct DocsExample;

pub use background::Background;
pub use classifier::{Classifier, ClassifierBuilder};
pub use contract::{MAX_CLASSES, MAX_FIXED_BATCH};
pub use decode::{
    decode_bytes, decode_bytes_with_status, decode_file, decode_file_with_status, DecodeError, DecodeLimits, Decoded,
};
pub use device::DeviceSpec;
pub use error::{first_line, InferError, ItemError};
pub use metadata::{ModelMetadata, Quantization};
pub use prediction::{FileResult, Prediction, Ranked, Scored};
pub use prepare::{prepare_bytes, prepare_file, prepare_image, Prepared, PreparedBatch};
pub use preprocess::{PreprocessConfig, Rect};
pub use provider::ExecutionProvider;
