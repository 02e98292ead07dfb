//! Fine-tune an EfficientNet or MobileNetV2 on a folder of class folders (e.g. Microsoft's
//! `PetImages/{Cat,Dog}`), with the reproduction's recipe or one that works.
//!
//! ```text
//! cargo run --release --example transfer_cats_dogs -- --data PetImages --recipe full
//! cargo run --release --example transfer_cats_dogs -- --data PetImages --recipe seed --model mobilenetv2_100
//! cargo run --release --example transfer_cats_dogs -- --data PetImages --compare --recipe full --epochs 5
//! # a public dataset by name (cats_vs_dogs, cifar10, stanford_dogs), downloaded and unpacked once
//! cargo run --release --example transfer_cats_dogs -- --dataset cats_vs_dogs --recipe full
//! # or a Hugging Face hub dataset by repository id (read from the hub's Parquet files)
//! cargo run --release --example transfer_cats_dogs -- --dataset microsoft/cats_vs_dogs --recipe full
//! # offline: a manifest entry's file, or any weight file with --model
//! cargo run --release --example transfer_cats_dogs -- --data DIR --pretrained tf_efficientnet_lite0.pypi_mli \
//!     --weights lite0.pth
//! ```
//!
//! Recipes (see `effnet::train` and the README's fine-tuning section):
//! - `seed`: the reproduction's — 160 px squashed, phase 1 the classifier only (on features computed
//!   once, `--no-cache` to run the backbone with augmentation), phase 2 "all but the first 100 Keras
//!   layers" (the whole block containing layer 100 and everything after it) with BN frozen (Keras
//!   `training=False`); Adam 1e-3 then 1e-4, constant; flip and ±10° rotation.
//! - `full`: the whole network at the weights' native resolution, SGD Nesterov 0.9 with lr
//!   0.01 x batch / 256 (Kornblith et al.'s scale), warm-up 1 epoch +
//!   cosine, weight decay 1e-4, label smoothing 0.1, BN training with momentum 0.1, drop-path 0.2,
//!   random resized crop (scale 0.25-1), flip, ±10° rotation.
//!
//! Writes `OUT/history.csv`, `OUT/history.png` and `OUT/model.safetensors` + `OUT/model.json`
//! (usable with `classify --weights OUT/model.safetensors`). `--compare` runs EfficientNet-B0 and
//! MobileNetV2 with the same recipe into `OUT/<model>/` and prints a table. With `--json` the last
//! line is a JSON object with `val_accuracy` (a fraction; in `--compare`, that of the first model).

mod common;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Parser, ValueEnum};
use effnet::config::ModelConfig;
use effnet::data::{Augment, ImageList, Interpolation, Preprocess, Resize};
use effnet::eval::best_device;
use effnet::train::{
    block_of_keras_layer, extract_features, fit, fit_head, ConfigOverrides, Event, History,
    ModelCard, OptimizerConfig, OptimizerKind, TrainConfig, Trainable, TransferModel,
};
use effnet::weights::{Manifest, WeightSet};
use indicatif::ProgressBar;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Recipe {
    /// The reproduction: 160 px, head only, then all but the first 100 Keras layers, BN frozen.
    Seed,
    /// The whole network at native resolution (the paper's setting).
    Full,
}

