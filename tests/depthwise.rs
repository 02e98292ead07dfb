//! Property tests for `effnet::ops::depthwise_conv2d` (CPU kernel) and
//! `effnet::ops::depthwise_conv2d_shifted` (device-generic tensor-op formulation).
//!
//! The oracle is candle's grouped `conv2d` (`groups = C`) on an explicitly zero-padded input
//! (`pad_with_zeros`), differentiated by candle's autograd. Shapes, strides, paddings and values
//! come from a seeded RNG, so every run checks the same cases.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};
use effnet::ops::{depthwise_conv2d, depthwise_conv2d_shifted, Pad2d};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy)]
struct Case {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: (usize, usize),
    pad: Pad2d,
}

impl Case {
    fn random(rng: &mut StdRng) -> Self {
        loop {
            let k = [1, 3, 5, 7][rng.random_range(0..4)];
            let (kh, kw) = if rng.random_bool(0.2) {
                (k, [1, 2, 3, 4, 5][rng.random_range(0..5)])
            } else {
                (k, k)
            };
            let s = rng.random_range(1..=2);
            let stride = if rng.random_bool(0.2) {
                (s, 3 - s)
            } else {
                (s, s)
            };
            let pad = if rng.random_bool(0.25) {
                Pad2d::default()
            } else {
                Pad2d {
                    top: rng.random_range(0..=kh),
                    bottom: rng.random_range(0..=kh),
                    left: rng.random_range(0..=kw),
                    right: rng.random_range(0..=kw),
                }
            };
            let case = Case {
                b: rng.random_range(1..=3),
                c: rng.random_range(1..=40),
                h: rng.random_range(1..=20),
                w: rng.random_range(1..=20),
                kh,
                kw,
                stride,
                pad,
            };
            if case.h + pad.top + pad.bottom >= kh && case.w + pad.left + pad.right >= kw {
                return case;
            }
        }
    }

    fn out_dims(&self) -> (usize, usize, usize, usize) {
        let oh = (self.h + self.pad.top + self.pad.bottom - self.kh) / self.stride.0 + 1;
        let ow = (self.w + self.pad.left + self.pad.right - self.kw) / self.stride.1 + 1;
        (self.b, self.c, oh, ow)
    }
}

/// Uniform values in [-1, 1).
fn rand_tensor(rng: &mut StdRng, shape: (usize, usize, usize, usize)) -> Result<Tensor> {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

/// candle's grouped conv2d on the explicitly padded input; strides that differ per axis are
/// done as stride 1 followed by subsampling.
fn oracle(x: &Tensor, w: &Tensor, case: &Case) -> candle_core::Result<Tensor> {
    let p = case.pad;
    let (sh, sw) = case.stride;
    let (_, _, oh, ow) = case.out_dims();
    // Cropped to the rows and columns the taps read: candle's conv2d backward returns a
    // gradient of the wrong size when the stride leaves unread rows or columns.
    let xp = x
        .pad_with_zeros(2, p.top, p.bottom)?
        .pad_with_zeros(3, p.left, p.right)?
        .narrow(2, 0, (oh - 1) * sh + case.kh)?
        .narrow(3, 0, (ow - 1) * sw + case.kw)?;
    if sh == sw {
        return xp.conv2d(w, 0, sh, 1, case.c);
    }
    let y = xp.conv2d(w, 0, 1, 1, case.c)?;
    let rows: Vec<u32> = (0..oh).map(|i| (i * sh) as u32).collect();
    let cols: Vec<u32> = (0..ow).map(|j| (j * sw) as u32).collect();
    let rows = Tensor::new(rows.as_slice(), &Device::Cpu)?;
    let cols = Tensor::new(cols.as_slice(), &Device::Cpu)?;
    y.index_select(&rows, 2)?.index_select(&cols, 3)
}

type Op = fn(&Tensor, &Tensor, &Case) -> candle_core::Result<Tensor>;

fn kernel(x: &Tensor, w: &Tensor, case: &Case) -> candle_core::Result<Tensor> {
    depthwise_conv2d(x, w, case.stride, case.pad)
}

fn shifted(x: &Tensor, w: &Tensor, case: &Case) -> candle_core::Result<Tensor> {
    depthwise_conv2d_shifted(x, w, case.stride, case.pad)
}

/// Output, input gradient and weight gradient of `sum(op(x, w) * r)`, all as f32.
fn run(op: Op, x: &Tensor, w: &Tensor, r: &Tensor, case: &Case) -> Result<[Tensor; 3]> {
    let xv = Var::from_tensor(x)?;
    let wv = Var::from_tensor(w)?;
    let y = op(xv.as_tensor(), wv.as_tensor(), case)?;
    let grads = (y.broadcast_mul(r)?).sum_all()?.backward()?;
    let dx = match grads.get(xv.as_tensor()) {
        Some(g) => g.clone(),
        None => xv.zeros_like()?,
    };
    let Some(dw) = grads.get(wv.as_tensor()) else {
        bail!("no gradient for w")
    };
    Ok([
        y.to_dtype(DType::F32)?,
        dx.to_dtype(DType::F32)?,
        dw.to_dtype(DType::F32)?,
    ])
}

/// Fails unless `a` and `b` have the same shape and `|a - b| <= tol * max(|b|)` everywhere.
fn check_close(what: &str, case: &Case, a: &Tensor, b: &Tensor, tol: f32) -> Result<()> {
    if a.dims() != b.dims() {
        bail!(
            "{what}: shape {:?} vs {:?} for {case:?}",
            a.dims(),
            b.dims()
        );
    }
    let a = a.flatten_all()?.to_vec1::<f32>()?;
    let b = b.flatten_all()?.to_vec1::<f32>()?;
    let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let (mut worst, mut at) = (0.0f32, 0);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let d = (x - y).abs();
        if d.is_nan() || d > worst {
            (worst, at) = (d, i);
        }
    }
    if worst.is_nan() || worst > tol * scale {
        bail!(
            "{what}: max |diff| {worst} at {at} ({} vs {}) exceeds {tol} * {scale} for {case:?}",
            a[at],
            b[at]
        );
    }
    Ok(())
}

