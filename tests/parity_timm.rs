//! Numerical parity with timm (fixtures from `tools/make_timm_fixtures.py`): logits and feature
//! endpoints within 1e-4 x max(1, |expected|max).

mod common;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use common::{assert_close, fixture, formula_tensor, timm_parity, Fixture};

const TOL: f64 = 1e-4;

fn check(case: &str) {
    timm_parity(case, &Device::Cpu, TOL);
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
        let x = formula_tensor("input", &common::fixture_input_shape(&fx));
        let logits = net.forward_t(&x, false).unwrap();
        assert_close(&logits, fx.tensor("logits"), TOL, &format!("fused {case}"));
        assert!(matches!(
            net.forward_t(&x, true),
            Err(effnet::Error::InvalidInput(_))
        ));
    }
}

/// Full-size folded networks agree with the unfused ones (1e-4 of the largest logit): the folded CPU
/// path expands inside the depthwise kernel's tasks (in bands of rows on the 112-pixel maps), pools
/// the squeeze-excite input there too, and applies its gate and the residual inside the projection
/// tiles. Odd, non-square input for TF "same" padding.
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

/// A fused network pools each chunk and runs the classifier once on the whole batch: at 64 px a B0
/// micro-batch holds 32 images, so 40 images split 32 + 8 through the first two blocks and run as one
/// chunk from there, and the classifier sees 40 rows (a matrix product per block of weight rows, where
/// one image takes the matrix-vector path). The logits are those of single images, and those of the
/// unfused network.
#[test]
fn fused_eval_of_a_large_batch_equals_per_sample_eval() {
    let cfg = effnet::config::ModelConfig::from_name("tf_efficientnet_b0").unwrap();
    let unfused = cfg.build(common::formula_vb(DType::F32)).unwrap();
    let fused = unfused.fuse().unwrap();
    let x = formula_tensor("input", &[40, 3, 64, 64]);
    let all = fused.forward_t(&x, false).unwrap();
    assert_eq!(all.dims(), [40, 1000]);
    for i in [0, 17, 30, 31, 39] {
        let one = fused.forward_t(&x.narrow(0, i, 1).unwrap(), false).unwrap();
        assert_close(
            &all.narrow(0, i, 1).unwrap(),
            &one,
            1e-5,
            &format!("sample {i}"),
        );
    }
    let reference = unfused.forward_t(&x, false).unwrap();
    assert_close(&all, &reference, 1e-4, "fused vs unfused");
}

/// Large eval batches run in micro-batches and chunks (`MICRO_BATCH_BYTES`); the logits are those of
/// the samples run one by one, unfused and fused. A full-size B0 at 224 px keeps 2 images per
/// micro-batch, so 5 images split 2 + 2 + 1 through the first two blocks, and run as one chunk of 5
/// from the third.
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
