#!/usr/bin/env python3
"""Writes the Keras HDF5 fixtures under tests/fixtures/keras_h5/.

Run with:  /work/venv-tf/bin/python tools/make_keras_h5_fixtures.py

Pinned versions (checked below): tensorflow 2.19.1 (tensorflow-cpu 2.19.0 also present),
tf-keras 2.19.0 (Keras 2: `name:0` weight names and the Normalization `count` weight, as in
the keras-applications files), keras 3.15.1, h5py 3.16.0, numpy 2.1.3, safetensors 0.8.0.
Everything is seeded: a second run writes byte-identical HDF5 files and the same tensors and
metadata (safetensors may order its metadata keys differently).

Format fixtures (a small model with Normalization, Conv2D, BatchNormalization, DepthwiseConv2D
and Dense):
  small_full.h5            tf-keras `model.save(..h5)`: legacy full model, `/model_weights`
  small_weights.h5         tf-keras `save_weights(..h5)`: legacy weights-only layout
  small_fixed_chunked.h5   the same weights rewritten by h5py like the 2019 keras-applications
                           files (fixed-length string attributes) and harder: a 512-byte user
                           block, `layer_names` split into `layer_names0/1`, chunked datasets
                           (edge chunks) with shuffle+deflate, one fletcher32, one big-endian
  small_latest.h5          the same rewritten with libver='latest': superblock v3, v2 object
                           headers, link messages
  small_k3_full.h5         Keras 3 `model.save(..h5)` (names without `:0`)
  small_k3.weights.h5      Keras 3 `save_weights(..weights.h5)`: `layers/<obj>/vars/<i>`
  plain.h5, dense_links.h5 HDF5 files the reader must reject: not Keras; dense link storage
Each `<file>.expected.safetensors` holds every tensor the reader must return, under the name it
must return, with metadata `layout` and `layers` (JSON list of [layer, [weight names]]).

Model fixtures (tests/fixtures/keras_h5/<case>.io.safetensors, see modelfixtures.md):
  keras_b0    tf-keras EfficientNet(width 0.1, depth 1.0, 48x48, 10 classes), arch tf_efficientnet_b0
  keras_mnv2  tf-keras MobileNetV2(alpha 0.1, 32x32, 10 classes), arch tf_mobilenetv2_100
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import h5py  # noqa: E402
import keras  # noqa: E402  (Keras 3)
import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402  (Keras 2)
from safetensors.numpy import save_file  # noqa: E402
from tf_keras.src.applications import efficientnet as tfk_efficientnet  # noqa: E402

PINS = {
    "tensorflow": (tf.__version__, "2.19.1"),
    "tf_keras": (tf_keras.__version__, "2.19.0"),
    "keras": (keras.__version__, "3.15.1"),
    "h5py": (h5py.__version__, "3.16.0"),
    "numpy": (np.__version__, "2.1.3"),
    "safetensors": (safetensors.__version__, "0.8.0"),
}
for pkg, (got, want) in PINS.items():
    if got != want:
        sys.exit(f"{pkg} {got} installed, this script is pinned to {want}")

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "keras_h5")
os.makedirs(OUT, exist_ok=True)
tf.random.set_seed(0)
tf_keras.utils.set_random_seed(0)


def path(name):
    return os.path.join(OUT, name)


# ---------------------------------------------------------------------------------------------
# Random weights that keep activations O(1)


def randomize(model, rng, dense_scale=1.0):
    """Assigns seeded random values to every variable (tf-keras or Keras 3 model)."""
    for layer in model.layers:
        for w in layer.weights:
            name = w.name.split("/")[-1].split(":")[0]
            shape = tuple(w.shape)
            if name in ("kernel", "depthwise_kernel"):
                if len(shape) == 4 and (name == "depthwise_kernel" or type(layer).__name__ == "DepthwiseConv2D"):
                    fan_in = shape[0] * shape[1]
                else:
                    fan_in = int(np.prod(shape[:-1]))
                std = (dense_scale if len(shape) == 2 else 1.0) * np.sqrt(1.5 / fan_in)
                v = rng.normal(0.0, std, shape)
            elif name == "bias":
                v = rng.uniform(-0.2, 0.2, shape)
            elif name == "gamma":
                v = rng.uniform(0.5, 1.5, shape)
            elif name in ("beta", "moving_mean"):
                v = rng.uniform(-0.3, 0.3, shape)
            elif name == "moving_variance":
                v = rng.uniform(0.5, 2.0, shape)
            elif name == "mean":
                v = rng.uniform(0.3, 0.6, shape)
            elif name == "variance":
                v = rng.uniform(0.05, 0.3, shape)
            elif name == "count":
                v = np.array(123456789012, dtype=np.int64)
            else:
                sys.exit(f"no rule to randomize {w.name}")
            w.assign(np.asarray(v, dtype=w.dtype if isinstance(w.dtype, str) else w.dtype.name))


def write_expected(h5_name, layout, layers):
    """layers: [(layer name, [(weight name, array)])] in the order the reader must return."""
    tensors = {n: np.array(a, order="C") for _, ws in layers for n, a in ws}  # keeps 0-d shapes
    meta = {
        "layout": layout,
        "layers": json.dumps([[l, [n for n, _ in ws]] for l, ws in layers]),
        "source": h5_name,
    }
    save_file(tensors, path(h5_name + ".expected.safetensors"), metadata=meta)


# ---------------------------------------------------------------------------------------------
# Format fixtures


def small_model(k):
    inp = k.Input((8, 8, 3), name="image")
    if k is tf_keras:
        x = k.layers.Normalization(axis=-1, name="normalization")(inp)
    else:
        x = k.layers.Normalization(axis=-1, name="normalization")
        x.build((None, 8, 8, 3))
        x = x(inp)
    x = k.layers.Conv2D(4, 3, padding="same", name="conv")(x)
    x = k.layers.BatchNormalization(name="bn")(x)
    x = k.layers.DepthwiseConv2D(3, use_bias=False, name="dwconv")(x)
    x = k.layers.GlobalAveragePooling2D(name="pool")(x)
    x = k.layers.Dense(5, name="dense")(x)
    return k.Model(inp, x, name="small")


def legacy_layers(model):
    """Expected legacy layout: every layer in model order with its weights as Keras 2 names them."""
    out = []
    for layer in model.layers:
        out.append((layer.name, [(w.name, w.numpy()) for w in layer.weights]))
    return out


def rewrite(src, dst, libver, hard):
    """Copies a weights-only file with h5py, optionally in the 'hard' variant (see docstring)."""
    with h5py.File(src, "r") as s, h5py.File(dst, "w", libver=libver, userblock_size=512 if hard else 0) as d:

        def attrs(so, do):
            for key, value in so.attrs.items():
                if hard and isinstance(value, np.ndarray) and value.dtype == object:
                    value = np.array([v.encode() if isinstance(v, str) else v for v in value], dtype="S")
                    if key == "layer_names":
                        half = (len(value) + 1) // 2
                        do.attrs["layer_names0"] = value[:half]
                        do.attrs["layer_names1"] = value[half:]
                        continue
                do.attrs[key] = value

        attrs(s, d)
        index = 0

        def visit(name, obj):
            nonlocal index
            if isinstance(obj, h5py.Group):
                attrs(obj, d.require_group(name))
                return
            value = obj[()]
            kw = {}
            if hard and value.ndim > 0:
                index += 1
                chunks = tuple(max(1, (n + 1) // 2) for n in value.shape)
                kw = dict(chunks=chunks, compression="gzip", compression_opts=6, shuffle=True)
                if index == 2:
                    kw = dict(chunks=chunks, fletcher32=True)
                if index == 3:
                    value = value.astype(value.dtype.newbyteorder(">"))
            d.create_dataset(name, data=value, **kw)

        s.visititems(visit)


def format_fixtures():
    rng = np.random.default_rng(1)
    m2 = small_model(tf_keras)
    randomize(m2, rng)
    m2.save(path("small_full.h5"))
    m2.save_weights(path("small_weights.h5"))
    layers = legacy_layers(m2)
    write_expected("small_full.h5", "FullModel", layers)
    write_expected("small_weights.h5", "WeightsOnly", layers)
    rewrite(path("small_weights.h5"), path("small_fixed_chunked.h5"), "earliest", True)
    write_expected("small_fixed_chunked.h5", "WeightsOnly", layers)
    rewrite(path("small_weights.h5"), path("small_latest.h5"), "latest", False)
    write_expected("small_latest.h5", "WeightsOnly", layers)

    rng = np.random.default_rng(2)
    m3 = small_model(keras)
    randomize(m3, rng)
    m3.save(path("small_k3_full.h5"))
    write_expected(
        "small_k3_full.h5",
        "FullModel",
        [(l.name, [(w.path, w.numpy()) for w in l.weights]) for l in m3.layers],
    )
    m3.save_weights(path("small_k3.weights.h5"))
    by_name = {l.name: l for l in m3.layers}
    k3 = []
    with h5py.File(path("small_k3.weights.h5"), "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Group) and name.split("/")[-1] == "vars":
                prefix = name[: -len("vars")].rstrip("/")
                label = obj.attrs.get("name")
                layer = by_name.get(label)
                variables = (layer._trainable_variables + layer._non_trainable_variables) if layer else []
                k3.append((label, [(f"{name}/{i}", v.numpy()) for i, v in enumerate(variables)]))
                assert len(obj) == len(variables), (name, len(obj), len(variables))
                del prefix

        f.visititems(visit)
    write_expected("small_k3.weights.h5", "Keras3", k3)

    # Not Keras files: a plain HDF5 file, and one whose group uses dense link storage.
    with h5py.File(path("plain.h5"), "w") as f:
        f["x"] = np.arange(3, dtype=np.float32)
    with h5py.File(path("dense_links.h5"), "w", libver="latest") as f:
        f.attrs["layer_names"] = np.array([b"l%d" % i for i in range(10)])
        for i in range(10):
            f.create_group("l%d" % i).attrs["weight_names"] = np.zeros(0)


# ---------------------------------------------------------------------------------------------
# Model fixtures


def model_fixture(case, model, x, input_layer, meta):
    weights = case + ".h5"
    model.save_weights(path(weights))
    seen = model if input_layer is None else tf_keras.Model(model.input, model.get_layer(input_layer).output)
    net_input = np.asarray(seen(x, training=False) if input_layer else x, dtype=np.float32)
    logits = np.asarray(model(x, training=False), dtype=np.float32)
    print(f"{case}: |logits| max {np.abs(logits).max():.3f} mean {np.abs(logits).mean():.3f}")
    meta = dict(meta, weights=weights, num_classes="10", bn_eps="0.001", padding="same", naming="keras",
                reference=f"tf-keras {tf_keras.__version__} (TensorFlow {tf.__version__})")
    save_file(
        {"input": np.ascontiguousarray(net_input.transpose(0, 3, 1, 2)), "logits": logits},
        path(case + ".io.safetensors"),
        metadata=meta,
    )


def model_fixtures():
    rng = np.random.default_rng(3)
    b0 = tfk_efficientnet.EfficientNet(
        width_coefficient=0.1, depth_coefficient=1.0, default_size=48, weights=None, classes=10,
        classifier_activation=None, model_name="efficientnetb0", input_shape=(48, 48, 3))
    randomize(b0, rng, dense_scale=12.0)
    # The published files' Normalization weights: mean, and the std values stored as variance.
    norm = b0.get_layer("normalization")
    norm.set_weights([np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32),
                      np.array(0, np.int64)])
    pixels = rng.uniform(0.0, 255.0, (2, 48, 48, 3)).astype(np.float32)
    model_fixture("keras_b0", b0, pixels, "normalization",
                  {"arch": "tf_efficientnet_b0", "width": "0.1", "depth": "1.0"})

    rng = np.random.default_rng(4)
    mnv2 = tf_keras.applications.MobileNetV2(alpha=0.1, weights=None, classes=10, classifier_activation=None,
                                             input_shape=(32, 32, 3))
    randomize(mnv2, rng, dense_scale=3.0)
    x = rng.uniform(-1.0, 1.0, (2, 32, 32, 3)).astype(np.float32)
    model_fixture("keras_mnv2", mnv2, x, None, {"arch": "tf_mobilenetv2_100", "width": "0.1", "depth": "1.0"})


if __name__ == "__main__":
    format_fixtures()
    model_fixtures()
