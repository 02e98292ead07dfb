//! Exact parameter and multiply-accumulate counts, computed from the resolved block list.

use super::resolve::{ResolvedNetwork, STEM_KERNEL, STEM_STRIDE};

/// Output size of a convolution with an odd kernel: `ceil(input / stride)`, identical for symmetric
/// `(k - 1) / 2` padding and TF "SAME" padding.
pub fn conv_output_size(input: usize, stride: usize) -> usize {
    input.div_ceil(stride)
}

/// Parameter and multiply-accumulate counts of a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Trainable parameters (conv and linear weights and biases, BN scale and shift), as timm and
    /// torchvision count them; BN running statistics are buffers and not counted.
    pub params: usize,
    /// Multiply-accumulates of one image at the given size: convolutions, SE and classifier
    /// (the paper's "FLOPs" column counts these). BN, activations and pooling are not counted.
    pub macs: u64,
}

impl Counts {
    /// Counts for one `height` x `width` image.
    pub fn of(net: &ResolvedNetwork, height: usize, width: usize) -> Self {
        let mut params = 0usize;
        let mut macs = 0u64;
        // A bias-free conv followed by BN: weight + BN scale and shift.
        let mut conv_bn = |cin: usize, cout: usize, k: usize, groups: usize, pixels: usize| {
            params += cout * (cin / groups) * k * k + 2 * cout;
            macs += (pixels * cout * (cin / groups) * k * k) as u64;
        };
        let (mut h, mut w) = (
            conv_output_size(height, STEM_STRIDE),
            conv_output_size(width, STEM_STRIDE),
        );
        conv_bn(net.in_channels, net.stem_channels, STEM_KERNEL, 1, h * w);
        let mut se_params = 0usize;
        let mut se_macs = 0u64;
        for b in &net.blocks {
            if b.has_expansion() {
                conv_bn(b.in_channels, b.mid_channels, 1, 1, h * w);
            }
            h = conv_output_size(h, b.stride);
            w = conv_output_size(w, b.stride);
            conv_bn(
                b.mid_channels,
                b.mid_channels,
                b.kernel,
                b.mid_channels,
                h * w,
            );
            if let Some(se) = b.se_channels {
                se_params += 2 * b.mid_channels * se + se + b.mid_channels;
                se_macs += 2 * (b.mid_channels * se) as u64;
            }
            conv_bn(b.mid_channels, b.out_channels, 1, 1, h * w);
        }
        let last = net
            .blocks
            .last()
            .map_or(net.stem_channels, |b| b.out_channels);
        conv_bn(last, net.head_channels, 1, 1, h * w);
        params += se_params;
        macs += se_macs;
        if net.num_classes > 0 {
            params += net.head_channels * net.num_classes + net.num_classes;
            macs += (net.head_channels * net.num_classes) as u64;
        }
        Counts { params, macs }
    }
}
