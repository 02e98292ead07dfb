//! Depthwise 2-D convolution: one `KH x KW` filter per channel (`groups == channels`), the core
//! of the depthwise-separable convolution of MobileNet (Howard et al. 2017, "MobileNets:
//! Efficient Convolutional Neural Networks for Mobile Vision Applications", arXiv:1704.04861,
//! section 3.1) and of the MBConv block of EfficientNet (Tan & Le 2019, arXiv:1905.11946).
//!
//! For an input `x: [B, C, H, W]`, weights `w: [C, 1, KH, KW]`, stride `(sh, sw)` and zero
//! padding `(top, bottom, left, right)`:
//!
//! ```text
//! y[b, c, i, j] = sum_{ky < KH, kx < KW} w[c, 0, ky, kx] * xp[b, c, i*sh + ky, j*sw + kx]
//! OH = (H + top + bottom - KH) / sh + 1,   OW = (W + left + right - KW) / sw + 1
//! ```
//!
//! where `xp` is `x` with `top` zero rows above, `bottom` below, `left` zero columns before and
//! `right` after. This is PyTorch's `conv2d(..., groups=C)` on the padded input. Padding is given
//! per side because TensorFlow's "SAME" padding is asymmetric (the extra row and column go at the
//! bottom and right) whenever its total is odd, e.g. `k = 3, s = 2` on an even input
//! (`tf.nn.convolution` documentation, "padding").
//!
//! Two implementations, both without one convolution per channel (candle 0.11 `conv2d` with
//! `groups > 1` runs `groups` separate convolutions and concatenates them):
//! - [`depthwise_conv2d`] on the CPU, and on CUDA with the `cuda` feature, with f32, f16 or bf16
//!   runs a dedicated kernel (a candle custom op; `depthwise_cpu/mod.rs` and `cuda/kernels.cu`
//!   describe how they work) whose backward pass is two more dedicated kernels. f16 and bf16
//!   accumulate in f32.
//! - [`depthwise_conv2d_shifted`] works on every device and dtype with tensor ops only: the
//!   input is padded once, then each of the `KH * KW` taps adds a strided view of it times that
//!   tap's per-channel weight. candle differentiates it like any other tensor expression.
//!   [`depthwise_conv2d`] uses it on Metal and for f64.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

use super::affine_act::{affine_act, Act};
use super::depthwise_cpu::{self, View};
use super::pointwise::{pointwise_f32, Pointwise};

/// Zero padding on each side of a 2-D input, `(top, bottom, left, right)`: TF "SAME" is
/// asymmetric for stride 2 on even inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pad2d {
    /// Zero rows added above the input.
    pub top: usize,
    /// Zero rows added below the input.
    pub bottom: usize,
    /// Zero columns added before (left of) the input.
    pub left: usize,
    /// Zero columns added after (right of) the input.
    pub right: usize,
}

impl Pad2d {
    /// The same padding `p` on all four sides (PyTorch's `padding=p`).
    pub fn uniform(p: usize) -> Self {
        Self {
            top: p,
            bottom: p,
            left: p,
            right: p,
        }
    }
}

/// Validated sizes of one depthwise convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) batch: usize,
    pub(crate) channels: usize,
    pub(crate) in_h: usize,
    pub(crate) in_w: usize,
    pub(crate) k_h: usize,
    pub(crate) k_w: usize,
    pub(crate) stride_h: usize,
    pub(crate) stride_w: usize,
    pub(crate) pad: Pad2d,
    pub(crate) out_h: usize,
    pub(crate) out_w: usize,
}

