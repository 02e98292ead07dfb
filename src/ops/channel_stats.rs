//! Per-channel mean and (biased) variance of a `[B, C, H, W]` tensor: the batch statistics of
//! training-mode batch norm, differentiable.
//!
//! candle reduces over the non-trailing dimensions `(0, 2, 3)` element by element with an index
//! computation per element, and the composed `mean`/`sub`/`sqr`/`mean` adds three full-size buffers;
//! in a training step of EfficientNet at 224 px that reduction was a third of the time. The CPU op here
//! reads each channel's planes in place (two passes: mean, then squared deviations, summed in f64), and
//! its backward is one [`affine_act`] pass: `∂/∂x = g_μ/N + g_σ²·2(x − μ)/N` per channel.

use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::affine_act::{affine_act, f32_slice, Act};

/// `[2, C]`: row 0 the mean, row 1 the biased variance of each channel of `x` (`[B, C, H, W]`) over
/// batch and space, differentiable in `x`. Computed in f32 (inputs of other dtypes are converted).
pub fn channel_mean_var(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, _, h, w) = x.dims4()?;
    if b * h * w == 0 {
        bail!(
            "channel_mean_var: no elements per channel in shape {:?}",
            x.dims()
        )
    }
    let x = x.to_dtype(DType::F32)?;
    if x.device().is_cpu() {
        return x.contiguous()?.apply_op1(ChannelMeanVar);
    }
    let mean = x.mean_keepdim((0, 2, 3))?;
    let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim((0, 2, 3))?;
    Tensor::stack(&[mean.flatten_all()?, var.flatten_all()?], 0)
}

struct ChannelMeanVar;

/// The mean of each `H x W` plane of `x: [B, C, H, W]`, `[B, C]` (global average pooling; the
/// squeeze-excite input), differentiable: one kernel on CUDA (feature `cuda`; f32, f16, bf16), where
/// candle's reduction over the trailing dimensions was 16% of an EfficientNet-B0 pass, else candle's
/// `mean((2, 3))`.
pub fn spatial_mean(x: &Tensor) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() && super::depthwise::has_kernel(x) {
        x.dims4()?;
        return super::cuda::plane_means(x);
    }
    x.mean((2, 3))
}

/// The mean of each `H x W` plane of a CPU f32 `x` `[B, C, H, W]`: `[B, C]` (the global average pool
/// of an inference pass), or `None` for other devices and dtypes. Not differentiable: for the fused
/// (inference-only) networks, where candle's `mean((2, 3))` took 12 µs on MobileNetV2's 1280 x 7 x 7
/// head output, as long as its classifier.
pub(crate) fn plane_means_f32(x: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        return Ok(None);
    }
    let (b, c, h, w) = x.dims4()?;
    let x = x.contiguous()?;
    let data = super::CpuF32::new(&x, "plane means input")?;
    let means = match h * w {
        0 => vec![f32::NAN; b * c],
        hw => data
            .slice()
            .chunks_exact(hw)
            .map(|p| (plane_sum(p, |v| v) / hw as f64) as f32)
            .collect(),
    };
    Ok(Some(Tensor::from_vec(means, (b, c), x.device())?))
}

/// Sum of a plane in f32 lanes (vectorisable), returned in f64.
pub(crate) fn plane_sum(p: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut lanes = [0f32; 16];
    let chunks = p.chunks_exact(16);
    let tail = chunks.remainder();
    let mut total = 0f64;
    for (i, ch) in chunks.enumerate() {
        for (l, &v) in lanes.iter_mut().zip(ch) {
            *l += f(v);
        }
        // Flush to f64 every 4096 elements so the f32 lanes never hold long sums.
        if i % 256 == 255 {
            total += lanes.iter().map(|&l| l as f64).sum::<f64>();
            lanes = [0f32; 16];
        }
    }
    total += lanes.iter().map(|&l| l as f64).sum::<f64>();
    total + tail.iter().map(|&v| f(v) as f64).sum::<f64>()
}

