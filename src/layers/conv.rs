//! Convolutions with a padding mode: dense (bias-free, followed by BN) and depthwise, plus the
//! conv → BN → activation unit.

use candle_core::{DType, Tensor};
use candle_nn::{Init, VarBuilder};

use super::{BatchNorm2d, Pad2d};
use crate::config::{Activation, Padding};
use crate::error::{Error, Result};
use crate::ops::affine_act::{affine_act_inference, scale_channels};
use crate::ops::depthwise::{
    depthwise_affine_act_f32, depthwise_conv2d_after_affine_act, expand_depthwise_project_f32,
};
use crate::ops::pointwise::{
    conv_affine_act_f32, pointwise_f32, pointwise_pool_f32, Pointwise, Window,
};
use crate::ops::{
    affine_act, depthwise_conv2d, depthwise_conv2d_affine_act, pointwise_conv_affine_act, Act,
    CpuF32,
};

/// He-normal init over fan-out (`sqrt(2 / (k·k·out / groups))`), as the reference implementations use
/// for convolutions when training from scratch.
fn conv_init(out_channels: usize, kernel: usize, groups: usize) -> Init {
    let fan_out = (kernel * kernel * out_channels / groups).max(1);
    Init::Randn {
        mean: 0.0,
        stdev: (2.0 / fan_out as f64).sqrt(),
    }
}

/// A bias-free dense 2-D convolution, weight `[out, in, k, k]` (tensor name `weight`).
///
/// 1x1 stride-1 convolutions run as a matrix product on the NCHW view (no im2col copy).
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    kernel: usize,
    stride: usize,
    padding: Padding,
}

impl Conv2d {
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: Padding,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get_with_hints(
            (out_channels, in_channels, kernel, kernel),
            "weight",
            conv_init(out_channels, kernel, 1),
        )?;
        Ok(Self {
            weight,
            bias: None,
            kernel,
            stride,
            padding,
        })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Bias, present once a batch norm has been folded in.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        add_bias(self.forward_raw(x)?, self.bias.as_ref())
    }

    /// For a 1x1 convolution whose output has fewer channels than the map has pixels, the weight with
    /// the gate `[B, C_in]` folded into its columns, `[B, C_out, C_in]` (`W · (g ⊙ x) = (W ⊙ g) · x`,
    /// the cheaper side); `None` where scaling the input is cheaper.
    fn gate_folded_weight(&self, x: &Tensor, gate: &Tensor) -> Result<Option<Tensor>> {
        let (b, c, h, w) = x.dims4()?;
        let out = self.weight.dim(0)?;
        if !(self.kernel == 1 && self.stride == 1 && out < h * w) {
            return Ok(None);
        }
        let g = gate.to_dtype(self.weight.dtype())?.reshape((b, 1, c))?;
        Ok(Some(self.weight.reshape((1, out, c))?.broadcast_mul(&g)?))
    }

    /// The convolution (without bias) of `x` scaled per sample and input channel by `gate` `[B, C_in]`,
    /// without materialising the scaled input when the weights are the smaller side.
    pub fn forward_raw_gated(&self, x: &Tensor, gate: &Tensor) -> Result<Tensor> {
        if let Some(wt) = self.gate_folded_weight(x, gate)? {
            let (b, c, h, w) = x.dims4()?;
            let y = wt.matmul(&x.reshape((b, c, h * w))?)?;
            return Ok(y.reshape((b, wt.dim(1)?, h, w))?);
        }
        self.forward_raw(&scale_channels(x, gate)?)
    }

    /// [`Self::forward_raw_gated`] followed by `act(· scale + shift)` per output channel (inference).
    pub fn forward_gated_affine_act(
        &self,
        x: &Tensor,
        gate: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        act: Act,
    ) -> Result<Tensor> {
        if let Some(wt) = self.gate_folded_weight(x, gate)? {
            return Ok(pointwise_conv_affine_act(x, &wt, scale, shift, act)?);
        }
        self.forward_affine_act(&scale_channels(x, gate)?, scale, shift, act)
    }

    /// The convolution without its bias.
    pub fn forward_raw(&self, x: &Tensor) -> Result<Tensor> {
        Ok(if self.kernel == 1 && self.stride == 1 {
            let (b, c, h, w) = x.dims4()?;
            let out = self.weight.dim(0)?;
            let wt = self.weight.reshape((out, c))?;
            let y = wt.broadcast_left(b)?.matmul(&x.reshape((b, c, h * w))?)?;
            y.reshape((b, out, h, w))?
        } else {
            conv_padded(x, &self.weight, self.kernel, self.stride, self.padding)?
        })
    }
}

