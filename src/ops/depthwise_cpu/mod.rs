//! CPU kernels behind [`super::depthwise`]: the forward pass, the gradient with respect to the
//! input and the gradient with respect to the weights, for f32, f16 and bf16 (arithmetic in f32).
//!
//! # One primitive: a strided 2-D correlation over a zero-extended plane
//!
//! ```text
//! out[i][j] = sum_{a < KH, b < KW} k[a][b] * P[i*sh + a][j*sw + b]
//! P[r][c]   = src[(r - off_h) / dh][(c - off_w) / dw]  where both divisions are exact and
//!             land inside src, 0 elsewhere
//! ```
//!
//! - forward: `src = x`, `off = (top, left)`, `d = 1`, `s = stride`, `k = w`;
//! - input gradient: `src = dy` dilated by the stride (`d = stride`), `s = 1`, `k = w` rotated
//!   by 180 degrees, `off = (KH - 1 - top, KW - 1 - left)` (negative offsets crop);
//! - weight gradient: the same `P` as the forward pass, reduced against `dy` for each tap.
//!
//! For a band of output rows of one plane, the rows of `P` that the taps read are first written
//! to a small scratch buffer in f32, with the padding as zeros and each row split into its `sw`
//! column phases (`P[r][q + sw*t]` at phase `q`, position `t`), so that every tap reads a
//! contiguous, in-bounds run of the scratch whatever the stride. Rows are padded to a multiple
//! of [`CHUNK`] so the inner loop always handles whole chunks. The output row is then computed
//! [`CHUNK`] outputs at a time with all taps unrolled for the common square kernels (3, 5, 7) and
//! the accumulator in registers, or tap by tap (one vectorised multiply-add over the row per
//! tap) for other kernel shapes. Work is split over planes, and over bands of rows when there are
//! too few planes to keep every thread busy.
//!
//! On x86-64 the hot functions are compiled twice, for the baseline target and with AVX2 + FMA,
//! and the second is picked at run time when the CPU has both.
//!
//! Inference on AVX-512 CPUs (f32, contiguous input, square kernels 3/5/7, stride 1/2) has two
//! dedicated kernels: `avx512` (16 columns of a plane per vector, no scratch) and `blocked` (16
//! channels per vector, through a transposed scratch), the latter where rows are too short to fill
//! the vectors of the former (`blocked::preferred`).

#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod blocked;
mod corr;
#[cfg(target_arch = "x86_64")]
mod expand;
#[cfg(test)]
mod tests;
mod view;

use rayon::prelude::*;

use super::depthwise::Geometry;
use std::sync::atomic::{AtomicU32, Ordering};

use super::affine_act::{affine_act_in_place, Act};
use super::with_scratch;
#[cfg(target_arch = "x86_64")]
use corr::Fused;
use corr::{correlate_rows, prepare, Corr, MulAdd, Plain, CHUNK};
pub(crate) use view::View;
use view::{strided_copy, Elem};

/// Upper bound for the scratch of one band, in f32 elements (256 KiB: stays in L2 cache).
const BAND_ELEMS: usize = 64 * 1024;

/// Output rows per work item: whole planes when there are enough planes for every thread,
/// otherwise bands; never more than fits in [`BAND_ELEMS`] of scratch.
fn band_rows(c: &Corr, planes: usize) -> usize {
    let by_cache = (BAND_ELEMS / c.pitch.max(1)).saturating_sub(c.k_h) / c.s_h + 1;
    let wanted_bands = (4 * rayon::current_num_threads()).div_ceil(planes.max(1));
    let by_threads = c.out_h.div_ceil(wanted_bands).max(4);
    by_cache.min(by_threads).clamp(1, c.out_h.max(1))
}

