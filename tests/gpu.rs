//! GPU checks, compiled only with the `cuda` or `metal` feature (`cargo test --release --features
//! cuda`): the GPU gives timm's numbers, the CPU's numbers, and the CPU's gradients. In such a build a
//! missing GPU fails these tests with a message (they are not skipped).
#![cfg(any(feature = "cuda", feature = "metal"))]

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{loss, Optimizer, VarBuilder, VarMap, SGD};
use common::{
    assert_close, check_close, formula_tensor, formula_vb, formula_vb_on, gpu, timm_parity,
};
use effnet::config::{Activation, EfficientNetConfig, MobileNetV2Config, ModelConfig};
use effnet::ops::affine_act::{affine_act_inference, scale_channels};
use effnet::ops::depthwise::depthwise_conv2d_after_affine_act;
use effnet::ops::{
    affine_act, channel_mean_var, depthwise_conv2d, depthwise_conv2d_affine_act, spatial_mean, Act,
    Pad2d,
};

/// Same tolerance as the CPU parity tests.
const TOL: f64 = 1e-4;

/// timm's logits and feature endpoints on the GPU: TF "same" and symmetric padding, odd non-square
/// input, BN statistics set by a train-mode pass on the GPU, timm safetensors loaded onto the GPU.
#[test]
fn timm_parity_on_gpu() {
    let dev = gpu();
    for case in [
        "tf_efficientnet_b0_full",
        "efficientnet_b0_full",
        "mobilenetv2_100_full",
        "tf_efficientnet_lite0_full",
        "tf_efficientnet_b3_full",
        "tf_efficientnet_b0_w01",
        "efficientnet_b0_w01",
        "tf_efficientnet_b0_w01_odd",
        "efficientnet_b0_w01_odd",
    ] {
        timm_parity(case, &dev, TOL);
    }
}

/// Unfused and BN-folded networks on the GPU give the CPU's unfused logits, at a batch the CPU would
/// split into micro-batches and the GPU runs whole.
#[test]
fn gpu_logits_match_cpu_unfused_and_fused() {
    let dev = gpu();
    for (name, shape) in [
        ("tf_efficientnet_b0", [5, 3, 225, 203]),
        ("efficientnet_b0", [5, 3, 224, 224]),
        ("mobilenetv2_100", [5, 3, 224, 224]),
    ] {
        let cfg = ModelConfig::from_name(name).unwrap();
        let x = formula_tensor("input", &shape);
        let want = cfg
            .build(formula_vb(DType::F32))
            .unwrap()
            .forward_t(&x, false)
            .unwrap();
        let net = cfg.build(formula_vb_on(DType::F32, &dev)).unwrap();
        let xg = x.to_device(&dev).unwrap();
        let got = net.forward_t(&xg, false).unwrap();
        assert!(
            got.device().same_device(&dev),
            "{name}: logits left the GPU"
        );
        assert_close(&got, &want, TOL, &format!("{name} unfused on GPU"));
        let fused = net.fuse().unwrap().forward_t(&xg, false).unwrap();
        assert_close(&fused, &want, TOL, &format!("{name} fused on GPU"));
    }
}

/// Half precision on the GPU stays near the f32 logits (weights and input rounded once; activations
/// rounded after every layer, so the bound is looser than for one depthwise layer below).
#[test]
fn half_precision_on_gpu_tracks_f32() {
    let dev = gpu();
    let cfg = ModelConfig::from_name("tf_efficientnet_b0").unwrap();
    let x = formula_tensor("input", &[2, 3, 224, 224]);
    let want = cfg
        .build(formula_vb(DType::F32))
        .unwrap()
        .forward_t(&x, false)
        .unwrap();
    for (dtype, rel) in [(DType::F16, 2e-2), (DType::BF16, 1e-1)] {
        let net = cfg
            .build(formula_vb_on(dtype, &dev))
            .unwrap()
            .fuse()
            .unwrap();
        let got = net
            .forward_t(&x.to_dtype(dtype).unwrap().to_device(&dev).unwrap(), false)
            .unwrap();
        assert_eq!(got.dtype(), dtype);
        assert_close(&got, &want, rel, &format!("{dtype:?} fused on GPU"));
    }
}

