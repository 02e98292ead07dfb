//! Keras layer indices in block terms, for recipes written as "freeze the first `k` layers of
//! `base_model.layers`" (the TF transfer-learning tutorial's `fine_tune_at = 100`).
//!
//! Keras counts every operation as a layer (padding, activation, the squeeze-excite reshape, dropout,
//! add), so layer `k` can fall inside a block; effnet freezes whole blocks only (a residual spans its
//! block). [`block_of_keras_layer`] returns the block that layer `k` belongs to; training "all but the
//! first `k` layers" becomes [`super::Trainable::FromBlock`] of it: that whole block trains, as its
//! last layers do in Keras. For EfficientNet-B0, layer 100 is `block4b_project_conv`, in block 6 of 16
//! (10 blocks train); for MobileNetV2, layer 100 is `block_11_expand_relu`, in block 11 of 17 (6 blocks
//! train).
//!
//! Layer counts follow `keras.applications` in Keras 3.15 built with `weights=None` (checked by
//! `tools/keras_layer_blocks.py`): EfficientNet has 3 input layers (input, rescaling, normalization)
//! and a 4-layer stem; a block is `[expand conv, bn, activation] [pad if stride 2] dwconv, bn,
//! activation, [5 SE layers] project conv, bn [dropout if not the first block, add]`. MobileNetV2 has
//! 1 input layer and a 3-layer stem; a block is `[expand, bn, relu] [pad if stride 2] depthwise, bn,
//! relu, project, bn [add]`. With `weights="imagenet"` Keras inserts one more layer before the
//! EfficientNet stem (the variance fix), shifting indices by one.

use crate::config::{Family, ResolvedBlock, ResolvedNetwork};

fn block_layers(family: Family, b: &ResolvedBlock) -> usize {
    let expand = if b.has_expansion() { 3 } else { 0 };
    let pad = usize::from(b.stride == 2);
    match family {
        Family::EfficientNet => {
            let se = if b.se_channels.is_some() { 5 } else { 0 };
            let skip = match (b.has_skip, b.index > 0) {
                (false, _) => 0,
                (true, false) => 1,
                (true, true) => 2,
            };
            expand + pad + 3 + se + 2 + skip
        }
        Family::MobileNetV2 => expand + pad + 3 + 2 + usize::from(b.has_skip),
    }
}

/// Index in Keras's `model.layers` of the first layer of each block.
pub fn keras_block_starts(spec: &ResolvedNetwork) -> Vec<usize> {
    let mut at = match spec.family {
        Family::EfficientNet => 3 + 4,
        Family::MobileNetV2 => 1 + 3,
    };
    spec.blocks
        .iter()
        .map(|b| {
            let start = at;
            at += block_layers(spec.family, b);
            start
        })
        .collect()
}

/// The block that Keras layer `layer` belongs to: 0 for layers up to the first block (the stem then
/// stays frozen), `blocks.len()` for layers after the last block (only the head convolution and the
/// classifier train).
pub fn block_of_keras_layer(spec: &ResolvedNetwork, layer: usize) -> usize {
    let starts = keras_block_starts(spec);
    let end = starts
        .last()
        .zip(spec.blocks.last())
        .map_or(0, |(s, b)| s + block_layers(spec.family, b));
    if layer >= end {
        return spec.blocks.len();
    }
    starts.iter().rposition(|&s| s <= layer).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    fn spec(name: &str) -> ResolvedNetwork {
        ModelConfig::from_name(name).unwrap().resolve().unwrap()
    }

    #[test]
    fn block_starts_match_keras() {
        // Output of tools/keras_layer_blocks.py (Keras 3.15.1).
        assert_eq!(
            keras_block_starts(&spec("tf_efficientnet_b0")),
            [7, 17, 31, 46, 60, 75, 89, 104, 119, 132, 147, 162, 176, 191, 206, 221]
        );
        assert_eq!(
            keras_block_starts(&spec("tf_efficientnet_b1")),
            [
                7, 17, 29, 43, 58, 73, 87, 102, 117, 131, 146, 161, 176, 189, 204, 219, 234, 248,
                263, 278, 293, 308, 321
            ]
        );
        assert_eq!(
            keras_block_starts(&spec("tf_mobilenetv2_100")),
            [4, 9, 18, 27, 36, 45, 54, 63, 72, 81, 90, 98, 107, 116, 125, 134, 143]
        );
    }

    #[test]
    fn layer_100_of_the_reproduction() {
        assert_eq!(block_of_keras_layer(&spec("efficientnet_b0"), 100), 6);
        assert_eq!(block_of_keras_layer(&spec("mobilenetv2_100"), 100), 11);
        assert_eq!(block_of_keras_layer(&spec("efficientnet_b0"), 0), 0);
        assert_eq!(block_of_keras_layer(&spec("efficientnet_b0"), 89), 6);
        assert_eq!(block_of_keras_layer(&spec("efficientnet_b0"), 88), 5);
        // EfficientNetB0 has 237 layers: the last block ends at 233, top conv, bn, activation follow.
        assert_eq!(block_of_keras_layer(&spec("efficientnet_b0"), 233), 15);
        assert_eq!(block_of_keras_layer(&spec("efficientnet_b0"), 234), 16);
        assert_eq!(block_of_keras_layer(&spec("efficientnet_b0"), 10_000), 16);
    }
}
