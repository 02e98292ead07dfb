//! Naming schemes: how each public source names the canonical layers, and how it lays tensors out.
//!
//! A scheme is two things: a source path for every [`Layer`] of the canonical list (derived from the
//! resolved block list, so TF's shifting `conv2d`/`tpu_batch_normalization` suffixes and torchvision's
//! stage-indexed `features` come out right for any depth), and a parameter convention (PyTorch
//! `weight/bias/running_mean/running_var` in OIHW, or TF/Keras `kernel/gamma/beta/moving_*` in HWIO)
//! which decides names and layout transforms. Tables: `reference/weights.md` §0.

use super::canonical::{Kind, Layer, Param, Role};
use super::layout::Layout;
use crate::config::{Family, ResolvedBlock, ResolvedNetwork};

/// A public naming scheme.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Naming {
    /// timm (and HF-hub timm safetensors): the canonical names, no mapping.
    Timm,
    /// torchvision `efficientnet_b*` / `mobilenet_v2` (also candle's `lmz/candle-efficientnet` files).
    Torchvision,
    /// lukemelas `efficientnet_pytorch` (and `efficientnet_lite_pytorch`).
    Lukemelas,
    /// Hugging Face transformers `EfficientNetForImageClassification`.
    HfTransformers,
    /// Keras applications (`EfficientNetB*`, `MobileNetV2`) h5 files.
    Keras,
    /// Official tensorflow/tpu checkpoints, under a scope such as `efficientnet-b0`; `bn` is the batch-norm
    /// layer name (`tpu_batch_normalization` or `batch_normalization`).
    TfOfficial { scope: String, bn: String },
    /// TF-slim MobileNetV2 checkpoints (`MobilenetV2/...`, 1001 classes with background at 0).
    TfSlim,
}

impl std::fmt::Display for Naming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Naming::Timm => f.write_str("timm"),
            Naming::Torchvision => f.write_str("torchvision"),
            Naming::Lukemelas => f.write_str("lukemelas"),
            Naming::HfTransformers => f.write_str("HF transformers"),
            Naming::Keras => f.write_str("Keras"),
            Naming::TfOfficial { scope, bn } => write!(f, "TF official (`{scope}`, `{bn}`)"),
            Naming::TfSlim => f.write_str("TF-slim"),
        }
    }
}

/// How a scheme names a layer's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Convention {
    /// `weight`, `bias`, `running_mean`, `running_var`, joined with `.`; PyTorch layouts.
    Torch,
    /// `kernel` / `depthwise_kernel`, `bias`, `gamma`, `beta`, `moving_mean`, `moving_variance`,
    /// joined with `/`; TF layouts. `suffix` is appended to every name (`:0` in Keras files).
    Tf { suffix: &'static str },
    /// TF-slim: `weights` / `depthwise_weights`, `biases`, BN under `BatchNorm/`.
    Slim,
}

/// One tensor of the source file that a canonical tensor comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceTensor {
    pub key: String,
    pub layout: Layout,
}

fn letter(j: usize) -> char {
    // Keras names repeats a, b, c, ...; more than 26 repeats never occur in a published model.
    char::from(b'a' + (j % 26) as u8)
}

impl Naming {
    fn convention(&self) -> Convention {
        match self {
            Naming::Timm | Naming::Torchvision | Naming::Lukemelas | Naming::HfTransformers => {
                Convention::Torch
            }
            Naming::Keras => Convention::Tf { suffix: ":0" },
            Naming::TfOfficial { .. } => Convention::Tf { suffix: "" },
            Naming::TfSlim => Convention::Slim,
        }
    }

    /// The source module path of a canonical layer.
    pub fn layer_path(&self, net: &ResolvedNetwork, l: &Layer) -> String {
        let b = l.block.as_ref();
        match self {
            Naming::Timm => l.path.clone(),
            Naming::Torchvision => torchvision_path(net, l.role, b),
            Naming::Lukemelas => lukemelas_path(l.role, b),
            Naming::HfTransformers => hf_path(l.role, b),
            Naming::Keras => keras_path(net, l.role, b),
            Naming::TfOfficial { scope, bn } => tf_official_path(scope, bn, l.role, b),
            Naming::TfSlim => tf_slim_path(l.role, b),
        }
    }

