//! EfficientNet and MobileNetV2 for candle.

pub mod config;
pub mod error;
pub mod layers;
pub mod models;
pub mod weights;

pub use config::{EfficientNetConfig, MobileNetV2Config, ModelConfig};
pub use error::{Error, Result};
pub use models::{EfficientNet, MobileNetV2, Network};
