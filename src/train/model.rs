//! A network with a pretrained backbone and a new classifier, and the choice of what trains.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::card::ModelCard;
use crate::config::ResolvedNetwork;
use crate::data::Preprocess;
use crate::error::{Error, Result};
use crate::models::Network;
use crate::weights::{load_weights, LoadOptions, LoadReport, WeightSet};

/// Which part of the network trains; everything before it is frozen.
///
/// The network is a sequence: stem, blocks `0..n`, head convolution (`conv_head` + `bn2`),
/// classifier. Freezing is always a prefix of that sequence and whole blocks only (a residual
/// connection spans its block). The classifier always trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trainable {
    /// The classifier only (a fixed-feature model: Keras's `base_model.trainable = False`).
    Head,
    /// The last `n` blocks, the head convolution and the classifier (`n = 0`: head convolution and
    /// classifier).
    LastBlocks(usize),
    /// Every block of the last `n` stages, the head convolution and the classifier.
    LastStages(usize),
    /// Blocks `i..`, the head convolution and the classifier (see
    /// [`super::keras::block_of_keras_layer`] for Keras's "fine-tune from layer `k`").
    FromBlock(usize),
    /// Everything, stem included (the paper's fine-tuning).
    All,
}

impl Trainable {
    /// The first trainable position in the sequence `0 = stem, 1..=n = blocks, n+1 = head
    /// convolution, n+2 = classifier`.
    pub fn first_unit(self, spec: &ResolvedNetwork) -> Result<usize> {
        let n = spec.blocks.len();
        let stages = spec.blocks.last().map_or(0, |b| b.stage + 1);
        Ok(match self {
            Trainable::All => 0,
            Trainable::Head => n + 2,
            Trainable::LastBlocks(k) if k <= n => n - k + 1,
            Trainable::FromBlock(i) if i <= n => i + 1,
            Trainable::LastStages(k) if k <= stages => {
                let first_stage = stages - k;
                spec.blocks
                    .iter()
                    .position(|b| b.stage >= first_stage)
                    .unwrap_or(n)
                    + 1
            }
            other => {
                return Err(Error::InvalidConfig(format!(
                    "{other:?}: the network has {n} blocks in {stages} stages"
                )))
            }
        })
    }
}

/// Canonical-name prefixes of the tensors of position `unit` (see [`Trainable::first_unit`]).
fn unit_prefixes(spec: &ResolvedNetwork, unit: usize) -> Vec<String> {
    let n = spec.blocks.len();
    match unit {
        0 => vec!["conv_stem.".into(), "bn1.".into()],
        u if u <= n => spec
            .blocks
            .get(u - 1)
            .map(|b| vec![format!("{}.", b.name())])
            .unwrap_or_default(),
        u if u == n + 1 => vec!["conv_head.".into(), "bn2.".into()],
        _ => vec!["classifier.".into()],
    }
}

fn is_running_stat(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// A classifier being fine-tuned: the [`Network`], the `VarMap` that owns its tensors, its
/// [`ModelCard`] and what trains.
///
/// [`Self::forward_t`] runs the frozen prefix in eval mode and detaches its output, so no gradient is
/// computed for it and its BN statistics never move; [`Self::trainable_vars`] is what an optimizer
/// gets. With [`Self::set_freeze_bn`], the trainable backbone part also runs in inference mode (BN
/// with running statistics, which stay fixed; no drop-path) while its weights train, as Keras does for
/// `base_model(x, training=False)`; the classifier's dropout still applies.
pub struct TransferModel {
    network: Network,
    varmap: VarMap,
    card: ModelCard,
    trainable: Trainable,
    first_unit: usize,
    freeze_bn: bool,
    device: Device,
}

impl std::fmt::Debug for TransferModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferModel")
            .field("card", &self.card)
            .field("trainable", &self.trainable)
            .field("freeze_bn", &self.freeze_bn)
            .finish_non_exhaustive()
    }
}

/// Puts a zero classifier for `spec` into `varmap` (BiT's choice for a new head, Kolesnikov et al.
/// 2020: the first steps train it from the features without random logits fighting the backbone).
fn zero_classifier(varmap: &VarMap, spec: &ResolvedNetwork, device: &Device) -> Result<()> {
    let mut data = varmap
        .data()
        .lock()
        .map_err(|_| Error::Candle(candle_core::Error::Msg("VarMap lock poisoned".into())))?;
    let (k, c) = (spec.num_classes, spec.head_channels);
    data.insert(
        "classifier.weight".into(),
        Var::zeros((k, c), DType::F32, device)?,
    );
    data.insert("classifier.bias".into(), Var::zeros(k, DType::F32, device)?);
    Ok(())
}

