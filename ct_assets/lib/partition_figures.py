"""Each partition's own figures, when one run writes a range of partitions at once.

A run over a range writes every partition of it in one pass; what it reports must still be
each partition's own (its rows, its quarantined rows, its scores), not the range's total.
Floats are kept to four significant digits: more is noise in a UI and in a log.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import polars as pl

from ct_assets.lib.validation import PARTITION

SIGNIFICANT_DIGITS = 4


def significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float | None:
    """`value` rounded to `digits` significant digits; None for NaN or an infinity."""
    number = float(value)
    if not math.isfinite(number):
        return None
    return float(f"{number:.{digits}g}")


def rounded(values: Any, digits: int = SIGNIFICANT_DIGITS) -> Any:
    """`values` with every float (in nested dicts and lists too) kept to `digits` digits.

    Anything else (e.g. a Dagster metadata value) is returned as it is.
    """
    if isinstance(values, bool | int | str) or values is None:
        return values
    if isinstance(values, float):
        return significant(values, digits)
    if isinstance(values, dict):
        return {key: rounded(value, digits) for key, value in values.items()}
    if type(values) in (list, tuple):  # not a named tuple, which is a value of its own
        return [rounded(value, digits) for value in values]
    return values


def span(keys: list[str]) -> str:
    """The partitions of a run in one line: `first … last (n)`, or the key itself."""
    if not keys:
        return "none"
    ordered = sorted(keys)
    if len(ordered) == 1:
        return ordered[0]
    return f"{ordered[0]} … {ordered[-1]} ({len(ordered)})"


def split_by_partition(frame: pl.DataFrame, keys: list[str],
                       column: str = PARTITION) -> dict[str, pl.DataFrame]:
    """The rows of each of `keys` (an empty frame for a key without rows); others dropped."""
    groups = ({group[0]: part for group, part in
               frame.partition_by(column, as_dict=True, maintain_order=True).items()}
              if frame.height else {})
    return {key: groups.get(key, frame.clear()) for key in keys}


def by_partition(frame: pl.DataFrame, keys: list[str],
                 figures: Callable[[pl.DataFrame], dict[str, Any]],
                 column: str = PARTITION) -> dict[str, dict[str, Any]]:
    """`figures` of each partition's rows, floats rounded, for every key (empty ones too).

    Args:
        frame: rows of several partitions, named in `column`.
        keys: the partitions to report, in order; a key without rows gets `figures` of an
            empty frame.
        figures: partition rows → their figures (plain values).
        column: the partition column.
    """
    return {key: rounded(figures(rows))
            for key, rows in split_by_partition(frame, keys, column).items()}


def counts_by_partition(frame: pl.DataFrame, keys: list[str],
                        column: str = PARTITION) -> dict[str, int]:
    """Rows of each of `keys` in `frame` (0 for a key without rows)."""
    counted = dict(frame.group_by(column).len().iter_rows()) if frame.height else {}
    return {key: int(counted.get(key, 0)) for key in keys}


def null_rates(frame: pl.DataFrame, columns: list[str]) -> dict[str, float]:
    """The share of nulls of each of `columns` (0.0 for an empty frame)."""
    if not frame.height:
        return dict.fromkeys(columns, 0.0)
    shares = frame.select(pl.col(name).is_null().mean().alias(name) for name in columns)
    return {name: float(shares[name][0]) for name in columns}


def score_summary(frame: pl.DataFrame, task: str) -> dict[str, float | None]:
    """Mean, min and max of the `score` column; the positive rate of a binary `prediction`."""
    empty = not frame.height
    summary: dict[str, float | None] = {
        "mean_score": None if empty else float(frame["score"].mean()),  # type: ignore[arg-type]
        "min_score": None if empty else float(frame["score"].min()),  # type: ignore[arg-type]
        "max_score": None if empty else float(frame["score"].max()),  # type: ignore[arg-type]
    }
    if task == "binary":
        summary["positive_rate"] = (None if empty
                                    else float(frame["prediction"].cast(pl.Float64).mean()))
    return summary