/// Output, input gradient and weight gradient of `sum(depthwise(x, w) * r)`, as f32 on the CPU.
fn depthwise_with_grads(
    x: &Tensor,
    w: &Tensor,
    r: &Tensor,
    stride: (usize, usize),
    pad: Pad2d,
) -> [Tensor; 3] {
    let xv = Var::from_tensor(x).unwrap();
    let wv = Var::from_tensor(w).unwrap();
    let y = depthwise_conv2d(xv.as_tensor(), wv.as_tensor(), stride, pad).unwrap();
    let grads = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = grads.get(xv.as_tensor()).unwrap();
    let dw = grads.get(wv.as_tensor()).unwrap();
    [&y, dx, dw].map(|t| {
        t.to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    })
}

/// The depthwise op on the GPU (forward and both gradients) against the CPU kernel in f32, which
/// `tests/depthwise.rs` checks against candle's grouped convolution: every kernel size and stride the
/// models use, no padding, symmetric padding and TF "same" padding on odd and even inputs, f32, f16
/// and bf16.
#[test]
fn depthwise_on_gpu_matches_cpu_kernel() {
    let dev = gpu();
    let mut seed = 0u64;
    for k in [3, 5, 7] {
        for stride in [1, 2] {
            for (h, w) in [(15, 12), (14, 9)] {
                let tf_same = |n: usize| {
                    let out = n.div_ceil(stride);
                    let total = ((out - 1) * stride + k).saturating_sub(n);
                    (total / 2, total - total / 2)
                };
                let ((top, bottom), (left, right)) = (tf_same(h), tf_same(w));
                let pads = [
                    Pad2d::default(),
                    Pad2d::uniform(k / 2),
                    Pad2d {
                        top,
                        bottom,
                        left,
                        right,
                    },
                ];
                for pad in pads {
                    seed += 1;
                    let x = formula_tensor(&format!("x{seed}"), &[2, 24, h, w]);
                    let wt = formula_tensor(&format!("w{seed}"), &[24, 1, k, k]);
                    let oh = (h + pad.top + pad.bottom - k) / stride + 1;
                    let ow = (w + pad.left + pad.right - k) / stride + 1;
                    let r = formula_tensor(&format!("r{seed}"), &[2, 24, oh, ow]);
                    for (dtype, rel) in [
                        (DType::F32, 1e-5),
                        (DType::F16, 2e-3),
                        (DType::BF16, 1.6e-2),
                    ] {
                        // Half precision is compared with f32 on the same rounded values.
                        let [x, wt, r] = [&x, &wt, &r].map(|t| t.to_dtype(dtype).unwrap());
                        let [xc, wc, rc] = [&x, &wt, &r].map(|t| t.to_dtype(DType::F32).unwrap());
                        let s = (stride, stride);
                        let want = depthwise_with_grads(&xc, &wc, &rc, s, pad);
                        let [xg, wg, rg] = [&x, &wt, &r].map(|t| t.to_device(&dev).unwrap());
                        let got = depthwise_with_grads(&xg, &wg, &rg, s, pad);
                        for (part, (g, e)) in ["output", "grad x", "grad w"]
                            .iter()
                            .zip(got.iter().zip(&want))
                        {
                            let what = format!("k{k} s{stride} {h}x{w} {pad:?} {dtype:?} {part}");
                            assert_close(g, e, rel, &what);
                        }
                    }
                }
            }
        }
    }
}

