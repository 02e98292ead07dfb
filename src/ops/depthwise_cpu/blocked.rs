//! The AVX-512 inference kernel for small planes, with 16 channels per vector instead of 16 columns.
//!
//! On a 7x7 plane a vector of 16 columns holds 7 pixels, so the plane-wise kernel (`super::avx512`)
//! wastes more than half of every multiply-add and of the activation. Here each task takes 16
//! channels and a band of output rows: it copies the input rows the band reads into a scratch plane
//! with the channels interleaved (16 lanes per pixel) and zeros for the padding, by 16x16 register
//! transposes; every tap is then one multiply-add of a weight vector with an input pixel vector, for
//! any width, stride and padding; the affine, activation and plane sums apply to pixel vectors, and a
//! second transpose writes the result back to NCHW. Input and output of a band stay in L1/L2.

use std::arch::x86_64::*;

use super::super::affine_act::{act_ps, blocked_act, clamp_ps, Act};
use super::super::depthwise::Geometry;
use super::super::{first_lanes, parallel_for, parallel_threads, with_scratch, SharedOut};

/// Channels per vector.
const L: usize = 16;
/// Output pixels per register block.
const NP: usize = 8;
/// Upper bound for a band's scratch, in floats (input and output: 128 KiB).
const BAND_FLOATS: usize = 32 * 1024;

/// Whether the channel-blocked kernel is the faster one for `g` (the caller checks that
/// `super::avx512::supports(g)`): where the plane-wise kernel would leave more than a quarter of its
/// lanes empty (rows of 7, 10 or 19 pixels; not 14, 28 or 56, where the transposes cost more than
/// the empty lanes). Measured on one Zen 4 core, swish, microseconds plane-wise / channel-blocked:
/// 1152x7x7 k5 120 / 66, 960x7x7 k3 60 / 40, 672x14x14 k5 s2 138 / 52, 576x14x14 k3 s2 58 / 36,
/// 816x10x10 k5 110 / 90; but 480x14x14 k3 54 / 84 and 240x28x28 k3 s2 37 / 53.
pub(super) fn preferred(g: &Geometry) -> bool {
    4 * g.out_w < 3 * L * g.out_w.div_ceil(L)
}

/// `act(depthwise(x) · scale + shift)` for contiguous `x` `[B, C, H, W]` and `taps` `[C][K·K]`, and
/// with `pool` the sum of each output plane (`[B · C]`, else empty).
///
/// # Safety
/// The CPU must support AVX-512F; `super::avx512::supports(g)` must hold; `x` must hold `B·C·H·W`
/// values and `taps` `C·K·K`; `scale` and `shift` `C`.
pub(super) unsafe fn forward_affine_act(
    g: &Geometry,
    x: &[f32],
    taps: &[f32],
    (scale, shift, act): (&[f32], &[f32], Act),
    pool: bool,
) -> (Vec<f32>, Vec<f32>) {
    let (c, k, s) = (g.channels, g.k_h, g.stride_h);
    let (oh, ow) = (g.out_h, g.out_w);
    let len = g.batch * c * oh * ow;
    let mut y: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return (y, Vec::new());
    }
    let groups = c.div_ceil(L);
    // Bands of output rows: enough tasks for every thread, and a scratch that stays in cache.
    let wp = (ow - 1) * s + k;
    let rows_in_cache = (BAND_FLOATS / L).saturating_sub(k * wp) / (s * wp + ow) + 1;
    let by_threads = oh.div_ceil((2 * parallel_threads()).div_ceil(g.batch * groups));
    let band = rows_in_cache.min(by_threads).clamp(1, oh);
    let bands = oh.div_ceil(band);
    let tasks = g.batch * groups * bands;
    // The plane sums of each task's 16 channels, reduced over the bands afterwards.
    let mut band_sums = vec![0f32; if pool { tasks * L } else { 0 }];
    let (out, sums_out) = (SharedOut::new(&mut y), SharedOut::new(&mut band_sums));
    let (k2, plane_in, plane_out) = (k * k, g.in_h * g.in_w, oh * ow);
    parallel_for(tasks, |task| {
        let (plane_group, b) = (task / bands, task % bands);
        let (bi, cb) = (plane_group / groups, plane_group % groups);
        let c0 = cb * L;
        let lanes = L.min(c - c0);
        let first = (bi * c + c0) * plane_in;
        let t = Task {
            x: &x[first..first + lanes * plane_in],
            taps: &taps[c0 * k2..(c0 + lanes) * k2],
            scale: &scale[c0..c0 + lanes],
            shift: &shift[c0..c0 + lanes],
            act,
            lanes,
            rows: b * band..((b + 1) * band).min(oh),
            plane_out,
        };
        with_scratch(|scratch| {
            // SAFETY: the CPU has AVX-512F (the caller's contract); the task's rows of its `lanes`
            // planes lie inside `y` and no other task writes them; its sums slot is its own.
            let sum = unsafe {
                let dst = out.at((bi * c + c0) * plane_out + t.rows.start * ow);
                band_kernel(g, &t, scratch, dst)
            };
            if pool {
                // SAFETY: slot `task` of `band_sums` (L floats) belongs to this task.
                unsafe { _mm512_storeu_ps(sums_out.at(task * L), sum) };
            }
        });
    });
    // SAFETY: the tasks cover every row of every plane, and each writes whole rows.
    unsafe { y.set_len(len) };
    let mut sums = vec![0f32; if pool { g.batch * c } else { 0 }];
    for (task, slot) in band_sums.chunks_exact(L).enumerate() {
        let (bi, cb) = ((task / bands) / groups, (task / bands) % groups);
        let c0 = cb * L;
        for (l, v) in slot.iter().take(L.min(c - c0)).enumerate() {
            sums[bi * c + c0 + l] += v;
        }
    }
    (y, sums)
}

