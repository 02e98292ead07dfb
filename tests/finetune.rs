//! Fine-tuning on data generated here (three visually distinct synthetic classes written as PNGs)
//! and, with the real Lite0 weights, on a small real-photo task (tests/fixtures/train/gcompris4,
//! built by tools/make_transfer_set.py).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use effnet::config::ModelConfig;
use effnet::data::{Augment, ImageList, Interpolation, Preprocess};
use effnet::train::{
    evaluate, extract_features, fit, fit_head, ConfigOverrides, EpochStats, ModelCard,
    OptimizerConfig, OptimizerKind, TrainConfig, Trainable, TransferModel,
};
use image::{Rgb, RgbImage};

/// Input size: at 32 px the last feature map is 1x1 and train-mode BN over a batch of 16 single
/// pixels is too noisy for a network trained from random weights.
const SIZE: usize = 48;

/// Tiny deterministic generator for the synthetic images.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
}

/// Class 0: reddish with vertical stripes; 1: greenish with horizontal stripes; 2: bluish
/// checkerboard. Random brightness, stripe period and noise per image.
fn synthetic(class: usize, rng: &mut Lcg) -> RgbImage {
    let period = 4 + rng.next() % 5;
    let bright = 120 + rng.next() % 100;
    RgbImage::from_fn(40, 40, |x, y| {
        let on = match class {
            0 => (x / period).is_multiple_of(2),
            1 => (y / period).is_multiple_of(2),
            _ => ((x / period) + (y / period)).is_multiple_of(2),
        };
        let v = if on { bright } else { bright / 3 };
        let noise = |r: &mut Lcg| (r.next() % 40) as i32 - 20;
        let mut px = [30i32, 30, 30];
        px[class] = v as i32;
        let c = |i: usize, r: &mut Lcg| (px[i] + noise(r)).clamp(0, 255) as u8;
        Rgb([c(0, rng), c(1, rng), c(2, rng)])
    })
}

/// `per_class` images of each of the three classes under `dir/{red,green,blue}/`.
fn write_dataset(dir: &Path, per_class: usize) -> ImageList {
    let mut rng = Lcg(42);
    for (c, name) in ["red", "green", "blue"].iter().enumerate() {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..per_class {
            synthetic(c, &mut rng)
                .save(d.join(format!("{i:03}.png")))
                .unwrap();
        }
    }
    ImageList::class_folders(dir).unwrap()
}

fn eval_pre() -> Preprocess {
    Preprocess::imagenet(SIZE, 1.0, Interpolation::Bilinear)
}

/// EfficientNet-B0 at width 0.25, depth 0.5 (10 blocks), for three classes.
fn card(classes: &[String]) -> ModelCard {
    ModelCard::new("efficientnet_b0", classes.to_vec(), &eval_pre()).with_overrides(
        ConfigOverrides {
            width: Some(0.25),
            depth: Some(0.5),
            // Trained from random weights on 54 images: no drop-path, BN statistics that follow fast.
            bn_momentum: Some(0.2),
            drop_path_rate: Some(0.0),
            // candle's CPU dropout is not seedable: without it the tests are deterministic.
            dropout_rate: Some(0.0),
            ..Default::default()
        },
    )
}

/// A "pretrained" backbone: a randomly initialised small B0 with a 1000-class head, saved as a timm
/// safetensors file (the loader must drop the head and keep everything else).
fn backbone_file(dir: &Path) -> PathBuf {
    let cfg = card(&["x".into()])
        .overrides
        .apply(ModelConfig::from_name("efficientnet_b0").unwrap())
        .with_num_classes(1000);
    let vm = VarMap::new();
    cfg.build(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))
        .unwrap();
    reseed(&vm, 5);
    let path = dir.join("backbone.safetensors");
    vm.save(&path).unwrap();
    path
}