impl Geometry {
    /// Checks the shapes of `x` and `w`, the stride and the padding, and computes the output size.
    pub(crate) fn new(
        x: &[usize],
        w: &[usize],
        stride: (usize, usize),
        pad: Pad2d,
    ) -> candle_core::Result<Self> {
        let &[batch, channels, in_h, in_w] = x else {
            bail!("depthwise_conv2d: input must be [B, C, H, W], got shape {x:?}")
        };
        let &[w_c, w_1, k_h, k_w] = w else {
            bail!("depthwise_conv2d: weight must be [C, 1, KH, KW], got shape {w:?}")
        };
        if w_1 != 1 || w_c != channels {
            bail!(
                "depthwise_conv2d: weight must be [C, 1, KH, KW] with C = {channels} (the input's \
                 channels, input shape {x:?}), got shape {w:?}"
            )
        }
        if k_h == 0 || k_w == 0 {
            bail!("depthwise_conv2d: kernel size must be at least 1x1, got weight shape {w:?}")
        }
        let (stride_h, stride_w) = stride;
        if stride_h == 0 || stride_w == 0 {
            bail!("depthwise_conv2d: stride must be at least 1, got {stride:?}")
        }
        let out_h = out_size("height", in_h, pad.top, pad.bottom, k_h, stride_h)?;
        let out_w = out_size("width", in_w, pad.left, pad.right, k_w, stride_w)?;
        let elems = [batch, channels, out_h, out_w]
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if elems.is_none() {
            bail!(
                "depthwise_conv2d: output [{batch}, {channels}, {out_h}, {out_w}] has too many elements"
            )
        }
        Ok(Self {
            batch,
            channels,
            in_h,
            in_w,
            k_h,
            k_w,
            stride_h,
            stride_w,
            pad,
            out_h,
            out_w,
        })
    }

    /// Output dimensions `[B, C, OH, OW]`.
    pub(crate) fn out_dims(&self) -> [usize; 4] {
        [self.batch, self.channels, self.out_h, self.out_w]
    }

    /// Input dimensions `[B, C, H, W]`.
    pub(crate) fn in_dims(&self) -> [usize; 4] {
        [self.batch, self.channels, self.in_h, self.in_w]
    }

    /// Weight dimensions `[C, 1, KH, KW]`.
    pub(crate) fn w_dims(&self) -> [usize; 4] {
        [self.channels, 1, self.k_h, self.k_w]
    }

    /// Number of `H x W` planes, `B * C`.
    pub(crate) fn planes(&self) -> usize {
        self.batch * self.channels
    }
}

/// `(len + before + after - k) / stride + 1`, or an error if the padded length is shorter than `k`.
fn out_size(
    what: &str,
    len: usize,
    before: usize,
    after: usize,
    k: usize,
    stride: usize,
) -> candle_core::Result<usize> {
    let padded = len.checked_add(before).and_then(|v| v.checked_add(after));
    match padded.filter(|&p| isize::try_from(p).is_ok()) {
        Some(padded) if padded >= k => Ok((padded - k) / stride + 1),
        Some(padded) => bail!(
            "depthwise_conv2d: output {what} would be zero: padded input {what} {padded} \
             ({len} + {before} + {after}) is smaller than the kernel {what} {k}"
        ),
        None => {
            bail!("depthwise_conv2d: padded input {what} overflows ({len} + {before} + {after})")
        }
    }
}

/// Checks shapes, dtypes and devices shared by both implementations.
fn check(
    x: &Tensor,
    w: &Tensor,
    stride: (usize, usize),
    pad: Pad2d,
) -> candle_core::Result<Geometry> {
    let g = Geometry::new(x.dims(), w.dims(), stride, pad)?;
    if x.dtype() != w.dtype() {
        bail!(
            "depthwise_conv2d: input and weight dtypes differ ({:?} vs {:?})",
            x.dtype(),
            w.dtype()
        )
    }
    if !x.dtype().is_float() {
        bail!(
            "depthwise_conv2d: expected a floating-point dtype, got {:?}",
            x.dtype()
        )
    }
    if !x.device().same_device(w.device()) {
        bail!(
            "depthwise_conv2d: input and weight are on different devices ({:?} vs {:?})",
            x.device().location(),
            w.device().location()
        )
    }
    Ok(g)
}

