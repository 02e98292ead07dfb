//! The training loop: augmented mini-batches, warm-up + cosine schedule, per-epoch validation, a
//! history that writes itself as CSV. Progress goes to a callback; the library never prints.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Tensor, D};
use serde::Serialize;

use super::model::TransferModel;
use super::optim::{cross_entropy_smoothed, Optim, OptimizerConfig, WarmupCosine};
use crate::data::{Augment, Batch, ImageList, Preprocess};
use crate::error::{Error, Result};

/// Settings of one training phase.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerConfig,
    /// Linear warm-up length in epochs (may be fractional).
    pub warmup_epochs: f64,
    /// Learning rate at the end of the cosine decay.
    pub min_lr: f64,
    /// Label smoothing of the cross-entropy (0.1 is common for fine-tuning).
    pub label_smoothing: f64,
    /// Seeds the shuffle and the augmentation.
    pub seed: u64,
    /// Training augmentation.
    pub augment: Augment,
    /// Validation preprocessing.
    pub eval: Preprocess,
}

/// What one epoch did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochStats {
    /// Name of the phase (e.g. `head`, `fine-tune`).
    pub phase: String,
    /// 1-based epoch within the phase.
    pub epoch: usize,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Mean training loss (with label smoothing, dropout and augmentation).
    pub train_loss: f64,
    /// Fraction of training images classified right during the epoch.
    pub train_accuracy: f64,
    /// Mean validation cross-entropy (no smoothing).
    pub val_loss: f64,
    /// Fraction of validation images classified right.
    pub val_accuracy: f64,
    /// Training images used.
    pub images: usize,
    /// Training and validation files skipped because they could not be read or decoded.
    pub skipped: usize,
    /// Wall-clock seconds of training (validation excluded).
    pub train_seconds: f64,
    /// Wall-clock seconds of validation.
    pub val_seconds: f64,
}

/// The epochs of a run, in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct History {
    pub epochs: Vec<EpochStats>,
}

impl History {
    /// The history as CSV, one row per epoch, with a header line.
    pub fn to_csv(&self) -> String {
        let mut s = String::from(
            "phase,epoch,lr,train_loss,train_accuracy,val_loss,val_accuracy,images,skipped,\
             train_seconds,val_seconds\n",
        );
        for e in &self.epochs {
            s += &format!(
                "{},{},{:e},{:.6},{:.6},{:.6},{:.6},{},{},{:.3},{:.3}\n",
                e.phase.replace(',', ";"),
                e.epoch,
                e.lr,
                e.train_loss,
                e.train_accuracy,
                e.val_loss,
                e.val_accuracy,
                e.images,
                e.skipped,
                e.train_seconds,
                e.val_seconds
            );
        }
        s
    }

    /// Writes [`Self::to_csv`] to `path`.
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_csv()).map_err(|e| Error::io(path, e))
    }

    /// Validation accuracy of the last epoch (0 without epochs).
    pub fn final_val_accuracy(&self) -> f64 {
        self.epochs.last().map_or(0.0, |e| e.val_accuracy)
    }
}

/// Progress reports of a run.
#[derive(Debug)]
pub enum Event<'a> {
    /// A training step finished.
    Step {
        epoch: usize,
        step: usize,
        steps: usize,
        loss: f64,
        accuracy: f64,
        lr: f64,
        /// Files of this batch that could not be decoded.
        failed: &'a [(PathBuf, Error)],
    },
    /// Validation progress (images done, total).
    Validating { done: usize, total: usize },
    /// An epoch finished.
    Epoch(&'a EpochStats),
}

/// Loss and accuracy over a labelled list.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    pub images: usize,
    /// Files that could not be read or decoded, with the reason.
    pub failed: Vec<(PathBuf, String)>,
}

/// One optimisation step on a batch's logits: smoothed cross-entropy, backward, update. Returns the
/// batch's mean loss and its number of correct top-1 predictions.
pub(crate) fn optimise(
    opt: &mut Optim,
    logits: &Tensor,
    labels: &Tensor,
    label_smoothing: f64,
) -> Result<(f64, usize)> {
    let loss = cross_entropy_smoothed(logits, labels, label_smoothing)?;
    opt.step(&loss.backward()?)?;
    Ok((
        f64::from(loss.to_scalar::<f32>()?),
        correct(logits, labels)?,
    ))
}