impl Conv2d {
    /// `act(conv(x) · scale + shift)` on the CPU in f32 (contiguous `x`) as patches times the
    /// `[O, C·k·k]` weight in the tiled 1x1 kernel, a band of output rows at a time where it can
    /// ([`conv_affine_act_f32`]; the stems; inference only).
    fn im2col_affine_act(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        act: Act,
    ) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let out = self.weight.dim(0)?;
        let (k, s) = (self.kernel, self.stride);
        let pad = Pad2d::for_conv(self.padding, h, w, k, s);
        let input = CpuF32::new(x, "convolution input")?;
        let weight = CpuF32::new(&self.weight, "convolution weight")?;
        let (scale, shift) = (CpuF32::new(scale, "scale")?, CpuF32::new(shift, "shift")?);
        let p = Pointwise {
            w: weight.slice(),
            w_stride: 0,
            out,
            scale: scale.slice(),
            shift: shift.slice(),
            act,
        };
        let (y, oh, ow) =
            conv_affine_act_f32(&p, input.slice(), [b, c, h, w], Window { k, s, pad })?;
        Ok(Tensor::from_vec(y, (b, out, oh, ow), x.device())?)
    }
}

impl ConvLayer for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Conv2d::forward(self, x)
    }

    fn forward_raw(&self, x: &Tensor) -> Result<Tensor> {
        Conv2d::forward_raw(self, x)
    }

    /// 1x1 stride-1 convolutions apply the affine and activation to each output tile in cache; other
    /// kernels (the stems) run banded on the CPU (f32) and as one direct kernel on CUDA.
    fn forward_affine_act(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        act: Act,
    ) -> Result<Tensor> {
        if self.kernel == 1 && self.stride == 1 {
            let (out, c) = (self.weight.dim(0)?, self.weight.dim(1)?);
            let w = self.weight.reshape((1, out, c))?;
            return Ok(pointwise_conv_affine_act(x, &w, scale, shift, act)?);
        }
        let f32_cpu = x.device().is_cpu()
            && [x, &self.weight, scale, shift]
                .iter()
                .all(|t| t.dtype() == DType::F32);
        if f32_cpu {
            return self.im2col_affine_act(&x.contiguous()?, scale, shift, act);
        }
        #[cfg(feature = "cuda")]
        if x.device().is_cuda()
            && crate::ops::depthwise::has_kernel(x)
            && crate::ops::cuda::direct_conv_fits(self.weight.dims())
        {
            let (_, _, h, w) = x.dims4()?;
            let pad = Pad2d::for_conv(self.padding, h, w, self.kernel, self.stride);
            let affine = (scale, shift, act);
            let y = crate::ops::cuda::conv2d_affine_act(x, &self.weight, self.stride, pad, affine)?;
            return Ok(y);
        }
        Ok(affine_act_inference(
            self.forward_raw(x)?,
            scale,
            shift,
            act,
        )?)
    }

    fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    fn weight(&self) -> &Tensor {
        &self.weight
    }

    fn with_parameters(&self, weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            ..self.clone()
        }
    }
}