/// Depthwise 2-D convolution (groups = channels, one filter per channel).
///
/// `x: [B, C, H, W]`; `w: [C, 1, KH, KW]` (KH, KW odd or even, any size); stride `(sh, sw) >= 1`;
/// zero padding `pad` on each side. Output
/// `[B, C, (H + top + bottom - KH) / sh + 1, (W + left + right - KW) / sw + 1]`, the same as
/// candle's `conv2d(w, 0, s, 1, C)` on the zero-padded input.
///
/// On the CPU, and on CUDA with the `cuda` feature, with f32, f16 or bf16 this runs a dedicated
/// kernel (f16 and bf16 accumulate in f32) whose gradients are dedicated kernels too; on Metal and
/// for f64 it runs [`depthwise_conv2d_shifted`]. Inputs may have any layout (CUDA copies strided
/// inputs to contiguous ones first).
///
/// # Errors
/// If `x` is not 4-D, `w` is not `[C, 1, KH, KW]` with the channels of `x`, a stride is zero,
/// the output would be empty, the dtypes differ or are not floating point, or the tensors are
/// on different devices.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use effnet::ops::{depthwise_conv2d, Pad2d};
///
/// let x = Tensor::ones((1, 2, 4, 4), candle_core::DType::F32, &Device::Cpu)?;
/// let w = Tensor::ones((2, 1, 3, 3), candle_core::DType::F32, &Device::Cpu)?;
/// // TF "SAME" for k = 3, stride 2 on an even input: no padding before, one after.
/// let pad = Pad2d { top: 0, bottom: 1, left: 0, right: 1 };
/// let y = depthwise_conv2d(&x, &w, (2, 2), pad)?;
/// assert_eq!(y.dims(), &[1, 2, 2, 2]);
/// assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, [9., 6., 6., 4., 9., 6., 6., 4.]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn depthwise_conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: (usize, usize),
    pad: Pad2d,
) -> candle_core::Result<Tensor> {
    check(x, w, stride, pad)?;
    if has_kernel(x) {
        let (x, w) = kernel_inputs(x, w)?;
        x.apply_op2(
            &w,
            DepthwiseFwd {
                stride,
                pad,
                epilogue: None,
                prologue: None,
            },
        )
    } else {
        depthwise_conv2d_shifted(x, w, stride, pad)
    }
}

/// Whether the dedicated kernels run `x`'s device and dtype: the CPU and (feature `cuda`) CUDA, in
/// f32, f16 or bf16.
pub(crate) fn has_kernel(x: &Tensor) -> bool {
    let device = x.device().is_cpu() || (cfg!(feature = "cuda") && x.device().is_cuda());
    device && matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16)
}

/// `x` and `w` as the kernels take them: the CPU kernels read any strides, the CUDA kernels need
/// contiguous tensors.
fn kernel_inputs(x: &Tensor, w: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    if x.device().is_cpu() {
        Ok((x.clone(), w.clone()))
    } else {
        Ok((x.contiguous()?, w.contiguous()?))
    }
}

/// [`depthwise_conv2d`] followed by [`crate::ops::affine_act()`] with per-channel `scale` and `shift`
/// (`[1, C]`), fused where a kernel exists: on the CPU (f32) the affine and activation run on each band
/// of output rows while it is in cache, on CUDA (f32, f16, bf16; parameters in f32) in the convolution
/// kernel's epilogue, saving a full pass over the output. **Inference only**: the fused op has no
/// backward pass (other devices and dtypes compose the two differentiable ops).
pub fn depthwise_conv2d_affine_act(
    x: &Tensor,
    w: &Tensor,
    stride: (usize, usize),
    pad: Pad2d,
    scale: &Tensor,
    shift: &Tensor,
    act: Act,
) -> candle_core::Result<Tensor> {
    check(x, w, stride, pad)?;
    let c = x.dim(1)?;
    let per_channel = scale.dims() == [1, c] && shift.dims() == [1, c];
    let fused = if x.device().is_cpu() {
        [x, w, scale, shift].iter().all(|t| t.dtype() == DType::F32)
    } else {
        has_kernel(x)
    };
    if !(per_channel && fused) {
        return affine_act(&depthwise_conv2d(x, w, stride, pad)?, scale, shift, act);
    }
    let (x, w) = kernel_inputs(x, w)?;
    let epilogue = ChannelAffine {
        scale: scale.to_dtype(DType::F32)?.contiguous()?,
        shift: shift.to_dtype(DType::F32)?.contiguous()?,
        act,
    };
    x.apply_op2(
        &w,
        DepthwiseFwd {
            stride,
            pad,
            epilogue: Some(epilogue),
            prologue: None,
        },
    )
}

