//! Tensor operations that candle lacks or runs too slowly for EfficientNet and MobileNetV2.
//!
//! - [`depthwise`]: depthwise 2-D convolution (`groups == channels`). candle 0.11 runs a grouped
//!   convolution as one convolution per group followed by a `cat` (`candle-core/src/conv.rs`,
//!   `conv2d_with_algo`), so a 1152-channel depthwise layer becomes 1152 tiny convolutions.
//!   This module provides a dedicated CPU kernel and a device-generic formulation instead.
//! - [`affine_act()`]: `act(x · scale + shift)` per channel in one pass (eval batch norm + activation,
//!   folded bias + activation, the squeeze-excite gate), with a vectorisable `exp` for swish.
//! - [`pointwise_conv_affine_act`]: 1x1 convolution with the folded BN + activation applied to each
//!   output tile while it is in cache (inference).
//! - [`channel_mean_var`]: training batch norm's per-channel statistics, differentiable, without
//!   candle's element-by-element reduction over `(0, 2, 3)`.

pub mod affine_act;
pub mod channel_stats;
pub mod depthwise;
mod depthwise_cpu;
pub mod pointwise;

pub use affine_act::{affine_act, Act};
pub use channel_stats::channel_mean_var;
pub use depthwise::{
    depthwise_conv2d, depthwise_conv2d_affine_act, depthwise_conv2d_shifted, Pad2d,
};
pub use pointwise::pointwise_conv_affine_act;
