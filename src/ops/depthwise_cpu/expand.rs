//! The expansion 1x1 convolution and the depthwise convolution of an MBConv block in one parallel
//! section, on AVX-512 (inference, f32).
//!
//! A depthwise convolution reads only its own channel, so a task can expand a group of channels
//! for a band of rows into a scratch buffer that stays in its core's L2 cache and run the depthwise
//! kernel over it right away: the expanded map (six times the block's input) never goes through the
//! shared L3 cache and memory, and the threads meet once per block fewer. Bands overlap by the rows
//! of the kernel's halo, which are expanded twice; they are made as tall as the scratch budget allows.

use std::cell::RefCell;
use std::ops::Range;

use super::super::affine_act::Act;
use super::super::depthwise::{Geometry, Pad2d};
use super::super::pointwise::{self, rows_avx512, rows_project, Pointwise};
use super::super::{parallel_for, parallel_threads, with_scratches, SharedOut};
use super::{avx512, blocked};

/// Channels per vector of the channel-blocked kernel.
const L: usize = 16;
/// Upper bound for a task's expanded scratch, in floats (256 KiB: with the input rows it reads, it
/// stays in a 1 MiB L2; half of it measured slower on Zen 4, by the rows expanded twice).
const EXPANDED_FLOATS: usize = 64 * 1024;

/// Channels per task for `g`: 16 (one vector of the channel-blocked kernel), or up to four times
/// that on small maps, where tasks would otherwise be short, as long as every thread keeps four tasks
/// and the expanded planes fit the scratch budget. When that leaves few tasks that do not spread evenly
/// over the threads (144 channels in 9 groups on two threads; 576 in 9 groups of 64, or in 10 of
/// 60 with a last one of 36), up to twice as many groups are considered, in steps of 4 channels for
/// the plane-wise kernel (the 1x1 kernel's row block) and of 16 for the channel-blocked one: the
/// split whose busiest thread expands the fewest channel rows wins (576: 12 groups of 48), the
/// fewest tasks among equals.
///
/// The search weighs a dozen splits (2 µs on some blocks, as long as the serial steps between two
/// parallel sections), so its answer is remembered per geometry on the calling thread: a network
/// asks for the same few geometries on every pass.
pub(super) fn channels_per_task(g: &Geometry) -> usize {
    thread_local! {
        static PLANS: RefCell<Vec<(Geometry, usize, usize)>> = const { RefCell::new(Vec::new()) };
    }
    let threads = parallel_threads();
    PLANS.with_borrow_mut(|plans| {
        let known = plans.iter().find(|&&(pg, t, _)| pg == *g && t == threads);
        if let Some(&(.., group)) = known {
            return group;
        }
        let group = channels_per_task_on(g, threads);
        if plans.len() == REMEMBERED_PLANS {
            plans.clear();
        }
        plans.push((*g, threads, group));
        group
    })
}

/// Geometries whose task split [`channels_per_task`] keeps per thread (more than a network's blocks;
/// past that it starts afresh).
const REMEMBERED_PLANS: usize = 64;

/// [`channels_per_task`] for `threads` threads.
pub(super) fn channels_per_task_on(g: &Geometry, threads: usize) -> usize {
    if g.channels == 0 {
        return L;
    }
    let by_threads = g.channels.div_ceil(L) / (4 * threads);
    let by_cache = EXPANDED_FLOATS / (L * g.in_h * g.in_w).max(1);
    let group = L * by_threads.min(by_cache).clamp(1, 4);
    let step = if blocked::preferred(g) { L } else { 4 };
    let tasks = |group: usize| g.batch * bands(g, group, threads).1 * g.channels.div_ceil(group);
    let many = 8 * threads;
    if tasks(group) >= many {
        return group;
    }
    let n0 = g.channels.div_ceil(group);
    (n0..=(2 * n0).min(g.channels.div_ceil(step)))
        .map(|n| g.channels.div_ceil(n).next_multiple_of(step))
        .filter(|&group| tasks(group) <= 2 * many)
        .min_by_key(|&group| (busiest_thread(g, group, threads), tasks(group)))
        .unwrap_or(group)
}