#[derive(Parser)]
#[command(about = "Fine-tune EfficientNet / MobileNetV2 on a folder of class folders")]
struct Args {
    /// Dataset root with one folder per class (e.g. PetImages with Cat/ and Dog/).
    #[arg(long, required_unless_present = "dataset", conflicts_with = "dataset")]
    data: Option<PathBuf>,
    /// A public dataset, downloaded into the effnet cache and unpacked: `cats_vs_dogs`, `cifar10`
    /// (validation on its test split) or `stanford_dogs` from their publishers, or any Hugging Face
    /// hub image-classification dataset by repository id (`microsoft/cats_vs_dogs`, `uoft-cs/cifar10`).
    #[arg(long)]
    dataset: Option<String>,
    /// Architecture (any EfficientNet or MobileNetV2 name effnet knows).
    #[arg(long, default_value = "efficientnet_b0")]
    model: String,
    /// Backbone weight set id (default: the first manifest entry of --model).
    #[arg(long)]
    pretrained: Option<String>,
    /// Local backbone weights: the file of --pretrained, or any format effnet reads (with --model).
    #[arg(long)]
    weights: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Recipe::Full)]
    recipe: Recipe,
    /// Epochs (full; phase 2 of seed). Default 10.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Epochs of phase 1 (seed). Default 10.
    #[arg(long, default_value_t = 10)]
    head_epochs: usize,
    /// Peak learning rate (full: 0.01 x batch / 256; seed: phase 1 (default 0.001), phase 2 gets a
    /// tenth).
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Square input size (default: 160 for seed, the weights' native size for full).
    #[arg(long)]
    image_size: Option<usize>,
    /// Fraction of each class held out for validation (when the data has no test split).
    #[arg(long, default_value_t = 0.2)]
    val_fraction: f64,
    /// Use at most this many images per class (quick runs).
    #[arg(long)]
    max_per_class: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Seed recipe: run phase 1 through the backbone with augmentation instead of cached features.
    #[arg(long)]
    no_cache: bool,
    /// Run EfficientNet-B0 and MobileNetV2 with the same recipe and print a table.
    #[arg(long)]
    compare: bool,
    /// With --compare: local weight files for B0 and MobileNetV2 (their manifest entries'
    /// files, `efficientnet_b0.ra_in1k` and `mobilenetv2_100.ra_in1k`).
    #[arg(long, value_delimiter = ',', value_name = "B0,MNV2")]
    compare_weights: Vec<PathBuf>,
    /// Output folder.
    #[arg(long, default_value = "transfer-out")]
    out: PathBuf,
    #[arg(long)]
    json: bool,
    #[arg(long)]
    cpu: bool,
}

/// One model to train: architecture, backbone entry and file.
struct Job {
    model: String,
    ws: Option<WeightSet>,
    weights: Option<PathBuf>,
    out: PathBuf,
}

struct Outcome {
    model: String,
    params: usize,
    size: usize,
    history: History,
    seconds_per_epoch: f64,
    skipped: usize,
}

fn first_entry(manifest: &Manifest, model: &str) -> Option<WeightSet> {
    manifest.weights.iter().find(|w| w.arch == model).cloned()
}

fn keep_per_class(list: ImageList, n: Option<usize>) -> Result<ImageList> {
    let Some(n) = n else { return Ok(list) };
    let mut seen = vec![0usize; list.classes.len()];
    let samples = list
        .samples
        .into_iter()
        .filter(|s| {
            let c = &mut seen[s.label];
            *c += 1;
            *c <= n
        })
        .collect();
    Ok(ImageList::new(samples, list.classes)?)
}

fn build(job: &Job, args: &Args, classes: &[String], device: &Device) -> Result<TransferModel> {
    let size = args.image_size;
    let full = args.recipe == Recipe::Full;
    let train_overrides = |mut o: ConfigOverrides| {
        if full {
            o.bn_momentum = Some(0.1);
            o.drop_path_rate = Some(0.2);
        }
        o
    };
    let (card, path, source) = match (&job.ws, &job.weights) {
        (Some(ws), w) => {
            let path = match w {
                Some(p) => p.clone(),
                None => common::download(ws)?,
            };
            let mut pre = ws.preprocess();
            let s = size.unwrap_or(if full { ws.input_size } else { 160 });
            pre = pre.with_size(s, s).with_resize_size(None);
            let o = ConfigOverrides {
                padding: Some(ws.padding),
                bn_eps: Some(ws.bn_eps),
                ..Default::default()
            };
            let card = ModelCard::new(&ws.arch, classes.to_vec(), &pre)
                .with_overrides(train_overrides(o))
                .with_backbone(&ws.id);
            (card, path, ws.id.clone())
        }
        (None, Some(p)) => {
            let cfg = ModelConfig::from_name(&job.model)?;
            let s = size.unwrap_or(if full { cfg.resolution() } else { 160 });
            let pre = Preprocess::imagenet(s, 0.875, Interpolation::Bicubic);
            let card = ModelCard::new(&job.model, classes.to_vec(), &pre)
                .with_overrides(train_overrides(ConfigOverrides::default()))
                .with_backbone(p.display().to_string());
            (card, p.clone(), p.display().to_string())
        }
        (None, None) => bail!(
            "no weights for `{}`: give --pretrained ID or --weights PATH",
            job.model
        ),
    };
    let (model, report) = TransferModel::from_backbone(card, &path, device)
        .with_context(|| format!("loading the backbone from {}", path.display()))?;
    if !args.json {
        println!(
            "{}: backbone {source} ({}, {} names), {} classes",
            job.model,
            report.format,
            report.naming,
            classes.len()
        );
    }
    Ok(model)
}