    /// Source key and layout of a canonical parameter of layer `l`.
    pub fn source(&self, net: &ResolvedNetwork, l: &Layer, p: Param) -> SourceTensor {
        let path = self.layer_path(net, l);
        let conv = self.convention();
        let (leaf, layout): (&str, Layout) = match (conv, l.kind, p) {
            (Convention::Torch, _, p) => (p.torch_name(), Layout::Identity),
            (_, Kind::BatchNorm, p) => (
                match p {
                    Param::Weight => "gamma",
                    Param::Bias => "beta",
                    Param::RunningMean => "moving_mean",
                    Param::RunningVar => "moving_variance",
                },
                Layout::Identity,
            ),
            (Convention::Tf { .. }, Kind::Depthwise, _) => ("depthwise_kernel", Layout::Depthwise),
            (Convention::Slim, Kind::Depthwise, _) => ("depthwise_weights", Layout::Depthwise),
            (Convention::Tf { .. }, Kind::Linear, Param::Weight) => ("kernel", Layout::Dense),
            (Convention::Tf { .. }, _, Param::Weight) => ("kernel", Layout::Hwio),
            (Convention::Slim, Kind::Linear, Param::Weight) => ("weights", Layout::SlimLogits),
            (Convention::Slim, _, Param::Weight) => ("weights", Layout::Hwio),
            (Convention::Tf { .. }, _, _) => ("bias", Layout::Identity),
            (Convention::Slim, Kind::Linear, _) => ("biases", Layout::SlimLogits),
            (Convention::Slim, _, _) => ("biases", Layout::Identity),
        };
        let key = match conv {
            Convention::Torch => format!("{path}.{leaf}"),
            Convention::Tf { suffix } => format!("{path}/{leaf}{suffix}"),
            Convention::Slim if l.kind == Kind::BatchNorm => format!("{path}/BatchNorm/{leaf}"),
            Convention::Slim => format!("{path}/{leaf}"),
        };
        SourceTensor { key, layout }
    }

    /// Why a source tensor that maps to no model tensor may be ignored, if it may.
    pub fn skip_reason(&self, key: &str) -> Option<&'static str> {
        match self.convention() {
            Convention::Torch if key.ends_with("num_batches_tracked") => {
                Some("PyTorch batch-norm bookkeeping")
            }
            Convention::Tf { suffix: ":0" }
                if key.starts_with("normalization/") || key.starts_with("rescaling") =>
            {
                Some("Keras in-model preprocessing (effnet applies the weight set's preprocessing)")
            }
            Convention::Tf { suffix: "" } | Convention::Slim => tf_skip_reason(key),
            _ => None,
        }
    }

    /// Whether the source carries TF `ExponentialMovingAverage` shadow copies to prefer.
    pub fn has_ema(&self) -> bool {
        matches!(self, Naming::TfOfficial { .. } | Naming::TfSlim)
    }
}

/// Non-model variables of TF training checkpoints.
fn tf_skip_reason(key: &str) -> Option<&'static str> {
    let last = key.rsplit('/').next().unwrap_or(key);
    if last.starts_with("RMSProp") || last.starts_with("Momentum") || last.starts_with("Adam") {
        Some("TF optimizer slot")
    } else if key == "global_step" || key.ends_with("/global_step") {
        Some("TF training step counter")
    } else {
        None
    }
}

fn block_index(b: Option<&ResolvedBlock>) -> usize {
    b.map_or(0, |b| b.index)
}