/// The channel rows that each of `threads` expands when it takes its own run of the tasks of `group`
/// channels (in [`forward_affine_act`]'s order), as `parallel_for` hands them out before a thread
/// that is done helps another.
pub(super) fn thread_loads(g: &Geometry, group: usize, threads: usize) -> Vec<usize> {
    let group = group.max(1);
    let (band, bands) = bands(g, group, threads);
    let groups = g.channels.div_ceil(group);
    let tasks = g.batch * bands * groups;
    let load = |task: usize| {
        let rows = band.min(g.out_h.saturating_sub(task / groups % bands * band));
        let expanded = (rows.max(1) - 1) * g.stride_h + g.k_h;
        group.min(g.channels - task % groups * group) * expanded
    };
    (0..threads)
        .map(|t| {
            (t * tasks / threads..(t + 1) * tasks / threads)
                .map(load)
                .sum()
        })
        .collect()
}

/// The largest of [`thread_loads`].
fn busiest_thread(g: &Geometry, group: usize, threads: usize) -> usize {
    thread_loads(g, group, threads)
        .into_iter()
        .max()
        .unwrap_or(0)
}

/// Rows of output per band and the number of bands, for tasks of `group` channels on `threads`
/// threads: the tallest band whose expanded input rows (`(band - 1)·s + k`) fit the scratch budget,
/// then evened out. When the samples are fewer than the threads and [`splits_rows`] holds, the bands
/// are also a multiple of the threads, so that each thread takes a run of rows of every channel (the
/// tasks go band by band, and `parallel_for` gives thread t the t-th part of them): the projection
/// after it then finds its pixels in its own core's cache.
fn bands(g: &Geometry, group: usize, threads: usize) -> (usize, usize) {
    let rows_in_budget = EXPANDED_FLOATS / (group * g.in_w).max(1);
    let band = (rows_in_budget.saturating_sub(g.k_h) / g.stride_h + 1).clamp(1, g.out_h.max(1));
    let mut bands = g.out_h.div_ceil(band);
    if g.batch < threads && splits_rows(g, threads) {
        bands = bands.next_multiple_of(threads);
    }
    (g.out_h.div_ceil(bands.max(1)), bands)
}

/// Whether a map is tall enough to give each thread a run of its rows: at least 14 output rows per
/// thread (56x56 and 28x28 maps on two threads), and where two runs meet, the `k / 2` input rows of
/// the kernel's reach, expanded twice, stay within a seventh of a thread's input rows. (Measured on
/// B0 at batch 1 on two threads: splitting the 14x14 maps of 3x3 kernels the same way made those
/// blocks slower, 86 against 97 µs for the expansion + depthwise of 480 channels.)
pub(super) fn splits_rows(g: &Geometry, threads: usize) -> bool {
    g.out_h >= 14 * threads && g.k_h / 2 * threads * 7 <= g.out_h * g.stride_h
}