impl CustomOp1 for ChannelMeanVar {
    fn name(&self) -> &'static str {
        "channel-mean-var"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice("channel_mean_var", s, l, "input")?;
        let (b, c, h, w) = l.shape().dims4()?;
        let hw = h * w;
        let n = (b * hw) as f64;
        let plane = |bi: usize, ci: usize| &x[(bi * c + ci) * hw..(bi * c + ci + 1) * hw];
        let stats: Vec<(f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ci| {
                let mean = (0..b)
                    .map(|bi| plane_sum(plane(bi, ci), |v| v))
                    .sum::<f64>()
                    / n;
                let m = mean as f32;
                let var = (0..b)
                    .map(|bi| plane_sum(plane(bi, ci), |v| (v - m) * (v - m)))
                    .sum::<f64>()
                    / n;
                (m, var as f32)
            })
            .collect();
        let mut out = Vec::with_capacity(2 * c);
        out.extend(stats.iter().map(|s| s.0));
        out.extend(stats.iter().map(|s| s.1));
        Ok((CpuStorage::F32(out), Shape::from((2, c))))
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (b, c, h, w) = x.dims4()?;
        let n = (b * h * w) as f64;
        let (mean, g_mean, g_var) = (res.get(0)?, grad.get(0)?, grad.get(1)?);
        // ∂L/∂x = g_μ/N + (2 g_σ²/N)·(x − μ) = a·x + (g_μ/N − a·μ), a = 2 g_σ²/N.
        let a = (g_var * (2.0 / n))?;
        let t = ((g_mean / n)? - (&a * mean)?)?;
        let dx = affine_act(x, &a.reshape((1, c))?, &t.reshape((1, c))?, Act::Identity)?;
        Ok(Some(dx))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn matches_the_composed_statistics_and_their_gradient() {
        let dev = Device::Cpu;
        // 37 x 41 planes exercise the 16-lane tail; an offset mean checks the two-pass variance.
        for (shape, offset) in [
            ((3, 5, 37, 41), 100f32),
            ((1, 4, 1, 1), 0.0),
            ((2, 3, 4, 4), -2.0),
        ] {
            let x = Var::from_tensor(
                &(Tensor::randn(0f32, 2f32, shape, &dev).unwrap() + offset as f64).unwrap(),
            )
            .unwrap();
            let w = Tensor::randn(0f32, 1f32, (2, shape.1), &dev).unwrap();
            let fast = channel_mean_var(x.as_tensor()).unwrap();
            let mean = x.as_tensor().mean_keepdim((0, 2, 3)).unwrap();
            let var = x
                .as_tensor()
                .broadcast_sub(&mean)
                .unwrap()
                .sqr()
                .unwrap()
                .mean_keepdim((0, 2, 3))
                .unwrap();
            let slow = Tensor::stack(
                &[mean.flatten_all().unwrap(), var.flatten_all().unwrap()],
                0,
            )
            .unwrap();
            assert!(
                crate::ops::tests::max_abs_diff(&fast, &slow) < 1e-4 * (1.0 + offset.abs()),
                "{shape:?}"
            );
            // Gradient of a weighted sum of the statistics.
            let g_fast = (fast * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let g_slow = (slow * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let (gf, gs) = (g_fast.get(&x).unwrap(), g_slow.get(&x).unwrap());
            assert!(
                crate::ops::tests::max_abs_diff(gf, gs) < 1e-5,
                "{shape:?}: {}",
                crate::ops::tests::max_abs_diff(gf, gs)
            );
        }
    }

    /// Equals candle's `mean((2, 3))` in f64 on 7x7 and 37x41 planes (offset by 1000, so a sum in f32
    /// lanes alone would lose digits), on a transposed (non-contiguous) view and on empty planes;
    /// declines other dtypes. The bound is the f32 lanes' rounding: each lane adds `k = ⌈hw / 16⌉`
    /// values, so its error is at most `k · u · Σ|x|` (u = 2⁻²⁴), i.e. `k · u · max|x|` on the mean
    /// (5.7e-3 for 37x41 planes at 1000; a fixed 1e-4, two ulps of 1000, failed now and then on random
    /// inputs). A dropped or doubled element would be off by about 1000 / hw.
    #[test]
    fn plane_means_match_candle() {
        let dev = Device::Cpu;
        for (b, c, h, w) in [(2, 5, 7, 7), (1, 3, 37, 41)] {
            let x = (Tensor::randn(0f32, 1f32, (b, c, h, w), &dev).unwrap() + 1000.0).unwrap();
            for x in [x.clone(), x.transpose(2, 3).unwrap()] {
                let got = plane_means_f32(&x).unwrap().unwrap();
                let want = x.to_dtype(DType::F64).unwrap().mean((2, 3)).unwrap();
                let want = want.to_dtype(DType::F32).unwrap();
                assert_eq!(got.dims(), [b, c]);
                let d = crate::ops::tests::max_abs_diff(&got, &want);
                let max = x
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                let bound = (h * w).div_ceil(16) as f32 * f32::EPSILON / 2.0 * max;
                assert!(d <= bound, "{:?}: {d} > {bound}", x.dims());
            }
        }
        let empty = Tensor::zeros((1, 2, 0, 3), DType::F32, &dev).unwrap();
        let got = plane_means_f32(&empty)
            .unwrap()
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!(got[0].iter().all(|v| v.is_nan()), "{got:?}");
        let half = Tensor::zeros((1, 2, 3, 3), DType::F16, &dev).unwrap();
        assert!(plane_means_f32(&half).unwrap().is_none());
    }

    #[test]
    fn refuses_empty_channels() {
        let x = Tensor::zeros((0, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(channel_mean_var(&x).is_err());
    }
}
