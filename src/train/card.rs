//! The JSON sidecar of a fine-tuned model (`model.json` beside `model.safetensors`): everything needed
//! to rebuild the network and use it — architecture name, config overrides, class names and the
//! evaluation preprocessing.
//!
//! ```json
//! {
//!   "format": "effnet-finetuned",
//!   "version": 1,
//!   "arch": "efficientnet_b0",
//!   "overrides": { "padding": "symmetric", "bn_eps": 1e-05, "bn_momentum": 0.1,
//!                  "drop_path_rate": 0.2, "dropout_rate": 0.2 },
//!   "classes": ["Cat", "Dog"],
//!   "preprocess": { "size": [224, 224], "crop_pct": 0.875, "interpolation": "bicubic",
//!                   "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
//!                   "resize": "short_side", "resize_size": null },
//!   "backbone": "efficientnet_b0.ra_in1k"
//! }
//! ```
//!
//! The weights file holds canonical (timm) tensor names, running BN statistics included, so the
//! strict loader reads it like any timm checkpoint.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{ModelConfig, Padding};
use crate::data::{Interpolation, Preprocess, Resize};
use crate::error::{Error, Result};

/// Value of [`ModelCard::format`].
pub const CARD_FORMAT: &str = "effnet-finetuned";
/// Current [`ModelCard::version`].
pub const CARD_VERSION: u32 = 1;

/// Changes to the config named by [`ModelCard::arch`]; `None` keeps what the name implies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigOverrides {
    /// Width coefficient (EfficientNet) or width multiplier (MobileNetV2).
    #[serde(default)]
    pub width: Option<f64>,
    /// Depth coefficient (EfficientNet) or depth multiplier (MobileNetV2).
    #[serde(default)]
    pub depth: Option<f64>,
    /// `same` or `symmetric`.
    #[serde(default, with = "padding_opt")]
    pub padding: Option<Padding>,
    #[serde(default)]
    pub bn_eps: Option<f64>,
    /// PyTorch convention (weight of the new batch statistic; TF's decay 0.99 is 0.01).
    #[serde(default)]
    pub bn_momentum: Option<f64>,
    #[serde(default)]
    pub drop_path_rate: Option<f64>,
    #[serde(default)]
    pub dropout_rate: Option<f64>,
}