fn torchvision_path(net: &ResolvedNetwork, role: Role, b: Option<&ResolvedBlock>) -> String {
    let expands = b.is_some_and(ResolvedBlock::has_expansion);
    let stages = net.blocks.last().map_or(0, |b| b.stage + 1);
    match net.family {
        Family::EfficientNet => {
            let blk = |i: usize| {
                let b = b.map_or((0, 0), |b| (b.stage + 1, b.index_in_stage));
                format!("features.{}.{}.block.{i}", b.0, b.1)
            };
            let off = usize::from(expands);
            match role {
                Role::StemConv => "features.0.0".into(),
                Role::StemBn => "features.0.1".into(),
                Role::ExpandConv => format!("{}.0", blk(0)),
                Role::ExpandBn => format!("{}.1", blk(0)),
                Role::DepthwiseConv => format!("{}.0", blk(off)),
                Role::DepthwiseBn => format!("{}.1", blk(off)),
                Role::SeReduce => format!("{}.fc1", blk(off + 1)),
                Role::SeExpand => format!("{}.fc2", blk(off + 1)),
                Role::ProjectConv => format!("{}.0", blk(off + 2)),
                Role::ProjectBn => format!("{}.1", blk(off + 2)),
                Role::HeadConv => format!("features.{}.0", stages + 1),
                Role::HeadBn => format!("features.{}.1", stages + 1),
                Role::Classifier => "classifier.1".into(),
            }
        }
        Family::MobileNetV2 => {
            let f = format!("features.{}.conv", block_index(b) + 1);
            let n = net.blocks.len() + 1;
            match (role, expands) {
                (Role::StemConv, _) => "features.0.0".into(),
                (Role::StemBn, _) => "features.0.1".into(),
                (Role::ExpandConv, _) => format!("{f}.0.0"),
                (Role::ExpandBn, _) => format!("{f}.0.1"),
                (Role::DepthwiseConv, false) => format!("{f}.0.0"),
                (Role::DepthwiseBn, false) => format!("{f}.0.1"),
                (Role::DepthwiseConv, true) => format!("{f}.1.0"),
                (Role::DepthwiseBn, true) => format!("{f}.1.1"),
                (Role::ProjectConv, false) => format!("{f}.1"),
                (Role::ProjectBn, false) => format!("{f}.2"),
                (Role::ProjectConv, true) => format!("{f}.2"),
                (Role::ProjectBn, true) => format!("{f}.3"),
                // MobileNetV2 has no squeeze-excite; these never occur.
                (Role::SeReduce, _) => format!("{f}.se.fc1"),
                (Role::SeExpand, _) => format!("{f}.se.fc2"),
                (Role::HeadConv, _) => format!("features.{n}.0"),
                (Role::HeadBn, _) => format!("features.{n}.1"),
                (Role::Classifier, _) => "classifier.1".into(),
            }
        }
    }
}

fn lukemelas_path(role: Role, b: Option<&ResolvedBlock>) -> String {
    let blk = |leaf: &str| format!("_blocks.{}.{leaf}", block_index(b));
    match role {
        Role::StemConv => "_conv_stem".into(),
        Role::StemBn => "_bn0".into(),
        Role::ExpandConv => blk("_expand_conv"),
        Role::ExpandBn => blk("_bn0"),
        Role::DepthwiseConv => blk("_depthwise_conv"),
        Role::DepthwiseBn => blk("_bn1"),
        Role::SeReduce => blk("_se_reduce"),
        Role::SeExpand => blk("_se_expand"),
        Role::ProjectConv => blk("_project_conv"),
        Role::ProjectBn => blk("_bn2"),
        Role::HeadConv => "_conv_head".into(),
        Role::HeadBn => "_bn1".into(),
        Role::Classifier => "_fc".into(),
    }
}

fn hf_path(role: Role, b: Option<&ResolvedBlock>) -> String {
    let blk = |leaf: &str| format!("efficientnet.encoder.blocks.{}.{leaf}", block_index(b));
    match role {
        Role::StemConv => "efficientnet.embeddings.convolution".into(),
        Role::StemBn => "efficientnet.embeddings.batchnorm".into(),
        Role::ExpandConv => blk("expansion.expand_conv"),
        Role::ExpandBn => blk("expansion.expand_bn"),
        Role::DepthwiseConv => blk("depthwise_conv.depthwise_conv"),
        Role::DepthwiseBn => blk("depthwise_conv.depthwise_norm"),
        Role::SeReduce => blk("squeeze_excite.reduce"),
        Role::SeExpand => blk("squeeze_excite.expand"),
        Role::ProjectConv => blk("projection.project_conv"),
        Role::ProjectBn => blk("projection.project_bn"),
        Role::HeadConv => "efficientnet.encoder.top_conv".into(),
        Role::HeadBn => "efficientnet.encoder.top_bn".into(),
        Role::Classifier => "classifier".into(),
    }
}

