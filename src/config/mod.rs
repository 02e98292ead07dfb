//! Architecture as data: stage tables, scaling coefficients, and the resolved block list.
//!
//! [`EfficientNetConfig`] and [`MobileNetV2Config`] hold everything that decides the shape and the
//! numerics of a network. [`EfficientNetConfig::resolve`] / [`MobileNetV2Config::resolve`] turn a config
//! into a [`ResolvedNetwork`]: the flat list of fully scaled blocks that the model builder, feature info,
//! parameter/MAC counts and every weight-name map iterate. It is the single source of truth for the
//! architecture.

mod counts;
mod efficientnet;
mod mobilenetv2;
mod names;
mod resolve;
mod stage;

pub use counts::{conv_output_size, Counts};
pub use efficientnet::{EfficientNetConfig, Variant};
pub use mobilenetv2::MobileNetV2Config;
pub use names::{model_names, ModelConfig};
pub use resolve::{make_divisible, Family, FeatureInfo, ResolvedBlock, ResolvedNetwork};
pub use stage::StageArgs;

use crate::error::{Error, Result};

/// How convolutions pad their input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Padding {
    /// PyTorch style: `(k - 1) / 2` on every side. What PyTorch-trained weights (timm `efficientnet_*`,
    /// `mobilenetv2_*`, torchvision) expect.
    #[default]
    Symmetric,
    /// TensorFlow "SAME": output size `ceil(in / stride)`, padding computed from each layer's actual input,
    /// the odd pixel at the bottom/right (asymmetric for stride 2 on even inputs). What TF-trained weights
    /// (official checkpoints, Keras, timm `tf_*`) expect.
    Same,
}

impl std::str::FromStr for Padding {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "symmetric" | "pytorch" => Ok(Padding::Symmetric),
            "same" | "tf" => Ok(Padding::Same),
            _ => Err(Error::InvalidConfig(format!(
                "padding `{s}`: expected `same` or `symmetric`"
            ))),
        }
    }
}

impl std::fmt::Display for Padding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Padding::Symmetric => "symmetric",
            Padding::Same => "same",
        })
    }
}

/// Non-linearity used after the stem, expand, depthwise and head convolutions (and inside SE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Activation {
    /// `x * sigmoid(x)` (a.k.a. SiLU): EfficientNet B0-B8, L2.
    #[default]
    Swish,
    /// `min(max(x, 0), 6)`: EfficientNet-Lite and MobileNetV2.
    Relu6,
    /// `max(x, 0)`.
    Relu,
}

/// Checks a value is finite and inside `[lo, hi)` (or `[lo, hi]` when `inclusive`).
pub(crate) fn check_range(name: &str, v: f64, lo: f64, hi: f64, inclusive: bool) -> Result<()> {
    let ok = v.is_finite() && v >= lo && if inclusive { v <= hi } else { v < hi };
    if ok {
        Ok(())
    } else {
        let close = if inclusive { ']' } else { ')' };
        Err(Error::InvalidConfig(format!(
            "{name} = {v} must be in [{lo}, {hi}{close}"
        )))
    }
}

/// The numerics that come with where weights were trained: padding, BN eps and BN momentum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Convention {
    /// TensorFlow-trained (official checkpoints, Keras, timm `tf_*`): TF "SAME" padding, BN eps 1e-3,
    /// BN decay 0.99 (momentum 0.01).
    Tf,
    /// PyTorch-trained (timm `efficientnet_*`/`mobilenetv2_*`, torchvision B0-B4 and MobileNetV2):
    /// symmetric padding, BN eps 1e-5, momentum 0.1. (torchvision B5-B7 are TF ports run with symmetric
    /// padding but eps 1e-3: use `Convention::PyTorch` and `with_bn_eps(1e-3)`.)
    PyTorch,
}

impl Convention {
    /// `(padding, bn_eps, bn_momentum)` of the convention.
    pub fn numerics(self) -> (Padding, f64, f64) {
        match self {
            Convention::Tf => (Padding::Same, 1e-3, 0.01),
            Convention::PyTorch => (Padding::Symmetric, 1e-5, 0.1),
        }
    }
}

/// Generates documented `with_*` builder methods for public config fields.
macro_rules! with_builders {
    ($($(#[$doc:meta])* $name:ident => $field:ident: $ty:ty;)*) => {
        $(
            $(#[$doc])*
            #[must_use]
            pub fn $name(mut self, value: $ty) -> Self {
                self.$field = value;
                self
            }
        )*
    };
}
pub(crate) use with_builders;
