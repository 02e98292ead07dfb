//! `act(x · scale + shift)` per channel, in one pass over memory.
//!
//! Eval-mode batch norm followed by its activation, a folded convolution's bias and activation, and the
//! squeeze-excite gate are all this one operation. candle would run it as three or four separate
//! elementwise passes, each allocating a fresh buffer, with a scalar `exp` inside swish; on the CPU
//! (f32) this is a single multi-threaded kernel with a vectorisable `exp`. Other devices and dtypes use
//! the equivalent candle ops. The CPU backward pass is one more kernel (`dx`, and the per-plane sums
//! for the scale and shift gradients, in one pass over `x` and the incoming gradient), so training
//! through it (batch norm in training and eval mode, the SE gate) stays cheap.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Shape, Tensor};
use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::config::Activation;

/// The activation applied after the affine transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Act {
    /// No activation.
    Identity,
    /// One of the network activations.
    Net(Activation),
}

impl From<Option<Activation>> for Act {
    fn from(a: Option<Activation>) -> Self {
        a.map_or(Act::Identity, Act::Net)
    }
}

/// `act(x · scale + shift)` with `x: [B, C, H, W]` and `scale`, `shift` of shape `[N, C]`, `N` being 1
/// (per channel) or `B` (per sample and channel, as the squeeze-excite gate).
pub fn affine_act(
    x: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    act: Act,
) -> candle_core::Result<Tensor> {
    let (b, c, _, _) = x.dims4()?;
    for (what, t) in [("scale", scale), ("shift", shift)] {
        let d = t.dims();
        if d.len() != 2 || d[1] != c || (d[0] != 1 && d[0] != b) {
            bail!("affine_act: {what} has shape {d:?}, expected [1 or {b}, {c}]")
        }
    }
    let cpu_f32 = x.device().is_cpu()
        && [x, scale, shift]
            .iter()
            .all(|t| t.dtype() == candle_core::DType::F32);
    if cpu_f32 {
        x.contiguous()?.apply_op3(
            &scale.contiguous()?,
            &shift.contiguous()?,
            AffineAct { act },
        )
    } else {
        let dt = x.dtype();
        reference(x, &scale.to_dtype(dt)?, &shift.to_dtype(dt)?, act)
    }
}

/// `x · gate` with `gate: [B, C]` per sample and channel (the squeeze-excite gate), differentiable:
/// [`affine_act`]'s kernel on the CPU in f32, a kernel on CUDA (feature `cuda`; f32, f16, bf16), one
/// broadcast multiply elsewhere.
pub fn scale_channels(x: &Tensor, gate: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, _, _) = x.dims4()?;
    if x.device().is_cpu()
        && [x, gate]
            .iter()
            .all(|t| t.dtype() == candle_core::DType::F32)
    {
        return affine_act(x, gate, &gate.zeros_like()?, Act::Identity);
    }
    if gate.dims() != [b, c] {
        bail!(
            "scale_channels: gate has shape {:?}, expected [{b}, {c}]",
            gate.dims()
        )
    }
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() && super::depthwise::has_kernel(x) {
        return super::cuda::scale_channels(x, gate);
    }
    x.broadcast_mul(&gate.to_dtype(x.dtype())?.reshape((b, c, 1, 1))?)
}

/// [`affine_act`] overwriting `y`, for inference on a tensor nothing else refers to (a fresh convolution
/// output): no new buffer, no gradient. Returns `y`. Runs in place on the CPU for f32 and per-channel
/// parameters, and on CUDA (feature `cuda`) for f32, f16 and bf16 `y` with per-channel or per-sample
/// parameters (used in f32); falls back to [`affine_act`] otherwise and for non-contiguous `y`.
pub fn affine_act_inference(
    y: Tensor,
    scale: &Tensor,
    shift: &Tensor,
    act: Act,
) -> candle_core::Result<Tensor> {
    use candle_core::DType;
    let (b, c, _, _) = y.dims4()?;
    let per_channel = scale.dims() == [1, c] && shift.dims() == [1, c];
    let ok = y.is_contiguous()
        && if y.device().is_cpu() {
            per_channel && [&y, scale, shift].iter().all(|t| t.dtype() == DType::F32)
        } else {
            let per_sample = scale.dims() == [b, c] && shift.dims() == [b, c];
            cfg!(feature = "cuda")
                && y.device().is_cuda()
                && (per_channel || per_sample)
                && matches!(y.dtype(), DType::F32 | DType::F16 | DType::BF16)
        };
    if !ok {
        return affine_act(&y, scale, shift, act);
    }
    let param = |t: &Tensor| t.to_dtype(DType::F32)?.contiguous();
    y.inplace_op3(&param(scale)?, &param(shift)?, &AffineActInPlace { act })?;
    Ok(y)
}

