//! Every weight format and naming scheme, loaded as published through the strict loader, against its own
//! reference implementation's logits (fixtures from the scripts under `tools/`):
//! `<area>/<case>.io.safetensors` holds `input` (what the network body sees), `logits`, and metadata naming
//! the weight file, architecture, widths and the naming scheme.

mod common;

use common::{assert_close, fixture, Fixture};
use effnet::weights::{load_network, LoadOptions};

const TOL: f64 = 1e-4;

fn check(area: &str, case: &str) -> effnet::weights::LoadReport {
    let fx = Fixture::load(&fixture(&format!("{area}/{case}.io.safetensors")));
    let cfg = fx.config();
    assert_eq!(
        cfg.bn_eps(),
        fx.meta_f64("bn_eps"),
        "{case}: BN eps implied by `{}`",
        fx.meta("arch")
    );
    assert_eq!(
        cfg.padding().to_string(),
        fx.meta("padding"),
        "{case}: padding"
    );
    let weights = fixture(&format!("{area}/{}", fx.meta("weights")));
    let (net, report) = load_network(&weights, &cfg, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let shown = report.naming.to_string().to_lowercase().replace(' ', "");
    assert!(
        shown.starts_with(&naming_label(fx.meta("naming"))),
        "{case}: detected {shown}"
    );
    let logits = net.forward_t(fx.tensor("input"), false).unwrap();
    assert_close(
        &logits,
        fx.tensor("logits"),
        TOL,
        &format!("{area}/{case} logits"),
    );
    report
}

/// The fixture's `naming` label in the form of `Naming`'s display (lowercase, no spaces).
fn naming_label(n: &str) -> String {
    match n {
        "hf" => "hftransformers".into(),
        "tf" => "tfofficial".into(),
        "tfslim" => "tf-slim".into(),
        other => other.into(),
    }
}

#[test]
fn keras_efficientnet_b0_h5() {
    let r = check("keras_h5", "keras_b0");
    // The in-model Normalization layer is skipped by an explicit rule, nothing else.
    assert_eq!(r.skipped.len(), 1, "{:?}", r.skipped);
}

#[test]
fn keras_mobilenetv2_h5() {
    check("keras_h5", "keras_mnv2");
}

#[test]
fn lukemelas_legacy_pickle() {
    let r = check("torch_pickle", "lukemelas_b0");
    assert_eq!(r.format, effnet::weights::Format::TorchLegacy);
}

#[test]
fn torchvision_efficientnet_zip() {
    check("torch_pickle", "torchvision_b0");
}

#[test]
fn torchvision_mobilenetv2_zip() {
    check("torch_pickle", "torchvision_mnv2");
}

#[test]
fn hf_transformers_pytorch_model_bin() {
    check("torch_pickle", "hf_b0");
}

/// Official TF checkpoints: EMA values for every variable (BN statistics included), optimizer slots,
/// the step counter and the raw values skipped by rule, nothing left over.
fn check_tf(case: &str) -> effnet::weights::LoadReport {
    let r = check("tf_checkpoint", case);
    assert_eq!(r.format, effnet::weights::Format::TfCheckpoint);
    assert_eq!(r.ema, r.loaded, "{case}: every tensor from its EMA copy");
    assert!(r.raw_without_ema.is_empty());
    for rule in [
        "TF optimizer slot",
        "TF training step counter",
        "raw value superseded by its EMA copy",
    ] {
        assert!(r.skipped.contains_key(rule), "{case}: {:?}", r.skipped);
    }
    r
}

#[test]
fn tf_checkpoint_b0_directory() {
    check_tf("b0");
}

#[test]
fn tf_checkpoint_b1_two_blocks_without_expansion() {
    check_tf("b1");
}

#[test]
fn tf_checkpoint_lite0_release_tarball() {
    check_tf("lite0");
}

#[test]
fn tf_checkpoint_opens_from_prefix_index_and_checkpoint_file() {
    let fx = Fixture::load(&fixture("tf_checkpoint/b0.io.safetensors"));
    let cfg = fx.config();
    let dir = fixture("tf_checkpoint/b0");
    for p in [
        dir.join("model.ckpt"),
        dir.join("model.ckpt.index"),
        dir.join("checkpoint"),
    ] {
        let (net, _) = load_network(&p, &cfg, &LoadOptions::default()).unwrap();
        let logits = net.forward_t(fx.tensor("input"), false).unwrap();
        assert_close(
            &logits,
            fx.tensor("logits"),
            TOL,
            &format!("{}", p.display()),
        );
    }
}

#[test]
fn raw_tf_values_are_not_the_evaluated_model() {
    // Raw (non-EMA) values differ from what the official evaluation restores; loading them is an
    // explicit choice and gives different logits.
    let fx = Fixture::load(&fixture("tf_checkpoint/b0.io.safetensors"));
    let opts = LoadOptions {
        prefer_ema: false,
        ..Default::default()
    };
    let (net, r) = load_network(fixture("tf_checkpoint/b0"), &fx.config(), &opts).unwrap();
    assert_eq!(r.ema, 0);
    assert!(r.skipped.contains_key("EMA copy not requested"));
    let logits = net.forward_t(fx.tensor("input"), false).unwrap();
    let d = (logits - fx.tensor("logits"))
        .unwrap()
        .abs()
        .unwrap()
        .max_keepdim(1)
        .unwrap();
    let d = d
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        d > 1e-2,
        "raw values should differ from EMA ones, max diff {d}"
    );
}

