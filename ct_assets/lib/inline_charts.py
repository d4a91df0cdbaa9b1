"""Charts small enough for the Dagster UI to draw where an asset page opens.

The UI renders a Markdown metadata value inline when it is shorter than 1,000 characters, and
behind a "[Show Markdown]" link otherwise; its Markdown sanitiser lets `data:` image sources
through. So each chart here is a compact SVG in a `data:image/svg+xml` URL, sized to stay under
that limit: a timeline drops its oldest partitions until it fits. The full-size PNG charts stay
in the reports (`reports.comparison_chart_png`).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import numpy as np

INLINE_LIMIT = 1000  # the UI shows shorter Markdown inline
WIDTH, HEIGHT, BASE = 300, 64, 48  # the SVG's size; the bars' baseline
_SVG = ("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-size='9' "
        "font-family='sans-serif'>")
FLAGGED, PLAIN, MARK, LIMIT = "#d33", "#99a", "#06c", "#777"


@dataclass(frozen=True)
class Point:
    """One partition on a timeline: its key, its value (None: not measured) and its verdict."""

    key: str
    value: float | None
    flagged: bool = False


def svg_markdown(svg: str, alt: str, caption: str = "") -> str:
    """`svg` as a Markdown image (a `data:` URL), with an optional caption line under it."""
    url = quote(svg, safe="='/:;,.-_")
    return f"![{alt}](data:image/svg+xml,{url})" + (f"\n\n{caption}" if caption else "")


def fits_inline(markdown: str) -> bool:
    """Whether the UI draws `markdown` where the asset page opens."""
    return len(markdown) < INLINE_LIMIT


def _number(value: float) -> str:
    return f"{value:.0f}" if abs(value - round(value)) < 0.05 else f"{value:.1f}"


def timeline_svg(points: list[Point], *, limit: float | None = None,
                 markers: frozenset[str] = frozenset(), scale: float | None = None) -> str:
    """Bars per partition (flagged ones red), a dashed limit line, a blue line per marker.

    Args:
        points: the partitions, oldest first.
        limit: the threshold a bar is judged against, drawn as a dashed line.
        markers: partition keys to mark (the partitions that triggered a retrain).
        scale: the value at the top of the chart (default: the largest value or limit).
    """
    values = [p.value for p in points if p.value is not None]
    top = scale or max([*values, limit or 0.0, 1e-12])
    step = WIDTH / max(len(points), 1)
    bar = max(1.0, step * 0.7)
    paths: dict[str, list[str]] = {FLAGGED: [], PLAIN: []}
    marks = []
    for index, point in enumerate(points):
        x = _number(index * step + step / 2)
        if point.value is not None:
            height = max(1.0, min(point.value / top, 1.0) * (BASE - 4))
            paths[FLAGGED if point.flagged else PLAIN].append(f"M{x},{BASE}v-{_number(height)}")
        if point.key in markers:
            marks.append(f"M{x},0v{BASE}")
    parts = [_SVG.format(w=WIDTH, h=HEIGHT)]
    for colour, strokes in paths.items():
        if strokes:
            parts.append(f"<path d='{''.join(strokes)}' stroke='{colour}' "
                         f"stroke-width='{_number(bar)}'/>")
    if limit is not None:
        y = _number(BASE - min(limit / top, 1.0) * (BASE - 4))
        parts.append(f"<path d='M0,{y}h{WIDTH}' stroke='{LIMIT}' stroke-dasharray='4'/>")
    if marks:
        parts.append(f"<path d='{''.join(marks)}' stroke='{MARK}' stroke-width='2'/>")
    if points:
        parts.append(f"<text y='{HEIGHT - 3}'>{points[0].key}</text>")
        parts.append(f"<text x='{WIDTH}' y='{HEIGHT - 3}' text-anchor='end'>"
                     f"{points[-1].key}</text>")
    return "".join([*parts, "</svg>"])


def timeline_markdown(points: list[Point], alt: str, caption: str, **options: object) -> str:
    """`timeline_svg` as inline Markdown: the newest partitions that fit under the UI's limit."""
    shown = list(points)
    while True:
        markdown = svg_markdown(timeline_svg(shown, **options), alt, caption)  # type: ignore[arg-type]
        if fits_inline(markdown) or len(shown) <= 1:
            return markdown
        shown = shown[max(1, len(shown) // 6):]  # drop the oldest sixth and try again


def _roc_points(y: np.ndarray, scores: np.ndarray, samples: int = 16) -> list[tuple[int, int]]:
    """The ROC curve at `samples` score quantiles, as (fpr, tpr) in percent."""
    positives, negatives = max(int((y == 1).sum()), 1), max(int((y == 0).sum()), 1)
    cuts = np.unique(np.quantile(scores, np.linspace(0, 1, samples)))[::-1]
    points = [(0, 0)]
    for cut in cuts:
        chosen = scores >= cut
        points.append((round(100 * float((chosen & (y == 0)).sum()) / negatives),
                       round(100 * float((chosen & (y == 1)).sum()) / positives)))
    points.append((100, 100))
    return points


def holdout_svg(y: np.ndarray, scores: dict[str, np.ndarray], task: str,
                values: dict[str, float], metric: str) -> str:
    """Candidate vs champion on the same holdout.

    Binary with both classes present: the ROC curves; otherwise one bar per model for the gate
    metric. Each model is labelled with its metric value.
    """
    colours = ["#d62", "#06c"]
    names = list(scores)
    parts = [_SVG.format(w=WIDTH, h=110)]
    if task == "binary" and len(np.unique(y)) == 2:
        parts.append("<path d='M10,105h95v-95h-95zM10,105l95,-95' fill='none' stroke='#bbb'/>")
        for name, colour in zip(names, colours, strict=False):
            curve = ",".join(f"{10 + fpr * 0.95:.0f},{105 - tpr * 0.95:.0f}"
                             for fpr, tpr in _roc_points(y, scores[name]))
            parts.append(f"<polyline points='{curve}' fill='none' stroke='{colour}' "
                         "stroke-width='2'/>")
    else:
        top = max([abs(v) for v in values.values() if np.isfinite(v)] + [1e-12])
        for index, (name, colour) in enumerate(zip(names, colours, strict=False)):
            width = 95 * abs(values.get(name, 0.0)) / top if np.isfinite(values.get(name, 0.0)) \
                else 0
            parts.append(f"<rect x='10' y='{20 + 40 * index}' width='{width:.0f}' height='25' "
                         f"fill='{colour}'/>")
    left = 120  # the labels, right of the plot
    for index, (name, colour) in enumerate(zip(names, colours, strict=False)):
        value = values.get(name, float("nan"))
        shown = f"{value:.4f}" if np.isfinite(value) else "n/a"
        parts.append(f"<text x='{left}' y='{35 + 40 * index}' fill='{colour}'>"
                     f"{name[:28]}: {metric} {shown}</text>")
    return "".join([*parts, "</svg>"])
