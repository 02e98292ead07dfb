//! The README's main command and the `classify`, `flops` and `bench` examples, run as users run them.

mod common;

use std::process::Command;

use common::{example_bin, fixture, lite0_path};

fn run(name: &str, args: &[&str]) -> String {
    let out = Command::new(example_bin(name)).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{name} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn imagenet_eval_on_the_sample_set_with_real_weights() {
    let w = lite0_path();
    let out = run(
        "imagenet_eval",
        &["--weights", w.to_str().unwrap(), "--json", "--cpu"],
    );
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["images"], 50);
    let (top1, top5) = (j["top1"].as_f64().unwrap(), j["top5"].as_f64().unwrap());
    // A ~75% (ImageNet val) model on 50 clean single-object photos.
    assert!((0.7..=1.0).contains(&top1), "top-1 {top1}");
    assert!(top5 >= 0.9, "top-5 {top5}");
    assert_eq!(j["reported_top1"], 75.1);
    assert!(j["preprocessing"].as_str().unwrap().contains("bilinear"));
    // --limit and the text output.
    let text = run(
        "imagenet_eval",
        &["--weights", w.to_str().unwrap(), "--limit", "5", "--cpu"],
    );
    assert!(
        text.contains("on 5 images") && text.contains("reported:"),
        "{text}"
    );
}

#[test]
fn classify_names_real_photos() {
    let w = lite0_path();
    let cat = fixture("data/src/chelsea.png");
    let coffee = fixture("data/src/coffee.png");
    let out = run(
        "classify",
        &[
            "--weights",
            w.to_str().unwrap(),
            "--image",
            cat.to_str().unwrap(),
            "--image",
            coffee.to_str().unwrap(),
            "--top",
            "3",
            "--json",
            "--cpu",
        ],
    );
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let first = |i: usize| lines[i]["top"][0]["index"].as_u64().unwrap();
    assert!((281..=285).contains(&first(0)), "cat: {}", lines[0]);
    assert_eq!(first(1), 967, "espresso: {}", lines[1]);
    assert_eq!(lines[1]["top"][0]["label"], "espresso");
    assert_eq!(lines[0]["top"].as_array().unwrap().len(), 3);
    let p = lines[1]["top"][0]["prob"].as_f64().unwrap();
    assert!(p > 0.3 && p <= 1.0);
}

#[test]
fn classify_round_trips_npy_for_framework_comparisons() {
    let w = lite0_path();
    let dir = tempfile::tempdir().unwrap();
    let (x, l) = (dir.path().join("x.npy"), dir.path().join("logits.npy"));
    let t = candle_core::Tensor::zeros(
        (1, 3, 224, 224),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    t.write_npy(&x).unwrap();
    run(
        "classify",
        &[
            "--weights",
            w.to_str().unwrap(),
            "--input-npy",
            x.to_str().unwrap(),
            "--logits-npy",
            l.to_str().unwrap(),
            "--json",
            "--cpu",
        ],
    );
    let logits = candle_core::Tensor::read_npy(&l).unwrap();
    assert_eq!(logits.dims(), &[1, 1000]);
}

#[test]
fn flops_json_lines() {
    let out = run("flops", &["--json"]);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let b0 = rows
        .iter()
        .find(|r| r["model"] == "b0" && r["resolution"] == 224)
        .unwrap();
    assert_eq!(b0["params"], 5_288_548);
    assert_eq!(b0["macs"], 385_814_752u64);
    // B0 and MobileNetV2 side by side at 160 and 224.
    for r in [160, 224] {
        assert!(rows
            .iter()
            .any(|x| x["model"] == "mobilenetv2_100" && x["resolution"] == r));
        assert!(rows
            .iter()
            .any(|x| x["model"] == "b0" && x["resolution"] == r));
    }
    let one = run("flops", &["--model", "b3", "--resolution", "300", "--json"]);
    let j: serde_json::Value = serde_json::from_str(one.trim()).unwrap();
    assert_eq!(j["params"], 12_233_232);
}

/// `bench --json` reports its timings, and with `--per-block` one positive time per unit: stem, every
/// block of the resolved list, head convolution, pool + classifier.
#[test]
fn bench_json_with_per_block_times() {
    let out = run(
        "bench",
        &[
            "--model",
            "mobilenetv2_050",
            "--resolution",
            "96",
            "--iters",
            "2",
            "--threads",
            "1",
            "--fuse",
            "--per-block",
            "--json",
        ],
    );
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(j["median_ms"].as_f64().unwrap() > 0.0 && j["min_ms"].as_f64().unwrap() > 0.0);
    let units = j["per_block_min_ms"].as_array().unwrap();
    let blocks = effnet::config::ModelConfig::from_name("mobilenetv2_050")
        .unwrap()
        .resolve()
        .unwrap()
        .blocks
        .len();
    assert_eq!(units.len(), blocks + 3, "{units:?}");
    assert_eq!(units[0]["unit"], "stem");
    assert_eq!(units[units.len() - 1]["unit"], "pool + classifier");
    assert!(
        units.iter().all(|u| u["min_ms"].as_f64().unwrap() > 0.0),
        "{units:?}"
    );
}
