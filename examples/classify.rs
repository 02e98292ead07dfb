//! Classify images with any weight set, or compare with another framework through `.npy` files.
//!
//! ```text
//! cargo run --release --example classify -- --image cat.jpg --image coffee.png --top 5
//! cargo run --release --example classify -- --pretrained tf_efficientnet_b0.aa_in1k --image cat.jpg --json
//! cargo run --release --example classify -- --model efficientnet_b0 --weights model.safetensors --image x.jpg
//! # a fine-tuned model (transfer_cats_dogs output): model.json beside it gives classes and preprocessing
//! cargo run --release --example classify -- --weights transfer-out/model.safetensors --image cat.jpg
//! # framework comparison: an already preprocessed NCHW f32 tensor in, raw logits out
//! cargo run --release --example classify -- --input-npy x.npy --logits-npy logits.npy
//! ```
//!
//! With `--json`, one JSON object per image: `{"image", "top": [{"index", "label", "prob"}, ...]}`.
//! `--padding same|symmetric` and `--bn-eps` override what the name or weight set implies.

mod common;

use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use clap::Parser;
use effnet::data::imagenet_class;
use effnet::eval::top_k;

#[derive(Parser)]
#[command(about = "Classify images with an EfficientNet / MobileNetV2 weight set")]
struct Args {
    #[command(flatten)]
    net: common::ModelArgs,
    /// Image files (JPEG, PNG, WebP, GIF, BMP). Repeatable.
    #[arg(long)]
    image: Vec<PathBuf>,
    /// A preprocessed input tensor [N, 3, H, W] (f32 .npy) instead of images.
    #[arg(long)]
    input_npy: Option<PathBuf>,
    /// Write the logits [N, classes] (f32 .npy) here.
    #[arg(long)]
    logits_npy: Option<PathBuf>,
    #[arg(long, default_value_t = 5)]
    top: usize,
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = args.net.device();
    let m = common::load(&args.net, &device)?;
    let (x, names): (Tensor, Vec<String>) = match (&args.input_npy, args.image.is_empty()) {
        (Some(p), true) => {
            let x = Tensor::read_npy(p)?.to_dtype(DType::F32)?;
            let n = x.dim(0)?;
            (x, (0..n).map(|i| format!("{}[{i}]", p.display())).collect())
        }
        (None, false) => (
            m.preprocess.apply_batch(&args.image)?,
            args.image.iter().map(|p| p.display().to_string()).collect(),
        ),
        _ => bail!("give either --image FILE... or --input-npy FILE"),
    };
    if !args.json {
        println!("weights: {}", m.source);
        if args.input_npy.is_none() {
            println!("preprocessing: {}", m.preprocess);
        }
    }
    let logits = m
        .network
        .forward_t(&x.to_device(&device)?.to_dtype(m.network.dtype())?, false)?
        .to_dtype(DType::F32)?
        .to_device(&candle_core::Device::Cpu)?;
    if let Some(p) = &args.logits_npy {
        logits.write_npy(p)?;
    }
    for (name, preds) in names.iter().zip(top_k(&logits, args.top)?) {
        let label = |i: usize| match &m.classes {
            Some(names) => names
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("class {i}")),
            None => imagenet_class(i).map_or_else(|| format!("class {i}"), |c| c.name.to_string()),
        };
        if args.json {
            let top: Vec<_> = preds
                .iter()
                .map(|p| serde_json::json!({"index": p.index, "label": label(p.index), "prob": p.prob}))
                .collect();
            println!("{}", serde_json::json!({"image": name, "top": top}));
        } else {
            println!("{name}");
            for p in &preds {
                println!(
                    "  {:>6.2}%  {:>4}  {}",
                    100.0 * p.prob,
                    p.index,
                    label(p.index)
                );
            }
        }
    }
    Ok(())
}