/// One task's share: up to 16 consecutive planes (`lanes`) of one sample and a band of output rows.
pub(super) struct Task<'a> {
    /// The `lanes` input planes, `H·W` each.
    pub x: &'a [f32],
    /// Their taps, `[lanes][K·K]`.
    pub taps: &'a [f32],
    /// Their affine (`lanes` each) and the activation.
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub act: Act,
    pub lanes: usize,
    pub rows: std::ops::Range<usize>,
    /// Elements between consecutive output planes of `dst`.
    pub plane_out: usize,
}

/// Per-channel affine (the task's 16 lanes) and activation.
#[derive(Clone, Copy)]
struct Epilogue {
    scale: __m512,
    shift: __m512,
    act: Act,
}

/// The task `t` through the scratch: interleave its input rows, run the taps, write the output rows
/// to `dst` (its first plane's first row; the planes `t.plane_out` apart). Returns the sums of the
/// written outputs per lane.
///
/// # Safety
/// The CPU must support AVX-512F; `dst` must be valid for writing the task's rows of `t.lanes`
/// planes.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn band_kernel(
    g: &Geometry,
    t: &Task,
    scratch: &mut Vec<f32>,
    dst: *mut f32,
) -> __m512 {
    let (k, s) = (g.k_h, g.stride_h);
    let e = Epilogue {
        scale: _mm512_maskz_loadu_ps(first_lanes(t.lanes), t.scale.as_ptr()),
        shift: _mm512_maskz_loadu_ps(first_lanes(t.lanes), t.shift.as_ptr()),
        act: t.act,
    };
    let (rows, ow) = (t.rows.len(), g.out_w);
    let (hp, wp) = ((rows - 1) * s + k, (ow - 1) * s + k);
    // Every pixel of the scratch is written before it is read (the padding as zeros). Pixels start
    // on cache lines, so that no load straddles two.
    scratch.resize((hp * wp + rows * ow + 1) * L, 0.0);
    let start = scratch.as_ptr().align_offset(64).min(L);
    let (input, output) = scratch[start..].split_at_mut(hp * wp * L);
    interleave_input(g, t, hp, wp, input);
    let mut w = [_mm512_setzero_ps(); 49];
    interleave_taps(t, k * k, &mut w);
    match (k, s) {
        (3, 1) => correlate::<3, 1>(input, wp, &w, rows, ow, e, output),
        (3, _) => correlate::<3, 2>(input, wp, &w, rows, ow, e, output),
        (5, 1) => correlate::<5, 1>(input, wp, &w, rows, ow, e, output),
        (5, _) => correlate::<5, 2>(input, wp, &w, rows, ow, e, output),
        (7, 1) => correlate::<7, 1>(input, wp, &w, rows, ow, e, output),
        _ => correlate::<7, 2>(input, wp, &w, rows, ow, e, output),
    };
    let mut sum = _mm512_setzero_ps();
    // Back to NCHW, 16 pixels of 16 channels at a time.
    let n = rows * ow;
    for q0 in (0..n).step_by(L) {
        let m = L.min(n - q0);
        let mut block: [__m512; L] = std::array::from_fn(|j| match j < m {
            true => _mm512_loadu_ps(output.as_ptr().add((q0 + j) * L)),
            false => _mm512_setzero_ps(),
        });
        for v in block.iter().take(m) {
            sum = _mm512_add_ps(sum, *v);
        }
        transpose(&mut block);
        for (l, v) in block.iter().take(t.lanes).enumerate() {
            _mm512_mask_storeu_ps(dst.add(l * t.plane_out + q0), first_lanes(m), *v);
        }
    }
    sum
}

