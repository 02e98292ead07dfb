//! Frozen-backbone training on cached features: the backbone runs once per image (eval mode, no
//! augmentation) and the classifier then trains on the pooled features for as many epochs as asked,
//! which costs next to nothing. This is the fixed-feature setting (Keras's `trainable = False` with
//! `training=False`; tch-rs's transfer-learning example), exact for a frozen backbone because its
//! output does not depend on the epoch. The features come from the BN-folded copy of the backbone
//! ([`crate::models::Network::fuse`]: the same values up to float rounding, and the fast inference
//! kernels).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};

use super::model::TransferModel;
use super::optim::{cross_entropy_smoothed, Optim};
use super::trainer::{check, correct, optimise, schedule, EpochStats, Event, History, TrainConfig};
use crate::data::{ImageList, Preprocess};
use crate::error::{Error, Result};

/// Pooled backbone features of a list of images, on the CPU.
#[derive(Debug, Clone)]
pub struct FeatureSet {
    /// `[N, C]` `f32`.
    pub features: Tensor,
    /// Label of each row.
    pub labels: Vec<usize>,
    /// Files that could not be read or decoded, with the reason.
    pub failed: Vec<(PathBuf, String)>,
    /// Wall-clock seconds the extraction took.
    pub seconds: f64,
}

impl FeatureSet {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn rows(&self, idx: &[usize]) -> Result<(Tensor, Tensor)> {
        let i: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
        let y: Vec<u32> = idx
            .iter()
            .map(|&i| self.labels.get(i).map(|&l| l as u32))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::InvalidInput("feature row out of range".into()))?;
        let it = Tensor::new(i.as_slice(), self.features.device())?;
        Ok((
            self.features.index_select(&it, 0)?,
            Tensor::new(y.as_slice(), &Device::Cpu)?,
        ))
    }
}

/// Runs the whole backbone of `model` in eval mode over `list` with `pre`, `batch_size` images at a
/// time, and keeps the pooled features. `progress(done, total)` after each batch.
pub fn extract_features(
    model: &TransferModel,
    list: &ImageList,
    pre: &Preprocess,
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<FeatureSet> {
    let start = Instant::now();
    // The backbone is frozen here: its BN-folded copy gives the same features faster.
    let backbone = model.network().fuse()?;
    let (mut rows, mut labels, mut failed, mut done) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for batch in list.batches(pre, batch_size)? {
        let batch = batch?;
        done += batch.labels.len() + batch.failed.len();
        failed.extend(batch.failed.iter().map(|(p, e)| (p.clone(), e.to_string())));
        if !batch.labels.is_empty() {
            let x = batch.images.to_device(model.device())?;
            let f = backbone.forward_features(&x)?;
            let pooled = backbone.forward_head(&f, true)?.detach();
            rows.push(pooled.to_device(&Device::Cpu)?);
            labels.extend_from_slice(&batch.labels);
        }
        progress(done, list.len());
    }
    let features = if rows.is_empty() {
        Tensor::zeros(
            (0, model.network().num_features()),
            candle_core::DType::F32,
            &Device::Cpu,
        )?
    } else {
        Tensor::cat(&rows, 0)?
    };
    Ok(FeatureSet {
        features,
        labels,
        failed,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn eval_features(model: &TransferModel, set: &FeatureSet) -> Result<(f64, f64)> {
    if set.is_empty() {
        return Ok((0.0, 0.0));
    }
    let x = set.features.to_device(model.device())?;
    let y = Tensor::new(
        set.labels.iter().map(|&l| l as u32).collect::<Vec<_>>(),
        model.device(),
    )?;
    let logits = model.forward_pooled_t(&x, false)?;
    let loss = cross_entropy_smoothed(&logits, &y, 0.0)?.to_scalar::<f32>()?;
    let hits = correct(&logits, &y)?;
    Ok((f64::from(loss), hits as f64 / set.len() as f64))
}

/// Trains the classifier of `model` (only it, whatever [`TransferModel::trainable`] says) on cached
/// features, validating on `val` after each epoch. `cfg.augment` and `cfg.eval` are not used: the
/// features were computed once.
pub fn fit_head(
    model: &mut TransferModel,
    train: &FeatureSet,
    val: &FeatureSet,
    cfg: &TrainConfig,
    phase: &str,
    on_event: &mut dyn FnMut(&Event),
) -> Result<History> {
    check(cfg)?;
    if train.is_empty() || val.is_empty() {
        return Err(Error::InvalidInput(
            "training and validation features must not be empty".into(),
        ));
    }
    let head: Vec<_> = model
        .trainable_vars()?
        .into_iter()
        .filter(|(k, _)| k.starts_with("classifier."))
        .collect();
    let mut opt = Optim::new(head, &cfg.optimizer)?;
    let steps = train.len().div_ceil(cfg.batch_size);
    let sched = schedule(cfg, steps);
    let mut history = History::default();
    let mut global = 0;
    for epoch in 0..cfg.epochs {
        let start = Instant::now();
        let mut order: Vec<usize> = (0..train.len()).collect();
        let mut rng = crate::data::AugmentRng::new(cfg.seed, epoch as u64, u64::MAX);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below_or_eq(i));
        }
        let (mut loss_sum, mut hits) = (0.0, 0usize);
        for (step, idx) in order.chunks(cfg.batch_size).enumerate() {
            let lr = sched.lr(global);
            global += 1;
            opt.set_learning_rate(lr);
            let (x, y) = train.rows(idx)?;
            let (x, y) = (x.to_device(model.device())?, y.to_device(model.device())?);
            let logits = model.forward_pooled_t(&x, true)?;
            let (l, h) = optimise(&mut opt, &logits, &y, cfg.label_smoothing)?;
            loss_sum += l * idx.len() as f64;
            hits += h;
            on_event(&Event::Step {
                epoch: epoch + 1,
                step: step + 1,
                steps,
                loss: l,
                accuracy: h as f64 / idx.len() as f64,
                lr,
                failed: &[],
            });
        }
        let train_seconds = start.elapsed().as_secs_f64();
        let vstart = Instant::now();
        let (val_loss, val_accuracy) = eval_features(model, val)?;
        let n = train.len() as f64;
        let stats = EpochStats {
            phase: phase.to_string(),
            epoch: epoch + 1,
            lr: opt.learning_rate(),
            train_loss: loss_sum / n,
            train_accuracy: hits as f64 / n,
            val_loss,
            val_accuracy,
            images: train.len(),
            skipped: train.failed.len() + val.failed.len(),
            train_seconds,
            val_seconds: vstart.elapsed().as_secs_f64(),
        };
        on_event(&Event::Epoch(&stats));
        history.epochs.push(stats);
    }
    Ok(history)
}
