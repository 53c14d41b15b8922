"""FaceForensics++ (Rossler et al., ICCV 2019): validate a local copy, extract face crops
split by video into the ForenSynths layout, and report per-manipulation and video-level results.

Examples::

    python data_scripts/faceforensics.py --root /data/FaceForensics++ --validate-only
    python data_scripts/faceforensics.py --root /data/FaceForensics++ --out /data/ffpp_faces --compression c23
    python data_scripts/faceforensics.py --root /data/FaceForensics++ --out /data/ffpp_faces --splits /data/FaceForensics/dataset/splits
    python data_scripts/faceforensics.py --out /data/ffpp_faces --evaluate runs/<run>/best.pt --reports reports/

FaceForensics++ is not downloaded here: its authors hand out a download script to those who
sign their terms of use (see HOW_TO_GET below, or ``--help``). This script starts from the
folder that download script writes.

Frames: one every 30 frames of each real video and 10 random frames of each fake video
(seeded per video), the practice of the seed study (docs/video.md); faces are found and
cropped by ``qmdd.video`` (largest frontal face, box grown by ``margin``, clipped), resized
to ``--face-size`` and saved as PNG. Videos are split as *pairs*: a fake ``000_003`` swaps
faces of videos 000 and 003, so 000, 003, ``000_003`` and ``003_000`` always land in the
same split (the official ``train.json``/``val.json``/``test.json`` pair lists with
``--splits``, else a seeded 72/14/14 split of the pairs, FF++'s 720/140/140 proportions).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Sequence

try:  # run as `python data_scripts/x.py` from a checkout without `pip install -e .`
    import qmdd  # noqa: F401
except ImportError:  # pragma: no cover - depends on how qmdd is installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm

from qmdd.data import FAKE_DIR, REAL_DIR
from qmdd.evaluation import EvalError, EvalOptions, evaluate, format_table, get_suite, write_reports
from qmdd.utils import OutputPathError, atomic_write_text, writable_dir
from qmdd.video import FaceFinder, VideoError, VideoSettingsError, extract_crops, load_settings, video_auc, video_scores

METHODS = ("Deepfakes", "Face2Face", "FaceShifter", "FaceSwap", "NeuralTextures")
#: Folder names per compression: the authors' script writes ``raw`` for ``c0`` (lossless).
COMPRESSIONS = {"c0": ("c0", "raw"), "c23": ("c23",), "c40": ("c40",)}
REAL_SOURCE = "original"
SPLITS = ("train", "val", "test")
SPLIT_SHARES = (0.72, 0.14, 0.14)  # FF++: 720 / 140 / 140 of 1000 videos
MANIFEST = "extraction.json"
HOW_TO_GET = """\
FaceForensics++ needs a signed terms-of-use form: fill in the Google form linked from the
README of github.com/ondyari/FaceForensics; the authors then send a download script. Run it
for the videos, e.g.
    python download-FaceForensics.py /data/FaceForensics++ -d all -c c23 -t videos
and pass that folder as --root. The official split lists (train.json, val.json, test.json)
are in that repository's dataset/splits/ folder; pass their folder as --splits."""
LAYOUT = """\
  ROOT/original_sequences/youtube/<c0|raw,c23,c40>/videos/000.mp4 ...
  ROOT/manipulated_sequences/<Deepfakes,Face2Face,FaceShifter,FaceSwap,NeuralTextures>/<comp>/videos/000_003.mp4 ...
extracted (--out):
  OUT/<train,val,test>/original/0_real/<video>__f<frame>.png
  OUT/<train,val,test>/<method>/1_fake/<video>__f<frame>.png"""


class FaceForensicsError(ValueError):
    """The local copy or the options cannot be used; the message says why and what to do."""


def video_dir(root: Path, source: str, compression: str) -> Path | None:
    """The ``videos`` folder of one source (``original`` or a method) at one compression."""
    base = root / "original_sequences" / "youtube" if source == REAL_SOURCE else root / "manipulated_sequences" / source
    for name in COMPRESSIONS[compression]:
        folder = base / name / "videos"
        if folder.is_dir():
            return folder
    return None


