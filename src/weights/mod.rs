//! Reading weight files of every public format and mapping them onto the canonical model.

pub mod raw;
pub mod tf_checkpoint;

pub use raw::{RawDType, RawTensor};
pub use tf_checkpoint::{looks_like_tf_index, TfCheckpoint};
