//! Top-1 / top-5 of a weight set on ImageNet-style data, with the weight set's own preprocessing.
//!
//! ```text
//! # default: the manifest's default weights (downloaded once) on the 50 committed sample photos
//! cargo run --release --example imagenet_eval
//! # offline, with a local copy of the same weights
//! cargo run --release --example imagenet_eval -- --weights efficientnet-lite0-57934424.pth
//! # any manifest entry; ImageNet val (synset folders) or ImageNetV2 (folders 0..999)
//! cargo run --release --example imagenet_eval -- --pretrained tf_efficientnet_b0.aa_in1k --data val/
//! cargo run --release --example imagenet_eval -- --pretrained mobilenetv2_100.ra_in1k \
//!     --data imagenetv2-matched-frequency-format-val --json
//! # a flat folder with a `file,label` ground-truth file (label = index or synset id)
//! cargo run --release --example imagenet_eval -- --data val_flat/ --ground-truth val.csv
//! ```
//!
//! Data layouts (`--data DIR`): a folder with `labels.csv` (`file,label,...`, the sample set);
//! ImageNet synset folders (`n01440764/…`); ImageNetV2 folders `0`…`999`, whose names are parsed as
//! integers (never string-sorted); or a flat folder plus `--ground-truth FILE`.

mod common;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Parser;
use effnet::data::{imagenet_class, ImageList};
use effnet::eval::evaluate;

#[derive(Parser)]
#[command(about = "Evaluate an EfficientNet / MobileNetV2 weight set on ImageNet-style data")]
struct Args {
    #[command(flatten)]
    net: common::ModelArgs,
    /// Image folder (default: the committed sample set, assets/samples).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Ground-truth file for a flat image folder (`file,label` per line).
    #[arg(long)]
    ground_truth: Option<PathBuf>,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Evaluate only the first N images.
    #[arg(long)]
    limit: Option<usize>,
    /// Write one CSV row per image (path, label, top-5) to this file.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Print one JSON object (images, top1, top5 as fractions, images_per_s, preprocessing, ...).
    #[arg(long)]
    json: bool,
}

fn dataset(args: &Args) -> Result<(ImageList, String)> {
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples");
    let dir = args.data.clone().unwrap_or(default);
    if let Some(gt) = &args.ground_truth {
        return Ok((
            ImageList::ground_truth_file(&dir, gt)?,
            format!("{} + {}", dir.display(), gt.display()),
        ));
    }
    let csv = dir.join("labels.csv");
    if csv.is_file() {
        return Ok((
            ImageList::ground_truth_file(&dir, &csv)?,
            format!("{} (labels.csv)", dir.display()),
        ));
    }
    let mut names = std::fs::read_dir(&dir)?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned());
    match names.next() {
        Some(n) if n.parse::<usize>().is_ok() => {
            Ok((ImageList::imagenet_v2(&dir)?, format!("{} (ImageNetV2 layout)", dir.display())))
        }
        Some(n) if n.starts_with('n') && n.len() == 9 => {
            Ok((ImageList::imagenet_folders(&dir)?, format!("{} (synset folders)", dir.display())))
        }
        _ => bail!(
            "{}: no labels.csv, no synset or ImageNetV2 class folders; pass --ground-truth for a flat folder",
            dir.display()
        ),
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = args.net.device();
    let m = common::load(&args.net, &device)?;
    let (list, data_desc) = dataset(&args)?;
    let total = args.limit.map_or(list.len(), |l| l.min(list.len()));
    if !args.json {
        println!("weights:       {}", m.source);
        println!("data:          {data_desc}, {total} images");
        println!("preprocessing: {}", m.preprocess);
        println!("device:        {device:?}");
    }
    // Evaluation only: batch norm folded into the convolutions (same logits up to float rounding).
    let network = m.network.fuse()?;
    let pb = common::progress_bar(total as u64, "evaluating");
    let r = evaluate(
        &network,
        &list,
        &m.preprocess,
        args.batch,
        args.limit,
        &device,
        &mut |done, _| pb.set_position(done as u64),
    )?;
    pb.finish_and_clear();
    let ips = r.images as f64 / r.seconds.max(1e-9);
    if let Some(path) = &args.csv {
        let mut out = String::from("path,label,top1,top2,top3,top4,top5\n");
        for im in &r.per_image {
            let top: Vec<String> = im.top5.iter().map(|p| p.index.to_string()).collect();
            out.push_str(&format!(
                "{},{},{}\n",
                im.path.display(),
                im.label,
                top.join(",")
            ));
        }
        std::fs::write(path, out)?;
    }
    let ws = m.weight_set.as_ref();
    if args.json {
        let obj = serde_json::json!({
            "weights": m.source, "data": data_desc, "images": r.images,
            "top1": r.top1, "top5": r.top5, "images_per_s": ips, "seconds": r.seconds,
            "failed": r.failed.len(), "preprocessing": m.preprocess.to_string(),
            "reported_top1": ws.and_then(|w| w.top1), "reported_top5": ws.and_then(|w| w.top5),
            "reported_imagenet_v2_top1": ws.and_then(|w| w.imagenet_v2_top1),
        });
        println!("{obj}");
        return Ok(());
    }
    for (path, e) in &r.failed {
        println!("skipped {}: {e}", path.display());
    }
    println!(
        "top-1 {:.2}%  top-5 {:.2}%  on {} images  ({ips:.1} images/s)",
        100.0 * r.top1,
        100.0 * r.top5,
        r.images
    );
    if let Some(w) = ws {
        let v2 = w
            .imagenet_v2_top1
            .map_or(String::new(), |v| format!(", ImageNetV2-MF {v:.2}%"));
        match w.top1 {
            Some(t) => println!(
                "reported:     ImageNet val top-1 {t:.2}%{v2} ({}). Small or easy sets (like the 50 samples) score higher.",
                w.accuracy_source
            ),
            None => println!("reported:     no accuracy published for {}", w.id),
        }
    }
    let wrong: Vec<String> = r
        .per_image
        .iter()
        .filter(|im| im.top5.first().map(|p| p.index) != Some(im.label))
        .take(10)
        .map(|im| {
            let name = |i: usize| imagenet_class(i).map_or("?", |c| c.name);
            let got = im.top5.first().map_or(0, |p| p.index);
            format!(
                "  {}: {} predicted as {}",
                im.path
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                name(im.label),
                name(got)
            )
        })
        .collect();
    if !wrong.is_empty() && r.images <= 100 {
        println!("top-1 misses:\n{}", wrong.join("\n"));
    }
    Ok(())
}
