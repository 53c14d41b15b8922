"""Video-level detection: sample frames, find the face, score the crop, aggregate a verdict.

>>> from qmdd.video import load_settings, load_scorer, analyse_video, write_report
>>> settings = load_settings(None, ["every_n=15", "rule=share"])
>>> report = analyse_video("clip.mp4", load_scorer("runs/<run>/best.pt"), settings)
>>> report.verdict.verdict, report.verdict.share_above, report.faces_found
>>> write_report(report, "clip.json")

Frames are read with OpenCV (mp4, avi, mov, webm, mkv), faces found with the Haar cascades
shipped in ``opencv-python-headless`` (no download), the largest face's box grown by a
margin and clipped to the frame. Face crops of a dataset keep their video in their file
names (:func:`crop_name`), so image-level suites can be pooled per video
(:func:`video_scores`, :func:`video_auc`). Entry point: ``python -m qmdd.video``;
docs/video.md.
"""

from qmdd.video._crops import CropCounts, crop_name, extract_crops, video_auc, video_id_of, video_scores
from qmdd.video._faces import Box, FaceFinder, cascade_path, expand_box, largest_face
from qmdd.video._image import ImageResult, analyse_image
from qmdd.video._frames import VIDEO_SUFFIXES, VideoError, VideoInfo, VideoReadError, probe_video, read_frames, sample_indices
from qmdd.video._pipeline import NO_FACE, FrameResult, Verdict, VideoReport, aggregate, analyse_video, draw_box, face_frames, write_report
from qmdd.video._scorer import ENGINES, Scorer, load_scorer
from qmdd.video._settings import FACE_FINDERS, RULES, SAMPLING, VideoSettings, VideoSettingsError, describe_settings, load_settings, settings_to_dict

__all__ = [
    "Box", "CropCounts", "ImageResult", "analyse_image", "ENGINES", "FACE_FINDERS", "FaceFinder", "FrameResult", "NO_FACE", "RULES", "SAMPLING",
    "Scorer", "VIDEO_SUFFIXES", "Verdict", "VideoError", "VideoInfo", "VideoReadError", "VideoReport",
    "VideoSettings", "VideoSettingsError", "aggregate", "analyse_video", "cascade_path", "crop_name",
    "describe_settings", "draw_box", "expand_box", "extract_crops", "face_frames", "largest_face", "load_scorer",
    "load_settings", "probe_video", "read_frames", "sample_indices", "settings_to_dict", "video_auc",
    "video_id_of", "video_scores", "write_report",
]