def list_videos(root: Path, compression: str, methods: Sequence[str]) -> tuple[dict[str, list[Path]], list[str], list[str]]:
    """Videos per source, a count table, and the problems (missing folders, no videos)."""
    videos, lines, problems = {}, [f"{'source':<16}{'videos':>8}  folder"], []
    for source in (REAL_SOURCE, *methods):
        folder = video_dir(root, source, compression)
        found = sorted(folder.glob("*.mp4")) if folder is not None else []
        videos[source] = found
        where = str(folder) if folder is not None else "MISSING"
        lines.append(f"{source:<16}{len(found):>8}  {where}")
        if folder is None:
            expected = "original_sequences/youtube" if source == REAL_SOURCE else f"manipulated_sequences/{source}"
            problems.append(f"{source}: no folder {expected}/{'|'.join(COMPRESSIONS[compression])}/videos under {root}")
        elif not found:
            problems.append(f"{source}: no .mp4 video in {folder}")
    return videos, lines, problems


def _pair_ids(name: str) -> tuple[str, ...]:
    """``000_003`` -> ("000", "003"); a real ``000`` -> ("000",)."""
    return tuple(name.split("_")) if re.fullmatch(r"\d+_\d+", name) else (name,)


def group_videos(names: Sequence[str]) -> dict[str, str]:
    """Each video id -> the id of its group: ids joined by a fake's pair share one group."""
    parent: dict[str, str] = {}

    def find(item: str) -> str:
        parent.setdefault(item, item)
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    for name in names:
        ids = _pair_ids(name)
        for other in ids[1:]:
            parent[find(other)] = find(ids[0])
        find(ids[0])
    return {item: find(item) for item in parent}


def seeded_splits(names: Sequence[str], seed: int) -> dict[str, str]:
    """Video id -> split: whole groups shuffled with ``seed`` and cut 72/14/14."""
    groups = group_videos(names)
    roots = sorted(set(groups.values()))
    random.Random(seed).shuffle(roots)
    cut1 = round(len(roots) * SPLIT_SHARES[0])
    cut2 = cut1 + round(len(roots) * SPLIT_SHARES[1])
    split_of_root = {r: ("train" if i < cut1 else "val" if i < cut2 else "test") for i, r in enumerate(roots)}
    return {item: split_of_root[root] for item, root in groups.items()}


def official_splits(folder: Path) -> dict[str, str]:
    """Video id -> split from FF++'s ``train.json``, ``val.json``, ``test.json`` (lists of id pairs)."""
    mapping: dict[str, str] = {}
    for split in SPLITS:
        path = folder / f"{split}.json"
        try:
            pairs = json.loads(path.read_text())
            ids = [str(i) for pair in pairs for i in pair]
        except (OSError, ValueError, TypeError) as error:
            raise FaceForensicsError(f"split file {path}: {getattr(error, 'strerror', None) or error} (expected a JSON list of id pairs)") from None
        mapping.update({i: split for i in ids})
    return mapping


def split_of(name: str, mapping: dict[str, str]) -> str | None:
    ids = _pair_ids(name)
    return mapping.get(ids[0])


def _load_manifest(out: Path) -> dict:
    path = out / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise FaceForensicsError(f"{path} is corrupt; delete it to extract again") from None


