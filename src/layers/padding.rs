//! Padding: PyTorch-symmetric and TensorFlow "SAME", computed per input.

use candle_core::Tensor;

use crate::config::Padding;
use crate::error::Result;
pub use crate::ops::Pad2d;

/// TF "SAME" padding along one axis: `(before, after)` with output size `ceil(input / stride)` and the
/// odd pixel after (bottom/right), as TensorFlow computes it.
pub fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let total = ((out.saturating_sub(1)) * stride + kernel).saturating_sub(input);
    (total / 2, total - total / 2)
}

impl Pad2d {
    /// Padding of a `kernel` x `kernel` convolution with `stride` on an `h` x `w` input.
    ///
    /// Symmetric mode pads `(kernel - 1) / 2` everywhere. Same mode is computed from this input, so it
    /// is right for any size (TF pads stride-2 layers asymmetrically on even inputs, symmetrically on
    /// odd ones).
    pub fn for_conv(mode: Padding, h: usize, w: usize, kernel: usize, stride: usize) -> Self {
        match mode {
            Padding::Symmetric => Self::uniform((kernel - 1) / 2),
            Padding::Same => {
                let (top, bottom) = same_padding(h, kernel, stride);
                let (left, right) = same_padding(w, kernel, stride);
                Self {
                    top,
                    bottom,
                    left,
                    right,
                }
            }
        }
    }

    /// `Some(p)` if every side is padded by `p`.
    pub fn as_uniform(&self) -> Option<usize> {
        let p = self.top;
        (self.bottom == p && self.left == p && self.right == p).then_some(p)
    }

    /// Pads an NCHW tensor with zeros.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let x = if self.top + self.bottom > 0 {
            x.pad_with_zeros(2, self.top, self.bottom)?
        } else {
            x.clone()
        };
        Ok(if self.left + self.right > 0 {
            x.pad_with_zeros(3, self.left, self.right)?
        } else {
            x
        })
    }
}
