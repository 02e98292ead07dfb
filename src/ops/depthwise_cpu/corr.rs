//! The correlation primitive: scratch layout ([`Corr`]), filling the scratch from a source
//! plane ([`prepare`]) and the row kernels ([`correlate_rows`]).

use super::view::{strided_copy, Elem, View};
use crate::ops::depthwise::Geometry;

/// Outputs computed together in the inner loop (one AVX2 register of f32).
pub(super) const CHUNK: usize = 8;

/// One strided correlation over a zero-extended, possibly dilated plane (see the module docs),
/// with the scratch layout derived from it.
#[derive(Debug, Clone)]
pub(super) struct Corr {
    pub(super) off_h: isize,
    pub(super) off_w: isize,
    pub(super) dil_h: usize,
    pub(super) dil_w: usize,
    pub(super) k_h: usize,
    pub(super) k_w: usize,
    pub(super) s_h: usize,
    pub(super) s_w: usize,
    pub(super) out_h: usize,
    pub(super) out_w: usize,
    /// Output row length rounded up to whole chunks.
    pub(super) owp: usize,
    /// Length of one column phase of a scratch row: every tap reads `owp` values from it.
    pub(super) plen: usize,
    /// Length of one scratch row (all its `s_w` phases).
    pub(super) pitch: usize,
    /// Where tap `ky * k_w + kx` starts reading, relative to an output row's first scratch row.
    pub(super) offsets: Vec<usize>,
    /// One past the last scratch element an output row reads, relative to its first row.
    pub(super) reach: usize,
}

impl Corr {
    #[allow(clippy::too_many_arguments)]
    fn new(
        (off_h, off_w): (isize, isize),
        (dil_h, dil_w): (usize, usize),
        (k_h, k_w): (usize, usize),
        (s_h, s_w): (usize, usize),
        (out_h, out_w): (usize, usize),
    ) -> Self {
        let owp = out_w.div_ceil(CHUNK) * CHUNK;
        let plen = owp + (k_w - 1) / s_w;
        let pitch = s_w * plen;
        let offsets: Vec<usize> = (0..k_h * k_w)
            .map(|t| (t / k_w) * pitch + (t % k_w % s_w) * plen + t % k_w / s_w)
            .collect();
        let reach = offsets.iter().max().copied().unwrap_or(0) + owp;
        Self {
            off_h,
            off_w,
            dil_h,
            dil_w,
            k_h,
            k_w,
            s_h,
            s_w,
            out_h,
            out_w,
            owp,
            plen,
            pitch,
            offsets,
            reach,
        }
    }

    pub(super) fn forward(g: &Geometry) -> Self {
        Self::new(
            (g.pad.top as isize, g.pad.left as isize),
            (1, 1),
            (g.k_h, g.k_w),
            (g.stride_h, g.stride_w),
            (g.out_h, g.out_w),
        )
    }

    pub(super) fn grad_input(g: &Geometry) -> Self {
        Self::new(
            (
                (g.k_h - 1) as isize - g.pad.top as isize,
                (g.k_w - 1) as isize - g.pad.left as isize,
            ),
            (g.stride_h, g.stride_w),
            (g.k_h, g.k_w),
            (1, 1),
            (g.in_h, g.in_w),
        )
    }

    /// Scratch rows needed for `rows` output rows.
    pub(super) fn rows_for(&self, rows: usize) -> usize {
        (rows.max(1) - 1) * self.s_h + self.k_h
    }

    /// The `owp` values tap `t` reads for the output row whose first scratch row starts `rows`.
    #[inline(always)]
    pub(super) fn segment<'s>(&self, rows: &'s [f32], t: usize) -> &'s [f32] {
        let start = self.offsets.get(t).copied().unwrap_or(usize::MAX);
        rows.get(start..start.saturating_add(self.owp))
            .unwrap_or_default()
    }
}

