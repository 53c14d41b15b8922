"""python -m qmdd.video on videos made from the shipped photos: faces found where the clip
put them, scores equal to the detector's on the same crops, the verdict recomputed from
the report, annotated outputs, and readable errors for bad input."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from face_clips import CLIP_FRAMES, expected_face, iou, make_face_clip

from qmdd.detector import fake_probability, load_detector
from qmdd.data import DetectorTransform
from qmdd.video import VideoReadError, aggregate, analyse_video, load_scorer, load_settings, probe_video, read_frames
from qmdd.video.__main__ import main as video_main


def test_cli_finds_the_face_scores_it_and_writes_report_and_annotations(face_clip, tiny_detector, tmp_path, capsys):
    checkpoint, _ = tiny_detector
    out = tmp_path / "out"
    code = video_main(["--model", str(checkpoint), str(face_clip), "--out", str(out), "--set", "every_n=2", "--set", "margin=0", "--annotate", "both", "--threads", "1"])
    assert code == 0
    report = json.loads((out / "astronaut.json").read_text())
    frames = report["frames"]
    assert [f["index"] for f in frames] == list(range(0, CLIP_FRAMES, 2))
    size = (report["width"], report["height"])
    hits = [f for f in frames if f["box"] is not None and iou(f["box"], expected_face(f["index"], CLIP_FRAMES, size)) > 0.6]
    assert len(hits) >= 0.9 * len(frames)
    assert all(f["time"] == pytest.approx(f["index"] / 12.0, abs=1e-3) for f in frames)
    counts = report["counts"]
    assert counts["sampled"] == len(frames) and counts["faces_found"] + counts["no_face"] == len(frames)
    scores = [f["score"] for f in frames if f["score"] is not None]
    expected = aggregate(scores, report["threshold"], "share", 0.5)
    assert report["verdict"]["verdict"] == expected.verdict and report["verdict"]["share_above"] == pytest.approx(expected.share_above)
    assert sorted(p.name for p in (out / "astronaut_frames").iterdir()) == [f"frame_{f['index']:06d}.jpg" for f in frames]
    assert not [p.name for p in out.rglob(".*")]  # no partial file left behind
    annotated = probe_video(out / "astronaut_annotated.mp4")
    assert annotated.frame_count == len(frames) and (annotated.width, annotated.height) == size
    line = capsys.readouterr().out.strip()
    assert line.startswith(report["verdict"]["verdict"]) and f"faces={counts['faces_found']}/{len(frames)}" in line


def test_crop_scores_equal_the_detector_on_independently_cut_crops(face_clip, tiny_detector):
    checkpoint, _ = tiny_detector
    settings = load_settings(None, ["every_n=6", "margin=0.2"])
    report = analyse_video(face_clip, load_scorer(checkpoint), settings)
    loaded = load_detector(checkpoint)
    transform = DetectorTransform(loaded.config.data, "test")
    capture = cv2.VideoCapture(str(face_clip))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    scored = [f for f in report.frames if f.box is not None]
    assert scored
    rng = np.random.default_rng(0)
    crops = torch.stack([transform(Image.fromarray(frames[f.index][f.box[1] : f.box[3], f.box[0] : f.box[2]]), rng) for f in scored])
    with torch.inference_mode():
        direct = fake_probability(loaded.model, crops).tolist()
    assert [f.score for f in scored] == pytest.approx(direct, abs=1e-6)


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_threshold_setting_drives_the_verdict(face_clip, tiny_detector, threshold):
    _, packed = tiny_detector
    report = analyse_video(face_clip, load_scorer(packed), load_settings(None, ["every_n=8", f"threshold={threshold}"]))
    assert report.verdict.verdict == ("fake" if threshold == 0.0 else "real")  # every sigmoid is in (0, 1)
    assert report.threshold == threshold


def test_int8_engine_scores_like_the_fake_quant_model(face_clip, tiny_detector):
    settings = load_settings(None, ["every_n=6"])
    exact = analyse_video(face_clip, load_scorer(tiny_detector[1]), settings)
    fast = analyse_video(face_clip, load_scorer(tiny_detector[1], "int8"), settings)
    assert [f.box for f in fast.frames] == [f.box for f in exact.frames]
    assert [f.score for f in fast.frames] == pytest.approx([f.score for f in exact.frames], abs=2e-3)


def test_an_onnx_file_scores_like_its_int8_model(face_clip, tiny_detector, tmp_path):
    from qmdd.deploy import calibration_images, export_onnx, load_packed

    loaded = load_packed(tiny_detector[1])
    onnx_path = tmp_path / "tiny.onnx"
    export_onnx(onnx_path, loaded.model, loaded.config, calibration_images(loaded.config.data), loaded.threshold)
    settings = load_settings(None, ["every_n=6"])
    fast = analyse_video(face_clip, load_scorer(tiny_detector[1], "int8"), settings)
    onnx = analyse_video(face_clip, load_scorer(onnx_path), settings)  # .onnx picks ONNX Runtime itself
    assert onnx.threshold == pytest.approx(loaded.threshold)
    assert [f.box for f in onnx.frames] == [f.box for f in fast.frames]
    assert [f.score for f in onnx.frames] == pytest.approx([f.score for f in fast.frames], abs=2e-3)


def test_random_sampling_reads_exactly_the_drawn_frames(face_clip):
    indices = [0, 5, 6, 23]
    frames = dict(read_frames(face_clip, indices + [40]))
    capture = cv2.VideoCapture(str(face_clip))
    for position in range(CLIP_FRAMES):
        ok, frame = capture.read()
        if position in indices:
            assert np.array_equal(frames[position], cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    assert frames[40] is None  # past the end: reported, not invented


@pytest.mark.parametrize("suffix", [".avi", ".mov", ".webm"])
def test_other_containers_are_read(tmp_path, suffix):
    clip = make_face_clip(tmp_path / f"clip{suffix}", frames=4, size=(320, 240))
    info = probe_video(clip)
    assert info.frame_count == 4 and (info.width, info.height) == (320, 240)
    assert [index for index, frame in read_frames(clip, range(4)) if frame is not None] == [0, 1, 2, 3]


def test_frames_without_a_face_are_counted_not_dropped(tmp_path, tiny_detector):
    clip = make_face_clip(tmp_path / "coffee.mp4", frames=6, size=(320, 240), photo="coffee.jpg")
    report = analyse_video(clip, load_scorer(tiny_detector[0]), load_settings(None, ["every_n=2"]))
    data = report.to_dict()
    assert data["counts"] == {"sampled": 3, "faces_found": 0, "no_face": 3, "undecodable": 0}
    assert data["no_face_frames"] == [0, 2, 4] and data["verdict"]["verdict"] == "no face"


def test_corrupt_or_missing_video_is_one_sentence_naming_the_file(tmp_path, tiny_detector, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    with pytest.raises(VideoReadError, match="broken.mp4"):
        probe_video(bad)
    code = video_main(["--model", str(tiny_detector[0]), str(bad), str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"error: {bad}: cannot be read as a video" in err and "missing.mp4: no such file" in err


@pytest.mark.parametrize(("args", "message", "status"), [
    (["--set", "rule=median"], "rule='median' is unknown", 2),
    (["--model", "nowhere.pt"], "model nowhere.pt: no such file", 1),
])
def test_bad_settings_and_models_are_one_sentence(face_clip, tiny_detector, tmp_path, capsys, args, message, status):
    argv = ["--model", str(tiny_detector[0]), str(face_clip), "--out", str(tmp_path / "o"), *args]
    assert video_main(argv) == status
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_file_that_is_not_a_model_is_named(face_clip, tmp_path, capsys):
    fake_model = tmp_path / "model.qmdd"
    fake_model.write_bytes(b"not a model")
    assert video_main(["--model", str(fake_model), str(face_clip), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: model {fake_model}:") and "Traceback" not in err