/// Runs `c` over every plane of `src` with per-channel `taps` (`[channel][KH * KW]`, channel
/// `plane % channels`), producing `[planes, out_h, out_w]` in bands of `band` rows. `simd`
/// allows the AVX2 + FMA code where the CPU has it.
fn correlate<T: Elem>(
    c: &Corr,
    src: &View<T>,
    taps: &[f32],
    planes: usize,
    band: usize,
    simd: bool,
    epilogue: Option<Epilogue<'_, T>>,
) -> Vec<T> {
    let plane_len = c.out_h * c.out_w;
    let mut out = vec![T::ZERO; planes * plane_len];
    if plane_len == 0 {
        return out;
    }
    let k2 = c.k_h * c.k_w;
    let channels = (taps.len() / k2.max(1)).max(1);
    let fused = simd && has_avx2_fma();
    // Small planes are grouped so that a task is worth scheduling (about 64k multiply-adds).
    let min_planes = (1 << 16) / (plane_len * k2).max(1);
    out.par_chunks_mut(plane_len)
        .enumerate()
        .with_min_len(min_planes.max(1))
        .for_each(|(p, plane)| {
            let taps = taps
                .get((p % channels) * k2..(p % channels + 1) * k2)
                .unwrap_or_default();
            plane
                .par_chunks_mut(band.max(1) * c.out_w)
                .enumerate()
                .for_each(|(b, out)| {
                    with_scratch(|s| {
                        let first_row = b * band.max(1);
                        if fused {
                            #[cfg(target_arch = "x86_64")]
                            // SAFETY: `fused` is true only when the CPU supports AVX2 and FMA.
                            unsafe {
                                correlate_band_avx2(c, src, taps, p, first_row, out, s)
                            };
                        } else {
                            correlate_band::<T, Plain>(c, src, taps, p, first_row, out, s);
                        }
                    });
                    // Applied while the band is still in cache.
                    if let Some(e) = epilogue {
                        e(p, b * band.max(1), out);
                    }
                });
        });
    out
}

/// One band of one plane: prepare the scratch rows, then correlate each output row.
#[inline(always)]
fn correlate_band<T: Elem, M: MulAdd>(
    c: &Corr,
    src: &View<T>,
    taps: &[f32],
    plane: usize,
    first_row: usize,
    out: &mut [T],
    scratch: &mut Vec<f32>,
) {
    let rows = out.len() / c.out_w;
    let (pitch, owp) = (c.pitch, c.owp);
    let input_len = c.rows_for(rows) * pitch;
    scratch.resize(input_len + owp, 0.0);
    let (input, acc) = scratch.split_at_mut(input_len);
    prepare(c, src, plane, first_row * c.s_h, input);
    correlate_rows::<T, M>(c, input, taps, acc, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn correlate_band_avx2<T: Elem>(
    c: &Corr,
    src: &View<T>,
    taps: &[f32],
    plane: usize,
    first_row: usize,
    out: &mut [T],
    scratch: &mut Vec<f32>,
) {
    correlate_band::<T, Fused>(c, src, taps, plane, first_row, out, scratch)
}

/// Whether the AVX2 + FMA versions of the inner loops can run on this CPU.
fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The weights as `[channel][ky * KW + kx]` for the inference kernels: a contiguous `[C, 1, K, K]`
/// weight already is that layout, any other is copied.
#[cfg(target_arch = "x86_64")]
fn taps_f32<'a>(g: &Geometry, w: &View<'a, f32>) -> std::borrow::Cow<'a, [f32]> {
    match w.contiguous() {
        Some(taps) => std::borrow::Cow::Borrowed(taps),
        None => std::borrow::Cow::Owned(weights_f32(g, w, false)),
    }
}

/// The weights as f32, `[channel][ky * KW + kx]`, optionally rotated by 180 degrees.
fn weights_f32<T: Elem>(g: &Geometry, w: &View<T>, rotate: bool) -> Vec<f32> {
    let (kh, kw) = (g.k_h, g.k_w);
    let mut out = vec![0.0f32; g.channels * kh * kw];
    for (c, taps) in out.chunks_exact_mut(kh * kw).enumerate() {
        for (ky, row) in taps.chunks_exact_mut(kw).enumerate() {
            let y = if rotate { kh - 1 - ky } else { ky };
            let base = w.start + c * w.strides[0] + y * w.strides[2];
            strided_copy(w.data, base, w.strides[3], row);
            if rotate {
                row.reverse();
            }
        }
    }
    out
}

/// Forward pass: `[B, C, OH, OW]` in row-major order.
pub(crate) fn forward<T: Elem>(g: &Geometry, x: &View<T>, w: &View<T>) -> Vec<T> {
    let c = Corr::forward(g);
    let taps = weights_f32(g, w, false);
    let planes = g.planes();
    correlate(&c, x, &taps, planes, band_rows(&c, planes), true, None)
}

/// Called on each finished band of output rows with its plane index (`sample * C + channel`) and the
/// index of its first row.
pub(crate) type Epilogue<'a, T> = &'a (dyn Fn(usize, usize, &mut [T]) + Sync);

