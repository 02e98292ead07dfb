#!/usr/bin/env python3
"""Build `tests/fixtures/train/gcompris4/`: a small real-photo, four-class transfer task.

The photos are GCompris's "categorization" activity pictures (Debian package gcompris-qt-data
3.1-2, the same package `tools/make_sample_set.py` reads): fishes, monuments, tools and renewable
energy installations (wind turbines, solar panels, dams), each a photo credited in the activity's
README (public domain or CC0 as stated there; the script keeps only those two licenses and copies
every credit into SOURCES.md). Every image is shrunk so its short side is SHORT_SIDE px (Lanczos),
centre-cropped to a square and written as baseline JPEG, quality JPEG_QUALITY, without metadata,
under `<class>/<name>.jpg`.

Run with /work/venv/bin/python (Pillow pinned below); the .deb is fetched with `apt-get download`
(run `apt-get update` once first) unless already unpacked in the cache:

    python tools/make_transfer_set.py [--cache /tmp/effnet-sample-sources] [--out tests/fixtures/train/gcompris4]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import PIL
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_sample_set as samples  # noqa: E402  (shares the .deb fetcher and the .rcc reader)

PILLOW = "13.0.0"
GCOMPRIS = ("gcompris-qt-data", "3.1-2")
ACTIVITY = "categorization"
CLASSES = ["fishes", "monuments", "renewable", "tools"]
LICENSES = {"Public Domain", "CC0-1.0"}
SHORT_SIDE = 112
JPEG_QUALITY = 80


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path, default=Path("/tmp/effnet-sample-sources"))
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures/train/gcompris4"))
    args = ap.parse_args()
    if PIL.__version__ != PILLOW:
        sys.exit(f"Pillow {PIL.__version__}, expected {PILLOW}")
    args.cache.mkdir(parents=True, exist_ok=True)
    root = samples.fetch_deb(args.cache, *GCOMPRIS)
    rcc = root / samples.GCOMPRIS_RCC / f"{ACTIVITY}.rcc"
    files = samples.rcc_files(rcc.read_bytes())
    base = f"gcompris/src/activities/{ACTIVITY}/resource/images"
    credits = []
    total = 0
    for cls in CLASSES:
        readme = samples.readme_entries(files[f"{base}/{cls}/README"].decode("utf-8"))
        out_dir = args.out / cls
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in out_dir.glob("*.jpg"):
            old.unlink()
        names = sorted(k for k in files if k.startswith(f"{base}/{cls}/") and k.endswith(".webp"))
        for key in names:
            name = key.rsplit("/", 1)[1]
            entry = readme.get(name)
            if entry is None or entry.get("license") not in LICENSES:
                continue
            img = Image.open(io.BytesIO(files[key])).convert("RGB")
            w, h = img.size
            scale = SHORT_SIDE / min(w, h)
            img = img.resize((max(SHORT_SIDE, round(w * scale)), max(SHORT_SIDE, round(h * scale))),
                             Image.Resampling.LANCZOS)
            w, h = img.size
            left, top = (w - SHORT_SIDE) // 2, (h - SHORT_SIDE) // 2
            img = img.crop((left, top, left + SHORT_SIDE, top + SHORT_SIDE))
            out = out_dir / (name.rsplit(".", 1)[0] + ".jpg")
            img.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
            total += out.stat().st_size
            credits.append((cls, out.name, entry))
    lines = [
        "# gcompris4: sources",
        "",
        f"Built by `tools/make_transfer_set.py` from Debian `{GCOMPRIS[0]}` {GCOMPRIS[1]}, file",
        f"`/{samples.GCOMPRIS_RCC}/{ACTIVITY}.rcc`, resources `{base}/<class>/`; credits as stated in",
        "each class folder's README there.",
        "",
        "| class | file | author | license | original |",
        "|---|---|---|---|---|",
    ]
    for cls, name, e in credits:
        lines.append(f"| {cls} | {name} | {e.get('copyright', '')} | {e.get('license')} | {e.get('source', '')} |")
    (args.out / "SOURCES.md").write_text("\n".join(lines) + "\n")
    print(f"{len(credits)} images, {total} bytes")


if __name__ == "__main__":
    main()