/// Depthwise 2-D convolution (one filter per channel), weight `[C, 1, k, k]` (tensor name `weight`).
#[derive(Debug, Clone)]
pub struct DepthwiseConv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    kernel: usize,
    stride: usize,
    padding: Padding,
}

impl DepthwiseConv2d {
    pub fn new(
        channels: usize,
        kernel: usize,
        stride: usize,
        padding: Padding,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get_with_hints(
            (channels, 1, kernel, kernel),
            "weight",
            conv_init(channels, kernel, channels),
        )?;
        Ok(Self {
            weight,
            bias: None,
            kernel,
            stride,
            padding,
        })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Bias, present once a batch norm has been folded in.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Runs [`crate::ops::depthwise_conv2d`]: a dedicated CPU or CUDA kernel (f32/f16/bf16, with
    /// backward) that pads inside the kernel, or a shifted multiply-add formulation on other devices —
    /// never candle's one-convolution-per-channel grouped path.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        add_bias(self.forward_raw(x)?, self.bias.as_ref())
    }

    /// The convolution without its bias.
    pub fn forward_raw(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let pad = Pad2d::for_conv(self.padding, h, w, self.kernel, self.stride);
        Ok(depthwise_conv2d(
            x,
            &self.weight,
            (self.stride, self.stride),
            pad,
        )?)
    }
}

impl ConvLayer for DepthwiseConv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        DepthwiseConv2d::forward(self, x)
    }

    /// The affine and activation run inside the depthwise kernel, on each band while it is in cache.
    fn forward_affine_act(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        act: Act,
    ) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let pad = Pad2d::for_conv(self.padding, h, w, self.kernel, self.stride);
        let s = (self.stride, self.stride);
        Ok(depthwise_conv2d_affine_act(
            x,
            &self.weight,
            s,
            pad,
            scale,
            shift,
            act,
        )?)
    }

    fn forward_raw(&self, x: &Tensor) -> Result<Tensor> {
        DepthwiseConv2d::forward_raw(self, x)
    }

    fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    fn weight(&self) -> &Tensor {
        &self.weight
    }

    fn with_parameters(&self, weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            ..self.clone()
        }
    }
}

impl ConvBnAct<Conv2d> {
    /// [`ConvBnAct::forward_t`] on `x` scaled per sample and input channel by `gate` (`[B, C_in]`, the
    /// squeeze-excite output), without materialising the scaled input when the weights are smaller.
    pub fn forward_t_gated(&self, x: &Tensor, gate: &Tensor, train: bool) -> Result<Tensor> {
        if let Some((scale, shift)) = &self.affine {
            let act = self.act.into();
            return self
                .conv
                .forward_gated_affine_act(x, gate, scale, shift, act);
        }
        self.finish(self.conv.forward_raw_gated(x, gate)?, train)
    }
}

impl<C> ConvBnAct<C> {
    /// The precomputed `(scale, shift)` of a folded unit as CPU f32 slices, or `None` if unfolded.
    fn folded_affine(&self) -> Result<Option<(CpuF32<'_>, CpuF32<'_>)>> {
        let Some((scale, shift)) = &self.affine else {
            return Ok(None);
        };
        Ok(Some((
            CpuF32::new(scale, "folded scale")?,
            CpuF32::new(shift, "folded shift")?,
        )))
    }

    /// Whether the batch norm has been folded ([`Self::fused`]).
    pub(crate) fn is_folded(&self) -> bool {
        self.affine.is_some()
    }
}

