"""Row validation: cast landed rows to the declared types and reject bad rows with a reason.

Every rejected row keeps its source file, row number, the partition it would have landed in
(null when its timestamp is unusable), a short `check` code and a readable `reason`.
"""

from __future__ import annotations

import datetime as dt
import math

import polars as pl

from ct_assets.lib.config import ColumnSpec, DatasetConfig, PartitionsConfig
from ct_assets.lib.files import ROW_NUMBER, SOURCE_FILE

PARTITION = "_partition"
CHECK = "check"
REASON = "reason"
REJECTED_SCHEMA = {
    SOURCE_FILE: pl.String, ROW_NUMBER: pl.Int64, PARTITION: pl.String,
    CHECK: pl.String, REASON: pl.String, "row": pl.String,
}
_TRUE = ("true", "t", "yes", "y", "1")
_FALSE = ("false", "f", "no", "n", "0")
_POLARS_TYPES = {"float": pl.Float64, "int": pl.Int64, "bool": pl.Boolean, "string": pl.String,
                 "category": pl.String, "timestamp": pl.Datetime("us", "UTC")}
# Whole numbers up to 2**53 are exact in a float; past it a float is already rounded.
_EXACT_IN_FLOAT = 2**53
# Integer text, with an optional zero fraction ("12", "-7", "+3", "12.0"): parsed exactly.
_INTEGER_TEXT = r"^([+-]?\d+)(?:\.0*)?$"


def polars_type(logical: str) -> pl.DataType:
    """The polars dtype a declared logical type is stored as."""
    return _POLARS_TYPES[logical]


def _cast(column: str, logical: str, source: pl.DataType) -> pl.Expr:
    """Cast a raw column to its logical type; values that do not fit become null."""
    raw = pl.col(column)
    text = raw.cast(pl.String).str.strip_chars()
    if logical == "timestamp":
        if isinstance(source, pl.Datetime):
            if source.time_zone is None:
                return raw.dt.replace_time_zone("UTC").dt.cast_time_unit("us")
            return raw.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
        if source == pl.Date:
            return raw.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        return _parse_timestamp(text, None)
    if logical == "float":
        return (text if source == pl.String else raw).cast(pl.Float64, strict=False)
    if logical == "int":
        return _integer(raw, text, source)
    if logical == "bool":
        if source == pl.Boolean:
            return raw
        lowered = text.str.to_lowercase()
        return (pl.when(lowered.is_in(_TRUE)).then(True)
                .when(lowered.is_in(_FALSE)).then(False).otherwise(None))
    return raw.cast(pl.String)


def _integer(raw: pl.Expr, text: pl.Expr, source: pl.DataType) -> pl.Expr:
    """An int column as exact Int64; null where the value is not a whole number that fits.

    Never through a float: a float holds 53 bits, so an id like 1234567890123456789 would come
    back with other last digits (and two ids would collide). Integer text and integer columns
    are cast exactly; a float (a Parquet float column, or text such as `1e3`) is accepted only
    when whole and within 2**53, where it is known not to have been rounded.
    """
    if source.is_integer() or source == pl.Boolean:
        return raw.cast(pl.Int64, strict=False)
    if source.is_float():
        return _whole_float(raw)
    exact = text.str.replace(_INTEGER_TEXT, "${1}").cast(pl.Int64, strict=False)
    return pl.coalesce(exact, _whole_float(text.cast(pl.Float64, strict=False)))


def _whole_float(number: pl.Expr) -> pl.Expr:
    whole = number.is_finite() & (number.floor() == number) & (number.abs() <= _EXACT_IN_FLOAT)
    return pl.when(whole).then(number).otherwise(None).cast(pl.Int64, strict=False)


def range_bounds(logical: str, spec: ColumnSpec) -> tuple[float | int | None, float | int | None]:
    """The declared `(min, max)` to compare a column's values with.

    For an int column they are whole numbers (min rounded up, max down), so Int64 values are
    compared as integers: against a float bound they would be compared as floats, inexact
    beyond 2**53.
    """
    if logical != "int":
        return spec.min, spec.max
    low = math.ceil(spec.min) if spec.min is not None and math.isfinite(spec.min) else spec.min
    high = math.floor(spec.max) if spec.max is not None and math.isfinite(spec.max) else spec.max
    return low, high