/// Writes the input rows that output rows `t.rows` read into `input` (`hp x wp` pixels of 16 lanes,
/// zero where the padding is), transposing 16 pixels of the task's planes at a time.
#[target_feature(enable = "avx512f")]
unsafe fn interleave_input(g: &Geometry, t: &Task, hp: usize, wp: usize, input: &mut [f32]) {
    let (top, left) = (g.pad.top as isize, g.pad.left as isize);
    // Padded row `r` of the scratch is input row `r0 + r`.
    let r0 = (t.rows.start * g.stride_h) as isize - top;
    let first = r0.max(0) as usize;
    let last = ((r0 + hp as isize).min(g.in_h as isize)).max(first as isize) as usize;
    // The padding: whole rows above and below the input, and the columns left and right of it.
    let mut zero = |from: usize, to: usize| {
        for px in input[from * L..to * L].chunks_exact_mut(L) {
            _mm512_storeu_ps(px.as_mut_ptr(), _mm512_setzero_ps());
        }
    };
    let (rows_in, rows_end) = (
        (first as isize - r0) as usize,
        (last as isize - r0) as usize,
    );
    zero(0, rows_in * wp);
    zero(rows_end * wp, hp * wp);
    let (left, right) = ((left as usize).min(wp), (left as usize + g.in_w).min(wp));
    for r in rows_in..rows_end {
        zero(r * wp, r * wp + left);
        zero(r * wp + right, (r + 1) * wp);
    }
    let plane = g.in_h * g.in_w;
    let (from, to) = (first * g.in_w, last * g.in_w);
    let cols = right - left;
    // The scratch pixel of input pixel (first, 0), and the column of the next input pixel.
    let mut to_px = input.as_mut_ptr().wrapping_add((rows_in * wp + left) * L);
    let mut ix = 0;
    for p0 in (from..to).step_by(L) {
        let m = L.min(to - p0);
        let mut rows: [__m512; L] = std::array::from_fn(|l| match l < t.lanes {
            true => _mm512_maskz_loadu_ps(first_lanes(m), t.x.as_ptr().add(l * plane + p0)),
            false => _mm512_setzero_ps(),
        });
        transpose(&mut rows);
        for v in rows.iter().take(m) {
            // Columns right of the last window (stride 2 with little right padding) are not needed.
            if ix < cols {
                _mm512_storeu_ps(to_px, *v);
            }
            (ix, to_px) = (ix + 1, to_px.wrapping_add(L));
            if ix == g.in_w {
                (ix, to_px) = (0, to_px.wrapping_add(wp * L).wrapping_sub(g.in_w * L));
            }
        }
    }
}

/// The task's taps as `K·K` vectors of 16 lanes (zero beyond `t.lanes`) in `w`.
#[target_feature(enable = "avx512f")]
unsafe fn interleave_taps(t: &Task, k2: usize, w: &mut [__m512; 49]) {
    for j0 in (0..k2).step_by(L) {
        let m = L.min(k2 - j0);
        let mut rows: [__m512; L] = std::array::from_fn(|l| match l < t.lanes {
            true => _mm512_maskz_loadu_ps(first_lanes(m), t.taps.as_ptr().add(l * k2 + j0)),
            false => _mm512_setzero_ps(),
        });
        transpose(&mut rows);
        for (i, v) in rows.iter().take(m).enumerate() {
            w[j0 + i] = *v;
        }
    }
}

