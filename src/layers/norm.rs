//! Batch normalisation for NCHW feature maps, trainable and with updatable running statistics.

use candle_core::{DType, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use crate::error::Result;

/// `BatchNorm2d` with timm/PyTorch parameter names (`weight`, `bias`, `running_mean`, `running_var`).
///
/// In training mode it normalises with the batch statistics and updates the running ones
/// (`running = (1 - momentum) * running + momentum * batch`, PyTorch convention, unbiased variance); at
/// eval it uses the running statistics. Half-precision inputs are normalised in f32.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
}

impl BatchNorm2d {
    /// Loads (or, with a `VarMap`, creates: weight 1, bias 0, mean 0, var 1) a BN over `channels`.
    pub fn new(channels: usize, eps: f64, momentum: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        let mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?;
        let var = vb.get_with_hints(channels, "running_var", Init::Const(1.0))?;
        Ok(Self {
            weight,
            bias,
            running_mean: Var::from_tensor(&mean)?,
            running_var: Var::from_tensor(&var)?,
            eps,
            momentum,
        })
    }

    /// Scale `γ`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Shift `β`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// Running mean (a copy of its current value, detached from any graph).
    pub fn running_mean(&self) -> Tensor {
        self.running_mean.as_detached_tensor()
    }

    /// Running variance (detached).
    pub fn running_var(&self) -> Tensor {
        self.running_var.as_detached_tensor()
    }

    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// Per-channel `(scale, shift)` such that eval-mode BN is `x * scale + shift`, in f32.
    pub fn eval_scale_shift(&self) -> Result<(Tensor, Tensor)> {
        let mean = self.running_mean().to_dtype(DType::F32)?;
        let var = self.running_var().to_dtype(DType::F32)?;
        let scale = (self.weight.to_dtype(DType::F32)? / (var + self.eps)?.sqrt()?)?;
        let shift = (self.bias.to_dtype(DType::F32)? - (mean * &scale)?)?;
        Ok((scale, shift))
    }

    /// Normalises `x` ([B, C, H, W]); `train` selects batch statistics (and updates the running ones).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let c = x.dim(1)?;
        let bshape = (1, c, 1, 1);
        if !train {
            let (scale, shift) = self.eval_scale_shift()?;
            let dt = x.dtype();
            let (scale, shift) = (scale.to_dtype(dt)?, shift.to_dtype(dt)?);
            return Ok(x
                .broadcast_mul(&scale.reshape(bshape)?)?
                .broadcast_add(&shift.reshape(bshape)?)?);
        }
        let dt = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let (b, _, h, w) = xf.dims4()?;
        let n = (b * h * w) as f64;
        let mean = xf.mean_keepdim((0, 2, 3))?;
        let centered = xf.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim((0, 2, 3))?;
        let inv_std = (var.clone() + self.eps)?.sqrt()?.recip()?;
        let y = centered
            .broadcast_mul(&inv_std)?
            .broadcast_mul(&self.weight.to_dtype(DType::F32)?.reshape(bshape)?)?
            .broadcast_add(&self.bias.to_dtype(DType::F32)?.reshape(bshape)?)?;
        let m = self.momentum;
        let unbias = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
        let stat_dt = self.running_mean.dtype();
        let new_mean = (self
            .running_mean
            .as_detached_tensor()
            .to_dtype(DType::F32)?
            * (1.0 - m))?
            .add(&(mean.detach().flatten_all()? * m)?)?;
        let new_var = (self.running_var.as_detached_tensor().to_dtype(DType::F32)? * (1.0 - m))?
            .add(&(var.detach().flatten_all()? * (m * unbias))?)?;
        self.running_mean.set(&new_mean.to_dtype(stat_dt)?)?;
        self.running_var.set(&new_var.to_dtype(stat_dt)?)?;
        Ok(y.to_dtype(dt)?)
    }
}
