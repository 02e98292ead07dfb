//! The layer set: padding, convolutions, batch norm, activations, squeeze-excite, MBConv, drop-path.
//!
//! Every layer takes its numerics (padding mode, BN eps/momentum, activation) from the resolved config,
//! never from the weight file, and its tensors from a [`candle_nn::VarBuilder`] under timm's names.

mod activation;
mod conv;
mod drop_path;
mod mbconv;
mod norm;
mod padding;
mod squeeze_excite;

pub(crate) use conv::map_same_shape;
pub use conv::{Conv2d, ConvBnAct, ConvLayer, DepthwiseConv2d};
pub use drop_path::drop_path;
pub use mbconv::MBConv;
pub use norm::BatchNorm2d;
pub use padding::{same_padding, Pad2d};
pub use squeeze_excite::SqueezeExcite;
