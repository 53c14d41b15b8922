"""The demo's endpoint without a browser: answers equal to the library's, and readable
refusals of bad uploads (type, size, corrupt content, missing file)."""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from face_clips import PHOTOS

from qmdd.demo import DemoLimits, create_app
from qmdd.video import analyse_image, analyse_video, load_scorer, load_settings


@pytest.fixture(scope="module")
def demo(tiny_detector):
    scorer = load_scorer(tiny_detector[0])
    settings = load_settings(None, ["every_n=4"])
    return TestClient(create_app(scorer, settings, DemoLimits(max_bytes=2 * 2**20, max_frames=5))), scorer, settings


def test_page_is_self_contained(demo):
    page = demo[0].get("/").text
    assert 'id="file"' in page and "best.pt" in page
    assert "http://" not in page and "https://" not in page  # no asset from elsewhere


def test_image_answer_matches_the_library(demo):
    client, scorer, settings = demo
    path = PHOTOS / "astronaut.jpg"
    answer = client.post("/api/analyse", files={"file": ("astronaut.jpg", path.read_bytes(), "image/jpeg")}).json()
    direct = analyse_image(path, scorer, settings)
    assert answer["kind"] == "image" and answer["face_found"] and answer["box"] == list(direct.box)
    assert answer["score"] == pytest.approx(direct.score) and answer["verdict"] == direct.verdict
    assert answer["frames"][0]["image"].startswith("data:image/jpeg;base64,")


def test_video_answer_matches_the_library_and_caps_frames(demo, face_clip):
    client, scorer, settings = demo
    answer = client.post("/api/analyse", files={"file": ("clip.mp4", face_clip.read_bytes(), "video/mp4")}).json()
    report = analyse_video(face_clip, scorer, load_settings(None, ["every_n=4", "max_frames=5"]))
    assert answer["kind"] == "video" and answer["sampled"] == 5 == len(answer["frames"])
    assert [f["index"] for f in answer["frames"]] == [f.index for f in report.frames] == [0, 4, 8, 12, 16]
    assert answer["verdict"] == report.verdict.verdict and answer["score"] == pytest.approx(report.verdict.mean_score)
    assert [f["score"] for f in answer["frames"]] == pytest.approx([f.score for f in report.frames])


@pytest.mark.parametrize(("name", "payload", "status", "message"), [
    ("notes.txt", b"hello", 415, "notes.txt: not a supported type"),
    ("empty.png", b"", 400, "empty.png: the file is empty"),
    ("broken.mp4", b"\x00\x00\x00\x18ftypmp42" + bytes(300), 400, "broken.mp4: cannot be read as a video"),
    ("broken.jpg", b"\xff\xd8\xff\xe0 not really", 400, "cannot read image broken.jpg"),
    ("huge.png", bytes(3 * 2**20), 413, "larger than the 2 MB limit"),
])
def test_bad_uploads_get_one_sentence(demo, name, payload, status, message):
    response = demo[0].post("/api/analyse", files={"file": (name, payload, "application/octet-stream")})
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error and "Traceback" not in error and "/tmp" not in error


def test_a_post_without_a_file_is_refused_plainly(demo):
    response = demo[0].post("/api/analyse", data={"other": "x"})
    assert response.status_code == 400 and "no file was uploaded" in response.json()["error"]


def test_an_image_without_a_face_is_scored_whole(demo):
    client, scorer, settings = demo
    buffer = io.BytesIO()
    Image.open(PHOTOS / "coffee.jpg").save(buffer, format="PNG")
    answer = client.post("/api/analyse", files={"file": ("coffee.png", buffer.getvalue(), "image/png")}).json()
    assert answer["face_found"] is False and "whole image" in answer["note"]


@pytest.mark.parametrize(("args", "status", "message"), [
    (["--model", "nowhere.pt"], 1, "error: model nowhere.pt: no such file"),
    (["--model", "x.pt", "--set", "margin=-1"], 2, "error: margin=-1.0 must be in [0, 2]"),
    (["--model", "x.pt", "--max-upload-mb", "0"], 2, "argument --max-upload-mb: must be > 0"),
    (["--model", "x.pt", "--port", "70000"], 2, "argument --port: must be in 0..65535"),
    (["--model", "x.pt", "--max-frames", "0"], 2, "argument --max-frames: must be an integer >= 1"),
])
def test_demo_command_refuses_bad_arguments_in_one_sentence(args, status, message, capsys):
    from qmdd.demo.__main__ import main as demo_main

    if status == 2 and "--set" not in args:
        with pytest.raises(SystemExit) as caught:
            demo_main(args)
        assert caught.value.code == 2
    else:
        assert demo_main(args) == status
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
