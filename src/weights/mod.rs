//! Reading weight files of every public format and mapping them onto the canonical model.

pub mod raw;

pub use raw::{RawDType, RawTensor};