/// [`depthwise_conv2d_affine_act`] of `act_in(x · in_scale + in_shift)` (per channel: the previous
/// 1x1 convolution's folded BN and activation, `input` below), on CUDA in one kernel that applies the
/// input affine as it reads `x`: the expanded map of an MBConv block is read once, raw, instead of
/// written and read again by a separate pass. `None` where that kernel does not run (other devices,
/// dtypes, parameter shapes: compose [`crate::ops::affine_act()`] and [`depthwise_conv2d_affine_act`]
/// there). Inference only.
pub fn depthwise_conv2d_after_affine_act(
    x: &Tensor,
    w: &Tensor,
    stride: (usize, usize),
    pad: Pad2d,
    input: (&Tensor, &Tensor, Act),
    output: (&Tensor, &Tensor, Act),
) -> candle_core::Result<Option<Tensor>> {
    check(x, w, stride, pad)?;
    let c = [1, x.dim(1)?];
    let per_channel = [input.0, input.1, output.0, output.1]
        .iter()
        .all(|t| t.dims() == c);
    if !(x.device().is_cuda() && has_kernel(x) && per_channel) {
        return Ok(None);
    }
    let affine = |(scale, shift, act): (&Tensor, &Tensor, Act)| -> candle_core::Result<_> {
        Ok(ChannelAffine {
            scale: scale.to_dtype(DType::F32)?.contiguous()?,
            shift: shift.to_dtype(DType::F32)?.contiguous()?,
            act,
        })
    };
    let (x, w) = kernel_inputs(x, w)?;
    let op = DepthwiseFwd {
        stride,
        pad,
        epilogue: Some(affine(output)?),
        prologue: Some(affine(input)?),
    };
    Ok(Some(x.apply_op2(&w, op)?))
}

/// The f32 CPU kernel of [`depthwise_conv2d_affine_act`] on a contiguous buffer `x` of shape `dims`
/// (the fused MBConv path), after the folded 1x1 convolution `expand` (the block's expansion) if
/// given: where the AVX-512 kernels apply, the two run in one parallel section without materialising
/// the expanded map, elsewhere one after the other. Returns the output, its shape and, with `pool`,
/// the sum of each output plane (`[B · C]`, for the squeeze-excite gate; empty otherwise).
#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise_affine_act_f32(
    x: &[f32],
    dims: [usize; 4],
    expand: Option<&Pointwise>,
    w: &Tensor,
    stride: (usize, usize),
    pad: Pad2d,
    affine: (&[f32], &[f32], Act),
    pool: bool,
) -> candle_core::Result<(Vec<f32>, [usize; 4], Vec<f32>)> {
    let [b, c_in, h, width] = dims;
    let c = expand.map_or(c_in, |e| e.out);
    let mid = [b, c, h, width];
    let g = Geometry::new(&mid, w.dims(), stride, pad)?;
    let sizes = [x.len(), affine.0.len(), affine.1.len()];
    if sizes != [b * c_in * h * width, c, c] {
        bail!(
            "depthwise_conv2d_affine_act: (input, scale, shift) have {sizes:?} values for input \
             {dims:?} and {c} channels"
        )
    }
    if let Some(e) = expand {
        let sizes = [e.w.len(), e.scale.len(), e.shift.len()];
        if sizes != [c * c_in, c, c] || e.w_stride != 0 {
            bail!(
                "expansion before depthwise: (weight, scale, shift) have {sizes:?} values, expected \
                 {:?} for input {dims:?}",
                [c * c_in, c, c]
            )
        }
    }
    let w_f32 = super::CpuF32::new(w, "depthwise_conv2d_affine_act: weight")?;
    let taps = View::new(w_f32.slice(), &Layout::contiguous(w.dims()), "weight")?;
    let run = |input: &[f32]| -> candle_core::Result<_> {
        let input = View::new(input, &Layout::contiguous(mid.to_vec()), "input")?;
        Ok(depthwise_cpu::forward_affine_act(
            &g, &input, &taps, affine, pool,
        ))
    };
    let (y, sums) = match expand {
        None => run(x)?,
        Some(e) => {
            match depthwise_cpu::expand_forward_affine_act(&g, e, (x, c_in), &taps, affine, pool) {
                Some(fused) => fused,
                None => run(&pointwise_f32(e, x, dims, None, None))?,
            }
        }
    };
    Ok((y, g.out_dims(), sums))
}

