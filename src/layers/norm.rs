//! Batch normalisation for NCHW feature maps, trainable and with updatable running statistics.

use candle_core::{DType, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use crate::error::Result;
use crate::ops::affine_act::{affine_act, Act};
use crate::ops::channel_stats::channel_mean_var;

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
        self.forward_act_t(x, Act::Identity, train)
    }

    /// `act(bn(x))` in one pass over `x`: the eval affine, or in training the batch-statistics
    /// normalisation (gradients flow through the statistics) with the running statistics updated.
    pub fn forward_act_t(&self, x: &Tensor, act: Act, train: bool) -> Result<Tensor> {
        let dt = x.dtype();
        let c = x.dim(1)?;
        let (scale, shift) = if train {
            let xf = x.to_dtype(DType::F32)?;
            let stats = channel_mean_var(&xf)?;
            let (mean, var) = (stats.get(0)?, stats.get(1)?);
            self.update_running(&mean, &var, xf.elem_count() / c)?;
            let scale = (self.weight.to_dtype(DType::F32)? * (var + self.eps)?.sqrt()?.recip()?)?;
            let shift = (self.bias.to_dtype(DType::F32)? - (mean * &scale)?)?;
            (scale, shift)
        } else {
            self.eval_scale_shift()?
        };
        let (scale, shift) = (scale.reshape((1, c))?, shift.reshape((1, c))?);
        if dt == DType::F32 || train {
            let y = affine_act(&x.to_dtype(DType::F32)?, &scale, &shift, act)?;
            return Ok(y.to_dtype(dt)?);
        }
        let (scale, shift) = (scale.to_dtype(dt)?, shift.to_dtype(dt)?);
        Ok(affine_act(x, &scale, &shift, act)?)
    }

    /// `running = (1 − m)·running + m·batch`, with the unbiased variance over `n` values per channel.
    fn update_running(&self, mean: &Tensor, var: &Tensor, n: usize) -> Result<()> {
        let m = self.momentum;
        let unbias = if n > 1 {
            n as f64 / (n as f64 - 1.0)
        } else {
            1.0
        };
        let stat_dt = self.running_mean.dtype();
        let blend = |running: &Var, batch: &Tensor, k: f64| -> Result<()> {
            let old = running.as_detached_tensor().to_dtype(DType::F32)?;
            let new = ((old * (1.0 - m))? + (batch.detach() * (m * k))?)?;
            Ok(running.set(&new.to_dtype(stat_dt)?)?)
        };
        blend(&self.running_mean, mean, 1.0)?;
        blend(&self.running_var, var, unbias)
    }
}
