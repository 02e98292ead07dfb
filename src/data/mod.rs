//! Image input: decoding and the exact evaluation preprocessing of a weight set.
//!
//! Most "accuracy does not match the paper" reports come from here, not from the network:
//! the resize filter, the crop fraction, the per-variant resolution, the normalisation and the label
//! order. This module reproduces the reference pipeline (timm / torchvision on PIL images) exactly:
//!
//! - [`image`]: JPEG/PNG/WebP/GIF/BMP to 8-bit RGB like PIL's `convert("RGB")`, EXIF orientation;
//! - [`resize`]: Pillow's resampling (bicubic, bilinear, nearest), bit-exact in 8 bits;
//! - [`transforms`]: [`Preprocess`], the resize → center crop → `/255` → normalise transform.

pub mod image;
pub mod resize;
pub mod transforms;

pub use self::image::{decode_rgb, load_rgb, load_rgb_with, DecodeOptions};
pub use self::resize::Interpolation;
pub use self::transforms::{Geometry, Preprocess, Resize};
pub use ::image::RgbImage;
