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