/// `act_dw(depthwise(act_e(conv1x1(x, e))))` for contiguous `x` `[B, C_in, H, W]`, with `e` the folded
/// expansion (`g.channels` outputs) and the depthwise `taps` `[C][K·K]`, `scale`, `shift` and `act`
/// of `g`, `group` channels per task (a multiple of 16, see [`channels_per_task`]); with `pool` also
/// the sum of each output plane (`[B · C]`, else empty).
///
/// # Safety
/// The CPU must support AVX-512F; `super::avx512::supports(g)` must hold; `x` must hold
/// `B·C_in·H·W` values with `H, W` those of `g`, `e` hold `g.channels` rows of `c_in` weights and as
/// many scale and shift values, `taps` `C·K·K` and `scale` and `shift` `C` values.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn forward_affine_act(
    g: &Geometry,
    e: &Pointwise,
    (x, c_in): (&[f32], usize),
    taps: &[f32],
    (scale, shift, act): (&[f32], &[f32], Act),
    pool: bool,
    group: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (c, k) = (g.channels, g.k_h);
    let (oh, ow, hw) = (g.out_h, g.out_w, g.in_h * g.in_w);
    let len = g.batch * c * oh * ow;
    let mut y: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return (y, vec![0.0; if pool { g.batch * c } else { 0 }]);
    }
    let groups = c.div_ceil(group);
    let (band, bands) = bands(g, group, parallel_threads());
    // Consecutive tasks share a band of the input (the channel groups vary fastest), and each thread
    // takes a run of them (see `bands`).
    let tasks = g.batch * bands * groups;
    let mut band_sums = vec![0f32; if pool { tasks * group } else { 0 }];
    let (out, sums_out) = (SharedOut::new(&mut y), SharedOut::new(&mut band_sums));
    let channel_blocked = blocked::preferred(g);
    let k2 = k * k;
    parallel_for(tasks, |task| {
        let (bi, b, cg) = (
            task / (bands * groups),
            task / groups % bands,
            task % groups,
        );
        let (c0, r0) = (cg * group, b * band);
        let lanes = group.min(c - c0);
        let rows = r0..(r0 + band).min(oh);
        let (sub, input_rows) = band_geometry(g, rows.clone());
        let px = input_rows.start * g.in_w..input_rows.end * g.in_w;
        let n = px.len();
        let x = &x[bi * c_in * hw..][..c_in * hw];
        let dst_at = ((bi * c + c0) * oh + r0) * ow;
        with_scratches(|expanded, work| {
            expanded.resize(lanes * n, 0.0);
            // SAFETY: AVX-512F (the caller's contract); `x` is one sample's input, `px` lies inside
            // its planes, `e` has rows c0..c0 + lanes, and `expanded` holds lanes · n values.
            unsafe {
                let dst = (expanded.as_mut_ptr(), n);
                rows_avx512(e, x, (c_in, hw), c0..c0 + lanes, px, dst, None)
            };
            // SAFETY: slot `task` of `band_sums` (`group` floats) belongs to this task.
            let sums = match pool {
                true => unsafe { std::slice::from_raw_parts_mut(sums_out.at(task * group), lanes) },
                false => &mut [],
            };
            if channel_blocked {
                for v0 in (0..lanes).step_by(L) {
                    let (ch, m) = (c0 + v0, L.min(lanes - v0));
                    let t = blocked::Task {
                        x: &expanded[v0 * n..(v0 + m) * n],
                        taps: &taps[ch * k2..(ch + m) * k2],
                        scale: &scale[ch..ch + m],
                        shift: &shift[ch..ch + m],
                        act,
                        lanes: m,
                        rows: 0..rows.len(),
                        plane_out: oh * ow,
                    };
                    // SAFETY: AVX-512F and `supports(g)` (the caller's contract, and `sub` keeps
                    // the kernel, stride and width); the task's rows of its planes lie inside `y`
                    // and no other task writes them.
                    let v = unsafe {
                        blocked::band_kernel(&sub, &t, work, out.at(dst_at + v0 * oh * ow))
                    };
                    if pool {
                        let mut lanes_sum = [0f32; L];
                        // SAFETY: AVX-512F; `lanes_sum` holds 16 floats.
                        unsafe { std::arch::x86_64::_mm512_storeu_ps(lanes_sum.as_mut_ptr(), v) };
                        sums[v0..v0 + m].copy_from_slice(&lanes_sum[..m]);
                    }
                }
            } else {
                for l in 0..lanes {
                    let src = &expanded[l * n..][..n];
                    // SAFETY: as above; plane `l`'s rows of this band belong to this task.
                    let sum = unsafe {
                        let dst = out.at(dst_at + l * oh * ow);
                        band_plane(&sub, src, (taps, scale, shift, act), c0 + l, dst)
                    };
                    if let Some(slot) = sums.get_mut(l) {
                        *slot = sum;
                    }
                }
            }
        });
    });
    // SAFETY: the tasks cover every row of every output plane, and each writes whole rows.
    unsafe { y.set_len(len) };
    let mut sums = vec![0f32; if pool { g.batch * c } else { 0 }];
    for (task, slot) in band_sums.chunks_exact(group).enumerate() {
        let (bi, c0) = (task / (bands * groups), task % groups * group);
        for (l, v) in slot.iter().take(group.min(c - c0)).enumerate() {
            sums[bi * c + c0 + l] += v;
        }
    }
    (y, sums)
}

