#!/usr/bin/env python3
"""Fixtures for tests/data.rs: timm's exact eval transform on real photos, and PIL's decoding.

Pinned versions (the /work/venv environment; the script refuses to run with others):
    Pillow==13.0.0 (libjpeg-turbo 3.x), torch==2.5.1, torchvision==0.20.1, timm==1.0.15,
    scikit-image==0.26.0, numpy==2.4.6
Run: /work/venv/bin/python tools/make_preprocess_fixtures.py
Deterministic: no randomness except numpy RandomState(0) for the sampled float positions.

Writes tests/fixtures/data/:
- src/*.png, src/*.jpg: the inputs. Five scikit-image photos, reduced by an integer factor with
  PIL's box `Image.reduce` to keep the fixtures small (camera.png is a full-resolution 384x384 crop, grayscale, so the
  224/240 configs also downscale, by 1.5), plus synthetic files: a JPEG and a PNG with EXIF
  orientation tags, an RGBA PNG whose transparent pixels hold colour, a CMYK JPEG, a 16-bit RGB PNG,
  and the same small picture as BMP, GIF, WebP (lossless and lossy) and JPEG.
- expected/*.png: for every (image, config) case the uint8 crop timm produces before ToTensor
  (the whole crop, or every 4th pixel in both directions for the 224/240 cases of the larger
  photos: `sample_stride` in the manifest).
- decode/*.png: PIL's `convert("RGB")` of each decode-test file (after `exif_transpose` where tagged).
- manifest.json: configs (as timm's create_transform arguments and as effnet::data::Preprocess
  fields), cases (timm's resized size, crop file, FNV-1a 64 hash of the full crop, per-channel sums
  of timm's normalised float tensor and 16 of its values) and decode tests.
"""
import io
import json
import os
import struct
import zlib

import numpy as np
import PIL
import skimage
import timm
import torch
import torchvision
from PIL import Image, ImageOps
from timm.data import create_transform

