#!/usr/bin/env python3
"""Fixtures for the TensorFlow checkpoint (TensorBundle V2) reader: tests/fixtures/tf_checkpoint/.

Run from the repository root:
    /work/venv-tf/bin/python tools/make_tf_checkpoint_fixtures.py [--timm-python /work/venv/bin/python]

Pinned versions (this venv): tensorflow==2.19.1 (tensorflow-cpu 2.19.0 wheel), keras==3.15.1, numpy==2.1.3,
ml_dtypes==0.6.0. The Lite0 reference is computed by make_tf_checkpoint_lite_reference.py
in the timm venv (torch==2.5.1, timm==1.0.15), which this script calls.

Everything is seeded and deterministic. Output:

Format fixtures (every value is listed in `expected.json`; non-finite floats as the strings "inf", "-inf",
"nan"; integers exactly):
  format/       tf.compat.v1 Saver checkpoint: float32 (matrix, scalar, empty [0,3]), float16 (with inf,
                subnormals, -0.0), bfloat16, float64, int32, int64 (scalar and vector, values beyond 2^53),
                20 names sharing a long prefix (crosses the 16-entry restart interval), a name that is a
                prefix of another, a non-ASCII name.
  sharded/      Saver(sharded=True) with variables on two logical CPUs -> data-0000{0,1}-of-00002.
  tf2/          tf.train.Checkpoint.write(): object-graph entry `_CHECKPOINTABLE_OBJECT_GRAPH` (DT_STRING) and
                `.ATTRIBUTES/VARIABLE_VALUE` names, no `checkpoint` file.
  unsupported/  a complex64 variable next to a float one.

Model fixtures (modelfixtures.md), written by tf.compat.v1 Saver over a graph built the way tensorflow/tpu
training builds it: model variables with the OFFICIAL names (weights.md section 1.4), an
ExponentialMovingAverage over all of them (shadow `<name>/ExponentialMovingAverage`), an RMSPropOptimizer
(slots `<name>/RMSProp` = rms, `<name>/RMSProp_1` = momentum, for trainable variables only) and
`global_step` (int64). The EMA shadows hold the reference values; the plain variables hold
reference + noise (moving variances: reference * U(0.5, 1.5)), so a loader that ignores the EMA copies gets
other logits. The slots keep the values a fresh RMSPropOptimizer gives them (rms ones, momentum zeros),
which keeps the files compressible.
  b0/, b0.io.safetensors      Keras EfficientNet(width, depth 1.0): 16 blocks, one expand-ratio-1 block.
  b1/, b1.io.safetensors      Keras EfficientNet(width, depth 1.1): 23 blocks, two expand-ratio-1 blocks.
  lite0.tar.gz, lite0.io.safetensors
                              timm tf_efficientnet_lite0 structure (ReLU6, no SE, stem 32 / head 1280 fixed),
                              names `efficientnet-lite0/...`; the archive holds
                              efficientnet-lite0/{checkpoint,model.ckpt.index,model.ckpt.data-00000-of-00001}
                              like the released tarballs.
Keras layer names are mapped to TF names with the rule of keras' efficientnet_weight_update_util.py
(weights.md section 3.3). `input` in the .io files is the output of Keras' Normalization layer (what
`stem_conv_pad` receives), NCHW.
"""
import argparse
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["KERAS_BACKEND"] = "tensorflow"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras.src.applications.efficientnet import EfficientNet  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tf_checkpoint_fixture_io  # noqa: E402  (tools/tf_checkpoint_fixture_io.py)

SEED = 20240517
WIDTH = 0.04  # smallest stage widths (8) with distinct late-stage widths (16, head 48); keeps files small
NUM_CLASSES = 10
SIZE = 64
OUT = os.path.join("tests", "fixtures", "tf_checkpoint")
BF16 = tf.bfloat16.as_numpy_dtype

# ---------------------------------------------------------------------------------------------------------
# Writing checkpoints