impl TransferModel {
    fn build(card: ModelCard, varmap: VarMap, device: &Device) -> Result<Self> {
        let spec = card.config()?.resolve()?;
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let network = Network::new(&spec, vb)?;
        let mut m = Self {
            network,
            varmap,
            card,
            trainable: Trainable::All,
            first_unit: 0,
            freeze_bn: false,
            device: device.clone(),
        };
        m.set_trainable(Trainable::All)?;
        Ok(m)
    }

    /// A randomly initialised model (training from scratch; tests); the classifier starts at zero.
    pub fn from_scratch(card: ModelCard, device: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        zero_classifier(&varmap, &card.config()?.resolve()?, device)?;
        Self::build(card, varmap, device)
    }

    /// A model whose backbone comes from a weight file in any format the loaders read (strictly: every
    /// backbone tensor must be there) and whose classifier is new, with `card.classes.len()` outputs.
    /// A classifier in the file is left out whatever its width; the new one starts at zero.
    pub fn from_backbone(
        card: ModelCard,
        weights: &Path,
        device: &Device,
    ) -> Result<(Self, LoadReport)> {
        let spec = card.config()?.resolve()?;
        let opts = LoadOptions {
            device: device.clone(),
            drop_mismatched_classifier: true,
            ..LoadOptions::default()
        };
        let mut loaded = match load_weights(weights, &spec, &opts) {
            // A backbone saved without classifier: load it as a feature extractor.
            Err(Error::MissingTensor { canonical, .. }) if canonical.starts_with("classifier.") => {
                let mut features_only = spec.clone();
                features_only.num_classes = 0;
                load_weights(weights, &features_only, &opts)?
            }
            other => other?,
        };
        loaded.tensors.retain(|k, _| !k.starts_with("classifier."));
        let report = loaded.report.clone();
        let varmap = loaded.into_varmap()?;
        zero_classifier(&varmap, &spec, device)?;
        let model = Self::build(card, varmap, device)?;
        Ok((model, report))
    }

    /// [`Self::from_backbone`] for the file of a manifest weight set: architecture, padding, BN eps
    /// and preprocessing come from the entry (at `image_size` if given).
    pub fn from_weight_set(
        ws: &WeightSet,
        weights: &Path,
        classes: Vec<String>,
        image_size: Option<usize>,
        device: &Device,
    ) -> Result<(Self, LoadReport)> {
        let mut pre = ws.preprocess();
        if let Some(s) = image_size {
            pre = pre.with_size(s, s).with_resize_size(None);
        }
        let card = ModelCard::new(&ws.arch, classes, &pre)
            .with_overrides(super::card::ConfigOverrides {
                padding: Some(ws.padding),
                bn_eps: Some(ws.bn_eps),
                ..Default::default()
            })
            .with_backbone(&ws.id);
        Self::from_backbone(card, weights, device)
    }

    /// Loads a model saved by [`Self::save`]: `weights` plus its sidecar
    /// ([`ModelCard::sidecar_path`]). Everything trains ([`Trainable::All`]) until changed.
    pub fn load(weights: &Path, device: &Device) -> Result<Self> {
        let card = ModelCard::read(&ModelCard::sidecar_path(weights))?;
        let spec = card.config()?.resolve()?;
        let opts = LoadOptions {
            device: device.clone(),
            ..LoadOptions::default()
        };
        let loaded = load_weights(weights, &spec, &opts)?;
        Self::build(card, loaded.into_varmap()?, device)
    }

    /// Writes the weights (safetensors, canonical names, BN statistics included) to `weights` and
    /// the sidecar next to it.
    pub fn save(&self, weights: &Path) -> Result<()> {
        if let Some(dir) = weights.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        self.varmap.save(weights)?;
        self.card.write(&ModelCard::sidecar_path(weights))
    }

    /// Chooses what trains.
    pub fn set_trainable(&mut self, t: Trainable) -> Result<()> {
        self.first_unit = t.first_unit(self.network.spec())?;
        self.trainable = t;
        Ok(())
    }