impl ConvBnAct<Conv2d> {
    /// The folded 1x1 unit on a contiguous CPU f32 buffer `x` of shape `dims`, with the optional
    /// per-sample input gate `[B · C]` and `residual` (added after the activation); see
    /// [`crate::ops::pointwise`]. Errors unless the unit is folded, 1x1 and stride 1.
    pub(crate) fn pointwise_f32(
        &self,
        x: &[f32],
        dims: [usize; 4],
        gate: Option<&[f32]>,
        residual: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        let [b, c, h, w] = dims;
        let out = self.conv.weight.dim(0)?;
        let expect = [b * c * h * w, b * c, b * out * h * w];
        let got = [
            x.len(),
            gate.map_or(b * c, <[f32]>::len),
            residual.map_or(expect[2], <[f32]>::len),
        ];
        if got != expect {
            return Err(Error::InvalidInput(format!(
                "pointwise_f32: (input, gate, residual) of {got:?} values for input {dims:?} and \
                 weight {:?}, expected {expect:?}",
                self.conv.weight.dims(),
            )));
        }
        self.with_pointwise(c, |p| pointwise_f32(p, x, dims, gate, residual))
    }

    /// The mean of every output plane of this folded 1x1 unit on a CPU f32 input, `[B, O]`, pooled by
    /// the convolution's tasks from the tiles they have just written (the fused network's head
    /// convolution and global average pooling); `None` where the unit is not folded or the input is
    /// not f32 on the CPU.
    pub(crate) fn pooled_f32(&self, x: &Tensor) -> Result<Option<Tensor>> {
        if !(self.is_folded() && x.device().is_cpu() && x.dtype() == DType::F32) {
            return Ok(None);
        }
        let x = x.contiguous()?;
        let (b, c, h, w) = x.dims4()?;
        let input = CpuF32::new(&x, "pooled 1x1 convolution input")?;
        let (_, means) =
            self.with_pointwise(c, |p| pointwise_pool_f32(p, input.slice(), [b, c, h, w]))?;
        let out = self.conv.weight.dim(0)?;
        Ok(Some(Tensor::from_vec(means, (b, out), x.device())?))
    }

    /// Runs `f` on the folded 1x1 unit's parameters as CPU f32 slices. Errors unless the unit is
    /// folded, 1x1, stride 1 and takes `c` input channels.
    fn with_pointwise<R>(&self, c: usize, f: impl FnOnce(&Pointwise) -> R) -> Result<R> {
        let (out, in_c) = (self.conv.weight.dim(0)?, self.conv.weight.dim(1)?);
        let Some((scale, shift)) = self.folded_affine()? else {
            return Err(Error::InvalidInput(
                "pointwise_f32: unit is not folded".into(),
            ));
        };
        let got = [in_c, scale.slice().len(), shift.slice().len()];
        if self.conv.kernel != 1 || self.conv.stride != 1 || got != [c, out, out] {
            return Err(Error::InvalidInput(format!(
                "pointwise_f32: weight {:?} (kernel {}, stride {}) with (input channels, scale, \
                 shift) of {got:?} cannot take {c} input channels",
                self.conv.weight.dims(),
                self.conv.kernel,
                self.conv.stride
            )));
        }
        let w = CpuF32::new(&self.conv.weight, "pointwise weight")?;
        Ok(f(&Pointwise {
            w: w.slice(),
            w_stride: 0,
            out,
            scale: scale.slice(),
            shift: shift.slice(),
            act: self.act.into(),
        }))
    }
}

impl ConvBnAct<DepthwiseConv2d> {
    /// The folded depthwise unit on a contiguous CPU f32 buffer `x` of shape `dims`, after the folded
    /// 1x1 unit `expand` if given (both in one pass where the kernels allow): the output, its shape
    /// and, with `pool`, the sum of each output plane (`[B · C]`).
    pub(crate) fn depthwise_f32(
        &self,
        x: &[f32],
        dims: [usize; 4],
        pool: bool,
        expand: Option<&ConvBnAct>,
    ) -> Result<(Vec<f32>, [usize; 4], Vec<f32>)> {
        let Some((scale, shift)) = self.folded_affine()? else {
            return Err(Error::InvalidInput(
                "depthwise_f32: unit is not folded".into(),
            ));
        };
        let (k, s) = (self.conv.kernel, self.conv.stride);
        let pad = Pad2d::for_conv(self.conv.padding, dims[2], dims[3], k, s);
        let affine = (scale.slice(), shift.slice(), self.act.into());
        let w = &self.conv.weight;
        let run = |e: Option<&Pointwise>| {
            depthwise_affine_act_f32(x, dims, e, w, (s, s), pad, affine, pool)
        };
        match expand {
            None => Ok(run(None)?),
            Some(expand) => Ok(expand.with_pointwise(dims[1], |e| run(Some(e)))??),
        }
    }