/// Channel `ch`'s depthwise convolution over one band, its affine and activation applied: `src` holds
/// the band's input rows of that channel as `sub` ([`band_geometry`]) describes them, `dst` receives
/// all `sub.out_h` output rows; returns their sum.
///
/// # Safety
/// The CPU must support AVX-512F; `avx512::supports(sub)` must hold; `taps` must hold the `K·K` taps
/// of channel `ch` at `ch·K·K`, `scale` and `shift` its values at `ch`; `dst` must be valid for
/// writing `sub.out_h · sub.out_w` values.
#[inline]
unsafe fn band_plane(
    sub: &Geometry,
    src: &[f32],
    (taps, scale, shift, act): (&[f32], &[f32], &[f32], Act),
    ch: usize,
    dst: *mut f32,
) -> f32 {
    let k2 = sub.k_h * sub.k_w;
    let ep = avx512::Epilogue {
        scale: scale[ch],
        shift: shift[ch],
        act,
    };
    avx512::plane_rows(sub, src, &taps[ch * k2..][..k2], ep, 0..sub.out_h, dst)
}

/// The depthwise geometry of output rows `rows` of `g` for one sample's planes that hold only the
/// input rows those outputs read (the second value, clipped to the input): the padding above becomes
/// what is left of it above the band. (The kernels take the plane count from their arguments.)
fn band_geometry(g: &Geometry, rows: Range<usize>) -> (Geometry, Range<usize>) {
    let (s, k, top) = (g.stride_h, g.k_h, g.pad.top);
    let first = (rows.start * s).saturating_sub(top).min(g.in_h);
    let last = ((rows.end - 1) * s + k)
        .saturating_sub(top)
        .clamp(first, g.in_h);
    let top = (top + first).saturating_sub(rows.start * s);
    let sub = Geometry {
        batch: 1,
        in_h: last - first,
        out_h: rows.len(),
        pad: Pad2d {
            top,
            bottom: ((rows.len() - 1) * s + k).saturating_sub(top + last - first),
            ..g.pad
        },
        ..*g
    };
    (sub, first..last)
}

/// Input planes of at least this many pixels are copied into a panel once per band of
/// [`forward_project`] (`pointwise::avx512::pack`), which the expansion's register blocks of every
/// channel group then read, instead of the input rows `H·W` apart. MobileNetV2 at batch 1 on the
/// 2-core Intel Xeon: 0.97–0.975 of the time (interleaved A/B, four runs), its 56- and 28-wide blocks
/// 3–9% faster each; panels on 14×14 and 7×7 maps made those blocks no faster or up to 7% slower.
const PACK_FROM_PIXELS: usize = 28 * 28;

/// Floats of depthwise output that a task of [`forward_project`] projects at a time (256 KiB: with
/// the expanded rows and the band's input it stays in a 1 MiB L2).
const SWEEP_FLOATS: usize = 64 * 1024;