/// Number of correct argmax predictions of `logits` against `labels`.
pub(crate) fn correct(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let hits = logits
        .argmax(D::Minus1)?
        .eq(labels)?
        .to_dtype(candle_core::DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok(hits as usize)
}

fn labels_of(batch: &Batch, model: &TransferModel) -> Result<Tensor> {
    Ok(batch.label_tensor()?.to_device(model.device())?)
}

/// Loss (plain cross-entropy) and accuracy of `model` in eval mode over `list`.
pub fn evaluate(
    model: &TransferModel,
    list: &ImageList,
    pre: &Preprocess,
    batch_size: usize,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Evaluation> {
    let (mut loss, mut hits, mut n, mut done) = (0.0, 0usize, 0usize, 0usize);
    let mut failed = Vec::new();
    for batch in list.batches(pre, batch_size)? {
        let batch = batch?;
        done += batch.labels.len() + batch.failed.len();
        failed.extend(batch.failed.iter().map(|(p, e)| (p.clone(), e.to_string())));
        if !batch.labels.is_empty() {
            let x = batch.images.to_device(model.device())?;
            let y = labels_of(&batch, model)?;
            let logits = model.forward_t(&x, false)?;
            let l = cross_entropy_smoothed(&logits, &y, 0.0)?.to_scalar::<f32>()?;
            loss += f64::from(l) * batch.labels.len() as f64;
            hits += correct(&logits, &y)?;
            n += batch.labels.len();
        }
        on_event(&Event::Validating {
            done,
            total: list.len(),
        });
    }
    let frac = |v: f64| if n == 0 { 0.0 } else { v / n as f64 };
    Ok(Evaluation {
        loss: frac(loss),
        accuracy: frac(hits as f64),
        images: n,
        failed,
    })
}

/// The schedule of a run of `epochs` x `steps_per_epoch` steps.
pub(crate) fn schedule(cfg: &TrainConfig, steps_per_epoch: usize) -> WarmupCosine {
    WarmupCosine {
        peak: cfg.optimizer.lr,
        floor: cfg.min_lr,
        warmup_steps: (cfg.warmup_epochs * steps_per_epoch as f64).round() as usize,
        total_steps: cfg.epochs * steps_per_epoch,
    }
}

pub(crate) fn check(cfg: &TrainConfig) -> Result<()> {
    if cfg.epochs == 0 || cfg.batch_size == 0 {
        return Err(Error::InvalidConfig(
            "epochs and batch_size must be at least 1".into(),
        ));
    }
    if !(cfg.warmup_epochs.is_finite() && cfg.warmup_epochs >= 0.0 && cfg.min_lr >= 0.0) {
        return Err(Error::InvalidConfig(format!(
            "warmup_epochs {} and min_lr {} must be non-negative",
            cfg.warmup_epochs, cfg.min_lr
        )));
    }
    Ok(())
}

/// Trains the trainable part of `model` on `train` for `cfg.epochs` epochs, validating on `val`
/// after each. Frozen parts stay bit-identical (see [`TransferModel`]).
pub fn fit(
    model: &mut TransferModel,
    train: &ImageList,
    val: &ImageList,
    cfg: &TrainConfig,
    phase: &str,
    on_event: &mut dyn FnMut(&Event),
) -> Result<History> {
    check(cfg)?;
    if train.is_empty() || val.is_empty() {
        return Err(Error::InvalidInput(
            "training and validation lists must not be empty".into(),
        ));
    }
    let mut opt = Optim::new(model.trainable_vars()?, &cfg.optimizer)?;
    let steps = train.len().div_ceil(cfg.batch_size);
    let sched = schedule(cfg, steps);
    let mut history = History::default();
    let mut global = 0usize;
    for epoch in 0..cfg.epochs {
        let start = Instant::now();
        let (mut loss_sum, mut hits, mut n, mut skipped) = (0.0, 0usize, 0usize, 0usize);
        let batches = train.train_batches(&cfg.augment, cfg.batch_size, cfg.seed, epoch)?;
        for (step, batch) in batches.enumerate() {
            let batch = batch?;
            skipped += batch.failed.len();
            let lr = sched.lr(global);
            global += 1;
            if batch.labels.is_empty() {
                continue;
            }
            opt.set_learning_rate(lr);
            let x = batch.images.to_device(model.device())?;
            let y = labels_of(&batch, model)?;
            let logits = model.forward_t(&x, true)?;
            let (l, h) = optimise(&mut opt, &logits, &y, cfg.label_smoothing)?;
            let b = batch.labels.len();
            loss_sum += l * b as f64;
            hits += h;
            n += b;
            on_event(&Event::Step {
                epoch: epoch + 1,
                step: step + 1,
                steps,
                loss: l,
                accuracy: h as f64 / b as f64,
                lr,
                failed: &batch.failed,
            });
        }
        let train_seconds = start.elapsed().as_secs_f64();
        let vstart = Instant::now();
        let v = evaluate(model, val, &cfg.eval, cfg.batch_size, on_event)?;
        let frac = |x: f64| if n == 0 { 0.0 } else { x / n as f64 };
        let stats = EpochStats {
            phase: phase.to_string(),
            epoch: epoch + 1,
            lr: opt.learning_rate(),
            train_loss: frac(loss_sum),
            train_accuracy: frac(hits as f64),
            val_loss: v.loss,
            val_accuracy: v.accuracy,
            images: n,
            skipped: skipped + v.failed.len(),
            train_seconds,
            val_seconds: vstart.elapsed().as_secs_f64(),
        };
        on_event(&Event::Epoch(&stats));
        history.epochs.push(stats);
    }
    Ok(history)
}
