//! EfficientNet (Tan & Le, 2019, arXiv:1905.11946) and EfficientNet-Lite configurations.
//!
//! The stage table and the per-variant scaling coefficients are the literal tables of the reference
//! implementation (tensorflow/tpu `efficientnet_builder.py`, `lite/efficientnet_lite_builder.py`).

use super::resolve::{validate_stages, Family, ScalingInput};
use super::{
    check_range, with_builders, Activation, Convention, Padding, ResolvedNetwork, StageArgs,
};
use crate::error::{Error, Result};

/// The seven MBConv stages shared by every EfficientNet and EfficientNet-Lite (Lite drops SE).
pub const EFFICIENTNET_STAGES: [StageArgs; 7] = [
    StageArgs::new(1, 3, 1, 1, 32, 16),
    StageArgs::new(2, 3, 2, 6, 16, 24),
    StageArgs::new(2, 5, 2, 6, 24, 40),
    StageArgs::new(3, 3, 2, 6, 40, 80),
    StageArgs::new(3, 5, 1, 6, 80, 112),
    StageArgs::new(4, 5, 2, 6, 112, 192),
    StageArgs::new(1, 3, 1, 6, 192, 320),
];

/// The published members of the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    B0,
    B1,
    B2,
    B3,
    B4,
    B5,
    B6,
    B7,
    B8,
    L2,
    Lite0,
    Lite1,
    Lite2,
    Lite3,
    Lite4,
}

impl Variant {
    /// Every variant, in order.
    pub const ALL: [Variant; 15] = [
        Variant::B0,
        Variant::B1,
        Variant::B2,
        Variant::B3,
        Variant::B4,
        Variant::B5,
        Variant::B6,
        Variant::B7,
        Variant::B8,
        Variant::L2,
        Variant::Lite0,
        Variant::Lite1,
        Variant::Lite2,
        Variant::Lite3,
        Variant::Lite4,
    ];

    /// `(width, depth, resolution, dropout)`, the reference scaling table.
    ///
    /// Lite3/Lite4 resolutions are TF's (280, 300); timm's `tf_efficientnet_lite3/4` weights are
    /// evaluated at 300 and 380, which the weight manifest records per weight set.
    pub fn scaling(self) -> (f64, f64, usize, f64) {
        match self {
            Variant::B0 => (1.0, 1.0, 224, 0.2),
            Variant::B1 => (1.0, 1.1, 240, 0.2),
            Variant::B2 => (1.1, 1.2, 260, 0.3),
            Variant::B3 => (1.2, 1.4, 300, 0.3),
            Variant::B4 => (1.4, 1.8, 380, 0.4),
            Variant::B5 => (1.6, 2.2, 456, 0.4),
            Variant::B6 => (1.8, 2.6, 528, 0.5),
            Variant::B7 => (2.0, 3.1, 600, 0.5),
            Variant::B8 => (2.2, 3.6, 672, 0.5),
            Variant::L2 => (4.3, 5.3, 800, 0.5),
            Variant::Lite0 => (1.0, 1.0, 224, 0.2),
            Variant::Lite1 => (1.0, 1.1, 240, 0.2),
            Variant::Lite2 => (1.1, 1.2, 260, 0.3),
            Variant::Lite3 => (1.2, 1.4, 280, 0.3),
            Variant::Lite4 => (1.4, 1.8, 300, 0.3),
        }
    }

    /// EfficientNet-Lite: ReLU6, no squeeze-excite, fixed stem/head and first/last stage depth.
    pub fn is_lite(self) -> bool {
        matches!(
            self,
            Variant::Lite0 | Variant::Lite1 | Variant::Lite2 | Variant::Lite3 | Variant::Lite4
        )
    }

    /// Short name: `b0` ... `b8`, `l2`, `lite0` ... `lite4`.
    pub fn short_name(self) -> &'static str {
        match self {
            Variant::B0 => "b0",
            Variant::B1 => "b1",
            Variant::B2 => "b2",
            Variant::B3 => "b3",
            Variant::B4 => "b4",
            Variant::B5 => "b5",
            Variant::B6 => "b6",
            Variant::B7 => "b7",
            Variant::B8 => "b8",
            Variant::L2 => "l2",
            Variant::Lite0 => "lite0",
            Variant::Lite1 => "lite1",
            Variant::Lite2 => "lite2",
            Variant::Lite3 => "lite3",
            Variant::Lite4 => "lite4",
        }
    }

    /// Scope name in official TF checkpoints: `efficientnet-b0`, `efficientnet-lite0`, ...
    pub fn tf_scope(self) -> String {
        format!("efficientnet-{}", self.short_name())
    }
}

