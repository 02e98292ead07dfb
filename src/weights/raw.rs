//! Format-neutral tensors as read from a file, before any name mapping or layout transform.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// Element type of a tensor as stored in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RawDType {
    Bool,
    U8,
    I8,
    I16,
    I32,
    I64,
    F16,
    BF16,
    F32,
    F64,
}

impl RawDType {
    /// Size of one element in bytes.
    pub fn size_in_bytes(self) -> usize {
        match self {
            RawDType::Bool | RawDType::U8 | RawDType::I8 => 1,
            RawDType::I16 | RawDType::F16 | RawDType::BF16 => 2,
            RawDType::I32 | RawDType::F32 => 4,
            RawDType::I64 | RawDType::F64 => 8,
        }
    }

    /// Whether the type holds floating-point values (the only ones model weights may have).
    pub fn is_float(self) -> bool {
        matches!(
            self,
            RawDType::F16 | RawDType::BF16 | RawDType::F32 | RawDType::F64
        )
    }
}

impl std::fmt::Display for RawDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// A dense tensor read from a weight file: row-major (C order), little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub dtype: RawDType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl RawTensor {
    /// Builds a tensor, checking that `data` holds exactly `shape` elements of `dtype`.
    pub fn new(
        dtype: RawDType,
        shape: Vec<usize>,
        data: Vec<u8>,
        file: &str,
        name: &str,
    ) -> Result<Self> {
        let expected = shape.iter().product::<usize>() * dtype.size_in_bytes();
        if data.len() != expected {
            return Err(Error::format(
                file,
                format!(
                    "tensor `{name}` of dtype {dtype} and shape {shape:?} needs {expected} bytes, found {}",
                    data.len()
                ),
            ));
        }
        Ok(Self { dtype, shape, data })
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// Converts to a candle tensor of the requested float dtype on `device`.
    ///
    /// Only floating-point tensors convert; anything else is [`Error::UnsupportedDType`].
    pub fn to_tensor(
        &self,
        dtype: DType,
        device: &Device,
        file: &str,
        name: &str,
    ) -> Result<Tensor> {
        let src = match self.dtype {
            RawDType::F16 => DType::F16,
            RawDType::BF16 => DType::BF16,
            RawDType::F32 => DType::F32,
            RawDType::F64 => DType::F64,
            other => {
                return Err(Error::UnsupportedDType {
                    file: file.to_string(),
                    tensor: name.to_string(),
                    dtype: other.to_string(),
                })
            }
        };
        let t = Tensor::from_raw_buffer(&self.data, src, &self.shape, &Device::Cpu)?;
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }
}
