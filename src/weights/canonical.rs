//! The canonical layer list: every parameterised layer of a network, in order, with its timm path,
//! its role and its shape, derived from the resolved block list. Every naming scheme maps these layers;
//! nothing else decides which tensors a model has.

use crate::config::{ResolvedBlock, ResolvedNetwork};

/// What a layer is for; naming schemes format their source names from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    StemConv,
    StemBn,
    ExpandConv,
    ExpandBn,
    DepthwiseConv,
    DepthwiseBn,
    SeReduce,
    SeExpand,
    ProjectConv,
    ProjectBn,
    HeadConv,
    HeadBn,
    Classifier,
}

/// Kind of parameterised layer, which decides its tensors and their layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Bias-free dense convolution, weight `[out, in, k, k]`.
    Conv,
    /// Depthwise convolution, weight `[C, 1, k, k]`.
    Depthwise,
    /// 1x1 convolution with bias (squeeze-excite), weight `[out, in, 1, 1]`, bias `[out]`.
    ConvBias,
    /// Batch norm over `C` channels: weight, bias, running mean, running variance.
    BatchNorm,
    /// Fully connected classifier, weight `[classes, features]`, bias `[classes]`.
    Linear,
}

/// One parameterised layer of the canonical (timm-named) network.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub role: Role,
    pub kind: Kind,
    /// Module path in the canonical model, e.g. `blocks.1.0.conv_pw`.
    pub path: String,
    /// The block it belongs to (`None` for stem, head and classifier).
    pub block: Option<ResolvedBlock>,
    /// Weight shape (`[C]` for batch norm).
    pub shape: Vec<usize>,
}

/// A canonical tensor: full name, shape, and the parameter it is within its layer.
#[derive(Debug, Clone, PartialEq)]
pub struct CanonicalTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub param: Param,
}

/// A tensor's role inside its layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Param {
    Weight,
    Bias,
    RunningMean,
    RunningVar,
}

impl Param {
    /// PyTorch (timm) suffix.
    pub fn torch_name(self) -> &'static str {
        match self {
            Param::Weight => "weight",
            Param::Bias => "bias",
            Param::RunningMean => "running_mean",
            Param::RunningVar => "running_var",
        }
    }
}

impl Layer {
    /// The layer's tensors with canonical names and shapes.
    pub fn tensors(&self) -> Vec<CanonicalTensor> {
        let t = |param: Param, shape: Vec<usize>| CanonicalTensor {
            name: format!("{}.{}", self.path, param.torch_name()),
            shape,
            param,
        };
        let out = self.shape[0];
        match self.kind {
            Kind::Conv | Kind::Depthwise => vec![t(Param::Weight, self.shape.clone())],
            Kind::ConvBias | Kind::Linear => {
                vec![
                    t(Param::Weight, self.shape.clone()),
                    t(Param::Bias, vec![out]),
                ]
            }
            Kind::BatchNorm => [
                Param::Weight,
                Param::Bias,
                Param::RunningMean,
                Param::RunningVar,
            ]
            .into_iter()
            .map(|p| t(p, vec![out]))
            .collect(),
        }
    }
}

/// Every parameterised layer of `net`, in forward order.
pub fn layers(net: &ResolvedNetwork) -> Vec<Layer> {
    let mut v = Vec::new();
    let mut push = |role, kind, path: String, block: Option<&ResolvedBlock>, shape: Vec<usize>| {
        v.push(Layer {
            role,
            kind,
            path,
            block: block.cloned(),
            shape,
        })
    };
    let stem = net.stem_channels;
    push(
        Role::StemConv,
        Kind::Conv,
        "conv_stem".into(),
        None,
        vec![stem, net.in_channels, 3, 3],
    );
    push(
        Role::StemBn,
        Kind::BatchNorm,
        "bn1".into(),
        None,
        vec![stem],
    );
    for b in &net.blocks {
        let p = |leaf: &str| format!("{}.{leaf}", b.name());
        let (mid, k) = (b.mid_channels, b.kernel);
        let (dw_bn, project, project_bn) = if b.has_expansion() {
            push(
                Role::ExpandConv,
                Kind::Conv,
                p("conv_pw"),
                Some(b),
                vec![mid, b.in_channels, 1, 1],
            );
            push(
                Role::ExpandBn,
                Kind::BatchNorm,
                p("bn1"),
                Some(b),
                vec![mid],
            );
            ("bn2", "conv_pwl", "bn3")
        } else {
            ("bn1", "conv_pw", "bn2")
        };
        push(
            Role::DepthwiseConv,
            Kind::Depthwise,
            p("conv_dw"),
            Some(b),
            vec![mid, 1, k, k],
        );
        push(
            Role::DepthwiseBn,
            Kind::BatchNorm,
            p(dw_bn),
            Some(b),
            vec![mid],
        );
        if let Some(rd) = b.se_channels {
            push(
                Role::SeReduce,
                Kind::ConvBias,
                p("se.conv_reduce"),
                Some(b),
                vec![rd, mid, 1, 1],
            );
            push(
                Role::SeExpand,
                Kind::ConvBias,
                p("se.conv_expand"),
                Some(b),
                vec![mid, rd, 1, 1],
            );
        }
        push(
            Role::ProjectConv,
            Kind::Conv,
            p(project),
            Some(b),
            vec![b.out_channels, mid, 1, 1],
        );
        push(
            Role::ProjectBn,
            Kind::BatchNorm,
            p(project_bn),
            Some(b),
            vec![b.out_channels],
        );
    }
    let last = net.blocks.last().map_or(stem, |b| b.out_channels);
    let head = net.head_channels;
    push(
        Role::HeadConv,
        Kind::Conv,
        "conv_head".into(),
        None,
        vec![head, last, 1, 1],
    );
    push(
        Role::HeadBn,
        Kind::BatchNorm,
        "bn2".into(),
        None,
        vec![head],
    );
    if net.num_classes > 0 {
        push(
            Role::Classifier,
            Kind::Linear,
            "classifier".into(),
            None,
            vec![net.num_classes, head],
        );
    }
    v
}