fn progress<'a>(pb: &'a ProgressBar, json: bool) -> impl FnMut(&Event) + 'a {
    move |e: &Event| match e {
        Event::Step {
            epoch,
            step,
            steps,
            loss,
            accuracy,
            lr,
            failed,
        } => {
            if *step == 1 {
                pb.reset();
                pb.set_length(*steps as u64);
            }
            pb.set_position(*step as u64);
            pb.set_message(format!(
                "epoch {epoch} loss {loss:.3} acc {:.1}% lr {lr:.1e}",
                100.0 * accuracy
            ));
            for (p, err) in failed.iter() {
                pb.suspend(|| eprintln!("skipped {}: {err}", p.display()));
            }
        }
        Event::Validating { done, total } => {
            pb.set_message(format!("validating {done}/{total}"));
        }
        Event::Epoch(s) => {
            if !json {
                pb.suspend(|| {
                    println!(
                        "[{}] epoch {:>2}: train loss {:.4} acc {:5.1}% | val loss {:.4} acc {:5.2}% | {:.1}s",
                        s.phase,
                        s.epoch,
                        s.train_loss,
                        100.0 * s.train_accuracy,
                        s.val_loss,
                        100.0 * s.val_accuracy,
                        s.train_seconds + s.val_seconds
                    )
                });
            }
        }
    }
}