/// The depthwise op on the GPU for geometries outside the CUDA kernel's specialisations (square
/// k 3/5/7 with equal strides 1 or 2), which run its generic kernel: an even kernel, a rectangular
/// kernel, unequal strides, stride 3, a 1x1 kernel; output and both gradients against the CPU kernel.
#[test]
fn depthwise_generic_geometries_on_gpu_match_cpu_kernel() {
    let dev = gpu();
    for (i, ((kh, kw), stride, pad)) in [
        ((4, 4), (1, 1), Pad2d::uniform(1)),
        (
            (3, 5),
            (1, 1),
            Pad2d {
                top: 1,
                bottom: 1,
                left: 2,
                right: 2,
            },
        ),
        (
            (3, 3),
            (2, 1),
            Pad2d {
                top: 0,
                bottom: 1,
                left: 1,
                right: 1,
            },
        ),
        ((5, 5), (3, 3), Pad2d::uniform(2)),
        ((1, 1), (1, 1), Pad2d::default()),
    ]
    .into_iter()
    .enumerate()
    {
        let (h, w) = (13, 10);
        let x = formula_tensor(&format!("gx{i}"), &[2, 7, h, w]);
        let wt = formula_tensor(&format!("gw{i}"), &[7, 1, kh, kw]);
        let oh = (h + pad.top + pad.bottom - kh) / stride.0 + 1;
        let ow = (w + pad.left + pad.right - kw) / stride.1 + 1;
        let r = formula_tensor(&format!("gr{i}"), &[2, 7, oh, ow]);
        let want = depthwise_with_grads(&x, &wt, &r, stride, pad);
        let [xg, wg, rg] = [&x, &wt, &r].map(|t| t.to_device(&dev).unwrap());
        let got = depthwise_with_grads(&xg, &wg, &rg, stride, pad);
        for (part, (g, e)) in ["output", "grad x", "grad w"]
            .iter()
            .zip(got.iter().zip(&want))
        {
            assert_close(
                g,
                e,
                1e-5,
                &format!("k{kh}x{kw} stride {stride:?} {pad:?} {part}"),
            );
        }
    }
}

/// The fused depthwise + per-channel affine + activation (the CUDA kernel's epilogue) and the in-place
/// affine + activation of inference on the GPU against the CPU (`assert_close` compares in f32 on the CPU), for every activation, f32/f16/bf16 and
/// per-channel and per-sample parameters.
#[test]
fn fused_affine_kernels_on_gpu_match_cpu() {
    let dev = gpu();
    let acts = [
        Act::Identity,
        Act::Net(Activation::Relu),
        Act::Net(Activation::Relu6),
        Act::Net(Activation::Swish),
    ];
    for (i, act) in acts.into_iter().enumerate() {
        for (k, stride, (h, w)) in [(3, 1, (9, 8)), (5, 2, (14, 14)), (4, 2, (11, 7))] {
            let pad = Pad2d::uniform(k / 2);
            let x = (formula_tensor(&format!("fx{i}{k}"), &[2, 6, h, w]) * 4.0).unwrap();
            let wt = formula_tensor(&format!("fw{i}{k}"), &[6, 1, k, k]);
            let scale = formula_tensor(&format!("fs{i}{k}"), &[1, 6]);
            let shift = formula_tensor(&format!("ft{i}{k}"), &[1, 6]);
            for (dtype, rel) in [
                (DType::F32, 1e-5),
                (DType::F16, 2e-3),
                (DType::BF16, 1.6e-2),
            ] {
                let [x, wt] = [&x, &wt].map(|t| t.to_dtype(dtype).unwrap());
                let [xc, wc] = [&x, &wt].map(|t| t.to_dtype(DType::F32).unwrap());
                let s = (stride, stride);
                let want =
                    depthwise_conv2d_affine_act(&xc, &wc, s, pad, &scale, &shift, act).unwrap();
                let [xg, wg, sg, tg] =
                    [&x, &wt, &scale, &shift].map(|t| t.to_device(&dev).unwrap());
                let got = depthwise_conv2d_affine_act(&xg, &wg, s, pad, &sg, &tg, act).unwrap();
                assert_eq!(got.dtype(), dtype);
                let what = format!("depthwise k{k} s{stride} + {act:?}, {dtype:?}");
                assert_close(&got, &want, rel, &what);

                // In place after a fresh tensor, per channel and per sample.
                for rows in [1, 2] {
                    let scale = formula_tensor(&format!("ps{i}{k}{rows}"), &[rows, 6]);
                    let shift = formula_tensor(&format!("pt{i}{k}{rows}"), &[rows, 6]);
                    let want = affine_act(&xc, &scale, &shift, act).unwrap();
                    let fresh = (xg.clone() * 1.0).unwrap();
                    let [sg, tg] = [&scale, &shift].map(|t| t.to_device(&dev).unwrap());
                    let got = affine_act_inference(fresh, &sg, &tg, act).unwrap();
                    assert_eq!(got.dtype(), dtype);
                    let what = format!("affine_act_inference [{rows}, C] + {act:?}, {dtype:?}");
                    assert_close(&got, &want, rel, &what);
                }
            }
        }
    }
}

