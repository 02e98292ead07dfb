//! 1x1 convolution with a per-channel affine and activation applied while each output tile is in
//! cache (inference only): the expansion and projection convolutions of MBConv blocks with their
//! folded batch norm.
//!
//! As a plain matrix product the output (e.g. `96 x 112 x 112` floats, 4.8 MB at batch 1) leaves the
//! cache before the separate BN + swish pass reads it back, and the matrix product synchronises its
//! threads once per layer. Here each thread computes output tiles of about 128 KB single-threaded
//! (columns of the spatial dimension, or rows of output channels for small maps) and applies the
//! epilogue to the tile at once: in registers with the AVX-512 kernel, else right after `gemm`.
//! `im2col_f32` turns the stems' k x k convolutions into the same product.

use std::mem::MaybeUninit;

use candle_core::{bail, DType, Tensor};

use super::affine_act::{affine_act_in_place, affine_act_inference, Act};
use super::channel_stats::plane_sum;
use super::depthwise::Pad2d;
use super::{parallel_for, parallel_threads, with_scratch, CpuF32, SharedOut};

/// `act(conv1x1(x, w) · scale + shift)`: `x` `[B, C, H, W]`, `w` `[N, O, C]` with `N` 1 (shared) or
/// `B` (per sample, e.g. with a squeeze-excite gate folded into the weight columns), `scale` and
/// `shift` `[1, O]`. Inference only: the result has no gradient (on the CPU it is detached from the
/// graph). CPU f32 runs the tiled kernel on the buffers; other devices and dtypes compose a matrix
/// product and [`affine_act_inference`] (in place).
pub fn pointwise_conv_affine_act(
    x: &Tensor,
    w: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    act: Act,
) -> candle_core::Result<Tensor> {
    let (b, c, h, wd) = x.dims4()?;
    let (n, o, wc) = w.dims3()?;
    if wc != c || (n != 1 && n != b) {
        bail!(
            "pointwise_conv_affine_act: weight {:?} does not fit input {:?}",
            w.dims(),
            x.dims()
        )
    }
    for (what, t) in [("scale", scale), ("shift", shift)] {
        if t.dims() != [1, o] {
            bail!(
                "pointwise_conv_affine_act: {what} has shape {:?}, expected [1, {o}]",
                t.dims()
            )
        }
    }
    let f32_cpu =
        x.device().is_cpu() && [x, w, scale, shift].iter().all(|t| t.dtype() == DType::F32);
    if !f32_cpu {
        let y = w
            .broadcast_as((b, o, c))?
            .matmul(&x.reshape((b, c, h * wd))?)?
            .reshape((b, o, h, wd))?;
        return affine_act_inference(y, scale, shift, act);
    }
    // Inference only, so the kernel runs on the buffers directly rather than as a custom op (whose
    // set-up, with copies of the scale and shift, cost 9 µs before MobileNetV2's head convolution).
    let (x, w, scale, shift) = (
        x.contiguous()?,
        w.contiguous()?,
        scale.contiguous()?,
        shift.contiguous()?,
    );
    const OP: &str = "pointwise_conv_affine_act";
    let (xs, ws) = (CpuF32::new(&x, OP)?, CpuF32::new(&w, OP)?);
    let (ss, ts) = (CpuF32::new(&scale, OP)?, CpuF32::new(&shift, OP)?);
    let p = Pointwise {
        w: ws.slice(),
        w_stride: if n == 1 { 0 } else { o * c },
        out: o,
        scale: ss.slice(),
        shift: ts.slice(),
        act,
    };
    let y = pointwise_f32(&p, xs.slice(), [b, c, h, wd], None, None);
    Tensor::from_vec(y, (b, o, h, wd), x.device())
}

/// Target output tile: 32k floats (128 KB) keeps the tile and its input panel in L2.
const TILE_FLOATS: usize = 32 * 1024;

/// A folded 1x1 convolution on plain f32 buffers (the kernel behind [`pointwise_conv_affine_act`]
/// and the fused MBConv blocks).
pub(crate) struct Pointwise<'a> {
    /// `[O, C]` row-major, or one such matrix per sample.
    pub w: &'a [f32],
    /// Elements between the matrices of consecutive samples (0: shared by all samples).
    pub w_stride: usize,
    /// Output channels `O`.
    pub out: usize,
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    pub act: Act,
}

/// `act(conv1x1(g ⊙ x) · scale + shift) + residual` for `x` `[B, C, H, W]` (contiguous): the optional
/// `gate` `[B, C]` scales each sample's input channels (squeeze-excite) and the optional `residual`
/// `[B, O, H, W]` is added after the activation. The caller checks the sizes.
///
/// Each task computes an output tile of about 128 KB single-threaded (columns of the spatial dimension,
/// or rows of output channels for small maps) and finishes it while it is in cache: on AVX-512 with
/// the register-blocked kernel of `mod avx512` (the gate folded into the tile's weight rows), elsewhere
/// with `gemm` followed by the epilogue, the gate applied to whichever side of the tile's product is
/// smaller (the weight rows or the input columns) in a per-thread scratch buffer.
pub(crate) fn pointwise_f32(
    p: &Pointwise,
    x: &[f32],
    dims: [usize; 4],
    gate: Option<&[f32]>,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    pointwise_f32_with(p, x, dims, (gate, residual), false, true).0
}

/// [`pointwise_f32`] without gate or residual, and the mean of every output plane (`[B · O]`), which
/// each task sums from the rows it has just written (the head convolution and global average pooling
/// of the fused network: no serial pass over the output afterwards).
pub(crate) fn pointwise_pool_f32(
    p: &Pointwise,
    x: &[f32],
    dims: [usize; 4],
) -> (Vec<f32>, Vec<f32>) {
    pointwise_f32_with(p, x, dims, (None, None), true, true)
}

