#!/usr/bin/env python3
"""Writes tests/fixtures/data/hf_parquet/{train,test,zstd}.parquet: a tiny image-classification dataset in the
Parquet form the Hugging Face hub serves (an Image column of {bytes, path} structs, a ClassLabel column,
features in the `huggingface` schema metadata), written by the `datasets` library itself.

    python3 -m venv .venv && .venv/bin/pip install datasets==4.0.0 pyarrow==21.0.0 pillow
    .venv/bin/python tools/make_hf_parquet_fixture.py

Images are 8x6 PNGs of one colour per class (`cat` red, `dog` blue) with the row index in the green
channel, so the test can check that every row lands in its class folder with its own pixels. zstd.parquet
is compressed with zstd, which effnet does not read: the test checks the typed error.
"""
import io
import os

import datasets
from PIL import Image

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "data", "hf_parquet")
NAMES = ["cat", "dog"]


def png(label, row):
    colour = (200, row * 10, 0) if label == 0 else (0, row * 10, 200)
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buf, format="PNG")
    return buf.getvalue()


def split(labels):
    features = datasets.Features({"image": datasets.Image(), "labels": datasets.ClassLabel(names=NAMES)})
    rows = {"image": [{"bytes": png(l, i), "path": None} for i, l in enumerate(labels)], "labels": labels}
    return datasets.Dataset.from_dict(rows, features=features)


os.makedirs(OUT, exist_ok=True)
split([0, 1, 1, 0, 1]).to_parquet(os.path.join(OUT, "train.parquet"))
split([1, 0]).to_parquet(os.path.join(OUT, "test.parquet"))
# The same rows with zstd compression, which effnet does not read (it must say so, not panic).
split([0, 1]).to_parquet(os.path.join(OUT, "zstd.parquet"), compression="zstd")
