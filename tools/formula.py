"""Deterministic "formula" tensors shared by the fixture scripts and the Rust tests.

Full-size models would need tens of MB of weights; instead both sides compute every tensor from its name
and shape, so only expected outputs are committed. The Rust twin is `tests/common/mod.rs`
(`formula_tensor`); keep the two in sync.

value(name, k) = sin(phase(name) + k + k*k*0.001) for the k-th element (row-major; a chirp, so that
shifted copies of a tensor differ and padding errors cannot hide), with
phase(name) = (fnv1a64(name) % 100000) / 1000, computed in float64, then scaled by kind:
  rank-4 conv weight [O, I, kh, kw]  -> v * sqrt(2 / (I * kh * kw))
  rank-2 linear weight [O, I]        -> v * sqrt(2 / I)
  name ends with running_var         -> 1 + 0.25 * (1 + v)
  name ends with running_mean        -> 0.1 * v
  rank-1 name ends with .weight (BN) -> 1 + 0.2 * v
  name ends with bias                -> 0.1 * v
  anything else (e.g. the input)     -> v
and finally cast to float32.
"""

import math

import numpy as np


def fnv1a64(s: str) -> int:
    h = 0xCBF29CE484222325
    for b in s.encode():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def formula_tensor(name: str, shape) -> np.ndarray:
    n = int(np.prod(shape)) if len(shape) else 1
    phase = (fnv1a64(name) % 100000) / 1000.0
    k = np.arange(n, dtype=np.float64)
    v = np.sin(phase + k + (k * k) * 0.001)
    if len(shape) == 4 and name.endswith("weight"):
        v = v * math.sqrt(2.0 / (shape[1] * shape[2] * shape[3]))
    elif len(shape) == 2 and name.endswith("weight"):
        v = v * math.sqrt(2.0 / shape[1])
    elif name.endswith("running_var"):
        v = 1.0 + 0.25 * (1.0 + v)
    elif name.endswith("running_mean"):
        v = 0.1 * v
    elif len(shape) == 1 and name.endswith(".weight"):
        v = 1.0 + 0.2 * v
    elif name.endswith("bias"):
        v = 0.1 * v
    return v.astype(np.float32).reshape(shape)
