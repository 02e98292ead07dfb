//! Stochastic depth ("drop path", TF's `drop_connect`; Huang et al., 2016).

use candle_core::{DType, Tensor};

use crate::error::Result;

/// In training, zeroes each sample's residual branch with probability `rate` and scales the kept ones
/// by `1 / (1 - rate)`; identity at eval or when `rate` is 0.
pub fn drop_path(x: &Tensor, rate: f64, train: bool) -> Result<Tensor> {
    if !train || rate <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - rate;
    let batch = x.dim(0)?;
    let mut shape = vec![1usize; x.rank()];
    shape[0] = batch;
    let mask = Tensor::rand(0f32, 1f32, shape, x.device())?
        .lt(keep)?
        .to_dtype(DType::F32)?
        .affine(1.0 / keep, 0.0)?
        .to_dtype(x.dtype())?;
    Ok(x.broadcast_mul(&mask)?)
}
