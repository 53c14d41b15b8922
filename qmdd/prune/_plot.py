"""A small line chart written with Pillow (already a dependency), for ``curves.png``.

matplotlib is not a qmdd dependency. Making it an optional extra would mean a plot that
appears on some installs and silently not on others, for one chart of a few lines; Pillow
draws it in ~100 lines, so every lottery experiment gets its PNG (docs/lottery.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from qmdd.utils import atomic_write

__all__ = ["Series", "line_chart"]

# Panel geometry in pixels: plot area inside margins for tick labels, titles and legend.
_PANEL_W, _PANEL_H = 560, 420
_LEFT, _RIGHT, _TOP, _BOTTOM = 62, 16, 40, 52
_FONT_PX = 13
_GRID = (225, 225, 225)
_INK = (40, 40, 40)


@dataclass(frozen=True)
class Series:
    """One curve: ``points`` as (x, y) in data units; ``marker`` one of o s ^ d."""

    label: str
    points: Sequence[tuple[float, float]]
    colour: tuple[int, int, int]
    marker: str = "o"
    dashed: bool = False


def _font(size: int = _FONT_PX) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except TypeError:  # an old Pillow: the fixed bitmap font
        return ImageFont.load_default()


def _nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) from below ``low`` to above ``high``."""
    span = max(high - low, 1e-9)
    raw = span / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    start, stop = math.floor(low / step) * step, math.ceil(high / step) * step
    return [round(start + index * step, 10) for index in range(round((stop - start) / step) + 1)]


def _marker(draw: ImageDraw.ImageDraw, x: float, y: float, kind: str, colour) -> None:
    r = 4
    if kind == "s":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=colour)
    elif kind == "^":
        draw.polygon([(x, y - r - 1), (x - r - 1, y + r), (x + r + 1, y + r)], fill=colour)
    elif kind == "d":
        draw.polygon([(x, y - r - 1), (x + r + 1, y), (x, y + r + 1), (x - r - 1, y)], fill=colour)
    else:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)


def _line(draw: ImageDraw.ImageDraw, a: tuple[float, float], b: tuple[float, float], colour, dashed: bool) -> None:
    if not dashed:
        draw.line([a, b], fill=colour, width=2)
        return
    length = math.dist(a, b)
    dash = 7.0  # px on, px off
    pieces = max(1, int(length // dash))
    for index in range(0, pieces, 2):
        t0, t1 = index / pieces, min((index + 1) / pieces, 1.0)
        draw.line([(a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0), (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1)], fill=colour, width=2)


def _panel(y_label: str, series: Sequence[Series], x_label: str, x_range: tuple[float, float]) -> Image.Image:
    image = Image.new("RGB", (_PANEL_W, _PANEL_H), "white")
    draw = ImageDraw.Draw(image)
    font = _font()
    ys = [y for s in series for _, y in s.points]
    y_low, y_high = (min(ys), max(ys)) if ys else (0.0, 1.0)
    pad = max(1.0, 0.08 * (y_high - y_low))
    y_ticks = _nice_ticks(y_low - pad, y_high + pad)
    x_ticks = _nice_ticks(*x_range)
    x0, x1 = x_ticks[0], x_ticks[-1]
    y0, y1 = y_ticks[0], y_ticks[-1]
    left, top, right, bottom = _LEFT, _TOP, _PANEL_W - _RIGHT, _PANEL_H - _BOTTOM

    def px(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top)

    for tick in y_ticks:
        _, y = px(x0, tick)
        draw.line([(left, y), (right, y)], fill=_GRID)
        draw.text((left - 6, y), f"{tick:g}", fill=_INK, font=font, anchor="rm")
    for tick in x_ticks:
        x, _ = px(tick, y0)
        draw.line([(x, top), (x, bottom)], fill=_GRID)
        draw.text((x, bottom + 6), f"{tick:g}", fill=_INK, font=font, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline=_INK)
    draw.text(((left + right) / 2, _PANEL_H - 8), x_label, fill=_INK, font=font, anchor="mb")
    draw.text((left, top - 8), y_label, fill=_INK, font=_font(_FONT_PX + 2), anchor="lb")
    for s in series:
        points = [px(x, y) for x, y in sorted(s.points)]
        for a, b in zip(points, points[1:]):
            _line(draw, a, b, s.colour, s.dashed)
        for x, y in points:
            _marker(draw, x, y, s.marker, s.colour)
    return image


def line_chart(
    path: str | Path,
    panels: Sequence[tuple[str, Sequence[Series]]],
    *,
    title: str,
    x_label: str,
    x_range: tuple[float, float] = (0.0, 100.0),
) -> Path:
    """Draw ``panels`` (y label, series) side by side under ``title``; write a PNG."""
    images = [_panel(label, series, x_label, x_range) for label, series in panels]
    title_h, row_h = 30, 18
    # One legend under the panels: the series are the same in every panel.
    legend = list(panels[0][1]) if panels else []
    columns = 2
    legend_h = row_h * math.ceil(len(legend) / columns) + 10
    canvas = Image.new("RGB", (_PANEL_W * len(images), _PANEL_H + title_h + legend_h), "white")
    for index, panel in enumerate(images):
        canvas.paste(panel, (index * _PANEL_W, title_h))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    draw.text((canvas.width / 2, 8), title, fill=_INK, font=_font(_FONT_PX + 3), anchor="mt")
    column_w = canvas.width // columns
    for index, s in enumerate(legend):
        x = (index % columns) * column_w + _LEFT
        y = title_h + _PANEL_H + (index // columns) * row_h + row_h / 2
        _line(draw, (x, y), (x + 26, y), s.colour, s.dashed)
        _marker(draw, x + 13, y, s.marker, s.colour)
        draw.text((x + 34, y), s.label, fill=_INK, font=font, anchor="lm")
    path = Path(path)
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))
    return path
