"""Shared machinery of the download scripts: resumable fetch, verify, unpack, validate.

Each script in this folder (``forensynths.py``, ``universalfakedetect.py``, ``gangen.py``,
``diffusionforensics.py``) describes its dataset as a :class:`DatasetSpec` and calls
:func:`main`. Only the standard library and qmdd are used (downloads via ``urllib``).

What "verify" means here: a transfer must end at the size the server announced
(``Content-Length`` / ``Content-Range``), and when the host publishes a SHA-256 (Hugging
Face sends it for LFS files in the ``X-Linked-Etag`` header) the finished file must hash to
it. No size or checksum is hard-coded: the publishers do not list any.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import http.client
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

try:  # run as `python data_scripts/x.py` from a checkout without `pip install -e .`
    import qmdd  # noqa: F401
except ImportError:  # pragma: no cover - depends on how qmdd is installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm

from qmdd.data import FAKE_DIR, IMAGE_EXTENSIONS, REAL_DIR

__all__ = [
    "Archive",
    "DatasetSpec",
    "DownloadError",
    "download",
    "find_7z",
    "extract",
    "unpack",
    "count_images",
    "main",
]

SEVEN_ZIP_NAMES = ("7z", "7za", "7zz", "7zr")
SEVEN_ZIP_HELP = (
    "7-Zip is needed for the multi-part .7z archives; install one of: "
    "`apt-get install p7zip-full` (Debian/Ubuntu), `dnf install p7zip p7zip-plugins` (Fedora), "
    "`brew install p7zip` (macOS), `conda install -c conda-forge p7zip`; "
    "then rerun (downloaded parts are kept)"
)
_JUNK = {"__MACOSX", ".DS_Store", "Thumbs.db"}
_CHUNK = 1 << 20  # 1 MiB reads: large enough for throughput, small enough for progress


class DownloadError(RuntimeError):
    """A transfer, verification or extraction failed; the message says what to do."""


@dataclass(frozen=True)
class Archive:
    """One file to fetch.

    Attributes:
        name: file name on disk (and the key of ``--url NAME=URL``).
        url: publisher address; None when it has to be given (``--url``/``--archive``).
        unpack_to: folder under the dataset root that receives its content ("" = root).
        size: bytes, where the publisher states it (else the server's announced length).
        sha256: hex digest, where the publisher states it.
        extract: False for the later parts of a multi-part archive (the first part
            unpacks them all).
        part_of: name of the multi-part set it belongs to.
    """

    name: str
    url: str | None
    unpack_to: str = ""
    size: int | None = None
    sha256: str | None = None
    extract: bool = True
    part_of: str | None = None
    local: str | None = None  # an already downloaded file (``--archive``)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: its archives, where they unpack, and what a complete tree holds.

    ``expected`` maps a folder under the root (``"test"``, ``""``) to the set/class
    names expected there; validation counts reals and fakes for each and lists the
    missing ones. ``shared_real`` maps a set to its shared real pool (UniversalFakeDetect).
    """

    name: str
    description: str
    archives: tuple[Archive, ...]
    expected: dict[str, tuple[str, ...]]
    source: str
    layout: str
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    shared_real: dict[str, str] = field(default_factory=dict)
    default_unpack_to: str = ""
    needs_sources: bool = False  # no fixed archive list: --url/--archive required


# --------------------------------------------------------------------------- transfer


def _content_range_total(value: str | None) -> int | None:
    match = re.match(r"bytes\s+(?:\d+-\d+|\*)/(\d+)", value or "")
    return int(match.group(1)) if match else None


def _published_sha256(headers) -> str | None:
    # Hugging Face serves LFS files with X-Linked-Etag: "<sha256 of the file>".
    for key in ("X-Linked-Etag", "x-linked-etag"):
        value = (headers.get(key) or "").strip().strip('"').removeprefix("W/").strip('"')
        if re.fullmatch(r"[0-9a-f]{64}", value):
            return value
    return None


def _sha256(path: Path, progress: bool | None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"sha256 {path.name}", disable=progress is False or None) as bar:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def _fetch_once(url: str, part: Path, timeout: float, progress: bool | None) -> tuple[int | None, str | None]:
    """Append the rest of ``url`` to ``part`` (HTTP Range); returns (total size, sha256)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "qmdd-data-scripts"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing left to send: the .part may be complete
            total = _content_range_total(error.headers.get("Content-Range"))
            if total == offset:
                return total, _published_sha256(error.headers)
            part.unlink()  # larger than the file: a stale .part from another file
            return _fetch_once(url, part, timeout, progress)
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    with response:
        status = getattr(response, "status", None) or response.getcode()
        resumed = bool(offset) and status == 206
        if resumed:
            start = re.match(r"bytes\s+(\d+)-", response.headers.get("Content-Range") or "")
            if start is None or int(start.group(1)) != offset:
                raise DownloadError(f"{url}: server answered the range request for byte {offset} with {response.headers.get('Content-Range')!r}")
            total = _content_range_total(response.headers.get("Content-Range"))
        else:
            offset = 0  # the server ignored Range (or there was nothing to resume): restart
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        sha = _published_sha256(response.headers)
        with part.open("ab" if resumed else "wb") as handle, tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=part.name[: -len(".part")], disable=None if progress is None else not progress) as bar:
            while True:
                block = response.read(_CHUNK)
                if not block:
                    break
                handle.write(block)
                bar.update(len(block))
    return total, sha


def download(url: str, dest: str | Path, *, size: int | None = None, sha256: str | None = None, retries: int = 3, timeout: float = 60.0, verify_checksum: bool = True, progress: bool | None = None, sleep: Callable[[float], None] = time.sleep) -> Path:
    """Fetch ``url`` to ``dest``, resuming ``dest.part`` from where it stopped.

    The file is moved to ``dest`` only once complete and verified: the size announced by
    the server (or ``size``) and, where known, the SHA-256 (``sha256``, else the one the
    host publishes in its headers). An interrupted transfer is retried ``retries`` times,
    each time from the byte it reached; afterwards the ``.part`` stays for the next run.
    """
    dest = Path(dest)
    if dest.exists():
        if size is not None and dest.stat().st_size != size:
            raise DownloadError(f"{dest} exists with {dest.stat().st_size} bytes, expected {size}; delete it and rerun")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if size is not None and part.exists() and part.stat().st_size > size:
        part.unlink()
    total = published = None
    for attempt in range(retries + 1):
        try:
            total, published = _fetch_once(url, part, timeout, progress)
        except (OSError, http.client.HTTPException) as error:  # resets, timeouts, IncompleteRead, URLError
            got = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                raise DownloadError(f"{url}: transfer interrupted at {got} bytes ({error}); rerun to resume from there") from None
            sleep(min(2.0**attempt, 30.0))
            continue
        got = part.stat().st_size
        expected = size if size is not None else total
        if expected is None or got == expected:
            break
        if got > expected:
            part.unlink()
            raise DownloadError(f"{url}: received {got} bytes, more than the {expected} announced; the partial file was removed, rerun")
        if attempt == retries:
            raise DownloadError(f"{url}: stopped at {got} of {expected} bytes; rerun to resume")
        sleep(min(2.0**attempt, 30.0))
    digest = sha256 or published
    if digest and verify_checksum:
        actual = _sha256(part, progress)
        if actual != digest.lower():
            bad = part.with_name(dest.name + ".corrupt")
            os.replace(part, bad)
            raise DownloadError(f"{dest.name}: SHA-256 {actual} does not match the published {digest}; moved to {bad.name}, rerun to fetch it again")
    os.replace(part, dest)
    return dest


# --------------------------------------------------------------------------- unpacking


def find_7z() -> str | None:
    """Path of a 7-Zip executable (``7z``, ``7za``, ``7zz`` or ``7zr``), or None."""
    for name in SEVEN_ZIP_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return "tar"
    if name.endswith(".7z") or re.search(r"\.7z\.0*1$", name):
        return "7z"
    return None


def extract(archive: Path, dest: Path) -> None:
    """Unpack a zip, tar(.gz/.bz2/.xz) or 7z (first part of a multi-part set) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    kind = _kind(archive)
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as handle:
                handle.extractall(dest)  # zipfile drops absolute paths and '..' components
        elif kind == "tar":
            with tarfile.open(archive) as handle:
                handle.extractall(dest, filter="data")  # refuses links and paths leaving dest
        elif kind == "7z":
            exe = find_7z()
            if exe is None:
                raise DownloadError(f"cannot unpack {archive.name}: {SEVEN_ZIP_HELP}")
            done = subprocess.run([exe, "x", "-y", f"-o{dest}", str(archive)], capture_output=True, text=True)
            if done.returncode != 0:
                raise DownloadError(f"7-Zip failed on {archive.name} (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-500:]}")
        else:
            raise DownloadError(f"{archive.name}: unknown archive type (zip, tar.gz, 7z supported)")
    except tarfile.FilterError as error:
        raise DownloadError(f"{archive} holds an unsafe member ({error}); refused to unpack it") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
        raise DownloadError(f"{archive} is damaged ({error}); delete it and rerun to fetch it again") from None


def _children(folder: Path) -> list[Path]:
    return [c for c in folder.iterdir() if c.name not in _JUNK]


def _is_set_dir(folder: Path) -> bool:
    return any((folder / name).is_dir() for name in (REAL_DIR, FAKE_DIR))


def _content_dir(staging: Path, expected: Sequence[str]) -> Path:
    """Descend through wrapper folders (``progan_train/``, ``CNN_synth_testset/``...)
    to the folder whose children are the sets or classes."""
    wanted = {name.lower() for name in expected}
    current = staging
    while True:
        children = _children(current)
        if len(children) != 1 or not children[0].is_dir():
            return current
        child = children[0]
        if child.name.lower() in wanted or child.name in (REAL_DIR, FAKE_DIR) or _is_set_dir(child):
            return current
        current = child


def _merge(src: Path, dst: Path) -> int:
    """Move ``src``'s tree into ``dst``; existing files are kept. Returns how many were kept."""
    kept = 0
    dst.mkdir(parents=True, exist_ok=True)
    for child in _children(src):
        target = dst / child.name
        if not target.exists():
            shutil.move(str(child), str(target))
        elif child.is_dir() and target.is_dir():
            kept += _merge(child, target)
        else:
            kept += 1
    return kept


def unpack(archive: Path, root: Path, unpack_to: str, expected: Sequence[str]) -> Path:
    """Extract ``archive`` and merge its content into ``root/unpack_to``.

    Archives inside the archive (the ForenSynths train set is a zip inside a 7z) are
    unpacked in turn. A marker file makes a rerun skip archives already unpacked.
    """
    target = root / unpack_to if unpack_to else root
    marker = root / f".unpacked-{archive.name}"
    if marker.exists():
        return target
    staging = root / f".staging-{archive.name}"
    if staging.exists():
        shutil.rmtree(staging)  # leftovers of an interrupted unpack
    try:
        extract(archive, staging)
        content = _content_dir(staging, expected)
        inner = _children(content)
        while len(inner) == 1 and inner[0].is_file() and _kind(inner[0]) is not None:
            nested = inner[0]
            nested_staging = staging.with_name(staging.name + "-inner")
            extract(nested, nested_staging)
            shutil.rmtree(staging)
            nested_staging.rename(staging)
            content = _content_dir(staging, expected)
            inner = _children(content)
        _merge(content, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    marker.write_text(f"{archive}\n")
    return target


# --------------------------------------------------------------------------- validation


def count_images(folder: Path) -> tuple[int, int]:
    """(reals, fakes): images under ``0_real`` / ``1_fake`` folders at any depth."""
    real = fake = 0
    for path in folder.rglob("*"):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            parts = path.parent.parts
            real += REAL_DIR in parts
            fake += FAKE_DIR in parts
    return real, fake


def _find_child(parent: Path, name: str) -> Path | None:
    from qmdd.evaluation import find_child  # the same case-insensitive lookup qmdd.eval uses

    return find_child(parent, name)


def validate(spec: DatasetSpec, root: Path) -> tuple[list[str], list[str]]:
    """Lines of a count table and the list of missing or incomplete sets."""
    lines, problems = [], []
    for where, names in spec.expected.items():
        base = _find_child(root, where) if where else root
        lines.append(f"{(where or '.') + '/':<24}{'real':>9}{'fake':>9}")
        for name in names:
            folder = _find_child(base, name) if base is not None else None
            if folder is None:
                lines.append(f"  {name:<22}{'-':>9}{'-':>9}  MISSING")
                problems.append(f"{where + '/' if where else ''}{name}: missing")
                continue
            real, fake = count_images(folder)
            note = ""
            if real == 0 and name in spec.shared_real:
                pool = _find_child(base, spec.shared_real[name])
                real = count_images(pool)[0] if pool is not None else 0
                note = f"  (reals: shared {spec.shared_real[name]}/{REAL_DIR})"
            if real == 0 or fake == 0:
                note += "  INCOMPLETE"
                problems.append(f"{where + '/' if where else ''}{name}: {real} real, {fake} fake")
            lines.append(f"  {name:<22}{real:>9}{fake:>9}{note}")
    return lines, problems


# --------------------------------------------------------------------------- command line


def _parser(spec: DatasetSpec) -> argparse.ArgumentParser:
    names = ", ".join(a.name for a in spec.archives) or "(none fixed: give --url or --archive)"
    parser = argparse.ArgumentParser(
        prog=f"python data_scripts/{spec.name}.py",
        description=f"Download, verify, unpack and validate {spec.description}.\n\nSource: {spec.source}\nArchives: {names}\n\nLayout after unpacking:\n{spec.layout}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", required=True, help="dataset root to create or complete (then pass it to python -m qmdd.eval --data-root)")
    parser.add_argument("--downloads", help="folder for the archives and their .part files (default ROOT/downloads)")
    if spec.groups:
        parser.add_argument("--parts", default=",".join(spec.groups), help=f"comma-separated subset of {','.join(spec.groups)} (default all)")
    parser.add_argument("--url", action="append", default=[], metavar="[NAME=]URL", help="override the address of archive NAME, or add an archive by URL (repeatable)")
    parser.add_argument("--archive", action="append", default=[], metavar="FILE", help="use an already downloaded archive instead of fetching it (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be fetched and unpacked, and exit")
    parser.add_argument("--validate-only", action="store_true", help="only count real/fake images per set and list missing sets")
    parser.add_argument("--no-validate", action="store_true", help="skip the validation after unpacking")
    parser.add_argument("--no-checksum", action="store_true", help="skip the SHA-256 check (sizes are still checked)")
    parser.add_argument("--delete-archives", action="store_true", help="delete each downloaded archive once unpacked")
    parser.add_argument("--retries", type=int, default=3, help="retries of an interrupted transfer before giving up (default 3)")
    return parser


def _plan(spec: DatasetSpec, args: argparse.Namespace) -> list[Archive]:
    archives = list(spec.archives)
    if spec.groups:
        chosen = [p.strip() for p in args.parts.split(",") if p.strip()]
        unknown = [p for p in chosen if p not in spec.groups]
        if unknown:
            raise DownloadError(f"unknown --parts {unknown}; choose from {', '.join(spec.groups)}")
        keep = {name for part in chosen for name in spec.groups[part]}
        archives = [a for a in archives if a.name in keep]
    by_name = {a.name: i for i, a in enumerate(archives)}
    for item in args.url:
        name, sep, url = item.partition("=")
        if sep and "://" not in name:
            if name not in by_name:
                hint = difflib.get_close_matches(name, list(by_name), n=1)
                raise DownloadError(f"--url {name}=...: no archive named {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "") + f"; known: {', '.join(by_name) or 'none'}")
            archives[by_name[name]] = replace(archives[by_name[name]], url=url)
        else:
            url = item
            name = Path(urllib.parse.urlparse(url).path).name or "archive"
            archives.append(Archive(name, url, unpack_to=spec.default_unpack_to))
            by_name[name] = len(archives) - 1
    for item in args.archive:
        path = Path(item).expanduser()
        if not path.is_file():
            raise DownloadError(f"--archive {path}: no such file")
        if path.name in by_name:
            archives[by_name[path.name]] = replace(archives[by_name[path.name]], local=str(path))
        else:
            archives.append(Archive(path.name, None, unpack_to=spec.default_unpack_to, local=str(path)))
            by_name[path.name] = len(archives) - 1
    if not archives and spec.needs_sources:
        raise DownloadError(f"{spec.description} has no direct download address; fetch its archives from {spec.source} and pass them with --archive FILE (or --url URL)")
    missing = [a.name for a in archives if a.url is None and a.local is None]
    if missing:
        raise DownloadError(f"no address for {', '.join(missing)}: pass --url NAME=URL or --archive FILE")
    return archives


def _expected_names(spec: DatasetSpec, unpack_to: str) -> tuple[str, ...]:
    return spec.expected.get(unpack_to, ())


def main(spec: DatasetSpec, argv: Sequence[str] | None = None) -> int:
    args = _parser(spec).parse_args(argv)
    root = Path(args.root).expanduser()
    downloads = Path(args.downloads).expanduser() if args.downloads else root / "downloads"
    if args.validate_only:
        return _report_validation(spec, root)
    if args.dry_run and spec.needs_sources and not (args.url or args.archive):
        print(f"{spec.description} -> {root}\n  no direct download address: fetch the archives from {spec.source}\n"
              f"  and pass them with --archive FILE (or --url URL); they unpack into\n{spec.layout}")
        return 0
    try:
        archives = _plan(spec, args)
    except DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.dry_run:
        print(f"{spec.description} -> {root}")
        for a in archives:
            dest = Path(a.local) if a.local else downloads / a.name
            part = dest.with_name(dest.name + ".part")
            state = "present" if dest.exists() else f"partial ({part.stat().st_size} bytes), would resume" if part.exists() else "would download"
            if (root / f".unpacked-{a.name}").exists():
                state += ", already unpacked"
            target = f"unpack into {root / a.unpack_to if a.unpack_to else root}" if a.extract else f"part of {a.part_of}"
            print(f"  {a.name}: {state}\n      from {a.local or a.url}\n      to   {dest}; {target}")
        if any(_kind(Path(a.name)) == "7z" for a in archives):
            exe = find_7z()
            print(f"  7-Zip: {exe}" if exe else f"  7-Zip: NOT FOUND. {SEVEN_ZIP_HELP}")
        print("  checks: the size the server announces; SHA-256 where the host publishes one (no checksums are listed by the publishers)")
        return 0
    if any(_kind(Path(a.name)) == "7z" and a.extract for a in archives) and find_7z() is None:
        print(f"warning: {SEVEN_ZIP_HELP}", file=sys.stderr)
    try:
        files: dict[str, Path] = {}
        for a in archives:
            if a.local:
                files[a.name] = Path(a.local)
            elif (root / f".unpacked-{a.name}").exists():
                continue
            else:
                print(f"fetching {a.name} from {a.url}")
                files[a.name] = download(a.url, downloads / a.name, size=a.size, sha256=a.sha256, retries=args.retries, verify_checksum=not args.no_checksum)
        for a in archives:
            if not a.extract or a.name not in files:
                continue
            if a.part_of:
                parts = [b.name for b in archives if b.part_of == a.part_of]
                absent = [p for p in parts if p not in files]
                if absent:
                    raise DownloadError(f"{a.part_of}: parts {absent} are not available")
                if len({files[p].parent for p in parts}) != 1:
                    raise DownloadError(f"{a.part_of}: all parts must sit in one folder for 7-Zip")
            print(f"unpacking {a.name} into {root / a.unpack_to if a.unpack_to else root}")
            unpack(files[a.name], root, a.unpack_to, _expected_names(spec, a.unpack_to))
            if args.delete_archives:
                group = [b for b in archives if b.part_of and b.part_of == a.part_of] or [a]
                for b in group:
                    if not b.local and b.name in files:
                        files[b.name].unlink(missing_ok=True)
    except DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.no_validate:
        return 0
    return _report_validation(spec, root)


def _report_validation(spec: DatasetSpec, root: Path) -> int:
    if not root.is_dir():
        print(f"error: {root} does not exist", file=sys.stderr)
        return 1
    lines, problems = validate(spec, root)
    print(f"{spec.description} in {root}:")
    print("\n".join(lines))
    if problems:
        print(f"{len(problems)} set(s) missing or incomplete: " + "; ".join(problems))
        return 1
    print("complete: every expected set has real and fake images")
    return 0
