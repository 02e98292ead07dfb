//! Image input: decoding, the exact evaluation preprocessing of a weight set, ImageNet labels and
//! labelled folder datasets.
//!
//! Most "accuracy does not match the paper" reports come from here, not from the network:
//! the resize filter, the crop fraction, the per-variant resolution, the normalisation and the label
//! order. This module reproduces the reference pipeline (timm / torchvision on PIL images) exactly:
//!
//! - [`image`]: JPEG/PNG/WebP/GIF/BMP to 8-bit RGB like PIL's `convert("RGB")`, EXIF orientation;
//! - [`resize`]: Pillow's resampling (bicubic, bilinear, nearest), bit-exact in 8 bits;
//! - [`transforms`]: [`Preprocess`], the resize → center crop → `/255` → normalise transform;
//! - [`labels`]: the 1000 ImageNet classes with synset ids, TF-slim's 1001-class variant;
//! - [`augment`]: seeded training augmentation (random resized crop, flip, rotation) and batches;
//! - [`datasets`]: ImageNet val / ImageNetV2 / ground-truth-file / class-folder lists, a seeded split,
//!   and a parallel batch loader that reports unreadable files instead of stopping;
//! - [`public`]: Cats vs Dogs, CIFAR-10 and Stanford Dogs by name from their publishers, and any
//!   Hugging Face hub image-classification dataset by repository id, unpacked into class folders.
//!
//! ```no_run
//! use effnet::data::{ImageList, Interpolation, Preprocess};
//!
//! # fn main() -> effnet::Result<()> {
//! let pre = Preprocess::imagenet(224, 0.875, Interpolation::Bicubic); // EfficientNet-B0
//! println!("{pre}");
//! let val = ImageList::imagenet_v2("imagenetv2-matched-frequency-format-val")?;
//! for batch in val.batches(&pre, 64)? {
//!     let batch = batch?;
//!     for (path, err) in &batch.failed {
//!         eprintln!("skipped {}: {err}", path.display());
//!     }
//!     // model.forward_t(&batch.images, false)? ...
//! }
//! # Ok(())
//! # }
//! ```

pub mod augment;
pub mod datasets;
pub mod image;
pub mod labels;
pub mod public;
pub mod resize;
pub mod transforms;

pub use self::augment::{Augment, AugmentRng, TrainBatches};
pub use self::datasets::{Batch, Batches, ImageList, Sample};
pub use self::image::{decode_rgb, load_rgb, load_rgb_with, DecodeOptions};
pub use self::labels::{
    imagenet_class, imagenet_classes, synset_to_index, ImageNetClass, LabelSpace,
};
pub use self::public::{HubDataset, PreparedDataset, PublicDataset};
pub use self::resize::Interpolation;
pub use self::transforms::{Geometry, Preprocess, Resize};
pub use ::image::RgbImage;
