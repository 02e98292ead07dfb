//! EfficientNet and MobileNetV2 for candle.

pub mod error;
pub mod ops;
pub mod weights;

pub use error::{Error, Result};
