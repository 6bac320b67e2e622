//! `infer`: classify images with a `model.onnx` exported by `train`.
//!
//! This crate also owns the deployment preprocessing ([`preprocess`]) and image decoding
//! ([`decode`]): training validates with exactly the same code, so the two can never drift apart.

pub mod decode;
pub mod preprocess;

pub use decode::{decode_bytes, decode_file, DecodeError, DecodeLimits};
pub use preprocess::{PreprocessConfig, Rect};