def _parse_timestamp(text: pl.Expr, fmt: str | None) -> pl.Expr:
    if fmt:
        return text.str.strptime(pl.Datetime("us"), fmt, strict=False).dt.replace_time_zone("UTC")
    # polars infers one format per column from its first parsable value: parse values with and
    # without a UTC offset apart, so a file mixing them does not lose the kind that came second.
    zoned = text.str.contains(r"\d:\d{2}(?::\d{2})?(?:\.\d+)?(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$")
    with_zone = pl.when(zoned).then(text).str.to_datetime(time_unit="us", time_zone="UTC",
                                                          strict=False)
    naive = (pl.when(~zoned).then(text).str.to_datetime(time_unit="us", strict=False)
             .dt.replace_time_zone("UTC"))
    dates = text.str.to_date(strict=False).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    return pl.coalesce(with_zone, naive, dates)


def timestamp_expr(dataset: DatasetConfig, source: pl.DataType) -> pl.Expr:
    """The timestamp column parsed to UTC, honouring `dataset.timestamp_format`.

    Text is parsed (ISO 8601 with or without an offset, or a date); a Parquet datetime is
    taken as UTC when it has no time zone. Null where a value cannot be parsed.
    """
    if source == pl.String and dataset.timestamp_format:
        text = pl.col(dataset.timestamp).str.strip_chars()
        return _parse_timestamp(text, dataset.timestamp_format)
    return _cast(dataset.timestamp, "timestamp", source)


def _problem(condition: pl.Expr, check: str, reason: pl.Expr | str) -> tuple[pl.Expr, pl.Expr]:
    message = pl.lit(reason) if isinstance(reason, str) else reason
    return (pl.when(condition).then(pl.lit(check)),
            pl.when(condition).then(message))


def _show(column: str) -> pl.Expr:
    return pl.col(column).cast(pl.String).str.slice(0, 60)


