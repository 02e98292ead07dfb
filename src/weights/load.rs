//! Strict loading: every canonical tensor found exactly once, every file tensor used or skipped by an
//! explicit rule, shapes checked in the source's own layout before any transform.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::canonical::{self, Role};
use super::file::{self, Format, TensorFile};
use super::naming::Naming;
use crate::config::{ModelConfig, ResolvedNetwork};
use crate::error::{Error, Result};
use crate::models::Network;

const EMA_SUFFIX: &str = "/ExponentialMovingAverage";

/// How to load a weight file.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Element type of the loaded tensors (f32, f16 or bf16).
    pub dtype: DType,
    pub device: Device,
    /// Naming scheme; detected from the tensor names when `None`.
    pub naming: Option<Naming>,
    /// Take TF `…/ExponentialMovingAverage` shadow values when present (what the official evaluation
    /// does; raw values typically lose ~3 points of top-1).
    pub prefer_ema: bool,
    /// TF-slim: keep the background logit (the model then needs 1001 classes). Dropped by default.
    pub keep_background: bool,
    /// If the file's classifier has a different class count than the model, leave it out instead of
    /// failing (for fine-tuning on new classes). The only relaxation of strictness.
    pub drop_mismatched_classifier: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            naming: None,
            prefer_ema: true,
            keep_background: false,
            drop_mismatched_classifier: false,
        }
    }
}

/// What a load found and did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub file: String,
    pub format: Format,
    pub naming: Naming,
    /// Prefix stripped from every key (e.g. `module.` or `state_dict.`), if any.
    pub prefix: String,
    /// Canonical tensors loaded.
    pub loaded: usize,
    /// Tensors taken from their `ExponentialMovingAverage` copy.
    pub ema: usize,
    /// Canonical names taken from raw values although the source keeps EMA copies elsewhere.
    pub raw_without_ema: Vec<String>,
    /// Source tensors ignored, by rule: (rule, count).
    pub skipped: BTreeMap<String, usize>,
    /// Non-tensor entries of the file (PyTorch checkpoints), ignored.
    pub other_keys: Vec<String>,
    /// The background logit of a TF-slim classifier was dropped.
    pub dropped_background: bool,
    /// The classifier was left out because its class count differs (on request).
    pub dropped_classifier: bool,
}

/// Canonical tensors loaded from a file, with the report.
#[derive(Debug)]
pub struct LoadedWeights {
    pub tensors: HashMap<String, Tensor>,
    pub report: LoadReport,
}

impl LoadedWeights {
    /// A read-only VarBuilder over the loaded tensors (inference: plain tensors, no gradient tracking).
    pub fn var_builder(&self) -> VarBuilder<'static> {
        let dev = self
            .tensors
            .values()
            .next()
            .map_or(Device::Cpu, |t| t.device().clone());
        let dtype = self
            .tensors
            .values()
            .next()
            .map_or(DType::F32, |t| t.dtype());
        VarBuilder::from_tensors(self.tensors.clone(), dtype, &dev)
    }

    /// A trainable `VarMap` holding the loaded tensors; layers missing from it (a dropped classifier)
    /// are created and initialised when a model is built from it.
    pub fn into_varmap(self) -> Result<VarMap> {
        let vm = VarMap::new();
        {
            let mut data = vm.data().lock().map_err(|_| {
                Error::Candle(candle_core::Error::Msg("VarMap lock poisoned".into()))
            })?;
            for (k, t) in self.tensors {
                data.insert(k, Var::from_tensor(&t)?);
            }
        }
        Ok(vm)
    }
}

/// Anchor tensor per naming scheme (the stem convolution), used to detect the scheme and a key prefix.
fn detect_naming(keys: &[&str]) -> Option<(Naming, String)> {
    let torch: [(&str, Naming); 4] = [
        (
            "efficientnet.embeddings.convolution.weight",
            Naming::HfTransformers,
        ),
        ("_conv_stem.weight", Naming::Lukemelas),
        ("conv_stem.weight", Naming::Timm),
        ("features.0.0.weight", Naming::Torchvision),
    ];
    for (anchor, naming) in torch {
        for k in keys {
            if let Some(prefix) = k.strip_suffix(anchor) {
                if prefix.is_empty() || prefix.ends_with('.') {
                    return Some((naming, prefix.to_string()));
                }
            }
        }
    }
    for k in keys {
        let k = k.strip_suffix(EMA_SUFFIX).unwrap_or(k);
        if let Some(scope) = k.strip_suffix("/stem/conv2d/kernel") {
            let bn = if keys
                .iter()
                .any(|k| k.starts_with(&format!("{scope}/stem/tpu_batch_normalization/")))
            {
                "tpu_batch_normalization"
            } else {
                "batch_normalization"
            };
            let naming = Naming::TfOfficial {
                scope: scope.to_string(),
                bn: bn.to_string(),
            };
            return Some((naming, String::new()));
        }
        if k == "MobilenetV2/Conv/weights" {
            return Some((Naming::TfSlim, String::new()));
        }
        if k == "stem_conv/kernel:0" || k == "Conv1/kernel:0" {
            return Some((Naming::Keras, String::new()));
        }
    }
    None
}

