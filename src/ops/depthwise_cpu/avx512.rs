//! The inference kernel of [`super::forward_affine_act`] on AVX-512: f32, a contiguous NCHW input,
//! square kernels of 3, 5 or 7 and stride 1 or 2, the affine, activation and plane sums applied in
//! registers.
//!
//! Unlike the general kernel it needs no scratch copy of the input: each output vector (16 columns
//! of one row) reads its taps straight from the input rows with masked loads, the masks zeroing the
//! lanes that fall on the left or right padding (rows in the top or bottom padding are skipped). For
//! stride 2 three loads per input row cover the 48 columns that 16 outputs read, and each tap takes
//! its columns from them by one permute. Four output rows are computed together, so each input row
//! is loaded once for all the output rows that use it and four independent accumulators hide the
//! latency of the multiply-adds. Rows too short to fill a vector go to `super::blocked` instead.

use std::arch::x86_64::*;

use std::sync::atomic::{AtomicU32, Ordering};

use super::super::affine_act::{act_ps, Act};
use super::super::depthwise::Geometry;
use super::super::{parallel_for, parallel_threads, SharedOut};

/// Output rows per register block.
const RB: usize = 4;

/// Whether this kernel covers `g` (the caller also checks the CPU and the input layout).
pub(super) fn supports(g: &Geometry) -> bool {
    g.k_h == g.k_w
        && matches!(g.k_h, 3 | 5 | 7)
        && g.stride_h == g.stride_w
        && matches!(g.stride_h, 1 | 2)
}

/// `act(depthwise(x) · scale + shift)` for contiguous `x` `[B, C, H, W]` and `taps` `[C][K·K]`, and
/// with `pool` the sum of each output plane (`[B · C]`, else empty).
///
/// # Safety
/// The CPU must support AVX-512F; [`supports`] must hold for `g`; `x` must hold `B·C·H·W` values
/// and `taps` `C·K·K`; `scale` and `shift` `C`.
pub(super) unsafe fn forward_affine_act(
    g: &Geometry,
    x: &[f32],
    taps: &[f32],
    (scale, shift, act): (&[f32], &[f32], Act),
    pool: bool,
) -> (Vec<f32>, Vec<f32>) {
    let planes = g.planes();
    let (oh, ow) = (g.out_h, g.out_w);
    let plane_len = oh * ow;
    let len = planes * plane_len;
    let mut y: Vec<f32> = Vec::with_capacity(len);
    let mut sums = vec![0.0f32; if pool { planes } else { 0 }];
    if len == 0 {
        return (y, sums);
    }
    let out = SharedOut::new(&mut y);
    let k2 = g.k_h * g.k_w;
    // Bands of rows when there are too few planes to keep every thread busy, and at least one per
    // thread when the samples are fewer than the threads. The bands vary slowest, so that each
    // thread takes a run of rows of every plane (`parallel_for` gives thread t the t-th part of the
    // tasks), as the units before and after it split the map: its input and output stay in its
    // core's cache.
    let threads = parallel_threads();
    let spatial = if g.batch < threads { threads } else { 1 };
    let bands = (4 * threads)
        .div_ceil(planes)
        .max(spatial)
        .clamp(1, oh.div_ceil(RB));
    let band = oh.div_ceil(bands).next_multiple_of(RB).min(oh);
    let bands = oh.div_ceil(band);
    // One slot per plane and band (f32 bits), each written by its task.
    let band_sums: Vec<AtomicU32> = (0..planes * bands).map(|_| AtomicU32::new(0)).collect();
    parallel_for(planes * bands, |task| {
        let (p, b) = (task % planes, task / planes);
        let ch = p % g.channels;
        let (r0, r1) = (b * band, ((b + 1) * band).min(oh));
        let src = &x[p * g.in_h * g.in_w..][..g.in_h * g.in_w];
        let t = &taps[ch * k2..][..k2];
        let e = Epilogue {
            scale: scale[ch],
            shift: shift[ch],
            act,
        };
        // SAFETY: the CPU has AVX-512F (the caller's contract); rows r0..r1 of plane p lie inside
        // the buffer and no other task writes them.
        let sum = unsafe { plane_rows(g, src, t, e, r0..r1, out.at(p * plane_len + r0 * ow)) };
        band_sums[p * bands + b].store(sum.to_bits(), Ordering::Relaxed);
    });
    // SAFETY: the tasks cover every row of every plane, and `plane_rows` writes whole rows.
    unsafe { y.set_len(len) };
    for (s, b) in sums.iter_mut().zip(band_sums.chunks(bands)) {
        *s = b
            .iter()
            .map(|v| f32::from_bits(v.load(Ordering::Relaxed)))
            .sum();
    }
    (y, sums)
}

