//! Kernel tests against a direct evaluation of the definition.

use super::*;
use crate::ops::Pad2d;
use candle_core::Layout;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Direct evaluation of the definition in f64: `(y, dx, dw)` for upstream gradient `dy`.
fn naive(g: &Geometry, x: &[f32], w: &[f32], dy: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (kh, kw) = (g.k_h, g.k_w);
    let mut y = vec![0.0; g.planes() * g.out_h * g.out_w];
    let mut dx = vec![0.0; g.planes() * g.in_h * g.in_w];
    let mut dw = vec![0.0; g.channels * kh * kw];
    for p in 0..g.planes() {
        let c = p % g.channels;
        for i in 0..g.out_h {
            for j in 0..g.out_w {
                let o = (p * g.out_h + i) * g.out_w + j;
                for ky in 0..kh {
                    for kx in 0..kw {
                        let (r, q) = (i * g.stride_h + ky, j * g.stride_w + kx);
                        let (Some(r), Some(q)) =
                            (r.checked_sub(g.pad.top), q.checked_sub(g.pad.left))
                        else {
                            continue;
                        };
                        if r >= g.in_h || q >= g.in_w {
                            continue;
                        }
                        let xi = (p * g.in_h + r) * g.in_w + q;
                        let wi = (c * kh + ky) * kw + kx;
                        y[o] += f64::from(w[wi]) * f64::from(x[xi]);
                        dx[xi] += f64::from(w[wi]) * f64::from(dy[o]);
                        dw[wi] += f64::from(x[xi]) * f64::from(dy[o]);
                    }
                }
            }
        }
    }
    (y, dx, dw)
}

fn close(what: &str, g: &Geometry, run: (usize, bool), got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what} length for {g:?}");
    let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let d = (f64::from(*a) - b).abs();
        assert!(
            d <= 1e-5 * scale,
            "{what} [{i}]: {a} vs {b}, (band, simd) {run:?}, {g:?}"
        );
    }
}

fn values(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// A folded 1x1 convolution with random weights, scale and shift (`out` rows of `inputs`).
#[cfg(target_arch = "x86_64")]
struct RandomPointwise {
    w: Vec<f32>,
    scale: Vec<f32>,
    shift: Vec<f32>,
    out: usize,
}

#[cfg(target_arch = "x86_64")]
impl RandomPointwise {
    fn new(rng: &mut StdRng, out: usize, inputs: usize) -> Self {
        let w = values(rng, out * inputs);
        let (scale, shift) = (values(rng, out), values(rng, out));
        Self {
            w,
            scale,
            shift,
            out,
        }
    }

    fn with(&self, act: Act) -> super::super::pointwise::Pointwise<'_> {
        super::super::pointwise::Pointwise {
            w: &self.w,
            w_stride: 0,
            out: self.out,
            scale: &self.scale,
            shift: &self.shift,
            act,
        }
    }
}

/// The largest difference between `a` and `b`, relative to `1 + |b|` (the kernels against their
/// references); lengths must match.
#[cfg(target_arch = "x86_64")]
fn worst_relative(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs() / (1.0 + b.abs())))
}

/// A block's input and its random expansion and depthwise parameters (the fused-kernel tests).
#[cfg(target_arch = "x86_64")]
struct BlockCase {
    g: Geometry,
    x: Vec<f32>,
    expansion: RandomPointwise,
    taps: Vec<f32>,
    scale: Vec<f32>,
    shift: Vec<f32>,
}

#[cfg(target_arch = "x86_64")]
impl BlockCase {
    /// `[batch, input channels, channels, height, width]`, kernel and stride, padding `(top, bottom,
    /// left, right)`.
    fn new(
        rng: &mut StdRng,
        [b, c_in, c, h, w]: [usize; 5],
        (k, s): (usize, usize),
        (top, bottom, left, right): (usize, usize, usize, usize),
    ) -> Self {
        let pad = Pad2d {
            top,
            bottom,
            left,
            right,
        };
        let g = Geometry::new(&[b, c, h, w], &[c, 1, k, k], (s, s), pad).unwrap();
        let x = values(rng, b * c_in * h * w);
        let expansion = RandomPointwise::new(rng, c, c_in);
        let taps = values(rng, c * k * k);
        let (scale, shift) = (values(rng, c), values(rng, c));
        Self {
            g,
            x,
            expansion,
            taps,
            scale,
            shift,
        }
    }

