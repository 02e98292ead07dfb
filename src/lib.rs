#![doc = include_str!("../README.md")]
//!
//! ## Crate layout
//!
//! - [`config`]: stage tables, scaling, [`config::ResolvedNetwork`], counts, model names.
//! - [`layers`]: padding, convolutions, batch norm, activations, squeeze-excite, MBConv, drop-path.
//! - [`models`]: [`EfficientNet`], [`MobileNetV2`] and the shared [`Network`].
//! - [`ops`]: custom ops (the depthwise convolution kernel).
//! - [`weights`]: weight-file readers, name maps, strict loading.
//! - [`data`]: image decoding, the exact eval preprocessing of a weight set, ImageNet labels, datasets.
//! - [`train`]: fine-tuning (pretrained backbone, new head, freezing, optimizers, training loop).
//! - [`eval`]: top-k predictions, accuracy over labelled image lists, device choice.
//! - [`error`]: the crate's [`Error`].

pub mod config;
pub mod data;
pub mod error;
pub mod eval;
mod fs_util;
pub mod layers;
pub mod models;
pub mod ops;
pub mod train;
pub mod weights;

pub use config::{EfficientNetConfig, MobileNetV2Config, ModelConfig};
pub use error::{Error, Result};
pub use models::{EfficientNet, MobileNetV2, Network};
