//! Layout transforms from a source's tensor layout to the canonical (PyTorch, NCHW) one.

use candle_core::{DType, Device, Tensor};

use super::RawTensor;
use crate::error::Result;

/// How a source stores a tensor relative to the canonical layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Same layout.
    Identity,
    /// TF convolution kernel `[kh, kw, in, out]` → `[out, in, kh, kw]` (permute 3, 2, 0, 1).
    Hwio,
    /// TF depthwise kernel `[kh, kw, C, 1]` → `[C, 1, kh, kw]` (permute 2, 3, 0, 1). Transposing it
    /// like a normal convolution gives the right shape and wrong values, a classic converter bug.
    Depthwise,
    /// TF dense kernel `[in, out]` → `[out, in]`.
    Dense,
    /// TF-slim logits: a 1x1 conv `[1, 1, features, classes]` (weights) or `[classes]` (biases) with
    /// the background class at index 0, which is dropped unless kept on request.
    SlimLogits,
}

impl Layout {
    /// The shape the source must have for a canonical tensor of `shape`.
    pub fn source_shape(self, shape: &[usize], drop_background: bool) -> Vec<usize> {
        let extra = usize::from(drop_background);
        match (self, shape) {
            (Layout::Hwio | Layout::Depthwise, [o, i, kh, kw]) => match self {
                Layout::Hwio => vec![*kh, *kw, *i, *o],
                _ => vec![*kh, *kw, *o, *i],
            },
            (Layout::Dense, [o, i]) => vec![*i, *o],
            (Layout::SlimLogits, [n, f]) => vec![1, 1, *f, n + extra],
            (Layout::SlimLogits, [n]) => vec![n + extra],
            _ => shape.to_vec(),
        }
    }

    /// Converts a source tensor (already checked to have [`Self::source_shape`]) to the canonical layout,
    /// contiguous, in `dtype` on `device`.
    pub fn apply(
        self,
        raw: &RawTensor,
        drop_background: bool,
        dtype: DType,
        device: &Device,
        file: &str,
        name: &str,
    ) -> Result<Tensor> {
        // Transforms run in f32 on the CPU; the final cast and copy go to the target.
        let t = raw.to_tensor(DType::F32, &Device::Cpu, file, name)?;
        let skip = usize::from(drop_background);
        let t = match self {
            Layout::Identity => t,
            Layout::Hwio => t.permute((3, 2, 0, 1))?,
            Layout::Depthwise => t.permute((2, 3, 0, 1))?,
            Layout::Dense => t.t()?,
            Layout::SlimLogits if t.rank() == 4 => {
                let (_, _, f, n) = t.dims4()?;
                t.reshape((f, n))?.t()?.narrow(0, skip, n - skip)?
            }
            Layout::SlimLogits => {
                let n = t.dim(0)?;
                t.narrow(0, skip, n - skip)?
            }
        };
        Ok(t.contiguous()?.to_dtype(dtype)?.to_device(device)?)
    }
}
