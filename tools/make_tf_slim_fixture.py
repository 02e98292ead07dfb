#!/usr/bin/env python3
"""TF-slim MobileNetV2 checkpoint fixture: tests/fixtures/tf_checkpoint/slim_mnv2{/,.io.safetensors}.

Run from the repository root:
    /work/venv-tf/bin/python tools/make_tf_slim_fixture.py

Pinned versions (checked below): tensorflow==2.19.1 (tensorflow-cpu 2.19.0 wheel), tf-keras==2.19.0,
numpy==2.1.3. Everything is seeded and deterministic.

Reference: tf_keras.applications.MobileNetV2(alpha=0.1, weights=None, classes=10,
classifier_activation=None, input_shape=(32, 32, 3)), every weight and BN statistic randomised.

Its weights are renamed to the TF-slim names (tensorflow/models research/slim/nets/mobilenet, weights.md
section 8.1; this map is written from that spec, not from effnet's):
  Conv1 / bn_Conv1                     -> MobilenetV2/Conv/weights, MobilenetV2/Conv/BatchNorm/*
  expanded_conv_{depthwise,project}    -> MobilenetV2/expanded_conv/{depthwise,project}/...
  block_{i}_{expand,depthwise,project} -> MobilenetV2/expanded_conv_{i}/{expand,depthwise,project}/...
  (the `_BN` layer of each goes to `.../BatchNorm/{gamma,beta,moving_mean,moving_variance}`; conv kernels
  are `weights` [kh, kw, in, out], depthwise kernels `depthwise_weights` [kh, kw, C, 1], both the layouts
  Keras uses too)
  Conv_1 / Conv_1_bn                   -> MobilenetV2/Conv_1/weights, MobilenetV2/Conv_1/BatchNorm/*
  predictions (Dense [1280, 10], [10]) -> MobilenetV2/Logits/Conv2d_1c_1x1/weights [1, 1, 1280, 11] and
                                          biases [11]: column 0 is a random background class, columns
                                          1..=10 the Keras kernel and bias.
The checkpoint is written by tf.compat.v1 Saver with a {name: variable} var_list: every model variable
`<name>` holds reference + noise (moving variances: reference * U(0.5, 1.5)), its
`<name>/ExponentialMovingAverage` copy the reference, plus `global_step` (int64), so only a loader that
takes the EMA copies gets the reference logits.

Before writing the .io file the script checks the renaming on its own: a TF-slim MobileNetV2 forward pass
written here with tf.nn ops from the V2_DEF spec (SAME padding, BN eps 1e-3, ReLU6, residual when stride 1 and
depth unchanged, stride 2 at expanded_conv_1/3/6/13, average pool, 1x1 logits conv with biases) runs on the
EMA values read back from the checkpoint and must reproduce Keras's logits in its columns 1..=10.

Output (see modelfixtures.md; N = 1 image):
  slim_mnv2/                 model.ckpt.{index,data-00000-of-00001}, checkpoint
  slim_mnv2.io.safetensors   `input` [1, 3, 32, 32] (what the network sees: MobileNetV2 has no in-model
                             preprocessing), `logits` [1, 10] (Keras), `background_logits` [1, 1] (column 0
                             of the TF-slim forward pass); metadata arch, width, depth, num_classes, naming,
                             bn_eps, padding, weights, reference.
Size: Keras keeps Conv_1 at 1280 channels for alpha < 1, so the model has 106,122 parameters and the two
float32 copies take 849 KB on disk whatever the values. Values are rounded to MANTISSA_BITS explicit
mantissa bits (still float32, as in the released checkpoints) so that git's zlib stores the fixture in
about 300 KB.
"""
import os
import re
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tf_checkpoint_fixture_io  # noqa: E402  (tools/tf_checkpoint_fixture_io.py)
from make_tf_checkpoint_fixtures import save_v1  # noqa: E402  (tools/make_tf_checkpoint_fixtures.py)

PINS = {
    "tensorflow": (tf.__version__, "2.19.1"),
    "tf_keras": (tf_keras.__version__, "2.19.0"),
    "numpy": (np.__version__, "2.1.3"),
}
for pkg, (got, want) in PINS.items():
    if got != want:
        sys.exit(f"{pkg} {got} installed, this script is pinned to {want}")