/// [`pointwise_f32`], and with `pool` the plane means as [`pointwise_pool_f32`] (else empty); `simd`
/// allows the AVX-512 micro-kernel where the CPU has it (the tests run both paths).
fn pointwise_f32_with(
    p: &Pointwise,
    x: &[f32],
    [b, c, h, wd]: [usize; 4],
    (gate, residual): (Option<&[f32]>, Option<&[f32]>),
    pool: bool,
    simd: bool,
) -> (Vec<f32>, Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    let avx512 = simd && std::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    let avx512 = {
        let _ = simd;
        false
    };
    let o = p.out;
    let hw = h * wd;
    let len = b * o * hw;
    if len == 0 {
        return (Vec::new(), vec![f32::NAN; if pool { b * o } else { 0 }]);
    }
    #[cfg(target_arch = "x86_64")]
    if avx512 && !pool && splits_channels(p, [b, c, hw], parallel_threads()) {
        return (
            split_channels_avx512(p, x, [b, c, hw], gate, residual),
            Vec::new(),
        );
    }
    // Column tiles of about TILE_FLOATS / o pixels, in whole vectors of 16 spread evenly over the
    // tiles (no narrow last tile for a thread to wait on), as many tiles per sample as threads when
    // there are few; maps of up to 256 pixels stay whole. With fewer samples than threads, larger
    // maps are split into at least one run of columns per thread: the tiles go column by column,
    // `parallel_for` gives thread t the t-th part of them, and so each thread reads the pixels that
    // its core wrote where the kernel before split the map's rows the same way. (Halves of 14x14
    // maps were slower on B0: one of them holds the 4 pixels past the last whole vector, which run
    // as dot products.) Then the output channels are split too, in blocks of 4 (half the
    // micro-kernel's 8 rows), until every thread has two tiles.
    let threads = parallel_threads();
    let vectors = hw.div_ceil(16);
    let mut col_tiles = match hw <= 256 {
        true => 1,
        false => vectors.div_ceil((TILE_FLOATS / o).div_ceil(16).max(4)),
    };
    if b < threads && hw > 256 {
        col_tiles = col_tiles.max(threads.div_ceil(b)).min(vectors);
    }
    while col_tiles > 1
        && col_tiles < vectors
        && !(b * col_tiles).is_multiple_of(threads)
        && b * col_tiles < 8 * threads
    {
        col_tiles += 1;
    }
    let quads = o.div_ceil(4);
    let mut row_tiles = 1;
    while b * col_tiles * row_tiles < 2 * threads && quads / (2 * row_tiles) >= 4 {
        row_tiles *= 2;
    }
    let mut y: Vec<f32> = Vec::with_capacity(len);
    let out = SharedOut::new(&mut y);
    // With `pool`: each tile's row sums, `[B, col_tiles, O]`.
    let mut tile_sums = vec![0f32; if pool { b * col_tiles * o } else { 0 }];
    let sums_out = SharedOut::new(&mut tile_sums);
    parallel_for(b * row_tiles * col_tiles, |tile| {
        let (bi, rest) = (
            tile / (row_tiles * col_tiles),
            tile % (row_tiles * col_tiles),
        );
        let (ct, rt) = (rest / row_tiles, rest % row_tiles);
        let r0 = 4 * (rt * quads / row_tiles);
        let c0 = 16 * (ct * vectors / col_tiles);
        let m = (4 * ((rt + 1) * quads / row_tiles)).min(o) - r0;
        let nn = (16 * ((ct + 1) * vectors / col_tiles)).min(hw) - c0;
        let w = &p.w[bi * p.w_stride + r0 * c..][..m * c];
        let x = &x[bi * c * hw + c0..];
        let dst_off = bi * o * hw + r0 * hw + c0;
        let gate = gate.map(|g| &g[bi * c..(bi + 1) * c]);
        if avx512 {
            // (Never taken off x86-64, where `avx512` is false.)
            #[cfg(target_arch = "x86_64")]
            with_scratch(|scratch| {
                let res = residual.map(|r| &r[dst_off..]);
                let w = match gate {
                    Some(g) => gated_rows(scratch, w, c, 0..c, g),
                    None => w,
                };
                // SAFETY: the CPU has AVX-512F (checked above); dst rows r0..r0+m, columns
                // c0..c0+nn of sample bi (row stride hw) lie inside the buffer and belong to
                // this task alone; `w` holds m rows of c, `x` c rows of at least nn (stride
                // hw), and `res` the same rows and columns as dst.
                unsafe {
                    avx512::tile(
                        avx512::Operands {
                            w,
                            w_ld: c,
                            x,
                            res,
                            hw,
                            ld: hw,
                            c,
                            packed: None,
                        },
                        p,
                        r0..r0 + m,
                        nn,
                        out.at(dst_off),
                    )
                };
            });
        } else {
            with_scratch(|scratch| {
                // (lhs, its row stride, rhs, its row stride)
                let (lhs, lhs_rs, rhs, rhs_rs) = match gate {
                    None => (w, c, x, hw),
                    Some(g) if m <= nn => (gated_rows(scratch, w, c, 0..c, g), c, x, hw),
                    Some(g) => {
                        scratch.clear();
                        for (k, g) in g.iter().enumerate() {
                            scratch.extend(x[k * hw..k * hw + nn].iter().map(|x| x * g));
                        }
                        (w, c, &scratch[..], nn)
                    }
                };
                // SAFETY: dst rows r0..r0+m, columns c0..c0+nn of sample bi lie inside the buffer
                // (len = b·o·hw) and no other task writes them; lhs (m rows of c) and rhs (c rows of
                // nn) are read within their slices; gemm writes every dst element without reading it
                // (read_dst = false).
                unsafe {
                    let dst = out.at(dst_off);
                    gemm::gemm(
                        m,
                        nn,
                        c,
                        dst,
                        1,
                        hw as isize,
                        false,
                        lhs.as_ptr(),
                        1,
                        lhs_rs as isize,
                        rhs.as_ptr(),
                        1,
                        rhs_rs as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                    for r in 0..m {
                        let row = std::slice::from_raw_parts_mut(dst.add(r * hw), nn);
                        let ch = r0 + r;
                        affine_act_in_place(p.act, row, p.scale[ch], p.shift[ch]);
                        if let Some(res) = residual {
                            let res = &res[dst_off + r * hw..][..nn];
                            row.iter_mut().zip(res).for_each(|(y, r)| *y += r);
                        }
                    }
                }
            });
        }
        if pool {
            for r in 0..m {
                // SAFETY: this task has written row r of its tile (nn values at `dst_off + r·hw`),
                // and slot (bi, ct, r0 + r) of the tile sums is this task's alone.
                unsafe {
                    let row = std::slice::from_raw_parts(out.at(dst_off + r * hw), nn);
                    *sums_out.at((bi * col_tiles + ct) * o + r0 + r) = plane_sum(row, |v| v) as f32;
                }
            }
        }
    });
    // SAFETY: the tiles cover every (sample, channel, pixel) once and each was written.
    unsafe { y.set_len(len) };
    let mut means = vec![0f32; if pool { b * o } else { 0 }];
    for (bi, means) in means.chunks_exact_mut(o).enumerate() {
        for (ch, mean) in means.iter_mut().enumerate() {
            let sum: f64 = (0..col_tiles)
                .map(|ct| f64::from(tile_sums[(bi * col_tiles + ct) * o + ch]))
                .sum();
            *mean = (sum / hw as f64) as f32;
        }
    }
    (y, means)
}

/// Columns `cols` of the weight `rows` (`c` each), each column scaled by its gate value `g` (as long
/// as `cols`), written to `scratch` as rows of `cols.len()`: the squeeze-excite gate folded into a
/// task's weights.
fn gated_rows<'a>(
    scratch: &'a mut Vec<f32>,
    rows: &[f32],
    c: usize,
    cols: std::ops::Range<usize>,
    g: &[f32],
) -> &'a [f32] {
    let n = rows.len() / c.max(1) * cols.len();
    scratch.clear();
    scratch.reserve(n);
    gate_rows_dispatch(&mut scratch.spare_capacity_mut()[..n], rows, c, cols, g);
    // SAFETY: `gate_rows` wrote all n values (one per column of `cols` of every row).
    unsafe { scratch.set_len(n) };
    scratch
}

/// The loop of [`gated_rows`], writing every value of `dst` (sized for it).
#[inline(always)]
fn gate_rows(
    dst: &mut [MaybeUninit<f32>],
    rows: &[f32],
    c: usize,
    cols: std::ops::Range<usize>,
    g: &[f32],
) {
    let width = cols.len();
    for (dst, row) in dst.chunks_exact_mut(width.max(1)).zip(rows.chunks_exact(c)) {
        for ((d, w), g) in dst.iter_mut().zip(&row[cols.clone()]).zip(&g[..width]) {
            d.write(w * g);
        }
    }
}

isa_dispatch!(
    /// [`gate_rows`] compiled for the best ISA of this CPU (the baseline loop was 4 lanes wide).
    fn gate_rows_dispatch, gate_rows_avx2, gate_rows_avx512
    (dst: &mut [MaybeUninit<f32>], rows: &[f32], c: usize, cols: std::ops::Range<usize>, g: &[f32])
        = gate_rows
);

/// Whether [`split_channels_avx512`] runs `p` over `[b, c, hw]` on `threads` threads: fewer samples
/// than threads, maps of 128 to 256 pixels (14x14: larger maps split by columns, and 7x7 ones were no
/// faster this way), no activation (the parts are added after the affine), and at least 32 input
/// channels per thread.
#[cfg(target_arch = "x86_64")]
fn splits_channels(p: &Pointwise, [b, c, hw]: [usize; 3], threads: usize) -> bool {
    threads > 1
        && b < threads
        && (128..=256).contains(&hw)
        && matches!(p.act, Act::Identity)
        && c >= 32 * threads
}

