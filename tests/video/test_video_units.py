"""Box geometry, frame sampling, the aggregation rule and the settings, each against an
independent computation."""

from __future__ import annotations

import numpy as np
import pytest

from qmdd.video import VideoSettings, VideoSettingsError, aggregate, crop_name, expand_box, largest_face, load_settings, sample_indices, video_auc, video_id_of, video_scores


@pytest.mark.parametrize("margin", [0.0, 0.15, 0.5])
def test_expanded_box_grows_by_the_margin_on_every_side_inside_the_frame(margin):
    x, y, w, h = 100, 80, 40, 60
    left, top, right, bottom = expand_box((x, y, w, h), margin, 640, 480)
    assert (right - left, bottom - top) == (round(w * (1 + 2 * margin)), round(h * (1 + 2 * margin)))
    # the face stays centred: equal growth on opposite sides
    assert x - left == right - (x + w) and y - top == bottom - (y + h)


def test_expanded_box_is_clipped_to_the_frame_not_shifted():
    # a face in the top-left corner and one past the bottom-right edge
    assert expand_box((5, 3, 40, 40), 0.5, 100, 80) == (0, 0, 65, 63)
    left, top, right, bottom = expand_box((80, 60, 30, 30), 0.5, 100, 80)
    assert (left, top) == (65, 45) and (right, bottom) == (100, 80)


def test_expanded_box_random_cases_match_a_direct_formula():
    rng = np.random.default_rng(0)
    for _ in range(200):
        width, height = rng.integers(50, 400, 2)
        x, y = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(1, 120, 2)
        margin = float(rng.uniform(0, 1))
        box = expand_box((x, y, w, h), margin, width, height)
        exact = (x - margin * w, y - margin * h, x + w + margin * w, y + h + margin * h)
        expected = (max(0, round(exact[0])), max(0, round(exact[1])), min(width, round(exact[2])), min(height, round(exact[3])))
        assert box == expected
        assert 0 <= box[0] <= box[2] <= width and 0 <= box[1] <= box[3] <= height


def test_largest_face_is_the_one_of_largest_area():
    assert largest_face([]) is None
    assert largest_face(np.array([[0, 0, 10, 10], [50, 50, 20, 7], [5, 5, 12, 12]])) == (5, 5, 12, 12)
    assert largest_face([(1, 1, 4, 4), (9, 9, 4, 4)]) == (1, 1, 4, 4)  # the first of equals


@pytest.mark.parametrize(("count", "every_n"), [(1, 30), (29, 30), (30, 30), (31, 30), (300, 30), (17, 4), (10, 1)])
def test_every_nth_frame(count, every_n):
    indices = sample_indices(count, VideoSettings(every_n=every_n))
    assert indices == [i for i in range(count) if i % every_n == 0]
    assert len(indices) == -(-count // every_n)


def test_random_frames_are_distinct_in_range_seeded_and_capped_by_the_video():
    settings = VideoSettings(sampling="random", num_frames=10, seed=3)
    first = sample_indices(300, settings)
    assert len(first) == 10 == len(set(first)) and first == sorted(first) and all(0 <= i < 300 for i in first)
    assert sample_indices(300, settings) == first
    assert sample_indices(300, VideoSettings(sampling="random", num_frames=10, seed=4)) != first
    assert sample_indices(6, settings) == list(range(6))  # a video shorter than K: every frame
    assert sample_indices(0, settings) == []


def test_max_frames_keeps_the_first_sampled_frames():
    assert sample_indices(100, VideoSettings(every_n=10, max_frames=3)) == [0, 10, 20]


def test_share_rule_counts_frames_strictly_above_the_threshold():
    scores = [0.9, 0.6, 0.5, 0.2]  # 0.5 is not above 0.5
    verdict = aggregate(scores, 0.5, "share", 0.5)
    assert verdict.share_above == 0.5 and verdict.verdict == "fake" and verdict.scored == 4
    assert aggregate(scores, 0.5, "share", 0.51).verdict == "real"
    assert verdict.mean_score == pytest.approx(sum(scores) / 4)


def test_mean_rule_compares_the_mean_score_with_the_threshold():
    assert aggregate([0.9, 0.1, 0.1], 0.5, "mean", 0.0).verdict == "real"  # mean 0.367
    assert aggregate([0.9, 0.9, 0.1], 0.5, "mean", 1.0).verdict == "fake"  # mean 0.633
    # the two rules disagree on a video with a few very confident fake frames
    few_confident = [0.99, 0.99, 0.4, 0.4, 0.4]
    assert aggregate(few_confident, 0.5, "share", 0.5).verdict == "real"
    assert aggregate(few_confident, 0.5, "mean", 0.5).verdict == "fake"


def test_no_scored_frame_gives_no_face_verdict():
    verdict = aggregate([], 0.5, "share", 0.5)
    assert (verdict.verdict, verdict.share_above, verdict.mean_score, verdict.scored) == ("no face", None, None, 0)


def test_settings_load_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "video.yaml"
    path.write_text("every_n: 15\nmargin: 0.3\nthreshold: null\n")
    settings = load_settings(path, ["rule=mean", "margin=0.2"])
    assert (settings.every_n, settings.margin, settings.rule, settings.threshold) == (15, 0.2, "mean", None)


@pytest.mark.parametrize(("override", "message"), [
    ("every_nn=3", "unknown video setting 'every_nn' in the overrides (did you mean 'every_n'?)"),
    ("sampling=randm", "sampling='randm' is unknown (did you mean 'random'?)"),
    ("every_n=0", "every_n=0 must be >= 1"),
    ("scale_factor=1.0", "scale_factor=1.0 must be > 1"),
    ("margin=-0.1", "margin=-0.1 must be in [0, 2]"),
    ("threshold=1.5", "threshold=1.5 must be a probability in [0, 1]"),
    ("every_n=2.5", "every_n must be an integer, got 2.5"),
    ("min_face=big", "min_face must be a int, got 'big'"),
    ("every_n", "override 'every_n' must look like key=value"),
])
def test_bad_settings_are_errors_naming_the_key(override, message):
    with pytest.raises(VideoSettingsError) as caught:
        load_settings(None, [override])
    assert message in str(caught.value)


def test_settings_file_errors_name_the_file(tmp_path):
    with pytest.raises(VideoSettingsError, match="cannot read video settings file .*missing.yaml"):
        load_settings(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(VideoSettingsError, match="list.yaml must be a mapping"):
        load_settings(tmp_path / "list.yaml")


def test_crop_names_round_trip_and_pool_per_video():
    assert video_id_of(f"/x/{crop_name('000_003', 42)}") == "000_003"
    paths = [crop_name("r1", 0), crop_name("r1", 30), crop_name("f1", 0), crop_name("f2", 5), crop_name("f2", 9)]
    labels, scores = [0, 0, 1, 1, 1], [0.25, 0.75, 0.875, 0.5, 0.5]
    pooled = video_scores(paths, labels, scores)
    assert pooled == {"r1": (0, 0.5), "f1": (1, 0.875), "f2": (1, 0.5)}
    # r1 (0.5) ties f2 (0.5) and is below f1: AUC = (1 + 0.5) / 2
    assert video_auc(pooled) == pytest.approx(0.75)
    assert video_auc({"a": (0, 0.1)}) is None
