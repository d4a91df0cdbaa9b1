"""Charts the Dagster UI draws where an asset page opens: valid SVG, under its inline limit."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from urllib.parse import unquote

import numpy as np
import pytest

from ct_assets.lib.inline_charts import (
    FLAGGED,
    INLINE_LIMIT,
    MARK,
    Point,
    holdout_svg,
    svg_markdown,
    timeline_markdown,
)

SVG = "{http://www.w3.org/2000/svg}"


def parsed(markdown: str) -> ET.Element:
    """The SVG inside a Markdown image's data URL, parsed (fails on a malformed one)."""
    match = re.match(r"!\[[^\]]*\]\(data:image/svg\+xml,([^)\s]+)\)", markdown)
    assert match, markdown[:200]
    return ET.fromstring(unquote(match.group(1)))


def strokes(svg: ET.Element, colour: str) -> list[str]:
    return [path.get("d") for path in svg.iter(f"{SVG}path") if path.get("stroke") == colour]


@pytest.mark.parametrize("key_format", ["2026-01-{:02d}", "2026-01-01-{:02d}:00"])
def test_a_month_of_partitions_fits_inline_and_keeps_the_newest(key_format):
    points = [Point(key_format.format(day), 0.1 * (day % 7), flagged=day % 7 >= 5)
              for day in range(1, 31)]
    markdown = timeline_markdown(points, "drift", "a caption", limit=0.5,
                                 markers=frozenset({points[-3].key}), scale=1.0)
    assert len(markdown) < INLINE_LIMIT
    svg = parsed(markdown)
    labels = [text.text for text in svg.iter(f"{SVG}text")]
    assert labels[-1] == points[-1].key  # the newest partition is always shown
    shown = sum(d.count("M") for colour in ("#99a", FLAGGED) for d in strokes(svg, colour))
    assert labels[0] == points[-shown].key  # what was dropped is the oldest
    assert len(strokes(svg, MARK)) == 1


def test_flagged_partitions_are_red_and_unmeasured_ones_have_no_bar():
    points = [Point("a", 0.1), Point("b", None), Point("c", 0.9, flagged=True)]
    svg = parsed(timeline_markdown(points, "drift", "", limit=0.5, scale=1.0))
    assert [d.count("M") for d in strokes(svg, FLAGGED)] == [1]
    assert [d.count("M") for d in strokes(svg, "#99a")] == [1]
    assert strokes(svg, MARK) == []  # no retrain, no marker


def test_svg_markdown_escapes_what_would_end_the_markdown_link():
    markdown = svg_markdown("<svg xmlns='http://www.w3.org/2000/svg'><text>a (b) #c</text>"
                            "</svg>", "alt")
    assert parsed(markdown).find(f"{SVG}text").text == "a (b) #c"


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_the_holdout_chart_fits_inline_and_names_each_model_with_its_value(task):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 5000)
    scores = {"candidate": np.clip(y * 0.4 + rng.random(5000) * 0.6, 0, 1),
              "champion": rng.random(5000)}
    markdown = svg_markdown(holdout_svg(y, scores, task, {"candidate": 0.9312345,
                                                          "champion": float("nan")}, "roc_auc"),
                            "holdout", "ROC on the same 5000 holdout rows")
    assert len(markdown) < INLINE_LIMIT
    texts = [text.text for text in parsed(markdown).iter(f"{SVG}text")]
    assert texts == ["candidate: roc_auc 0.9312", "champion: roc_auc n/a"]
    curves = list(parsed(markdown).iter(f"{SVG}polyline"))
    assert len(curves) == (2 if task == "binary" else 0)