SEED = 20250611
ALPHA = 0.1
NUM_CLASSES = 10
SIZE = 32
BN_EPS = 1e-3
MANTISSA_BITS = 3
OUT = os.path.join("tests", "fixtures", "tf_checkpoint")
CASE = "slim_mnv2"
SCOPE = "MobilenetV2"
EMA = "/ExponentialMovingAverage"
STRIDE_2 = {1, 3, 6, 13}  # V2_DEF: expanded_conv_{1,3,6,13} have stride 2


def coarse(values):
    """Rounds to MANTISSA_BITS explicit mantissa bits (kept float32): exact, and compressible in git."""
    m, e = np.frexp(np.asarray(values, np.float64))
    scale = 2.0 ** (MANTISSA_BITS + 1)
    return np.ldexp(np.round(m * scale) / scale, e).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Reference model


def randomise(model, rng):
    """Seeded random weights; BN statistics centred on the statistics of each BN's real input.

    Moving mean = input mean + 0.3 std N(0, 1), moving variance = input variance * U(0.5, 2), layer after
    layer on a random batch: default statistics would hide eps and mapping errors, and statistics far from
    the real ones make the signal fade through 17 blocks.
    """
    for layer in model.layers:
        values = []
        for w in layer.weights:
            leaf, shape = w.name.split("/")[-1].split(":")[0], tuple(w.shape)
            if leaf == "depthwise_kernel":
                v = rng.standard_normal(shape) * (1.5 / np.sqrt(shape[0] * shape[1]))
            elif leaf == "kernel" and len(shape) == 4:
                v = rng.standard_normal(shape) * (1.3 / np.sqrt(np.prod(shape[:3])))
            elif leaf == "kernel":
                v = rng.standard_normal(shape) * (3.0 / np.sqrt(shape[0]))
            elif leaf == "bias":
                v = rng.standard_normal(shape) * 0.5
            elif leaf == "gamma":
                v = rng.uniform(0.6, 1.4, shape)
            elif leaf in ("beta", "moving_mean"):
                v = rng.standard_normal(shape) * 0.2
            elif leaf == "moving_variance":
                v = rng.uniform(0.5, 2.0, shape)
            else:
                sys.exit(f"no rule to randomise {w.name}")
            values.append(coarse(v))
        if values:
            layer.set_weights(values)
    batch = rng.uniform(-1.0, 1.0, (16, SIZE, SIZE, 3)).astype(np.float32)
    for layer in model.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            seen = np.asarray(tf_keras.Model(model.inputs, layer.input)(batch, training=False))
            mean, var = seen.mean(axis=(0, 1, 2)), seen.var(axis=(0, 1, 2))
            gamma, beta, _, _ = layer.get_weights()
            mean = mean + 0.3 * np.sqrt(var) * rng.standard_normal(mean.shape)
            var = var * rng.uniform(0.5, 2.0, var.shape) + 1e-3
            layer.set_weights([gamma, beta, coarse(mean), coarse(var)])


# ---------------------------------------------------------------------------------------------------------
# Keras -> TF-slim names (weights.md section 8.1)

BN_LEAVES = ("gamma", "beta", "moving_mean", "moving_variance")
TOP = {"Conv1": "Conv", "bn_Conv1": "Conv", "Conv_1": "Conv_1", "Conv_1_bn": "Conv_1"}
FIRST_BLOCK = re.compile(r"^expanded_conv_(depthwise|project)(_BN)?$")
BLOCK = re.compile(r"^block_(\d+)_(expand|depthwise|project)(_BN)?$")


def slim_scope(name):
    """TF-slim scope of a Keras MobileNetV2 conv or BN layer."""
    if name in TOP:
        return f"{SCOPE}/{TOP[name]}"
    m = FIRST_BLOCK.match(name)
    if m:
        return f"{SCOPE}/expanded_conv/{m.group(1)}"
    m = BLOCK.match(name)
    if m:
        return f"{SCOPE}/expanded_conv_{int(m.group(1))}/{m.group(2)}"
    raise ValueError(f"no TF-slim name for Keras layer {name}")