    /// The depthwise taps as a `[C, 1, K, K]` view.
    fn taps_view(&self) -> View<'_, f32> {
        let (c, k) = (self.g.channels, self.g.k_h);
        View::new(&self.taps, &Layout::contiguous((c, 1, k, k)), "w").unwrap()
    }
}

/// Every band height, with and without SIMD, gives the definition's result, for strides up to 3, kernels up to 7
/// (square ones take the unrolled path, the others the tap-by-tap path) and paddings
/// larger than the kernel.
#[test]
fn banded_kernels_match_definition() {
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..200 {
        let (kh, kw) = if rng.random_bool(0.5) {
            let k = rng.random_range(1..=7);
            (k, k)
        } else {
            (rng.random_range(1..=5), rng.random_range(1..=5))
        };
        let pad = Pad2d {
            top: rng.random_range(0..=8),
            bottom: rng.random_range(0..=8),
            left: rng.random_range(0..=8),
            right: rng.random_range(0..=8),
        };
        let x_dims = [
            rng.random_range(1..=3),
            rng.random_range(1..=20),
            rng.random_range(1..=12),
            rng.random_range(1..=19),
        ];
        let stride = (rng.random_range(1..=3), rng.random_range(1..=3));
        let Ok(g) = Geometry::new(&x_dims, &[x_dims[1], 1, kh, kw], stride, pad) else {
            continue; // output would be empty
        };
        let x = values(&mut rng, x_dims.iter().product());
        let w = values(&mut rng, g.channels * kh * kw);
        let dy = values(&mut rng, g.out_dims().iter().product());
        let (y_want, dx_want, dw_want) = naive(&g, &x, &w, &dy);
        let xl = Layout::contiguous(g.in_dims().to_vec());
        let wl = Layout::contiguous(g.w_dims().to_vec());
        let yl = Layout::contiguous(g.out_dims().to_vec());
        let xv = View::new(&x, &xl, "x").unwrap();
        let wv = View::new(&w, &wl, "w").unwrap();
        let dyv = View::new(&dy, &yl, "dy").unwrap();
        let fwd = Corr::forward(&g);
        let (wf, wr) = (weights_f32(&g, &wv, false), weights_f32(&g, &wv, true));
        let bwd = Corr::grad_input(&g);
        for simd in [false, true] {
            for band in 1..=4 {
                let y = correlate(&fwd, &xv, &wf, g.planes(), band, simd, None);
                close("forward", &g, (band, simd), &y, &y_want);
                let dx = correlate(&bwd, &dyv, &wr, g.planes(), band, simd, None);
                close("grad x", &g, (band, simd), &dx, &dx_want);
            }
            let dw = grad_weight_with(&g, &xv, &dyv, simd);
            close("grad w", &g, (0, simd), &dw, &dw_want);
        }
    }
}

#[test]
fn view_rejects_layouts_outside_storage() {
    let data = [0.0f32; 10];
    assert!(View::new(&data, &Layout::contiguous(vec![1, 1, 2, 5]), "x").is_ok());
    let err = View::new(&data, &Layout::contiguous(vec![1, 1, 3, 5]), "x").err();
    assert!(err.is_some_and(|e| e.to_string().contains("does not fit")));
    let err = View::new(&data, &Layout::contiguous(vec![10]), "x").err();
    assert!(err.is_some_and(|e| e.to_string().contains("must be 4-D")));
    // Empty tensors read nothing, whatever the offset.
    assert!(View::new(
        &data,
        &Layout::contiguous_with_offset(vec![0, 1, 2, 5], 50),
        "x"
    )
    .is_ok());
}