/// [`pointwise_f32`] with the input channels split between the threads: thread `t` multiplies the
/// `t`-th run of input channels (which the depthwise kernel before it wrote on the same core, its
/// tasks going channel group by channel group) into a part of the output, `scale` applied and, on
/// thread 0, `shift` and the residual added too; a second parallel section adds the parts up. Split
/// by output channels instead, each thread reads every input channel, half of them from the other
/// core's cache, where the parts exchanged now are a sixth of that (B0's projections of 480 and 672
/// channels on 14x14 maps: 5-13 µs faster each on a 2-core Xeon, 60-110 against 70-120 µs).
#[cfg(target_arch = "x86_64")]
fn split_channels_avx512(
    p: &Pointwise,
    x: &[f32],
    [b, c, hw]: [usize; 3],
    gate: Option<&[f32]>,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    /// Output-channel halves per part, so that a thread that is done can help with the other's.
    const HALVES: usize = 2;
    let threads = parallel_threads();
    let o = p.out;
    let len = b * o * hw;
    let mut y: Vec<f32> = Vec::with_capacity(len);
    let mut parts: Vec<f32> = Vec::with_capacity((threads - 1) * len);
    let zeros = vec![0f32; o];
    let scaled = Pointwise {
        shift: &zeros,
        ..*p
    };
    let (out, parts_out) = (SharedOut::new(&mut y), SharedOut::new(&mut parts));
    let quads = o.div_ceil(4);
    parallel_for(b * threads * HALVES, |task| {
        let (bi, t, half) = (
            task / (threads * HALVES),
            task / HALVES % threads,
            task % HALVES,
        );
        let (k0, k1) = (t * c / threads, (t + 1) * c / threads);
        let r0 = 4 * (half * quads / HALVES);
        let m = (4 * ((half + 1) * quads / HALVES)).min(o) - r0;
        let at = bi * o * hw + r0 * hw;
        // SAFETY: rows r0..r0 + m of sample bi lie inside `y` (part 0) or inside part t of `parts`
        // (len values each), and only this task writes them.
        let (dst, res, pw) = match t {
            0 => (unsafe { out.at(at) }, residual.map(|r| &r[at..]), p),
            _ => (unsafe { parts_out.at((t - 1) * len + at) }, None, &scaled),
        };
        let rows = &p.w[bi * p.w_stride + r0 * c..][..m * c];
        with_scratch(|scratch| {
            let (w, w_ld) = match gate {
                Some(g) => {
                    let g = &g[bi * c + k0..bi * c + k1];
                    (gated_rows(scratch, rows, c, k0..k1, g), k1 - k0)
                }
                None => (&rows[k0..], c),
            };
            let operands = avx512::Operands {
                w,
                w_ld,
                x: &x[(bi * c + k0) * hw..],
                res,
                hw,
                ld: hw,
                c: k1 - k0,
                packed: None,
            };
            // SAFETY: the caller saw AVX-512F; `w` holds m rows of k1 - k0 weights w_ld apart, `x`
            // k1 - k0 rows of hw, and `dst` (and `res`) m rows of hw from the tile's first element.
            unsafe { avx512::tile(operands, pw, r0..r0 + m, hw, dst) };
        });
    });
    // SAFETY: the tasks wrote every row of every sample of the output and of each part.
    unsafe {
        y.set_len(len);
        parts.set_len((threads - 1) * len);
    }
    let chunk = len.div_ceil(16 * threads) * 16;
    let sum = SharedOut::new(&mut y);
    parallel_for(len.div_ceil(chunk), |i| {
        let range = i * chunk..((i + 1) * chunk).min(len);
        // SAFETY: the ranges are disjoint and inside `y`.
        let dst = unsafe { std::slice::from_raw_parts_mut(sum.at(range.start), range.len()) };
        for part in parts.chunks_exact(len) {
            dst.iter_mut()
                .zip(&part[range.clone()])
                .for_each(|(y, p)| *y += p);
        }
    });
    y
}

/// Output channels `rows` of the folded 1x1 convolution `p` (no gate, no residual) at pixels `px` of
/// one sample's input `x` (`c` rows of `hw`), on the calling thread, written to `dst` as `rows.len()`
/// rows of `px.len()` values `ld` apart: the expansion inside the fused expansion + depthwise kernels.
/// With `packed`, the register blocks read those pixels from the panel that [`avx512::pack`] made of
/// them instead.
///
/// # Safety
/// The CPU must support AVX-512F; `x` must hold `c · hw` values, `px.end <= hw`, `p.w` at least
/// `rows.end` rows of `c`, `p.scale` and `p.shift` at least `rows.end` values, `ld >= px.len()`, and
/// `dst` must be valid for writing `rows.len()` rows of `px.len()` values `ld` apart; `packed` (if
/// any) must be what `avx512::pack` returned for pixels `px` of `x`, its panel unchanged since.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn rows_avx512(
    p: &Pointwise,
    x: &[f32],
    (c, hw): (usize, usize),
    rows: std::ops::Range<usize>,
    px: std::ops::Range<usize>,
    (dst, ld): (*mut f32, usize),
    packed: Option<*const f32>,
) {
    let o = avx512::Operands {
        w: &p.w[rows.start * c..rows.end * c],
        w_ld: c,
        x: &x[px.start..],
        res: None,
        hw,
        ld,
        c,
        packed,
    };
    avx512::tile(o, p, rows, px.len(), dst)
}

/// All output channels of the folded 1x1 convolution `p` over `x` (`c` rows of `m` pixels), written
/// to `dst` with row stride `ld`, the residual (same stride) added: the projection inside the fused
/// expansion + depthwise + projection kernel.
///
/// # Safety
/// The CPU must support AVX-512F; `x` must hold `c · m` values, `p.w` `p.out` rows of `c`, `res` and
/// `dst` `p.out` rows of at least `m` at stride `ld`.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn rows_project(
    p: &Pointwise,
    x: &[f32],
    (c, m): (usize, usize),
    res: Option<&[f32]>,
    ld: usize,
    dst: *mut f32,
) {
    let o = avx512::Operands {
        w: p.w,
        w_ld: c,
        x,
        res,
        hw: m,
        ld,
        c,
        packed: None,
    };
    avx512::tile(o, p, 0..p.out, m, dst)
}