/// A whole MBConv block without squeeze-excite on CPU f32 buffers: `proj(depthwise(e(x))) +
/// residual`, with `e` the folded expansion (if the block has one) and `proj` the folded projection,
/// in one parallel section (see `depthwise_cpu::expand::forward_project`) where the plane-wise
/// AVX-512 depthwise kernel covers the geometry and the tasks fit the cache; `None` elsewhere, where
/// the caller runs the steps apart. Returns the output and its shape.
#[allow(clippy::too_many_arguments)]
pub(crate) fn expand_depthwise_project_f32(
    x: &[f32],
    dims: [usize; 4],
    e: Option<&Pointwise>,
    w: &Tensor,
    stride: (usize, usize),
    pad: Pad2d,
    affine: (&[f32], &[f32], Act),
    (proj, residual): (&Pointwise, Option<&[f32]>),
) -> candle_core::Result<Option<(Vec<f32>, [usize; 4])>> {
    let [b, c_in, h, width] = dims;
    let c = e.map_or(c_in, |e| e.out);
    let g = Geometry::new(&[b, c, h, width], w.dims(), stride, pad)?;
    let [_, _, oh, ow] = g.out_dims();
    let o = proj.out;
    let sizes = [
        x.len(),
        e.map_or(c * c_in, |e| e.w.len()),
        e.map_or(c, |e| e.scale.len()),
        e.map_or(c, |e| e.shift.len()),
        affine.0.len(),
        affine.1.len(),
        proj.w.len(),
        proj.scale.len(),
        proj.shift.len(),
        residual.map_or(b * o * oh * ow, <[f32]>::len),
    ];
    let expected = [
        b * c_in * h * width,
        c * c_in,
        c,
        c,
        c,
        c,
        o * c,
        o,
        o,
        b * o * oh * ow,
    ];
    if sizes != expected || e.is_some_and(|e| e.w_stride != 0) || proj.w_stride != 0 {
        bail!(
            "expansion + depthwise + projection: (input, expansion weight, scale, shift, depthwise \
             scale, shift, projection weight, scale, shift, residual) have {sizes:?} values, \
             expected {expected:?} for input {dims:?}"
        )
    }
    let w_f32 = super::CpuF32::new(w, "depthwise weight")?;
    let taps = View::new(w_f32.slice(), &Layout::contiguous(w.dims()), "weight")?;
    let y =
        depthwise_cpu::expand_project_affine_act(&g, e, (x, c_in), &taps, affine, proj, residual);
    Ok(y.map(|y| (y, [b, o, oh, ow])))
}

/// Depthwise 2-D convolution with tensor ops only, for every device and floating-point dtype:
/// the same contract as [`depthwise_conv2d`].
///
/// The input is zero-padded (or cropped to the rows and columns the taps read) once, viewed as
/// `[B, C, Hq, sh, Wq, sw]`, and each tap `(ky, kx)` adds the strided view starting at
/// `(ky, kx)` times that tap's per-channel weight: `2 * KH * KW` element-wise ops whatever the
/// channel count. f16 and bf16 accumulate in f32. Gradients come from candle's autograd.
///
/// # Errors
/// As [`depthwise_conv2d`].
pub fn depthwise_conv2d_shifted(
    x: &Tensor,
    w: &Tensor,
    stride: (usize, usize),
    pad: Pad2d,
) -> candle_core::Result<Tensor> {
    let g = check(x, w, stride, pad)?;
    let dtype = x.dtype();
    let work = match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        other => other,
    };
    let (sh, sw) = stride;
    // Tap (ky, kx) of output (i, j) reads padded position (i*sh + ky, j*sw + kx)
    // = (sh * (i + ky / sh) + ky % sh, ...): row i + ky / sh of phase ky % sh.
    let hq = (g.k_h - 1) / sh + g.out_h;
    let wq = (g.k_w - 1) / sw + g.out_w;
    let xp = fit(&x.to_dtype(work)?, 2, g.pad.top, hq * sh)?;
    let xp = fit(&xp, 3, g.pad.left, wq * sw)?;
    let phases = xp.reshape((g.batch, g.channels, hq, sh, wq, sw))?;
    // [KH * KW, C]: row t holds tap t of every channel.
    let taps = w
        .to_dtype(work)?
        .reshape((g.channels, g.k_h * g.k_w))?
        .t()?
        .contiguous()?;
    let mut acc: Option<Tensor> = None;
    for ky in 0..g.k_h {
        for kx in 0..g.k_w {
            let view = phases
                .narrow(2, ky / sh, g.out_h)?
                .narrow(3, ky % sh, 1)?
                .narrow(4, kx / sw, g.out_w)?
                .narrow(5, kx % sw, 1)?
                .squeeze(5)?
                .squeeze(3)?;
            let tap = taps.get(ky * g.k_w + kx)?.reshape((1, g.channels, 1, 1))?;
            let term = view.broadcast_mul(&tap)?;
            acc = Some(match acc {
                None => term,
                Some(acc) => (acc + term)?,
            });
        }
    }
    match acc {
        Some(acc) => acc.to_dtype(dtype),
        None => bail!("depthwise_conv2d: empty kernel"),
    }
}

