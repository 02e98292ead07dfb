//! MobileNetV2 (Sandler et al., 2018, arXiv:1801.04381) configuration.
//!
//! The stage table is the paper's Table 2 (as in timm `_gen_mobilenet_v2` and TF-slim `V2_DEF`); every
//! width is multiplied by the width multiplier and rounded with [`super::make_divisible`]. The head keeps
//! 1280 channels for multipliers below 1 and grows above (TF-slim's `finegrain_classification_mode`,
//! Keras, torchvision and timm all agree).

use super::resolve::{validate_stages, Family, ScalingInput};
use super::{
    check_range, with_builders, Activation, Convention, Padding, ResolvedNetwork, StageArgs,
};
use crate::error::{Error, Result};

/// MobileNetV2's seven stages: an expand-ratio-1 block, then inverted residuals with ratio 6, no SE.
pub const MOBILENETV2_STAGES: [StageArgs; 7] = [
    StageArgs::new(1, 3, 1, 1, 32, 16).without_se(),
    StageArgs::new(2, 3, 2, 6, 16, 24).without_se(),
    StageArgs::new(3, 3, 2, 6, 24, 32).without_se(),
    StageArgs::new(4, 3, 2, 6, 32, 64).without_se(),
    StageArgs::new(3, 3, 1, 6, 64, 96).without_se(),
    StageArgs::new(3, 3, 2, 6, 96, 160).without_se(),
    StageArgs::new(1, 3, 1, 6, 160, 320).without_se(),
];

/// Everything that defines a MobileNetV2.
///
/// [`MobileNetV2Config::new`] gives PyTorch numerics (timm `mobilenetv2_*`, torchvision); TF-slim and
/// Keras weights need [`Convention::Tf`].
#[derive(Debug, Clone, PartialEq)]
pub struct MobileNetV2Config {
    /// Width multiplier (published: 0.35, 0.5, 0.75, 1.0, 1.3, 1.4).
    pub width_multiplier: f64,
    /// Depth multiplier (1.0 in the paper; timm's `mobilenetv2_110d`/`_120d` use 1.2/1.4).
    pub depth_multiplier: f64,
    /// Keep stem (32) and head (1280) widths and the first/last stage depth unscaled.
    pub fix_stem_head: bool,
    /// Input resolution the weights were trained at (96-224 for the TF-slim releases); any size works.
    pub resolution: usize,
    pub dropout_rate: f64,
    pub drop_path_rate: f64,
    pub bn_eps: f64,
    /// PyTorch convention (weight of the new batch statistic).
    pub bn_momentum: f64,
    pub padding: Padding,
    pub activation: Activation,
    pub num_classes: usize,
    pub in_channels: usize,
}

impl Default for MobileNetV2Config {
    /// MobileNetV2 1.0 at 224, PyTorch numerics.
    fn default() -> Self {
        Self::new(1.0)
    }
}

impl MobileNetV2Config {
    /// A MobileNetV2 with the given width multiplier, 224 px, PyTorch numerics, 1000 classes.
    pub fn new(width_multiplier: f64) -> Self {
        let (padding, bn_eps, bn_momentum) = Convention::PyTorch.numerics();
        Self {
            width_multiplier,
            depth_multiplier: 1.0,
            fix_stem_head: false,
            resolution: 224,
            dropout_rate: 0.2,
            drop_path_rate: 0.0,
            bn_eps,
            bn_momentum,
            padding,
            activation: Activation::Relu6,
            num_classes: 1000,
            in_channels: 3,
        }
    }

    /// Sets padding, BN eps and BN momentum from where the weights were trained.
    #[must_use]
    pub fn with_convention(mut self, c: Convention) -> Self {
        (self.padding, self.bn_eps, self.bn_momentum) = c.numerics();
        self
    }

    with_builders! {
        with_width_multiplier => width_multiplier: f64;
        with_depth_multiplier => depth_multiplier: f64;
        with_fix_stem_head => fix_stem_head: bool;
        with_resolution => resolution: usize;
        with_dropout_rate => dropout_rate: f64;
        with_drop_path_rate => drop_path_rate: f64;
        with_bn_eps => bn_eps: f64;
        /// PyTorch convention: 0.01 is TF's decay 0.99.
        with_bn_momentum => bn_momentum: f64;
        with_padding => padding: Padding;
        with_activation => activation: Activation;
        /// Number of classifier outputs (0 for a feature extractor without classifier).
        with_num_classes => num_classes: usize;
        with_in_channels => in_channels: usize;
    }

    /// Checks every value; [`Self::resolve`] calls it.
    pub fn validate(&self) -> Result<()> {
        check_range("width_multiplier", self.width_multiplier, 1e-3, 1e3, true)?;
        check_range("depth_multiplier", self.depth_multiplier, 1e-3, 1e3, true)?;
        check_range("dropout_rate", self.dropout_rate, 0.0, 1.0, false)?;
        check_range("drop_path_rate", self.drop_path_rate, 0.0, 1.0, false)?;
        check_range("bn_eps", self.bn_eps, f64::MIN_POSITIVE, 1.0, true)?;
        check_range("bn_momentum", self.bn_momentum, 0.0, 1.0, true)?;
        if self.resolution == 0 || self.in_channels == 0 {
            return Err(Error::InvalidConfig(
                "resolution and in_channels must be positive".into(),
            ));
        }
        validate_stages(&MOBILENETV2_STAGES, 32)
    }

    /// Validates and resolves into the flat list of fully scaled blocks.
    pub fn resolve(&self) -> Result<ResolvedNetwork> {
        self.validate()?;
        let mut scaling = ScalingInput {
            stages: &MOBILENETV2_STAGES,
            width: self.width_multiplier,
            depth: self.depth_multiplier,
            divisor: 8,
            min_depth: None,
            fix_first_last_repeats: self.fix_stem_head,
            stem_channels: 0,
            drop_path_rate: self.drop_path_rate,
        };
        let (stem_channels, head_channels) = if self.fix_stem_head {
            (32, 1280)
        } else {
            (
                scaling.round_filters(32),
                scaling.round_filters(1280).max(1280),
            )
        };
        scaling.stem_channels = stem_channels;
        Ok(ResolvedNetwork {
            family: Family::MobileNetV2,
            in_channels: self.in_channels,
            stem_channels,
            blocks: scaling.blocks()?,
            head_channels,
            num_classes: self.num_classes,
            activation: self.activation,
            padding: self.padding,
            bn_eps: self.bn_eps,
            bn_momentum: self.bn_momentum,
            dropout_rate: self.dropout_rate,
        })
    }
}