/// The AVX-512 micro-kernel of [`pointwise_f32`]: output blocks of up to 8 channels x 48 pixels
/// accumulated in 24 registers straight from the NCHW input (the 48 pixels of an input channel are
/// contiguous, the weights are broadcast), with the squeeze-excite gate folded into the task's weight
/// rows and the affine, activation and residual applied in registers before the store. Tails use
/// masked loads and stores. A caller whose many calls read the same pixels (the whole-block kernel's
/// channel groups) can [`pack`] them once into a contiguous panel for all of them.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::Pointwise;
    use crate::ops::affine_act::{act_ps, blocked_act, clamp_ps};
    use crate::ops::first_lanes;

    /// Output channels per register block: 8 x 3 accumulators (24 of the 32 vector registers) load
    /// three input vectors per 24 FMAs. The earlier 4 x 4 loaded four (all masked) per 16, and on a
    /// CPU with two 512-bit FMA units (Intel's server cores) reached about half the peak; LLVM spills
    /// 6 x 4.
    const MR: usize = 8;
    /// Vectors of 16 pixels per register block (the last block of a tile may have fewer: `block`'s
    /// `NV`).
    const VECTORS: usize = 3;
    /// Pixels per register block.
    const NP: usize = 16 * VECTORS;
    /// Input channels ahead whose vectors are prefetched (the input rows lie `hw` apart, a stride the
    /// hardware prefetchers do not follow).
    const PF: usize = 8;

    /// One task's inputs: `w` the task's weight rows (`c` each, the gate already folded in), `x` the
    /// sample's input from the task's first pixel (rows of stride `hw`), `res` the residual at the
    /// task's first output element (rows of stride `ld`, as the output's).
    #[derive(Clone)]
    pub(super) struct Operands<'a> {
        pub w: &'a [f32],
        /// Elements between consecutive weight rows (`c` unless the rows are parts of longer ones).
        pub w_ld: usize,
        pub x: &'a [f32],
        pub res: Option<&'a [f32]>,
        pub hw: usize,
        pub ld: usize,
        pub c: usize,
        /// The same input as packed by [`pack`] (from the task's first pixel), which the register
        /// blocks then read instead of `x` (the pixels that run as dot products still come from `x`).
        pub packed: Option<*const f32>,
    }

    /// Floats of a panel for [`pack`]: `c` rows of `n` pixels in chunks of [`NP`], and room to align it.
    pub(crate) fn packed_len(c: usize, n: usize) -> usize {
        n.div_ceil(NP) * c * NP + 16
    }

    /// Pixels `0..n` of the `c` rows of `x` (`hw` apart) copied into `panel` as chunks of [`NP`]
    /// pixels, each chunk `c` rows of `NP` (the last zero-padded), from the panel's first 64-byte
    /// boundary, which it returns: the input of [`Operands::packed`].
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `x` must hold `c` rows of at least `n` values, `hw` apart (the
    /// last may end the slice); `panel` must hold [`packed_len`]`(c, n)` values.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn pack(
        x: &[f32],
        (c, hw, n): (usize, usize, usize),
        panel: &mut [f32],
    ) -> *const f32 {
        let start = panel.as_ptr().align_offset(64).min(16);
        let base = panel.as_mut_ptr().add(start);
        for j in 0..n.div_ceil(NP) {
            let masks: [__mmask16; VECTORS] =
                std::array::from_fn(|v| first_lanes((n - j * NP).saturating_sub(16 * v)));
            for k in 0..c {
                let xr = x.as_ptr().add(k * hw + j * NP);
                for (v, &mask) in masks.iter().enumerate() {
                    let xv = _mm512_maskz_loadu_ps(mask, xr.wrapping_add(16 * v));
                    _mm512_store_ps(base.add((j * c + k) * NP + 16 * v), xv);
                }
            }
        }
        base
    }

    /// Output channels `rows` (of `p`), pixels `0..nn` of the task, written to `dst` (row stride
    /// `o.ld`).
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `w` must hold `rows.len()` rows of `c`, `x` `c` rows with at
    /// least `nn` values each (the last may end the slice), `res` (if any) and `dst` `rows.len()`
    /// rows of at least `nn`; `dst` must be valid for writes there.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile(
        o: Operands,
        p: &Pointwise,
        rows: std::ops::Range<usize>,
        nn: usize,
        dst: *mut f32,
    ) {
        let m = rows.len();
        let mut p0 = 0;
        while p0 < nn {
            // A last vector holding only a few pixels costs as many FMAs as a full one (49 = 3 x 16 + 1
            // on 7x7 maps): those pixels run as dot products over the input channels instead, which
            // pay c/16 FMAs and one reduction per output channel and pixel, with the register
            // blocks of the chunk before them where there is one (whose weight rows were just read).
            let dot = |few: usize| few * (o.c / 16 + 10) < o.c;
            let rest = nn - p0;
            let (np, tail) = match rest > NP && rest - NP < 16 && dot(rest - NP) {
                true => (NP, rest - NP),
                false => {
                    let few = rest.min(NP) % 16;
                    let tail = if dot(few) { few } else { 0 };
                    (rest.min(NP) - tail, tail)
                }
            };
            let chunk = np + tail;
            // The input columns of the pixels that run as dot products, `c` values each (sized
            // up front: collected from a `flat_map`, the vector grew by reallocation).
            let mut cols = Vec::with_capacity(tail * o.c);
            for q in p0 + np..p0 + chunk {
                cols.extend((0..o.c).map(|k| *o.x.get_unchecked(k * o.hw + q)));
            }
            let dots = |ranks: std::ops::Range<usize>| {
                dot_tail(&o, p, (ranks, rows.start), (&cols, p0 + np), dst);
            };
            if np == 0 {
                dots(0..m);
            }
            let masks: [__mmask16; VECTORS] =
                std::array::from_fn(|v| first_lanes(np.saturating_sub(16 * v)));
            // The register blocks read the chunk from the panel where there is one (its rows NP
            // apart), else from `x`.
            let (px, blocks) = match o.packed {
                Some(panel) => (
                    panel.add(p0 / NP * o.c * NP),
                    Operands {
                        hw: NP,
                        ..o.clone()
                    },
                ),
                None => (o.x.as_ptr().add(p0), o.clone()),
            };
            // No vector block is left when every pixel of the chunk went to the dot products.
            let mut i = if np == 0 { m } else { 0 };
            while i < m {
                let r = (m - i).min(MR);
                let b = Block {
                    w: o.w.as_ptr().add(i * o.w_ld),
                    x: px,
                    res: o.res.map(|r| r.as_ptr().add(i * o.ld + p0)),
                    dst: dst.add(i * o.ld + p0),
                    ch: rows.start + i,
                    masks,
                };
                // Only the vectors that hold pixels are computed (e.g. 196 = 4 x 48 + 4 pixels).
                let nv = np.div_ceil(16);
                match r {
                    MR => by_vectors::<MR>(nv, &blocks, p, &b),
                    _ => fewer_rows(r, nv, &blocks, p, &b),
                }
                i += r;
                // Every 16 rows, their dot products, whose weight rows were just read.
                if tail > 0 && (i % 16 == 0 || i == m) {
                    dots((i - 1) / 16 * 16..i);
                }
            }
            p0 += chunk;
        }
    }

    /// `dst[i] = src[2i]` (stride-2 patches of the stems): 32 inputs, two loads and one permute per
    /// 16 outputs, the last ones masked.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `src` must hold at least `2 · dst.len() - 1` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn even_columns(src: &[f32], dst: &mut [std::mem::MaybeUninit<f32>]) {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let n = src.len();
        for (j, d) in dst.chunks_mut(16).enumerate() {
            let at = 32 * j;
            let (lo, hi) = if at + 32 <= n && d.len() == 16 {
                let p = src.as_ptr().add(at);
                (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)))
            } else {
                let mask = |from: usize| first_lanes(n.saturating_sub(from));
                let lo = _mm512_maskz_loadu_ps(mask(at), src.as_ptr().add(at));
                (
                    lo,
                    _mm512_maskz_loadu_ps(mask(at + 16), src.as_ptr().wrapping_add(at + 16)),
                )
            };
            let v = _mm512_permutex2var_ps(lo, even, hi);
            match d.len() {
                16 => _mm512_storeu_ps(d.as_mut_ptr().cast(), v),
                l => _mm512_mask_storeu_ps(d.as_mut_ptr().cast(), first_lanes(l), v),
            }
        }
    }

    /// The task's rows `ranks` (output channels `ch0 + ranks`) at the pixels whose input columns
    /// `cols` holds (`c` values each, for pixels `q0, q0 + 1, ...`), as dot products of the weight
    /// rows with each column, then the same epilogue as [`block`], 16 channels at a time ([`dot16`]);
    /// rows past the last 16 one at a time. [`tile`]
    /// calls it after every 16 rows of register blocks, whose weight rows were just read. (One row at
    /// a time over the whole task first, 7x7 maps spent 15% of a 320 x 320 tile's time on their 49th
    /// pixel.)
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn dot_tail(
        o: &Operands,
        p: &Pointwise,
        (ranks, ch0): (std::ops::Range<usize>, usize),
        (cols, q0): (&[f32], usize),
        dst: *mut f32,
    ) {
        let c = o.c;
        let (full, rest) = (c / 16, c % 16);
        let rest_mask = first_lanes(rest);
        for (j, col) in cols.chunks_exact(c.max(1)).enumerate() {
            let q = q0 + j;
            let mut r = ranks.start;
            while r < ranks.end {
                let lanes = (ranks.end - r).min(16);
                let sums = if lanes == 16 {
                    let w = o.w.as_ptr().add(r * o.w_ld);
                    dot16(col, std::array::from_fn(|l| w.add(l * o.w_ld)))
                } else {
                    let mut sums = [0f32; 16];
                    for (l, sum) in sums.iter_mut().enumerate().take(lanes) {
                        let w = o.w.as_ptr().add((r + l) * o.w_ld);
                        let mut acc = _mm512_setzero_ps();
                        for kb in 0..full {
                            let (wv, xv) = (w.add(16 * kb), col.as_ptr().add(16 * kb));
                            acc = _mm512_fmadd_ps(_mm512_loadu_ps(wv), _mm512_loadu_ps(xv), acc);
                        }
                        if rest > 0 {
                            let (wv, xv) = (w.add(16 * full), col.as_ptr().add(16 * full));
                            let wr = _mm512_maskz_loadu_ps(rest_mask, wv);
                            acc = _mm512_fmadd_ps(wr, _mm512_maskz_loadu_ps(rest_mask, xv), acc);
                        }
                        *sum = _mm512_reduce_add_ps(acc);
                    }
                    _mm512_loadu_ps(sums.as_ptr())
                };
                let mask = first_lanes(lanes);
                let ch = ch0 + r;
                let s = _mm512_maskz_loadu_ps(mask, p.scale.as_ptr().add(ch));
                let t = _mm512_maskz_loadu_ps(mask, p.shift.as_ptr().add(ch));
                let mut y = [0f32; 16];
                _mm512_storeu_ps(y.as_mut_ptr(), act_ps(_mm512_fmadd_ps(sums, s, t), p.act));
                for (l, y) in y.iter().enumerate().take(lanes) {
                    let at = (r + l) * o.ld + q;
                    let res = o.res.map_or(0.0, |res| *res.get_unchecked(at));
                    *dst.add(at) = y + res;
                }
                r += lanes;
            }
        }
    }

    /// The dot products of `x` with the 16 rows that start at `rows` (each as long as `x`), as one
    /// vector (lane `l`: row `l`'s): the rows accumulate side by side in 16 registers (one load of `x`
    /// for 16 FMAs, 16 independent chains; the last partial vector masked) and [`sum_lanes`] adds
    /// them up together.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; each of `rows` must point to `x.len()` readable floats.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) unsafe fn dot16(x: &[f32], rows: [*const f32; 16]) -> __m512 {
        let (full, rest) = (x.len() / 16, x.len() % 16);
        let mut acc = [_mm512_setzero_ps(); 16];
        for kb in 0..full {
            let xv = _mm512_loadu_ps(x.as_ptr().add(16 * kb));
            for (a, w) in acc.iter_mut().zip(rows) {
                *a = _mm512_fmadd_ps(_mm512_loadu_ps(w.add(16 * kb)), xv, *a);
            }
        }
        if rest > 0 {
            let mask = first_lanes(rest);
            let xv = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(16 * full));
            for (a, w) in acc.iter_mut().zip(rows) {
                let wv = _mm512_maskz_loadu_ps(mask, w.add(16 * full));
                *a = _mm512_fmadd_ps(wv, xv, *a);
            }
        }
        sum_lanes(&acc)
    }

    /// The 16 sums of the lanes of `v[0]` ... `v[15]`, as one vector (lane `l`: the sum of `v[l]`),
    /// in four rounds that each add pairs of half vectors: the 128-bit quarters of `v[i]` and
    /// `v[i + 8]`, then of those and the ones four apart, then the pairs and single floats within the
    /// quarters; lane `4k + f` of the last round holds the sum of `v[[0, 2, 1, 3][f] + [0, 8, 4,
    /// 12][k]]`, which one permutation puts in order (it is its own inverse).
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn sum_lanes(v: &[__m512; 16]) -> __m512 {
        let halves: [__m512; 8] = std::array::from_fn(|i| {
            let (a, b) = (v[i], v[i + 8]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x44>(a, b),
                _mm512_shuffle_f32x4::<0xEE>(a, b),
            )
        });
        let quarters: [__m512; 4] = std::array::from_fn(|i| {
            let (a, b) = (halves[i], halves[i + 4]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x88>(a, b),
                _mm512_shuffle_f32x4::<0xDD>(a, b),
            )
        });
        let pairs: [__m512; 2] = std::array::from_fn(|j| {
            let (a, b) = (quarters[j], quarters[j + 2]);
            _mm512_add_ps(
                _mm512_shuffle_ps::<0x44>(a, b),
                _mm512_shuffle_ps::<0xEE>(a, b),
            )
        });
        let (a, b) = (pairs[0], pairs[1]);
        let sums = _mm512_add_ps(
            _mm512_shuffle_ps::<0x88>(a, b),
            _mm512_shuffle_ps::<0xDD>(a, b),
        );
        let order = _mm512_setr_epi32(0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15);
        _mm512_permutexvar_ps(order, sums)
    }

    /// Pointers and lane masks of one register block.
    struct Block {
        w: *const f32,
        x: *const f32,
        res: Option<*const f32>,
        dst: *mut f32,
        /// Output channel of the block's first row.
        ch: usize,
        masks: [__mmask16; VECTORS],
    }

    /// [`by_vectors`] for the last block of a tile of fewer than [`MR`] rows (`r`), out of line, so that
    /// the code around the blocks of [`MR`] rows (nearly all of them) stays small: with all eight row
    /// counts in one match in [`tile`], LLVM laid the unrolled epilogues out so that the 1x1 layers of
    /// 28×28 and 14×14 maps ran 10–12% slower (one thread, a throwaway timing test).
    #[target_feature(enable = "avx512f")]
    #[inline(never)]
    unsafe fn fewer_rows(r: usize, nv: usize, o: &Operands, p: &Pointwise, b: &Block) {
        const _: () = assert!(MR == 8, "one arm per row count");
        match r {
            7 => by_vectors::<7>(nv, o, p, b),
            6 => by_vectors::<6>(nv, o, p, b),
            5 => by_vectors::<5>(nv, o, p, b),
            4 => by_vectors::<4>(nv, o, p, b),
            3 => by_vectors::<3>(nv, o, p, b),
            2 => by_vectors::<2>(nv, o, p, b),
            _ => by_vectors::<1>(nv, o, p, b),
        }
    }

    /// [`by_mask`] for `nv` vectors of pixels (up to [`VECTORS`], which its arms cover).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn by_vectors<const R: usize>(nv: usize, o: &Operands, p: &Pointwise, b: &Block) {
        const _: () = assert!(VECTORS == 3, "one arm per vector count");
        match nv {
            3 => by_mask::<R, 3>(o, p, b),
            2 => by_mask::<R, 2>(o, p, b),
            _ => by_mask::<R, 1>(o, p, b),
        }
    }

    /// [`block`] with the last vector's input loads masked where it holds fewer than 16 pixels.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn by_mask<const R: usize, const NV: usize>(o: &Operands, p: &Pointwise, b: &Block) {
        match b.masks[NV - 1] == u16::MAX {
            true => block::<R, NV, false>(o, p, b),
            false => block::<R, NV, true>(o, p, b),
        }
    }

    /// `R` output channels x `NV` vectors of 16 pixels; `MASKED`: the last vector holds fewer than 16
    /// pixels, and only its loads are masked (a masked load costs an extra vector-port operation on
    /// some CPUs, where masking every load of the inner loop halved its throughput).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn block<const R: usize, const NV: usize, const MASKED: bool>(
        o: &Operands,
        p: &Pointwise,
        b: &Block,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        for k in 0..o.c {
            let xr = b.x.add(k * o.hw);
            for v in 0..NV {
                _mm_prefetch::<_MM_HINT_T0>(xr.wrapping_add(PF * o.hw + 16 * v).cast());
            }
            let xv: [__m512; NV] = std::array::from_fn(|v| match MASKED && v == NV - 1 {
                true => _mm512_maskz_loadu_ps(b.masks[v], xr.add(16 * v)),
                false => _mm512_loadu_ps(xr.add(16 * v)),
            });
            for (r, acc) in acc.iter_mut().enumerate() {
                let wb = _mm512_set1_ps(*b.w.add(r * o.w_ld + k));
                for (a, x) in acc.iter_mut().zip(&xv) {
                    *a = _mm512_fmadd_ps(wb, *x, *a);
                }
            }
        }
        // Swish in a second pass, so that LLVM unrolls this one and keeps the accumulators in
        // registers (see `blocked_act`).
        let (clamp, swish) = blocked_act(p.act);
        let res = if swish { None } else { b.res };
        for (r, acc) in acc.iter().enumerate() {
            let ch = b.ch + r;
            let (s, t) = (
                _mm512_set1_ps(*p.scale.get_unchecked(ch)),
                _mm512_set1_ps(*p.shift.get_unchecked(ch)),
            );
            for (v, a) in acc.iter().enumerate() {
                let mut y = clamp_ps(_mm512_fmadd_ps(*a, s, t), clamp);
                let at = r * o.ld + 16 * v;
                if let Some(res) = res {
                    y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(b.masks[v], res.add(at)));
                }
                _mm512_mask_storeu_ps(b.dst.add(at), b.masks[v], y);
            }
        }
        if swish {
            for r in 0..R {
                for v in 0..NV {
                    let at = r * o.ld + 16 * v;
                    let z = _mm512_maskz_loadu_ps(b.masks[v], b.dst.add(at));
                    let mut y = act_ps(z, p.act);
                    if let Some(res) = b.res {
                        y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(b.masks[v], res.add(at)));
                    }
                    _mm512_mask_storeu_ps(b.dst.add(at), b.masks[v], y);
                }
            }
        }
    }
}

