#!/usr/bin/env python3
"""Numerical-parity fixtures for the core models, from timm.

Run from the repository root:
    python3 -m venv .venv && .venv/bin/pip install torch==2.5.1 timm==1.0.15 safetensors==0.8.0 numpy==2.4.6
    .venv/bin/python tools/make_timm_fixtures.py

Writes tests/fixtures/timm/:
  <case>.safetensors        expected outputs: `logits` and `reduction_<i>` endpoints (float32); metadata
                            describes the model (effnet name + width/depth overrides), the input and
                            where the weights come from.
  <case>.weights.safetensors  timm state_dict (random, seeded) for the reduced-width cases, saved exactly as
                            timm would (including `num_batches_tracked`).
  counts.json               parameter and MAC counts of the full-size models, counted by hooks on timm.

Inputs and the full-size models' weights are "formula" tensors (tools/formula.py), computed identically by
the Rust tests, so the committed fixtures stay small. Formula weights are followed by one train-mode pass
with BN momentum 1 on the input (`calibrate`), which sets the BN running statistics to the activations'
own statistics: without it the deep swish networks either vanish or explode and their logits stop
depending on the input, which would make the parity check blind.
"""

import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

import timm
from timm.models import efficientnet as tefn

sys.path.insert(0, os.path.dirname(__file__))
from formula import formula_tensor  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "timm")
torch.manual_seed(0)
torch.set_num_threads(2)


def build(kind, variant, width, depth, num_classes, tf):
    kw = dict(num_classes=num_classes, pretrained=False)
    if tf:
        kw.update(bn_eps=1e-3, pad_type="same")
    if kind == "efficientnet":
        return tefn._gen_efficientnet(variant, channel_multiplier=width, depth_multiplier=depth, **kw)
    if kind == "lite":
        return tefn._gen_efficientnet_lite(variant, channel_multiplier=width, depth_multiplier=depth, **kw)
    if kind == "mobilenetv2":
        return tefn._gen_mobilenet_v2(variant, width, depth_multiplier=depth, **kw)
    raise ValueError(kind)


def randomise(model, gen):
    """Random weights AND BN statistics, scaled so activations stay O(1)."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) * 1.5 + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
            elif t.ndim == 1 and name.endswith(".weight"):
                t.copy_(1.0 + 0.2 * torch.randn(t.shape, generator=gen))
            elif name.endswith("bias"):
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))
            else:
                fan_in = int(np.prod(t.shape[1:]))
                t.copy_(torch.randn(t.shape, generator=gen) * (2.0 / fan_in) ** 0.5)


def set_formula(model):
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not name.endswith("num_batches_tracked"):
                t.copy_(torch.from_numpy(formula_tensor(name, tuple(t.shape))))


VAR_FLOOR = 0.05


def calibrate(model, x):
    """Sets every BN's running statistics to the batch statistics of `x` (one train-mode pass with
    momentum 1, then + VAR_FLOOR), so that formula weights give a well-conditioned network whose output depends on its
    input. The Rust tests repeat the same pass with effnet's train-mode BN."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(x)
        # A floor on the variance keeps nearly constant channels (saturated ReLU6, 7x7 maps) from
        # amplifying float rounding differences between implementations.
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var += VAR_FLOOR
    model.eval()


def endpoints(model, x):
    """Outputs of the stages timm lists in feature_info (= TF's reduction_1..5)."""
    outs = {}
    hooks = []
    for i, info in enumerate(model.feature_info):
        mod = model.get_submodule(info["module"])
        hooks.append(mod.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o)))
    logits = model(x)
    for h in hooks:
        h.remove()
    return logits, [outs[i] for i in range(len(outs))]


def count(model, h, w):
    macs = [0]

    def conv_hook(m, a, o):
        macs[0] += o[0].numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]

    def lin_hook(m, a, o):
        macs[0] += m.in_features * m.out_features

    hooks = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    with torch.no_grad():
        model(torch.zeros(1, 3, h, w))
    for hk in hooks:
        hk.remove()
    return sum(p.numel() for p in model.parameters()), macs[0]


