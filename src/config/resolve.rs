//! Width/depth scaling and the flat, fully resolved block list.

use super::{Activation, Padding, StageArgs};
use crate::error::{Error, Result};

/// Rounds `v` to a multiple of `divisor`, never below `min_value` (default `divisor`) and never more than
/// 10% below `v`. This is TF's `round_filters` (tensorflow/tpu `efficientnet_model.py`), timm's
/// `make_divisible` and TF-slim's `_make_divisible`: one rule for every source.
pub fn make_divisible(v: f64, divisor: usize, min_value: Option<usize>) -> usize {
    let d = divisor as f64;
    let min_value = min_value.unwrap_or(divisor);
    let mut new = min_value.max(((v + d / 2.0) as usize / divisor) * divisor);
    if (new as f64) < 0.9 * v {
        new += divisor;
    }
    new
}

/// One block of a network after width and depth scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedBlock {
    /// Position in the flat block list (TF's `blocks_{index}`, lukemelas/HF `blocks.{index}`).
    pub index: usize,
    /// Stage the block belongs to (0-based).
    pub stage: usize,
    /// Position inside its stage (timm's `blocks.{stage}.{index_in_stage}`).
    pub index_in_stage: usize,
    pub in_channels: usize,
    /// Channels after the expand conv (`in_channels * expand_ratio`).
    pub mid_channels: usize,
    pub out_channels: usize,
    /// 1 means no expand conv: a depthwise-separable block.
    pub expand_ratio: usize,
    pub kernel: usize,
    pub stride: usize,
    /// Squeeze-excite reduced channels, `max(1, floor(in_channels * se_ratio))`, if the block has SE.
    pub se_channels: Option<usize>,
    /// Identity residual: stride 1, equal widths and `id_skip`.
    pub has_skip: bool,
    /// Stochastic-depth rate of this block: `drop_path_rate * index / num_blocks` (used only with a skip).
    pub drop_path_rate: f64,
}

impl ResolvedBlock {
    /// Whether the block has an expand (1x1) conv, i.e. is an inverted residual rather than a
    /// depthwise-separable block. Weight names of every source depend on this.
    pub fn has_expansion(&self) -> bool {
        self.expand_ratio != 1
    }

    /// Canonical (timm) module path of the block, e.g. `blocks.1.0`.
    pub fn name(&self) -> String {
        format!("blocks.{}.{}", self.stage, self.index_in_stage)
    }
}

/// One feature endpoint: the output of the last block before the resolution halves (TF's
/// `reduction_{i}`), what detection and segmentation backbones consume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureInfo {
    /// `reduction_1` ... `reduction_5`.
    pub name: String,
    /// Index in [`ResolvedNetwork::blocks`] of the block whose output this is.
    pub block_index: usize,
    pub channels: usize,
    /// Total stride relative to the input (2, 4, 8, 16, 32 for the standard models).
    pub reduction: usize,
}

/// A network fully resolved from its config: the stem, the flat block list and the head, plus the
/// numerics every layer needs. Built by [`super::EfficientNetConfig::resolve`] and
/// [`super::MobileNetV2Config::resolve`].
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedNetwork {
    /// Which family the config came from (weight-name maps of torchvision, Keras and TF-slim differ).
    pub family: Family,
    pub in_channels: usize,
    /// Stem: a 3x3 stride-2 conv with this many output channels.
    pub stem_channels: usize,
    pub blocks: Vec<ResolvedBlock>,
    /// Head: a 1x1 conv to this many channels (the pooled feature width).
    pub head_channels: usize,
    /// Classifier outputs; 0 means no classifier (pooled features are the output).
    pub num_classes: usize,
    pub activation: Activation,
    pub padding: Padding,
    pub bn_eps: f64,
    /// PyTorch convention: weight of the new batch statistic (TF decay 0.99 = 0.01).
    pub bn_momentum: f64,
    /// Dropout before the classifier (training only).
    pub dropout_rate: f64,
}

/// The family a network belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// EfficientNet B0-L2 and Lite0-4 (and compound-scaled members).
    EfficientNet,
    /// MobileNetV2 at any width.
    MobileNetV2,
}

/// Kernel and stride of the stem conv of every network here.
pub const STEM_KERNEL: usize = 3;
pub const STEM_STRIDE: usize = 2;

