"""Each partition's own figures: splitting, counting, rounding and naming a run's partitions."""

from __future__ import annotations

from typing import NamedTuple

import polars as pl
import pytest

from ct_assets.lib.partition_figures import (
    by_partition,
    counts_by_partition,
    null_rates,
    rounded,
    score_summary,
    significant,
    span,
)
from ct_assets.lib.validation import PARTITION

FRAME = pl.DataFrame({
    PARTITION: ["d1", "d1", "d1", "d2", "d3"],
    "score": [0.1, 0.2, 0.9, 0.5, None],
    "prediction": [0, 0, 1, 1, None],
})


@pytest.mark.parametrize(("value", "expected"), [
    (0.123456789, 0.1235), (1234567.0, 1235000.0), (0.000123456, 0.0001235), (2.0, 2.0),
    (-0.98765, -0.9877), (float("nan"), None), (float("inf"), None)])
def test_floats_keep_four_significant_digits(value, expected):
    assert significant(value) == expected


def test_rounding_reaches_nested_floats_and_leaves_other_values_alone():
    class Pair(NamedTuple):
        low: float
        high: float

    pair = Pair(0.123456, 0.654321)
    assert rounded({"a": 1 / 3, "b": {"c": [2 / 3, 7]}, "d": "x", "e": True, "f": pair}) == {
        "a": 0.3333, "b": {"c": [0.6667, 7]}, "d": "x", "e": True, "f": pair}


def test_a_run_names_its_partitions():
    assert span(["d3", "d1", "d2"]) == "d1 … d3 (3)"
    assert span(["d1"]) == "d1"
    assert span([]) == "none"


def test_each_partition_gets_its_own_figures_and_a_partition_without_rows_gets_zero():
    figures = by_partition(FRAME, ["d1", "d2", "d4"],
                           lambda rows: {"rows": rows.height, "share": rows.height / 3})
    assert figures == {"d1": {"rows": 3, "share": 1.0}, "d2": {"rows": 1, "share": 0.3333},
                       "d4": {"rows": 0, "share": 0.0}}
    assert counts_by_partition(FRAME, ["d1", "d3", "d4"]) == {"d1": 3, "d3": 1, "d4": 0}
    assert counts_by_partition(FRAME.clear(), ["d1"]) == {"d1": 0}


def test_null_rates_and_score_summary_describe_the_rows_given():
    assert null_rates(FRAME, ["score", PARTITION]) == {"score": 0.2, PARTITION: 0.0}
    assert null_rates(FRAME.clear(), ["score"]) == {"score": 0.0}
    day = FRAME.filter(pl.col(PARTITION) == "d1")
    summary = score_summary(day, "binary")
    assert summary == pytest.approx({"mean_score": 0.4, "min_score": 0.1, "max_score": 0.9,
                                     "positive_rate": 1 / 3})
    assert "positive_rate" not in score_summary(day, "regression")
    assert score_summary(day.clear(), "binary") == {
        "mean_score": None, "min_score": None, "max_score": None, "positive_rate": None}