def keras_to_slim(model, rng):
    """{TF-slim name: value} for every weight of `model`; the head gets a background column at 0."""
    out = {}

    def put(name, value):
        assert name not in out, name
        out[name] = np.asarray(value, np.float32)

    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name == "predictions":
            kernel, bias = (w.numpy() for w in layer.weights)
            features = kernel.shape[0]
            bg_kernel = coarse(rng.standard_normal((features, 1)) * (3.0 / np.sqrt(features)))
            bg_bias = coarse(rng.standard_normal(1) * 0.5)
            weights = np.concatenate([bg_kernel, kernel], axis=1).reshape(1, 1, features, NUM_CLASSES + 1)
            put(f"{SCOPE}/Logits/Conv2d_1c_1x1/weights", weights)
            put(f"{SCOPE}/Logits/Conv2d_1c_1x1/biases", np.concatenate([bg_bias, bias]))
            continue
        scope = slim_scope(layer.name)
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            assert layer.epsilon == BN_EPS and layer.center and layer.scale, layer.name
            for leaf, value in zip(BN_LEAVES, layer.get_weights(), strict=True):
                put(f"{scope}/BatchNorm/{leaf}", value)
        elif isinstance(layer, tf_keras.layers.DepthwiseConv2D):
            assert not layer.use_bias, layer.name
            (kernel,) = layer.get_weights()
            put(f"{scope}/depthwise_weights", kernel)
        elif isinstance(layer, tf_keras.layers.Conv2D):
            assert not layer.use_bias, layer.name
            (kernel,) = layer.get_weights()
            put(f"{scope}/weights", kernel)
        else:
            raise ValueError(f"unexpected layer with weights: {layer.name}")
    return out


def check_names(variables):
    """The names and shapes TF-slim's V2_DEF gives: 17 blocks, no expand in the first one."""

    def conv(scope):
        return {f"{SCOPE}/{scope}/weights"} | {f"{SCOPE}/{scope}/BatchNorm/{b}" for b in BN_LEAVES}

    want = conv("Conv") | conv("Conv_1")
    want |= {f"{SCOPE}/Logits/Conv2d_1c_1x1/weights", f"{SCOPE}/Logits/Conv2d_1c_1x1/biases"}
    for i in range(17):
        block = "expanded_conv" if i == 0 else f"expanded_conv_{i}"
        want |= conv(f"{block}/project")
        want |= {f"{SCOPE}/{block}/depthwise/depthwise_weights"}
        want |= {f"{SCOPE}/{block}/depthwise/BatchNorm/{b}" for b in BN_LEAVES}
        if i > 0:
            want |= conv(f"{block}/expand")
    assert set(variables) == want, sorted(set(variables) ^ want)
    assert variables[f"{SCOPE}/Conv/weights"].shape == (3, 3, 3, 8)
    assert variables[f"{SCOPE}/expanded_conv/depthwise/depthwise_weights"].shape == (3, 3, 8, 1)
    assert variables[f"{SCOPE}/expanded_conv/project/weights"].shape == (1, 1, 8, 8)
    assert variables[f"{SCOPE}/expanded_conv_1/expand/weights"].shape == (1, 1, 8, 48)
    assert variables[f"{SCOPE}/Conv_1/weights"].shape == (1, 1, 32, 1280)
    assert variables[f"{SCOPE}/Logits/Conv2d_1c_1x1/weights"].shape == (1, 1, 1280, NUM_CLASSES + 1)
    assert variables[f"{SCOPE}/Logits/Conv2d_1c_1x1/biases"].shape == (NUM_CLASSES + 1,)


# ---------------------------------------------------------------------------------------------------------
# Checkpoint


def write_checkpoint(directory, reference, rng):
    """Raw variables = reference + noise, `/ExponentialMovingAverage` copies = reference, global_step."""
    variables = {}
    for name, ref in reference.items():
        if name.endswith("moving_variance"):
            raw = coarse(ref * rng.uniform(0.5, 1.5, ref.shape))
        else:
            raw = coarse(ref + rng.standard_normal(ref.shape) * (0.5 * float(np.std(ref)) + 0.05))
        variables[name] = raw
        variables[name + EMA] = ref
    variables["global_step"] = np.int64(1_500_000)
    save_v1(directory, variables)
    reader = tf.train.load_checkpoint(os.path.join(directory, "model.ckpt"))
    assert len(reader.get_variable_to_shape_map()) == 2 * len(reference) + 1
    for name, ref in reference.items():
        assert np.array_equal(reader.get_tensor(name + EMA), ref), name
        assert not np.array_equal(reader.get_tensor(name), ref), name
    return reader


