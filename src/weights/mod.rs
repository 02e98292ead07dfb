//! Reading weight files of every public format and mapping them onto the canonical model.

pub mod keras_h5;
pub mod raw;

pub use keras_h5::{looks_like_hdf5, KerasH5, KerasH5Layout, KerasLayer};
pub use raw::{RawDType, RawTensor};
