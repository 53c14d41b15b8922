"""A local web page to try a detector: upload an image or a short video, see the verdict.

Examples::

    python -m qmdd.demo --model runs/<run>/best.pt                  # http://127.0.0.1:8000
    python -m qmdd.demo --model model.qmdd --engine int8 --port 8080
    python -m qmdd.demo --model best.pt --set every_n=10 --set rule=mean --max-upload-mb 20

The page shows, for an image, the verdict and the score of its largest face (or of the
whole image when it shows none), with the box drawn; for a video, the verdict, the mean
face score, the share of face frames above the threshold, and every sampled frame (at most
--max-frames) with its box and score. Video settings are python -m qmdd.video's (--set
KEY=VALUE, --settings FILE; python -m qmdd.video --list-settings).

It listens on 127.0.0.1 only, unless --host says otherwise (--host 0.0.0.0 opens it to
your network: anyone who reaches the port can upload files). Everything it needs is in
the page; it works offline. Stop it with Ctrl-C. docs/video.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from qmdd.utils import positive_int
from qmdd.video import ENGINES, VideoError, VideoSettingsError, load_scorer, load_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qmdd.demo",
        description="Serve a one-page web demo of a qmdd detector on this computer.",
        epilog=__doc__.split("Examples::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="a training checkpoint (.pt) or a packed model (.qmdd)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--engine", choices=ENGINES, default="fake-quant", help="fake-quant (exact, default), int8 (fast x86 CPU path) or onnxruntime (an .onnx model; chosen by itself for .onnx files)")
    parser.add_argument("--settings", help="a YAML file of video settings")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one video setting (repeatable)")
    parser.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload accepted, in MB (default 50)")
    parser.add_argument("--max-frames", type=positive_int, default=48, help="most video frames analysed and shown per upload (default 48)")
    parser.add_argument("--threads", type=positive_int, help="CPU threads for torch, >= 1 (default: torch's choice)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_upload_mb <= 0:
        parser.error("argument --max-upload-mb: must be > 0")
    if not 0 <= args.port <= 65535:
        parser.error("argument --port: must be in 0..65535")
    try:
        settings = load_settings(args.settings, args.set)
    except VideoSettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import torch
    import uvicorn

    from qmdd.demo import DemoLimits, create_app

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        scorer = load_scorer(args.model, args.engine)
        app = create_app(scorer, settings, DemoLimits(int(args.max_upload_mb * 2**20), args.max_frames))
    except VideoError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"qmdd demo: open http://{args.host}:{args.port}/ (Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