fn run_job(job: &Job, args: &Args, train: &ImageList, val: &ImageList) -> Result<Outcome> {
    let device = if args.cpu { Device::Cpu } else { best_device() };
    let mut model = build(job, args, &train.classes, &device)?;
    let mut eval = model.preprocess()?;
    let size = eval.size.0;
    let pb = common::progress_bar(0, "training");
    if args.json {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut on_event = progress(&pb, args.json);
    let mut history = History::default();
    match args.recipe {
        Recipe::Full => {
            model.set_trainable(Trainable::All)?;
            let cfg = TrainConfig {
                epochs: args.epochs,
                batch_size: args.batch_size,
                optimizer: OptimizerConfig {
                    kind: OptimizerKind::sgd_nesterov(),
                    lr: args.lr.unwrap_or(0.01 * args.batch_size as f64 / 256.0),
                    weight_decay: 1e-4,
                },
                warmup_epochs: 1.0,
                min_lr: 0.0,
                label_smoothing: 0.1,
                seed: args.seed,
                augment: Augment::for_eval(&eval, size).with_scale(0.25, 1.0),
                eval,
            };
            history
                .epochs
                .extend(fit(&mut model, train, val, &cfg, "full", &mut on_event)?.epochs);
        }
        Recipe::Seed => {
            // Keras's image_dataset_from_directory: the whole image squashed to size x size.
            eval = eval.with_resize(Resize::Exact).with_resize_size(None);
            eval.crop_pct = 1.0;
            model.set_preprocess(&eval)?;
            let lr = args.lr.unwrap_or(1e-3);
            let phase = |epochs: usize, lr: f64| TrainConfig {
                epochs,
                batch_size: args.batch_size,
                optimizer: OptimizerConfig {
                    kind: OptimizerKind::adamw(),
                    lr,
                    weight_decay: 0.0,
                },
                warmup_epochs: 0.0,
                min_lr: lr,
                label_smoothing: 0.0,
                seed: args.seed,
                augment: Augment::for_eval(&eval, size).with_scale(1.0, 1.0),
                eval,
            };
            model.set_trainable(Trainable::Head)?;
            let h1 = if args.no_cache {
                fit(
                    &mut model,
                    train,
                    val,
                    &phase(args.head_epochs, lr),
                    "head",
                    &mut on_event,
                )?
            } else {
                pb.set_message("computing features");
                let mut p = |d: usize, t: usize| {
                    pb.set_length(t as u64);
                    pb.set_position(d as u64);
                };
                let ft = extract_features(&model, train, &eval, args.batch_size, &mut p)?;
                let fv = extract_features(&model, val, &eval, args.batch_size, &mut p)?;
                if !args.json {
                    pb.suspend(|| {
                        println!(
                            "features of {} images in {:.1}s",
                            ft.len() + fv.len(),
                            ft.seconds + fv.seconds
                        )
                    });
                }
                let cfg = phase(args.head_epochs, lr);
                fit_head(&mut model, &ft, &fv, &cfg, "head", &mut on_event)?
            };
            history.epochs.extend(h1.epochs);
            let from = block_of_keras_layer(model.network().spec(), 100);
            model.set_trainable(Trainable::FromBlock(from))?;
            model.set_freeze_bn(true);
            let cfg = phase(args.epochs, lr / 10.0);
            let h2 = fit(&mut model, train, val, &cfg, "fine-tune", &mut on_event)?;
            history.epochs.extend(h2.epochs);
        }
    }
    pb.finish_and_clear();
    std::fs::create_dir_all(&job.out).with_context(|| job.out.display().to_string())?;
    history.write_csv(&job.out.join("history.csv"))?;
    plot(&history, &job.model, &job.out.join("history.png"))?;
    model.save(&job.out.join("model.safetensors"))?;
    let skipped = history.epochs.iter().map(|e| e.skipped).max().unwrap_or(0);
    // Time per epoch of the last phase (the one that runs the backbone), validation included.
    let last = history
        .epochs
        .last()
        .map(|e| e.phase.clone())
        .unwrap_or_default();
    let times: Vec<f64> = history
        .epochs
        .iter()
        .filter(|e| e.phase == last)
        .map(|e| e.train_seconds + e.val_seconds)
        .collect();
    Ok(Outcome {
        model: job.model.clone(),
        params: model.network().num_params(),
        size,
        seconds_per_epoch: times.iter().sum::<f64>() / times.len().max(1) as f64,
        history,
        skipped,
    })
}

/// Loss and accuracy per epoch, train and validation, in two panels.
fn plot(history: &History, title: &str, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    // The font is compiled in (DejaVu Sans): no system fonts needed.
    let _ =
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    let root = BitMapBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    let x: Vec<f64> = (1..=history.epochs.len()).map(|i| i as f64).collect();
    let n = x.len().max(2) as f64;
    let series = |f: fn(&effnet::train::EpochStats) -> f64| -> Vec<(f64, f64)> {
        x.iter()
            .zip(&history.epochs)
            .map(|(&x, e)| (x, f(e)))
            .collect()
    };
    let loss_max = history
        .epochs
        .iter()
        .flat_map(|e| [e.train_loss, e.val_loss])
        .fold(0.1f64, f64::max);
    type Curve = Vec<(f64, f64)>;
    let specs: [(&str, f64, [Curve; 2]); 2] = [
        (
            "loss",
            loss_max * 1.05,
            [series(|e| e.train_loss), series(|e| e.val_loss)],
        ),
        (
            "accuracy",
            1.0,
            [series(|e| e.train_accuracy), series(|e| e.val_accuracy)],
        ),
    ];
    for (area, (name, ymax, [train, val])) in panels.iter().zip(specs) {
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{title}: {name}"), ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(1f64..n, 0f64..ymax)?;
        chart.configure_mesh().x_desc("epoch").draw()?;
        chart
            .draw_series(LineSeries::new(train, &BLUE))?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(LineSeries::new(val, &RED))?
            .label("validation")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let manifest = Manifest::builtin()?;
    let (root, test_dir) = match (&args.data, &args.dataset) {
        (Some(dir), _) => (dir.clone(), None),
        (None, Some(name)) => {
            let ready = common::download_dataset(name)?;
            (ready.train, ready.test)
        }
        (None, None) => bail!("give --data DIR or --dataset NAME"),
    };
    let read = |dir: &Path| {
        ImageList::class_folders(dir)
            .with_context(|| format!("reading class folders under {}", dir.display()))
            .and_then(|l| keep_per_class(l, args.max_per_class))
    };
    let all = read(&root)?;
    let (train, val) = match &test_dir {
        Some(dir) => (all.clone(), read(dir)?),
        None => all.split(args.val_fraction, args.seed)?,
    };
    if train.is_empty() || val.is_empty() {
        bail!(
            "{} images in {} classes: not enough for a train/validation split",
            all.len(),
            all.classes.len()
        );
    }
    if train.classes != val.classes {
        bail!(
            "training classes {:?} differ from validation classes {:?}",
            train.classes,
            val.classes
        );
    }
    if !args.json {
        println!(
            "{}: {} classes ({}), {} training / {} validation images",
            root.display(),
            all.classes.len(),
            all.classes.join(", "),
            train.len(),
            val.len()
        );
    }
    let jobs: Vec<Job> = if args.compare {
        if !args.compare_weights.is_empty() && args.compare_weights.len() != 2 {
            bail!(
                "--compare-weights takes two files, B0's and MobileNetV2's, separated by a comma; got {}",
                args.compare_weights.len()
            );
        }
        let models = [
            ("efficientnet_b0", "efficientnet_b0.ra_in1k"),
            ("mobilenetv2_100", "mobilenetv2_100.ra_in1k"),
        ];
        models
            .iter()
            .enumerate()
            .map(|(i, (m, id))| {
                Ok(Job {
                    model: m.to_string(),
                    ws: Some(manifest.get(id)?.clone()),
                    weights: args.compare_weights.get(i).cloned(),
                    out: args.out.join(m),
                })
            })
            .collect::<Result<_>>()?
    } else {
        let ws = match &args.pretrained {
            Some(id) => Some(manifest.get(id)?.clone()),
            None if args.weights.is_some() => None,
            None => first_entry(&manifest, &args.model),
        };
        let model = ws.as_ref().map_or(args.model.clone(), |w| w.arch.clone());
        vec![Job {
            model,
            ws,
            weights: args.weights.clone(),
            out: args.out.clone(),
        }]
    };
    let mut outcomes = Vec::new();
    for job in &jobs {
        outcomes.push(run_job(job, &args, &train, &val)?);
    }
    if !args.json {
        println!(
            "\n{:<18} {:>10} {:>6} {:>8} {:>12} {:>10}",
            "model", "params", "px", "epochs", "val acc", "s/epoch"
        );
        for o in &outcomes {
            println!(
                "{:<18} {:>10} {:>6} {:>8} {:>11.2}% {:>10.1}",
                o.model,
                o.params,
                o.size,
                o.history.epochs.len(),
                100.0 * o.history.final_val_accuracy(),
                o.seconds_per_epoch
            );
        }
        println!("outputs in {}", args.out.display());
        let skipped: usize = outcomes.iter().map(|o| o.skipped).max().unwrap_or(0);
        if skipped > 0 {
            println!("{skipped} unreadable image(s) skipped");
        }
    } else {
        let results: Vec<_> = outcomes
            .iter()
            .map(|o| {
                serde_json::json!({
                    "model": o.model,
                    "params": o.params,
                    "image_size": o.size,
                    "epochs": o.history.epochs.len(),
                    "val_accuracy": o.history.final_val_accuracy(),
                    "seconds_per_epoch": o.seconds_per_epoch,
                    "skipped": o.skipped,
                })
            })
            .collect();
        let first = outcomes
            .first()
            .map_or(0.0, |o| o.history.final_val_accuracy());
        println!(
            "{}",
            serde_json::json!({
                "recipe": format!("{:?}", args.recipe).to_lowercase(),
                "train_images": train.len(),
                "val_images": val.len(),
                "val_accuracy": first,
                "results": results,
            })
        );
    }
    Ok(())
}
