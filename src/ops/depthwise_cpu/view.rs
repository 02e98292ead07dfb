//! Element types and strided read-only views of candle CPU storage.

use candle_core::{bail, Layout};

/// Element types the kernels read and write. Arithmetic is always in f32.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    /// The zero value.
    const ZERO: Self;
    /// Widens to f32.
    fn to_f32(self) -> f32;
    /// Rounds from f32.
    fn from_f32(v: f32) -> Self;
}

impl Elem for f32 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Elem for half::f16 {
    const ZERO: Self = half::f16::ZERO;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
}

impl Elem for half::bf16 {
    const ZERO: Self = half::bf16::ZERO;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
}

/// A read-only 4-D view of a CPU storage with arbitrary strides, checked once to lie within it.
pub(crate) struct View<'a, T> {
    pub(super) data: &'a [T],
    pub(super) start: usize,
    pub(super) dims: [usize; 4],
    pub(super) strides: [usize; 4],
}

impl<'a, T: Elem> View<'a, T> {
    /// Wraps `data` as seen through `layout`; fails if the layout is not 4-D or reaches past `data`.
    pub(crate) fn new(data: &'a [T], layout: &Layout, what: &str) -> candle_core::Result<Self> {
        let (dims, strides) = match (layout.dims(), layout.stride()) {
            (&[d0, d1, d2, d3], &[s0, s1, s2, s3]) => ([d0, d1, d2, d3], [s0, s1, s2, s3]),
            (dims, _) => bail!("depthwise_conv2d: {what} must be 4-D, got shape {dims:?}"),
        };
        if dims.iter().all(|&d| d > 0) {
            let last = dims
                .iter()
                .zip(&strides)
                .try_fold(layout.start_offset(), |acc, (&d, &s)| {
                    acc.checked_add((d - 1).checked_mul(s)?)
                });
            match last {
                Some(last) if last < data.len() => {}
                _ => bail!(
                    "depthwise_conv2d: {what} layout (shape {dims:?}, strides {strides:?}, offset {}) \
                     does not fit its storage of {} elements",
                    layout.start_offset(),
                    data.len()
                ),
            }
        }
        Ok(Self {
            data,
            start: layout.start_offset(),
            dims,
            strides,
        })
    }

    /// The elements in row-major order, if the view is contiguous.
    pub(super) fn contiguous(&self) -> Option<&'a [T]> {
        let [_, c, h, w] = self.dims;
        let len = self.dims.iter().product::<usize>();
        (self.strides == [c * h * w, h * w, w, 1])
            .then(|| self.data.get(self.start..self.start + len))
            .flatten()
    }

    /// Offset of element (0, 0) of `plane` (batch-major, channel-minor). Only called for planes
    /// that exist, so `dims[1] > 0`.
    pub(super) fn plane_offset(&self, plane: usize) -> usize {
        let (b, c) = (plane / self.dims[1], plane % self.dims[1]);
        self.start + b * self.strides[0] + c * self.strides[1]
    }

    /// Row `y` of `plane`, widened to f32 into `dst` (which may be longer than the row).
    pub(super) fn read_row(&self, plane: usize, y: usize, dst: &mut [f32]) {
        let base = self.plane_offset(plane) + y * self.strides[2];
        let n = self.dims[3].min(dst.len());
        strided_copy(self.data, base, self.strides[3], &mut dst[..n]);
    }
}

/// `dst[i] = data[base + i * step]` widened to f32; the caller guarantees the indices exist.
#[inline(always)]
pub(super) fn strided_copy<T: Elem>(data: &[T], base: usize, step: usize, dst: &mut [f32]) {
    if dst.is_empty() {
        return;
    }
    if step == 1 {
        let n = dst.len();
        for (d, v) in dst.iter_mut().zip(&data[base..base + n]) {
            *d = v.to_f32();
        }
    } else {
        for (d, v) in dst.iter_mut().zip(data[base..].iter().step_by(step)) {
            *d = v.to_f32();
        }
    }
}