/// The window of a dense convolution: `k x k` taps, stride `s`, zero padding `pad`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub k: usize,
    pub s: usize,
    pub pad: Pad2d,
}

/// Output size `(OH, OW)` of a convolution window over `x` `[B, C, H, W]`, after checking that they
/// fit together.
fn patch_geometry(
    x: &[f32],
    [b, c, h, w]: [usize; 4],
    Window { k, s, pad }: Window,
) -> candle_core::Result<(usize, usize)> {
    let (ph, pw) = (h + pad.top + pad.bottom, w + pad.left + pad.right);
    if k == 0 || s == 0 || ph < k || pw < k || x.len() != b * c * h * w {
        bail!(
            "im2col: kernel {k} stride {s} does not fit input [{b}, {c}, {h}, {w}] ({} values) \
             padded by {pad:?}",
            x.len()
        )
    }
    Ok(((ph - k) / s + 1, (pw - k) / s + 1))
}

/// Where patch row `r` of a convolution window reads (input channel `r / k²`, tap `(ky, kx) = (r / k %
/// k, r % k)`) and which of its `ow` output columns land inside an input row of `w` (`lo..hi`; the
/// others fall on the padding): computed once per convolution rather than per row and band (their five
/// integer divisions took about 5% of the stem's patch building).
#[derive(Clone, Copy)]
struct PatchRow {
    ci: usize,
    ky: usize,
    kx: usize,
    lo: usize,
    hi: usize,
}