/// Maps the tensors of `src` onto the canonical names of `spec`, strictly.
pub fn map_tensors(
    src: TensorFile,
    spec: &ResolvedNetwork,
    opts: &LoadOptions,
) -> Result<LoadedWeights> {
    let file = src.file.clone();
    let keys: Vec<&str> = src.tensors.keys().map(String::as_str).collect();
    let (naming, prefix) = match &opts.naming {
        Some(n) => (n.clone(), String::new()),
        None => detect_naming(&keys).ok_or_else(|| {
            let sample: Vec<&str> = keys.iter().take(5).copied().collect();
            Error::format(
                &file,
                format!(
                    "cannot tell the naming scheme (timm, torchvision, lukemelas, HF transformers, \
                     Keras, TF official, TF-slim) from its {} tensor names, e.g. {sample:?}",
                    keys.len()
                ),
            )
        })?,
    };
    let drop_background = naming == Naming::TfSlim && !opts.keep_background;
    let mut report = LoadReport {
        file: file.clone(),
        format: src.format,
        naming: naming.clone(),
        prefix: prefix.clone(),
        loaded: 0,
        ema: 0,
        raw_without_ema: Vec::new(),
        skipped: BTreeMap::new(),
        other_keys: src.other_keys.clone(),
        dropped_background: false,
        dropped_classifier: false,
    };
    let mut used: HashSet<String> = HashSet::new();
    let mut out = HashMap::new();
    let has_any_ema = keys.iter().any(|k| k.ends_with(EMA_SUFFIX));
    for layer in canonical::layers(spec) {
        let mut layer_out = Vec::new();
        let mut layer_used = Vec::new();
        let mut mismatch = None;
        for ct in layer.tensors() {
            let s = naming.source(spec, &layer, ct.param);
            let key = format!("{prefix}{}", s.key);
            let ema_key = format!("{key}{EMA_SUFFIX}");
            let use_ema = naming.has_ema() && opts.prefer_ema && src.tensors.contains_key(&ema_key);
            let take = if use_ema { &ema_key } else { &key };
            let raw = src.tensors.get(take).ok_or_else(|| Error::MissingTensor {
                file: file.clone(),
                canonical: ct.name.clone(),
                source_key: key.clone(),
            })?;
            let expected = s.layout.source_shape(&ct.shape, drop_background);
            if raw.shape != expected {
                mismatch = mismatch.or(Some(Error::ShapeMismatch {
                    file: file.clone(),
                    canonical: ct.name.clone(),
                    source_key: take.clone(),
                    expected,
                    actual: raw.shape.clone(),
                }));
                layer_used.push(take.clone());
                continue;
            }
            if !raw.dtype.is_float() {
                return Err(Error::UnsupportedDType {
                    file: file.clone(),
                    tensor: take.clone(),
                    dtype: raw.dtype.to_string(),
                });
            }
            let t = s
                .layout
                .apply(raw, drop_background, opts.dtype, &opts.device, &file, take)?;
            if use_ema {
                report.ema += 1;
                if src.tensors.contains_key(&key) {
                    *report
                        .skipped
                        .entry("raw value superseded by its EMA copy".into())
                        .or_default() += 1;
                    layer_used.push(key.clone());
                }
            } else if naming.has_ema() && has_any_ema {
                if src.tensors.contains_key(&ema_key) {
                    *report
                        .skipped
                        .entry("EMA copy not requested".into())
                        .or_default() += 1;
                    layer_used.push(ema_key.clone());
                } else {
                    report.raw_without_ema.push(ct.name.clone());
                }
            }
            layer_used.push(take.clone());
            layer_out.push((ct.name, t));
        }
        used.extend(layer_used);
        if let Some(e) = mismatch {
            if layer.role == Role::Classifier && opts.drop_mismatched_classifier {
                report.dropped_classifier = true;
                continue;
            }
            return Err(e);
        }
        if layer.role == Role::Classifier && drop_background {
            report.dropped_background = true;
        }
        report.loaded += layer_out.len();
        out.extend(layer_out);
    }
    let mut unused = Vec::new();
    for k in &keys {
        if used.contains(*k) {
            continue;
        }
        let local = k.strip_prefix(prefix.as_str()).unwrap_or(k);
        match naming.skip_reason(local) {
            Some(reason) => *report.skipped.entry(reason.to_string()).or_default() += 1,
            None => unused.push(k.to_string()),
        }
    }
    if !unused.is_empty() {
        return Err(Error::UnusedTensors {
            file,
            names: unused,
        });
    }
    Ok(LoadedWeights {
        tensors: out,
        report,
    })
}

/// Opens `path` (any supported format), detects its naming and maps it onto `spec`.
pub fn load_weights(
    path: impl AsRef<Path>,
    spec: &ResolvedNetwork,
    opts: &LoadOptions,
) -> Result<LoadedWeights> {
    map_tensors(file::open(path.as_ref())?, spec, opts)
}

/// Builds the network of `cfg` with the weights in `path` (inference: plain tensors).
pub fn load_network(
    path: impl AsRef<Path>,
    cfg: &ModelConfig,
    opts: &LoadOptions,
) -> Result<(Network, LoadReport)> {
    let spec = cfg.resolve()?;
    let w = load_weights(path, &spec, opts)?;
    if w.report.dropped_classifier {
        return Err(Error::InvalidConfig(format!(
            "{}: the classifier was dropped (class count differs); build from `into_varmap()` \
             to train a new one",
            w.report.file
        )));
    }
    let net = Network::new(&spec, w.var_builder())?;
    Ok((net, w.report))
}