/// [`forward`] in f32 followed by `act(y · scale + shift)` per channel on each band while it is in
/// cache (inference). With `pool`, also returns the sum of each output plane (`[B · C]`, for a
/// squeeze-excite gate), added up band by band in a fixed order; otherwise an empty vector.
pub(crate) fn forward_affine_act(
    g: &Geometry,
    x: &View<f32>,
    w: &View<f32>,
    (scale, shift, act): (&[f32], &[f32], Act),
    pool: bool,
) -> (Vec<f32>, Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if let Some(x) = x.contiguous().filter(|_| avx512::supports(g)) {
        if std::is_x86_feature_detected!("avx512f") {
            let taps = taps_f32(g, w);
            // SAFETY: AVX-512F was detected, `supports` holds, and `x`, `taps`, `scale` and
            // `shift` have the sizes of `g` (checked by `Geometry::new` and the callers).
            let epilogue = (scale, shift, act);
            return unsafe {
                match blocked::preferred(g) {
                    true => blocked::forward_affine_act(g, x, &taps, epilogue, pool),
                    false => avx512::forward_affine_act(g, x, &taps, epilogue, pool),
                }
            };
        }
    }
    let taps = weights_f32(g, w, false);
    bands_affine_act(g, x, &taps, (scale, shift, act), pool)
}

/// [`forward_affine_act`] over `act_e(conv1x1(x, e))` (the expansion of an MBConv block) in one
/// parallel section, without materialising the expanded map, where the AVX-512 kernels cover `g`;
/// `None` elsewhere (the caller then runs the two steps). `x` is `[B, c_in, H, W]` (contiguous) and
/// `g` the geometry of the depthwise convolution over the expansion.
pub(crate) fn expand_forward_affine_act(
    g: &Geometry,
    e: &super::pointwise::Pointwise,
    (x, c_in): (&[f32], usize),
    w: &View<f32>,
    epilogue: (&[f32], &[f32], Act),
    pool: bool,
) -> Option<(Vec<f32>, Vec<f32>)> {
    #[cfg(target_arch = "x86_64")]
    if avx512::supports(g) && std::is_x86_feature_detected!("avx512f") {
        let taps = taps_f32(g, w);
        let group = expand::channels_per_task(g);
        // SAFETY: AVX-512F was detected and `supports` holds; the sizes of `x`, `e`, `taps` and
        // the epilogue are those of `g` (checked by the caller).
        return Some(unsafe {
            expand::forward_affine_act(g, e, (x, c_in), &taps, epilogue, pool, group)
        });
    }
    let _ = (g, e, x, c_in, w, epilogue, pool);
    None
}

/// [`forward_affine_act`] over `act_e(conv1x1(x, e))` (or over `x` without `e`), projected by `proj`
/// and with `residual` added (a whole MBConv block without squeeze-excite), in one parallel section
/// where the plane-wise AVX-512 kernel covers `g` and the tasks' ranges of rows overlap little
/// (`expand::project_ranges`); `None` elsewhere (the caller then runs the steps apart). The sizes are
/// the caller's to check.
#[allow(clippy::too_many_arguments)]
pub(crate) fn expand_project_affine_act(
    g: &Geometry,
    e: Option<&super::pointwise::Pointwise>,
    (x, c_in): (&[f32], usize),
    w: &View<f32>,
    epilogue: (&[f32], &[f32], Act),
    proj: &super::pointwise::Pointwise,
    residual: Option<&[f32]>,
) -> Option<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    if avx512::supports(g) && !blocked::preferred(g) && std::is_x86_feature_detected!("avx512f") {
        let ranges = expand::project_ranges(g, super::parallel_threads(), e.is_some())?;
        let taps = taps_f32(g, w);
        // SAFETY: AVX-512F was detected and `supports` holds; the sizes of `x`, `e`, `taps`, the
        // epilogue, `proj` and `residual` are those of `g` (checked by the caller).
        return Some(unsafe {
            expand::forward_project(g, e, (x, c_in), &taps, epilogue, proj, residual, ranges)
        });
    }
    let _ = (g, e, x, c_in, w, epilogue, proj, residual);
    None
}

/// [`forward_affine_act`] with the general banded kernel (any geometry and input layout).
fn bands_affine_act(
    g: &Geometry,
    x: &View<f32>,
    taps: &[f32],
    (scale, shift, act): (&[f32], &[f32], Act),
    pool: bool,
) -> (Vec<f32>, Vec<f32>) {
    let c = Corr::forward(g);
    let planes = g.planes();
    let band = band_rows(&c, planes);
    let bands = c.out_h.div_ceil(band).max(1);
    // One slot per band (f32 bits), each written by the task that owns the band.
    let sums: Vec<AtomicU32> = (0..if pool { planes * bands } else { 0 })
        .map(|_| AtomicU32::new(0))
        .collect();
    let epi = |p: usize, first_row: usize, out: &mut [f32]| {
        let ch = p % g.channels;
        affine_act_in_place(act, out, scale[ch], shift[ch]);
        if let Some(slot) = sums.get(p * bands + first_row / band) {
            slot.store(sum(out).to_bits(), Ordering::Relaxed);
        }
    };
    let y = correlate(&c, x, taps, planes, band, true, Some(&epi));
    let sums = sums
        .chunks(bands)
        .map(|s| {
            s.iter()
                .map(|v| f32::from_bits(v.load(Ordering::Relaxed)))
                .sum()
        })
        .collect();
    (y, sums)
}

