//! Evaluation: top-k predictions and top-1/top-5 accuracy of a network over a labelled image list,
//! batched, with the weight set's own preprocessing. The library reports progress through a callback
//! and never prints.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::data::{ImageList, Preprocess};
use crate::error::{Error, Result};
use crate::models::Network;

/// One prediction: class index and softmax probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub index: usize,
    pub prob: f32,
}

/// The `k` most probable classes of each row of `logits` ([N, classes]), best first.
pub fn top_k(logits: &Tensor, k: usize) -> Result<Vec<Vec<Prediction>>> {
    let probs = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
    let rows = probs.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let mut idx: Vec<usize> = (0..row.len()).collect();
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            idx.into_iter()
                .take(k)
                .map(|index| Prediction {
                    index,
                    prob: row[index],
                })
                .collect()
        })
        .collect())
}

/// The prediction for one image of an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageResult {
    pub path: PathBuf,
    pub label: usize,
    /// The five most probable classes, best first.
    pub top5: Vec<Prediction>,
}

/// Accuracy over an image list.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalResult {
    /// Images evaluated (decoded successfully).
    pub images: usize,
    /// Fraction with the label as the most probable class.
    pub top1: f64,
    /// Fraction with the label among the five most probable classes.
    pub top5: f64,
    /// Wall-clock seconds, decoding included.
    pub seconds: f64,
    pub per_image: Vec<ImageResult>,
    /// Images that could not be read or decoded, with the reason.
    pub failed: Vec<(PathBuf, String)>,
}

/// Evaluates `net` on (the first `limit` images of) `list`, `batch_size` images at a time, preprocessed
/// by `preprocess` and run on `device`. `progress(done, total)` is called after each batch.
pub fn evaluate(
    net: &Network,
    list: &ImageList,
    preprocess: &Preprocess,
    batch_size: usize,
    limit: Option<usize>,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalResult> {
    let list = match limit {
        Some(n) if n < list.len() => {
            ImageList::new(list.samples[..n].to_vec(), list.classes.clone())?
        }
        _ => list.clone(),
    };
    if list.is_empty() {
        return Err(Error::InvalidInput("no images to evaluate".into()));
    }
    let total = list.len();
    let start = Instant::now();
    let (mut hit1, mut hit5, mut done) = (0usize, 0usize, 0usize);
    let mut per_image = Vec::with_capacity(total);
    let mut failed = Vec::new();
    for batch in list.batches(preprocess, batch_size)? {
        let batch = batch?;
        failed.extend(batch.failed.iter().map(|(p, e)| (p.clone(), e.to_string())));
        done += batch.labels.len() + batch.failed.len();
        if !batch.labels.is_empty() {
            let x = batch.images.to_device(device)?.to_dtype(net.dtype())?;
            let logits = net.forward_t(&x, false)?;
            for ((preds, &label), path) in top_k(&logits, 5)?
                .into_iter()
                .zip(&batch.labels)
                .zip(&batch.paths)
            {
                hit1 += usize::from(preds.first().is_some_and(|p| p.index == label));
                hit5 += usize::from(preds.iter().any(|p| p.index == label));
                per_image.push(ImageResult {
                    path: path.clone(),
                    label,
                    top5: preds,
                });
            }
        }
        progress(done, total);
    }
    let n = per_image.len();
    let frac = |h: usize| if n == 0 { 0.0 } else { h as f64 / n as f64 };
    Ok(EvalResult {
        images: n,
        top1: frac(hit1),
        top5: frac(hit5),
        seconds: start.elapsed().as_secs_f64(),
        per_image,
        failed,
    })
}

/// The best device compiled in and present: CUDA, then Metal, else the CPU.
pub fn best_device() -> Device {
    if candle_core::utils::cuda_is_available() {
        if let Ok(d) = Device::new_cuda(0) {
            return d;
        }
    }
    if candle_core::utils::metal_is_available() {
        if let Ok(d) = Device::new_metal(0) {
            return d;
        }
    }
    Device::Cpu
}