def validate_rows(
    frame: pl.DataFrame, dataset: DatasetConfig, partitions: PartitionsConfig
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split raw rows into typed good rows and rejected rows with reasons.

    Args:
        frame: rows as read from one landed file, with `_source_file` and `_row_number`.
        dataset: the declared columns, types, ranges, timestamp and target.
        partitions: partition start and granularity (rows before the start are rejected).

    Returns:
        `(good, rejected)`: good rows have the declared columns cast to their types plus
        `_source_file`, `_row_number` and `_partition`; rejected rows follow `REJECTED_SCHEMA`.
    """
    types = dataset.column_types()
    schema = frame.schema
    typed = {name: _cast(name, kind, schema[name]).alias(name) for name, kind in types.items()}
    ts = dataset.timestamp
    typed[ts] = timestamp_expr(dataset, schema[ts]).alias(ts)
    work = frame.with_columns(
        **{f"__typed_{name}": expr for name, expr in typed.items()}
    )
    problems: list[tuple[pl.Expr, pl.Expr]] = []
    if "_field_count" in work.columns:
        fields = pl.col("_field_count")
        problems.append(_problem(fields != len(frame.columns) - 3, "malformed_row",
                                 pl.format("row has {} fields, expected {}", fields,
                                           pl.lit(len(frame.columns) - 3))))
    start = dt.datetime.combine(partitions.start, dt.time(), tzinfo=dt.UTC)
    parsed = pl.col(f"__typed_{ts}")
    problems += [
        _problem(pl.col(ts).is_null(), "null_timestamp", f"timestamp column {ts!r} is null"),
        _problem(pl.col(ts).is_not_null() & parsed.is_null(), "unparsable_timestamp",
                 pl.format(f"unparsable timestamp '{{}}' in column {ts!r}", _show(ts))),
        _problem(parsed < start, "before_start",
                 pl.format(f"timestamp {{}} is before partitions.start {partitions.start}",
                           _show(ts))),
    ]
    target = dataset.target
    for name, spec in dataset.columns.items():
        if name == ts:
            continue
        value = pl.col(f"__typed_{name}")
        what = "target" if name == target else "column"
        problems.append(_problem(pl.col(name).is_not_null() & value.is_null(), "wrong_type",
                                 pl.format(f"{what} {name!r}: '{{}}' is not {types[name]}",
                                           _show(name))))
        # A null target is valid (its label may come later); a declared non-null one is not.
        if not spec.nullable or name == dataset.id:
            problems.append(_problem(pl.col(name).is_null(), f"null_{what}",
                                     f"{what} {name!r} is null"))
        if types[name] == "float" and not spec.allow_non_finite:
            problems.append(_problem(value.is_nan() | value.is_infinite(), "non_finite",
                                     pl.format(f"{what} {name!r}: non-finite value {{}}",
                                               _show(name))))
        low, high = range_bounds(types[name], spec)
        if low is not None:
            problems.append(_problem(value < low, "out_of_range",
                                     pl.format(f"{what} {name!r}: {{}} is below min {spec.min}",
                                               _show(name))))
        if high is not None:
            problems.append(_problem(value > high, "out_of_range",
                                     pl.format(f"{what} {name!r}: {{}} is above max {spec.max}",
                                               _show(name))))
    if dataset.task == "binary":
        label = pl.col(f"__typed_{target}").cast(pl.Float64, strict=False)
        problems.append(_problem(label.is_not_null() & ~label.is_in([0.0, 1.0]), "invalid_target",
                                 pl.format(f"target {target!r}: {{}} is not 0 or 1",
                                           _show(target))))
    checks = [check for check, _ in problems]
    reasons = [reason for _, reason in problems]
    every, key_format = partitions.truncate_every, partitions.key_format
    work = work.with_columns(
        pl.coalesce(checks).alias(CHECK),
        pl.concat_str(reasons, separator="; ", ignore_nulls=True).alias(REASON),
        parsed.dt.truncate(every).dt.strftime(key_format).alias(PARTITION),
    )
    bad = work.filter(pl.col(CHECK).is_not_null())
    original = [c for c in frame.columns if c not in (SOURCE_FILE, ROW_NUMBER, "_field_count")]
    rejected = bad.select(
        SOURCE_FILE, ROW_NUMBER,
        pl.when(pl.col(CHECK).is_in(["null_timestamp", "unparsable_timestamp", "before_start"]))
        .then(None).otherwise(pl.col(PARTITION)).alias(PARTITION),
        CHECK, REASON,
        pl.struct([pl.col(c).cast(pl.String) for c in original]).struct.json_encode().alias("row"),
    )
    good = work.filter(pl.col(CHECK).is_null()).select(
        *[pl.col(f"__typed_{name}").cast(polars_type(kind)).alias(name)
          for name, kind in types.items()],
        SOURCE_FILE, ROW_NUMBER, PARTITION,
    )
    return good, rejected.cast(REJECTED_SCHEMA)  # type: ignore[arg-type]


def reject_duplicate_ids(good: pl.DataFrame, id_column: str | None) -> tuple[pl.DataFrame,
                                                                              pl.DataFrame]:
    """Keep the first row of each id within a partition; reject the others with a reason.

    "First" is by source file then row number, so the outcome does not depend on file order.
    """
    if id_column is None or good.is_empty():
        return good, pl.DataFrame(schema=REJECTED_SCHEMA)
    ordered = good.sort(PARTITION, SOURCE_FILE, ROW_NUMBER)
    first = pl.col(id_column).is_first_distinct().over(PARTITION)
    origin = pl.format("{}:{}", pl.col(SOURCE_FILE), pl.col(ROW_NUMBER))
    ordered = ordered.with_columns(
        first.alias("__first"),
        origin.first().over(PARTITION, id_column).alias("__origin"),
    )
    duplicates = ordered.filter(~pl.col("__first"))
    data_columns = [c for c in good.columns if c not in (SOURCE_FILE, ROW_NUMBER, PARTITION)]
    rejected = duplicates.select(
        SOURCE_FILE, ROW_NUMBER, PARTITION,
        pl.lit("duplicate_id").alias(CHECK),
        pl.format(f"duplicate {id_column} '{{}}' (first seen at {{}})",
                  pl.col(id_column), pl.col("__origin")).alias(REASON),
        pl.struct([pl.col(c).cast(pl.String) for c in data_columns]).struct.json_encode()
        .alias("row"),
    )
    kept = ordered.filter(pl.col("__first")).drop("__first", "__origin")
    return kept, rejected.cast(REJECTED_SCHEMA)  # type: ignore[arg-type]


def raw_schema(dataset: DatasetConfig) -> dict[str, pl.DataType]:
    """The polars schema of validated rows: declared columns plus lineage columns."""
    types = {name: polars_type(kind) for name, kind in dataset.column_types().items()}
    return {**types, SOURCE_FILE: pl.String, ROW_NUMBER: pl.Int64, PARTITION: pl.String}


def validate_timestamps(frame: pl.DataFrame, dataset: DatasetConfig,
                        partitions: PartitionsConfig) -> pl.Series:
    """Partition key of each row from its timestamp alone (null where unusable)."""
    parsed = timestamp_expr(dataset, frame.schema[dataset.timestamp])
    start = dt.datetime.combine(partitions.start, dt.time(), tzinfo=dt.UTC)
    key = parsed.dt.truncate(partitions.truncate_every).dt.strftime(partitions.key_format)
    return frame.select(pl.when(parsed >= start).then(key).alias(PARTITION)).to_series()