/// Checks `op` (forward and both gradients) against the oracle on `count` random cases, in f32
/// and, through a rounded copy of the inputs, in f16 and bf16.
fn property(op: Op, name: &str, seed: u64, count: usize) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..count {
        let case = Case::random(&mut rng);
        let x = rand_tensor(&mut rng, (case.b, case.c, case.h, case.w))?;
        let w = rand_tensor(&mut rng, (case.c, 1, case.kh, case.kw))?;
        let r = rand_tensor(&mut rng, case.out_dims())?;
        let want = run(oracle, &x, &w, &r, &case)?;
        let got = run(op, &x, &w, &r, &case)?;
        for (part, (g, e)) in ["output", "grad x", "grad w"]
            .iter()
            .zip(got.iter().zip(&want))
        {
            check_close(&format!("{name} f32 {part}"), &case, g, e, 1e-5)?;
        }
        // Half precision: compare against f32 on the same (rounded) values.
        for (dtype, tol) in [(DType::F16, 2e-3), (DType::BF16, 1.6e-2)] {
            let [x, w, r] = [&x, &w, &r].map(|t| t.to_dtype(dtype));
            let (x, w, r) = (x?, w?, r?);
            let got = run(op, &x, &w, &r, &case)?;
            let [x, w, r] = [&x, &w, &r].map(|t| t.to_dtype(DType::F32));
            let want = run(oracle, &x?, &w?, &r?, &case)?;
            for (part, (g, e)) in ["output", "grad x", "grad w"]
                .iter()
                .zip(got.iter().zip(&want))
            {
                check_close(&format!("{name} {dtype:?} {part}"), &case, g, e, tol)?;
            }
        }
    }
    Ok(())
}

#[test]
fn kernel_matches_grouped_conv2d() -> Result<()> {
    property(kernel, "kernel", 0x5eed_0001, 120)
}

#[test]
fn shifted_matches_grouped_conv2d() -> Result<()> {
    property(shifted, "shifted", 0x5eed_0002, 120)
}