    /// `project(self(expand(x))) + residual` (`project(self(x))` without `expand`) for folded units on
    /// a CPU f32 buffer `x` of shape `dims` (an MBConv block without squeeze-excite) in one parallel
    /// section where the kernels allow; `None` where they do not (the caller runs the units one after
    /// the other).
    pub(crate) fn expand_project_f32(
        &self,
        x: &[f32],
        dims: [usize; 4],
        expand: Option<&ConvBnAct>,
        (project, residual): (&ConvBnAct, Option<&[f32]>),
    ) -> Result<Option<(Vec<f32>, [usize; 4])>> {
        let Some((scale, shift)) = self.folded_affine()? else {
            return Ok(None);
        };
        let (k, s) = (self.conv.kernel, self.conv.stride);
        let pad = Pad2d::for_conv(self.conv.padding, dims[2], dims[3], k, s);
        let affine = (scale.slice(), shift.slice(), self.act.into());
        let w = &self.conv.weight;
        let mid = w.dim(0)?;
        let run = |e: Option<&Pointwise>| {
            project.with_pointwise(mid, |p| {
                expand_depthwise_project_f32(x, dims, e, w, (s, s), pad, affine, (p, residual))
            })
        };
        let fused = match expand {
            None => run(None)?,
            Some(expand) => expand.with_pointwise(dims[1], |e| run(Some(e)))??,
        }?;
        Ok(fused)
    }

    /// `self(expand(x))` for folded units in inference: on CUDA the expansion's affine and activation
    /// run as the depthwise kernel reads the raw 1x1 output (one pass over the expanded map fewer);
    /// `None` where that does not apply (unfolded units, other devices and dtypes).
    pub(crate) fn forward_after_expansion(
        &self,
        expand: &ConvBnAct,
        x: &Tensor,
    ) -> Result<Option<Tensor>> {
        let (Some(input), Some(output)) = (&expand.affine, &self.affine) else {
            return Ok(None);
        };
        let c = &expand.conv;
        if !(x.device().is_cuda() && c.kernel == 1 && c.stride == 1) {
            return Ok(None);
        }
        let raw = c.forward_raw(x)?;
        let (_, _, h, w) = raw.dims4()?;
        let (k, s) = (self.conv.kernel, self.conv.stride);
        let pad = Pad2d::for_conv(self.conv.padding, h, w, k, s);
        Ok(depthwise_conv2d_after_affine_act(
            &raw,
            &self.conv.weight,
            (s, s),
            pad,
            (&input.0, &input.1, expand.act.into()),
            (&output.0, &output.1, self.act.into()),
        )?)
    }
}