def save_v1(directory, variables, devices=None):
    """Saves `variables` (name -> numpy array) with tf.compat.v1 Saver as `directory/model.ckpt`.

    `devices` (name -> device string) places variables; with more than one device the save is sharded.
    """
    os.makedirs(directory, exist_ok=True)
    sharded = devices is not None and len(set(devices.values())) > 1
    g = tf.Graph()
    with g.as_default():
        var_map = {}
        for i, (name, value) in enumerate(variables.items()):
            with tf.device(devices[name] if devices else "/cpu:0"):
                var_map[name] = tf.compat.v1.Variable(value, name=f"v{i}")
        saver = tf.compat.v1.train.Saver(var_list=var_map, sharded=sharded, save_relative_paths=True)
        config = tf.compat.v1.ConfigProto(device_count={"CPU": 2})
        with tf.compat.v1.Session(graph=g, config=config) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, os.path.join(directory, "model.ckpt"), write_meta_graph=False)


def save_training_checkpoint(directory, reference, rng, global_step):
    """Saves model variables the way tensorflow/tpu training does (EMA shadows, RMSProp slots, global_step).

    `reference` maps official variable names to values; BN moving statistics are not trainable.
    """
    os.makedirs(directory, exist_ok=True)
    g = tf.Graph()
    with g.as_default():
        step = tf.compat.v1.train.get_or_create_global_step()
        model_vars = {}
        for name, value in reference.items():
            trainable = not name.endswith(("moving_mean", "moving_variance"))
            model_vars[name] = tf.compat.v1.get_variable(
                name, initializer=tf.constant(np.zeros_like(value)), trainable=trainable
            )
        trainables = [v for v in model_vars.values() if v.trainable]
        opt = tf.compat.v1.train.RMSPropOptimizer(0.016, decay=0.9, momentum=0.9, epsilon=0.001)
        opt.apply_gradients([(tf.zeros_like(v), v) for v in trainables], global_step=step)
        ema = tf.compat.v1.train.ExponentialMovingAverage(decay=0.9999, num_updates=step)
        ema.apply(list(model_vars.values()))
        # One feed for every value: the plain variables get reference + noise, the shadows the reference.
        feeds, assigns = {}, [step.assign(global_step)]
        for name, var in model_vars.items():
            ref = reference[name]
            if name.endswith("moving_variance"):
                raw = coarse(ref * rng.uniform(0.5, 1.5, ref.shape))
            else:
                raw = coarse(ref + rng.standard_normal(ref.shape) * (0.5 * float(np.std(ref)) + 0.05))
            for target, value in ((var, raw), (ema.average(var), ref)):
                ph = tf.compat.v1.placeholder(tf.float32, ref.shape)
                assigns.append(target.assign(ph))
                feeds[ph] = value.astype(np.float32)
        saver = tf.compat.v1.train.Saver(save_relative_paths=True)
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(assigns, feed_dict=feeds)
            saver.save(sess, os.path.join(directory, "model.ckpt"), write_meta_graph=False)
    # Read back with TensorFlow: EMA shadows hold exactly the reference, plain variables differ.
    reader = tf.train.load_checkpoint(os.path.join(directory, "model.ckpt"))
    for name, ref in reference.items():
        assert np.array_equal(reader.get_tensor(f"{name}/ExponentialMovingAverage"), ref), name
        assert not np.array_equal(reader.get_tensor(name), ref), name
    n_train = sum(1 for n in reference if not n.endswith(("moving_mean", "moving_variance")))
    n_saved = len(reader.get_variable_to_shape_map())
    assert n_saved == 2 * len(reference) + 2 * n_train + 1, n_saved


