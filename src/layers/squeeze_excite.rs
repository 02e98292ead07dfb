//! Squeeze-and-excitation (Hu et al., 2018) as used in MBConv blocks.

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

use super::conv::map_same_shape;
use crate::config::Activation;
use crate::error::{Error, Result};
use crate::ops::affine_act::{affine_act_in_place, scale_channels, sigmoid_in_place};
use crate::ops::{linear_f32, linear_f32_then, spatial_mean, Act, CpuF32, SharedOut};

/// Global average pool → 1x1 conv (reduce, bias) → activation → 1x1 conv (expand, bias) → sigmoid →
/// channel-wise scale. Tensor names `conv_reduce.{weight,bias}` `[rd, C, 1, 1]` and
/// `conv_expand.{weight,bias}` `[C, rd, 1, 1]` (timm).
#[derive(Debug, Clone)]
pub struct SqueezeExcite {
    reduce_w: Tensor,
    reduce_b: Tensor,
    expand_w: Tensor,
    expand_b: Tensor,
    act: Activation,
}

impl SqueezeExcite {
    /// The same layer with every tensor replaced by `f(tensor)` (same shapes).
    pub(crate) fn map_tensors(&self, f: &mut dyn FnMut(&Tensor) -> Result<Tensor>) -> Result<Self> {
        Ok(Self {
            reduce_w: map_same_shape(&self.reduce_w, f)?,
            reduce_b: map_same_shape(&self.reduce_b, f)?,
            expand_w: map_same_shape(&self.expand_w, f)?,
            expand_b: map_same_shape(&self.expand_b, f)?,
            act: self.act,
        })
    }

    pub fn new(channels: usize, reduced: usize, act: Activation, vb: VarBuilder) -> Result<Self> {
        let init = |fan_out: usize| Init::Randn {
            mean: 0.0,
            stdev: (2.0 / fan_out as f64).sqrt(),
        };
        let r = vb.pp("conv_reduce");
        let e = vb.pp("conv_expand");
        Ok(Self {
            reduce_w: r.get_with_hints((reduced, channels, 1, 1), "weight", init(reduced))?,
            reduce_b: r.get_with_hints(reduced, "bias", Init::Const(0.0))?,
            expand_w: e.get_with_hints((channels, reduced, 1, 1), "weight", init(channels))?,
            expand_b: e.get_with_hints(channels, "bias", Init::Const(0.0))?,
            act,
        })
    }

    /// Scales each channel of `x` by its gate.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(scale_channels(x, &self.gate(x)?)?)
    }

    /// The per-sample, per-channel gate `[B, C]` in (0, 1), without applying it (the block can fold it
    /// into the following 1x1 convolution instead).
    pub fn gate(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = x.dims4()?;
        let s = spatial_mean(x)?; // [B, C]
        let rd = self.reduce_b.dim(0)?;
        let s = s
            .matmul(&self.reduce_w.reshape((rd, c))?.t()?)?
            .broadcast_add(&self.reduce_b)?;
        let s = self.act.forward(&s)?;
        let s = s
            .matmul(&self.expand_w.reshape((c, rd))?.t()?)?
            .broadcast_add(&self.expand_b)?;
        Ok(candle_nn::ops::sigmoid(&s)?)
    }

    /// [`Self::gate`] on the CPU in f32 from the per-sample channel sums `[B · C]` of a map of `hw`
    /// pixels (the fused inference path, which pools inside the depthwise kernel): `[B · C]`. With
    /// `apply_to`, that map (`[B, C, hw]`) is scaled by the gate too, by the tasks that compute it.
    pub(crate) fn gate_from_sums_f32(
        &self,
        sums: &[f32],
        hw: usize,
        apply_to: Option<&mut Vec<f32>>,
    ) -> Result<Vec<f32>> {
        let (rd, c) = (self.reduce_b.dim(0)?, self.expand_b.dim(0)?);
        let b = sums.len() / c.max(1);
        let inv = 1.0 / hw.max(1) as f32;
        let means: Vec<f32> = sums.iter().map(|s| s * inv).collect();
        let reduce_w = CpuF32::new(&self.reduce_w, "squeeze-excite conv_reduce.weight")?;
        let reduce_b = CpuF32::new(&self.reduce_b, "squeeze-excite conv_reduce.bias")?;
        let expand_w = CpuF32::new(&self.expand_w, "squeeze-excite conv_expand.weight")?;
        let expand_b = CpuF32::new(&self.expand_b, "squeeze-excite conv_expand.bias")?;
        let mut s = linear_f32(&means, b, c, reduce_w.slice(), rd, reduce_b.slice())?;
        affine_act_in_place(Act::Net(self.act), &mut s, 1.0, 0.0);
        if let Some(map) = &apply_to {
            if map.len() != b * c * hw {
                return Err(Error::InvalidInput(format!(
                    "squeeze-excite: map of {} values for {b} x {c} planes of {hw}",
                    map.len()
                )));
            }
        }
        let map = apply_to.map(SharedOut::new);
        let g = linear_f32_then(
            &s,
            b,
            rd,
            expand_w.slice(),
            c,
            expand_b.slice(),
            |i, chans, g| {
                sigmoid_in_place(g);
                if let Some(map) = map {
                    // SAFETY: planes `chans` of sample i lie inside the map (its size is checked
                    // above) and belong to this task alone: every (sample, channel) gate value is
                    // computed once.
                    let planes = unsafe {
                        std::slice::from_raw_parts_mut(
                            map.at((i * c + chans.start) * hw),
                            g.len() * hw,
                        )
                    };
                    for (plane, g) in planes.chunks_exact_mut(hw.max(1)).zip(&*g) {
                        plane.iter_mut().for_each(|v| *v *= g);
                    }
                }
            },
        )?;
        Ok(g)
    }
}