assert PIL.__version__ == "13.0.0", PIL.__version__
assert torch.__version__.startswith("2.5.1"), torch.__version__
assert torchvision.__version__.startswith("0.20.1"), torchvision.__version__
assert timm.__version__ == "1.0.15", timm.__version__
assert skimage.__version__ == "0.26.0", skimage.__version__
assert np.__version__ == "2.4.6", np.__version__

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "data")
SKI = os.path.join(os.path.dirname(skimage.__file__), "data")
INCEPTION = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> (timm create_transform kwargs, Preprocess fields)
CONFIGS = {
    "b0_224_bicubic": dict(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bicubic"),
    "b1_240_bilinear": dict(input_size=(3, 240, 240), crop_pct=0.882, interpolation="bilinear"),
    "s96_bicubic_inception": dict(
        input_size=(3, 96, 96), crop_pct=0.875, interpolation="bicubic", mean=INCEPTION, std=INCEPTION
    ),
    "s64_bilinear": dict(input_size=(3, 64, 64), crop_pct=0.9, interpolation="bilinear"),
    # Non-square crop: timm uses ResizeKeepRatio, which always resamples bilinearly.
    "r80x112_bilinear": dict(input_size=(3, 80, 112), crop_pct=0.9, interpolation="bilinear"),
    "squash80x96_nearest": dict(input_size=(3, 80, 96), crop_pct=1.0, interpolation="nearest", crop_mode="squash"),
    "squash64_bicubic": dict(input_size=(3, 64, 64), crop_pct=0.9, interpolation="bicubic", crop_mode="squash"),
}
BIG = {"b0_224_bicubic", "b1_240_bilinear"}


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def save_png(img: Image.Image, rel: str) -> str:
    """Lossless; an RGB image whose channels are equal is stored as grayscale (decodes the same)."""
    path = os.path.join(ROOT, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if img.mode == "RGB":
        a = np.asarray(img)
        if (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all():
            img = Image.fromarray(a[..., 0])
    img.save(path, "PNG", optimize=True)
    return rel


def write_png16_rgb(arr: np.ndarray, rel: str) -> str:
    """A 16-bit RGB PNG written by hand (PIL cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    with open(os.path.join(ROOT, rel), "wb") as f:
        f.write(png)
    return rel


def make_sources():
    os.makedirs(os.path.join(ROOT, "src"), exist_ok=True)
    os.makedirs(os.path.join(ROOT, "decode"), exist_ok=True)
    photos = {}
    for name, file, factor in [
        ("chelsea", "chelsea.png", 2),
        ("coffee", "coffee.png", 3),
        ("camera", "camera.png", 0),
        ("rocket", "rocket.jpg", 3),
        ("motorcycle", "motorcycle_left.png", 4),
    ]:
        im = Image.open(os.path.join(SKI, file))
        im = im.convert("L") if im.mode == "L" else im.convert("RGB")
        if factor == 0:
            im = im.crop((64, 32, 448, 416))  # full-resolution 384x384 centre
        elif factor > 1:
            im = im.reduce(factor)
        photos[name] = save_png(im, f"src/{name}.png")

    chelsea = Image.open(os.path.join(SKI, "chelsea.png")).convert("RGB")
    small = chelsea.crop((176, 56, 240, 104))  # 64x48, the cat's face
    synthetic = {}

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = os.path.join(ROOT, "src/exif6.jpg")
    small.save(path, "JPEG", quality=95, exif=exif.tobytes())
    synthetic["exif6_jpg"] = "src/exif6.jpg"

    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise
    path = os.path.join(ROOT, "src/exif8.png")
    small.crop((0, 0, 61, 48)).save(path, "PNG", exif=exif.tobytes())
    synthetic["exif8_png"] = "src/exif8.png"

    rgba = small.convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, rgba.width).astype(np.uint8), (rgba.height, 1))
    alpha[:, :12] = 0  # fully transparent, colour kept underneath
    rgba.putalpha(Image.fromarray(alpha))
    synthetic["alpha_png"] = save_png(rgba, "src/alpha.png")
    return photos, synthetic, small


def make_decode_tests(small):
    """Each entry: file, PIL's decoded RGB (as PNG), whether an exact match is expected."""
    tiny = small.crop((8, 4, 56, 44))  # 48x40
    tests = []

    def add(rel, exact, save=None):
        path = os.path.join(ROOT, rel)
        if save is not None:
            save(path)
        im = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        expected = save_png(im, "decode/" + os.path.basename(rel).replace(".", "_") + ".png")
        tests.append(dict(file=rel, expected=expected, exact=exact))

    add("decode/tiny.bmp", True, lambda p: tiny.save(p, "BMP"))
    add("decode/tiny.gif", True, lambda p: tiny.save(p, "GIF"))
    add("decode/tiny_lossless.webp", True, lambda p: tiny.save(p, "WEBP", lossless=True))
    add("decode/tiny_lossy.webp", False, lambda p: tiny.save(p, "WEBP", quality=90))
    add("decode/tiny_420.jpg", False, lambda p: tiny.save(p, "JPEG", quality=92))
    add("decode/tiny_444_progressive.jpg", False,
        lambda p: tiny.save(p, "JPEG", quality=92, subsampling=0, progressive=True))
    add("decode/tiny_gray.jpg", False, lambda p: tiny.convert("L").save(p, "JPEG", quality=92))
    add("decode/tiny_cmyk.jpg", False, lambda p: tiny.convert("CMYK").save(p, "JPEG", quality=95))
    arr16 = np.asarray(tiny).astype(np.uint16) * 257 + np.arange(48, dtype=np.uint16)[None, :, None]
    add(write_png16_rgb(arr16, "decode/tiny_rgb16.png"), True)
    add("src/exif6.jpg", False)
    add("src/exif8.png", True)
    add("src/alpha.png", True)
    return tests


def run_case(src_rel, cfg_name, exact_source, rng):
    kwargs = CONFIGS[cfg_name]
    tf = create_transform(**kwargs, is_training=False)
    steps = tf.transforms
    assert type(steps[-2]).__name__ in ("ToTensor", "MaybeToTensor"), steps
    assert type(steps[-1]).__name__ == "Normalize", steps
    im = ImageOps.exif_transpose(Image.open(os.path.join(ROOT, src_rel))).convert("RGB")
    resized = steps[0](im)
    crop = torchvision.transforms.Compose(steps[:-2])(im)
    full = tf(im)
    # The uint8 crop determines the float output: ToTensor + Normalize on it gives timm's tensor.
    again = torchvision.transforms.Compose(steps[-2:])(crop)
    assert torch.equal(full, again)

    stem = os.path.splitext(os.path.basename(src_rel))[0]
    arr = np.asarray(crop)
    stride = 4 if (cfg_name in BIG and stem != "camera") else 1
    crop_rel = save_png(Image.fromarray(arr[::stride, ::stride]), f"expected/{stem}__{cfg_name}.png")
    c, h, w = full.shape
    picks = [(int(rng.randint(c)), int(rng.randint(h)), int(rng.randint(w))) for _ in range(16)]
    return dict(
        source=src_rel,
        config=cfg_name,
        lossless_source=exact_source,
        resized=[resized.height, resized.width],
        crop=crop_rel,
        sample_stride=stride,
        fnv1a64=fnv1a64(arr.tobytes()),
        channel_sums=[float(full[i].double().sum()) for i in range(c)],
        values=[[ci, y, x, float(full[ci, y, x])] for ci, y, x in picks],
    )


def preprocess_fields(kwargs):
    _, h, w = kwargs["input_size"]
    return dict(
        size=[h, w],
        crop_pct=kwargs["crop_pct"],
        interpolation=kwargs["interpolation"],
        mean=list(kwargs.get("mean", IMAGENET_MEAN)),
        std=list(kwargs.get("std", IMAGENET_STD)),
        resize="exact" if kwargs.get("crop_mode") == "squash" else "short_side",
    )


def main():
    photos, synthetic, small = make_sources()
    decode = make_decode_tests(small)
    rng = np.random.RandomState(0)
    cases = []
    for rel in photos.values():
        for cfg in CONFIGS:
            cases.append(run_case(rel, cfg, True, rng))
    for rel in synthetic.values():
        for cfg in ("b0_224_bicubic", "s64_bilinear"):
            cases.append(run_case(rel, cfg, not rel.endswith(".jpg"), rng))
    manifest = dict(
        generator="tools/make_preprocess_fixtures.py",
        versions=dict(pillow=PIL.__version__, torch=torch.__version__, torchvision=torchvision.__version__,
                      timm=timm.__version__, skimage=skimage.__version__, numpy=np.__version__),
        configs={k: dict(timm=v, preprocess=preprocess_fields(v)) for k, v in CONFIGS.items()},
        cases=cases,
        decode=decode,
    )
    with open(os.path.join(ROOT, "manifest.json"), "w") as f:
        # One case per line: readable diffs, compact file.
        f.write("{\n")
        for i, key in enumerate(manifest):
            value = manifest[key]
            f.write(f" {json.dumps(key)}: ")
            if isinstance(value, list):
                f.write("[\n" + ",\n".join("  " + json.dumps(v) for v in value) + "\n ]")
            else:
                f.write(json.dumps(value))
            f.write(",\n" if i + 1 < len(manifest) else "\n")
        f.write("}\n")
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(ROOT) for n in ns)
    print(f"{len(cases)} cases, {len(decode)} decode tests, {total / 1024:.0f} KiB in {ROOT}")


if __name__ == "__main__":
    main()