def extract(root: Path, out: Path, *, compression: str, methods: Sequence[str], overrides: Sequence[str], real_every: int, fake_frames: int, face_size: int, splits: Path | None, seed: int, limit: int | None, progress: bool | None = None) -> dict:
    """Face crops of every video into ``out``; reruns skip the videos already in the manifest."""
    videos, lines, problems = list_videos(root, compression, methods)
    if problems:
        raise FaceForensicsError("; ".join(problems) + "\n" + HOW_TO_GET)
    if limit is not None:
        videos = {source: found[:limit] for source, found in videos.items()}
    names = [v.stem for found in videos.values() for v in found]
    mapping = official_splits(splits) if splits is not None else seeded_splits(names, seed)
    real = load_settings(None, [*overrides, "sampling=every", f"every_n={real_every}"])
    fake = load_settings(None, [*overrides, "sampling=random", f"num_frames={fake_frames}"])
    finder, manifest = FaceFinder(real), _load_manifest(out)
    jobs = [(source, v) for source, found in videos.items() for v in found if f"{source}/{v.stem}" not in manifest]
    for source, video in tqdm(jobs, desc="videos", unit="video", disable=not sys.stderr.isatty() if progress is None else not progress):
        split = split_of(video.stem, mapping)
        if split is None:  # not in the official lists: left out, and said so in the manifest
            manifest[f"{source}/{video.stem}"] = {"split": None, "sampled": 0, "saved": 0}
            continue
        label_dir = REAL_DIR if source == REAL_SOURCE else FAKE_DIR
        settings = real if source == REAL_SOURCE else replace(fake, seed=seed + zlib.crc32(video.stem.encode()))
        try:
            counts = extract_crops(video, out / split / source / label_dir, settings, video_id=video.stem, face_size=face_size, finder=finder)
            entry = {"split": split, "sampled": counts.sampled, "saved": counts.saved}
        except VideoError as error:
            entry = {"split": split, "sampled": 0, "saved": 0, "error": str(error)}
        manifest[f"{source}/{video.stem}"] = entry
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def summarize(manifest: dict) -> list[str]:
    """Per split and source: videos, sampled frames, crops saved, frames without a face, errors."""
    table: dict[tuple[str, str], list[int]] = {}
    for key, entry in manifest.items():
        row = table.setdefault((str(entry["split"]), key.split("/")[0]), [0, 0, 0, 0])
        row[0] += 1
        row[1] += entry["sampled"]
        row[2] += entry["saved"]
        row[3] += "error" in entry
    lines = [f"{'split':<7}{'source':<16}{'videos':>7}{'frames':>8}{'crops':>7}{'no face':>8}{'errors':>7}"]
    for (split, source), (count, sampled, saved, errors) in sorted(table.items()):
        lines.append(f"{split:<7}{source:<16}{count:>7}{sampled:>8}{saved:>7}{sampled - saved:>8}{errors:>7}")
    return lines


def video_level(report) -> dict[str, dict[str, float | None]]:
    """Per checkpoint: the video-level ROC AUC of each manipulation (a video's score is the
    mean of its crops' scores; reals are the shared original videos) and over all sets."""
    aucs = {}
    for result in report.checkpoints:
        row, pooled = {}, ([], [], [])
        for s in result.evaluated:
            row[s.name] = video_auc(video_scores(s.paths, s.labels.tolist(), s.scores.tolist()))
            for store, values in zip(pooled, (list(s.paths), s.labels.tolist(), s.scores.tolist())):
                store.extend(values)
        row["all"] = video_auc(video_scores(*pooled))
        aucs[result.label] = row
    return aucs


