"""Data-quality checks on the stored `raw_events` of a window, each with value and threshold."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from ct_assets.lib.config import Config
from ct_assets.lib.validation import range_bounds
from ct_assets.lib.warehouse import Warehouse, quote_identifier

DUCKDB_TYPES = {"float": "DOUBLE", "int": "BIGINT", "bool": "BOOLEAN", "string": "VARCHAR",
                "category": "VARCHAR", "timestamp": "TIMESTAMP WITH TIME ZONE"}
RAW_EVENTS_CHECKS = {
    "schema": "Stored columns and types match the declared dataset columns.",
    "null_rates": "No column's null rate exceeds checks.max_null_rate (the target, whose "
                  "label may come later, is not counted).",
    "ranges": "Every value lies within its declared min/max.",
    "duplicate_ids": "No id appears twice within a partition.",
    "has_rows": "The partition holds at least one row.",
    "quarantine_share": "The share of rejected rows stays below checks.max_quarantine_share.",
}


@dataclass(frozen=True)
class CheckOutcome:
    """One check's verdict with the observed value and the threshold."""

    name: str
    passed: bool
    observed: float | str
    threshold: float | str
    details: dict[str, object] = field(default_factory=dict)
    warn_only: bool = False


def check_raw_events(
    warehouse: Warehouse, config: Config, start: dt.datetime, end: dt.datetime,
    rejected_rows: int,
) -> list[CheckOutcome]:
    """Run every `raw_events` check on the rows stored for `[start, end)`."""
    dataset = config.dataset
    types = dataset.column_types()
    # A row may land before its label (null target): that is not missing data.
    nullable = [name for name in types if name != dataset.target]
    time = quote_identifier(dataset.timestamp)
    where = f"WHERE {time} >= ? AND {time} < ?"
    window = [start, end]
    with warehouse.connect() as connection:
        stored = {row[0]: row[1] for row in connection.execute("DESCRIBE raw_events").fetchall()}
        expected = {name: DUCKDB_TYPES[kind] for name, kind in types.items()}
        mismatched = {name: f"expected {kind}, found {stored.get(name, 'missing')}"
                      for name, kind in expected.items() if stored.get(name) != kind}
        null_sql = ", ".join(f"avg(({quote_identifier(c)} IS NULL)::DOUBLE)" for c in nullable)
        # Bounds are bound parameters; an int column's are whole numbers, so compared exactly.
        bounds = [(name, op, bound) for name, spec in dataset.columns.items()
                  for op, bound in zip(("<", ">"), range_bounds(types[name], spec), strict=True)
                  if bound is not None]
        range_sql = " + ".join(f"count(*) FILTER ({quote_identifier(name)} {op} ?)"
                               for name, op, _ in bounds) or "0"
        row = connection.execute(
            f"SELECT count(*), {null_sql}, {range_sql} FROM raw_events {where}",
            [*(bound for *_, bound in bounds), *window],
        ).fetchone()
        duplicates = 0
        if dataset.id:
            found = connection.execute(
                f"SELECT count(*) - count(DISTINCT (_partition, {quote_identifier(dataset.id)})) "
                f"FROM raw_events {where}", window,
            ).fetchone()
            duplicates = int(found[0]) if found else 0
    assert row is not None
    rows = int(row[0])
    null_rates = dict(zip(nullable, (float(v or 0.0) for v in row[1:-1]), strict=True))
    worst = max(null_rates, key=lambda c: null_rates[c])
    out_of_range = int(row[-1])
    share = rejected_rows / (rows + rejected_rows) if rows + rejected_rows else 0.0
    checks = config.checks
    return [
        CheckOutcome("schema", not mismatched, len(mismatched), 0,
                     {"mismatched_columns": mismatched, "expected": expected}),
        CheckOutcome("null_rates", null_rates[worst] <= checks.max_null_rate,
                     null_rates[worst], checks.max_null_rate,
                     {"worst_column": worst, "null_rates": null_rates}, warn_only=True),
        CheckOutcome("ranges", out_of_range == 0, out_of_range, 0),
        CheckOutcome("duplicate_ids", duplicates == 0, duplicates, 0,
                     {"id_column": dataset.id or "(none)"}),
        CheckOutcome("has_rows", rows > 0, rows, 1),
        CheckOutcome("quarantine_share", share < checks.max_quarantine_share or share == 0,
                     share, checks.max_quarantine_share, {"rejected_rows": rejected_rows},
                     warn_only=True),
    ]