mod padding_opt {
    use super::Padding;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &Option<Padding>, s: S) -> Result<S::Ok, S::Error> {
        match p {
            Some(p) => s.serialize_some(&p.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Padding>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

impl ConfigOverrides {
    /// `cfg` with these overrides applied.
    pub fn apply(&self, cfg: ModelConfig) -> ModelConfig {
        let mut cfg = match cfg {
            ModelConfig::EfficientNet(mut c) => {
                c.width_coefficient = self.width.unwrap_or(c.width_coefficient);
                c.depth_coefficient = self.depth.unwrap_or(c.depth_coefficient);
                ModelConfig::EfficientNet(c)
            }
            ModelConfig::MobileNetV2(mut c) => {
                c.width_multiplier = self.width.unwrap_or(c.width_multiplier);
                c.depth_multiplier = self.depth.unwrap_or(c.depth_multiplier);
                ModelConfig::MobileNetV2(c)
            }
        };
        if let Some(p) = self.padding {
            cfg = cfg.with_padding(p);
        }
        if let Some(v) = self.bn_eps {
            cfg = cfg.with_bn_eps(v);
        }
        if let Some(v) = self.bn_momentum {
            cfg = cfg.with_bn_momentum(v);
        }
        if let Some(v) = self.drop_path_rate {
            cfg = cfg.with_drop_path_rate(v);
        }
        if let Some(v) = self.dropout_rate {
            cfg = cfg.with_dropout_rate(v);
        }
        cfg
    }
}

/// [`Preprocess`] in serialisable form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessCard {
    /// Crop `(height, width)`.
    pub size: (usize, usize),
    pub crop_pct: f64,
    /// `bicubic`, `bilinear` or `nearest`.
    pub interpolation: String,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// `short_side` or `exact`.
    pub resize: String,
    pub resize_size: Option<usize>,
}

impl From<&Preprocess> for PreprocessCard {
    fn from(p: &Preprocess) -> Self {
        Self {
            size: p.size,
            crop_pct: p.crop_pct,
            interpolation: p.interpolation.name().to_string(),
            mean: p.mean,
            std: p.std,
            resize: match p.resize {
                Resize::ShortSide => "short_side",
                Resize::Exact => "exact",
            }
            .to_string(),
            resize_size: p.resize_size,
        }
    }
}

impl PreprocessCard {
    /// The preprocessing, validated.
    pub fn to_preprocess(&self) -> Result<Preprocess> {
        let interpolation = Interpolation::from_name(&self.interpolation).ok_or_else(|| {
            Error::InvalidConfig(format!(
                "interpolation `{}`: expected bicubic, bilinear or nearest",
                self.interpolation
            ))
        })?;
        let resize = match self.resize.as_str() {
            "short_side" => Resize::ShortSide,
            "exact" => Resize::Exact,
            other => {
                return Err(Error::InvalidConfig(format!(
                    "resize `{other}`: expected short_side or exact"
                )))
            }
        };
        let p = Preprocess {
            size: self.size,
            crop_pct: self.crop_pct,
            interpolation,
            mean: self.mean,
            std: self.std,
            resize,
            resize_size: self.resize_size,
        };
        p.validate()?;
        Ok(p)
    }
}

/// What a fine-tuned model is: the sidecar written next to its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    /// Always [`CARD_FORMAT`].
    pub format: String,
    /// [`CARD_VERSION`] when written.
    pub version: u32,
    /// A name [`ModelConfig::from_name`] accepts.
    pub arch: String,
    #[serde(default)]
    pub overrides: ConfigOverrides,
    /// Class names by output index; their count is the classifier width.
    pub classes: Vec<String>,
    /// Evaluation preprocessing.
    pub preprocess: PreprocessCard,
    /// Where the backbone weights came from (informational).
    #[serde(default)]
    pub backbone: Option<String>,
}

impl ModelCard {
    /// A card for `arch` with these classes and evaluation preprocessing.
    pub fn new(arch: impl Into<String>, classes: Vec<String>, preprocess: &Preprocess) -> Self {
        Self {
            format: CARD_FORMAT.to_string(),
            version: CARD_VERSION,
            arch: arch.into(),
            overrides: ConfigOverrides::default(),
            classes,
            preprocess: preprocess.into(),
            backbone: None,
        }
    }

    /// The card with these overrides.
    #[must_use]
    pub fn with_overrides(mut self, overrides: ConfigOverrides) -> Self {
        self.overrides = overrides;
        self
    }

    /// The card naming where the backbone came from.
    #[must_use]
    pub fn with_backbone(mut self, backbone: impl Into<String>) -> Self {
        self.backbone = Some(backbone.into());
        self
    }

    /// The model config: the named architecture, the overrides and one output per class.
    pub fn config(&self) -> Result<ModelConfig> {
        if self.classes.is_empty() {
            return Err(Error::InvalidConfig(
                "a fine-tuned model needs at least one class".into(),
            ));
        }
        let cfg = self
            .overrides
            .apply(ModelConfig::from_name(&self.arch)?)
            .with_num_classes(self.classes.len());
        cfg.resolve()?;
        Ok(cfg)
    }

    /// The evaluation preprocessing.
    pub fn preprocess(&self) -> Result<Preprocess> {
        self.preprocess.to_preprocess()
    }

    /// Where the sidecar of `weights` lives: the same path with the extension `json`
    /// (`dir/model.safetensors` → `dir/model.json`).
    pub fn sidecar_path(weights: &Path) -> PathBuf {
        weights.with_extension("json")
    }

    /// Parses a sidecar; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self> {
        let card: ModelCard =
            serde_json::from_str(text).map_err(|e| Error::format(file, e.to_string()))?;
        if card.format != CARD_FORMAT {
            return Err(Error::format(
                file,
                format!("format is `{}`, expected `{CARD_FORMAT}`", card.format),
            ));
        }
        if card.version > CARD_VERSION {
            return Err(Error::format(
                file,
                format!(
                    "version {} is newer than this effnet reads ({CARD_VERSION})",
                    card.version
                ),
            ));
        }
        card.config()
            .map_err(|e| Error::format(file, e.to_string()))?;
        card.preprocess()
            .map_err(|e| Error::format(file, e.to_string()))?;
        Ok(card)
    }

    /// Reads and checks the sidecar at `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Writes the sidecar to `path` (pretty JSON).
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::format(path.display().to_string(), e.to_string()))?;
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> ModelCard {
        let pre = Preprocess::imagenet(160, 1.0, Interpolation::Bilinear);
        ModelCard::new("efficientnet_b0", vec!["a".into(), "b".into()], &pre).with_overrides(
            ConfigOverrides {
                width: Some(0.25),
                padding: Some(Padding::Same),
                bn_momentum: Some(0.01),
                ..Default::default()
            },
        )
    }

    #[test]
    fn round_trips_and_rebuilds_the_config() {
        let c = card();
        let text = serde_json::to_string(&c).unwrap();
        let back = ModelCard::parse(&text, "m.json").unwrap();
        assert_eq!(back, c);
        let cfg = back.config().unwrap();
        assert_eq!(cfg.num_classes(), 2);
        assert_eq!(cfg.padding(), Padding::Same);
        let ModelConfig::EfficientNet(e) = cfg else {
            panic!("family")
        };
        assert_eq!(e.width_coefficient, 0.25);
        assert_eq!(e.bn_momentum, 0.01);
        assert_eq!(
            back.preprocess().unwrap(),
            Preprocess::imagenet(160, 1.0, Interpolation::Bilinear)
        );
    }

    #[test]
    fn rejects_bad_cards() {
        let mut c = card();
        c.format = "other".into();
        let text = serde_json::to_string(&c).unwrap();
        assert!(matches!(
            ModelCard::parse(&text, "m.json"),
            Err(Error::Format { .. })
        ));
        let mut c = card();
        c.classes.clear();
        assert!(ModelCard::parse(&serde_json::to_string(&c).unwrap(), "m.json").is_err());
        let mut c = card();
        c.arch = "resnet50".into();
        assert!(ModelCard::parse(&serde_json::to_string(&c).unwrap(), "m.json").is_err());
        let mut c = card();
        c.preprocess.interpolation = "lanczos".into();
        assert!(ModelCard::parse(&serde_json::to_string(&c).unwrap(), "m.json").is_err());
        assert!(ModelCard::parse("{\"format\": 3", "m.json").is_err());
        assert_eq!(
            ModelCard::sidecar_path(Path::new("d/model.safetensors")),
            Path::new("d/model.json")
        );
    }
}
