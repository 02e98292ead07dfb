//! MobileNetV2, the comparator the EfficientNet paper and its reproductions measure against.

use candle_nn::VarBuilder;

use super::wrapper::model_wrapper;
use crate::config::MobileNetV2Config;
use crate::error::Result;

model_wrapper!(
    /// A MobileNetV2 built from a [`MobileNetV2Config`]; tensor names are timm's (`mobilenetv2_100`),
    /// the same layout as [`super::EfficientNet`] without squeeze-excite. Dereferences to
    /// [`super::Network`].
    MobileNetV2,
    MobileNetV2Config
);

impl MobileNetV2 {
    /// MobileNetV2 with the given width multiplier (PyTorch numerics, 1000 classes).
    pub fn with_width(width_multiplier: f64, vb: VarBuilder) -> Result<Self> {
        Self::new(&MobileNetV2Config::new(width_multiplier), vb)
    }
}