/// Per-channel affine and activation.
#[derive(Clone, Copy)]
pub(super) struct Epilogue {
    pub scale: f32,
    pub shift: f32,
    pub act: Act,
}

/// Output rows `rows` of one plane (`src` its `H x W` input, `taps` its `K x K` weights) into `dst`
/// (the first of those rows); returns their sum.
///
/// # Safety
/// The CPU must support AVX-512F; [`supports`] must hold for `g`; `dst` must be valid for writing
/// `rows.len() · out_w` values.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn plane_rows(
    g: &Geometry,
    src: &[f32],
    taps: &[f32],
    e: Epilogue,
    rows: std::ops::Range<usize>,
    dst: *mut f32,
) -> f32 {
    match (g.k_h, g.stride_h) {
        (3, 1) => rows_k::<3, 1>(g, src, taps, e, rows, dst),
        (3, _) => rows_k::<3, 2>(g, src, taps, e, rows, dst),
        (5, 1) => rows_k::<5, 1>(g, src, taps, e, rows, dst),
        (5, _) => rows_k::<5, 2>(g, src, taps, e, rows, dst),
        (7, 1) => rows_k::<7, 1>(g, src, taps, e, rows, dst),
        _ => rows_k::<7, 2>(g, src, taps, e, rows, dst),
    }
}

/// The lanes `i` of a 16-lane load at column `c0` with `0 <= c0 + i < w`.
#[inline(always)]
fn lane_mask(c0: isize, w: usize) -> __mmask16 {
    let lo = (-c0).clamp(0, 16) as u32;
    let hi = (w as isize - c0).clamp(0, 16) as u32;
    if hi <= lo {
        return 0;
    }
    (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as __mmask16
}

#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn rows_k<const K: usize, const S: usize>(
    g: &Geometry,
    src: &[f32],
    taps: &[f32],
    e: Epilogue,
    rows: std::ops::Range<usize>,
    dst: *mut f32,
) -> f32 {
    let ow = g.out_w;
    let mut psum = _mm512_setzero_ps();
    let w: [[__m512; K]; K] =
        std::array::from_fn(|ky| std::array::from_fn(|kx| _mm512_set1_ps(taps[ky * K + kx])));
    for j in 0..ow.div_ceil(16) {
        // Input column of lane 0 for each tap column, and the masks of its one (stride 1) or two
        // (stride 2) loads.
        let col: [isize; K] =
            std::array::from_fn(|kx| (16 * j * S + kx) as isize - g.pad.left as isize);
        let masks: [[__mmask16; 3]; K] = std::array::from_fn(|kx| {
            std::array::from_fn(|v| lane_mask(col[kx] + 16 * v as isize, g.in_w))
        });
        let out_mask = lane_mask(0, ow - 16 * j);
        let mut oy = rows.start;
        while oy < rows.end {
            let n = (rows.end - oy).min(RB);
            let acc = match n {
                4 => block::<K, S, 4>(g, src, &w, &col, &masks, oy),
                3 => pad(block::<K, S, 3>(g, src, &w, &col, &masks, oy)),
                2 => pad(block::<K, S, 2>(g, src, &w, &col, &masks, oy)),
                _ => pad(block::<K, S, 1>(g, src, &w, &col, &masks, oy)),
            };
            for (r, a) in acc.iter().take(n).enumerate() {
                let y = epilogue(*a, e);
                let at = (oy - rows.start + r) * ow + 16 * j;
                _mm512_mask_storeu_ps(dst.add(at), out_mask, y);
                psum = _mm512_add_ps(psum, _mm512_maskz_mov_ps(out_mask, y));
            }
            oy += n;
        }
    }
    _mm512_reduce_add_ps(psum)
}

/// `N` accumulators widened to [`RB`] (the unused ones zero).
#[inline(always)]
fn pad<const N: usize>(a: [__m512; N]) -> [__m512; RB] {
    // SAFETY: all-zero bits are a valid __m512.
    std::array::from_fn(|i| a.get(i).copied().unwrap_or(unsafe { std::mem::zeroed() }))
}