struct AffineActInPlace {
    act: Act,
}

impl candle_core::InplaceOp3 for AffineActInPlace {
    fn name(&self) -> &'static str {
        "affine-act-in-place"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let (scale, shift) = (
            f32_slice("affine_act", s2, l2, "scale")?,
            f32_slice("affine_act", s3, l3, "shift")?,
        );
        let (_, c, h, w) = l1.shape().dims4()?;
        let CpuStorage::F32(v) = s1 else {
            bail!("affine_act_inference: input must be f32")
        };
        let Some((a, b)) = l1.contiguous_offsets() else {
            bail!("affine_act_inference: input must be contiguous")
        };
        let hw = h * w;
        if hw == 0 {
            return Ok(());
        }
        let planes_per_task = (16_384 / hw).max(1);
        v[a..b]
            .par_chunks_mut(hw * planes_per_task)
            .enumerate()
            .for_each(|(task, chunk)| {
                for (i, p) in chunk.chunks_mut(hw).enumerate() {
                    let ch = (task * planes_per_task + i) % c;
                    affine_act_in_place(self.act, p, scale[ch], shift[ch]);
                }
            });
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        super::cuda::affine_act_in_place((s1, l1), (s2, l2), (s3, l3), self.act)
    }
}

/// The same computation with candle ops (any device and dtype; also the backward pass's building block).
pub fn reference(
    x: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    act: Act,
) -> candle_core::Result<Tensor> {
    let (n, c) = scale.dims2()?;
    let z = x
        .broadcast_mul(&scale.reshape((n, c, 1, 1))?)?
        .broadcast_add(&shift.reshape((shift.dim(0)?, c, 1, 1))?)?;
    match act {
        Act::Identity => Ok(z),
        Act::Net(Activation::Swish) => z.silu(),
        Act::Net(Activation::Relu6) => z.relu()?.minimum(6.0),
        Act::Net(Activation::Relu) => z.relu(),
    }
}

struct AffineAct {
    act: Act,
}

/// `exp(x)` to about 2 ulp (Cephes `expf` polynomial), written branch-free and without float-to-int
/// conversions so that loops over it vectorise.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer in the low mantissa bits
                                     // max/min rather than clamp: plain vmaxps/vminps in the vectorised loop.
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.0).min(88.0);
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n from the integer held in t's mantissa bits.
    let two_n = f32::from_bits(t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127) << 23);
    e * two_n
}

/// `y = 1 / (1 + exp(-y))` in place (the squeeze-excite gate on the fused path): 16 lanes at a time
/// by [`sigmoid_ps`] on AVX-512 (1152 values: 0.24 µs, against 1.0 µs for the portable loop compiled
/// for the baseline ISA), elsewhere the portable loop.
pub(crate) fn sigmoid_in_place(y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was detected on this CPU just above.
        return unsafe { sigmoid_in_place_avx512(y) };
    }
    // `exp` clamps its argument, NaN included: the select keeps NaN.
    y.iter_mut().for_each(|v| {
        let s = 1.0 / (1.0 + exp(-*v));
        *v = if v.is_nan() { *v } else { s };
    });
}

/// [`sigmoid_in_place`] on AVX-512, the tail with masked loads and stores.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sigmoid_in_place_avx512(y: &mut [f32]) {
    use std::arch::x86_64::*;
    for chunk in y.chunks_mut(16) {
        let mask = super::first_lanes(chunk.len());
        let p = chunk.as_mut_ptr();
        // SAFETY: the mask covers the chunk's lanes, which lie inside `y`.
        _mm512_mask_storeu_ps(p, mask, sigmoid_ps(_mm512_maskz_loadu_ps(mask, p)));
    }
}

#[inline(always)]
fn apply<F: Fn(f32) -> f32>(x: &[f32], y: &mut [MaybeUninit<f32>], s: f32, t: f32, f: F) {
    for (y, &x) in y.iter_mut().zip(x) {
        y.write(f(x * s + t));
    }
}

#[inline(always)]
fn plane(act: Act, x: &[f32], y: &mut [MaybeUninit<f32>], s: f32, t: f32) {
    match act {
        Act::Identity => apply(x, y, s, t, |z| z),
        Act::Net(Activation::Swish) => apply(x, y, s, t, |z| z / (1.0 + exp(-z))),
        Act::Net(Activation::Relu6) => apply(x, y, s, t, |z| z.clamp(0.0, 6.0)),
        Act::Net(Activation::Relu) => apply(x, y, s, t, |z| z.max(0.0)),
    }
}