/// The depthwise kernel with the previous layer's affine + activation applied to its input as it reads
/// it (the fused expansion of MBConv blocks) against the two steps on the CPU: specialised and generic
/// kernels, zero padding kept zero after the input activation, f32/f16/bf16; and no such kernel on the
/// CPU.
#[test]
fn depthwise_after_affine_act_on_gpu_matches_cpu() {
    let dev = gpu();
    let (swish, relu6) = (Act::Net(Activation::Swish), Act::Net(Activation::Relu6));
    for (i, (k, stride, acts)) in [
        (3, 1, (swish, swish)),
        (5, 2, (relu6, Act::Identity)),
        (4, 1, (Act::Net(Activation::Relu), relu6)),
    ]
    .into_iter()
    .enumerate()
    {
        let pad = Pad2d::uniform(k / 2);
        let x = (formula_tensor(&format!("ax{i}"), &[2, 6, 12, 9]) * 4.0).unwrap();
        let wt = formula_tensor(&format!("aw{i}"), &[6, 1, k, k]);
        let p = ["as", "at", "bs", "bt"].map(|n| formula_tensor(&format!("{n}{i}"), &[1, 6]));
        let (input, output) = ((&p[0], &p[1], acts.0), (&p[2], &p[3], acts.1));
        let s = (stride, stride);
        assert!(
            depthwise_conv2d_after_affine_act(&x, &wt, s, pad, input, output)
                .unwrap()
                .is_none(),
            "no fused kernel on the CPU"
        );
        for (dtype, rel) in [
            (DType::F32, 1e-5),
            (DType::F16, 2e-3),
            (DType::BF16, 1.6e-2),
        ] {
            let [x, wt] = [&x, &wt].map(|t| t.to_dtype(dtype).unwrap());
            let [xc, wc] = [&x, &wt].map(|t| t.to_dtype(DType::F32).unwrap());
            let h = affine_act(&xc, input.0, input.1, input.2).unwrap();
            let want =
                depthwise_conv2d_affine_act(&h, &wc, s, pad, output.0, output.1, output.2).unwrap();
            let [xg, wg] = [&x, &wt].map(|t| t.to_device(&dev).unwrap());
            let pg = p.clone().map(|t| t.to_device(&dev).unwrap());
            let got = depthwise_conv2d_after_affine_act(
                &xg,
                &wg,
                s,
                pad,
                (&pg[0], &pg[1], input.2),
                (&pg[2], &pg[3], output.2),
            )
            .unwrap()
            .expect("the CUDA kernel applies");
            assert_eq!(got.dtype(), dtype);
            let what = format!("k{k} s{stride} {acts:?} {dtype:?}");
            assert_close(&got, &want, rel, &what);
        }
    }
}

