//! Models: [`EfficientNet`], [`MobileNetV2`], and the [`Network`] both are built on.

mod efficientnet;
mod mobilenetv2;
mod network;
mod wrapper;

pub use efficientnet::EfficientNet;
pub use mobilenetv2::MobileNetV2;
pub use network::{Network, MICRO_BATCH_BYTES};

use candle_nn::VarBuilder;

use crate::config::ModelConfig;
use crate::error::Result;

impl ModelConfig {
    /// Builds the network of this config (either family), taking tensors from `vb`.
    pub fn build(&self, vb: VarBuilder) -> Result<Network> {
        Network::new(&self.resolve()?, vb)
    }
}
