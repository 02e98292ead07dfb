//! Model names (timm's, plus the short official-TF forms) → configs.
//!
//! | name | architecture | numerics |
//! |---|---|---|
//! | `b0` … `b8`, `l2`, `lite0` … `lite4`, `efficientnet-b0` … | official TF models | TF |
//! | `tf_efficientnet_b0` … `_b8`, `tf_efficientnet_l2`, `tf_efficientnet_lite0` … `4` | same | TF |
//! | `efficientnet_b0` … `_b8`, `efficientnet_l2`, `efficientnet_lite0` … `4` | same | PyTorch |
//! | `mobilenetv2_035`, `_050`, `_075`, `_100`, `_130`, `_140`, `_110d`, `_120d` | MobileNetV2 | PyTorch |
//! | `tf_mobilenetv2_035` … `_140` | MobileNetV2 (TF-slim, Keras) | TF |
//!
//! TF numerics: TF "SAME" padding, BN eps 1e-3; PyTorch numerics: symmetric padding, BN eps 1e-5
//! (see [`Convention`]). torchvision's B5-B7 are TF ports that torchvision runs with symmetric padding and
//! eps 1e-3: `efficientnet_b5` with `with_bn_eps(1e-3)`.

use super::{Convention, EfficientNetConfig, MobileNetV2Config, Padding, ResolvedNetwork, Variant};
use crate::error::{Error, Result};

/// The config of any model this crate builds.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    EfficientNet(EfficientNetConfig),
    MobileNetV2(MobileNetV2Config),
}

/// MobileNetV2 names: (suffix, width, depth, fix stem/head).
const MOBILENETV2_NAMES: [(&str, f64, f64, bool); 8] = [
    ("035", 0.35, 1.0, false),
    ("050", 0.5, 1.0, false),
    ("075", 0.75, 1.0, false),
    ("100", 1.0, 1.0, false),
    ("130", 1.3, 1.0, false),
    ("140", 1.4, 1.0, false),
    ("110d", 1.1, 1.2, true),
    ("120d", 1.2, 1.4, true),
];

/// Every name [`ModelConfig::from_name`] accepts.
pub fn model_names() -> Vec<String> {
    let mut names = Vec::new();
    for v in Variant::ALL {
        let s = v.short_name();
        names.push(s.to_string());
        names.push(v.tf_scope());
        names.push(format!("efficientnet_{s}"));
        names.push(format!("tf_efficientnet_{s}"));
    }
    for (suffix, ..) in MOBILENETV2_NAMES {
        names.push(format!("mobilenetv2_{suffix}"));
        if !suffix.ends_with('d') {
            names.push(format!("tf_mobilenetv2_{suffix}"));
        }
    }
    names
}

impl ModelConfig {
    /// The config for a model name (see the module docs for the table).
    pub fn from_name(name: &str) -> Result<Self> {
        let unknown = || Error::UnknownModel {
            name: name.to_string(),
            known: model_names().join(", "),
        };
        let variant = |s: &str| Variant::ALL.into_iter().find(|v| v.short_name() == s);
        if let Some(v) = variant(name) {
            return Ok(Self::EfficientNet(EfficientNetConfig::from_variant(v)));
        }
        let (convention, rest) = match name.strip_prefix("tf_") {
            Some(rest) => (Convention::Tf, rest),
            None => (Convention::PyTorch, name),
        };
        if let Some(s) = rest.strip_prefix("efficientnet_") {
            let v = variant(s).ok_or_else(unknown)?;
            let cfg = EfficientNetConfig::from_variant(v).with_convention(convention);
            return Ok(Self::EfficientNet(cfg));
        }
        if let Some(s) = name.strip_prefix("efficientnet-") {
            let v = variant(s).ok_or_else(unknown)?;
            return Ok(Self::EfficientNet(EfficientNetConfig::from_variant(v)));
        }
        if let Some(s) = rest.strip_prefix("mobilenetv2_") {
            let &(_, width, depth, fix) = MOBILENETV2_NAMES
                .iter()
                .find(|(suffix, .., fix)| *suffix == s && !(*fix && convention == Convention::Tf))
                .ok_or_else(unknown)?;
            let cfg = MobileNetV2Config::new(width)
                .with_depth_multiplier(depth)
                .with_fix_stem_head(fix)
                .with_convention(convention);
            return Ok(Self::MobileNetV2(cfg));
        }
        Err(unknown())
    }

    /// Validates and resolves into the flat block list.
    pub fn resolve(&self) -> Result<ResolvedNetwork> {
        match self {
            Self::EfficientNet(c) => c.resolve(),
            Self::MobileNetV2(c) => c.resolve(),
        }
    }

    /// Native input resolution.
    pub fn resolution(&self) -> usize {
        match self {
            Self::EfficientNet(c) => c.resolution,
            Self::MobileNetV2(c) => c.resolution,
        }
    }

    /// Number of classifier outputs.
    pub fn num_classes(&self) -> usize {
        match self {
            Self::EfficientNet(c) => c.num_classes,
            Self::MobileNetV2(c) => c.num_classes,
        }
    }

    /// Padding mode.
    pub fn padding(&self) -> Padding {
        match self {
            Self::EfficientNet(c) => c.padding,
            Self::MobileNetV2(c) => c.padding,
        }
    }

    /// BN epsilon.
    pub fn bn_eps(&self) -> f64 {
        match self {
            Self::EfficientNet(c) => c.bn_eps,
            Self::MobileNetV2(c) => c.bn_eps,
        }
    }

    /// Replaces the number of classifier outputs.
    #[must_use]
    pub fn with_num_classes(self, n: usize) -> Self {
        self.map(|c| c.with_num_classes(n), |c| c.with_num_classes(n))
    }

    /// Overrides the padding mode (what the weights imply is otherwise taken from the name).
    #[must_use]
    pub fn with_padding(self, p: Padding) -> Self {
        self.map(|c| c.with_padding(p), |c| c.with_padding(p))
    }

    /// Overrides the BN epsilon.
    #[must_use]
    pub fn with_bn_eps(self, eps: f64) -> Self {
        self.map(|c| c.with_bn_eps(eps), |c| c.with_bn_eps(eps))
    }

    /// Sets the BN momentum (PyTorch convention: weight of the new batch statistic).
    #[must_use]
    pub fn with_bn_momentum(self, m: f64) -> Self {
        self.map(|c| c.with_bn_momentum(m), |c| c.with_bn_momentum(m))
    }

    /// Sets the stochastic-depth rate.
    #[must_use]
    pub fn with_drop_path_rate(self, r: f64) -> Self {
        self.map(|c| c.with_drop_path_rate(r), |c| c.with_drop_path_rate(r))
    }

    /// Sets the classifier dropout.
    #[must_use]
    pub fn with_dropout_rate(self, r: f64) -> Self {
        self.map(|c| c.with_dropout_rate(r), |c| c.with_dropout_rate(r))
    }

    fn map(
        self,
        e: impl FnOnce(EfficientNetConfig) -> EfficientNetConfig,
        m: impl FnOnce(MobileNetV2Config) -> MobileNetV2Config,
    ) -> Self {
        match self {
            Self::EfficientNet(c) => Self::EfficientNet(e(c)),
            Self::MobileNetV2(c) => Self::MobileNetV2(m(c)),
        }
    }
}