/// Writes the scratch rows `first_row..` (as many as fit in `dst`) of `P` for `plane` of `src`.
pub(super) fn prepare<T: Elem>(
    c: &Corr,
    src: &View<T>,
    plane: usize,
    first_row: usize,
    dst: &mut [f32],
) {
    let [_, _, src_h, src_w] = src.dims;
    let [_, _, row_stride, col_stride] = src.strides;
    let plen = c.plen;
    dst.fill(0.0);
    for (i, drow) in dst.chunks_exact_mut(c.pitch).enumerate() {
        let Ok(r) = usize::try_from((first_row + i) as isize - c.off_h) else {
            continue;
        };
        let y = if c.dil_h == 1 {
            r
        } else if r % c.dil_h == 0 {
            r / c.dil_h
        } else {
            continue;
        };
        if y >= src_h {
            continue;
        }
        let base = src.plane_offset(plane) + y * row_stride;
        if c.dil_w != 1 {
            // Dilated source (input gradient of a strided convolution): scatter element-wise.
            for j in 0..src_w {
                let col = c.off_w + (j * c.dil_w) as isize;
                if col >= 0 {
                    let (q, t) = (col as usize % c.s_w, col as usize / c.s_w);
                    if let Some(d) = drow.get_mut(q * plen + t).filter(|_| t < plen) {
                        *d = src.data[base + j * col_stride].to_f32();
                    }
                }
            }
            continue;
        }
        // Padded column `off_w + j` holds source column `j`; keep the columns that exist in
        // both the source and the scratch row.
        let (skip, start) = match usize::try_from(c.off_w) {
            Ok(o) => (0, o),
            Err(_) => (c.off_w.unsigned_abs(), 0),
        };
        let count = src_w
            .saturating_sub(skip)
            .min((c.s_w * plen).saturating_sub(start));
        if count == 0 {
            continue;
        }
        let base = base + skip * col_stride;
        if c.s_w == 1 {
            strided_copy(src.data, base, col_stride, &mut drow[start..start + count]);
        } else if c.s_w == 2 && col_stride == 1 {
            deinterleave2(
                &src.data[base..base + count],
                start,
                drow.split_at_mut(plen),
            );
        } else {
            for j in 0..count {
                let col = start + j;
                drow[(col % c.s_w) * plen + col / c.s_w] = src.data[base + j * col_stride].to_f32();
            }
        }
    }
}

/// Splits `src`, whose first element belongs at padded column `start`, into the even and odd
/// columns of a scratch row.
fn deinterleave2<T: Elem>(src: &[T], start: usize, (even, odd): (&mut [f32], &mut [f32])) {
    let (mut src, mut t) = (src, start / 2);
    if start % 2 == 1 {
        // The first element is an odd column; the pairs that follow are (even, odd).
        let Some((first, rest)) = src.split_first() else {
            return;
        };
        if let Some(d) = odd.get_mut(t) {
            *d = first.to_f32();
        }
        (src, t) = (rest, t + 1);
    }
    let pairs = src.chunks_exact(2);
    let last = pairs.remainder().first();
    let n = pairs.len();
    let (even, odd) = (
        even.get_mut(t..).unwrap_or_default(),
        odd.get_mut(t..).unwrap_or_default(),
    );
    for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
        *e = pair[0].to_f32();
        *o = pair[1].to_f32();
    }
    if let (Some(v), Some(d)) = (last, even.get_mut(n)) {
        *d = v.to_f32();
    }
}

/// Arithmetic of the inner loops: plain multiply and add, or fused multiply-add.
pub(super) trait MulAdd {
    /// `a + w * x`.
    fn mul_add(a: f32, w: f32, x: f32) -> f32;
}

/// `a + w * x` rounded twice (any CPU).
pub(super) struct Plain;

impl MulAdd for Plain {
    #[inline(always)]
    fn mul_add(a: f32, w: f32, x: f32) -> f32 {
        a + w * x
    }
}

/// `a + w * x` rounded once; only used where the CPU has FMA, otherwise it is a libm call.
#[cfg(target_arch = "x86_64")]
pub(super) struct Fused;

#[cfg(target_arch = "x86_64")]
impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, w: f32, x: f32) -> f32 {
        w.mul_add(x, a)
    }
}