/// Row ranges per sample for [`forward_project`] on `threads` threads (`expands`: the block has an
/// expansion), or `None` where the steps apart are the better choice: one range per thread at batch
/// 1, one per sample once there are as many samples as threads; `None` where the ranges would expand
/// more than a sixth of the input rows twice (their halos: EfficientNet-Lite's 5x5 kernels on 14x14
/// maps at batch 1 would expand 18 rows for 14; MobileNetV2's 3x3 ones 16). Without an expansion
/// nothing is computed twice.
pub(super) fn project_ranges(g: &Geometry, threads: usize, expands: bool) -> Option<usize> {
    let oh = g.out_h.max(1);
    let ranges = threads.div_ceil(g.batch.max(1)).clamp(1, oh);
    let rows = oh.div_ceil(ranges);
    let mut expanded = 0;
    for r0 in (0..g.out_h).step_by(rows) {
        expanded += band_geometry(g, r0..(r0 + rows).min(g.out_h)).1.len();
    }
    (!expands || 6 * expanded <= 7 * g.in_h).then_some(ranges)
}

/// `project(act_dw(depthwise(act_e(conv1x1(x, e))))) + residual`, the whole of an MBConv block
/// without squeeze-excite (without the expansion where `e` is `None`), in one parallel section. Each
/// task takes every channel of a range of output rows (`ranges` per sample) and sweeps it in bands of
/// about [`SWEEP_FLOATS`] of depthwise output: for each band it expands the input rows the band reads,
/// 16 channels at a time, keeping the rows that the next band reads too (so within a range no row is
/// expanded twice), convolves each channel plane-wise into a per-thread buffer and projects that
/// buffer straight into the output rows, the residual added in the projection's epilogue. The
/// depthwise output never leaves the task's core, and the threads meet once per block instead of
/// twice. Only the rows where two ranges meet are expanded twice (at batch 1 on two threads, 2 of
/// 14 rows on 14x14 maps, 2 of 56 on 56x56 ones).
///
/// # Safety
/// The CPU must support AVX-512F; `super::avx512::supports(g)` must hold; `x` must hold
/// `B·c_in·H·W` values with `H, W` those of `g`, `e` hold `g.channels` rows of `c_in` weights and as
/// many scale and shift values (without `e`, `c_in` must be `g.channels`), `taps` `C·K·K` and `scale`
/// and `shift` `C` values; `proj` must hold `proj.out` rows of `C` weights (shared by the samples) and
/// as many scale and shift values, and `residual` (if any) `B·proj.out·out_h·out_w` values.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn forward_project(
    g: &Geometry,
    e: Option<&Pointwise>,
    (x, c_in): (&[f32], usize),
    taps: &[f32],
    (scale, shift, act): (&[f32], &[f32], Act),
    proj: &Pointwise,
    residual: Option<&[f32]>,
    ranges: usize,
) -> Vec<f32> {
    let c = g.channels;
    let (oh, ow, w, hw) = (g.out_h, g.out_w, g.in_w, g.in_h * g.in_w);
    let (o, plane) = (proj.out, g.out_h * g.out_w);
    let len = g.batch * o * plane;
    let mut y: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return y;
    }
    let range = oh.div_ceil(ranges.clamp(1, oh));
    let ranges = oh.div_ceil(range);
    // Bands of equal height (14 rows of 192 x 28 in two bands of 7, not 12 and 2).
    let band = range.div_ceil(range.div_ceil((SWEEP_FLOATS / (c * ow).max(1)).clamp(1, range)));
    let out = SharedOut::new(&mut y);
    parallel_for(g.batch * ranges, |task| {
        let (bi, first) = (task / ranges, task % ranges * range);
        let x = &x[bi * c_in * hw..][..c_in * hw];
        with_scratches(|expanded, kept| {
            // Per channel, the last expanded input rows of the band before (`keep` rows of `w`, of
            // which `kept_rows` from input row `kept_from` are valid), then the band's depthwise
            // output.
            let keep = if e.is_some() {
                g.k_h.saturating_sub(g.stride_h)
            } else {
                0
            };
            let (mut kept_from, mut kept_rows) = (0usize, 0usize);
            let mut r0 = first;
            while r0 < (first + range).min(oh) {
                let rows = r0..(r0 + band).min(first + range).min(oh);
                let (sub, input) = band_geometry(g, rows.clone());
                let (n, m) = (input.len() * w, rows.len() * ow);
                // Input rows this band reads that the band before expanded.
                let reuse = match (kept_from..kept_from + kept_rows).contains(&input.start) {
                    true => (kept_from + kept_rows - input.start).min(input.len()),
                    false => 0,
                };
                // The input pixels to expand, and on large maps their panel for the 1x1 kernel.
                let px = (input.start + reuse) * w..input.end * w;
                let packs = e.is_some() && hw >= PACK_FROM_PIXELS;
                let panel = match packs {
                    true => pointwise::avx512::packed_len(c_in, px.len()),
                    false => 0,
                };
                kept.resize(c * keep * w + c * m + panel, 0.0);
                let (store, rest) = kept.split_at_mut(c * keep * w);
                let (dw, panel) = rest.split_at_mut(c * m);
                // SAFETY: AVX-512F (the caller's contract); `x` holds c_in planes of hw and
                // `px.end <= hw`; the panel holds `packed_len(c_in, px.len())` values.
                let packed = packs.then(|| unsafe {
                    pointwise::avx512::pack(&x[px.start..], (c_in, hw, px.len()), panel)
                });
                for c0 in (0..c).step_by(L) {
                    let lanes = L.min(c - c0);
                    // The band's input rows of channels c0..c0 + lanes: expanded, or the input's own.
                    let (planes, stride) = match e {
                        Some(e) => {
                            expanded.resize(lanes * n, 0.0);
                            if reuse > 0 {
                                let skip = (input.start - kept_from) * w;
                                for l in 0..lanes {
                                    let from = &store[(c0 + l) * keep * w + skip..][..reuse * w];
                                    expanded[l * n..][..reuse * w].copy_from_slice(from);
                                }
                            }
                            // SAFETY: AVX-512F (the caller's contract); `x` is one sample's input,
                            // `px` lies inside its planes, `e` has rows c0..c0 + lanes, `expanded`
                            // holds lanes rows of n values, the first `reuse · w` of each already
                            // written, and `packed` is the panel of pixels `px`.
                            unsafe {
                                let dst = (expanded.as_mut_ptr().add(reuse * w), n);
                                let px = px.clone();
                                rows_avx512(e, x, (c_in, hw), c0..c0 + lanes, px, dst, packed)
                            };
                            // The last rows, which the next band reads too.
                            let last = input.len().min(keep);
                            for l in 0..lanes {
                                let to = &mut store[(c0 + l) * keep * w..][..last * w];
                                to.copy_from_slice(&expanded[(l + 1) * n - last * w..(l + 1) * n]);
                            }
                            (&expanded[..], n)
                        }
                        None => (&x[c0 * hw + input.start * w..], hw),
                    };
                    for l in 0..lanes {
                        let (ch, src) = (c0 + l, &planes[l * stride..][..n]);
                        // SAFETY: as above; channel ch's m values lie inside `dw` (c · m).
                        unsafe {
                            let dst = dw.as_mut_ptr().add(ch * m);
                            band_plane(&sub, src, (taps, scale, shift, act), ch, dst);
                        }
                    }
                }
                kept_rows = input.len().min(keep);
                kept_from = input.end - kept_rows;
                let at = bi * o * plane + r0 * ow;
                // SAFETY: AVX-512F; `dw` holds c rows of m values, `proj` o rows of c weights;
                // output rows `rows` of every channel of sample bi (stride `plane`) lie inside `y`
                // and belong to this task alone, and the residual holds the same rows.
                unsafe {
                    let res = residual.map(|r| &r[at..]);
                    rows_project(proj, dw, (c, m), res, plane, out.at(at))
                };
                r0 = rows.end;
            }
        });
    });
    // SAFETY: the tasks cover every row of every output plane, and each writes whole rows.
    unsafe { y.set_len(len) };
    y
}
