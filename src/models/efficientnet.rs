//! EfficientNet B0-B8, L2, Lite0-4 and any compound-scaled member.

use std::ops::{Deref, DerefMut};

use candle_core::Tensor;
use candle_nn::{ModuleT, VarBuilder};

use super::Network;
use crate::config::EfficientNetConfig;
use crate::error::Result;

/// An EfficientNet built from an [`EfficientNetConfig`].
///
/// Dereferences to [`Network`] for `forward_features`, `forward_head`, `endpoints`, `feature_info`,
/// `reset_classifier`, `num_params`, ….
///
/// ```no_run
/// # fn main() -> effnet::Result<()> {
/// use candle_core::{DType, Device};
/// let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
/// let model = effnet::EfficientNet::b0(vb)?; // official TF B0: TF "SAME" padding, BN eps 1e-3
/// assert_eq!(model.num_params(), 5_288_548);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct EfficientNet {
    config: EfficientNetConfig,
    net: Network,
}

macro_rules! variant_models {
    ($($name:ident),*) => {
        $(
            #[doc = concat!("Builds [`EfficientNetConfig::", stringify!($name), "`] (official TF numerics).")]
            pub fn $name(vb: VarBuilder) -> Result<Self> {
                Self::new(&EfficientNetConfig::$name(), vb)
            }
        )*
    };
}

impl EfficientNet {
    /// Builds the network of `config`, taking tensors from `vb`.
    pub fn new(config: &EfficientNetConfig, vb: VarBuilder) -> Result<Self> {
        let net = Network::new(&config.resolve()?, vb)?;
        Ok(Self {
            config: config.clone(),
            net,
        })
    }

    variant_models!(b0, b1, b2, b3, b4, b5, b6, b7, b8, l2, lite0, lite1, lite2, lite3, lite4);

    /// The config it was built from.
    pub fn config(&self) -> &EfficientNetConfig {
        &self.config
    }

    /// The shared network.
    pub fn into_network(self) -> Network {
        self.net
    }
}

impl Deref for EfficientNet {
    type Target = Network;
    fn deref(&self) -> &Network {
        &self.net
    }
}

impl DerefMut for EfficientNet {
    fn deref_mut(&mut self) -> &mut Network {
        &mut self.net
    }
}

impl ModuleT for EfficientNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.net.forward_t(x, train).map_err(Into::into)
    }
}