#[test]
fn band_rows_is_within_bounds() {
    for out_h in [1, 7, 56, 112, 600] {
        for planes in [1, 16, 1152, 16 * 1152] {
            let g = Geometry::new(
                &[1, planes, out_h, out_h],
                &[planes, 1, 3, 3],
                (1, 1),
                Pad2d::uniform(1),
            );
            let c = Corr::forward(&g.unwrap());
            let band = band_rows(&c, planes);
            assert!((1..=out_h).contains(&band), "{out_h} {planes}: {band}");
            assert!(c.rows_for(band) * c.pitch <= BAND_ELEMS.max(c.rows_for(1) * c.pitch));
        }
    }
}

/// The AVX-512 inference kernels (where this CPU has them), plane-wise and channel-blocked, equal the
/// definition and the general banded kernel, plane sums included, for kernels 3/5/7, strides 1/2,
/// rows narrower and wider than a vector, asymmetric padding, and channel counts below, at and past
/// a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx512_inference_kernels_match_definition_and_general_kernel() {
    if !std::is_x86_feature_detected!("avx512f") {
        eprintln!("no AVX-512F on this CPU: its kernels are not used here");
        return;
    }
    use crate::config::Activation;
    type Kernel =
        unsafe fn(&Geometry, &[f32], &[f32], (&[f32], &[f32], Act), bool) -> (Vec<f32>, Vec<f32>);
    let kernels: [(&str, Kernel); 2] = [
        ("plane-wise", avx512::forward_affine_act),
        ("channel-blocked", blocked::forward_affine_act),
    ];
    let mut rng = StdRng::seed_from_u64(7);
    let acts = [
        Act::Identity,
        Act::Net(Activation::Swish),
        Act::Net(Activation::Relu6),
        Act::Net(Activation::Relu),
    ];
    for (case, (h, w, k, s, pad)) in [
        (7, 7, 5, 1, (2, 2, 2, 2)),
        (14, 14, 3, 2, (0, 1, 0, 1)),
        (9, 33, 7, 2, (3, 3, 3, 3)),
        (17, 16, 5, 2, (1, 2, 1, 2)),
        (30, 112, 3, 1, (1, 1, 1, 1)),
        (5, 3, 3, 1, (1, 1, 1, 1)),
        (12, 40, 7, 1, (0, 6, 6, 0)),
        // Stride 2 on odd widths, with the left padding even and odd, over several bands.
        (15, 45, 3, 2, (1, 1, 0, 2)),
        (11, 31, 5, 2, (2, 2, 1, 2)),
        (64, 40, 3, 2, (0, 1, 0, 1)),
        // Stride 2 whose last input columns no window reads; a 1x1 output.
        (14, 14, 5, 2, (1, 0, 1, 0)),
        (3, 3, 3, 2, (0, 0, 0, 0)),
    ]
    .into_iter()
    .enumerate()
    {
        let (top, bottom, left, right) = pad;
        let pad = Pad2d {
            top,
            bottom,
            left,
            right,
        };
        // One sample (the bands then split the rows between the threads) and two.
        let (b, c) = (1 + case % 2, [3, 16, 35][case % 3]);
        let g = Geometry::new(&[b, c, h, w], &[c, 1, k, k], (s, s), pad).unwrap();
        assert!(avx512::supports(&g));
        let x = values(&mut rng, b * c * h * w);
        let wt = values(&mut rng, c * k * k);
        let taps = weights_f32(
            &g,
            &View::new(&wt, &Layout::contiguous((c, 1, k, k)), "w").unwrap(),
            false,
        );
        let xv = View::new(&x, &Layout::contiguous((b, c, h, w)), "x").unwrap();
        let (ones, zeros) = (vec![1.0f32; c], vec![0.0f32; c]);
        let dy = vec![0.0f32; b * c * g.out_h * g.out_w];
        let (want, _, _) = naive(&g, &x, &wt, &dy);
        let plane = g.out_h * g.out_w;
        let want_sums: Vec<f64> = want.chunks(plane).map(|p| p.iter().sum()).collect();
        let scale = values(&mut rng, c);
        let shift = values(&mut rng, c);
        for (name, kernel) in kernels {
            // SAFETY: AVX-512F detected above; sizes from `g`.
            let (y, sums) = unsafe { kernel(&g, &x, &taps, (&ones, &zeros, Act::Identity), true) };
            close(&format!("{name} forward"), &g, (case, true), &y, &want);
            close(
                &format!("{name} plane sums"),
                &g,
                (case, true),
                &sums,
                &want_sums,
            );
            for act in acts {
                // SAFETY: as above.
                let fast = unsafe { kernel(&g, &x, &taps, (&scale, &shift, act), true) };
                let general = bands_affine_act(&g, &xv, &taps, (&scale, &shift, act), true);
                for (what, a, b) in [
                    ("output", &fast.0, &general.0),
                    ("sums", &fast.1, &general.1),
                ] {
                    let worst = worst_relative(a, b);
                    assert!(worst < 1e-5, "{name} case {case} {act:?} {what}: {worst}");
                }
                // Without pooling no sums come back.
                // SAFETY: as above.
                let plain = unsafe { kernel(&g, &x, &taps, (&scale, &shift, act), false) };
                assert!(
                    plain.1.is_empty() && plain.0 == fast.0,
                    "{name} case {case}"
                );
            }
        }
    }
}