def write_tar_gz(path, src_dir, arc_dir):
    """Deterministic .tar.gz holding `arc_dir/` with the files of `src_dir`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(arc_dir)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
        tar.addfile(info)
        for name in sorted(os.listdir(src_dir)):
            with open(os.path.join(src_dir, name), "rb") as f:
                data = f.read()
            info = tarfile.TarInfo(f"{arc_dir}/{name}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    with open(path, "wb") as f:
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=9) as gz:
            gz.write(buf.getvalue())


# ---------------------------------------------------------------------------------------------------------
# Format fixtures


def json_values(arr):
    """Every element as a JSON value: exact ints, floats as float64 (strings for non-finite)."""
    flat = np.asarray(arr).reshape(-1)
    if np.issubdtype(flat.dtype, np.integer):
        return [int(v) for v in flat]
    out = []
    for v in flat.astype(np.float64):
        if np.isnan(v):
            out.append("nan")
        elif np.isinf(v):
            out.append("inf" if v > 0 else "-inf")
        else:
            out.append(float(v))
    return out


DTYPE_NAMES = {
    np.dtype(np.float32): "float32",
    np.dtype(np.float16): "float16",
    np.dtype(BF16): "bfloat16",
    np.dtype(np.float64): "float64",
    np.dtype(np.int32): "int32",
    np.dtype(np.int64): "int64",
}


def expected(variables):
    return {
        name: {"dtype": DTYPE_NAMES[np.asarray(v).dtype], "shape": list(np.shape(v)), "values": json_values(v)}
        for name, v in variables.items()
    }


def format_fixtures(rng):
    f16 = np.array([0.0, -0.0, 1.0 / 3.0, 65504.0, -2.0**-24, 6.1e-5, np.inf, -np.inf], dtype=np.float16)
    variables = {
        "float32/matrix": rng.standard_normal((3, 4)).astype(np.float32),
        "float32/scalar": np.float32(-1.5e-7),
        "float32/empty": np.zeros((0, 3), np.float32),
        "float16/vector": f16,
        "bfloat16/matrix": rng.standard_normal((2, 5)).astype(BF16),
        "float64/tensor4d": rng.standard_normal((2, 3, 2, 2)),
        "int32/vector": np.array([0, -1, 7, -(2**31), 2**31 - 1], np.int32),
        "int64/scalar": np.int64(2**62 + 12345),
        "int64/vector": np.array([-(2**63), 2**63 - 1, 0, 9007199254740993], np.int64),
        "prefix/x/kernel": rng.standard_normal((2, 2)).astype(np.float32),
        "prefix/x/kernel/ExponentialMovingAverage": rng.standard_normal((2, 2)).astype(np.float32),
        "names/\u00fcnicode_\u65e5\u672c": np.array([1.0, 2.0], np.float32),
    }
    for i in range(20):
        name = f"model/encoder/a_rather_long_shared_scope_name/sublayer_{i:02d}/weight"
        variables[name] = rng.standard_normal((i % 3 + 1,)).astype(np.float32)
    save_v1(os.path.join(OUT, "format"), variables)

    sharded = {
        "shard0/kernel": rng.standard_normal((4, 3)).astype(np.float32),
        "shard0/half": rng.standard_normal((5,)).astype(np.float16),
        "shard1/bias": rng.standard_normal((3,)).astype(np.float32),
        "shard1/step": np.int64(123456789),
        "shard1/double": rng.standard_normal((2, 2)),
    }
    devices = {n: "/cpu:0" if n.startswith("shard0") else "/cpu:1" for n in sharded}
    save_v1(os.path.join(OUT, "sharded"), sharded, devices)
    assert os.path.exists(os.path.join(OUT, "sharded", "model.ckpt.data-00001-of-00002"))

    tf2_value = np.array([0.5, -0.25, 4.0], np.float32)
    tf2_dir = os.path.join(OUT, "tf2")
    os.makedirs(tf2_dir, exist_ok=True)
    tf.train.Checkpoint(v=tf.Variable(tf2_value)).write(os.path.join(tf2_dir, "ckpt"))

    save_v1(
        os.path.join(OUT, "unsupported"),
        {"ok/x": np.ones((2,), np.float32), "bad/complex": np.array([1 + 2j, 3 - 4j], np.complex64)},
    )

    doc = {
        "format": expected(variables),
        "sharded": expected(sharded),
        "tf2": expected({"v/.ATTRIBUTES/VARIABLE_VALUE": tf2_value}),
    }
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False, sort_keys=True)
        f.write("\n")


# ---------------------------------------------------------------------------------------------------------
# Model fixtures


def coarse(values):
    """Rounds to bfloat16 precision (kept as float32): exact values that compress in git and gzip."""
    return np.asarray(values, np.float32).astype(BF16).astype(np.float32)


def randomise_keras(model, rng):
    """Deterministic random weights for every Keras layer, scaled so activations stay O(1).

    BN moving statistics are random too, but centred on the statistics of the layer's real input for a
    random batch (mean + 0.3 std N(0, 1), variance * U(0.5, 2)), layer after layer: otherwise the signal
    fades through 16+ blocks and the logits hardly depend on the input.
    """
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization) or not layer.weights:
            continue
        values = []
        for w in layer.weights:
            shape, leaf = tuple(w.shape), w.name
            if isinstance(layer, keras.layers.DepthwiseConv2D):
                v = rng.standard_normal(shape) * (1.6 / np.sqrt(shape[0] * shape[1]))
            elif isinstance(layer, keras.layers.Conv2D) and leaf == "kernel":
                v = rng.standard_normal(shape) * (1.3 / np.sqrt(np.prod(shape[:3])))
            elif isinstance(layer, keras.layers.Dense) and leaf == "kernel":
                v = rng.standard_normal(shape) * (1.0 / np.sqrt(shape[0]))
            elif leaf == "bias":
                v = rng.standard_normal(shape) * (0.5 if isinstance(layer, keras.layers.Dense) else 0.1)
            elif leaf == "gamma":
                v = rng.uniform(0.6, 1.4, shape)
            elif leaf in ("beta", "moving_mean"):
                v = rng.standard_normal(shape) * 0.2
            elif leaf == "moving_variance":
                v = rng.uniform(0.5, 2.0, shape)
            else:
                raise ValueError(f"unexpected weight {layer.name}/{leaf}")
            values.append(coarse(v))
        layer.set_weights(values)
    batch = (rng.standard_normal((16, SIZE, SIZE, 3)) * 255.0).astype(np.float32)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            seen = np.asarray(keras.Model(model.inputs, layer.input)(batch, training=False))
            mean, var = seen.mean(axis=(0, 1, 2)), seen.var(axis=(0, 1, 2))
            gamma, beta, _, _ = layer.get_weights()
            mean = mean + 0.3 * np.sqrt(var) * rng.standard_normal(mean.shape)
            var = var * rng.uniform(0.5, 2.0, var.shape) + 1e-3
            layer.set_weights([gamma, beta, coarse(mean), coarse(var)])


BLOCK_RE = re.compile(r"^block(\d+)([a-z])_(.+)$")
# weights.md section 3.3; key: Keras layer suffix, value: (TF layer in an expand-ratio-1 block, in others).
BLOCK_LAYERS = {
    "expand_conv": (None, "conv2d"),
    "expand_bn": (None, "tpu_batch_normalization"),
    "dwconv": ("depthwise_conv2d", "depthwise_conv2d"),
    "bn": ("tpu_batch_normalization", "tpu_batch_normalization_1"),
    "se_reduce": ("se/conv2d", "se/conv2d"),
    "se_expand": ("se/conv2d_1", "se/conv2d_1"),
    "project_conv": ("conv2d", "conv2d_1"),
    "project_bn": ("tpu_batch_normalization_1", "tpu_batch_normalization_2"),
}
TOP_LAYERS = {
    "stem_conv": "stem/conv2d",
    "stem_bn": "stem/tpu_batch_normalization",
    "top_conv": "head/conv2d",
    "top_bn": "head/tpu_batch_normalization",
    "predictions": "head/dense",
}


def keras_to_tf(model, tf_model_name):
    """Keras EfficientNet weights -> {official TF name: value}."""
    blocks = sorted({m.group(1) + m.group(2) for m in (BLOCK_RE.match(l.name) for l in model.layers) if m})
    flat = {b: i for i, b in enumerate(blocks)}
    out = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization) or not layer.weights:
            continue
        m = BLOCK_RE.match(layer.name)
        if m:
            first_stage = m.group(1) == "1"
            tf_layer = BLOCK_LAYERS[m.group(3)][0 if first_stage else 1]
            assert tf_layer is not None, layer.name
            scope = f"{tf_model_name}/blocks_{flat[m.group(1) + m.group(2)]}/{tf_layer}"
        else:
            scope = f"{tf_model_name}/{TOP_LAYERS[layer.name]}"
        for w in layer.weights:
            leaf = "depthwise_kernel" if isinstance(layer, keras.layers.DepthwiseConv2D) else w.name
            name = f"{scope}/{leaf}"
            assert name not in out, name
            out[name] = np.asarray(w.numpy(), np.float32)
    return out


def io_metadata(arch, depth, bn_eps, weights, reference):
    return {
        "arch": arch,
        "width": str(WIDTH),
        "depth": str(depth),
        "num_classes": str(NUM_CLASSES),
        "bn_eps": str(bn_eps),
        "padding": "same",
        "naming": "tf",
        "weights": weights,
        "reference": reference,
    }


def keras_case(case, depth, rng):
    keras.utils.set_random_seed(SEED)
    model = EfficientNet(
        WIDTH, depth, SIZE, weights=None, input_shape=(SIZE, SIZE, 3), classes=NUM_CLASSES,
        classifier_activation=None,
    )
    randomise_keras(model, rng)
    norm = [l for l in model.layers if isinstance(l, keras.layers.Normalization)]
    assert len(norm) == 1 and model.layers[model.layers.index(norm[0]) + 1].name == "stem_conv_pad"
    probe = keras.Model(model.inputs, [norm[0].output, model.output])
    x = (rng.standard_normal((1, SIZE, SIZE, 3)) * 255.0).astype(np.float32)
    body_in, logits = (np.asarray(t, np.float32) for t in probe(x, training=False))
    print(f"{case} logits |max| {np.abs(logits).max():.3f} std {logits.std():.3f}, "
          f"std over classes {logits.std():.3f}")
    assert 0.5 < np.abs(logits).max() < 50, "rescale the random weights"

    reference = keras_to_tf(model, f"efficientnet-{case}")
    save_training_checkpoint(os.path.join(OUT, case), reference, rng, global_step=218750)
    meta = io_metadata(
        f"tf_efficientnet_{case}", depth, model.get_layer("stem_bn").epsilon, case,
        f"keras {keras.__version__} (tensorflow {tf.__version__}), "
        "keras.src.applications.efficientnet.EfficientNet(weights=None, classifier_activation=None)",
    )
    tensors = {"input": np.ascontiguousarray(body_in.transpose(0, 3, 1, 2)), "logits": logits}
    tf_checkpoint_fixture_io.save_file(tensors, os.path.join(OUT, f"{case}.io.safetensors"), metadata=meta)


def lite_case(timm_python, rng):
    with tempfile.TemporaryDirectory() as tmp:
        npz = os.path.join(tmp, "lite0.npz")
        here = os.path.dirname(os.path.abspath(__file__))
        subprocess.run(
            [timm_python, os.path.join(here, "make_tf_checkpoint_lite_reference.py"), "--out-dir", OUT,
             "--npz", npz],
            check=True,
        )
        with np.load(npz) as data:
            reference = {k: data[k] for k in data.files}
    # Only the release-style archive is committed (the tests unpack it to compare with a directory).
    with tempfile.TemporaryDirectory() as tmp:
        directory = os.path.join(tmp, "lite0")
        save_training_checkpoint(directory, reference, rng, global_step=437500)
        write_tar_gz(os.path.join(OUT, "lite0.tar.gz"), directory, "efficientnet-lite0")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--timm-python", default="/work/venv/bin/python")
    args = ap.parse_args()
    # Only this script's outputs: the directory also holds make_tf_slim_fixture.py's slim_mnv2 case.
    for name in ("format", "sharded", "tf2", "unsupported", "b0", "b1"):
        shutil.rmtree(os.path.join(OUT, name), ignore_errors=True)
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(SEED)
    format_fixtures(rng)
    keras_case("b0", 1.0, rng)
    keras_case("b1", 1.1, rng)
    lite_case(args.timm_python, rng)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {OUT}: {total} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
