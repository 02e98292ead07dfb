//! Reading weight files of every public format and mapping them onto the canonical model.

pub mod raw;
pub mod torch_pickle;

pub use raw::{RawDType, RawTensor};
pub use torch_pickle::{
    looks_like_torch_legacy, looks_like_torch_zip, TorchCheckpoint, TorchFormat,
};