/// Loss, every parameter's gradient, one SGD step and the BN running statistics of a train-mode step
/// on the GPU equal the CPU's, for a network with smooth activations (swish).
///
/// Not for ReLU6 networks as a whole: their gradient jumps wherever an activation crosses 0 or 6, and
/// over a whole network the rounding of two summation orders moves some elements across. Measured for
/// this MobileNetV2 and input: on the CPU alone, computing the BN statistics with candle's reductions
/// instead of effnet's kernel moves blocks.0.0.bn1.bias[3]'s gradient from -5.38 to -5.28 (2%;
/// central differences give -5.08 to -5.25 for steps of 3e-5 to 1e-3), and the GPU's differs from the
/// CPU's by 2.8% there. MobileNetV2 is checked piece by piece in
/// `network_piece_gradients_on_gpu_match_cpu`.
#[test]
fn training_step_on_gpu_matches_cpu() {
    let dev = gpu();
    let cfg = ModelConfig::EfficientNet(
        EfficientNetConfig::b0()
            .with_width_coefficient(0.25)
            .with_num_classes(5),
    );
    // No dropout or drop-path: their masks are random and differ between devices.
    let cfg = cfg.with_drop_path_rate(0.0).with_dropout_rate(0.0);
    let step = |dev: &Device| {
        let (varmap, net) = trainable_formula_net(&cfg, dev);
        let x = formula_tensor("input", &[4, 3, 64, 48])
            .to_device(dev)
            .unwrap();
        let target = Tensor::new(&[0u32, 1, 2, 3], dev).unwrap();
        let logits = net.forward_t(&x, true).unwrap();
        let loss = loss::cross_entropy(&logits, &target).unwrap();
        let trainable: Vec<_> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
            .map(|(_, v)| v.clone())
            .collect();
        let grads = loss.backward().unwrap();
        let mut named: Vec<(String, Tensor)> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(k, v)| grads.get(v.as_tensor()).map(|g| (k.clone(), g.clone())))
            .collect();
        named.push(("logits".to_string(), logits));
        let mut sgd = SGD::new(trainable, 0.1).unwrap();
        sgd.step(&grads).unwrap();
        // After the step: parameters and BN statistics.
        for (k, v) in varmap.data().lock().unwrap().iter() {
            named.push((format!("{k} after step"), v.as_tensor().clone()));
        }
        named.sort_by(|a, b| a.0.cmp(&b.0));
        (loss, named)
    };
    let (cpu_loss, cpu) = step(&Device::Cpu);
    let (gpu_loss, on_gpu) = step(&dev);
    assert_close(&gpu_loss, &cpu_loss, TOL, "loss");
    assert_eq!(cpu.len(), on_gpu.len(), "same tensors on both devices");
    assert!(cpu.len() > 100, "{} tensors compared", cpu.len());
    // Gradients are sums over the batch and the map: 1e-3 of the largest entry. Every mismatch is
    // listed, so that the pattern points at the layer.
    let failures: Vec<String> = cpu
        .iter()
        .zip(&on_gpu)
        .filter_map(|((name, c), (gname, g))| {
            assert_eq!(name, gname);
            check_close(g, c, 1e-3)
                .err()
                .map(|e| format!("{name}: {e}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} tensors differ:\n{}",
        failures.len(),
        cpu.len(),
        failures.join("\n")
    );
}

type OpFn = fn(&[Tensor]) -> candle_core::Result<Tensor>;

/// The ops a training step is made of, one at a time: output and the gradient of every input on the
/// GPU against the CPU. Every mismatch is listed.
#[test]
fn op_gradients_on_gpu_match_cpu() {
    let dev = gpu();
    let cases: Vec<(&str, Vec<Vec<usize>>, OpFn)> = vec![
        ("silu", vec![vec![2, 8, 5, 6]], |v| v[0].silu()),
        ("sigmoid", vec![vec![2, 8, 1, 1]], |v| {
            candle_nn::ops::sigmoid(&v[0])
        }),
        ("relu6", vec![vec![2, 8, 5, 6]], |v| {
            (&v[0] * 8.0)?.relu()?.minimum(6.0)
        }),
        (
            "affine_act swish, [1, C]",
            vec![vec![2, 8, 5, 6], vec![1, 8], vec![1, 8]],
            |v| affine_act(&v[0], &v[1], &v[2], Act::Net(Activation::Swish)),
        ),
        (
            "affine_act identity, [B, C]",
            vec![vec![2, 8, 5, 6], vec![2, 8], vec![2, 8]],
            |v| affine_act(&v[0], &v[1], &v[2], Act::Identity),
        ),
        ("channel_mean_var", vec![vec![3, 8, 5, 6]], |v| {
            channel_mean_var(&v[0])
        }),
        ("mean over (0, 2, 3)", vec![vec![3, 8, 5, 6]], |v| {
            v[0].mean_keepdim((0, 2, 3))
        }),
        ("mean over (2, 3)", vec![vec![3, 8, 5, 6]], |v| {
            v[0].mean_keepdim((2, 3))
        }),
        ("spatial_mean", vec![vec![3, 8, 5, 6]], |v| {
            spatial_mean(&v[0])
        }),
        ("scale_channels", vec![vec![2, 8, 5, 6], vec![2, 8]], |v| {
            scale_channels(&v[0], &v[1])
        }),
        ("sqr, sqrt, recip", vec![vec![8]], |v| {
            (v[0].sqr()? + 1.0)?.sqrt()?.recip()
        }),
        (
            "broadcast_sub, broadcast_mul",
            vec![vec![3, 8, 5, 6], vec![1, 8, 1, 1]],
            |v| v[0].broadcast_sub(&v[1])?.broadcast_mul(&v[1]),
        ),
        ("stack, get", vec![vec![8], vec![8]], |v| {
            let s = Tensor::stack(&[&v[0], &v[1]], 0)?;
            s.get(0)? * s.get(1)?
        }),
        (
            "matmul, broadcast weight",
            vec![vec![6, 8], vec![3, 8, 30]],
            |v| v[0].broadcast_left(3)?.matmul(&v[1]),
        ),
        (
            "matmul, [B, C] x [C, O]ᵀ",
            vec![vec![4, 8], vec![5, 8]],
            |v| v[0].matmul(&v[1].t()?),
        ),
        // Both axes leave no unread row or column: candle's conv2d backward has one output padding.
        (
            "conv2d k3 s2",
            vec![vec![2, 3, 9, 11], vec![4, 3, 3, 3]],
            |v| v[0].conv2d(&v[1], 0, 2, 1, 1),
        ),
        (
            "conv2d k3 s1 p1",
            vec![vec![2, 3, 9, 8], vec![4, 3, 3, 3]],
            |v| v[0].conv2d(&v[1], 1, 1, 1, 1),
        ),
        ("pad_with_zeros, narrow", vec![vec![2, 3, 9, 8]], |v| {
            v[0].pad_with_zeros(2, 1, 2)?
                .pad_with_zeros(3, 0, 1)?
                .narrow(2, 1, 9)
        }),
        ("silu, then mean over (2, 3)", vec![vec![2, 8, 5, 6]], |v| {
            v[0].silu()?.mean_keepdim((2, 3))
        }),
        (
            "batch-statistics BN, swish, global pool",
            vec![vec![4, 8, 2, 2], vec![8], vec![8]],
            |v| {
                let stats = channel_mean_var(&v[0])?;
                let scale = (&v[1] * (stats.get(1)? + 1e-5)?.sqrt()?.recip()?)?;
                let shift = (&v[2] - (stats.get(0)? * &scale)?)?;
                let (scale, shift) = (scale.reshape((1, 8))?, shift.reshape((1, 8))?);
                affine_act(&v[0], &scale, &shift, Act::Net(Activation::Swish))?.mean((2, 3))
            },
        ),
        ("log_softmax", vec![vec![4, 5]], |v| {
            candle_nn::ops::log_softmax(&v[0], 1)
        }),
        ("cross_entropy", vec![vec![4, 5]], |v| {
            let target = Tensor::new(&[0u32, 1, 2, 3], v[0].device())?;
            loss::cross_entropy(&v[0], &target)
        }),
    ];
    let run = |f: OpFn, shapes: &[Vec<usize>], name: &str, dev: &Device| {
        let vars: Vec<Var> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let t = formula_tensor(&format!("{name}.{i}"), s).to_device(dev)?;
                Var::from_tensor(&t)
            })
            .collect::<candle_core::Result<_>>()?;
        let inputs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&inputs)?;
        with_input_grads(y, &vars, name)
    };
    let mut failures = Vec::new();
    for (name, shapes, f) in cases {
        let (want, got) = match (
            run(f, &shapes, name, &Device::Cpu),
            run(f, &shapes, name, &dev),
        ) {
            (Ok(w), Ok(g)) => (w, g),
            (w, g) => {
                failures.push(format!("{name}: cpu {:?}, gpu {:?}", w.err(), g.err()));
                continue;
            }
        };
        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
            let part = if i == 0 {
                "output".to_string()
            } else {
                format!("grad of input {}", i - 1)
            };
            if let Err(e) = check_close(g, e, TOL) {
                failures.push(format!("{name}, {part}: {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `[y, d(sum(y * r))/d v for v in vars]` with `r` a formula tensor named after `name`.
fn with_input_grads(y: Tensor, vars: &[Var], name: &str) -> candle_core::Result<Vec<Tensor>> {
    let r = formula_tensor(&format!("{name}.r"), y.dims()).to_device(y.device())?;
    let grads = (&y * r)?.sum_all()?.backward()?;
    let mut out = vec![y];
    for v in vars {
        out.push(match grads.get(v.as_tensor()) {
            Some(g) => g.clone(),
            None => v.zeros_like()?,
        });
    }
    Ok(out)
}

/// The pieces of a network in training mode (stem, each block, head convolution, pooling and
/// classifier), each on its own input: output, input gradient and parameter gradients on the GPU
/// against the CPU, for EfficientNet and MobileNetV2 (the two block types, swish and ReLU6). For the
/// swish network also the whole network, through `forward_t` and through the pieces chained by hand.
/// Every mismatch is listed with its piece.
#[test]
fn network_piece_gradients_on_gpu_match_cpu() {
    let dev = gpu();
    let mut failures = Vec::new();
    for (cfg, whole_net) in [
        (
            ModelConfig::EfficientNet(
                EfficientNetConfig::b0()
                    .with_width_coefficient(0.25)
                    .with_num_classes(5),
            ),
            true,
        ),
        (
            ModelConfig::MobileNetV2(MobileNetV2Config::new(0.35).with_num_classes(5)),
            false,
        ),
    ] {
        failures.extend(piece_mismatches(&cfg, whole_net, &dev));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn piece_mismatches(cfg: &ModelConfig, whole_net: bool, dev: &Device) -> Vec<String> {
    let cfg = cfg.clone().with_drop_path_rate(0.0).with_dropout_rate(0.0);
    let build = |dev: &Device| trainable_formula_net(&cfg, dev);
    let (_, cpu_net) = build(&Device::Cpu);
    let nb = cpu_net.blocks().len();
    // Input shape of every piece, from an eval pass on the CPU.
    let mut h = formula_tensor("input", &[4, 3, 64, 48]);
    let whole = h.dims().to_vec();
    let mut shapes = Vec::new();
    for p in 0..nb + 3 {
        shapes.push(h.dims().to_vec());
        if p < nb + 2 {
            h = match p {
                0 => cpu_net.forward_stem_t(&h, false),
                p if p <= nb => cpu_net.blocks()[p - 1].forward_t(&h, false),
                _ => cpu_net.forward_head_conv_t(&h, false),
            }
            .unwrap();
        }
    }
    if whole_net {
        shapes.push(whole.clone());
        shapes.push(whole);
    }
    let run = |dev: &Device, p: usize| -> candle_core::Result<Vec<(String, Tensor)>> {
        let (varmap, net) = build(dev);
        let name = format!("piece{p}");
        // The whole network sees the input of the training-step test.
        let input = if p > nb + 2 { "input" } else { name.as_str() };
        let x = Var::from_tensor(&formula_tensor(input, &shapes[p]).to_device(dev)?)?;
        let y = piece(&net, p, x.as_tensor()).map_err(candle_core::Error::msg)?;
        let params: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut vars = vec![x];
        vars.extend(params.iter().map(|(_, v)| v.clone()));
        let outs = with_input_grads(y, &vars, &name)?;
        let mut names = vec!["output".to_string(), "grad input".to_string()];
        names.extend(params.iter().map(|(k, _)| format!("grad {k}")));
        let mut named: Vec<_> = names.into_iter().zip(outs).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(named)
    };
    let family = match cfg {
        ModelConfig::EfficientNet(_) => "EfficientNet",
        ModelConfig::MobileNetV2(_) => "MobileNetV2",
    };
    let mut failures = Vec::new();
    for p in 0..shapes.len() {
        let what = match p {
            0 => "stem".to_string(),
            p if p <= nb => format!("block {}", p - 1),
            p if p == nb + 1 => "head conv".to_string(),
            p if p == nb + 2 => "pool and classifier".to_string(),
            p if p == nb + 3 => "whole network (forward_t)".to_string(),
            _ => "whole network (pieces chained)".to_string(),
        };
        match (run(&Device::Cpu, p), run(dev, p)) {
            (Ok(want), Ok(got)) => {
                // Not vacuous: the classifier piece must have given the classifier a gradient.
                if p == nb + 2 && !want.iter().any(|(n, _)| n.starts_with("grad classifier")) {
                    failures.push(format!("{family} {what}: no classifier gradient"));
                }
                for ((n, e), (_, g)) in want.iter().zip(&got) {
                    if let Err(err) = check_close(g, e, 1e-4) {
                        failures.push(format!("{family} {what}, {n}: {err}"));
                    }
                }
            }
            (w, g) => failures.push(format!(
                "{family} {what}: cpu {:?}, gpu {:?}",
                w.err(),
                g.err()
            )),
        }
    }
    failures
}

/// Piece `p` of `net` in training mode: 0 the stem, 1..=B the blocks, then the head convolution, the
/// pooling and classifier, the whole network through `forward_t`, and the whole network chained by hand.
fn piece(net: &effnet::Network, p: usize, h: &Tensor) -> anyhow::Result<Tensor> {
    let nb = net.blocks().len();
    match p {
        0 => Ok(net.forward_stem_t(h, true)?),
        p if p <= nb => Ok(net.blocks()[p - 1].forward_t(h, true)?),
        p if p == nb + 1 => Ok(net.forward_head_conv_t(h, true)?),
        p if p == nb + 2 => Ok(net.forward_head_t(h, false, true)?),
        p if p == nb + 3 => Ok(net.forward_t(h, true)?),
        _ => {
            let mut h = net.forward_stem_t(h, true)?;
            for b in net.blocks() {
                h = b.forward_t(&h, true)?;
            }
            Ok(net.forward_head_t(&net.forward_head_conv_t(&h, true)?, false, true)?)
        }
    }
}

/// `cfg` built on `dev` from trainable variables, every tensor (BN statistics included) set from the
/// formula, so that both devices start from the same values.
fn trainable_formula_net(cfg: &ModelConfig, dev: &Device) -> (VarMap, effnet::Network) {
    let varmap = VarMap::new();
    let net = cfg
        .build(VarBuilder::from_varmap(&varmap, DType::F32, dev))
        .unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        var.set(&formula_tensor(name, var.dims()).to_device(dev).unwrap())
            .unwrap();
    }
    (varmap, net)
}
