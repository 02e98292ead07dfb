//! Fine-tuning: a pretrained backbone with a new classifier, a choice of what trains, optimizers,
//! a schedule, the training loop, cached-feature head training, and saving the result.
//!
//! ```no_run
//! use effnet::data::{Augment, ImageList};
//! use effnet::train::{fit, OptimizerConfig, OptimizerKind, TrainConfig, Trainable, TransferModel};
//!
//! # fn main() -> effnet::Result<()> {
//! let device = candle_core::Device::Cpu;
//! let data = ImageList::class_folders("PetImages")?;
//! let (train, val) = data.split(0.2, 0)?;
//! let ws = effnet::weights::weight_set("efficientnet_b0.ra_in1k")?;
//! let (mut model, _) = TransferModel::from_weight_set(
//!     &ws, "efficientnet_b0.safetensors".as_ref(), data.classes.clone(), None, &device)?;
//! model.set_trainable(Trainable::All)?;
//! let eval = model.preprocess()?;
//! let cfg = TrainConfig {
//!     epochs: 10,
//!     batch_size: 32,
//!     optimizer: OptimizerConfig { kind: OptimizerKind::sgd_nesterov(), lr: 0.01, weight_decay: 1e-4 },
//!     warmup_epochs: 1.0,
//!     min_lr: 0.0,
//!     label_smoothing: 0.1,
//!     seed: 0,
//!     augment: Augment::for_eval(&eval, 224),
//!     eval,
//! };
//! let history = fit(&mut model, &train, &val, &cfg, "fine-tune", &mut |_| {})?;
//! model.save("out/model.safetensors".as_ref())?; // and out/model.json
//! # Ok(()) }
//! ```
//!
//! ## What trains, and what "frozen" means
//! [`Trainable`] picks a suffix of `stem → blocks → head convolution → classifier`: the classifier
//! only, the last N blocks, the last N stages, blocks from an index on, or everything. The frozen
//! prefix runs in eval mode and its output is detached, so candle computes no gradient for it, BN
//! running statistics in it never move, and its values are bit-identical after training; the
//! optimizer only receives [`TransferModel::trainable_vars`].
//!
//! ## Train/eval behaviour
//! In training mode, BN of the trainable part normalises with batch statistics and updates its
//! running statistics; drop-path (per-block rate `drop_path_rate * i / n`) and classifier dropout are
//! active. In eval mode (validation, [`TransferModel::forward_t`] with `train = false`) BN uses the
//! running statistics and drop-path and dropout are the identity.
//! [`TransferModel::set_freeze_bn`] keeps the trainable backbone in inference mode while its weights
//! train (Keras `base_model(x, training=False)`, the reproduction's setting).
//!
//! ## BN momentum conventions
//! effnet stores BN momentum in the **PyTorch convention**: the weight of the new batch statistic,
//! `running = (1 - momentum) * running + momentum * batch`. TensorFlow/Keras give the *decay* of the
//! old value instead: TF's `momentum = 0.99` (EfficientNet's `batch_norm_momentum`) is PyTorch's and
//! effnet's `0.01`; PyTorch's default `0.1` is TF's `0.9`. Names with the TF convention (`tf_*`)
//! default to 0.01, PyTorch-trained ones to 0.1; set it with
//! [`crate::config::ModelConfig::with_bn_momentum`] or [`card::ConfigOverrides::bn_momentum`].
//! For a short fine-tuning run on a small data set, 0.01 moves the running statistics too slowly to
//! follow the new data (≈ 100 steps per e-fold); 0.1 is the usual choice.
//!
//! ## Optimizers and schedule
//! [`Optim`] wraps candle-nn's AdamW or effnet's [`Sgd`] (momentum, Nesterov, weight decay), with no
//! weight decay on BN parameters and biases; [`WarmupCosine`] sets the learning rate per step;
//! [`cross_entropy_smoothed`] is the label-smoothed loss.
//!
//! ## Cached features
//! [`extract_features`] + [`fit_head`] train the classifier on pooled features computed once
//! (fast on CPU: one backbone pass per image for the whole run).

pub mod card;
pub mod features;
pub mod keras;
pub mod model;
pub mod optim;
pub mod trainer;

pub use card::{ConfigOverrides, ModelCard};
pub use features::{extract_features, fit_head, FeatureSet};
pub use keras::{block_of_keras_layer, keras_block_starts};
pub use model::{Trainable, TransferModel};
pub use optim::{
    cross_entropy_smoothed, Optim, OptimizerConfig, OptimizerKind, ParamsSgd, Sgd, WarmupCosine,
};
pub use trainer::{evaluate, fit, EpochStats, Evaluation, Event, History, TrainConfig};