/// A convolution a batch norm can be folded into.
pub trait ConvLayer: Clone {
    /// Convolution plus bias (if any).
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// Convolution without the bias.
    fn forward_raw(&self, x: &Tensor) -> Result<Tensor>;
    /// The weight.
    fn weight(&self) -> &Tensor;
    /// The bias, present once a batch norm has been folded in.
    fn bias(&self) -> Option<&Tensor>;
    /// The same convolution (kernel, stride, padding) with another weight and bias.
    fn with_parameters(&self, weight: Tensor, bias: Option<Tensor>) -> Self;
    /// `act(conv(x) · scale + shift)` per channel, for inference only (no gradient; implementations
    /// may fuse it or work in place).
    fn forward_affine_act(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        act: Act,
    ) -> Result<Tensor> {
        Ok(affine_act_inference(
            self.forward_raw(x)?,
            scale,
            shift,
            act,
        )?)
    }
    /// The same convolution with an eval-mode batch norm folded into its weight and bias:
    /// `W' = W · γ/√(σ²+ε)` per output channel, `b' = β + (b − μ) · γ/√(σ²+ε)`.
    fn fold_bn(&self, bn: &BatchNorm2d) -> Result<Self> {
        let (weight, bias) = fold(self.weight(), self.bias(), bn)?;
        Ok(self.with_parameters(weight, Some(bias)))
    }
    /// The same convolution with its weight and bias replaced by `f(weight)` and `f(bias)`, which
    /// must keep their shapes (used to move a fused network's parameters into one buffer).
    fn map_tensors(&self, f: &mut dyn FnMut(&Tensor) -> Result<Tensor>) -> Result<Self> {
        let weight = map_same_shape(self.weight(), f)?;
        let bias = self.bias().map(|b| map_same_shape(b, f)).transpose()?;
        Ok(self.with_parameters(weight, bias))
    }
}

/// `f(t)`, or an error if it changed the shape.
pub(crate) fn map_same_shape(
    t: &Tensor,
    f: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let mapped = f(t)?;
    if mapped.dims() != t.dims() {
        return Err(Error::InvalidInput(format!(
            "parameter of shape {:?} mapped to shape {:?}",
            t.dims(),
            mapped.dims()
        )));
    }
    Ok(mapped)
}

fn fold(weight: &Tensor, bias: Option<&Tensor>, bn: &BatchNorm2d) -> Result<(Tensor, Tensor)> {
    let (scale, shift) = bn.eval_scale_shift()?;
    let dt = weight.dtype();
    let w =
        weight
            .to_dtype(DType::F32)?
            .broadcast_mul(&scale.reshape((scale.dim(0)?, 1, 1, 1))?)?;
    let b = match bias {
        Some(b) => ((b.to_dtype(DType::F32)? * &scale)? + shift)?,
        None => shift,
    };
    Ok((w.to_dtype(dt)?, b.to_dtype(dt)?))
}

fn add_bias(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    Ok(match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?,
        None => y,
    })
}

/// Convolution with the padding for this input: candle's own padding when every side is equal and the
/// stride is 1; otherwise an explicit zero pad, cropped to the rows and columns the kernel reads.
///
/// The crop matters for training: candle derives the input gradient of a strided convolution with one
/// output padding for both axes, which fails on non-square inputs whose axes need different ones.
fn conv_padded(
    x: &Tensor,
    weight: &Tensor,
    kernel: usize,
    stride: usize,
    padding: Padding,
) -> Result<Tensor> {
    // candle 0.11's CPU convolution has no bf16 kernel (its matrix product widens bf16 to f32; its
    // convolution does not): widen here the same way.
    if x.dtype() == DType::BF16 && x.device().is_cpu() {
        let (x, weight) = (x.to_dtype(DType::F32)?, weight.to_dtype(DType::F32)?);
        return Ok(conv_padded(&x, &weight, kernel, stride, padding)?.to_dtype(DType::BF16)?);
    }
    let (_, _, h, w) = x.dims4()?;
    let pad = Pad2d::for_conv(padding, h, w, kernel, stride);
    if let (Some(p), 1) = (pad.as_uniform(), stride) {
        return Ok(x.conv2d(weight, p, stride, 1, 1)?);
    }
    let x = pad.apply(x)?;
    let (_, _, ph, pw) = x.dims4()?;
    let used = |padded: usize| (padded.saturating_sub(kernel) / stride) * stride + kernel;
    let x = x.narrow(2, 0, used(ph))?.narrow(3, 0, used(pw))?;
    Ok(x.conv2d(weight, 0, stride, 1, 1)?)
}