isa_dispatch!(fn plane_dispatch, plane_avx2, plane_avx512
    (act: Act, x: &[f32], y: &mut [MaybeUninit<f32>], s: f32, t: f32) = plane);

#[inline(always)]
fn plane_in_place(act: Act, y: &mut [f32], s: f32, t: f32) {
    match act {
        Act::Identity => y.iter_mut().for_each(|v| *v = *v * s + t),
        Act::Net(Activation::Swish) => y.iter_mut().for_each(|v| {
            let z = *v * s + t;
            *v = z / (1.0 + exp(-z));
        }),
        Act::Net(Activation::Relu6) => y.iter_mut().for_each(|v| *v = (*v * s + t).clamp(0.0, 6.0)),
        Act::Net(Activation::Relu) => y.iter_mut().for_each(|v| *v = (*v * s + t).max(0.0)),
    }
}

isa_dispatch!(
    /// [`affine_act_in_place`] as compiled from the portable kernel.
    fn plane_in_place_dispatch, plane_in_place_avx2, plane_in_place_avx512
    (act: Act, y: &mut [f32], s: f32, t: f32) = plane_in_place
);

/// `y = act(y · s + t)` in place (the fused convolution epilogues). On AVX-512 this runs the
/// hand-written [`act_ps`] (for swish: fused multiply-adds, `vscalefps` for `2^n` and a Newton-refined
/// reciprocal instead of a division); elsewhere the portable kernel compiled for the best ISA.
pub(crate) fn affine_act_in_place(act: Act, y: &mut [f32], s: f32, t: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was detected on this CPU just above.
        return unsafe { in_place_avx512(act, y, s, t) };
    }
    plane_in_place_dispatch(act, y, s, t)
}

/// `y = act(y · s + t)` 16 lanes at a time (the tail with masked loads and stores), by [`act_ps`].
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn in_place_avx512(act: Act, y: &mut [f32], s: f32, t: f32) {
    use std::arch::x86_64::*;
    let (vs, vt) = (_mm512_set1_ps(s), _mm512_set1_ps(t));
    let n = y.len();
    let p = y.as_mut_ptr();
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n, so the 16 lanes at p + i are inside `y`.
        let z = _mm512_fmadd_ps(_mm512_loadu_ps(p.add(i)), vs, vt);
        _mm512_storeu_ps(p.add(i), act_ps(z, act));
        i += 16;
    }
    if i < n {
        let m: __mmask16 = (1u16 << (n - i)) - 1;
        // SAFETY: the mask covers the n - i < 16 lanes left inside `y`; masked lanes are not accessed.
        let z = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, p.add(i)), vs, vt);
        _mm512_mask_storeu_ps(p.add(i), m, act_ps(z, act));
    }
}

/// `act` as the register-blocked kernels apply it (the 1x1 kernel, the channel-blocked depthwise
/// kernel): a clamp to `[lo, hi]`, or nothing, applied to every accumulator in registers
/// ([`clamp_ps`]); or, for swish (`true`), nothing there and [`act_ps`] in a second pass over the
/// stored block, still in L1. A swish of about a dozen instructions inside the epilogue kept LLVM
/// from unrolling it over the accumulators, and a loop over them kept them in memory: zeroed by a
/// call to `memset` before every block and stored after its last multiply-add (about as long as 16
/// input channels of the 1x1 kernel's multiply-adds).
#[cfg(target_arch = "x86_64")]
pub(crate) fn blocked_act(act: Act) -> (Option<(f32, f32)>, bool) {
    match act {
        Act::Identity => (None, false),
        Act::Net(Activation::Relu) => (Some((0.0, f32::INFINITY)), false),
        Act::Net(Activation::Relu6) => (Some((0.0, 6.0)), false),
        Act::Net(Activation::Swish) => (None, true),
    }
}

/// `min(max(z, lo), hi)` on 16 lanes, max first as in [`act_ps`] (a NaN gives `lo`), or `z` without
/// a clamp: the part of [`blocked_act`]'s split applied in registers.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn clamp_ps(
    z: std::arch::x86_64::__m512,
    clamp: Option<(f32, f32)>,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    match clamp {
        Some((lo, hi)) => _mm512_min_ps(_mm512_max_ps(z, _mm512_set1_ps(lo)), _mm512_set1_ps(hi)),
        None => z,
    }
}

