"""data_scripts/: resumable download, verification, unpacking into the layouts, validation.

No test leaves the machine: transfers go to a Range-capable HTTP server on 127.0.0.1 (or
file:// URLs), and the archives are small ones the tests build in the real layouts.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import shutil
import stat
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "data_scripts"))

import _fetch  # noqa: E402
import diffusionforensics  # noqa: E402
import forensynths  # noqa: E402
import gangen  # noqa: E402
import universalfakedetect  # noqa: E402

from qmdd.config import DataConfig  # noqa: E402
from qmdd.data import build_training_data  # noqa: E402
from qmdd.evaluation import get_suite, resolve_suite  # noqa: E402


# --------------------------------------------------------------------------- a local server


class _Server:
    """Serves files from ``folder``; honours ``Range``; can cut the first response short."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[dict[str, str]] = []
        self.cut_first_after: int | None = None  # bytes sent before dropping the connection
        self.ignore_range = False
        self.sha256_header: str | None = None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                server.requests.append(dict(self.headers))
                path = server.folder / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                header = self.headers.get("Range")
                if header and not server.ignore_range:
                    start = int(header.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                if server.sha256_header:
                    self.send_header("X-Linked-Etag", f'"{server.sha256_header}"')
                self.end_headers()
                if server.cut_first_after is not None:
                    body, server.cut_first_after = body[: server.cut_first_after], None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"


@pytest.fixture
def server(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    srv = _Server(folder)
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _payload(size: int = 300_000) -> bytes:
    return np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()


NO_SLEEP = {"sleep": lambda seconds: None, "progress": False}


# --------------------------------------------------------------------------- transfer


def test_resumes_a_partial_file_with_a_range_request(server, tmp_path):
    data = _payload()
    (server.folder / "a.bin").write_bytes(data)
    dest = tmp_path / "dl" / "a.bin"
    dest.parent.mkdir()
    dest.with_name("a.bin.part").write_bytes(data[:123_456])
    _fetch.download(server.url("a.bin"), dest, **NO_SLEEP)
    assert dest.read_bytes() == data and not dest.with_name("a.bin.part").exists()
    assert server.requests[0]["Range"] == "bytes=123456-"


def test_an_interrupted_transfer_is_retried_from_the_byte_it_reached(server, tmp_path):
    data = _payload()
    (server.folder / "a.bin").write_bytes(data)
    server.cut_first_after = 100_000
    dest = _fetch.download(server.url("a.bin"), tmp_path / "a.bin", **NO_SLEEP)
    assert dest.read_bytes() == data
    assert len(server.requests) == 2 and server.requests[1]["Range"] == "bytes=100000-"


def test_without_retries_the_part_file_stays_for_the_next_run(server, tmp_path):
    data = _payload()
    (server.folder / "a.bin").write_bytes(data)
    server.cut_first_after = 50_000
    with pytest.raises(_fetch.DownloadError, match="rerun to resume"):
        _fetch.download(server.url("a.bin"), tmp_path / "a.bin", retries=0, **NO_SLEEP)
    assert (tmp_path / "a.bin.part").stat().st_size == 50_000 and not (tmp_path / "a.bin").exists()
    _fetch.download(server.url("a.bin"), tmp_path / "a.bin", retries=0, **NO_SLEEP)
    assert (tmp_path / "a.bin").read_bytes() == data


def test_a_server_that_ignores_range_restarts_the_file(server, tmp_path):
    data = _payload()
    (server.folder / "a.bin").write_bytes(data)
    server.ignore_range = True
    (tmp_path / "a.bin.part").write_bytes(b"stale bytes from elsewhere")
    _fetch.download(server.url("a.bin"), tmp_path / "a.bin", **NO_SLEEP)
    assert (tmp_path / "a.bin").read_bytes() == data


def test_a_complete_part_file_is_finished_without_refetching(server, tmp_path):
    data = _payload(10_000)
    (server.folder / "a.bin").write_bytes(data)
    (tmp_path / "a.bin.part").write_bytes(data)
    _fetch.download(server.url("a.bin"), tmp_path / "a.bin", **NO_SLEEP)  # server answers 416
    assert (tmp_path / "a.bin").read_bytes() == data


def test_published_sha256_is_checked(server, tmp_path):
    data = _payload(50_000)
    (server.folder / "a.bin").write_bytes(data)
    server.sha256_header = hashlib.sha256(data).hexdigest()
    _fetch.download(server.url("a.bin"), tmp_path / "ok.bin", **NO_SLEEP)
    server.sha256_header = hashlib.sha256(b"something else").hexdigest()
    (server.folder / "b.bin").write_bytes(data)
    with pytest.raises(_fetch.DownloadError, match="does not match"):
        _fetch.download(server.url("b.bin"), tmp_path / "b.bin", **NO_SLEEP)
    assert (tmp_path / "b.bin.corrupt").exists() and not (tmp_path / "b.bin").exists()


def test_wrong_stated_size_is_refused(server, tmp_path):
    (server.folder / "a.bin").write_bytes(_payload(1000))
    with pytest.raises(_fetch.DownloadError, match="of 2000 bytes"):
        _fetch.download(server.url("a.bin"), tmp_path / "a.bin", size=2000, retries=0, **NO_SLEEP)


def test_file_urls_work(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(_payload(5000))
    dest = _fetch.download(source.as_uri(), tmp_path / "out" / "src.bin", **NO_SLEEP)
    assert dest.read_bytes() == source.read_bytes()


# --------------------------------------------------------------------------- archives in the real layouts


def _png(size: int = 8, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as handle:
        for name, data in members.items():
            handle.writestr(name, data)
    return path


def _layout(prefix: str, sets: dict[str, int], classes: tuple[str, ...] = ()) -> dict[str, bytes]:
    members = {}
    for name, count in sets.items():
        for sub in classes or ("",):
            for label in ("0_real", "1_fake"):
                for i in range(count):
                    members[f"{prefix}{name}/{sub + '/' if sub else ''}{label}/{i}.png"] = _png()
    return members


def test_forensynths_val_and_test_download_unpack_and_validate(server, tmp_path, capsys):
    _zip(server.folder / "progan_val.zip", _layout("progan_val/", {c: 1 for c in ("car", "cat")}))
    test_members = _layout("CNN_synth_testset/", {"progan": 2}, classes=("car", "horse"))
    test_members.update(_layout("CNN_synth_testset/", {"biggan": 3}))
    _zip(server.folder / "CNN_synth_testset.zip", test_members)
    root = tmp_path / "CNNDetection"
    argv = ["--root", str(root), "--parts", "val,test", "--url", f"progan_val.zip={server.url('progan_val.zip')}", "--url", f"CNN_synth_testset.zip={server.url('CNN_synth_testset.zip')}"]
    assert forensynths.main(forensynths.SPEC, argv) == 1  # incomplete: most sets are missing
    out = capsys.readouterr().out
    assert (root / "val/car/0_real/0.png").is_file() and (root / "test/progan/horse/1_fake/1.png").is_file()
    assert (root / "test/biggan/1_fake/2.png").is_file() and not (root / "test/CNN_synth_testset").exists()
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ")}
    assert lines["progan"][:2] == ["4", "4"] and lines["biggan"][:2] == ["3", "3"]
    assert "MISSING" in lines["stylegan"] and "test/stylegan: missing" in out and "val/dog: missing" in out
    # The eval suite sees the same tree.
    resolved = {s.name: s for s in resolve_suite(get_suite("forensynths"), root).sets}
    assert (resolved["progan"].n_real, resolved["progan"].n_fake) == (4, 4) and resolved["stylegan"].status == "missing"
    # A rerun neither downloads nor unpacks again.
    before = len(server.requests)
    assert forensynths.main(forensynths.SPEC, argv) == 1
    assert len(server.requests) == before


def _install_fake_7z(folder: Path, monkeypatch) -> None:
    """A stand-in ``7z`` on PATH: joins ``X.001``, ``X.002``... and unzips the result, as
    7-Zip does for a split archive (the parts here are a split zip)."""
    script = folder / "7z"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys, zipfile, io, pathlib\n"
        "args = sys.argv[1:]\n"
        "assert args[0] == 'x' and '-y' in args, args\n"
        "dest = [a[2:] for a in args if a.startswith('-o')][0]\n"
        "first = pathlib.Path(args[-1]); base = first.name[:-4]\n"
        "parts = sorted(first.parent.glob(base + '.[0-9][0-9][0-9]'))\n"
        "zipfile.ZipFile(io.BytesIO(b''.join(p.read_bytes() for p in parts))).extractall(dest)\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


def _split_train_archive(folder: Path, classes: tuple[str, ...], parts: int = 7) -> None:
    """progan_train.7z.001-.007 holding progan_train.zip, as the publisher ships it."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as handle:
        for name, data in _layout("progan_train/", {c: 2 for c in classes}).items():
            handle.writestr(name, data)
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w") as handle:
        handle.writestr("progan_train.zip", inner.getvalue())
    blob = outer.getvalue()
    step = -(-len(blob) // parts)
    for i in range(parts):
        (folder / f"progan_train.7z.{i + 1:03d}").write_bytes(blob[i * step : (i + 1) * step])


def test_forensynths_train_parts_are_joined_by_7zip_and_the_inner_zip_unpacked(server, tmp_path, monkeypatch):
    _install_fake_7z(tmp_path, monkeypatch)
    _split_train_archive(server.folder, forensynths.CLASSES)
    root = tmp_path / "root"
    urls = [f"--url=progan_train.7z.{i:03d}={server.url(f'progan_train.7z.{i:03d}')}" for i in range(1, 8)]
    forensynths.main(forensynths.SPEC, ["--root", str(root), "--parts", "train", "--delete-archives", *urls])
    assert sorted(p.name for p in (root / "train").iterdir()) == sorted(forensynths.CLASSES)
    assert len(list((root / "train/horse/1_fake").iterdir())) == 2
    assert not list((root / "downloads").glob("progan_train.7z.*")), "--delete-archives removes every part"
    assert not list(root.glob(".staging-*"))
    # The 4-class and 20-class settings train from this tree through the same loaders.
    shutil.copytree(root / "train", root / "val")
    four = build_training_data(DataConfig(root=str(root), classes=("car", "cat", "chair", "horse")), seed=0)
    assert {p.parts[-3] for p, _ in four.train.samples} == {"car", "cat", "chair", "horse"}
    assert len(four.train) == 4 * 4 and set(four.train.labels.tolist()) == {0, 1}
    assert len(build_training_data(DataConfig(root=str(root)), seed=0).train) == 20 * 4


@pytest.mark.skipif(_fetch.find_7z() is None, reason="no 7-Zip binary on this machine")
def test_real_7zip_unpacks_a_split_archive(tmp_path):
    import subprocess

    source = tmp_path / "src"
    for name, data in _layout("", {"car": 1}).items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    subprocess.run([_fetch.find_7z(), "a", "-v1k", str(tmp_path / "x.7z"), str(source / "car")], check=True, capture_output=True)
    _fetch.extract(tmp_path / "x.7z.001", tmp_path / "out")
    assert (tmp_path / "out/car/1_fake/0.png").is_file()


def test_missing_7zip_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    (tmp_path / "a.7z.001").write_bytes(b"x")
    with pytest.raises(_fetch.DownloadError, match="apt-get install p7zip-full"):
        _fetch.extract(tmp_path / "a.7z.001", tmp_path / "out")


def test_universalfakedetect_archive_with_shared_real_pools(tmp_path, capsys):
    members = {f"diffusion_datasets/{gen}/1_fake/{i}.png": _png() for gen in ("guided", "ldm_200") for i in range(3)}
    members.update({f"diffusion_datasets/laion/0_real/{i}.png": _png() for i in range(5)})
    members.update({f"diffusion_datasets/imagenet/0_real/{i}.png": _png() for i in range(4)})
    archive = _zip(tmp_path / "diffusion_datasets.zip", members)
    root = tmp_path / "ufd"
    assert universalfakedetect.main(universalfakedetect.SPEC, ["--root", str(root), "--archive", str(archive)]) == 1
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ")}
    assert lines["guided"][:2] == ["4", "3"] and "imagenet/0_real" in " ".join(lines["guided"])
    assert lines["ldm_200"][:2] == ["5", "3"] and "MISSING" in lines["dalle"]
    assert archive.exists(), "a user's own --archive is never deleted"


def test_gangen_archives_merge_per_generator(tmp_path, capsys):
    import tarfile

    archives = []
    for gen in gangen.SETS:
        folder = tmp_path / "src" / gen
        for name, data in _layout("", {gen: 1}).items():
            (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "src" / name).write_bytes(data)
        archive = tmp_path / f"{gen}.tar.gz"
        with tarfile.open(archive, "w:gz") as handle:
            handle.add(folder, arcname=gen)
        archives += ["--archive", str(archive)]
    root = tmp_path / "GANGen-Detection"
    assert gangen.main(gangen.SPEC, ["--root", str(root), *archives]) == 0
    assert "complete" in capsys.readouterr().out
    assert all((root / gen / "0_real/0.png").is_file() for gen in gangen.SETS)


def test_dry_run_fetches_and_writes_nothing(server, tmp_path, capsys):
    root = tmp_path / "root"
    assert forensynths.main(forensynths.SPEC, ["--root", str(root), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "progan_train.7z.007" in out and forensynths.BASE_URL + "CNN_synth_testset.zip" in out
    assert not root.exists() and not server.requests
    assert diffusionforensics.main(diffusionforensics.SPEC, ["--root", str(root), "--dry-run"]) == 0
    assert diffusionforensics.SOURCE in capsys.readouterr().out


def test_bad_arguments_name_the_problem(tmp_path, capsys):
    assert forensynths.main(forensynths.SPEC, ["--root", str(tmp_path), "--url", "progan_vall.zip=http://x"]) == 1
    assert "did you mean 'progan_val.zip'" in capsys.readouterr().err
    assert gangen.main(gangen.SPEC, ["--root", str(tmp_path)]) == 1
    assert "--archive" in capsys.readouterr().err


def test_unsafe_tar_members_are_refused(tmp_path):
    import tarfile

    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as handle:
        info = tarfile.TarInfo("../escape.png")
        data = _png()
        info.size = len(data)
        handle.addfile(info, io.BytesIO(data))
    with pytest.raises(_fetch.DownloadError, match="unsafe member"):
        _fetch.extract(archive, tmp_path / "out")
    assert not (tmp_path / "escape.png").exists()
