//! Activations: swish (SiLU), ReLU6, ReLU. One implementation each, used for training and inference.

use candle_core::Tensor;

use crate::config::Activation;
use crate::error::Result;

impl Activation {
    /// Applies the activation.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Swish => x.silu()?,
            Activation::Relu6 => x.relu()?.minimum(6.0)?,
            Activation::Relu => x.relu()?,
        })
    }
}