/// Output rows `oy..oy + R`, 16 columns: each input row they read is loaded once per tap column and
/// multiplied into every output row that uses it ([`input_row`]). For the 5x5 kernel at stride 2 the
/// input rows are unrolled at compile time, so that which tap each multiply-add takes is
/// a constant: as a loop over the rows every multiply-add was preceded by a compare and a branch and
/// read its tap from the stack, and the 5x5 kernel at stride 2 ran at 19 GMAC/s on one thread against
/// 43 unrolled (16 channels of 56x56, in L2; no activation). Unrolled, the other kernels were 5-12%
/// slower than as the loop (3x3: 33 against 37 GMAC/s at stride 1, 20 against 22 at stride 2; 5x5 at
/// stride 1: 42 against 45); 7x7 was not measured.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn block<const K: usize, const S: usize, const R: usize>(
    g: &Geometry,
    src: &[f32],
    w: &[[__m512; K]; K],
    col: &[isize; K],
    masks: &[[__mmask16; 3]; K],
    oy: usize,
) -> [__m512; R] {
    let mut acc = [_mm512_setzero_ps(); R];
    let rows = (R - 1) * S + K;
    if K == 5 && S == 2 {
        macro_rules! unrolled {
            ($($t:literal)*) => {
                $(if $t < rows {
                    input_row::<K, S, R>(g, src, (w, col, masks), (oy, $t), &mut acc);
                })*
            };
        }
        // At most 11 input rows (R = 4, S = 2, K = 5).
        const _: () = assert!(RB <= 4);
        unrolled!(0 1 2 3 4 5 6 7 8 9 10);
    } else {
        for t in 0..rows {
            input_row::<K, S, R>(g, src, (w, col, masks), (oy, t), &mut acc);
        }
    }
    acc
}

/// Input row `oy·S + t` (of the padded input) multiplied into the accumulators of output rows
/// `oy..oy + R` that read it: output row `oy + r` takes it with the taps of row `t - r·S`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn input_row<const K: usize, const S: usize, const R: usize>(
    g: &Geometry,
    src: &[f32],
    (w, col, masks): (&[[__m512; K]; K], &[isize; K], &[[__mmask16; 3]; K]),
    (oy, t): (usize, usize),
    acc: &mut [__m512; R],
) {
    let Some(iy) = (oy * S + t)
        .checked_sub(g.pad.top)
        .filter(|&iy| iy < g.in_h)
    else {
        return;
    };
    let row = src.as_ptr().add(iy * g.in_w);
    // Stride 2: the 48 input columns from the first tap's, in three loads; the even and odd
    // columns of the first 32 by one permute each; tap kx = 2m + q is parity q shifted by m
    // columns, its last m lanes from the third load.
    let phases = if S == 2 {
        let p = row.wrapping_offset(col[0]);
        let lo = _mm512_maskz_loadu_ps(masks[0][0], p);
        let hi = _mm512_maskz_loadu_ps(masks[0][1], p.wrapping_add(16));
        let next = match K > 2 {
            true => _mm512_maskz_loadu_ps(masks[0][2], p.wrapping_add(32)),
            false => _mm512_setzero_ps(),
        };
        let even = _mm512_permutex2var_ps(lo, phase_index(0, 0), hi);
        let odd = _mm512_permutex2var_ps(lo, phase_index(1, 0), hi);
        Some((even, odd, next))
    } else {
        None
    };
    for kx in 0..K {
        // Masked-off lanes are not read, so the address may lie outside the row.
        let x = match phases {
            None => _mm512_maskz_loadu_ps(masks[kx][0], row.wrapping_offset(col[kx])),
            Some((even, _, _)) if kx == 0 => even,
            Some((_, odd, _)) if kx == 1 => odd,
            Some((even, odd, next)) => {
                let v = if kx % 2 == 0 { even } else { odd };
                _mm512_permutex2var_ps(v, phase_index(kx % 2, kx / 2), next)
            }
        };
        for (r, a) in acc.iter_mut().enumerate() {
            // Output row oy + r reads input rows (oy + r)·S + ky.
            if let Some(ky) = t.checked_sub(r * S).filter(|&ky| ky < K) {
                *a = _mm512_fmadd_ps(w[ky][kx], x, *a);
            }
        }
    }
}

/// The permutation that picks, for stride 2, input columns `2i + q` (`q` the parity) from two
/// vectors of 16 consecutive columns (`m = 0`), or shifts such a column vector by `m` lanes and fills
/// the last `m` from the next 16 columns (`m >= 1`).
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn phase_index(q: usize, m: usize) -> __m512i {
    let idx: [i32; 16] = std::array::from_fn(|i| match (m, i + m < 16) {
        (0, _) => (2 * i + q) as i32,
        (_, true) => (i + m) as i32,
        (_, false) => (16 + 2 * (i + m - 16) + q) as i32,
    });
    _mm512_loadu_si512(idx.as_ptr().cast())
}

#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn epilogue(a: __m512, e: Epilogue) -> __m512 {
    let z = _mm512_fmadd_ps(a, _mm512_set1_ps(e.scale), _mm512_set1_ps(e.shift));
    act_ps(z, e.act)
}