fn keras_path(net: &ResolvedNetwork, role: Role, b: Option<&ResolvedBlock>) -> String {
    match net.family {
        Family::EfficientNet => {
            let blk = |leaf: &str| {
                let b = b.map_or((0, 0), |b| (b.stage + 1, b.index_in_stage));
                format!("block{}{}_{leaf}", b.0, letter(b.1))
            };
            match role {
                Role::StemConv => "stem_conv".into(),
                Role::StemBn => "stem_bn".into(),
                Role::ExpandConv => blk("expand_conv"),
                Role::ExpandBn => blk("expand_bn"),
                Role::DepthwiseConv => blk("dwconv"),
                Role::DepthwiseBn => blk("bn"),
                Role::SeReduce => blk("se_reduce"),
                Role::SeExpand => blk("se_expand"),
                Role::ProjectConv => blk("project_conv"),
                Role::ProjectBn => blk("project_bn"),
                Role::HeadConv => "top_conv".into(),
                Role::HeadBn => "top_bn".into(),
                Role::Classifier => "predictions".into(),
            }
        }
        Family::MobileNetV2 => {
            let i = block_index(b);
            let blk = |leaf: &str| {
                if i == 0 {
                    format!("expanded_conv_{leaf}")
                } else {
                    format!("block_{i}_{leaf}")
                }
            };
            match role {
                Role::StemConv => "Conv1".into(),
                Role::StemBn => "bn_Conv1".into(),
                Role::ExpandConv => blk("expand"),
                Role::ExpandBn => blk("expand_BN"),
                Role::DepthwiseConv => blk("depthwise"),
                Role::DepthwiseBn => blk("depthwise_BN"),
                Role::SeReduce => blk("se_reduce"),
                Role::SeExpand => blk("se_expand"),
                Role::ProjectConv => blk("project"),
                Role::ProjectBn => blk("project_BN"),
                Role::HeadConv => "Conv_1".into(),
                Role::HeadBn => "Conv_1_bn".into(),
                Role::Classifier => "predictions".into(),
            }
        }
    }
}

fn tf_official_path(scope: &str, bn: &str, role: Role, b: Option<&ResolvedBlock>) -> String {
    // Inside a block, layers are numbered in creation order: with an expand conv, `conv2d` is the
    // expansion and `conv2d_1` the projection, and BNs are `bn`, `bn_1`, `bn_2`; without one, the
    // projection is `conv2d` and the BNs `bn`, `bn_1`. This is what broke B1 in naive converters.
    let expands = b.is_some_and(ResolvedBlock::has_expansion);
    let blk = |leaf: String| format!("{scope}/blocks_{}/{leaf}", block_index(b));
    let nth = |base: &str, n: usize| {
        if n == 0 {
            base.to_string()
        } else {
            format!("{base}_{n}")
        }
    };
    let shift = usize::from(expands);
    match role {
        Role::StemConv => format!("{scope}/stem/conv2d"),
        Role::StemBn => format!("{scope}/stem/{bn}"),
        Role::ExpandConv => blk("conv2d".into()),
        Role::ExpandBn => blk(bn.into()),
        Role::DepthwiseConv => blk("depthwise_conv2d".into()),
        Role::DepthwiseBn => blk(nth(bn, shift)),
        Role::SeReduce => blk("se/conv2d".into()),
        Role::SeExpand => blk("se/conv2d_1".into()),
        Role::ProjectConv => blk(nth("conv2d", shift)),
        Role::ProjectBn => blk(nth(bn, shift + 1)),
        Role::HeadConv => format!("{scope}/head/conv2d"),
        Role::HeadBn => format!("{scope}/head/{bn}"),
        Role::Classifier => format!("{scope}/head/dense"),
    }
}

fn tf_slim_path(role: Role, b: Option<&ResolvedBlock>) -> String {
    let i = block_index(b);
    let blk = |leaf: &str| {
        if i == 0 {
            format!("MobilenetV2/expanded_conv/{leaf}")
        } else {
            format!("MobilenetV2/expanded_conv_{i}/{leaf}")
        }
    };
    match role {
        Role::StemConv | Role::StemBn => "MobilenetV2/Conv".into(),
        Role::ExpandConv | Role::ExpandBn => blk("expand"),
        Role::DepthwiseConv | Role::DepthwiseBn => blk("depthwise"),
        Role::SeReduce => blk("se/reduce"),
        Role::SeExpand => blk("se/expand"),
        Role::ProjectConv | Role::ProjectBn => blk("project"),
        Role::HeadConv | Role::HeadBn => "MobilenetV2/Conv_1".into(),
        Role::Classifier => "MobilenetV2/Logits/Conv2d_1c_1x1".into(),
    }
}