/// Everything that defines an EfficientNet: stage table, compound-scaling coefficients, and the numerics
/// that depend on where the weights came from (padding, BN eps/momentum).
///
/// Constructors give the official TensorFlow models ([`Convention::Tf`]: TF "SAME" padding, BN eps 1e-3);
/// use [`EfficientNetConfig::with_convention`] for PyTorch-trained weights, or
/// [`super::ModelConfig::from_name`] with a timm name, which picks the convention from the name.
#[derive(Debug, Clone, PartialEq)]
pub struct EfficientNetConfig {
    /// Stage table before scaling.
    pub stages: Vec<StageArgs>,
    /// Channel multiplier (β^φ in the paper).
    pub width_coefficient: f64,
    /// Depth multiplier (α^φ): stage repeats become `ceil(depth * repeats)`.
    pub depth_coefficient: f64,
    /// Native input resolution (γ^φ). The model accepts any size; this is what it was designed for.
    pub resolution: usize,
    /// Dropout before the classifier (training only).
    pub dropout_rate: f64,
    /// Stochastic depth: block `i` of `n` drops its residual branch with probability `rate * i / n`.
    pub drop_path_rate: f64,
    /// Channel counts are rounded to multiples of this.
    pub depth_divisor: usize,
    /// Lower bound for rounded channel counts (defaults to `depth_divisor`).
    pub min_depth: Option<usize>,
    pub bn_eps: f64,
    /// PyTorch convention (weight of the new batch statistic): TF's decay 0.99 is 0.01.
    pub bn_momentum: f64,
    pub padding: Padding,
    pub activation: Activation,
    /// Stem width before scaling (32).
    pub stem_channels: usize,
    /// Head width before scaling (1280).
    pub head_channels: usize,
    /// Keep stem and head widths and the first/last stage depth unscaled (EfficientNet-Lite).
    pub fix_stem_head: bool,
    /// Classifier outputs (0: no classifier, the pooled features are the output).
    pub num_classes: usize,
    /// Input image channels.
    pub in_channels: usize,
}

impl Default for EfficientNetConfig {
    /// EfficientNet-B0, official TF numerics.
    fn default() -> Self {
        Self::from_variant(Variant::B0)
    }
}

macro_rules! variant_constructors {
    ($($name:ident => $variant:ident, $doc:literal;)*) => {
        $(
            #[doc = $doc]
            pub fn $name() -> Self {
                Self::from_variant(Variant::$variant)
            }
        )*
    };
}

impl EfficientNetConfig {
    /// A published variant with official TF numerics.
    pub fn from_variant(v: Variant) -> Self {
        let (width, depth, resolution, dropout) = v.scaling();
        let lite = v.is_lite();
        let stages = EFFICIENTNET_STAGES
            .iter()
            .map(|s| {
                if lite {
                    s.clone().without_se()
                } else {
                    s.clone()
                }
            })
            .collect();
        let (padding, bn_eps, bn_momentum) = Convention::Tf.numerics();
        Self {
            stages,
            width_coefficient: width,
            depth_coefficient: depth,
            resolution,
            dropout_rate: dropout,
            drop_path_rate: 0.2,
            depth_divisor: 8,
            min_depth: None,
            bn_eps,
            bn_momentum,
            padding,
            activation: if lite {
                Activation::Relu6
            } else {
                Activation::Swish
            },
            stem_channels: 32,
            head_channels: 1280,
            fix_stem_head: lite,
            num_classes: 1000,
            in_channels: 3,
        }
    }

    variant_constructors! {
        b0 => B0, "EfficientNet-B0 (224 px, 5.3 M parameters).";
        b1 => B1, "EfficientNet-B1 (240 px).";
        b2 => B2, "EfficientNet-B2 (260 px).";
        b3 => B3, "EfficientNet-B3 (300 px).";
        b4 => B4, "EfficientNet-B4 (380 px).";
        b5 => B5, "EfficientNet-B5 (456 px).";
        b6 => B6, "EfficientNet-B6 (528 px).";
        b7 => B7, "EfficientNet-B7 (600 px, 66 M parameters).";
        b8 => B8, "EfficientNet-B8 (672 px, AdvProp).";
        l2 => L2, "EfficientNet-L2 (800 px, NoisyStudent).";
        lite0 => Lite0, "EfficientNet-Lite0 (224 px, ReLU6, no SE).";
        lite1 => Lite1, "EfficientNet-Lite1 (240 px).";
        lite2 => Lite2, "EfficientNet-Lite2 (260 px).";
        lite3 => Lite3, "EfficientNet-Lite3 (280 px).";
        lite4 => Lite4, "EfficientNet-Lite4 (300 px).";
    }

