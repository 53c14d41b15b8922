"""The local web demo: one page where a person uploads an image or a short video and sees
the verdict, the score and, for a video, the sampled frames with face boxes and scores.

>>> from qmdd.demo import DemoLimits, create_app
>>> app = create_app(load_scorer("best.pt"), load_settings(), DemoLimits())   # a FastAPI app

A FastAPI app served by uvicorn, with its page, script and style inline (it works offline,
no asset from elsewhere). Uploads are checked for size and type before anything is decoded;
a bad upload gets a one-sentence message on the page. Entry point: ``python -m qmdd.demo``;
docs/video.md.
"""

from qmdd.demo._app import DemoLimits, analyse_upload, create_app, UploadError

__all__ = ["DemoLimits", "UploadError", "analyse_upload", "create_app"]