    /// What trains.
    pub fn trainable(&self) -> Trainable {
        self.trainable
    }

    /// Runs the trainable backbone part in inference mode too (see the type docs).
    pub fn set_freeze_bn(&mut self, freeze: bool) {
        self.freeze_bn = freeze;
    }

    /// Whether trainable BN layers keep their running statistics.
    pub fn freeze_bn(&self) -> bool {
        self.freeze_bn
    }

    /// The network.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The card (architecture, classes, preprocessing).
    pub fn card(&self) -> &ModelCard {
        &self.card
    }

    /// Class names by output index.
    pub fn classes(&self) -> &[String] {
        &self.card.classes
    }

    /// The evaluation preprocessing.
    pub fn preprocess(&self) -> Result<Preprocess> {
        self.card.preprocess()
    }

    /// Sets the evaluation preprocessing recorded in the card (what [`Self::save`] writes), e.g. when
    /// training used a different resize than the weight set's.
    pub fn set_preprocess(&mut self, pre: &Preprocess) -> Result<()> {
        pre.validate()?;
        self.card.preprocess = pre.into();
        Ok(())
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every tensor of the model by canonical name (parameters and BN statistics), as the `VarMap`
    /// holds them.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The parameters that train, sorted by name: those of the trainable part, without the running
    /// BN statistics (which are updated by the forward pass, not by an optimizer).
    pub fn trainable_vars(&self) -> Result<Vec<(String, Var)>> {
        let spec = self.network.spec();
        let prefixes: Vec<String> = (self.first_unit..=spec.blocks.len() + 2)
            .flat_map(|u| unit_prefixes(spec, u))
            .collect();
        let data =
            self.varmap.data().lock().map_err(|_| {
                Error::Candle(candle_core::Error::Msg("VarMap lock poisoned".into()))
            })?;
        let mut vars: Vec<(String, Var)> = data
            .iter()
            .filter(|(k, _)| !is_running_stat(k) && prefixes.iter().any(|p| k.starts_with(p)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(vars)
    }

    /// Number of trainable parameters.
    pub fn num_trainable_params(&self) -> Result<usize> {
        Ok(self
            .trainable_vars()?
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum())
    }

    /// Runs positions `units` of the backbone (stem, blocks, head convolution) on `h`.
    fn run_units(&self, h: &Tensor, units: std::ops::Range<usize>, train: bool) -> Result<Tensor> {
        let n = self.network.blocks().len();
        let mut h = h.clone();
        if units.contains(&0) {
            h = self.network.forward_stem_t(&h, train)?;
        }
        let first_block = units.start.max(1) - 1;
        let end_block = units.end.min(n + 1).saturating_sub(1);
        if first_block < end_block {
            h = self
                .network
                .forward_blocks_t(&h, first_block..end_block, train)?;
        }
        if units.contains(&(n + 1)) {
            h = self.network.forward_head_conv_t(&h, train)?;
        }
        Ok(h)
    }

    /// Head-convolution features `[B, C, H', W']`: the frozen prefix in eval mode (detached), the
    /// trainable backbone part in training mode when `train` (unless BN is frozen).
    pub fn forward_features_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let backbone_end = self.network.blocks().len() + 2;
        let split = self.first_unit.min(backbone_end);
        let mut h = self.run_units(x, 0..split, false)?;
        if split > 0 {
            h = h.detach();
        }
        self.run_units(&h, split..backbone_end, train && !self.freeze_bn)
    }

    /// Logits `[B, classes]` for images `[B, 3, H, W]`; `train` enables batch statistics (trainable
    /// part), drop-path and dropout.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let f = self.forward_features_t(x, train)?;
        self.network.forward_head_t(&f, false, train)
    }

    /// Pooled features `[B, C]` of the whole backbone in eval mode, detached (what the classifier
    /// sees; [`super::features`] caches them).
    pub fn pooled_features(&self, x: &Tensor) -> Result<Tensor> {
        let f = self.network.forward_features_t(x, false)?;
        Ok(self.network.forward_head_t(&f, true, false)?.detach())
    }

    /// Logits from pooled features `[B, C]` (dropout when `train`).
    pub fn forward_pooled_t(&self, pooled: &Tensor, train: bool) -> Result<Tensor> {
        let (b, c) = pooled.dims2()?;
        self.network
            .forward_head_t(&pooled.reshape((b, c, 1, 1))?, false, train)
    }
}