/// TF-slim MobileNetV2 checkpoint (`tools/make_tf_slim_fixture.py`): official `MobilenetV2/...` names,
/// `/ExponentialMovingAverage` copies holding the reference while the raw variables hold noise, a
/// 1x1-conv head of 11 classes with background at 0, and `global_step`.
#[test]
fn tf_slim_mobilenetv2_checkpoint() {
    let r = check("tf_checkpoint", "slim_mnv2");
    assert_eq!(r.format, effnet::weights::Format::TfCheckpoint);
    assert_eq!(r.naming, effnet::weights::Naming::TfSlim);
    assert!(r.dropped_background);
    assert!(!r.dropped_classifier);
    assert_eq!(r.ema, r.loaded, "every tensor from its EMA copy");
    assert!(r.raw_without_ema.is_empty(), "{:?}", r.raw_without_ema);
    // Nothing else in the file: the raw values and the step counter, each by its rule.
    let expected: std::collections::BTreeMap<String, usize> = [
        ("raw value superseded by its EMA copy".to_string(), r.loaded),
        ("TF training step counter".to_string(), 1),
    ]
    .into();
    assert_eq!(r.skipped, expected);
}

#[test]
fn tf_slim_mobilenetv2_keeps_background_on_request() {
    let fx = Fixture::load(&fixture("tf_checkpoint/slim_mnv2.io.safetensors"));
    let cfg = fx
        .config()
        .with_num_classes(fx.meta_usize("num_classes") + 1);
    let opts = LoadOptions {
        keep_background: true,
        ..Default::default()
    };
    let weights = fixture("tf_checkpoint/slim_mnv2");
    let (net, r) = load_network(&weights, &cfg, &opts).unwrap();
    assert!(!r.dropped_background);
    assert_eq!(r.ema, r.loaded);
    let logits = net.forward_t(fx.tensor("input"), false).unwrap();
    assert_eq!(logits.dims(), [1, 11]);
    let classes = logits.narrow(1, 1, 10).unwrap();
    assert_close(&classes, fx.tensor("logits"), TOL, "slim classes 1..=10");
    // Column 0 is the background class's logit, computed by the fixture script's TF-slim forward pass.
    let background = logits.narrow(1, 0, 1).unwrap();
    assert_close(
        &background,
        fx.tensor("background_logits"),
        TOL,
        "slim background logit",
    );
    // Without keep_background the same 11-class config cannot load: the file has 10 + background.
    let Err(err) = load_network(&weights, &cfg, &LoadOptions::default()) else {
        panic!("11 classes loaded although the default drops the background (12 columns needed)");
    };
    assert!(err.to_string().contains("Conv2d_1c_1x1"), "{err}");
}