def _auc_lines(aucs: dict[str, dict[str, float | None]]) -> list[str]:
    return [f"video-level AUC [{label}]: " + ", ".join(f"{name} {'-' if auc is None else f'{100 * auc:.1f}'}" for name, auc in row.items()) for label, row in aucs.items()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python data_scripts/faceforensics.py",
        description=__doc__.split("\n\n", 1)[0] + "\n\nHow to get the data:\n" + HOW_TO_GET + "\n\nLayouts:\n" + LAYOUT,
        epilog=__doc__.split("Examples::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", help="the local FaceForensics++ folder (original_sequences/, manipulated_sequences/)")
    parser.add_argument("--out", help="folder for the face crops (then: python -m qmdd.train --set data.root=OUT, python -m qmdd.eval --suite faceforensics --data-root OUT)")
    parser.add_argument("--compression", choices=tuple(COMPRESSIONS), default="c23", help="c0 (lossless, folder c0 or raw), c23 (default, light) or c40 (strong)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated manipulations (default all: {','.join(METHODS)})")
    parser.add_argument("--validate-only", action="store_true", help="check the folder tree and count the videos, then exit")
    parser.add_argument("--splits", help="folder with FF++'s train.json, val.json, test.json (default: a seeded 72/14/14 split of the pairs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the default split and of the fake frames' draw (default 0)")
    parser.add_argument("--real-every", type=int, default=30, help="one frame every N of each real video (default 30)")
    parser.add_argument("--fake-frames", type=int, default=10, help="random frames per fake video (default 10)")
    parser.add_argument("--face-size", type=int, default=256, help="side of the saved square crops in pixels (default 256: room for a 224 crop)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a qmdd.video setting for face finding, e.g. --set margin=0.3 (see python -m qmdd.video --list-settings)")
    parser.add_argument("--limit", type=int, help="at most N videos per source (a quick trial)")
    parser.add_argument("--evaluate", nargs="+", metavar="CHECKPOINT", help="score checkpoints on the test crops in --out: the per-manipulation table and the video-level AUC")
    parser.add_argument("--reports", help="with --evaluate: also write the tables (CSV, JSON, Markdown) into this folder")
    return parser


def _run_evaluation(args: argparse.Namespace) -> int:
    report = evaluate(args.evaluate, get_suite("faceforensics"), args.out, EvalOptions(device="cpu"))
    print(format_table(report))
    aucs = video_level(report)
    print("\n".join(_auc_lines(aucs)))
    if args.reports:
        written = write_reports(report, writable_dir(args.reports, "--reports"), save_predictions=True)
        written["video_auc"] = Path(args.reports) / f"{report.name}_video_auc.json"
        atomic_write_text(written["video_auc"], json.dumps(aucs, indent=2) + "\n")
        print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0


def _run_extraction(args: argparse.Namespace, root: Path, methods: list[str]) -> int:
    if not args.out:
        raise FaceForensicsError("give --out, the folder for the face crops (or --validate-only)")
    for flag in ("real_every", "fake_frames", "face_size"):
        if getattr(args, flag) < 1:
            raise FaceForensicsError(f"--{flag.replace('_', '-')} must be >= 1")
    out = writable_dir(args.out, "--out")
    manifest = extract(root, out, compression=args.compression, methods=methods, overrides=args.set, real_every=args.real_every, fake_frames=args.fake_frames, face_size=args.face_size, splits=Path(args.splits) if args.splits else None, seed=args.seed, limit=args.limit)
    print("\n".join(summarize(manifest)))
    failed = [f"{key}: {entry['error']}" for key, entry in manifest.items() if "error" in entry]
    for line in failed:
        print(f"error: {line}", file=sys.stderr)
    print(f"crops in {out}; train with --set data.root={out}, evaluate with --evaluate CHECKPOINT --out {out}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    try:
        if unknown:
            raise FaceForensicsError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        if args.evaluate:
            if not args.out:
                raise FaceForensicsError("--evaluate needs --out, the folder of the extracted crops")
            return _run_evaluation(args)
        if not args.root:
            raise FaceForensicsError("give --root, your local FaceForensics++ folder\n" + HOW_TO_GET)
        root = Path(args.root).expanduser()
        if not root.is_dir():
            raise FaceForensicsError(f"--root {root} is not a folder\n" + HOW_TO_GET)
        if args.validate_only:
            _, lines, problems = list_videos(root, args.compression, methods)
            print("\n".join(lines))
            for problem in problems:
                print(f"error: {problem}", file=sys.stderr)
            return 1 if problems else 0
        return _run_extraction(args, root, methods)
    except (FaceForensicsError, VideoSettingsError, VideoError, OutputPathError, EvalError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