/// Makes dimension `dim` (of length `len`) exactly `extent` long by adding `before` zeros in
/// front and then cropping or zero-padding at the end.
fn fit(t: &Tensor, dim: usize, before: usize, extent: usize) -> candle_core::Result<Tensor> {
    let len = t.dim(dim)?;
    let before = before.min(extent);
    let keep = len.min(extent - before);
    let after = extent - before - keep;
    t.narrow(dim, 0, keep)?.pad_with_zeros(dim, before, after)
}

/// Runs `$kernel(&geometry, view1, view2)` on two CPU storages of the same supported dtype.
macro_rules! cpu_kernel {
    ($op:expr, $kernel:path, $g:expr, ($s1:expr, $l1:expr, $what1:expr), ($s2:expr, $l2:expr, $what2:expr)) => {
        match ($s1, $s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32($kernel(
                $g,
                &View::new(a, $l1, $what1)?,
                &View::new(b, $l2, $what2)?,
            )),
            (CpuStorage::F16(a), CpuStorage::F16(b)) => CpuStorage::F16($kernel(
                $g,
                &View::new(a, $l1, $what1)?,
                &View::new(b, $l2, $what2)?,
            )),
            (CpuStorage::BF16(a), CpuStorage::BF16(b)) => CpuStorage::BF16($kernel(
                $g,
                &View::new(a, $l1, $what1)?,
                &View::new(b, $l2, $what2)?,
            )),
            (a, b) => bail!(
                "{}: unsupported dtypes {:?} and {:?} (expected both f32, f16 or bf16)",
                $op.name(),
                a.dtype(),
                b.dtype()
            ),
        }
    };
}

/// Fails unless `layout` has exactly the dimensions `expected`.
fn expect_dims(
    op: &str,
    what: &str,
    layout: &Layout,
    expected: [usize; 4],
) -> candle_core::Result<()> {
    if layout.dims() != expected {
        bail!(
            "{op}: {what} has shape {:?}, expected {expected:?}",
            layout.dims()
        )
    }
    Ok(())
}

/// The forward custom op: `(x, w) -> y`, optionally followed (inference only) by a per-channel
/// `act(y · scale + shift)` applied to each band while it is in cache.
struct DepthwiseFwd {
    stride: (usize, usize),
    pad: Pad2d,
    epilogue: Option<ChannelAffine>,
    /// CUDA only: a per-channel affine + activation applied to each input value read.
    prologue: Option<ChannelAffine>,
}

/// Per-channel `act(y · scale + shift)`; `scale` and `shift` are contiguous f32 `[1, C]` tensors on the
/// op's device.
struct ChannelAffine {
    scale: Tensor,
    shift: Tensor,
    act: Act,
}

#[cfg(feature = "cuda")]
impl ChannelAffine {
    fn cuda(&self) -> super::cuda::Affine<'_> {
        super::cuda::Affine {
            scale: &self.scale,
            shift: &self.shift,
            act: self.act,
        }
    }
}

