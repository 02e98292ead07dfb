//! The mobile inverted bottleneck (MBConv, Sandler et al. 2018 / Tan & Le 2019) and its expand-ratio-1
//! form, the depthwise-separable block.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::{drop_path, BatchNorm2d, Conv2d, ConvBnAct, DepthwiseConv2d, SqueezeExcite};
use crate::config::{ResolvedBlock, ResolvedNetwork};
use crate::error::Result;
use crate::ops::CpuF32;

/// One block of the resolved list:
/// `[expand 1x1 → BN → act] → depthwise k×k → BN → act → [SE] → project 1x1 → BN → [drop-path + skip]`.
///
/// Canonical (timm) tensor names under `blocks.{stage}.{j}`:
/// - with expansion (InvertedResidual): `conv_pw`, `bn1`, `conv_dw`, `bn2`, `se.*`, `conv_pwl`, `bn3`;
/// - without (DepthwiseSeparableConv): `conv_dw`, `bn1`, `se.*`, `conv_pw`, `bn2`.
///
/// Note that `conv_pw`/`bn1`/`bn2` change meaning between the two forms, exactly as TF's
/// `conv2d`/`tpu_batch_normalization` suffixes shift; weight-name maps derive both from
/// [`ResolvedBlock::has_expansion`].
#[derive(Debug, Clone)]
pub struct MBConv {
    expand: Option<ConvBnAct>,
    dw: ConvBnAct<DepthwiseConv2d>,
    se: Option<SqueezeExcite>,
    project: ConvBnAct,
    block: ResolvedBlock,
}

impl MBConv {
    /// Builds block `b` of `net` from `vb` (already prefixed with the block's path).
    pub fn new(b: &ResolvedBlock, net: &ResolvedNetwork, vb: VarBuilder) -> Result<Self> {
        let (eps, mom, pad, act) = (net.bn_eps, net.bn_momentum, net.padding, net.activation);
        let bn = |c: usize, name: &str| BatchNorm2d::new(c, eps, mom, vb.pp(name));
        let (expand, dw_bn_name, project_name, project_bn_name) = if b.has_expansion() {
            let conv = Conv2d::new(b.in_channels, b.mid_channels, 1, 1, pad, vb.pp("conv_pw"))?;
            let expand = ConvBnAct::new(conv, bn(b.mid_channels, "bn1")?, Some(act));
            (Some(expand), "bn2", "conv_pwl", "bn3")
        } else {
            (None, "bn1", "conv_pw", "bn2")
        };
        let dw = DepthwiseConv2d::new(b.mid_channels, b.kernel, b.stride, pad, vb.pp("conv_dw"))?;
        let dw = ConvBnAct::new(dw, bn(b.mid_channels, dw_bn_name)?, Some(act));
        let se = match b.se_channels {
            Some(rd) => Some(SqueezeExcite::new(b.mid_channels, rd, act, vb.pp("se"))?),
            None => None,
        };
        let project = Conv2d::new(
            b.mid_channels,
            b.out_channels,
            1,
            1,
            pad,
            vb.pp(project_name),
        )?;
        let project = ConvBnAct::new(project, bn(b.out_channels, project_bn_name)?, None);
        Ok(Self {
            expand,
            dw,
            se,
            project,
            block: b.clone(),
        })
    }

    /// The resolved block this was built from.
    pub fn block(&self) -> &ResolvedBlock {
        &self.block
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train && self.runs_folded_cpu(x) {
            return self.forward_folded_cpu(x);
        }
        let fused = match &self.expand {
            Some(e) if !train => self.dw.forward_after_expansion(e, x)?,
            _ => None,
        };
        let mut h = match (fused, &self.expand) {
            (Some(h), _) => h,
            (None, Some(e)) => self.dw.forward_t(&e.forward_t(x, train)?, train)?,
            (None, None) => self.dw.forward_t(x, train)?,
        };
        h = match &self.se {
            // The gate is folded into the projection (see `Conv2d::forward_raw_gated`).
            Some(se) => self.project.forward_t_gated(&h, &se.gate(&h)?, train)?,
            None => self.project.forward_t(&h, train)?,
        };
        if self.block.has_skip {
            h = (drop_path(&h, self.block.drop_path_rate, train)? + x)?;
        }
        Ok(h)
    }

    /// Whether [`Self::forward_folded_cpu`] applies: a folded block (every unit 1x1 or depthwise, as
    /// built) and an f32 input on the CPU.
    fn runs_folded_cpu(&self, x: &Tensor) -> bool {
        x.device().is_cpu()
            && x.dtype() == DType::F32
            && self.project.is_folded()
            && self.dw.is_folded()
            && self.expand.as_ref().is_none_or(ConvBnAct::is_folded)
    }

    /// Inference of a folded block on the CPU in f32: kernels on plain buffers, with no intermediate
    /// tensors. A block without squeeze-excite runs whole in one parallel section where the kernels
    /// allow (each task expands, convolves and projects a band of rows). Otherwise the expansion runs
    /// inside the depthwise kernel's tasks where it can, the squeeze-excite input is pooled there
    /// too, its gate is applied inside the projection's tiles, and the residual is added there as
    /// well.
    fn forward_folded_cpu(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        let (b, c, h, w) = x.dims4()?;
        let input = CpuF32::new(&x, "block input")?;
        let input = input.slice();
        let residual = self.block.has_skip.then_some(input);
        if self.se.is_none() {
            let (expand, project) = (self.expand.as_ref(), (&self.project, residual));
            if let Some((y, dims)) =
                self.dw
                    .expand_project_f32(input, [b, c, h, w], expand, project)?
            {
                return Ok(Tensor::from_vec(y, dims.to_vec(), x.device())?);
            }
        }
        let (mut d, dims, sums) =
            self.dw
                .depthwise_f32(input, [b, c, h, w], self.se.is_some(), self.expand.as_ref())?;
        let hw = dims[2] * dims[3];
        // The gate scales the projection's input channels: on small maps scaling the map itself (ours
        // to change, done by the tasks that compute the gate) is cheaper than folding the gate into
        // every sample's copy of the weights.
        let scale_map = hw < self.block.out_channels;
        let gate = match &self.se {
            Some(se) => Some(se.gate_from_sums_f32(&sums, hw, scale_map.then_some(&mut d))?),
            None => None,
        }
        .filter(|_| !scale_map);
        let y = self
            .project
            .pointwise_f32(&d, dims, gate.as_deref(), residual)?;
        let out = (b, self.block.out_channels, dims[2], dims[3]);
        Ok(Tensor::from_vec(y, out, x.device())?)
    }

    /// A folded block ([`Self::fused`]) with every tensor replaced by `f(tensor)` (same shapes).
    pub(crate) fn map_folded_tensors(
        &self,
        f: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<Self> {
        Ok(Self {
            expand: match &self.expand {
                Some(e) => Some(e.map_folded_tensors(f)?),
                None => None,
            },
            dw: self.dw.map_folded_tensors(f)?,
            se: match &self.se {
                Some(se) => Some(se.map_tensors(f)?),
                None => None,
            },
            project: self.project.map_folded_tensors(f)?,
            block: self.block.clone(),
        })
    }

    /// The block with every batch norm folded into its convolution (inference only).
    pub fn fused(&self) -> Result<Self> {
        Ok(Self {
            expand: self.expand.as_ref().map(ConvBnAct::fused).transpose()?,
            dw: self.dw.fused()?,
            se: self.se.clone(),
            project: self.project.fused()?,
            block: self.block.clone(),
        })
    }
}