/// Correlates every output row of a band: `input` holds its scratch rows, `acc` one padded
/// output row, `out` the band's output rows.
#[inline(always)]
pub(super) fn correlate_rows<T: Elem, M: MulAdd>(
    c: &Corr,
    input: &[f32],
    taps: &[f32],
    acc: &mut [f32],
    out: &mut [T],
) {
    match (c.k_h, c.k_w, c.s_w) {
        (3, 3, 1) => correlate_rows_fixed::<T, M, 3, 1>(c, input, taps, acc, out),
        (3, 3, 2) => correlate_rows_fixed::<T, M, 3, 2>(c, input, taps, acc, out),
        (5, 5, 1) => correlate_rows_fixed::<T, M, 5, 1>(c, input, taps, acc, out),
        (5, 5, 2) => correlate_rows_fixed::<T, M, 5, 2>(c, input, taps, acc, out),
        (7, 7, 1) => correlate_rows_fixed::<T, M, 7, 1>(c, input, taps, acc, out),
        (7, 7, 2) => correlate_rows_fixed::<T, M, 7, 2>(c, input, taps, acc, out),
        _ => {
            for (i, orow) in out.chunks_exact_mut(c.out_w).enumerate() {
                let rows = input.get(i * c.s_h * c.pitch..).unwrap_or_default();
                acc.fill(0.0);
                for (t, &w) in taps.iter().enumerate() {
                    for (a, &x) in acc.iter_mut().zip(c.segment(rows, t)) {
                        *a = M::mul_add(*a, w, x);
                    }
                }
                store_row(acc, orow);
            }
        }
    }
}

/// [`correlate_rows`] for a `K x K` kernel and column stride `S`: all taps unrolled, [`CHUNK`]
/// outputs at a time with the accumulator in registers.
#[inline(always)]
fn correlate_rows_fixed<T: Elem, M: MulAdd, const K: usize, const S: usize>(
    c: &Corr,
    input: &[f32],
    taps: &[f32],
    acc: &mut [f32],
    out: &mut [T],
) {
    let mut w = [[0.0f32; K]; K];
    for (t, &v) in taps.iter().take(K * K).enumerate() {
        w[t / K][t % K] = v;
    }
    let (pitch, plen) = (c.pitch, c.plen);
    // Every read below is `rows[ky * pitch + (kx % S) * plen + kx / S + j * CHUNK..][..CHUNK]`
    // (the tap offsets of `Corr::new`) with `(j + 1) * CHUNK <= acc.len() == owp`, so it ends
    // at most at `reach`.
    if acc.len() != c.owp || c.s_w != S || c.k_h != K || c.k_w != K {
        return;
    }
    for (i, orow) in out.chunks_exact_mut(c.out_w).enumerate() {
        let first = i * c.s_h * pitch;
        let Some(rows) = input.get(first..first + c.reach) else {
            continue;
        };
        for (j, chunk) in acc.chunks_exact_mut(CHUNK).enumerate() {
            let mut a = [0.0f32; CHUNK];
            for (ky, wrow) in w.iter().enumerate() {
                for (kx, &wv) in wrow.iter().enumerate() {
                    let at = ky * pitch + (kx % S) * plen + kx / S + j * CHUNK;
                    // SAFETY: `at + CHUNK <= reach == rows.len()` (see above), and `[f32; CHUNK]`
                    // has the alignment of `f32`. Checking each read here costs as much as the
                    // multiply-add itself.
                    let x = unsafe { &*rows.as_ptr().add(at).cast::<[f32; CHUNK]>() };
                    for l in 0..CHUNK {
                        a[l] = M::mul_add(a[l], wv, x[l]);
                    }
                }
            }
            if let Ok(chunk) = <&mut [f32; CHUNK]>::try_from(chunk) {
                *chunk = a;
            }
        }
        store_row(acc, orow);
    }
}

/// Rounds the first `out.len()` accumulators into `out`.
#[inline(always)]
fn store_row<T: Elem>(acc: &[f32], out: &mut [T]) {
    for (o, &a) in out.iter_mut().zip(acc) {
        *o = T::from_f32(a);
    }
}
