"""Small static SVG charts (line charts and histograms) for report.html.

Written by hand rather than with a plotting library so the report is one file that
opens anywhere, offline, with no script: every chart is plain SVG markup inline in the
page. Each series is one ``<polyline>`` with a point per value, so what a chart draws
can be checked against the log it came from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 560, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 30, 40  # margins around the plot area
LEGEND = 110  # width of one legend entry


@dataclass(frozen=True)
class Series:
    """One line: ``(x, y)`` points, drawn in ``color``; ``markers`` for sparse series."""

    name: str
    points: Sequence[tuple[float, float]]
    color: str
    markers: bool = False


def number(value: float) -> str:
    """A tick label: short, without float noise (0.0002, 1.5k, 3.2M)."""
    magnitude = abs(value)
    if magnitude >= 1e9:
        return f"{value / 1e9:.3g}G"
    if magnitude >= 1e6:
        return f"{value / 1e6:.3g}M"
    if magnitude >= 1e4:
        return f"{value / 1e3:.3g}k"
    return f"{value:.3g}"


def ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 × 10^k) covering ``[low, high]``."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9)
    last = math.floor(high / step + 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def _bounds(values: list[float], zero: bool) -> tuple[float, float]:
    low, high = min(values), max(values)
    if zero:
        low = min(low, 0.0)
    if high == low:  # a flat line: give it room above and below
        pad = abs(high) * 0.1 or 1.0
        return low - pad, high + pad
    return low, high


class _Frame:
    """Maps data coordinates onto the plot area and draws its axes."""

    def __init__(self, x: tuple[float, float], y: tuple[float, float]) -> None:
        self.x0, self.x1 = x
        self.y0, self.y1 = y

    def px(self, x: float) -> float:
        return LEFT + (x - self.x0) / (self.x1 - self.x0) * (WIDTH - LEFT - RIGHT)

    def py(self, y: float) -> float:
        return HEIGHT - BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (HEIGHT - TOP - BOTTOM)

    def axes(self, x_label: str, y_format: Callable[[float], str],
             x_ticks: list[float]) -> list[str]:
        bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
        parts = [f'<path class="axis" d="M{LEFT},{TOP} V{bottom} H{right}"/>']
        for value in ticks(self.y0, self.y1):
            y = self.py(value)
            parts.append(f'<path class="grid" d="M{LEFT},{y:.1f} H{right}"/>'
                         f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                         f"{escape(y_format(value))}</text>")
        for value in x_ticks:
            x = self.px(value)
            parts.append(f'<path class="axis" d="M{x:.1f},{bottom} v5"/>'
                         f'<text x="{x:.1f}" y="{bottom + 18}" text-anchor="middle">'
                         f"{escape(number(value))}</text>")
        parts.append(f'<text x="{(LEFT + right) / 2}" y="{HEIGHT - 4}" text-anchor="middle">'
                     f"{escape(x_label)}</text>")
        return parts


def _svg(title: str, body: list[str]) -> str:
    return (f'<svg class="chart" role="img" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}">'
            f"<title>{escape(title)}</title>"
            f'<text class="title" x="{LEFT}" y="18">{escape(title)}</text>'
            + "".join(body) + "</svg>")


def _finite(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]


def line_chart(title: str, series: Sequence[Series], *, x_label: str = "step",
               y_format: Callable[[float], str] = number, zero: bool = False) -> str:
    """An SVG line chart of ``series`` on shared axes, with a legend when there are several.

    Non-finite values are left out (a skipped non-finite step has no loss to draw);
    ``zero`` keeps 0 on the y axis (throughput, memory) instead of zooming in.
    """
    drawn = [(s, _finite(s.points)) for s in series]
    drawn = [(s, points) for s, points in drawn if points]
    if not drawn:
        return _svg(title, [f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">'
                            "nothing logged</text>"])
    xs = [x for _, points in drawn for x, _ in points]
    ys = [y for _, points in drawn for _, y in points]
    x_range = (min(xs), max(xs)) if max(xs) > min(xs) else (min(xs) - 1, max(xs) + 1)
    frame = _Frame(x_range, _bounds(ys, zero))
    body = frame.axes(x_label, y_format, ticks(*x_range))
    for index, (s, points) in enumerate(drawn):
        coords = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in points)
        body.append(f'<polyline class="series" data-series="{escape(s.name)}" '
                    f'stroke="{s.color}" points="{coords}"/>')
        if s.markers or len(points) == 1:
            body += [f'<circle cx="{frame.px(x):.1f}" cy="{frame.py(y):.1f}" r="3" '
                     f'fill="{s.color}"/>' for x, y in points]
        if len(drawn) > 1:  # a legend on the title's line, right-aligned, off the curves
            x = WIDTH - RIGHT - LEGEND * (len(drawn) - index)
            body.append(f'<path d="M{x},14 h18" stroke="{s.color}" stroke-width="3"/>'
                        f'<text x="{x + 24}" y="18">{escape(s.name)}</text>')
    return _svg(title, body)


def histogram(title: str, values: Sequence[int], *, x_label: str, color: str,
              bins: int = 30) -> str:
    """An SVG histogram of integer ``values`` (token counts), one bar per bin."""
    if not values:
        return _svg(title, [f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">'
                            "no samples</text>"])
    low, high = min(values), max(values) + 1
    width = max(1, math.ceil((high - low) / bins))
    counts = [0] * math.ceil((high - low) / width)
    for value in values:
        counts[(value - low) // width] += 1
    end = low + width * len(counts)
    frame = _Frame((low, end), (0, max(counts)))
    body = frame.axes(x_label, number, [t for t in ticks(low, end) if t == int(t)])
    for index, count in enumerate(counts):
        x = frame.px(low + index * width)
        bar = frame.px(low + (index + 1) * width) - x
        y = frame.py(count)
        body.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{max(bar - 1, 1):.1f}" '
                    f'height="{HEIGHT - BOTTOM - y:.1f}" fill="{color}">'
                    f"<title>{low + index * width}–{low + (index + 1) * width - 1}: "
                    f"{count}</title></rect>")
    return _svg(title, body)