impl PatchRow {
    fn new(Window { k, s, pad }: Window, r: usize, w: usize, ow: usize) -> Self {
        let (ci, ky, kx) = (r / (k * k), r / k % k, r % k);
        // Output columns whose tap lands inside the row: left <= ox·s + kx < left + w.
        let lo = pad.left.saturating_sub(kx).div_ceil(s).min(ow);
        let hi = (pad.left + w).saturating_sub(kx).div_ceil(s).clamp(lo, ow);
        Self { ci, ky, kx, lo, hi }
    }
}

/// Patch row `row` of a convolution window `win` of one sample `sample` (`[C, h, w]`) at output rows
/// `oys` of width `ow`, written to `dst` (`oys.len() · ow` values; zeros where the tap falls on the
/// padding). `even_simd`: stride 2 on a CPU with AVX-512F, whose even-column copy then runs.
fn patch_rows(
    sample: &[f32],
    (h, w): (usize, usize),
    (win, row): (Window, &PatchRow),
    (oys, ow): (std::ops::Range<usize>, usize),
    dst: &mut [MaybeUninit<f32>],
    even_simd: bool,
) {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = even_simd;
    let (Window { s, pad, .. }, &PatchRow { ci, ky, kx, lo, hi }) = (win, row);
    let src = &sample[ci * h * w..][..h * w];
    let zero = MaybeUninit::new(0.0);
    for (oy, drow) in oys.zip(dst.chunks_exact_mut(ow)) {
        let Some(iy) = (oy * s + ky).checked_sub(pad.top).filter(|&iy| iy < h) else {
            drow.fill(zero);
            continue;
        };
        drow[..lo].fill(zero);
        drow[hi..].fill(zero);
        if lo == hi {
            continue;
        }
        // Input column of output column `lo`.
        let first = lo * s + kx - pad.left;
        let (srow, drow) = (&src[iy * w + first..(iy + 1) * w], &mut drow[lo..hi]);
        #[cfg(target_arch = "x86_64")]
        if even_simd {
            // SAFETY: the caller saw AVX-512F; `srow` holds the 2·(hi - lo) - 1 inputs read.
            unsafe { avx512::even_columns(srow, drow) };
            continue;
        }
        for (d, v) in drow.iter_mut().zip(srow.iter().step_by(s)) {
            d.write(*v);
        }
    }
}

/// The patches of the convolution window `win` over `x` `[B, C, H, W]` (contiguous), as
/// `[B, C·k·k, OH·OW]` rows in the order of a flattened `[O, C, k, k]` weight: a dense convolution
/// then runs as [`pointwise_f32`] on the result. Returns the patches and `(OH, OW)`. `simd` allows
/// the AVX-512 copy where the CPU has it (the tests run both paths).
fn im2col_f32(
    x: &[f32],
    dims @ [b, c, h, w]: [usize; 4],
    win: Window,
    simd: bool,
) -> candle_core::Result<(Vec<f32>, usize, usize)> {
    let (oh, ow) = patch_geometry(x, dims, win)?;
    let (rows, plane) = (c * win.k * win.k, oh * ow);
    let mut cols: Vec<f32> = Vec::with_capacity(b * rows * plane);
    if plane == 0 {
        return Ok((cols, oh, ow));
    }
    let even_simd = even_simd(win.s, simd);
    let out = SharedOut::new(&mut cols);
    parallel_for(b * rows, |i| {
        // SAFETY: row i of the patches lies inside the allocation of `cols` (b·rows rows of `plane`)
        // and only this task touches it; `patch_rows` writes every element before `set_len`.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(out.at(i * plane).cast::<MaybeUninit<f32>>(), plane)
        };
        let (bi, r) = (i / rows, i % rows);
        let sample = &x[bi * c * h * w..][..c * h * w];
        let row = PatchRow::new(win, r, w, ow);
        patch_rows(sample, (h, w), (win, &row), (0..oh, ow), dst, even_simd);
    });
    // SAFETY: the tasks wrote every element of the b·rows rows.
    unsafe { cols.set_len(b * rows * plane) };
    Ok((cols, oh, ow))
}

