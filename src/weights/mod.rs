//! Reading weight files of every public format and mapping them onto the canonical model.
//!
//! A weight file goes through three steps, each in one place:
//! 1. [`file::open`] detects the format from the bytes and reads format-neutral [`RawTensor`]s;
//! 2. a [`Naming`] scheme, detected from the tensor names, gives every canonical tensor (from
//!    [`canonical::layers`], derived from the resolved block list) its source key and [`Layout`];
//! 3. [`load::map_tensors`] checks strictly (missing, unused, shape-mismatched tensors are errors),
//!    transforms layouts and hands the canonical tensors to the model through a `VarBuilder`.

pub mod canonical;
pub mod file;
#[cfg(feature = "download")]
pub mod hub;
pub mod keras_h5;
pub mod layout;
pub mod load;
pub mod manifest;
pub mod naming;
pub mod pretrained;
pub mod raw;
pub mod tf_checkpoint;
pub mod torch_pickle;

pub use file::Format;
pub use keras_h5::{looks_like_hdf5, KerasH5, KerasH5Layout, KerasLayer};
pub use layout::Layout;
pub use load::{load_network, load_weights, LoadOptions, LoadReport, LoadedWeights};
pub use manifest::{Manifest, WeightSet};
pub use naming::Naming;
#[cfg(feature = "download")]
pub use pretrained::from_pretrained;
pub use pretrained::{load_weight_set, weight_set, Pretrained};
pub use raw::{RawDType, RawTensor};
pub use tf_checkpoint::{looks_like_tf_index, TfCheckpoint};
pub use torch_pickle::{
    looks_like_torch_legacy, looks_like_torch_zip, TorchCheckpoint, TorchFormat,
};
