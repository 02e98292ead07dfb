#!/usr/bin/env python3
"""EfficientNet-Lite0 reference for the TF-checkpoint model fixture (timm side).

Run with /work/venv/bin/python (it is called by make_tf_checkpoint_fixtures.py). Pinned versions:
    torch==2.5.1  timm==1.0.15  numpy==2.4.6

Builds timm's `tf_efficientnet_lite0` structure at a reduced width (TF "SAME" padding, BN eps 1e-3, ReLU6,
no SE, stem 32 and head 1280 fixed), randomises every parameter and BN statistic with a fixed seed, runs it
in eval mode on a seeded random input and writes:
  - `<out_dir>/lite0.io.safetensors`: `input` (NCHW f32) and `logits` with the metadata of
    modelfixtures.md;
  - `<npz>`: the same weights under the OFFICIAL tensorflow/tpu variable names in TF layouts (HWIO conv,
    [kh, kw, C, 1] depthwise, [in, out] dense), for the TF script to write as a checkpoint.

timm -> TF names (weights.md section 0): conv_stem/bn1 -> stem/conv2d, stem/tpu_batch_normalization;
blocks.{s}.{j} -> blocks_{flat index}; DepthwiseSeparableConv: conv_dw, bn1, conv_pw, bn2 ->
depthwise_conv2d, tpu_batch_normalization, conv2d, tpu_batch_normalization_1; InvertedResidual: conv_pw, bn1,
conv_dw, bn2, conv_pwl, bn3 -> conv2d, tpu_batch_normalization, depthwise_conv2d, tpu_batch_normalization_1,
conv2d_1, tpu_batch_normalization_2; conv_head/bn2 -> head/conv2d, head/tpu_batch_normalization;
classifier -> head/dense.
"""
import argparse

import numpy as np
import timm
import torch
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from timm.models.efficientnet import _gen_efficientnet_lite

import tf_checkpoint_fixture_io  # tools/tf_checkpoint_fixture_io.py, beside this script

SEED = 20240517
WIDTH = 0.04
DEPTH = 1.0
NUM_CLASSES = 10
BN_EPS = 1e-3
SIZE = 64
PREFIX = "efficientnet-lite0"


def randomise(model, gen):
    """Deterministic random weights, scaled so activations stay O(1)."""
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Conv2d):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * (1.6 / fan_in**0.5))
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.1)
            elif isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.weight.copy_(torch.rand(n, generator=gen) * 0.8 + 0.6)
                mod.bias.copy_(torch.randn(n, generator=gen) * 0.2)
                mod.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                mod.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            elif isinstance(mod, torch.nn.Linear):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * (2.0 / mod.in_features**0.5))
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.5)
        # bfloat16 precision (kept as float32): exact values that compress in git and gzip.
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.copy_(t.to(torch.bfloat16).to(torch.float32))


def conv_hwio(w):
    return w.detach().permute(2, 3, 1, 0).contiguous().numpy()


def depthwise_tf(w):
    return w.detach().permute(2, 3, 0, 1).contiguous().numpy()


def bn_tf(out, scope, bn):
    out[f"{scope}/gamma"] = bn.weight.detach().numpy()
    out[f"{scope}/beta"] = bn.bias.detach().numpy()
    out[f"{scope}/moving_mean"] = bn.running_mean.detach().numpy()
    out[f"{scope}/moving_variance"] = bn.running_var.detach().numpy()


def tf_weights(model):
    out = {}
    out[f"{PREFIX}/stem/conv2d/kernel"] = conv_hwio(model.conv_stem.weight)
    bn_tf(out, f"{PREFIX}/stem/tpu_batch_normalization", model.bn1)
    flat = 0
    for stage in model.blocks:
        for blk in stage:
            p = f"{PREFIX}/blocks_{flat}"
            if isinstance(blk, DepthwiseSeparableConv):
                out[f"{p}/depthwise_conv2d/depthwise_kernel"] = depthwise_tf(blk.conv_dw.weight)
                bn_tf(out, f"{p}/tpu_batch_normalization", blk.bn1)
                out[f"{p}/conv2d/kernel"] = conv_hwio(blk.conv_pw.weight)
                bn_tf(out, f"{p}/tpu_batch_normalization_1", blk.bn2)
            elif isinstance(blk, InvertedResidual):
                out[f"{p}/conv2d/kernel"] = conv_hwio(blk.conv_pw.weight)
                bn_tf(out, f"{p}/tpu_batch_normalization", blk.bn1)
                out[f"{p}/depthwise_conv2d/depthwise_kernel"] = depthwise_tf(blk.conv_dw.weight)
                bn_tf(out, f"{p}/tpu_batch_normalization_1", blk.bn2)
                out[f"{p}/conv2d_1/kernel"] = conv_hwio(blk.conv_pwl.weight)
                bn_tf(out, f"{p}/tpu_batch_normalization_2", blk.bn3)
            else:
                raise TypeError(f"unexpected block {type(blk)}")
            assert isinstance(blk.se, torch.nn.Identity), "Lite has no SE"
            flat += 1
    out[f"{PREFIX}/head/conv2d/kernel"] = conv_hwio(model.conv_head.weight)
    bn_tf(out, f"{PREFIX}/head/tpu_batch_normalization", model.bn2)
    out[f"{PREFIX}/head/dense/kernel"] = model.classifier.weight.detach().t().contiguous().numpy()
    out[f"{PREFIX}/head/dense/bias"] = model.classifier.bias.detach().numpy()
    # Every state-dict entry except num_batches_tracked must have been mapped exactly once.
    n_state = sum(1 for k in model.state_dict() if not k.endswith("num_batches_tracked"))
    assert n_state == len(out), (n_state, len(out))
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--npz", required=True)
    args = ap.parse_args()

    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = _gen_efficientnet_lite(
        "tf_efficientnet_lite0", WIDTH, DEPTH, num_classes=NUM_CLASSES, bn_eps=BN_EPS, pad_type="same"
    )
    randomise(model, gen)
    model.eval()
    x = torch.randn((1, 3, SIZE, SIZE), generator=gen)
    with torch.no_grad():
        logits = model(x)
    print(
        f"lite0 logits |max| {float(logits.abs().max()):.3f} std {float(logits.std()):.3f}, "
        f"std over classes {float(logits.std()):.3f}"
    )

    np.savez(args.npz, **tf_weights(model))
    meta = {
        "arch": "tf_efficientnet_lite0",
        "width": str(WIDTH),
        "depth": str(DEPTH),
        "num_classes": str(NUM_CLASSES),
        "bn_eps": str(BN_EPS),
        "padding": "same",
        "naming": "tf",
        "weights": "lite0.tar.gz",
        "reference": f"timm {timm.__version__} (torch {torch.__version__.split('+')[0]}), "
        "_gen_efficientnet_lite(pad_type='same', bn_eps=1e-3)",
    }
    tf_checkpoint_fixture_io.save_file(
        {"input": x.numpy().astype(np.float32), "logits": logits.numpy().astype(np.float32)},
        f"{args.out_dir}/lite0.io.safetensors",
        metadata=meta,
    )


if __name__ == "__main__":
    main()