/// Whether [`patch_rows`] may take its AVX-512 even-column copy.
fn even_simd(s: usize, simd: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    return simd && s == 2 && std::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// Patch floats per task of [`conv_affine_act_f32`] (32 KB, in L1 beside the weight).
const BAND_FLOATS: usize = 8 * 1024;

/// `act(conv(x, w) · scale + shift)` for a dense convolution with window `win` (the stems: few input
/// channels) over `x` `[B, C, H, W]` (contiguous), `p` holding the flattened
/// `[O, C·k·k]` weight shared by all samples. Returns the output and `(OH, OW)`.
///
/// On AVX-512 each task takes a run of bands of output rows (one run per thread), builds the patches
/// of each band in a per-thread scratch of about [`BAND_FLOATS`] and multiplies them at once with
/// the 1x1 micro-kernel, so the patches (27 times the output's pixels for the 3x3 stems) never leave
/// L1; elsewhere [`im2col_f32`] then [`pointwise_f32`].
pub(crate) fn conv_affine_act_f32(
    p: &Pointwise,
    x: &[f32],
    dims: [usize; 4],
    win: Window,
) -> candle_core::Result<(Vec<f32>, usize, usize)> {
    conv_affine_act_f32_with(p, x, dims, win, true)
}

fn conv_affine_act_f32_with(
    p: &Pointwise,
    x: &[f32],
    dims @ [b, c, h, w]: [usize; 4],
    win: Window,
    simd: bool,
) -> candle_core::Result<(Vec<f32>, usize, usize)> {
    let (oh, ow) = patch_geometry(x, dims, win)?;
    let (o, rows, plane) = (p.out, c * win.k * win.k, oh * ow);
    if p.w_stride != 0 || p.w.len() != o * rows || p.scale.len() != o || p.shift.len() != o {
        bail!(
            "convolution: weight of {} values (per-sample stride {}), {} scale and {} shift values \
             cannot take input {dims:?} ({o} outputs of {rows} patch rows)",
            p.w.len(),
            p.w_stride,
            p.scale.len(),
            p.shift.len()
        )
    }
    #[cfg(target_arch = "x86_64")]
    if simd && std::is_x86_feature_detected!("avx512f") {
        let mut y: Vec<f32> = Vec::with_capacity(b * o * plane);
        if plane == 0 {
            return Ok((y, oh, ow));
        }
        let band = (BAND_FLOATS / (rows * ow)).clamp(1, oh);
        let bands = oh.div_ceil(band);
        let even_simd = even_simd(win.s, simd);
        let patch_rows_of: Vec<PatchRow> =
            (0..rows).map(|r| PatchRow::new(win, r, w, ow)).collect();
        let out = SharedOut::new(&mut y);
        // Each task takes a run of consecutive bands, one run per thread and sample. Bands handed
        // out one at a time alternate between the cores, which then write the same cache lines
        // where their bands meet in every output plane, and a next block that splits the rows in
        // halves (the whole-block kernel) reads half of each half from the other core's cache.
        // Measured at batch 1: the stem of B0 and MobileNetV2 0.13-0.17 ms against 0.20-0.22 ms
        // band by band, MobileNetV2's first block 0.12 against 0.15 ms.
        let runs = parallel_threads();
        let per_run = bands.div_ceil(runs);
        parallel_for(b * runs, |task| {
            let (bi, run) = (task / runs, task % runs);
            let sample = &x[bi * c * h * w..][..c * h * w];
            for band_index in run * per_run..((run + 1) * per_run).min(bands) {
                let oys = band_index * band..((band_index + 1) * band).min(oh);
                let px = oys.len() * ow;
                with_scratch(|patches| {
                    patches.clear();
                    patches.reserve(rows * px);
                    let spare = &mut patches.spare_capacity_mut()[..rows * px];
                    for (row, dst) in patch_rows_of.iter().zip(spare.chunks_exact_mut(px)) {
                        let span = (oys.clone(), ow);
                        patch_rows(sample, (h, w), (win, row), span, dst, even_simd);
                    }
                    // SAFETY: `patch_rows` wrote all rows · px values.
                    unsafe { patches.set_len(rows * px) };
                    let operands = avx512::Operands {
                        w: p.w,
                        w_ld: rows,
                        x: patches,
                        res: None,
                        hw: px,
                        ld: plane,
                        c: rows,
                        packed: None,
                    };
                    // SAFETY: AVX-512F detected above; `w` holds o rows of `rows`, the patches `rows`
                    // rows of px; output rows oys of every channel of sample bi (channel stride
                    // `plane`) lie inside `y` and belong to this task alone.
                    unsafe {
                        avx512::tile(
                            operands,
                            p,
                            0..o,
                            px,
                            out.at(bi * o * plane + oys.start * ow),
                        )
                    };
                });
            }
        });
        // SAFETY: the bands cover every row of every channel of every sample.
        unsafe { y.set_len(b * o * plane) };
        return Ok((y, oh, ow));
    }
    let (cols, oh, ow) = im2col_f32(x, dims, win, simd)?;
    let (y, _) = pointwise_f32_with(p, &cols, [b, rows, oh, ow], (None, None), false, simd);
    Ok((y, oh, ow))
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::config::Activation;

    #[test]
    fn matches_matmul_then_affine_act_for_every_tiling() {
        let dev = Device::Cpu;
        // Large and small maps, channel counts that split into row tiles, per-sample weights.
        for (b, c, o, h, w, n) in [
            (1, 16, 96, 37, 41, 1),
            (2, 40, 240, 7, 9, 2),
            (3, 1152, 192, 3, 3, 3),
            (1, 8, 20, 1, 1, 1),
            (2, 24, 144, 28, 28, 1),
            // 196 = 4 x 48 + 4 and 49 = 3 x 16 + 1 pixels: the last ones run as dot products.
            (1, 256, 64, 14, 14, 1),
            // Register blocks of every height (23 = 8 + 8 + 7, 6, 11 = 8 + 3, 10, 9) and chunks
            // that end in a masked vector or in dot products.
            (1, 48, 23, 9, 11, 1),
            (2, 33, 6, 5, 13, 1),
            (1, 17, 11, 4, 12, 1),
            (1, 20, 10, 6, 8, 1),
            (1, 20, 9, 16, 3, 1),
            (2, 192, 37, 7, 7, 2),
            (1, 200, 24, 7, 7, 1),
        ] {
            let x = Tensor::randn(0f32, 1f32, (b, c, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.2f32, (n, o, c), &dev).unwrap();
            let s = Tensor::randn(1f32, 0.3f32, (1, o), &dev).unwrap();
            let t = Tensor::randn(0f32, 0.5f32, (1, o), &dev).unwrap();
            for act in [
                Act::Identity,
                Act::Net(Activation::Swish),
                Act::Net(Activation::Relu6),
                Act::Net(Activation::Relu),
            ] {
                let fast = pointwise_conv_affine_act(&x, &wt, &s, &t, act).unwrap();
                let y = wt
                    .broadcast_as((b, o, c))
                    .unwrap()
                    .matmul(&x.reshape((b, c, h * w)).unwrap())
                    .unwrap()
                    .reshape((b, o, h, w))
                    .unwrap();
                let slow = super::super::affine_act::reference(&y, &s, &t, act).unwrap();
                let d = crate::ops::tests::max_abs_diff(&fast, &slow);
                assert!(d < 1e-4, "{:?} {act:?}: max diff {d}", (b, c, o, h, w, n));
            }
        }
    }

    /// The pooled variant writes the same output and the mean of each of its planes, for maps that
    /// stay whole and maps split into column tiles (whose sums meet after the tasks), on the AVX-512
    /// micro-kernel and on the portable path.
    #[test]
    fn pooled_output_means_are_the_plane_means() {
        for (b, c, o, h, w) in [(1, 320, 1280, 7, 7), (2, 40, 96, 37, 41), (3, 24, 20, 1, 1)] {
            let x: Vec<f32> = (0..b * c * h * w)
                .map(|i| (i % 17) as f32 * 0.1 - 0.8)
                .collect();
            let wt: Vec<f32> = (0..o * c).map(|i| (i % 13) as f32 * 0.02 - 0.1).collect();
            let scale: Vec<f32> = (0..o).map(|i| 1.0 + (i % 5) as f32 * 0.1).collect();
            let shift: Vec<f32> = (0..o).map(|i| (i % 7) as f32 * 0.05 - 0.1).collect();
            let p = Pointwise {
                w: &wt,
                w_stride: 0,
                out: o,
                scale: &scale,
                shift: &shift,
                act: Act::Net(Activation::Swish),
            };
            for simd in [true, false] {
                let dims = [b, c, h, w];
                let (y, means) = pointwise_f32_with(&p, &x, dims, (None, None), true, simd);
                let (plain, none) = pointwise_f32_with(&p, &x, dims, (None, None), false, simd);
                assert_eq!(y, plain, "{dims:?} simd {simd}");
                assert!(none.is_empty());
                assert_eq!(means.len(), b * o);
                for (plane, mean) in y.chunks_exact(h * w).zip(&means) {
                    let want = plane.iter().map(|&v| f64::from(v)).sum::<f64>() / (h * w) as f64;
                    let err = (f64::from(*mean) - want).abs();
                    assert!(
                        err <= 1e-5 * want.abs().max(1.0),
                        "{dims:?} simd {simd}: {mean} vs {want}"
                    );
                }
            }
        }
    }

    /// The gate (folded into the weight rows or into the input columns, whichever is smaller; or into
    /// the broadcast weights of the AVX-512 kernel) and the residual give `act(W · (g ⊙ x) · s + t) + r`,
    /// with and without a gate, on the portable and (where the CPU has it) the AVX-512 path, where
    /// with two threads or more the 14x14 map without activation runs with the input channels split
    /// between the threads.
    #[test]
    fn gate_and_residual_match_composition() {
        let dev = Device::Cpu;
        // (b, c, o, h, w): weight rows <= tile columns, and more rows than columns (7x7 maps).
        for (b, c, o, h, w) in [
            (2, 24, 40, 28, 28),
            (2, 7, 13, 5, 3),
            (1, 16, 96, 112, 113),
            (3, 1152, 320, 7, 7),
            (1, 96, 24, 56, 57),
            // One sample of a 14x14 map without activation: the input channels split between the
            // threads.
            (1, 672, 112, 14, 14),
        ] {
            let x = Tensor::randn(0f32, 1f32, (b, c, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.2f32, (o, c), &dev).unwrap();
            let g = Tensor::rand(0f32, 1f32, (b, c), &dev).unwrap();
            let s = Tensor::randn(1f32, 0.3f32, (1, o), &dev).unwrap();
            let t = Tensor::randn(0f32, 0.5f32, (1, o), &dev).unwrap();
            let r = Tensor::randn(0f32, 1f32, (b, o, h, w), &dev).unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (sv, tv) = (flat(&s), flat(&t));
            let wv = flat(&wt);
            let acts = [
                Act::Identity,
                Act::Net(Activation::Swish),
                Act::Net(Activation::Relu6),
                Act::Net(Activation::Relu),
            ];
            let cases = acts
                .into_iter()
                .flat_map(|a| [(a, false), (a, true)])
                .flat_map(|(a, simd)| [(a, simd, false), (a, simd, true)]);
            for (act, simd, gated) in cases {
                let p = Pointwise {
                    w: &wv,
                    w_stride: 0,
                    out: o,
                    scale: &sv,
                    shift: &tv,
                    act,
                };
                let (gv, rv) = (flat(&g), flat(&r));
                let gate = Some(&gv[..]).filter(|_| gated);
                let dims = [b, c, h, w];
                let (fast, _) =
                    pointwise_f32_with(&p, &flat(&x), dims, (gate, Some(&rv)), false, simd);
                let gx = match gate {
                    Some(_) => x.broadcast_mul(&g.reshape((b, c, 1, 1)).unwrap()).unwrap(),
                    None => x.clone(),
                };
                let y = wt
                    .broadcast_left(b)
                    .unwrap()
                    .matmul(&gx.reshape((b, c, h * w)).unwrap())
                    .unwrap()
                    .reshape((b, o, h, w))
                    .unwrap();
                let slow =
                    (super::super::affine_act::reference(&y, &s, &t, act).unwrap() + &r).unwrap();
                let d = flat(&slow)
                    .iter()
                    .zip(&fast)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    d < 1e-4,
                    "{:?} {act:?} simd {simd} gated {gated}: max diff {d}",
                    (b, c, o, h, w)
                );
            }
        }
    }

    /// Patches times the flattened weight, and the banded convolution with its affine and
    /// activation, equal candle's convolution of the zero-padded input: odd and even kernels, strides
    /// 1-3, asymmetric padding, bands of one to several rows with a short last band, two samples; the
    /// portable and (where the CPU has it) the AVX-512 path.
    #[test]
    fn patches_and_banded_convolution_are_the_convolution() {
        let dev = Device::Cpu;
        for (b, c, h, w, o, k, s, pad) in [
            (2, 3, 17, 12, 8, 3, 2, (0, 1, 0, 1)),
            (1, 3, 9, 9, 4, 3, 2, (1, 1, 1, 1)),
            (1, 2, 10, 7, 5, 5, 3, (2, 0, 1, 2)),
            (1, 4, 6, 6, 3, 2, 1, (0, 0, 0, 0)),
            // Rows of more than 16 outputs at stride 2 (the vectorised copy), left padding 0 and 1.
            (1, 3, 21, 70, 4, 3, 2, (0, 1, 0, 1)),
            (2, 3, 13, 65, 4, 3, 2, (1, 1, 1, 1)),
            (1, 2, 9, 47, 3, 5, 2, (2, 2, 2, 1)),
            // A stem: bands of 2 rows (27 x 224 patch floats) over 56 rows, 32 channels.
            (2, 3, 112, 224, 32, 3, 2, (0, 1, 0, 1)),
            // Bands of 3 rows with a short last one (41 rows), and bands of one row (27 x 350).
            (1, 3, 81, 200, 16, 3, 2, (1, 1, 1, 1)),
            (1, 3, 9, 700, 8, 3, 2, (1, 1, 1, 1)),
        ] {
            let (top, bottom, left, right) = pad;
            let pad = Pad2d {
                top,
                bottom,
                left,
                right,
            };
            let win = Window { k, s, pad };
            let x = Tensor::randn(0f32, 1f32, (b, c, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 1f32, (o, c, k, k), &dev).unwrap();
            let sc = Tensor::randn(1f32, 0.3f32, (1, o), &dev).unwrap();
            let sh = Tensor::randn(0f32, 0.5f32, (1, o), &dev).unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let padded = x
                .pad_with_zeros(2, top, bottom)
                .unwrap()
                .pad_with_zeros(3, left, right)
                .unwrap();
            let want = padded.conv2d(&wt, 0, s, 1, 1).unwrap();
            let (wv, sv, tv) = (flat(&wt), flat(&sc), flat(&sh));
            let max_diff = |a: &Tensor, b: &[f32]| {
                flat(a)
                    .iter()
                    .zip(b)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
            };
            for simd in [false, true] {
                let case = (b, c, h, w, k, s, pad, simd);
                let (cols, oh, ow) = im2col_f32(&flat(&x), [b, c, h, w], win, simd).unwrap();
                let cols = Tensor::from_vec(cols, (b, c * k * k, oh * ow), &dev).unwrap();
                let got = wt
                    .reshape((1, o, c * k * k))
                    .unwrap()
                    .broadcast_as((b, o, c * k * k))
                    .unwrap()
                    .matmul(&cols)
                    .unwrap()
                    .reshape((b, o, oh, ow))
                    .unwrap();
                assert_eq!(want.dims(), got.dims());
                let d = max_diff(&want, &flat(&got));
                assert!(d < 1e-4, "patches {case:?}: max diff {d}");
                for act in [Act::Identity, Act::Net(Activation::Swish)] {
                    let p = Pointwise {
                        w: &wv,
                        w_stride: 0,
                        out: o,
                        scale: &sv,
                        shift: &tv,
                        act,
                    };
                    let dims = [b, c, h, w];
                    let (y, gh, gw) =
                        conv_affine_act_f32_with(&p, &flat(&x), dims, win, simd).unwrap();
                    assert_eq!((gh, gw), (oh, ow));
                    let slow = super::super::affine_act::reference(&want, &sc, &sh, act).unwrap();
                    let d = max_diff(&slow, &y);
                    assert!(d < 1e-4, "banded {case:?} {act:?}: max diff {d}");
                }
            }
        }
        let x = [0f32; 2 * 5 * 5];
        let win = |k| Window {
            k,
            s: 1,
            pad: Pad2d::default(),
        };
        assert!(im2col_f32(&x, [1, 2, 5, 5], win(7), true).is_err());
        assert!(im2col_f32(&x, [1, 2, 5, 4], win(3), true).is_err());
        let w = [0f32; 4 * 2 * 9];
        let p = Pointwise {
            w: &w[..4 * 2 * 9 - 1],
            w_stride: 0,
            out: 4,
            scale: &[1.0; 4],
            shift: &[0.0; 4],
            act: Act::Identity,
        };
        let err = conv_affine_act_f32(&p, &x, [1, 2, 5, 5], win(3)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("71 values") && msg.contains("[1, 2, 5, 5]"),
            "{msg}"
        );
    }

    /// The 16 lane sums of 16 vectors come back in order, each the sum of its own vector.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sixteen_lane_sums_are_in_order() {
        if !std::is_x86_feature_detected!("avx512f") {
            eprintln!("no AVX-512F on this CPU: the 16-row dot products are not used here");
            return;
        }
        use std::arch::x86_64::*;
        let rows: Vec<[f32; 16]> = (0..16)
            .map(|l| {
                std::array::from_fn(|i| ((l * 37 + i * 11) % 23) as f32 - 11.0 + l as f32 * 0.5)
            })
            .collect();
        // SAFETY: AVX-512F detected above; every row holds 16 floats.
        let got = unsafe {
            let v: [__m512; 16] = std::array::from_fn(|l| _mm512_loadu_ps(rows[l].as_ptr()));
            let mut out = [0f32; 16];
            _mm512_storeu_ps(out.as_mut_ptr(), avx512::sum_lanes(&v));
            out
        };
        for (l, (got, row)) in got.iter().zip(&rows).enumerate() {
            let want: f32 = row.iter().sum();
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                "lane {l}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn rejects_mismatched_shapes() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 8, 4, 4), DType::F32, &dev).unwrap();
        let s = Tensor::ones((1, 6), DType::F32, &dev).unwrap();
        let bad_w = Tensor::zeros((3, 6, 8), DType::F32, &dev).unwrap();
        assert!(pointwise_conv_affine_act(&x, &bad_w, &s, &s, Act::Identity).is_err());
        let w = Tensor::zeros((1, 6, 8), DType::F32, &dev).unwrap();
        let bad_s = Tensor::ones((1, 5), DType::F32, &dev).unwrap();
        assert!(pointwise_conv_affine_act(&x, &w, &bad_s, &s, Act::Identity).is_err());
    }
}