/// Sum of `v` in 16 interleaved partial sums (vectorises, unlike a sequential fold).
fn sum(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = v.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for ch in chunks {
        for (a, x) in acc.iter_mut().zip(ch) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Gradient with respect to the input: `[B, C, H, W]` in row-major order.
pub(crate) fn grad_input<T: Elem>(g: &Geometry, dy: &View<T>, w: &View<T>) -> Vec<T> {
    let c = Corr::grad_input(g);
    let taps = weights_f32(g, w, true);
    correlate(
        &c,
        dy,
        &taps,
        g.planes(),
        band_rows(&c, g.planes()),
        true,
        None,
    )
}

/// Gradient with respect to the weights: `[C, 1, KH, KW]` in row-major order.
pub(crate) fn grad_weight<T: Elem>(g: &Geometry, x: &View<T>, dy: &View<T>) -> Vec<T> {
    grad_weight_with(g, x, dy, true)
}

/// [`grad_weight`], with `simd` allowing the AVX2 + FMA code where the CPU has it.
fn grad_weight_with<T: Elem>(g: &Geometry, x: &View<T>, dy: &View<T>, simd: bool) -> Vec<T> {
    let c = Corr::forward(g);
    let k2 = g.k_h * g.k_w;
    let fused = simd && has_avx2_fma();
    let partials: Vec<Vec<f32>> = (0..g.planes())
        .into_par_iter()
        .map(|p| {
            with_scratch(|s| {
                if fused {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `fused` is true only when the CPU supports AVX2 and FMA.
                    return unsafe { grad_weight_plane_avx2(&c, x, dy, p, s) };
                }
                grad_weight_plane::<T, Plain>(&c, x, dy, p, s)
            })
        })
        .collect();
    let mut dw = vec![0.0f32; g.channels * k2];
    for (p, part) in partials.iter().enumerate() {
        let ch = p % g.channels;
        for (d, v) in dw[ch * k2..(ch + 1) * k2].iter_mut().zip(part) {
            *d += v;
        }
    }
    dw.into_iter().map(T::from_f32).collect()
}

/// `sum_{oy, ox} dy[oy][ox] * P[oy * s_h + ky][ox * s_w + kx]` for every tap of one plane.
#[inline(always)]
fn grad_weight_plane<T: Elem, M: MulAdd>(
    c: &Corr,
    x: &View<T>,
    dy: &View<T>,
    plane: usize,
    scratch: &mut Vec<f32>,
) -> Vec<f32> {
    let (pitch, owp) = (c.pitch, c.owp);
    let input_len = c.rows_for(c.out_h) * pitch;
    scratch.clear();
    scratch.resize(input_len + c.out_h * owp, 0.0);
    let (input, grads) = scratch.split_at_mut(input_len);
    prepare(c, x, plane, 0, input);
    for (oy, row) in grads.chunks_exact_mut(owp).enumerate() {
        dy.read_row(plane, oy, row);
    }
    let mut dw = vec![0.0f32; c.k_h * c.k_w];
    for ky in 0..c.k_h {
        for kx in 0..c.k_w {
            let mut a = [0.0f32; CHUNK];
            for (oy, grow) in grads.chunks_exact(owp).enumerate() {
                let rows = input.get(oy * c.s_h * pitch..).unwrap_or_default();
                let seg = c.segment(rows, ky * c.k_w + kx);
                for (gc, xc) in grow.chunks_exact(CHUNK).zip(seg.chunks_exact(CHUNK)) {
                    for l in 0..CHUNK {
                        a[l] = M::mul_add(a[l], gc[l], xc[l]);
                    }
                }
            }
            if let Some(d) = dw.get_mut(ky * c.k_w + kx) {
                *d = a.iter().sum();
            }
        }
    }
    dw
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn grad_weight_plane_avx2<T: Elem>(
    c: &Corr,
    x: &View<T>,
    dy: &View<T>,
    plane: usize,
    scratch: &mut Vec<f32>,
) -> Vec<f32> {
    grad_weight_plane::<T, Fused>(c, x, dy, plane, scratch)
}