/// Every small combination of size, padding, kernel and stride, including outputs that read
/// padding only and inputs whose last rows no tap reads.
#[test]
fn small_edge_cases_exhaustive() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(7);
    for h in 1..=3 {
        for k in 1..=3 {
            for s in 1..=3 {
                for before in 0..=4 {
                    for after in 0..=2 {
                        if h + before + after < k {
                            continue;
                        }
                        // Rows and columns get mirrored parameters so both axes are covered.
                        let case = Case {
                            b: 1,
                            c: 2,
                            h,
                            w: 4 - h,
                            kh: k,
                            kw: 4 - k,
                            stride: (s, 4 - s),
                            pad: Pad2d {
                                top: before,
                                bottom: after,
                                left: 4 - before,
                                right: after,
                            },
                        };
                        if case.w + case.pad.left + case.pad.right < case.kw {
                            continue;
                        }
                        let x = rand_tensor(&mut rng, (case.b, case.c, case.h, case.w))?;
                        let w = rand_tensor(&mut rng, (case.c, 1, case.kh, case.kw))?;
                        let r = rand_tensor(&mut rng, case.out_dims())?;
                        let want = run(oracle, &x, &w, &r, &case)?;
                        for (op, name) in [(kernel as Op, "kernel"), (shifted as Op, "shifted")] {
                            let got = run(op, &x, &w, &r, &case)?;
                            for (part, (g, e)) in ["output", "grad x", "grad w"]
                                .iter()
                                .zip(got.iter().zip(&want))
                            {
                                check_close(&format!("{name} {part}"), &case, g, e, 1e-5)?;
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Strided views (transposed input, narrowed weight) go through both implementations unchanged.
#[test]
fn non_contiguous_inputs() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(11);
    let case = Case {
        b: 2,
        c: 19,
        h: 9,
        w: 12,
        kh: 3,
        kw: 3,
        stride: (2, 2),
        pad: Pad2d {
            top: 0,
            bottom: 1,
            left: 1,
            right: 1,
        },
    };
    let xt = rand_tensor(&mut rng, (2, 19, 12, 9))?.transpose(2, 3)?;
    let wide = rand_tensor(&mut rng, (19, 1, 3, 5))?;
    let w = wide.narrow(3, 1, 3)?;
    assert!(!xt.is_contiguous() && !w.is_contiguous());
    let r = rand_tensor(&mut rng, case.out_dims())?;
    let want = run(oracle, &xt.contiguous()?, &w.contiguous()?, &r, &case)?;
    for (op, name) in [(kernel as Op, "kernel"), (shifted as Op, "shifted")] {
        let got = run(op, &xt, &w, &r, &case)?;
        for (part, (g, e)) in ["output", "grad x", "grad w"]
            .iter()
            .zip(got.iter().zip(&want))
        {
            check_close(&format!("{name} {part}"), &case, g, e, 1e-5)?;
        }
    }
    // Backpropagating through a transpose hands the op a non-contiguous upstream gradient.
    let (b, c, oh, ow) = case.out_dims();
    let rt = rand_tensor(&mut rng, (b, c, ow, oh))?;
    let want = run(
        oracle,
        &xt.contiguous()?,
        &w.contiguous()?,
        &rt.transpose(2, 3)?,
        &case,
    )?;
    let xv = Var::from_tensor(&xt)?;
    let wv = Var::from_tensor(&w)?;
    let y = kernel(xv.as_tensor(), wv.as_tensor(), &case)?;
    let grads = (y.transpose(2, 3)? * &rt)?.sum_all()?.backward()?;
    let (Some(dx), Some(dw)) = (grads.get(xv.as_tensor()), grads.get(wv.as_tensor())) else {
        bail!("missing gradients")
    };
    check_close("kernel grad x (strided grad)", &case, dx, &want[1], 1e-5)?;
    check_close("kernel grad w (strided grad)", &case, dw, &want[2], 1e-5)?;
    Ok(())
}

/// f64 runs on the tensor-op path and still matches.
#[test]
fn f64_uses_shifted_path() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(13);
    let case = Case {
        b: 1,
        c: 5,
        h: 7,
        w: 6,
        kh: 5,
        kw: 5,
        stride: (1, 1),
        pad: Pad2d::uniform(2),
    };
    let x = rand_tensor(&mut rng, (1, 5, 7, 6))?.to_dtype(DType::F64)?;
    let w = rand_tensor(&mut rng, (5, 1, 5, 5))?.to_dtype(DType::F64)?;
    let y = depthwise_conv2d(&x, &w, case.stride, case.pad)?;
    assert_eq!(y.dtype(), DType::F64);
    let want = oracle(&x, &w, &case)?.to_dtype(DType::F32)?;
    check_close("f64 output", &case, &y.to_dtype(DType::F32)?, &want, 1e-6)
}

fn expect_err(result: candle_core::Result<Tensor>, needle: &str) -> Result<()> {
    match result {
        Ok(t) => bail!(
            "expected an error containing {needle:?}, got a tensor of shape {:?}",
            t.dims()
        ),
        Err(e) if e.to_string().contains(needle) => Ok(()),
        Err(e) => bail!("expected an error containing {needle:?}, got: {e}"),
    }
}

#[test]
fn bad_shapes_are_errors() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 4, 6, 6), DType::F32, &dev)?;
    let w = Tensor::zeros((4, 1, 3, 3), DType::F32, &dev)?;
    let p = Pad2d::uniform(1);
    for op in [depthwise_conv2d, depthwise_conv2d_shifted] {
        expect_err(
            op(&x.flatten(0, 1)?, &w, (1, 1), p),
            "input must be [B, C, H, W]",
        )?;
        expect_err(
            op(&x, &w.squeeze(1)?, (1, 1), p),
            "weight must be [C, 1, KH, KW]",
        )?;
        let w2 = Tensor::zeros((4, 2, 3, 3), DType::F32, &dev)?;
        expect_err(
            op(&x, &w2, (1, 1), p),
            "weight must be [C, 1, KH, KW] with C = 4",
        )?;
        let w5 = Tensor::zeros((5, 1, 3, 3), DType::F32, &dev)?;
        expect_err(op(&x, &w5, (1, 1), p), "with C = 4")?;
        let w0 = Tensor::zeros((4, 1, 0, 3), DType::F32, &dev)?;
        expect_err(op(&x, &w0, (1, 1), p), "at least 1x1")?;
        expect_err(op(&x, &w, (0, 1), p), "stride must be at least 1")?;
        expect_err(op(&x, &w, (1, 0), p), "stride must be at least 1")?;
        let w9 = Tensor::zeros((4, 1, 9, 3), DType::F32, &dev)?;
        expect_err(op(&x, &w9, (1, 1), p), "output height would be zero")?;
        let w9 = Tensor::zeros((4, 1, 3, 9), DType::F32, &dev)?;
        expect_err(
            op(&x, &w9, (1, 1), Pad2d::default()),
            "output width would be zero",
        )?;
        let huge = Pad2d {
            top: usize::MAX,
            ..p
        };
        expect_err(op(&x, &w, (1, 1), huge), "overflows")?;
        expect_err(op(&x, &w.to_dtype(DType::F16)?, (1, 1), p), "dtypes differ")?;
        let (xi, wi) = (x.to_dtype(DType::U32)?, w.to_dtype(DType::U32)?);
        expect_err(op(&xi, &wi, (1, 1), p), "floating-point")?;
    }
    Ok(())
}

/// An empty batch gives an empty output (and empty gradients) rather than an error.
#[test]
fn empty_batch() -> Result<()> {
    let x = Tensor::zeros((0, 3, 5, 5), DType::F32, &Device::Cpu)?;
    let w = Tensor::ones((3, 1, 3, 3), DType::F32, &Device::Cpu)?;
    for op in [depthwise_conv2d, depthwise_conv2d_shifted] {
        let xv = Var::from_tensor(&x)?;
        let wv = Var::from_tensor(&w)?;
        let y = op(xv.as_tensor(), wv.as_tensor(), (2, 2), Pad2d::uniform(1))?;
        assert_eq!(y.dims(), &[0, 3, 3, 3]);
        let grads = y.sum_all()?.backward()?;
        if let Some(dw) = grads.get(wv.as_tensor()) {
            assert_eq!(dw.flatten_all()?.to_vec1::<f32>()?, vec![0.0; 27]);
        }
    }
    Ok(())
}

/// The fused depthwise + per-channel affine + activation equals the two ops composed, and refuses a
/// backward pass.
#[test]
fn fused_epilogue_matches_composition() {
    use effnet::config::Activation;
    use effnet::ops::{affine_act, depthwise_conv2d_affine_act, Act};
    let dev = Device::Cpu;
    let acts = [
        Act::Identity,
        Act::Net(Activation::Swish),
        Act::Net(Activation::Relu6),
        Act::Net(Activation::Relu),
    ];
    for (i, (c, h, w, k, s)) in [
        (3, 9, 7, 3, 1),
        (16, 14, 14, 5, 2),
        (40, 20, 11, 3, 2),
        (1, 1, 1, 1, 1),
    ]
    .into_iter()
    .enumerate()
    {
        let x = Tensor::randn(0f32, 2f32, (2, c, h, w), &dev).unwrap();
        let wt = Tensor::randn(0f32, 1f32, (c, 1, k, k), &dev).unwrap();
        let scale = Tensor::randn(1f32, 0.3, (1, c), &dev).unwrap();
        let shift = Tensor::randn(0f32, 1f32, (1, c), &dev).unwrap();
        let pad = Pad2d {
            top: k / 2,
            bottom: k / 2 + i % 2,
            left: (k - 1) / 2,
            right: k / 2,
        };
        for act in acts {
            let fused =
                depthwise_conv2d_affine_act(&x, &wt, (s, s), pad, &scale, &shift, act).unwrap();
            let plain = depthwise_conv2d(&x, &wt, (s, s), pad).unwrap();
            let composed = affine_act(&plain, &scale, &shift, act).unwrap();
            let d = (fused - composed)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-5, "case {i} {act:?}");
        }
    }
    let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1f32, (1, 2, 5, 5), &dev).unwrap())
        .unwrap();
    let wt = Tensor::ones((2, 1, 3, 3), candle_core::DType::F32, &dev).unwrap();
    let one = Tensor::ones((1, 2), candle_core::DType::F32, &dev).unwrap();
    let y = depthwise_conv2d_affine_act(
        &x,
        &wt,
        (1, 1),
        Pad2d::uniform(1),
        &one,
        &one,
        Act::Identity,
    )
    .unwrap();
    assert!(
        y.sum_all().unwrap().backward().is_err(),
        "inference-only op must refuse backward"
    );
}