def slim_forward(reader, x):
    """TF-slim MobileNetV2 (V2_DEF) on NHWC `x` with the EMA values of the checkpoint: [N, classes + 1]."""

    def get(name):
        return tf.constant(reader.get_tensor(name + EMA))

    def conv_bn(net, scope, stride=1, act=True):
        if reader.has_tensor(f"{scope}/depthwise_weights{EMA}"):
            net = tf.nn.depthwise_conv2d(net, get(f"{scope}/depthwise_weights"), [1, stride, stride, 1], "SAME")
        else:
            net = tf.nn.conv2d(net, get(f"{scope}/weights"), stride, "SAME")
        bn = [get(f"{scope}/BatchNorm/{b}") for b in BN_LEAVES]
        net = tf.nn.batch_normalization(net, bn[2], bn[3], bn[1], bn[0], BN_EPS)
        return tf.nn.relu6(net) if act else net

    net = conv_bn(tf.constant(x), f"{SCOPE}/Conv", stride=2)
    for i in range(17):
        block = f"{SCOPE}/expanded_conv" if i == 0 else f"{SCOPE}/expanded_conv_{i}"
        stride = 2 if i in STRIDE_2 else 1
        inp = net
        if reader.has_tensor(f"{block}/expand/weights{EMA}"):
            net = conv_bn(net, f"{block}/expand")
        net = conv_bn(net, f"{block}/depthwise", stride=stride)
        net = conv_bn(net, f"{block}/project", act=False)
        if stride == 1 and inp.shape[-1] == net.shape[-1]:
            net = net + inp
    net = conv_bn(net, f"{SCOPE}/Conv_1")
    net = tf.reduce_mean(net, axis=[1, 2], keepdims=True)
    logits = tf.nn.conv2d(net, get(f"{SCOPE}/Logits/Conv2d_1c_1x1/weights"), 1, "VALID")
    logits = logits + get(f"{SCOPE}/Logits/Conv2d_1c_1x1/biases")
    return np.asarray(tf.squeeze(logits, axis=[1, 2]), np.float32)


def main():
    rng = np.random.default_rng(SEED)
    tf_keras.utils.set_random_seed(SEED)
    model = tf_keras.applications.MobileNetV2(
        alpha=ALPHA, weights=None, classes=NUM_CLASSES, classifier_activation=None, input_shape=(SIZE, SIZE, 3)
    )
    randomise(model, rng)
    x = rng.uniform(-1.0, 1.0, (1, SIZE, SIZE, 3)).astype(np.float32)
    logits = np.asarray(model(x, training=False), np.float32)
    print(f"logits {np.round(logits, 3)}", file=sys.stderr)
    assert 1.0 < np.abs(logits).max() < 20.0 and logits.std() > 0.5, "rescale the random weights"

    reference = keras_to_slim(model, rng)
    check_names(reference)
    directory = os.path.join(OUT, CASE)
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    reader = write_checkpoint(directory, reference, rng)

    slim = slim_forward(reader, x)
    err = np.abs(slim[:, 1:] - logits).max()
    print(f"TF-slim forward vs Keras: max |diff| {err:.2e}; background {slim[:, :1]}", file=sys.stderr)
    # float32 rounding through 52 conv+BN layers reaches ~2e-5 of the logits' scale (a float64 run of the
    # same forward pass is as far from Keras); a naming or layout error moves logits by O(1). Same
    # tolerance as the Rust test.
    assert err < 1e-4 * max(1.0, np.abs(logits).max()), err
    # The background logit is an ordinary class logit, not an outlier that any column would match.
    assert np.abs(slim[0, 0] - slim[0, 1:]).min() > 0.05, slim

    meta = {
        "arch": "tf_mobilenetv2_100",
        "width": str(ALPHA),
        "depth": "1.0",
        "num_classes": str(NUM_CLASSES),
        "naming": "tfslim",
        "bn_eps": str(BN_EPS),
        "padding": "same",
        "weights": CASE,
        "reference": f"tf-keras {tf_keras.__version__} (tensorflow {tf.__version__}), "
        "tf_keras.applications.MobileNetV2(alpha=0.1, weights=None, classifier_activation=None); "
        "background_logits: TF-slim V2_DEF forward pass (tf.nn) on the checkpoint's EMA values",
    }
    tensors = {
        "input": np.ascontiguousarray(x.transpose(0, 3, 1, 2)),
        "logits": logits,
        "background_logits": np.ascontiguousarray(slim[:, :1]),
    }
    tf_checkpoint_fixture_io.save_file(tensors, os.path.join(OUT, f"{CASE}.io.safetensors"), metadata=meta)
    files = [os.path.join(directory, f) for f in os.listdir(directory)]
    files.append(os.path.join(OUT, f"{CASE}.io.safetensors"))
    print(f"wrote {len(files)} files, {sum(map(os.path.getsize, files))} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