impl ResolvedNetwork {
    /// The feature endpoints, following TF's rule: a block is an endpoint if it is the last one or the
    /// next block has stride > 1.
    pub fn feature_info(&self) -> Vec<FeatureInfo> {
        let mut out = Vec::new();
        let mut reduction = STEM_STRIDE;
        for (i, b) in self.blocks.iter().enumerate() {
            reduction *= b.stride;
            let next_reduces = self.blocks.get(i + 1).is_none_or(|n| n.stride > 1);
            if next_reduces {
                out.push(FeatureInfo {
                    name: format!("reduction_{}", out.len() + 1),
                    block_index: i,
                    channels: b.out_channels,
                    reduction,
                });
            }
        }
        out
    }

    /// Number of blocks per stage.
    pub fn stage_depths(&self) -> Vec<usize> {
        let mut depths = Vec::new();
        for b in &self.blocks {
            if b.stage == depths.len() {
                depths.push(0);
            }
            if let Some(d) = depths.last_mut() {
                *d += 1;
            }
        }
        depths
    }
}

/// Everything the shared scaling rule needs; filled in by the EfficientNet and MobileNetV2 configs.
pub(crate) struct ScalingInput<'a> {
    pub stages: &'a [StageArgs],
    pub width: f64,
    pub depth: f64,
    pub divisor: usize,
    pub min_depth: Option<usize>,
    /// Keep the first and last stage's repeats unscaled (EfficientNet-Lite, timm `fix_first_last`).
    pub fix_first_last_repeats: bool,
    /// Final (already scaled or fixed) stem width.
    pub stem_channels: usize,
    pub drop_path_rate: f64,
}

impl ScalingInput<'_> {
    pub fn round_filters(&self, f: usize) -> usize {
        make_divisible(f as f64 * self.width, self.divisor, self.min_depth)
    }

    /// Scales every stage and lays the blocks out flat. Input widths follow the actual chain
    /// (stem → block → block), so a fixed stem (Lite3/4) feeds the first block correctly.
    pub fn blocks(&self) -> Result<Vec<ResolvedBlock>> {
        let n_stages = self.stages.len();
        let mut repeats = Vec::with_capacity(n_stages);
        for (s, st) in self.stages.iter().enumerate() {
            let fixed = self.fix_first_last_repeats && (s == 0 || s + 1 == n_stages);
            repeats.push(if fixed {
                st.repeats
            } else {
                (self.depth * st.repeats as f64).ceil() as usize
            });
        }
        let total: usize = repeats.iter().sum();
        if total == 0 {
            return Err(Error::InvalidConfig("network has no blocks".into()));
        }
        let mut blocks = Vec::with_capacity(total);
        let mut in_ch = self.stem_channels;
        for (s, (st, &r)) in self.stages.iter().zip(&repeats).enumerate() {
            let out_ch = self.round_filters(st.out_filters);
            for j in 0..r {
                let index = blocks.len();
                let stride = if j == 0 { st.stride } else { 1 };
                blocks.push(ResolvedBlock {
                    index,
                    stage: s,
                    index_in_stage: j,
                    in_channels: in_ch,
                    mid_channels: in_ch * st.expand_ratio,
                    out_channels: out_ch,
                    expand_ratio: st.expand_ratio,
                    kernel: st.kernel,
                    stride,
                    se_channels: st
                        .se_ratio
                        .map(|r| ((in_ch as f64 * r).floor() as usize).max(1)),
                    has_skip: st.id_skip && stride == 1 && in_ch == out_ch,
                    drop_path_rate: self.drop_path_rate * index as f64 / total as f64,
                });
                in_ch = out_ch;
            }
        }
        Ok(blocks)
    }
}

/// Validates a stage table on its own and for consistency (each stage's input = previous output, the
/// first stage's input = the unscaled stem width).
pub(crate) fn validate_stages(stages: &[StageArgs], stem: usize) -> Result<()> {
    if stages.is_empty() {
        return Err(Error::InvalidConfig("stage table is empty".into()));
    }
    let mut prev = stem;
    for (s, st) in stages.iter().enumerate() {
        st.validate()?;
        if st.in_filters != prev {
            return Err(Error::InvalidConfig(format!(
                "stage {s} (`{st}`) takes {} input filters but the previous layer gives {prev}",
                st.in_filters
            )));
        }
        prev = st.out_filters;
    }
    Ok(())
}
