//! Fully connected layers of an inference pass (the classifier, the squeeze-excite layers of the
//! BN-folded path): `x · wᵀ + b`, the weight rows split over the threads. At small batches this is one
//! pass over the weight rows: at batch 1 the classifier is a matrix-vector product over the whole
//! weight (1000 x 1280 floats, 5 MB, for the ImageNet heads), bound by memory bandwidth, which
//! candle's matrix product ran on one thread (0.29 ms of MobileNetV2's 4.6 ms on two threads). Larger
//! batches are a single-threaded `gemm` per block of weight rows (candle's would hand the product to
//! rayon's sleeping workers).

use std::mem::MaybeUninit;
use std::ops::Range;

use candle_core::{DType, Tensor};

#[cfg(target_arch = "x86_64")]
use super::pointwise::avx512::dot16;
use super::{parallel_for, parallel_threads, CpuF32, SharedOut};

/// Batches up to this size take the row-split product; larger ones are matrix products proper.
const MAX_ROWS: usize = 8;
/// At most this many weight rows (output features) per task.
const ROWS_PER_TASK: usize = 64;
/// Products of fewer multiply-adds run on the calling thread (a parallel section costs more).
const SERIAL_MACS: usize = 16 * 1024;

/// `x · wᵀ + b` for `x` `[m, k]`, `w` `[n, k]` and `b` `[n]` when this path applies (f32 on the CPU,
/// no gradient needed), else `None`.
pub(crate) fn linear_inference(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
) -> candle_core::Result<Option<Tensor>> {
    let applies = x.device().is_cpu()
        && [Some(x), Some(w), b]
            .iter()
            .flatten()
            .all(|t| t.dtype() == DType::F32)
        && x.rank() == 2;
    if !applies {
        return Ok(None);
    }
    let ((m, k), (n, wk)) = (x.dims2()?, w.dims2()?);
    if wk != k || b.is_some_and(|b| b.dims() != [n]) {
        candle_core::bail!(
            "linear: weight {:?} and bias {:?} do not fit input {:?}",
            w.dims(),
            b.map(Tensor::dims),
            x.dims()
        )
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let b = match b {
        Some(b) => b.contiguous()?,
        None => Tensor::zeros(n, DType::F32, x.device())?,
    };
    let (xs, ws, bs) = (
        CpuF32::new(&x, "linear input")?,
        CpuF32::new(&w, "linear weight")?,
        CpuF32::new(&b, "linear bias")?,
    );
    let y = linear_f32(xs.slice(), m, k, ws.slice(), n, bs.slice())?;
    Ok(Some(Tensor::from_vec(y, (m, n), x.device())?))
}

/// `x · wᵀ + b` for `x` `[m, k]`, `w` `[n, k]` (row-major) and `b` `[n]` on plain buffers.
pub(crate) fn linear_f32(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    b: &[f32],
) -> candle_core::Result<Vec<f32>> {
    linear_f32_then(x, m, k, w, n, b, |_, _, _| ())
}

/// [`linear_f32`], then `finish(i, features, y)` on each part of the output as soon as a task has
/// computed it: `y` holds outputs `features` of input row `i` (every output once, on whichever thread
/// computed it). The squeeze-excite gate applies its sigmoid and scales the map's channels there.
pub(crate) fn linear_f32_then(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    b: &[f32],
    finish: impl Fn(usize, Range<usize>, &mut [f32]) + Sync,
) -> candle_core::Result<Vec<f32>> {
    if (x.len(), w.len(), b.len()) != (m * k, n * k, n) {
        candle_core::bail!(
            "linear: operands of {}, {} and {} values for [{m}, {k}] x [{n}, {k}]ᵀ + [{n}]",
            x.len(),
            w.len(),
            b.len()
        )
    }
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    let out = SharedOut::new(&mut y);
    let per_task = rows_per_task(m, k, n, parallel_threads());
    parallel_for(n.div_ceil(per_task), |task| {
        let rows = task * per_task..((task + 1) * per_task).min(n);
        let w = &w[rows.start * k..rows.end * k];
        // SAFETY: row i, columns `rows` of the m x n output lie inside `y`'s allocation and belong
        // to this task alone.
        let part = |i: usize| unsafe {
            let first = out.at(i * n + rows.start).cast::<MaybeUninit<f32>>();
            std::slice::from_raw_parts_mut(first, rows.len())
        };
        if m <= MAX_ROWS {
            for i in 0..m {
                dot_rows_dispatch(&x[i * k..(i + 1) * k], w, &b[rows.clone()], part(i));
            }
        } else {
            for i in 0..m {
                for (y, b) in part(i).iter_mut().zip(&b[rows.clone()]) {
                    y.write(*b);
                }
            }
            // SAFETY: the task's block (row stride n) holds the bias, which gemm adds to; x is
            // m x k (row stride k) and the task's weight rows are read as a k x rows.len() matrix
            // of column stride k, all within the slices checked above.
            unsafe {
                gemm::gemm(
                    m,
                    rows.len(),
                    k,
                    out.at(rows.start),
                    1,
                    n as isize,
                    true,
                    x.as_ptr(),
                    1,
                    k as isize,
                    w.as_ptr(),
                    k as isize,
                    1,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
        for i in 0..m {
            // SAFETY: every value of the part was written above.
            let y =
                unsafe { std::slice::from_raw_parts_mut(out.at(i * n + rows.start), rows.len()) };
            finish(i, rows.clone(), y);
        }
    });
    // SAFETY: the tasks wrote every output row's every column.
    unsafe { y.set_len(m * n) };
    Ok(y)
}

/// Weight rows per task of [`linear_f32_then`] for `m` inputs of `k` features and `n` outputs on `threads`
/// threads: all of them below [`SERIAL_MACS`], else enough tasks for four per thread (the weight, read
/// from memory once, is what takes the time: the squeeze-excite reduction of B0's last blocks, 1152 x
/// 48, is a single task of 64 rows otherwise), at most [`ROWS_PER_TASK`].
fn rows_per_task(m: usize, k: usize, n: usize, threads: usize) -> usize {
    if m * k * n < SERIAL_MACS {
        return n.max(1);
    }
    n.div_ceil(4 * threads).clamp(1, ROWS_PER_TASK)
}

/// `y[j] = x · w[j] + b[j]` for the rows `w[j]` (each `x.len()` long).
///
/// Four rows at a time share each load of `x`, and their sums are independent chains: one row at a
/// time waited on its accumulator's add latency (4 cycles per 16 multiply-adds), which made the
/// batch-1 classifier compute-bound rather than bound by reading its weight (MobileNetV2's pool and
/// classifier: 0.120 ms before, 0.097-0.105 ms after, on a 2-core Xeon).
#[inline(always)]
fn dot_rows(x: &[f32], w: &[f32], b: &[f32], y: &mut [MaybeUninit<f32>]) {
    let (k, n) = (x.len(), y.len());
    // Past the last row, the group repeats it (computed and dropped).
    let row = |j: usize| &w[j.min(n.saturating_sub(1)) * k..][..k];
    for j in (0..n).step_by(4) {
        let sums = dot4(x, [row(j), row(j + 1), row(j + 2), row(j + 3)]);
        for (i, s) in (j..n).zip(sums) {
            y[i].write(s + b[i]);
        }
    }
}

/// The dot products of `x` with four rows as long as it.
#[inline(always)]
fn dot4(x: &[f32], rows: [&[f32]; 4]) -> [f32; 4] {
    let body = x.len() - x.len() % 16;
    let chunks = |r: usize| rows[r][..body].chunks_exact(16);
    // Sixteen independent partial sums (one vector) per row, reduced at the end.
    let mut acc = [[0f32; 16]; 4];
    for ((((xs, w0), w1), w2), w3) in x[..body]
        .chunks_exact(16)
        .zip(chunks(0))
        .zip(chunks(1))
        .zip(chunks(2))
        .zip(chunks(3))
    {
        for (a, w) in acc.iter_mut().zip([w0, w1, w2, w3]) {
            for ((a, x), w) in a.iter_mut().zip(xs).zip(w) {
                *a += x * w;
            }
        }
    }
    std::array::from_fn(|r| {
        let tail: f32 = x[body..]
            .iter()
            .zip(&rows[r][body..])
            .map(|(a, b)| a * b)
            .sum();
        // Halves added pairwise (vector adds and shuffles): summed in order, the 16 lanes were 15
        // dependent adds, longer than the products themselves on rows of 20 (the squeeze-excite
        // expansions).
        let mut lanes = acc[r];
        for half in [8, 4, 2, 1] {
            for i in 0..half {
                lanes[i] += lanes[i + half];
            }
        }
        lanes[0] + tail
    })
}

/// [`dot_rows`] on AVX-512: 16 rows at a time ([`dot16`]: their sums side by side, then added up
/// across lanes together), the rows past the last 16 by [`dot_rows`]. Four rows at a time, each row's
/// 16 lanes added up on its own took longer than the products on the short rows of the squeeze-excite
/// expansions (20 to 48 values): B0's 20 → 480 outputs took 3.4 µs with the lanes added in order,
/// 2.8 µs added pairwise, 0.6 µs this way (one call, hot).
///
/// # Safety
/// The CPU must support AVX-512F; `w` must hold `y.len()` rows of `x.len()` values and `b` as many
/// values as `y`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_rows16(x: &[f32], w: &[f32], b: &[f32], y: &mut [MaybeUninit<f32>]) {
    use std::arch::x86_64::*;
    let (k, n) = (x.len(), y.len());
    let whole = n - n % 16;
    for j in (0..whole).step_by(16) {
        let rows = std::array::from_fn(|l| w.as_ptr().add((j + l) * k));
        let sums = _mm512_add_ps(dot16(x, rows), _mm512_loadu_ps(b.as_ptr().add(j)));
        _mm512_storeu_ps(y.as_mut_ptr().add(j).cast(), sums);
    }
    dot_rows(x, &w[whole * k..], &b[whole..], &mut y[whole..]);
}

/// [`dot_rows`] with the best kernel for this CPU: 16 rows at a time on AVX-512 ([`dot_rows16`]),
/// else compiled for AVX2 + FMA where the CPU has them, else for the baseline instruction set.
fn dot_rows_dispatch(x: &[f32], w: &[f32], b: &[f32], y: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected on this CPU just above; `w` holds `y.len()` rows of
            // `x.len()` values and `b` as many values as `y` (the caller's slices).
            return unsafe { dot_rows16(x, w, b, y) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were detected on this CPU just above.
            return unsafe { dot_rows_avx2(x, w, b, y) };
        }
    }
    dot_rows(x, w, b, y)
}

/// [`dot_rows`] compiled for AVX2 + FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2(x: &[f32], w: &[f32], b: &[f32], y: &mut [MaybeUninit<f32>]) {
    dot_rows(x, w, b, y)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    /// Equals candle's `x · wᵀ + b` for batches on both sides of [`MAX_ROWS`], one task or several (with
    /// a partial last one), inner sizes with and without a remainder of 16; other dtypes and ranks
    /// decline.
    #[test]
    fn matches_matmul_and_declines_what_it_does_not_cover() {
        let dev = Device::Cpu;
        for (m, k, n) in [
            (1, 1280, 1000),
            (3, 37, 130),
            (8, 64, 64),
            (2, 5, 1),
            (1, 1152, 48),
            (1, 20, 7),
            (1, 20, 480),
            (16, 320, 1000),
            (9, 37, 130),
        ] {
            let x = Tensor::randn(0f32, 1., (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1., (n, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1., n, &dev).unwrap();
            let want = x.matmul(&w.t().unwrap()).unwrap();
            for bias in [None, Some(&b)] {
                let got = linear_inference(&x, &w, bias).unwrap().unwrap();
                let want = match bias {
                    Some(b) => want.broadcast_add(b).unwrap(),
                    None => want.clone(),
                };
                let d = crate::ops::tests::max_abs_diff(&got, &want);
                assert!(d < 1e-4 * (k as f32).sqrt(), "{m}x{k}x{n}: {d}");
            }
        }
        // The buffer form, both branches (rows, and gemm past MAX_ROWS).
        for m in [2, 17] {
            let (k, n) = (48, 70);
            let x = Tensor::randn(0f32, 1., (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1., (n, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1., n, &dev).unwrap();
            let want = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = linear_f32(&flat(&x), m, k, &flat(&w), n, &flat(&b)).unwrap();
            let got = Tensor::from_vec(got, (m, n), &dev).unwrap();
            assert!(crate::ops::tests::max_abs_diff(&got, &want) < 1e-4, "m {m}");
            assert!(linear_f32(&flat(&x), m, k, &flat(&w), n - 1, &flat(&b)).is_err());
        }
        // `finish` sees every output once, as computed, and what it writes is the result (both
        // branches, one task and several).
        for (m, k, n) in [(1, 8, 5), (2, 1152, 48), (17, 48, 70)] {
            use std::sync::atomic::{AtomicUsize, Ordering};
            let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let plain = linear_f32(&x, m, k, &w, n, &b).unwrap();
            let seen: Vec<AtomicUsize> = (0..m * n).map(|_| AtomicUsize::new(0)).collect();
            let doubled = linear_f32_then(&x, m, k, &w, n, &b, |i, cols, y| {
                assert_eq!(cols.len(), y.len());
                for (j, y) in cols.zip(y.iter_mut()) {
                    assert_eq!(
                        *y,
                        plain[i * n + j],
                        "{m}x{k}x{n}: ({i}, {j}) before finish"
                    );
                    seen[i * n + j].fetch_add(1, Ordering::Relaxed);
                    *y *= 2.0;
                }
            })
            .unwrap();
            assert!(
                seen.iter().all(|s| s.load(Ordering::Relaxed) == 1),
                "{m}x{k}x{n}"
            );
            let twice: Vec<f32> = plain.iter().map(|v| 2.0 * v).collect();
            assert_eq!(doubled, twice, "{m}x{k}x{n}");
        }
        let x = Tensor::zeros((9, 4), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((3, 4), DType::F32, &dev).unwrap();
        assert!(linear_inference(&x.unsqueeze(0).unwrap(), &w, None)
            .unwrap()
            .is_none());
        let half = x.narrow(0, 0, 2).unwrap().to_dtype(DType::F16).unwrap();
        assert!(linear_inference(&half, &w, None).unwrap().is_none());
        let bad = Tensor::zeros((3, 5), DType::F32, &dev).unwrap();
        assert!(linear_inference(&x.narrow(0, 0, 2).unwrap(), &bad, None).is_err());
        assert!(linear_inference(&x, &bad, None).is_err());
    }
}