/// `act(z)` on 16 lanes: the activation of every AVX-512 epilogue (this module's, the 1x1 and the
/// depthwise kernels').
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn act_ps(z: std::arch::x86_64::__m512, act: Act) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    match act {
        Act::Identity => z,
        Act::Net(Activation::Swish) => swish_ps(z),
        Act::Net(Activation::Relu) => _mm512_max_ps(z, _mm512_setzero_ps()),
        Act::Net(Activation::Relu6) => {
            _mm512_min_ps(_mm512_max_ps(z, _mm512_setzero_ps()), _mm512_set1_ps(6.0))
        }
    }
}

/// `z · sigmoid(z) = z / (1 + exp(-z))` on 16 lanes, in 11 instructions (the activation of every
/// expansion and depthwise output of EfficientNet: on the narrow layers it costs as much as the
/// convolution), about 4e-7 relative error ([`one_plus_exp_neg`]'s).
///
/// Inside the kernels the FMA ports are what swish competes for, so it is written for the fewest
/// operations on them, not the shortest time alone: the division runs on the divider beside them.
/// A reciprocal estimate refined by a Newton step instead is 6–14% faster alone
/// (`tools/op_throughput.c`), but puts more operations on those ports: whole passes of B0 ran 2%
/// slower with it.
///
/// Only `z` above 88 is clamped (where the result is `z`), so that `+inf` gives `+inf`; far below,
/// `1 + exp(-z)` overflows to infinity and the result is 0. `NaN` and `-inf` give `NaN`, as
/// `z · sigmoid(z)` does.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn swish_ps(z: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    _mm512_div_ps(z, one_plus_exp_neg(_mm512_min_ps(z, _mm512_set1_ps(88.0))))
}

/// `sigmoid(z) = 1 / (1 + exp(-z))` on 16 lanes, as [`swish_ps`] computes it (the same relative
/// error), `z` clamped to `[-88, 88]` first so that infinities give 0 and 1; `NaN` gives `NaN`.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn sigmoid_ps(z: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let c = |v: f32| _mm512_set1_ps(v);
    // Each takes its second operand where either is NaN: the NaN goes through.
    let zc = _mm512_min_ps(c(88.0), _mm512_max_ps(c(-88.0), z));
    _mm512_div_ps(c(1.0), one_plus_exp_neg(zc))
}

/// `2^(i/32)` for `i` in `0..32`, rounded to f32: the table of [`one_plus_exp_neg`].
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
const EXP2_32THS: [f32; 32] = [
    1.0, 1.021_897_2, 1.044_273_7, 1.067_140_5, 1.090_507_7, 1.114_386_8, 1.138_788_6, 1.163_724_9,
    1.189_207_1, 1.215_247_4, 1.241_857_8, 1.269_051, 1.296_839_6, 1.325_236_7, 1.354_255_6, 1.383_91,
    std::f32::consts::SQRT_2,
    1.445_180_8, 1.476_826_2, 1.509_164_5, 1.542_210_8, 1.575_980_9, 1.610_490_3, 1.645_755_5,
    1.681_792_9, 1.718_619_3, 1.756_252_2, 1.794_709_1, 1.834_008_1, 1.874_167_7, 1.915_206_6, 1.957_144_1,
];

/// `1 + exp(-zc)` on 16 lanes for `zc` at most 88 (see [`swish_ps`]), in 9 instructions.
///
/// `exp(-zc) = 2^k · exp(r)` with `k = -zc · log2 e` rounded to a multiple of 1/32 and
/// `r = -zc - k · ln 2` in `[-ln2/64, ln2/64]`. The rounding adds `1.5 · 2^18`, whose unit in the
/// last place is 1/32, so that the sum's last five bits are `k`'s 32nds: they pick `2^(k - floor k)`
/// from [`EXP2_32THS`] (one `vpermt2ps`), and `vscalefps` multiplies by `2^floor k`. `exp(r)` is
/// `1 + a1·r + a2·r²`, fitted for minimal relative error on that interval (5.3e-8); the rounding of
/// `ln 2` in `r` adds up to 2.4e-7 at the ends of the range, the table's 6e-8 (the table and the fit
/// come from `tools/fit_exp_table.py`). Against `vrndscaleps` (two operations, both on port 0 of
/// Intel's cores) and a degree-5 polynomial on `[-ln2/2, ln2/2]`, this takes two vector operations
/// off every swish: B0 at batch 1 ran 3% faster.
///
/// Far below the range (`-zc · log2 e` beyond `2^17`) the sum rounds to coarser steps, but `k` stays
/// above 128 and the result overflows to infinity as it should; `zc = -inf` gives `NaN`.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn one_plus_exp_neg(zc: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let c = |v: f32| _mm512_set1_ps(v);
    let big = c(1.5 * 262_144.0);
    let t = _mm512_fmadd_ps(zc, c(-std::f32::consts::LOG2_E), big);
    let k = _mm512_sub_ps(t, big);
    let minus_r = _mm512_fmadd_ps(k, c(std::f32::consts::LN_2), zc);
    // `vpermt2ps` reads the index from the last five bits of each lane.
    let table = EXP2_32THS.as_ptr();
    let f = _mm512_permutex2var_ps(
        _mm512_loadu_ps(table),
        _mm512_castps_si512(t),
        _mm512_loadu_ps(table.add(16)),
    );
    // exp(r) - 1 = a1·r + a2·r² = -r · (a2·(-r) - a1)
    let q = _mm512_mul_ps(
        _mm512_fmadd_ps(minus_r, c(0.499_999_97), c(-1.000_014_7)),
        minus_r,
    );
    _mm512_add_ps(_mm512_scalef_ps(_mm512_fmadd_ps(q, f, f), k), c(1.0))
}