/// The expansion + depthwise kernel equals the two steps run one after the other (the expansion
/// with the tiled 1x1 kernel, then the depthwise dispatch), plane sums included: both depthwise
/// kernels, one band and several (112 and 80 columns exceed one band's scratch), the halo rows at
/// the band edges, stride 1 and 2, asymmetric padding, channel counts off a multiple of 16, and
/// 12, 16, 32, 48 and 64 channels per task (besides the dispatcher's choice).
#[cfg(target_arch = "x86_64")]
#[test]
fn expansion_in_depthwise_tasks_matches_two_steps() {
    if !std::is_x86_feature_detected!("avx512f") {
        eprintln!("no AVX-512F on this CPU: the fused expansion is not used here");
        return;
    }
    use super::super::pointwise::pointwise_f32;
    use crate::config::Activation;
    let mut rng = StdRng::seed_from_u64(11);
    let swish = Act::Net(Activation::Swish);
    for (case, (h, w, k, s, pad)) in [
        (7, 7, 5, 1, (2, 2, 2, 2)),
        (14, 14, 3, 2, (0, 1, 0, 1)),
        (10, 10, 3, 1, (1, 1, 1, 1)),
        (40, 112, 3, 2, (0, 1, 0, 1)),
        (80, 80, 5, 1, (2, 2, 2, 2)),
        (45, 112, 5, 2, (1, 2, 1, 2)),
        (28, 28, 5, 1, (2, 2, 2, 2)),
        (30, 30, 3, 2, (0, 1, 0, 1)),
        (60, 64, 3, 2, (0, 1, 0, 1)),
    ]
    .into_iter()
    .enumerate()
    {
        // One sample (80x80, 28x28 and 60x64 maps: a run of rows per thread, the last with TF's
        // asymmetric padding) and two.
        let (b, c_in, c) = (1 + case % 2, [4, 24, 3][case % 3], [35, 16, 48][case % 3]);
        let t = BlockCase::new(&mut rng, [b, c_in, c, h, w], (k, s), pad);
        let (g, x, wv, e) = (&t.g, &t.x, t.taps_view(), t.expansion.with(swish));
        let (scale, shift) = (&t.scale, &t.shift);
        let expanded = pointwise_f32(&e, x, [b, c_in, h, w], None, None);
        let xv = View::new(&expanded, &Layout::contiguous((b, c, h, w)), "x").unwrap();
        for act in [swish, Act::Net(Activation::Relu6)] {
            let epilogue = (&scale[..], &shift[..], act);
            let want = forward_affine_act(g, &xv, &wv, epilogue, true);
            let dispatched = expand_forward_affine_act(g, &e, (x, c_in), &wv, epilogue, true)
                .expect("AVX-512 covers these geometries");
            let taps = wv.contiguous().unwrap();
            for group in [0, 12, 16, 32, 48, 64] {
                let got = match group {
                    0 => dispatched.clone(),
                    // SAFETY: AVX-512F detected above; the sizes are those of `g`.
                    _ => unsafe {
                        expand::forward_affine_act(g, &e, (x, c_in), taps, epilogue, true, group)
                    },
                };
                for (what, a, b) in [("output", &got.0, &want.0), ("sums", &got.1, &want.1)] {
                    assert_eq!(a.len(), b.len(), "case {case} group {group} {what}");
                    let worst = worst_relative(a, b);
                    assert!(
                        worst < 1e-5,
                        "case {case} group {group} {act:?} {what}: {worst}"
                    );
                }
            }
        }
    }
}

