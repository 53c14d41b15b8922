"""The demo's app: the page, and one endpoint that analyses an upload."""

from __future__ import annotations

import base64
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from qmdd.demo._page import PAGE
from qmdd.video import VIDEO_SUFFIXES, FaceFinder, Scorer, VideoError, VideoSettings, analyse_image, analyse_video

__all__ = ["DemoLimits", "UploadError", "analyse_upload", "create_app"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class UploadError(ValueError):
    """An upload the demo will not analyse; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class DemoLimits:
    """``max_bytes``: largest upload; ``max_frames``: most video frames analysed (and shown)."""

    max_bytes: int = 50 * 1024 * 1024
    max_frames: int = 48


def _jpeg_data_url(bgr) -> str:
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def _image_result(path: Path, scorer: Scorer, settings: VideoSettings, finder: FaceFinder) -> dict:
    result = analyse_image(path, scorer, settings, finder)
    return {
        "kind": "image", "verdict": result.verdict, "score": result.score, "threshold": result.threshold,
        "face_found": result.box is not None, "box": None if result.box is None else list(result.box),
        "note": "" if result.box is not None else "no face found: the whole image was scored",
        "frames": [{"index": 0, "time": None, "box": None if result.box is None else list(result.box), "score": result.score, "image": _jpeg_data_url(result.annotated)}],
    }


def _video_result(path: Path, scorer: Scorer, settings: VideoSettings) -> dict:
    with tempfile.TemporaryDirectory(prefix="qmdd-demo-frames-") as folder:
        report = analyse_video(path, scorer, settings, annotated_frames=Path(folder))
        images = {int(p.stem.split("_")[1]): p for p in Path(folder).glob("frame_*.jpg")}
        frames = [{"index": f.index, "time": f.time, "box": f.box, "score": f.score, "image": _jpeg_data_url(cv2.imread(str(images[f.index])))} for f in report.frames if f.index in images]
    v = report.verdict
    no_face = sum(f.decoded and f.box is None for f in report.frames)
    note = f"{report.faces_found} of {report.sampled} sampled frames show a face" + (f"; {no_face} without a face were not scored" if no_face else "")
    return {
        "kind": "video", "verdict": v.verdict, "score": v.mean_score, "share_above": v.share_above, "threshold": report.threshold,
        "rule": settings.rule, "faces_found": report.faces_found, "sampled": report.sampled, "frame_count": report.frame_count, "note": note, "frames": frames,
    }


def analyse_upload(name: str, data: bytes, scorer: Scorer, settings: VideoSettings, limits: DemoLimits, finder: FaceFinder | None = None) -> dict:
    """The JSON answer for one uploaded file; raises :class:`UploadError` for a bad upload."""
    suffix = Path(name or "").suffix.lower()
    if suffix not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
        raise UploadError(f"{name or 'the upload'}: not a supported type; upload an image ({', '.join(IMAGE_SUFFIXES)}) or a video ({', '.join(VIDEO_SUFFIXES)})", 415)
    if not data:
        raise UploadError(f"{name}: the file is empty")
    with tempfile.TemporaryDirectory(prefix="qmdd-demo-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            if suffix in IMAGE_SUFFIXES:
                answer = _image_result(path, scorer, settings, finder or FaceFinder(settings))
            else:
                capped = settings if settings.max_frames is not None and settings.max_frames <= limits.max_frames else replace(settings, max_frames=limits.max_frames)
                answer = _video_result(path, scorer, capped)
        except VideoError as error:
            raise UploadError(str(error).replace(str(path), name)) from None
    return {"name": name, **answer}


async def _read_limited(upload: UploadFile, limit: int) -> bytes:
    chunks, size = [], 0
    while chunk := await upload.read(1024 * 1024):
        size += len(chunk)
        if size > limit:
            raise UploadError(f"{upload.filename}: larger than the {limit / 2**20:.0f} MB limit of this demo", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(scorer: Scorer, settings: VideoSettings, limits: DemoLimits = DemoLimits()) -> FastAPI:
    """The demo app: ``GET /`` the page, ``POST /api/analyse`` (form field ``file``) the result as JSON."""
    app = FastAPI(title="qmdd demo", docs_url=None, redoc_url=None, openapi_url=None)
    lock = threading.Lock()  # one analysis at a time: torch already uses every thread it was given
    finder = FaceFinder(settings)
    page = PAGE.replace("{{MAX_MB}}", f"{limits.max_bytes / 2**20:.0f}").replace("{{MODEL}}", scorer.source.name)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next):
        # before the body is read: a declared size over the limit (plus room for the form's headers)
        declared = request.headers.get("content-length", "")
        if request.url.path == "/api/analyse" and declared.isdigit() and int(declared) > limits.max_bytes + 64 * 1024:
            return JSONResponse({"error": f"the upload is larger than the {limits.max_bytes / 2**20:.0f} MB limit of this demo"}, status_code=413)
        return await call_next(request)

    def analyse_locked(name: str, data: bytes) -> dict:
        with lock:
            return analyse_upload(name, data, scorer, settings, limits, finder)

    @app.post("/api/analyse")
    async def analyse(file: UploadFile | None = File(None)) -> JSONResponse:
        try:
            if file is None:
                raise UploadError("no file was uploaded; choose an image or a video first")
            data = await _read_limited(file, limits.max_bytes)
            answer = await run_in_threadpool(analyse_locked, file.filename or "", data)
        except UploadError as error:
            return JSONResponse({"error": str(error)}, status_code=error.status)
        return JSONResponse(answer)

    return app
