//! Shared by the examples: resolving the model and weights from `--pretrained` / `--model` /
//! `--weights`, with a download progress bar.
#![allow(dead_code)]

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use effnet::config::ModelConfig;
use effnet::data::{HubDataset, Interpolation, PreparedDataset, Preprocess, PublicDataset};
use effnet::train::ModelCard;
use effnet::weights::hub::Downloader;
use effnet::weights::{load_network, load_weight_set, LoadOptions, Manifest, WeightSet};
use effnet::Network;
use indicatif::{ProgressBar, ProgressStyle};

/// The model to run, where its weights come from, and the preprocessing they need.
pub struct Loaded {
    pub network: Network,
    /// The manifest entry, when weights come from one (then preprocessing and accuracy come from it).
    pub weight_set: Option<WeightSet>,
    pub preprocess: Preprocess,
    pub source: String,
    /// Class names of a fine-tuned model (from its `model.json`), else ImageNet's.
    pub classes: Option<Vec<String>>,
}

pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Runs `fetch` with a byte progress bar labelled `what`.
fn with_download_bar<T>(
    what: &str,
    fetch: impl FnOnce(&mut dyn FnMut(u64, Option<u64>)) -> Result<T>,
) -> Result<T> {
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(
            "downloading {msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    let out = fetch(&mut |got, total| {
        if let Some(t) = total {
            pb.set_length(t);
        }
        pb.set_position(got);
    });
    pb.finish_and_clear();
    out
}

/// The file of `ws`, downloaded into the cache with a progress bar unless it is there already.
pub fn download(ws: &WeightSet) -> Result<PathBuf> {
    let dl = Downloader::from_env();
    with_download_bar(&ws.id, |progress| {
        dl.fetch(ws, progress).with_context(|| {
            format!(
                "fetching `{}` (cache {}); offline, pass the file with --weights",
                ws.id,
                dl.cache_dir().display()
            )
        })
    })
}

/// A public dataset by catalogue name (`cats_vs_dogs`, `cifar10`, `stanford_dogs`) or Hugging Face
/// hub repository id (`owner/name`), downloaded and unpacked into the cache unless it is there already.
pub fn download_dataset(name: &str) -> Result<PreparedDataset> {
    let dl = Downloader::from_env();
    let catalogue = match name.contains('/') {
        true => None,
        false => Some(PublicDataset::by_name(name)?),
    };
    let ready = with_download_bar(name, |progress| {
        let r = match &catalogue {
            Some(ds) => ds.prepare(&dl, progress),
            None => HubDataset::new(name).prepare(&dl, progress),
        };
        r.with_context(|| {
            format!(
                "preparing dataset `{name}` (cache {}); offline, unpack it yourself and pass its \
                 class folders with --data",
                dl.cache_dir().display()
            )
        })
    })?;
    Ok(ready)
}

/// `--pretrained ID` (manifest entry, downloaded unless `--weights` gives the file),
/// `--model NAME --weights PATH` (any file effnet reads; generic ImageNet preprocessing), or
/// `--weights DIR/model.safetensors` of a fine-tuned model (its `model.json` beside it gives the
/// architecture, classes and preprocessing).
pub fn load(args: &ModelArgs, device: &Device) -> Result<Loaded> {
    let (pretrained, model, weights) = (
        args.pretrained.as_deref(),
        args.model.as_deref(),
        args.weights.as_ref(),
    );
    let opts = LoadOptions {
        device: device.clone(),
        ..LoadOptions::default()
    };
    if let Some(path) = weights {
        let sidecar = ModelCard::sidecar_path(path);
        if sidecar.is_file() {
            let card = ModelCard::read(&sidecar)?;
            let (network, report) = load_network(path, &args.apply(card.config()?), &opts)?;
            return Ok(Loaded {
                network,
                weight_set: None,
                preprocess: card.preprocess()?,
                source: format!(
                    "{} (fine-tuned {}, {}, {} names)",
                    path.display(),
                    card.arch,
                    report.format,
                    report.naming
                ),
                classes: Some(card.classes),
            });
        }
    }
    if let Some(name) = model {
        let Some(path) = weights else {
            bail!("--model {name} needs --weights PATH (or use --pretrained ID)");
        };
        let cfg = args.apply(ModelConfig::from_name(name)?);
        let (network, report) = load_network(path, &cfg, &opts)?;
        let r = cfg.resolution();
        let preprocess = Preprocess::imagenet(r, 0.875, Interpolation::Bicubic);
        let source = format!(
            "{} ({}, {} names)",
            path.display(),
            report.format,
            report.naming
        );
        return Ok(Loaded {
            network,
            weight_set: None,
            preprocess,
            source,
            classes: None,
        });
    }
    let manifest = Manifest::builtin()?;
    let id = pretrained.unwrap_or(&manifest.default);
    let ws = manifest.get(id)?.clone();
    let path = match weights {
        Some(p) => p.clone(),
        None => download(&ws)?,
    };
    let p = if args.has_no_overrides() {
        load_weight_set(&ws, &path, &opts)?
    } else {
        // Explicit numerics override what the entry implies.
        let cfg = args.apply(ws.config()?);
        let (network, report) = load_network(&path, &cfg, &opts)?;
        effnet::weights::Pretrained {
            network,
            weight_set: ws.clone(),
            report,
        }
    };
    let source = format!(
        "{} from {} ({}, {} names)",
        ws.id,
        path.display(),
        p.report.format,
        p.report.naming
    );
    Ok(Loaded {
        preprocess: ws.preprocess(),
        network: p.network,
        weight_set: Some(ws),
        source,
        classes: None,
    })
}

/// The model and its weights, as `classify` and `imagenet_eval` take them.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// Weight set id from weights-manifest.toml (default: the manifest's default).
    #[arg(long)]
    pub pretrained: Option<String>,
    /// Model name, for weights that are not a manifest entry (with --weights).
    #[arg(long)]
    pub model: Option<String>,
    /// Local weight file (skips the download; any supported format, or a fine-tuned
    /// `model.safetensors` with its `model.json`).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Override the padding the weights imply (same | symmetric).
    #[arg(long)]
    pub padding: Option<effnet::config::Padding>,
    /// Override the BN epsilon the weights imply.
    #[arg(long)]
    pub bn_eps: Option<f64>,
    /// Run on the CPU even if a GPU is available.
    #[arg(long)]
    pub cpu: bool,
}

impl ModelArgs {
    /// The CPU with `--cpu`, else the best device available.
    pub fn device(&self) -> Device {
        if self.cpu {
            Device::Cpu
        } else {
            effnet::eval::best_device()
        }
    }

    fn has_no_overrides(&self) -> bool {
        self.padding.is_none() && self.bn_eps.is_none()
    }

    fn apply(&self, mut cfg: ModelConfig) -> ModelConfig {
        if let Some(p) = self.padding {
            cfg = cfg.with_padding(p);
        }
        if let Some(e) = self.bn_eps {
            cfg = cfg.with_bn_eps(e);
        }
        cfg
    }
}
