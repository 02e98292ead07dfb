#!/usr/bin/env python3
"""Print, for Keras's EfficientNetB0/B1 and MobileNetV2, the index (in `model.layers`) of the first
layer of each MBConv block, and the layer count. `src/train/keras.rs` maps "fine-tune all but the
first k layers" (the reproduction's recipe, written for Keras) onto whole blocks with the same
numbers; its unit test holds this script's output.

Pinned: tensorflow-cpu 2.19.0, keras 3.15.1 (/work/venv-tf). Models are built with weights=None;
`weights="imagenet"` adds one layer (`rescaling_1`, the variance fix) before the stem of EfficientNet.

    /work/venv-tf/bin/python tools/keras_layer_blocks.py
"""

import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

assert keras.__version__ == "3.15.1", keras.__version__

BLOCK = {
    "efficientnet": re.compile(r"^block(\d+[a-z])_"),
    "mobilenetv2": re.compile(r"^(expanded_conv|block_\d+)_"),
}

MODELS = {
    "EfficientNetB0": ("efficientnet", keras.applications.EfficientNetB0),
    "EfficientNetB1": ("efficientnet", keras.applications.EfficientNetB1),
    "MobileNetV2": ("mobilenetv2", keras.applications.MobileNetV2),
}

for name, (family, ctor) in MODELS.items():
    layers = ctor(weights=None, include_top=False, input_shape=(160, 160, 3)).layers
    starts, seen = [], set()
    for i, layer in enumerate(layers):
        m = BLOCK[family].match(layer.name)
        if m and m.group(1) not in seen:
            seen.add(m.group(1))
            starts.append(i)
    print(f"{name}: {len(layers)} layers, block starts {starts}")