/// The whole-block kernel (expansion, depthwise convolution and projection in the same tasks, the
/// residual added) equals the steps run apart: the expansion + depthwise kernel, then the tiled 1x1
/// kernel with the residual. One range of rows per sample and several (the halo rows expanded twice,
/// a last range shorter), ranges swept in several bands (the expanded rows kept from band to band:
/// 60 x 64 maps of 96 channels take 10-row bands, 90 x 96 ones of 35 channels 39-row bands), the
/// dispatcher's choice, stride 1 and 2, kernels 3 and 5, asymmetric padding, rows
/// of 14 to 112 columns, channel counts off a multiple of 16 and output counts off a multiple of 4,
/// with and without residual.
#[cfg(target_arch = "x86_64")]
#[test]
fn whole_block_in_one_section_matches_the_steps_apart() {
    if !std::is_x86_feature_detected!("avx512f") {
        eprintln!("no AVX-512F on this CPU: the whole-block kernel is not used here");
        return;
    }
    use super::super::pointwise::pointwise_f32;
    use crate::config::Activation;
    let mut rng = StdRng::seed_from_u64(12);
    let (swish, relu6) = (Act::Net(Activation::Swish), Act::Net(Activation::Relu6));
    for (case, (b, h, w, k, s, pad)) in [
        (1, 14, 14, 3, 1, (1, 1, 1, 1)),
        (2, 28, 28, 5, 1, (2, 2, 2, 2)),
        (1, 56, 56, 3, 1, (1, 1, 1, 1)),
        (2, 45, 112, 3, 2, (0, 1, 0, 1)),
        (1, 29, 30, 5, 2, (1, 2, 1, 2)),
        (3, 17, 32, 3, 1, (1, 1, 1, 1)),
        (1, 60, 64, 5, 1, (2, 2, 2, 2)),
        (1, 90, 96, 5, 2, (1, 2, 1, 2)),
    ]
    .into_iter()
    .enumerate()
    {
        let (c_in, c, o) = (
            [16, 24, 5][case % 3],
            [96, 35, 48][case % 3],
            [24, 13, 40][case % 3],
        );
        let t = BlockCase::new(&mut rng, [b, c_in, c, h, w], (k, s), pad);
        let (g, x, wv, e) = (&t.g, &t.x, t.taps_view(), t.expansion.with(swish));
        let (scale, shift) = (&t.scale, &t.shift);
        assert!(
            !blocked::preferred(g),
            "case {case} takes the channel-blocked kernel"
        );
        let projection = RandomPointwise::new(&mut rng, o, c);
        let p = projection.with(Act::Identity);
        let [_, _, oh, ow] = g.out_dims();
        let res = values(&mut rng, b * o * oh * ow);
        let taps = wv.contiguous().unwrap();
        // Without an expansion the depthwise convolution reads the block's input, `c` channels.
        let plain = values(&mut rng, b * c * h * w);
        let plain_view = View::new(&plain, &Layout::contiguous((b, c, h, w)), "x").unwrap();
        for (act, residual, e, (x, c_in)) in [
            (swish, Some(&res[..]), Some(&e), (&x[..], c_in)),
            (relu6, None, Some(&e), (&x[..], c_in)),
            (relu6, Some(&res[..]), None, (&plain[..], c)),
        ] {
            let epilogue = (&scale[..], &shift[..], act);
            let (d, _) = match e {
                Some(e) => expand_forward_affine_act(g, e, (x, c_in), &wv, epilogue, false)
                    .expect("AVX-512 covers these geometries"),
                None => forward_affine_act(g, &plain_view, &wv, epilogue, false),
            };
            let want = pointwise_f32(&p, &d, [b, c, oh, ow], None, residual);
            // The dispatcher declines where the ranges' halos would cost too much (none of these
            // cases on two threads); then only the explicit range counts run.
            let dispatched =
                expand_project_affine_act(g, e, (x, c_in), &wv, epilogue, &p, residual);
            let threads = crate::ops::parallel_threads();
            let fits = expand::project_ranges(g, threads, e.is_some()).is_some();
            assert_eq!(dispatched.is_some(), fits, "case {case}");
            for ranges in [0, 1, 2, 3, 7] {
                let got = match (ranges, &dispatched) {
                    (0, None) => continue,
                    (0, Some(d)) => d.clone(),
                    // SAFETY: AVX-512F detected above; the sizes are those of `g`.
                    _ => unsafe {
                        expand::forward_project(
                            g,
                            e,
                            (x, c_in),
                            taps,
                            epilogue,
                            &p,
                            residual,
                            ranges,
                        )
                    },
                };
                assert_eq!(got.len(), want.len(), "case {case} ranges {ranges}");
                let worst = worst_relative(&got, &want);
                let expands = e.is_some();
                assert!(
                    worst < 1e-5,
                    "case {case} ranges {ranges} {act:?} expansion {expands}: {worst}"
                );
            }
        }
    }
}