/// All output pixels of the band, [`NP`] of a row at a time.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn correlate<const K: usize, const S: usize>(
    input: &[f32],
    wp: usize,
    w: &[__m512; 49],
    rows: usize,
    ow: usize,
    e: Epilogue,
    output: &mut [f32],
) {
    for oy in 0..rows {
        let mut ox = 0;
        while ox < ow {
            let n = NP.min(ow - ox);
            let src = input.as_ptr().add((oy * S * wp + ox * S) * L);
            let dst = output.as_mut_ptr().add((oy * ow + ox) * L);
            match n {
                8 => block::<K, S, 8>(src, wp, w, e, dst),
                7 => block::<K, S, 7>(src, wp, w, e, dst),
                6 => block::<K, S, 6>(src, wp, w, e, dst),
                5 => block::<K, S, 5>(src, wp, w, e, dst),
                4 => block::<K, S, 4>(src, wp, w, e, dst),
                3 => block::<K, S, 3>(src, wp, w, e, dst),
                2 => block::<K, S, 2>(src, wp, w, e, dst),
                _ => block::<K, S, 1>(src, wp, w, e, dst),
            }
            ox += n;
        }
    }
}

/// `N` output pixels of one row: `src` is the scratch pixel of the first one's first tap, `dst` its
/// output slot.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn block<const K: usize, const S: usize, const N: usize>(
    src: *const f32,
    wp: usize,
    w: &[__m512; 49],
    e: Epilogue,
    dst: *mut f32,
) {
    let mut acc = [_mm512_setzero_ps(); N];
    for ky in 0..K {
        let row = src.add(ky * wp * L);
        for kx in 0..K {
            let wv = w[ky * K + kx];
            // Output j reads input column j·S + kx: one load per multiply-add, from L1.
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(wv, _mm512_loadu_ps(row.add((j * S + kx) * L)), *a);
            }
        }
    }
    // Swish in a second pass, so that LLVM unrolls this one and keeps the accumulators in registers
    // (see `blocked_act`).
    let (clamp, swish) = blocked_act(e.act);
    for (j, a) in acc.iter().enumerate() {
        let z = _mm512_fmadd_ps(*a, e.scale, e.shift);
        _mm512_storeu_ps(dst.add(j * L), clamp_ps(z, clamp));
    }
    if swish {
        for j in 0..N {
            let at = dst.add(j * L);
            _mm512_storeu_ps(at, act_ps(_mm512_loadu_ps(at), e.act));
        }
    }
}

/// The 16x16 transpose in place: lane `j` of vector `i` becomes lane `i` of vector `j`. 32-bit, then
/// 64-bit interleaves within 128-bit lanes, then two rounds of 128-bit lane shuffles.
///
/// Always inlined (into the AVX-512 kernels, where its intrinsics inline too): as a call it passed
/// its arrays through memory and took a third of the kernel's time.
///
/// # Safety
/// The CPU must support AVX-512F.
#[inline(always)]
unsafe fn transpose(r: &mut [__m512; L]) {
    let mut t = [_mm512_setzero_ps(); L];
    for i in (0..L).step_by(2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    // Vector g + m of each group of four: lanes m, m + 4, m + 8, m + 12 of the group's four rows.
    for g in (0..L).step_by(4) {
        let pd = |v: __m512| _mm512_castps_pd(v);
        let (a0, a1, a2, a3) = (pd(t[g]), pd(t[g + 1]), pd(t[g + 2]), pd(t[g + 3]));
        r[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
        r[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
        r[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
        r[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
    }
    for g in [0, 8] {
        for m in 0..4 {
            t[g + m] = _mm512_shuffle_f32x4::<0x88>(r[g + m], r[g + m + 4]);
            t[g + m + 4] = _mm512_shuffle_f32x4::<0xdd>(r[g + m], r[g + m + 4]);
        }
    }
    for i in 0..8 {
        r[i] = _mm512_shuffle_f32x4::<0x88>(t[i], t[i + 8]);
        r[i + 8] = _mm512_shuffle_f32x4::<0xdd>(t[i], t[i + 8]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_swaps_lanes_and_vectors() {
        if !std::is_x86_feature_detected!("avx512f") {
            eprintln!("no AVX-512F on this CPU: the channel-blocked kernel is not used here");
            return;
        }
        let m: Vec<f32> = (0..L * L).map(|i| i as f32).collect();
        // SAFETY: AVX-512F detected above; `m` holds 16 x 16 floats.
        let got = unsafe {
            let mut r = std::array::from_fn(|i| _mm512_loadu_ps(m.as_ptr().add(i * L)));
            transpose(&mut r);
            r.map(|v| {
                let mut a = [0f32; L];
                _mm512_storeu_ps(a.as_mut_ptr(), v);
                a
            })
        };
        for (i, row) in got.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                assert_eq!(*v, m[j * L + i], "[{i}][{j}]");
            }
        }
    }
}