/// The contiguous f32 data of a custom op's argument (`op` and `what` name it in errors).
pub(crate) fn f32_slice<'a>(
    op: &str,
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{op}: {what} must be f32")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{op}: {what} must be contiguous"),
    }
}

impl CustomOp3 for AffineAct {
    fn name(&self) -> &'static str {
        "affine-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, scale, shift) = (
            f32_slice("affine_act", s1, l1, "input")?,
            f32_slice("affine_act", s2, l2, "scale")?,
            f32_slice("affine_act", s3, l3, "shift")?,
        );
        let (b, c, h, w) = l1.shape().dims4()?;
        let hw = h * w;
        if hw == 0 || x.is_empty() {
            return Ok((CpuStorage::F32(Vec::new()), l1.shape().clone()));
        }
        // Every element is written below: no need to zero the buffer first.
        let mut y: Vec<f32> = Vec::with_capacity(x.len());
        let per_sample = |t: &[f32]| t.len() == b * c;
        let (ss, st) = (per_sample(scale), per_sample(shift));
        // Work items of at least ~16k elements keep the thread-pool overhead small on 7x7 maps.
        let planes_per_task = (16_384 / hw).max(1);
        y.spare_capacity_mut()[..x.len()]
            .par_chunks_mut(hw * planes_per_task)
            .zip(x.par_chunks(hw * planes_per_task))
            .enumerate()
            .for_each(|(task, (yc, xc))| {
                for (i, (yp, xp)) in yc.chunks_mut(hw).zip(xc.chunks(hw)).enumerate() {
                    let p = task * planes_per_task + i; // plane index = sample * C + channel
                    let (ch, sample) = (p % c, p / c);
                    let s = scale[if ss { sample * c + ch } else { ch }];
                    let t = shift[if st { sample * c + ch } else { ch }];
                    plane_dispatch(self.act, xp, yp, s, t);
                }
            });
        // SAFETY: the chunks above cover all `x.len()` elements and each was written exactly once.
        unsafe { y.set_len(x.len()) };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The op only runs on CPU f32 tensors (see `affine_act`), so its inputs are such here.
        let (b, c, h, w) = x.dims4()?;
        let hw = h * w;
        let (rows_s, rows_t) = (scale.dim(0)?, shift.dim(0)?);
        let grad = grad.contiguous()?;
        let planes = b * c;
        let mut dx: Vec<f32> = Vec::with_capacity(planes * hw);
        // Per plane: (Σ g·x, Σ g) with g = grad · act'(x·s + t).
        let mut sums = vec![(0f64, 0f64); planes];
        with_f32_slices([x, scale, shift, &grad], |[x, scale, shift, gy]| {
            if hw == 0 {
                return Ok(());
            }
            let planes_per_task = (16_384 / hw).max(1);
            let per_sample = |t: &[f32]| t.len() == planes;
            let (ss, st) = (per_sample(scale), per_sample(shift));
            dx.spare_capacity_mut()[..x.len()]
                .par_chunks_mut(hw * planes_per_task)
                .zip(x.par_chunks(hw * planes_per_task))
                .zip(gy.par_chunks(hw * planes_per_task))
                .zip(sums.par_chunks_mut(planes_per_task))
                .enumerate()
                .for_each(|(task, (((dxc, xc), gc), sc))| {
                    let planes = dxc.chunks_mut(hw).zip(xc.chunks(hw)).zip(gc.chunks(hw));
                    for (i, ((dp, xp), gp)) in planes.enumerate() {
                        let p = task * planes_per_task + i;
                        let ch = p % c;
                        let s = scale[if ss { p } else { ch }];
                        let t = shift[if st { p } else { ch }];
                        sc[i] = plane_bwd_dispatch(self.act, xp, gp, dp, s, t);
                    }
                });
            Ok(())
        })?;
        // SAFETY: the chunks above cover all `b·c·h·w` elements and each was written exactly once.
        unsafe { dx.set_len(planes * hw) };
        let reduce = |rows: usize, pick: fn(&(f64, f64)) -> f64| -> Vec<f32> {
            if rows == 1 {
                (0..c)
                    .map(|ch| (0..b).map(|bi| pick(&sums[bi * c + ch])).sum::<f64>() as f32)
                    .collect()
            } else {
                sums.iter().map(|v| pick(v) as f32).collect()
            }
        };
        let dev = x.device();
        let ds = Tensor::from_vec(reduce(rows_s, |v| v.0), (rows_s, c), dev)?;
        let dt = Tensor::from_vec(reduce(rows_t, |v| v.1), (rows_t, c), dev)?;
        let dx = Tensor::from_vec(dx, x.shape(), dev)?;
        Ok((Some(dx), Some(ds), Some(dt)))
    }
}