/// Where the whole-block kernel runs, on two threads: every block of MobileNetV2 at 224 px (one range
/// of rows per thread at batch 1, one per sample at batch 2) and EfficientNet-Lite's 5x5 kernels on
/// 28-wide maps, not on 14-wide ones (18 rows expanded for 14); blocks without an expansion whatever
/// their halos.
#[test]
fn whole_block_kernel_runs_where_its_halos_are_small() {
    let pad = |p| Pad2d {
        top: p,
        bottom: p,
        left: p,
        right: p,
    };
    // (batch, channels, input size, kernel, stride, expansion, ranges)
    for (b, c, size, k, s, expands, want) in [
        (1, 32, 112, 3, 1, false, Some(2)),
        (2, 32, 112, 3, 1, false, Some(1)),
        (1, 32, 14, 5, 1, false, Some(2)),
        (1, 96, 112, 3, 2, true, Some(2)),
        (1, 144, 56, 3, 1, true, Some(2)),
        (1, 144, 56, 3, 2, true, Some(2)),
        (1, 192, 28, 3, 1, true, Some(2)),
        (1, 384, 14, 3, 1, true, Some(2)),
        (1, 576, 14, 3, 1, true, Some(2)),
        (2, 192, 28, 3, 1, true, Some(1)),
        (2, 144, 56, 3, 1, true, Some(1)),
        (16, 576, 14, 3, 1, true, Some(1)),
        (1, 240, 28, 5, 1, true, Some(2)),
        (1, 480, 14, 5, 1, true, None),
    ] {
        let g = Geometry::new(&[b, c, size, size], &[c, 1, k, k], (s, s), pad(k / 2)).unwrap();
        assert_eq!(
            expand::project_ranges(&g, 2, expands),
            want,
            "{b} x {c} x {size}, kernel {k} stride {s}, expansion {expands}"
        );
    }
}