impl CustomOp2 for DepthwiseFwd {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geometry::new(l1.dims(), l2.dims(), self.stride, self.pad)?;
        if self.prologue.is_some() {
            bail!("{}: the input affine runs on CUDA only", self.name())
        }
        let out = match (&self.epilogue, s1, s2) {
            (None, ..) => cpu_kernel!(
                self,
                depthwise_cpu::forward,
                &g,
                (s1, l1, "input"),
                (s2, l2, "weight")
            ),
            (Some(e), CpuStorage::F32(a), CpuStorage::F32(b)) => {
                let scale = super::CpuF32::new(&e.scale, "depthwise_conv2d_affine_act: scale")?;
                let shift = super::CpuF32::new(&e.shift, "depthwise_conv2d_affine_act: shift")?;
                CpuStorage::F32(
                    depthwise_cpu::forward_affine_act(
                        &g,
                        &View::new(a, l1, "input")?,
                        &View::new(b, l2, "weight")?,
                        (scale.slice(), shift.slice(), e.act),
                        false,
                    )
                    .0,
                )
            }
            _ => bail!("depthwise_conv2d_affine_act: the fused CPU kernel is f32 only"),
        };
        Ok((out, Shape::from(g.out_dims().to_vec())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let g = Geometry::new(l1.dims(), l2.dims(), self.stride, self.pad)?;
        let pro = self.prologue.as_ref().map(ChannelAffine::cuda);
        let epi = self.epilogue.as_ref().map(ChannelAffine::cuda);
        let out =
            super::cuda::depthwise_forward(&g, (s1, l1), (s2, l2), pro.as_ref(), epi.as_ref())?;
        Ok((out, Shape::from(g.out_dims().to_vec())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if self.epilogue.is_some() || self.prologue.is_some() {
            bail!("depthwise_conv2d_affine_act is inference-only (it has no backward pass)")
        }
        let g = Geometry::new(x.dims(), w.dims(), self.stride, self.pad)?;
        let grad = if grad.device().is_cpu() {
            grad.clone()
        } else {
            grad.contiguous()?
        };
        let op = |wrt| DepthwiseGrad { g, wrt };
        let dx = grad.apply_op2_no_bwd(w, &op(Wrt::Input))?;
        let dw = x.apply_op2_no_bwd(&grad, &op(Wrt::Weight))?;
        Ok((Some(dx), Some(dw)))
    }
}

/// The operand a [`DepthwiseGrad`] differentiates with respect to.
#[derive(Clone, Copy)]
enum Wrt {
    /// `(grad_y, w) -> grad_x`.
    Input,
    /// `(x, grad_y) -> grad_w`.
    Weight,
}

/// A gradient of the depthwise convolution of geometry `g`, with respect to `wrt`.
struct DepthwiseGrad {
    g: Geometry,
    wrt: Wrt,
}

impl DepthwiseGrad {
    /// The names and dimensions of the two operands, and the dimensions of the result.
    fn operands(&self) -> ([(&'static str, [usize; 4]); 2], [usize; 4]) {
        let g = &self.g;
        match self.wrt {
            Wrt::Input => (
                [("output gradient", g.out_dims()), ("weight", g.w_dims())],
                g.in_dims(),
            ),
            Wrt::Weight => (
                [("input", g.in_dims()), ("output gradient", g.out_dims())],
                g.w_dims(),
            ),
        }
    }

    /// Checks the operands' shapes; returns the result's.
    fn shape(&self, l1: &Layout, l2: &Layout) -> candle_core::Result<Shape> {
        let ([(what1, dims1), (what2, dims2)], out) = self.operands();
        expect_dims(self.name(), what1, l1, dims1)?;
        expect_dims(self.name(), what2, l2, dims2)?;
        Ok(Shape::from(out.to_vec()))
    }
}

impl CustomOp2 for DepthwiseGrad {
    fn name(&self) -> &'static str {
        match self.wrt {
            Wrt::Input => "depthwise-conv2d-grad-input",
            Wrt::Weight => "depthwise-conv2d-grad-weight",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let shape = self.shape(l1, l2)?;
        let ([(what1, _), (what2, _)], _) = self.operands();
        let g = &self.g;
        let out = match self.wrt {
            Wrt::Input => {
                cpu_kernel!(
                    self,
                    depthwise_cpu::grad_input,
                    g,
                    (s1, l1, what1),
                    (s2, l2, what2)
                )
            }
            Wrt::Weight => {
                cpu_kernel!(
                    self,
                    depthwise_cpu::grad_weight,
                    g,
                    (s1, l1, what1),
                    (s2, l2, what2)
                )
            }
        };
        Ok((out, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let shape = self.shape(l1, l2)?;
        let (a, b) = ((s1, l1), (s2, l2));
        let out = match self.wrt {
            Wrt::Input => super::cuda::depthwise_grad_input(&self.g, a, b)?,
            Wrt::Weight => super::cuda::depthwise_grad_weight(&self.g, a, b)?,
        };
        Ok((out, shape))
    }
}
