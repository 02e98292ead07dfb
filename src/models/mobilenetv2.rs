//! MobileNetV2, the comparator the EfficientNet paper and its reproductions measure against.

use std::ops::{Deref, DerefMut};

use candle_core::Tensor;
use candle_nn::{ModuleT, VarBuilder};

use super::Network;
use crate::config::MobileNetV2Config;
use crate::error::Result;

/// A MobileNetV2 built from a [`MobileNetV2Config`]; tensor names are timm's (`mobilenetv2_100`), the
/// same layout as [`super::EfficientNet`] without squeeze-excite. Dereferences to [`Network`].
#[derive(Debug, Clone)]
pub struct MobileNetV2 {
    config: MobileNetV2Config,
    net: Network,
}

impl MobileNetV2 {
    /// Builds the network of `config`, taking tensors from `vb`.
    pub fn new(config: &MobileNetV2Config, vb: VarBuilder) -> Result<Self> {
        let net = Network::new(&config.resolve()?, vb)?;
        Ok(Self {
            config: config.clone(),
            net,
        })
    }

    /// MobileNetV2 with the given width multiplier (PyTorch numerics, 1000 classes).
    pub fn with_width(width_multiplier: f64, vb: VarBuilder) -> Result<Self> {
        Self::new(&MobileNetV2Config::new(width_multiplier), vb)
    }

    /// The config it was built from.
    pub fn config(&self) -> &MobileNetV2Config {
        &self.config
    }

    /// The shared network.
    pub fn into_network(self) -> Network {
        self.net
    }
}

impl Deref for MobileNetV2 {
    type Target = Network;
    fn deref(&self) -> &Network {
        &self.net
    }
}

impl DerefMut for MobileNetV2 {
    fn deref_mut(&mut self) -> &mut Network {
        &mut self.net
    }
}

impl ModuleT for MobileNetV2 {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.net.forward_t(x, train).map_err(Into::into)
    }
}