# (case, effnet name, timm kind, timm variant, width, depth, classes, tf, input shape, weights)
CASES = [
    ("tf_efficientnet_b0_full", "tf_efficientnet_b0", "efficientnet", "tf_efficientnet_b0", 1.0, 1.0, 1000, True, (1, 3, 224, 224), "formula"),
    ("efficientnet_b0_full", "efficientnet_b0", "efficientnet", "efficientnet_b0", 1.0, 1.0, 1000, False, (1, 3, 224, 224), "formula"),
    ("mobilenetv2_100_full", "mobilenetv2_100", "mobilenetv2", "mobilenetv2_100", 1.0, 1.0, 1000, False, (1, 3, 224, 224), "formula"),
    ("tf_efficientnet_lite0_full", "tf_efficientnet_lite0", "lite", "tf_efficientnet_lite0", 1.0, 1.0, 1000, True, (1, 3, 224, 224), "formula"),
    ("tf_efficientnet_b3_full", "tf_efficientnet_b3", "efficientnet", "tf_efficientnet_b3", 1.2, 1.4, 1000, True, (1, 3, 300, 300), "formula"),
    # Reduced width, random weights saved as timm safetensors (shared by the TF-"same" and symmetric cases:
    # names and shapes do not depend on padding).
    ("tf_efficientnet_b0_w01", "tf_efficientnet_b0", "efficientnet", "tf_efficientnet_b0", 0.1, 1.0, 10, True, (2, 3, 64, 64), "random"),
    ("efficientnet_b0_w01", "efficientnet_b0", "efficientnet", "efficientnet_b0", 0.1, 1.0, 10, False, (2, 3, 64, 64), "b0_w01.weights.safetensors"),
    ("tf_efficientnet_b0_w01_odd", "tf_efficientnet_b0", "efficientnet", "tf_efficientnet_b0", 0.1, 1.0, 10, True, (1, 3, 97, 131), "b0_w01.weights.safetensors"),
    ("efficientnet_b0_w01_odd", "efficientnet_b0", "efficientnet", "efficientnet_b0", 0.1, 1.0, 10, False, (1, 3, 97, 131), "b0_w01.weights.safetensors"),
]


def main():
    os.makedirs(OUT, exist_ok=True)
    gen = torch.Generator().manual_seed(1234)
    saved = {}
    for case, name, kind, variant, width, depth, classes, tf, shape, weights in CASES:
        model = build(kind, variant, width, depth, classes, tf).eval()
        if weights == "formula":
            set_formula(model)
        elif weights == "random":
            randomise(model, gen)
            weights = "b0_w01.weights.safetensors"
            sd = {k: v.contiguous() for k, v in model.state_dict().items()}
            save_file(sd, os.path.join(OUT, weights))
            saved[weights] = sd
        else:
            model.load_state_dict(saved[weights])
        x = torch.from_numpy(formula_tensor("input", shape))
        if weights == "formula":
            calibrate(model, x)
        with torch.no_grad():
            logits, eps = endpoints(model, x)
        tensors = {"logits": logits.contiguous()}
        # Keep fixtures small: endpoints 2..5 for small inputs, the last one for full-size models.
        keep = range(1, len(eps)) if shape[2] * shape[3] <= 128 * 128 else [len(eps) - 1]
        for i in keep:
            tensors[f"reduction_{i + 1}"] = eps[i].contiguous()
        meta = {
            "arch": name,
            "width": repr(width),
            "depth": repr(depth),
            "num_classes": str(classes),
            "input_shape": ",".join(map(str, shape)),
            "weights": weights,
            "reference": f"timm {timm.__version__}, torch {torch.__version__}",
        }
        save_file(tensors, os.path.join(OUT, f"{case}.safetensors"), metadata=meta)
        print(f"{case}: logits max |.| {logits.abs().max():.3f} std {logits.std():.3f}; endpoints {[tuple(e.shape) for e in eps]}")

    counts = {}
    for name in [f"efficientnet_b{i}" for i in range(8)] + ["efficientnet_lite0", "mobilenetv2_100", "mobilenetv2_140", "mobilenetv2_035"]:
        model = timm.create_model(name, pretrained=False).eval()
        cfg_res = {"efficientnet_b0": 224, "efficientnet_b1": 240, "efficientnet_b2": 260, "efficientnet_b3": 300,
                   "efficientnet_b4": 380, "efficientnet_b5": 456, "efficientnet_b6": 528, "efficientnet_b7": 600}.get(name, 224)
        params, macs = count(model, cfg_res, cfg_res)
        counts[name] = {"resolution": cfg_res, "params": params, "macs": macs}
        print(name, counts[name])
    with open(os.path.join(OUT, "counts.json"), "w") as f:
        json.dump(counts, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