/// Runs `f` on the contiguous f32 CPU data of four tensors.
fn with_f32_slices<R>(
    ts: [&Tensor; 4],
    f: impl FnOnce([&[f32]; 4]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices: Vec<&[f32]> = Vec::with_capacity(4);
    for (storage, layout) in &guards {
        let candle_core::Storage::Cpu(CpuStorage::F32(v)) = &**storage else {
            bail!("affine_act backward: CPU f32 tensors expected")
        };
        let Some((a, b)) = layout.contiguous_offsets() else {
            bail!("affine_act backward: contiguous tensors expected")
        };
        slices.push(&v[a..b]);
    }
    f([slices[0], slices[1], slices[2], slices[3]])
}

/// 1 where `inside`, else 0 (a select, so the loops stay vectorised).
#[inline(always)]
fn step(inside: bool) -> f32 {
    if inside {
        1.0
    } else {
        0.0
    }
}

/// One plane of the backward pass: `dx = g·s` with `g = grad·act'(x·s + t)`; returns `(Σ g·x, Σ g)`.
#[inline(always)]
fn plane_bwd_with<F: Fn(f32) -> f32>(
    x: &[f32],
    gy: &[f32],
    dx: &mut [MaybeUninit<f32>],
    s: f32,
    t: f32,
    dact: F,
) -> (f64, f64) {
    const L: usize = 8;
    let (mut sgx, mut sg) = ([0f32; L], [0f32; L]);
    let mut chunks = x
        .chunks_exact(L)
        .zip(gy.chunks_exact(L))
        .zip(dx.chunks_exact_mut(L));
    for ((x8, g8), d8) in &mut chunks {
        for i in 0..L {
            let g = g8[i] * dact(x8[i] * s + t);
            d8[i].write(g * s);
            sgx[i] += g * x8[i];
            sg[i] += g;
        }
    }
    let (mut a, mut b) = (
        sgx.iter().map(|&v| v as f64).sum::<f64>(),
        sg.iter().map(|&v| v as f64).sum::<f64>(),
    );
    let done = x.len() / L * L;
    for ((&xv, &gv), d) in x[done..].iter().zip(&gy[done..]).zip(&mut dx[done..]) {
        let g = gv * dact(xv * s + t);
        d.write(g * s);
        a += (g * xv) as f64;
        b += g as f64;
    }
    (a, b)
}

#[inline(always)]
fn plane_bwd(
    act: Act,
    x: &[f32],
    gy: &[f32],
    dx: &mut [MaybeUninit<f32>],
    s: f32,
    t: f32,
) -> (f64, f64) {
    match act {
        Act::Identity => plane_bwd_with(x, gy, dx, s, t, |_| 1.0),
        // d/dz z·σ(z) = σ(z) · (1 + z · (1 − σ(z)))
        Act::Net(Activation::Swish) => plane_bwd_with(x, gy, dx, s, t, |z| {
            let sig = 1.0 / (1.0 + exp(-z));
            sig * (1.0 + z * (1.0 - sig))
        }),
        Act::Net(Activation::Relu6) => {
            plane_bwd_with(x, gy, dx, s, t, |z| step(z > 0.0 && z < 6.0))
        }
        Act::Net(Activation::Relu) => plane_bwd_with(x, gy, dx, s, t, |z| step(z > 0.0)),
    }
}

isa_dispatch!(fn plane_bwd_dispatch, plane_bwd_avx2, plane_bwd_avx512
    (act: Act, x: &[f32], gy: &[f32], dx: &mut [MaybeUninit<f32>], s: f32, t: f32) -> (f64, f64)
    = plane_bwd);

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

    use super::*;

    #[test]
    fn exp_is_accurate_over_the_whole_range() {
        let mut worst = 0f64;
        let mut v = -87.0f32;
        while v < 88.0 {
            let (a, b) = (exp(v) as f64, (v as f64).exp());
            worst = worst.max((a - b).abs() / b);
            v += 0.013;
        }
        assert!(worst < 5e-7, "max relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) >= 0.0 && exp(-1000.0) < 1e-37);
        assert!(exp(1000.0).is_finite());
    }

    /// The AVX-512 swish (on CPUs that have it; the portable one is `z / (1 + exp(-z))`, whose `exp`
    /// the test above covers) against f64 over the whole range, and at the clamps and beyond.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_swish_is_accurate_over_the_whole_range() {
        if !std::is_x86_feature_detected!("avx512f") {
            eprintln!("no AVX-512F on this CPU: the vector swish is not used here");
            return;
        }
        let mut z: Vec<f32> = (0..=175_000).map(|i| -87.0 + i as f32 * 1e-3).collect();
        z.extend([-1e30, -1000.0, -90.0, 90.0, 1000.0, 1e30, f32::INFINITY]);
        let mut worst = 0f64;
        for chunk in z.chunks(16) {
            let mut lanes = [0f32; 16];
            lanes[..chunk.len()].copy_from_slice(chunk);
            let mut got = [0f32; 16];
            // SAFETY: AVX-512F detected above; both arrays hold 16 floats.
            unsafe {
                use std::arch::x86_64::*;
                let y = swish_ps(_mm512_loadu_ps(lanes.as_ptr()));
                _mm512_storeu_ps(got.as_mut_ptr(), y);
            }
            for (&z, &y) in chunk.iter().zip(&got) {
                let want = z as f64 / (1.0 + (-(z as f64)).exp());
                // Relative error, absolute where the result is below 1e-30 in size.
                let err = match want.is_finite() {
                    true => (y as f64 - want).abs() / want.abs().max(1e-30),
                    false => f64::from(y as f64 != want),
                };
                assert!(err < 5e-7, "swish({z}) = {y}, expected {want}");
                worst = worst.max(err);
            }
        }
        assert!(worst > 0.0, "compared nothing");
        // SAFETY: AVX-512F detected above.
        let nan = unsafe {
            use std::arch::x86_64::*;
            _mm512_cvtss_f32(swish_ps(_mm512_set1_ps(f32::NAN)))
        };
        assert!(nan.is_nan());
    }

    /// The vector `exp`'s table holds `2^(i/32)` rounded to f32.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp_table_holds_the_32nds_of_an_octave() {
        for (i, &v) in EXP2_32THS.iter().enumerate() {
            assert_eq!(v, 2f64.powf(i as f64 / 32.0) as f32, "entry {i}");
        }
    }

    /// The squeeze-excite sigmoid (AVX-512 where the CPU has it, else portable) against f64 over the
    /// whole range, on slices that end in a partial vector; infinities give 0 and 1, NaN gives NaN.
    #[test]
    fn sigmoid_is_accurate_over_the_whole_range() {
        let mut z: Vec<f32> = (0..=200_001).map(|i| -100.0 + i as f32 * 1e-3).collect();
        z.extend([-1e30, -1000.0, 1000.0, 1e30]);
        let mut y = z.clone();
        sigmoid_in_place(&mut y);
        for (&z, &y) in z.iter().zip(&y) {
            let want = 1.0 / (1.0 + (-(z as f64)).exp());
            // Relative error, absolute where the result is below 1e-30.
            let err = (y as f64 - want).abs() / want.max(1e-30);
            assert!(err < 5e-7, "sigmoid({z}) = {y}, expected {want}");
        }
        let mut edges = [f32::NEG_INFINITY, f32::INFINITY, f32::NAN];
        sigmoid_in_place(&mut edges);
        assert!(
            edges[0] < 1e-30 && edges[0] >= 0.0,
            "sigmoid(-inf) = {}",
            edges[0]
        );
        assert_eq!(edges[1], 1.0);
        assert!(edges[2].is_nan(), "sigmoid(NaN) = {}", edges[2]);
    }

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let d = crate::ops::tests::max_abs_diff(a, b);
        assert!(d <= tol, "max diff {d}");
    }

    /// The in-place, out-of-place and backward kernels compiled for `isa` on `x` (and incoming
    /// gradient `g`), their outputs concatenated; `None` where this CPU lacks `isa`.
    fn run_kernels(isa: &str, act: Act, x: &[f32], g: &[f32]) -> Option<Vec<f32>> {
        let (s, t) = (0.7, -0.3);
        let mut in_place = x.to_vec();
        let mut out = vec![MaybeUninit::uninit(); x.len()];
        let mut dx = vec![MaybeUninit::uninit(); x.len()];
        let sums = match isa {
            "portable" => {
                plane_in_place(act, &mut in_place, s, t);
                plane(act, x, &mut out, s, t);
                plane_bwd(act, x, g, &mut dx, s, t)
            }
            #[cfg(target_arch = "x86_64")]
            "avx2"
                if std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma") =>
            // SAFETY: detected just above.
            unsafe {
                plane_in_place_avx2(act, &mut in_place, s, t);
                plane_avx2(act, x, &mut out, s, t);
                plane_bwd_avx2(act, x, g, &mut dx, s, t)
            },
            #[cfg(target_arch = "x86_64")]
            "avx512" if std::is_x86_feature_detected!("avx512f") =>
            // SAFETY: detected just above.
            unsafe {
                in_place_avx512(act, &mut in_place, s, t);
                plane_avx512(act, x, &mut out, s, t);
                plane_bwd_avx512(act, x, g, &mut dx, s, t)
            },
            _ => return None,
        };
        // SAFETY: `plane` and `plane_bwd` write every element of `out` and `dx`.
        let (out, dx) = unsafe {
            (
                out.iter().map(|v| v.assume_init()).collect::<Vec<_>>(),
                dx.iter().map(|v| v.assume_init()).collect::<Vec<_>>(),
            )
        };
        let mut all = in_place;
        all.extend(out);
        all.extend(dx);
        all.extend([sums.0 as f32, sums.1 as f32]);
        Some(all)
    }

    #[test]
    fn kernels_agree_on_every_instruction_set_this_cpu_has() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 40) as f32 / (1u64 << 24) as f32 * 24.0 - 12.0
        };
        // 1037 elements: whole 8- and 16-lane chunks and a tail.
        let mut x: Vec<f32> = (0..1037).map(|_| next()).collect();
        // Past the clamps of `exp` on both sides, and zero.
        x[..8].copy_from_slice(&[-1000.0, -150.0, -125.0, -0.0, 0.0, 125.0, 150.0, 1000.0]);
        let g: Vec<f32> = (0..1037).map(|_| next() / 12.0).collect();
        let acts = [
            Act::Identity,
            Act::Net(Activation::Swish),
            Act::Net(Activation::Relu6),
            Act::Net(Activation::Relu),
        ];
        for act in acts {
            let want = run_kernels("portable", act, &x, &g).unwrap();
            for isa in ["avx2", "avx512"] {
                let Some(got) = run_kernels(isa, act, &x, &g) else {
                    continue;
                };
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                        "{act:?} {isa} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn matches_candle_ops_forward_and_backward() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 3f32, (2, 5, 7, 3), &dev).unwrap()).unwrap();
        for rows in [1, 2] {
            let s = Var::from_tensor(&Tensor::randn(1f32, 0.5, (rows, 5), &dev).unwrap()).unwrap();
            let t = Var::from_tensor(&Tensor::randn(0f32, 1f32, (rows, 5), &dev).unwrap()).unwrap();
            let acts = [
                Act::Identity,
                Act::Net(Activation::Swish),
                Act::Net(Activation::Relu6),
                Act::Net(Activation::Relu),
            ];
            for act in acts {
                let y = affine_act(&x, &s, &t, act).unwrap();
                let r = reference(&x, &s, &t, act).unwrap();
                close(&y, &r, 1e-5);
                // Gradients through the custom op equal candle's autograd of the reference.
                let w = Tensor::randn(0f32, 1f32, y.shape(), &dev).unwrap();
                let g1 = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
                let g2 = (&r * &w).unwrap().sum_all().unwrap().backward().unwrap();
                for v in [x.as_tensor(), s.as_tensor(), t.as_tensor()] {
                    close(g1.get(v).unwrap(), g2.get(v).unwrap(), 1e-4);
                }
            }
        }
        // Half precision and other layouts take the candle path.
        let h = x
            .as_tensor()
            .to_dtype(DType::F16)
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        let s = Tensor::ones((1, 5), DType::F32, &dev).unwrap();
        let y = affine_act(&h, &s, &s.zeros_like().unwrap(), Act::Identity).unwrap();
        assert_eq!(y.dtype(), DType::F16);
        assert!(affine_act(
            &h,
            &Tensor::ones((3, 5), DType::F32, &dev).unwrap(),
            &s,
            Act::Identity
        )
        .is_err());
    }
}