/// The expansion + depthwise tasks keep two threads evenly busy on the geometries of B0 and
/// MobileNetV2 (at least 95% of the ideal, by the rows each thread expands), with groups in whole
/// row blocks; 144 channels on 14x14 maps split 12 x 12 and 576 channels 12 x 48, not 9 groups of 64
/// or 10 of 60. Where a sample's rows are split between the threads, each thread's run of tasks
/// covers one run of rows of every channel, and the rows expanded twice stay within a seventh of
/// the work on one thread.
#[test]
fn expansion_tasks_spread_evenly_over_threads() {
    // (channels, size, kernel, stride)
    let shapes = [
        (96, 112, 3, 2),
        (144, 56, 3, 1),
        (144, 56, 5, 2),
        (192, 28, 3, 1),
        (240, 28, 5, 1),
        (240, 28, 3, 2),
        (384, 14, 3, 1),
        (480, 14, 3, 1),
        (576, 14, 3, 1),
        (576, 14, 3, 2),
        (672, 14, 5, 1),
        (672, 14, 5, 2),
        (960, 7, 3, 1),
        (1152, 7, 5, 1),
    ];
    for (c, size, k, s) in shapes {
        let pad = Pad2d::uniform(k / 2);
        let g = Geometry::new(&[1, c, size, size], &[c, 1, k, k], (s, s), pad).unwrap();
        let group = expand::channels_per_task_on(&g, 2);
        let step = if super::blocked::preferred(&g) { 16 } else { 4 };
        assert_eq!(group % step, 0, "{c}@{size}: group {group}");
        let loads = expand::thread_loads(&g, group, 2);
        let (busiest, total) = (loads.iter().max().unwrap(), loads.iter().sum::<usize>());
        assert!(
            total as f64 / (2 * busiest) as f64 >= 0.95,
            "{c}@{size} k{k} s{s}: group {group}, loads {loads:?}"
        );
        let alone = expand::thread_loads(&g, group, 1)[0];
        if !expand::splits_rows(&g, 2) {
            assert_eq!(total, alone, "{c}@{size} k{k} s{s}");
        }
        assert!(
            total as f64 <= alone as f64 * (1.0 + 1.0 / 7.0),
            "{c}@{size} k{k} s{s}: {total} rows expanded on two threads, {alone} on one"
        );
    }
    // Two runs of rows: 28x28 maps from a 5x5 kernel, not 14x14 ones.
    let geometry = |c, size, k| {
        Geometry::new(
            &[1, c, size, size],
            &[c, 1, k, k],
            (1, 1),
            Pad2d::uniform(k / 2),
        )
        .unwrap()
    };
    assert!(expand::splits_rows(&geometry(240, 28, 5), 2));
    assert!(!expand::splits_rows(&geometry(480, 14, 3), 2));
    assert!(!expand::splits_rows(&geometry(240, 28, 5), 4));
    assert_eq!(expand::channels_per_task_on(&geometry(144, 14, 3), 2), 12);
    assert_eq!(expand::channels_per_task_on(&geometry(576, 14, 3), 2), 48);
    // No channels: some group all the same (the kernel then returns an empty output).
    assert!(expand::channels_per_task_on(&geometry(0, 14, 3), 2) > 0);
}

/// The remembered split is the searched one, for more geometries than are remembered at once (the
/// memory starts afresh in between) and when asked again.
#[test]
fn remembered_task_split_is_the_searched_one() {
    let threads = crate::ops::parallel_threads();
    for round in 0..2 {
        for c in (16..=1600).step_by(16) {
            let g =
                Geometry::new(&[1, c, 14, 14], &[c, 1, 3, 3], (1, 1), Pad2d::uniform(1)).unwrap();
            let want = expand::channels_per_task_on(&g, threads);
            assert_eq!(
                expand::channels_per_task(&g),
                want,
                "{c} channels, round {round}"
            );
        }
    }
}
