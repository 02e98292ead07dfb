//! EfficientNet B0-B8, L2, Lite0-4 and any compound-scaled member.

use candle_nn::VarBuilder;

use super::wrapper::model_wrapper;
use crate::config::EfficientNetConfig;
use crate::error::Result;

model_wrapper!(
    /// An EfficientNet built from an [`EfficientNetConfig`].
    ///
    /// Dereferences to [`super::Network`] for `forward_features`, `forward_head`, `endpoints`, `feature_info`,
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
    EfficientNet,
    EfficientNetConfig
);

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
    variant_models!(b0, b1, b2, b3, b4, b5, b6, b7, b8, l2, lite0, lite1, lite2, lite3, lite4);
}