    /// A member that follows the paper's compound scaling exactly: depth `α^φ`, width `β^φ`, resolution
    /// `224·γ^φ` (rounded to a multiple of 8) with α = 1.2, β = 1.1, γ = 1.15, and dropout
    /// `min(0.5, 0.2 + 0.05·φ)`. The published B1-B7 deviate slightly from this rule (see
    /// [`Variant::scaling`]); use this for members that do not exist yet, e.g. `compound(0.5)`.
    pub fn compound(phi: f64) -> Self {
        let resolution = ((224.0 * 1.15f64.powf(phi) / 8.0).round() as usize * 8).max(8);
        Self::scaled(1.1f64.powf(phi), 1.2f64.powf(phi), resolution)
            .with_dropout_rate((0.2 + 0.05 * phi).clamp(0.0, 0.5))
    }

    /// Any (width, depth, resolution) on the B0 stage table, official TF numerics, dropout 0.2.
    pub fn scaled(width: f64, depth: f64, resolution: usize) -> Self {
        Self {
            width_coefficient: width,
            depth_coefficient: depth,
            resolution,
            ..Self::b0()
        }
    }

    /// Sets padding, BN eps and BN momentum from where the weights were trained.
    #[must_use]
    pub fn with_convention(mut self, c: Convention) -> Self {
        (self.padding, self.bn_eps, self.bn_momentum) = c.numerics();
        self
    }

    with_builders! {
        /// Replaces the stage table.
        with_stages => stages: Vec<StageArgs>;
        with_width_coefficient => width_coefficient: f64;
        with_depth_coefficient => depth_coefficient: f64;
        with_resolution => resolution: usize;
        with_dropout_rate => dropout_rate: f64;
        with_drop_path_rate => drop_path_rate: f64;
        with_depth_divisor => depth_divisor: usize;
        with_min_depth => min_depth: Option<usize>;
        with_bn_eps => bn_eps: f64;
        /// PyTorch convention: 0.01 is TF's decay 0.99.
        with_bn_momentum => bn_momentum: f64;
        with_padding => padding: Padding;
        with_activation => activation: Activation;
        with_stem_channels => stem_channels: usize;
        with_head_channels => head_channels: usize;
        with_fix_stem_head => fix_stem_head: bool;
        /// Number of classifier outputs (0 for a feature extractor without classifier).
        with_num_classes => num_classes: usize;
        with_in_channels => in_channels: usize;
    }

    /// Checks every value; [`Self::resolve`] calls it.
    pub fn validate(&self) -> Result<()> {
        validate_stages(&self.stages, self.stem_channels)?;
        check_range("width_coefficient", self.width_coefficient, 1e-3, 1e3, true)?;
        check_range("depth_coefficient", self.depth_coefficient, 1e-3, 1e3, true)?;
        check_range("dropout_rate", self.dropout_rate, 0.0, 1.0, false)?;
        check_range("drop_path_rate", self.drop_path_rate, 0.0, 1.0, false)?;
        check_range("bn_eps", self.bn_eps, f64::MIN_POSITIVE, 1.0, true)?;
        check_range("bn_momentum", self.bn_momentum, 0.0, 1.0, true)?;
        let positive = [
            ("resolution", self.resolution),
            ("depth_divisor", self.depth_divisor),
            ("stem_channels", self.stem_channels),
            ("head_channels", self.head_channels),
            ("in_channels", self.in_channels),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::InvalidConfig(format!("{name} must be positive")));
            }
        }
        Ok(())
    }

    /// Validates and resolves into the flat list of fully scaled blocks.
    pub fn resolve(&self) -> Result<ResolvedNetwork> {
        self.validate()?;
        let mut scaling = ScalingInput {
            stages: &self.stages,
            width: self.width_coefficient,
            depth: self.depth_coefficient,
            divisor: self.depth_divisor,
            min_depth: self.min_depth,
            fix_first_last_repeats: self.fix_stem_head,
            stem_channels: 0,
            drop_path_rate: self.drop_path_rate,
        };
        let scale = |c: usize| {
            if self.fix_stem_head {
                c
            } else {
                scaling.round_filters(c)
            }
        };
        let (stem_channels, head_channels) = (scale(self.stem_channels), scale(self.head_channels));
        scaling.stem_channels = stem_channels;
        Ok(ResolvedNetwork {
            family: Family::EfficientNet,
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
