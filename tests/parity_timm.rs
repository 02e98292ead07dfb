//! Numerical parity with timm (fixtures from `tools/make_timm_fixtures.py`): logits and feature
//! endpoints within 1e-4 x max(1, |expected|max).

mod common;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use common::{assert_close, fixture, formula_tensor, Fixture};

const TOL: f64 = 1e-4;
/// `VAR_FLOOR` of tools/make_timm_fixtures.py.
const VAR_FLOOR: f64 = 0.05;

/// Every model tensor from the formula (the VarMap keeps BN statistics updatable and settable).
fn set_formula(varmap: &VarMap) {
    for (name, var) in varmap.data().lock().unwrap().iter() {
        var.set(&formula_tensor(name, var.dims())).unwrap();
    }
}

fn floor_running_var(varmap: &VarMap) {
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if name.ends_with("running_var") {
            var.set(&(var.as_tensor() + VAR_FLOOR).unwrap()).unwrap();
        }
    }
}

fn check(case: &str) {
    let fx = Fixture::load(&fixture(&format!("timm/{case}.safetensors")));
    let formula = fx.meta("weights") == "formula";
    let cfg = if formula {
        // One train-mode pass with momentum 1 sets BN statistics from the input (see the script).
        fx.config()
            .with_bn_momentum(1.0)
            .with_drop_path_rate(0.0)
            .with_dropout_rate(0.0)
    } else {
        fx.config()
    };
    let varmap = VarMap::new();
    let vb = match fx.meta("weights") {
        "formula" => VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        file => {
            let path = fixture(&format!("timm/{file}"));
            // timm safetensors load with no name mapping.
            unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, &Device::Cpu) }
                .unwrap()
        }
    };
    let net = cfg.build(vb).unwrap();
    if formula {
        set_formula(&varmap);
    }
    let shape: Vec<usize> = fx
        .meta("input_shape")
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let x = formula_tensor("input", &shape);
    if formula {
        net.forward_t(&x, true).unwrap();
        floor_running_var(&varmap);
    }
    let logits = net.forward_t(&x, false).unwrap();
    assert_close(&logits, fx.tensor("logits"), TOL, &format!("{case} logits"));
    let endpoints = net.endpoints(&x).unwrap();
    let info = net.feature_info();
    assert_eq!(endpoints.len(), 5, "{case}: five endpoints");
    let mut checked = 0;
    for (f, e) in info.iter().zip(&endpoints) {
        if let Some(expected) = fx.tensors.get(&f.name) {
            assert_close(e, expected, TOL, &format!("{case} {}", f.name));
            checked += 1;
        }
    }
    assert!(checked > 0, "{case}: no endpoint compared");
}

#[test]
fn tf_efficientnet_b0_full_size() {
    check("tf_efficientnet_b0_full");
}

#[test]
fn efficientnet_b0_full_size() {
    check("efficientnet_b0_full");
}

#[test]
fn mobilenetv2_100_full_size() {
    check("mobilenetv2_100_full");
}

#[test]
fn tf_efficientnet_lite0_full_size() {
    check("tf_efficientnet_lite0_full");
}

#[test]
fn tf_efficientnet_b3_full_size_at_300() {
    check("tf_efficientnet_b3_full");
}

#[test]
fn tf_efficientnet_b0_timm_safetensors() {
    check("tf_efficientnet_b0_w01");
}

#[test]
fn efficientnet_b0_timm_safetensors() {
    check("efficientnet_b0_w01");
}

#[test]
fn tf_same_padding_non_square_odd_input() {
    check("tf_efficientnet_b0_w01_odd");
}

#[test]
fn symmetric_padding_non_square_odd_input() {
    check("efficientnet_b0_w01_odd");
}

/// BN folding (`Network::fuse`) keeps the logits of the timm fixtures within the same tolerance.
#[test]
fn fused_networks_keep_parity() {
    for case in ["tf_efficientnet_b0_w01_odd", "efficientnet_b0_w01"] {
        let fx = Fixture::load(&fixture(&format!("timm/{case}.safetensors")));
        let path = fixture(&format!("timm/{}", fx.meta("weights")));
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, &Device::Cpu) }
            .unwrap();
        let net = fx.config().build(vb).unwrap().fuse().unwrap();
        assert!(net.is_fused());
        let shape: Vec<usize> = fx
            .meta("input_shape")
            .split(',')
            .map(|s| s.parse().unwrap())
            .collect();
        let x = formula_tensor("input", &shape);
        let logits = net.forward_t(&x, false).unwrap();
        assert_close(&logits, fx.tensor("logits"), TOL, &format!("fused {case}"));
        assert!(matches!(
            net.forward_t(&x, true),
            Err(effnet::Error::InvalidInput(_))
        ));
    }
}

/// Full-size folded networks agree with the unfused ones (1e-4 of the largest logit): the folded CPU
/// path pools the squeeze-excite input inside the depthwise kernel and applies its gate and the
/// residual inside the projection tiles. Odd, non-square input for TF "same" padding.
#[test]
fn fused_full_size_networks_match_unfused() {
    for (name, shape) in [
        ("tf_efficientnet_b0", [2, 3, 225, 203]),
        ("efficientnet_b0", [3, 3, 224, 224]),
        ("mobilenetv2_100", [2, 3, 224, 224]),
        ("tf_efficientnet_lite0", [1, 3, 224, 224]),
    ] {
        let cfg = effnet::config::ModelConfig::from_name(name).unwrap();
        let net = cfg.build(common::formula_vb(DType::F32)).unwrap();
        let fused = net.fuse().unwrap();
        let x = formula_tensor("input", &shape);
        let want = net.forward_t(&x, false).unwrap();
        let got = fused.forward_t(&x, false).unwrap();
        assert_close(&got, &want, TOL, &format!("fused {name} {shape:?}"));
        // Not vacuous: every sample has logits well away from zero.
        let peak = want
            .abs()
            .unwrap()
            .max(1)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            peak.iter().all(|v| *v > 1e-2),
            "{name}: largest |logit| {peak:?}"
        );
    }
}

/// Large eval batches run in micro-batches (`MICRO_BATCH_BYTES`); the logits are those of the samples
/// run one by one, unfused and fused. A full-size B0 at 224 px keeps 2 images per micro-batch, so 5
/// images split 2 + 2 + 1.
#[test]
fn micro_batched_eval_equals_per_sample_eval() {
    let cfg = effnet::config::ModelConfig::from_name("tf_efficientnet_b0").unwrap();
    let unfused = cfg.build(common::formula_vb(DType::F32)).unwrap();
    let fused = unfused.fuse().unwrap();
    let x = formula_tensor("input", &[5, 3, 224, 224]);
    for net in [unfused, fused] {
        let all = net.forward_t(&x, false).unwrap();
        for i in 0..5 {
            let one = net.forward_t(&x.narrow(0, i, 1).unwrap(), false).unwrap();
            assert_close(
                &all.narrow(0, i, 1).unwrap(),
                &one,
                1e-5,
                &format!("sample {i}, fused {}", net.is_fused()),
            );
        }
    }
}