/// Convolution → batch norm → optional activation: the stem, head, expand, depthwise and project units.
///
/// In eval mode the batch norm, the bias and the activation run as one pass ([`affine_act()`]); in
/// training the batch norm uses batch statistics. After [`ConvBnAct::fused`] the batch norm lives in the
/// convolution's weight and bias and the per-channel affine is precomputed.
#[derive(Debug, Clone)]
pub struct ConvBnAct<C = Conv2d> {
    pub conv: C,
    pub bn: Option<BatchNorm2d>,
    pub act: Option<Activation>,
    /// `(scale, shift)` `[1, C]` (f32) for eval, precomputed once the batch norm is folded.
    affine: Option<(Tensor, Tensor)>,
}

impl<C: ConvLayer> ConvBnAct<C> {
    pub fn new(conv: C, bn: BatchNorm2d, act: Option<Activation>) -> Self {
        Self {
            conv,
            bn: Some(bn),
            act,
            affine: None,
        }
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if let Some((scale, shift)) = &self.affine {
            // Folded (inference-only) unit: the convolution may fuse its epilogue.
            return self
                .conv
                .forward_affine_act(x, scale, shift, self.act.into());
        }
        self.finish(self.conv.forward_raw(x)?, train)
    }

    /// Batch norm (or folded bias) and activation applied to a raw convolution output.
    fn finish(&self, y: Tensor, train: bool) -> Result<Tensor> {
        match (&self.bn, train) {
            (Some(bn), true) => {
                bn.forward_act_t(&add_bias(y, self.conv.bias())?, self.act.into(), true)
            }
            _ => match &self.affine {
                // Folded (inference-only) unit: work in place on the fresh convolution output.
                Some((scale, shift)) => Ok(affine_act_inference(y, scale, shift, self.act.into())?),
                None => {
                    let (scale, shift) = self.eval_affine(y.dim(1)?, y.device())?;
                    Ok(affine_act(&y, &scale, &shift, self.act.into())?)
                }
            },
        }
    }

    /// Eval-mode batch norm and bias as `x · scale + shift`, `[1, C]` in f32.
    fn eval_affine(&self, c: usize, dev: &candle_core::Device) -> Result<(Tensor, Tensor)> {
        let bias = self
            .conv
            .bias()
            .map(|b| b.to_dtype(DType::F32))
            .transpose()?;
        let (scale, shift) = match &self.bn {
            Some(bn) => {
                let (s, t) = bn.eval_scale_shift()?;
                let t = match bias {
                    Some(b) => (t + (b * &s)?)?,
                    None => t,
                };
                (s, t)
            }
            None => (
                Tensor::ones(c, DType::F32, dev)?,
                match bias {
                    Some(b) => b,
                    None => Tensor::zeros(c, DType::F32, dev)?,
                },
            ),
        };
        Ok((scale.reshape((1, c))?, shift.reshape((1, c))?))
    }

    /// The unit with its batch norm folded into the convolution (inference only).
    pub fn fused(&self) -> Result<Self> {
        let conv = match &self.bn {
            Some(bn) => self.conv.fold_bn(bn)?,
            None => self.conv.clone(),
        };
        let mut unit = Self {
            conv,
            bn: None,
            act: self.act,
            affine: None,
        };
        if let Some(b) = unit.conv.bias() {
            unit.affine = Some(unit.eval_affine(b.dim(0)?, b.device())?);
        }
        Ok(unit)
    }

    /// A folded unit ([`Self::fused`]) with every tensor replaced by `f(tensor)` (same shapes).
    pub(crate) fn map_folded_tensors(
        &self,
        f: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<Self> {
        if self.bn.is_some() {
            return Err(Error::InvalidInput(
                "map_folded_tensors: the unit's batch norm is not folded".into(),
            ));
        }
        let affine = match &self.affine {
            Some((scale, shift)) => Some((map_same_shape(scale, f)?, map_same_shape(shift, f)?)),
            None => None,
        };
        Ok(Self {
            conv: self.conv.map_tensors(f)?,
            bn: None,
            act: self.act,
            affine,
        })
    }
}