/// Replaces every weight of rank >= 2 (initialised by candle's unseeded RNG) by seeded normal
/// values of the same RMS, so the runs are reproducible.
fn reseed(vm: &VarMap, seed: u64) {
    let mut rng = Lcg(seed);
    let mut uniform = || (f64::from(rng.next()) + 1.0) / (f64::from(u32::MAX) + 2.0);
    let data = vm.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for k in names {
        let v = &data[k];
        if v.rank() < 2 {
            continue;
        }
        let t = v.as_tensor();
        // The scale of effnet's own init (He-normal over fan-out; uniform 1/sqrt(classes) for the
        // classifier), from the shape alone: the random values candle drew are all replaced.
        let rms = match *t.dims() {
            [o, _, kh, kw] => {
                let fan_out = if k.contains("conv_dw") {
                    kh * kw
                } else {
                    o * kh * kw
                };
                (2.0 / fan_out as f64).sqrt()
            }
            [classes, _] => 1.0 / (3.0 * classes as f64).sqrt(),
            _ => unreachable!("{k}: rank {}", t.rank()),
        };
        let vals: Vec<f32> = (0..t.elem_count())
            .map(|_| {
                let (u1, u2) = (uniform(), uniform());
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                (z * rms) as f32
            })
            .collect();
        v.set(&Tensor::from_vec(vals, t.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
}

fn train_cfg(epochs: usize, lr: f64) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 16,
        optimizer: OptimizerConfig {
            kind: OptimizerKind::adamw(),
            lr,
            weight_decay: 1e-4,
        },
        warmup_epochs: 0.5,
        min_lr: lr * 0.05,
        label_smoothing: 0.1,
        seed: 3,
        augment: Augment::for_eval(&eval_pre(), SIZE).with_scale(0.5, 1.0),
        eval: eval_pre(),
    }
}

fn snapshot(vm: &VarMap) -> HashMap<String, Vec<f32>> {
    vm.data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
            )
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn loss_falls_accuracy_reaches_95_percent_and_the_saved_model_reloads() {
    let tmp = tempfile::tempdir().unwrap();
    let list = write_dataset(&tmp.path().join("data"), 40);
    let (train, val) = list.split(0.25, 1).unwrap();
    let (mut model, report) = TransferModel::from_backbone(
        card(&list.classes),
        &backbone_file(tmp.path()),
        &Device::Cpu,
    )
    .unwrap();
    assert!(report.dropped_classifier, "the 1000-class head is left out");
    model.set_trainable(Trainable::All).unwrap();
    let cfg = train_cfg(10, 5e-3);
    let mut steps = Vec::new();
    let h = fit(&mut model, &train, &val, &cfg, "all", &mut |e| {
        if let effnet::train::Event::Step { loss, .. } = e {
            steps.push(*loss);
        }
    })
    .unwrap();
    let e: &[EpochStats] = &h.epochs;
    assert_eq!(e.len(), 10);
    assert!(e[9].train_loss < 0.6 * e[0].train_loss, "{:#?}", e);
    assert_eq!(steps.len(), 10 * 6);
    assert!(h.final_val_accuracy() >= 0.95, "{:#?}", e);
    let csv = h.to_csv();
    assert_eq!(csv.lines().count(), 11);
    assert!(csv.starts_with("phase,epoch,lr,train_loss"));

    // Save, reload, same predictions (bit for bit: same weights, same ops).
    let path = tmp.path().join("out/model.safetensors");
    model.save(&path).unwrap();
    assert!(tmp.path().join("out/model.json").is_file());
    let back = TransferModel::load(&path, &Device::Cpu).unwrap();
    assert_eq!(back.classes(), model.classes());
    assert_eq!(back.preprocess().unwrap(), eval_pre());
    let x = eval_pre()
        .apply_batch(&val.samples.iter().map(|s| &s.path).collect::<Vec<_>>())
        .unwrap();
    let a = model
        .forward_t(&x, false)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let b = back.forward_t(&x, false).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(a, b);
    let r = evaluate(&back, &val, &eval_pre(), 8, &mut |_| {}).unwrap();
    assert!((r.accuracy - h.final_val_accuracy()).abs() < 1e-9);

    // The classify example reads the sidecar: class names and preprocessing.
    let img = &val.samples[0].path;
    let out = std::process::Command::new(common::example_bin("classify"))
        .args([
            "--weights",
            path.to_str().unwrap(),
            "--image",
            img.to_str().unwrap(),
        ])
        .args(["--top", "1", "--json", "--cpu"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = &list.classes[val.samples[0].label];
    assert_eq!(j["top"][0]["label"].as_str(), Some(want.as_str()), "{j}");
}

#[test]
fn frozen_parameters_and_bn_statistics_stay_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let list = write_dataset(&tmp.path().join("data"), 8);
    let (train, val) = list.split(0.25, 1).unwrap();
    let file = backbone_file(tmp.path());
    for (trainable, freeze_bn) in [
        (Trainable::LastBlocks(3), false),
        (Trainable::LastStages(1), true),
        (Trainable::Head, false),
    ] {
        let (mut model, _) =
            TransferModel::from_backbone(card(&list.classes), &file, &Device::Cpu).unwrap();
        model.set_trainable(trainable).unwrap();
        model.set_freeze_bn(freeze_bn);
        let trainable_names: Vec<String> = model
            .trainable_vars()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let spec = model.network().spec().clone();
        let n = spec.blocks.len();
        let first_block = match trainable {
            Trainable::LastBlocks(k) => n - k,
            Trainable::LastStages(_) => spec.blocks.iter().position(|b| b.stage == 6).unwrap(),
            _ => n + 1,
        };
        let trains = |name: &str| {
            if name.starts_with("classifier.") {
                return true;
            }
            if name.starts_with("conv_head.") || name.starts_with("bn2.") {
                return first_block <= n;
            }
            spec.blocks
                .iter()
                .any(|b| b.index >= first_block && name.starts_with(&format!("{}.", b.name())))
        };
        for k in &trainable_names {
            assert!(trains(k), "{trainable:?}: {k} must be frozen");
        }

        // No gradient reaches a frozen variable.
        let x = eval_pre().apply_batch(&[&train.samples[0].path]).unwrap();
        let y = Tensor::new(&[train.samples[0].label as u32], &Device::Cpu).unwrap();
        let loss = candle_nn::loss::cross_entropy(&model.forward_t(&x, true).unwrap(), &y).unwrap();
        let grads = loss.backward().unwrap();
        for (k, v) in model.varmap().data().lock().unwrap().iter() {
            let running = k.ends_with("running_mean") || k.ends_with("running_var");
            let has = grads.get(v.as_tensor()).is_some();
            assert_eq!(has, trains(k) && !running, "{trainable:?}: gradient of {k}");
        }

        let before = snapshot(model.varmap());
        fit(
            &mut model,
            &train,
            &val,
            &train_cfg(2, 1e-2),
            "t",
            &mut |_| {},
        )
        .unwrap();
        let after = snapshot(model.varmap());
        assert_eq!(before.len(), after.len());
        for (k, v) in &before {
            let same = bits(v) == bits(&after[k]);
            let running = k.ends_with("running_mean") || k.ends_with("running_var");
            if !trains(k) || (running && freeze_bn) {
                assert!(same, "{trainable:?}: frozen {k} changed");
            } else if k.ends_with("running_mean") || k.ends_with(".weight") {
                assert!(!same, "{trainable:?}: trainable {k} did not change");
            }
        }
    }
}

#[test]
fn cached_features_train_the_head_only() {
    let tmp = tempfile::tempdir().unwrap();
    let list = write_dataset(&tmp.path().join("data"), 12);
    let (train, val) = list.split(0.25, 1).unwrap();
    let (mut model, _) = TransferModel::from_backbone(
        card(&list.classes),
        &backbone_file(tmp.path()),
        &Device::Cpu,
    )
    .unwrap();
    let before = snapshot(model.varmap());
    let ft = extract_features(&model, &train, &eval_pre(), 8, &mut |_, _| {}).unwrap();
    let fv = extract_features(&model, &val, &eval_pre(), 8, &mut |_, _| {}).unwrap();
    assert_eq!(
        ft.features.dims(),
        &[train.len(), model.network().num_features()]
    );
    let h = fit_head(
        &mut model,
        &ft,
        &fv,
        &train_cfg(30, 1e-2),
        "head",
        &mut |_| {},
    )
    .unwrap();
    assert!(h.epochs[29].train_loss < h.epochs[0].train_loss);
    let after = snapshot(model.varmap());
    for (k, v) in &before {
        assert_eq!(
            bits(v) == bits(&after[k]),
            !k.starts_with("classifier."),
            "{k}"
        );
    }
    // The cached path and the full forward pass agree.
    let r = evaluate(&model, &val, &eval_pre(), 8, &mut |_| {}).unwrap();
    assert!((r.accuracy - h.final_val_accuracy()).abs() < 1e-9);
}

#[test]
fn augmented_batches_are_seeded_and_corrupt_files_are_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    write_dataset(&dir, 6);
    // As in Microsoft's PetImages: a truncated JPEG, an empty file, and text named .jpg.
    let mut jpeg = Vec::new();
    synthetic(0, &mut Lcg(1))
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    std::fs::write(dir.join("red/broken.jpg"), &jpeg[..jpeg.len() / 3]).unwrap();
    std::fs::write(dir.join("green/empty.jpg"), b"").unwrap();
    std::fs::write(dir.join("blue/notes.jpg"), b"not an image").unwrap();
    let list = ImageList::class_folders(&dir).unwrap();
    assert_eq!(list.len(), 21);
    let aug = Augment::for_eval(&eval_pre(), SIZE);
    let collect = |epoch: usize, seed: u64| {
        let mut images = Vec::new();
        let mut failed = 0;
        for b in list.train_batches(&aug, 5, seed, epoch).unwrap() {
            let b = b.unwrap();
            failed += b.failed.len();
            images.push((
                b.labels.clone(),
                b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            ));
        }
        (images, failed)
    };
    let (a, failed) = collect(0, 9);
    assert_eq!(failed, 3);
    assert_eq!(a.iter().map(|b| b.0.len()).sum::<usize>(), 18);
    assert_eq!(collect(0, 9).0, a, "same seed and epoch, same batches");
    assert_ne!(
        collect(1, 9).0,
        a,
        "another epoch reshuffles and re-augments"
    );
    assert_ne!(collect(0, 10).0, a, "another seed");

    // Training goes on and counts them.
    let (train, val) = list.split(0.34, 2).unwrap();
    let (mut model, _) = TransferModel::from_backbone(
        card(&list.classes),
        &backbone_file(tmp.path()),
        &Device::Cpu,
    )
    .unwrap();
    let h = fit(
        &mut model,
        &train,
        &val,
        &train_cfg(1, 1e-3),
        "t",
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(h.epochs[0].skipped, 3);
    let bad_in_train = train.samples.iter().filter(|s| !is_ok(&s.path)).count();
    assert_eq!(h.epochs[0].images, train.len() - bad_in_train);
}

fn is_ok(p: &Path) -> bool {
    effnet::data::load_rgb(p).is_ok()
}

#[test]
fn real_lite0_backbone_head_on_cached_features_classifies_real_photos() {
    let ws = effnet::weights::weight_set(common::LITE0_ID).unwrap();
    let root = common::fixture("train/gcompris4");
    let list = ImageList::class_folders(&root).unwrap();
    assert_eq!(list.classes, ["fishes", "monuments", "renewable", "tools"]);
    let (train, val) = list.split(0.3, 0).unwrap();
    // The weight set's architecture, numerics and preprocessing; no dropout, so the run is
    // deterministic (candle's CPU dropout is not seedable).
    let card = ModelCard::new(&ws.arch, list.classes.clone(), &ws.preprocess()).with_overrides(
        ConfigOverrides {
            padding: Some(ws.padding),
            bn_eps: Some(ws.bn_eps),
            dropout_rate: Some(0.0),
            ..Default::default()
        },
    );
    let (mut model, report) =
        TransferModel::from_backbone(card, &common::lite0_path(), &Device::Cpu).unwrap();
    assert!(report.dropped_classifier);
    let pre = model.preprocess().unwrap();
    assert_eq!(pre, ws.preprocess());
    let ft = extract_features(&model, &train, &pre, 16, &mut |_, _| {}).unwrap();
    let fv = extract_features(&model, &val, &pre, 16, &mut |_, _| {}).unwrap();
    assert!(ft.failed.is_empty() && fv.failed.is_empty());
    let cfg = train_cfg(40, 1e-2);
    let h = fit_head(&mut model, &ft, &fv, &cfg, "head", &mut |_| {}).unwrap();
    let acc = h.final_val_accuracy();
    eprintln!(
        "gcompris4: {} train / {} val images, features {:.1}s, val accuracy {:.3}",
        ft.len(),
        fv.len(),
        ft.seconds + fv.seconds,
        acc
    );
    assert!(acc >= 0.9, "{:#?}", h.epochs.last());
}

#[test]
fn transfer_example_runs_end_to_end_with_real_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let w = common::lite0_path();
    let data = common::fixture("train/gcompris4");
    let args = [
        "--data",
        data.to_str().unwrap(),
        "--pretrained",
        common::LITE0_ID,
        "--weights",
        w.to_str().unwrap(),
        "--recipe",
        "seed",
        "--head-epochs",
        "3",
        "--epochs",
        "1",
        "--image-size",
        "64",
        "--max-per-class",
        "6",
        "--val-fraction",
        "0.34",
        "--batch-size",
        "8",
        "--out",
        out.to_str().unwrap(),
        "--json",
        "--cpu",
    ];
    let run = std::process::Command::new(common::example_bin("transfer_cats_dogs"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8(run.stdout).unwrap();
    let last = stdout.lines().last().unwrap();
    let j: serde_json::Value = serde_json::from_str(last).unwrap();
    let acc = j["val_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{j}");
    assert_eq!(j["train_images"], 16);
    assert_eq!(j["results"][0]["epochs"], 4);
    // History: header + 3 head epochs + 1 fine-tune epoch; a PNG plot; the model and its card.
    let csv = std::fs::read_to_string(out.join("history.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(
        csv.lines().nth(4).unwrap().starts_with("fine-tune,1,"),
        "{csv}"
    );
    let png = image::open(out.join("history.png")).unwrap();
    assert_eq!((png.width(), png.height()), (1000, 420));
    let card = ModelCard::read(&out.join("model.json")).unwrap();
    assert_eq!(card.classes, ["fishes", "monuments", "renewable", "tools"]);
    assert_eq!(card.preprocess().unwrap().size, (64, 64));
    let back = TransferModel::load(&out.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(back.network().num_classes(), 4);
}

#[test]
fn compare_mode_runs_b0_and_mobilenetv2_with_one_recipe() {
    // Full-size timm-named backbones (fresh random weights saved as safetensors): the comparison's
    // plumbing, not its accuracy, is under test here.
    let tmp = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for name in ["efficientnet_b0", "mobilenetv2_100"] {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let cfg = ModelConfig::from_name(name).unwrap();
        effnet::Network::new(&cfg.resolve().unwrap(), vb).unwrap();
        let path = tmp.path().join(format!("{name}.safetensors"));
        varmap.save(&path).unwrap();
        files.push(path.display().to_string());
    }
    let out = tmp.path().join("out");
    let data = common::fixture("train/gcompris4");
    let weights = files.join(",");
    let args = [
        "--data",
        data.to_str().unwrap(),
        "--compare",
        "--compare-weights",
        &weights,
        "--recipe",
        "seed",
        "--head-epochs",
        "2",
        "--epochs",
        "1",
        "--image-size",
        "64",
        "--max-per-class",
        "4",
        "--val-fraction",
        "0.5",
        "--batch-size",
        "8",
        "--out",
        out.to_str().unwrap(),
        "--cpu",
    ];
    let run = std::process::Command::new(common::example_bin("transfer_cats_dogs"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // The comparison table: one row per model with its parameter count.
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("efficientnet_b0 ") || l.starts_with("mobilenetv2_100 "))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(rows[0].contains(" 4012672 "), "{}", rows[0]); // B0 with a 4-class head
    assert!(rows[1].contains(" 2228996 "), "{}", rows[1]); // MobileNetV2 1.0 with a 4-class head
    for m in ["efficientnet_b0", "mobilenetv2_100"] {
        let csv = std::fs::read_to_string(out.join(m).join("history.csv")).unwrap();
        assert_eq!(csv.lines().count(), 4, "{m}: {csv}");
        let card = ModelCard::read(&out.join(m).join("model.json")).unwrap();
        assert_eq!(card.classes.len(), 4);
        assert!(out.join(m).join("history.png").is_file());
    }
}
