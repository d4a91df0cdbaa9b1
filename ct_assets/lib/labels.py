"""Labels that land after their rows: read label files, validate them, join them to their rows.

A label file (CSV or Parquet, under `dataset.labels.landing_dir`) holds an id, the label and,
optionally, when the label became known (`known_at`; without it, the file's modification time).
Labels are partitioned by when they became known (the arrival partition), so a label landing
today is part of today's `labels` partition whatever day its row belongs to; the row's own
partition is kept as `labelled_partition` for the joins.

Rejected with a reason, like rows (the good labels of the same file still land): a null id or
label, a label of the wrong type or outside the task's classes, an unparsable `known_at`, an id
that matches no ingested row, a label known before its row happened, a duplicate of a label
already given (same value), and conflicting labels for one id (every one of them: which is
right cannot be told).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import polars as pl

from ct_assets.lib.config import Config
from ct_assets.lib.files import (
    ROW_NUMBER,
    SOURCE_FILE,
    LandedFile,
    read_landed_file,
)
from ct_assets.lib.ingest import FileCatalog, partition_keys, read_window_files
from ct_assets.lib.validation import (
    CHECK,
    PARTITION,
    REASON,
    REJECTED_SCHEMA,
    _cast,
    _parse_timestamp,
    polars_type,
)

KNOWN_AT = "known_at"
LABELLED_PARTITION = "labelled_partition"
EVENT_TIME = "event_time"
LABEL_CHECKS = {
    "label_values": "No label is null, of the wrong type or outside the task's classes, and "
                    "every known_at parses.",
    "unknown_ids": "Every label's id matches an ingested row, known no earlier than the row.",
    "duplicate_labels": "No id is labelled twice (duplicates) or with different labels "
                        "(conflicts).",
}
CHECK_OF = {"null_id": "label_values", "null_label": "label_values",
            "wrong_type": "label_values", "invalid_label": "label_values",
            "unparsable_known_at": "label_values", "unknown_id": "unknown_ids",
            "known_before_event": "unknown_ids", "duplicate_label": "duplicate_labels",
            "conflicting_label": "duplicate_labels"}


@dataclass
class LabelBatch:
    """What one window's label ingestion read: candidate labels and rejections."""

    labels: pl.DataFrame
    rejected_rows: pl.DataFrame
    rejected_files: list[tuple[LandedFile, str]] = field(default_factory=list)
    good_files: list[str] = field(default_factory=list)
    present_files: list[str] = field(default_factory=list)
    listed: list[LandedFile] = field(default_factory=list)
    files_read: int = 0
    files_skipped: int = 0


def label_schema(config: Config) -> dict[str, pl.DataType]:
    """The stored columns of `labels`: id, label (named as the target), times and lineage."""
    dataset = config.dataset
    types = dataset.column_types()
    return {str(dataset.id): polars_type(types[str(dataset.id)]),
            str(dataset.target): polars_type(types[str(dataset.target)]),
            KNOWN_AT: pl.Datetime("us", "UTC"), PARTITION: pl.String,
            LABELLED_PARTITION: pl.String, EVENT_TIME: pl.Datetime("us", "UTC"),
            SOURCE_FILE: pl.String, ROW_NUMBER: pl.Int64}


def read_labels(config: Config, start: dt.datetime, end: dt.datetime, catalog: FileCatalog
                ) -> LabelBatch:
    """Read and type every label known in `[start, end)`, with the rejections of value checks.

    Bad files are rejected whole with their reason and do not stop the other files.
    """
    settings = config.dataset.labels
    assert settings is not None and settings.id and settings.label
    keys = partition_keys(config, start, end)
    batch = LabelBatch(pl.DataFrame(), pl.DataFrame(schema=REJECTED_SCHEMA))
    goods, rejected = [], []
    for file, frame in read_window_files(settings.landing_dir, catalog, keys,
                                         [settings.id, settings.label], ",", batch):
        good, bad = _type_labels(frame, file, config)
        batch.files_read += 1
        batch.good_files.append(file.relpath)
        catalog.record(file, pl.concat([good[PARTITION], bad[PARTITION]]))
        goods.append(good.filter(pl.col(KNOWN_AT).is_between(start, end, closed="left")))
        rejected.append(bad.filter(pl.col(PARTITION).is_in(keys) | pl.col(PARTITION).is_null()))
    catalog.record_ingested(config, keys, batch.listed, label_range)
    schema = {name: kind for name, kind in label_schema(config).items()
              if name not in (LABELLED_PARTITION, EVENT_TIME)}
    batch.labels = pl.concat(goods) if goods else pl.DataFrame(schema=schema)
    batch.rejected_rows = pl.concat([batch.rejected_rows, *rejected])
    return batch


def label_range(file: LandedFile, config: Config) -> tuple[str, str] | None:
    """First and last arrival partition of a label file (None when it cannot be read)."""
    settings = config.dataset.labels
    assert settings is not None and settings.id and settings.label
    try:
        good, bad = _type_labels(read_landed_file(file, [settings.id, settings.label]), file,
                                 config)
    except Exception:  # unreadable: label ingestion quarantines it with the precise reason
        return None
    keys = pl.concat([good[PARTITION], bad[PARTITION]]).drop_nulls()
    return (keys.min(), keys.max()) if len(keys) else None


def _type_labels(frame: pl.DataFrame, file: LandedFile, config: Config
                 ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Cast one file's labels; reject null ids and labels, wrong types and bad `known_at`."""
    dataset, settings = config.dataset, config.dataset.labels
    assert settings is not None and settings.id and settings.label
    types = dataset.column_types()
    id_type, label_type = types[str(dataset.id)], types[str(dataset.target)]
    schema = frame.schema
    if settings.known_at and settings.known_at in frame.columns:
        source = schema[settings.known_at]
        known = (_parse_timestamp(pl.col(settings.known_at).cast(pl.String).str.strip_chars(),
                                  None) if source == pl.String
                 else _cast(settings.known_at, "timestamp", source))
        raw_known = pl.col(settings.known_at)
    else:  # no `known_at` column: the label is known from when its file landed
        landed = dt.datetime.fromtimestamp(file.mtime_ns / 1e9, dt.UTC)
        known = pl.lit(landed).cast(pl.Datetime("us", "UTC"))
        raw_known = pl.lit(landed.isoformat())
    typed = frame.with_columns(
        _cast(settings.id, id_type, schema[settings.id]).alias("__id"),
        _cast(settings.label, label_type, schema[settings.label]).alias("__label"),
        known.alias("__known"),
    )
    label = pl.col("__label")
    shown = pl.col(settings.label).cast(pl.String).str.slice(0, 60)
    problems = [
        (pl.col(settings.id).is_null(), "null_id", pl.lit(f"id {settings.id!r} is null")),
        (pl.col(settings.label).is_null(), "null_label",
         pl.lit(f"label {settings.label!r} is null")),
        (pl.col(settings.label).is_not_null() & label.is_null(), "wrong_type",
         pl.format(f"label {settings.label!r}: '{{}}' is not {label_type}", shown)),
        (raw_known.is_not_null() & pl.col("__known").is_null(), "unparsable_known_at",
         pl.format(f"unparsable known_at '{{}}' in column {settings.known_at!r}",
                   raw_known.cast(pl.String).str.slice(0, 60))),
        (raw_known.is_null(), "unparsable_known_at",
         pl.lit(f"known_at column {settings.known_at!r} is null")),
    ]
    if dataset.task == "binary":
        number = label.cast(pl.Float64, strict=False)
        problems.append((number.is_not_null() & ~number.is_in([0.0, 1.0]), "invalid_label",
                         pl.format(f"label {settings.label!r}: {{}} is not 0 or 1", shown)))
    every, fmt = config.partitions.truncate_every, config.partitions.key_format
    typed = typed.with_columns(
        pl.coalesce([pl.when(c).then(pl.lit(name)) for c, name, _ in problems]).alias(CHECK),
        pl.concat_str([pl.when(c).then(r) for c, _, r in problems], separator="; ",
                      ignore_nulls=True).alias(REASON),
        pl.col("__known").dt.truncate(every).dt.strftime(fmt).alias(PARTITION),
    )
    bad = typed.filter(pl.col(CHECK).is_not_null())
    original = [c for c in frame.columns if c not in (SOURCE_FILE, ROW_NUMBER)]
    rejected = bad.select(
        SOURCE_FILE, ROW_NUMBER, PARTITION, CHECK, REASON,
        pl.struct([pl.col(c).cast(pl.String) for c in original]).struct.json_encode()
        .alias("row")).cast(REJECTED_SCHEMA)  # type: ignore[arg-type]
    good = typed.filter(pl.col(CHECK).is_null()).select(
        pl.col("__id").cast(polars_type(id_type)).alias(str(dataset.id)),
        pl.col("__label").cast(polars_type(label_type)).alias(str(dataset.target)),
        pl.col("__known").alias(KNOWN_AT), PARTITION, SOURCE_FILE, ROW_NUMBER)
    return good, rejected


def _rejected(frame: pl.DataFrame, check: str, reason: pl.Expr) -> pl.DataFrame:
    data = [c for c in frame.columns if c not in (SOURCE_FILE, ROW_NUMBER, PARTITION)]
    return frame.select(
        SOURCE_FILE, ROW_NUMBER, PARTITION, pl.lit(check).alias(CHECK), reason.alias(REASON),
        pl.struct([pl.col(c).cast(pl.String) for c in data]).struct.json_encode().alias("row"),
    ).cast(REJECTED_SCHEMA)  # type: ignore[arg-type]


def match_labels(labels: pl.DataFrame, rows: pl.DataFrame, earlier: pl.DataFrame,
                 config: Config) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Join labels to their rows; reject unknown ids, early, duplicate and conflicting labels.

    Args:
        labels: typed labels of the window (`read_labels`).
        rows: every ingested row a label may refer to: id, `_partition`, timestamp.
        earlier: labels stored for other arrival partitions (id, label, source, row number).
        config: the project configuration.

    Returns:
        `(accepted, rejected)`: accepted labels with `labelled_partition` and `event_time`.
    """
    dataset = config.dataset
    key, target, ts = str(dataset.id), str(dataset.target), dataset.timestamp
    origin = pl.format("{}:{}", pl.col(SOURCE_FILE), pl.col(ROW_NUMBER))
    events = rows.select(pl.col(key), pl.col(PARTITION).alias(LABELLED_PARTITION),
                         pl.col(ts).alias(EVENT_TIME)).unique(key, keep="first")
    joined = labels.join(events, on=key, how="left")
    rejected = [
        _rejected(joined.filter(pl.col(LABELLED_PARTITION).is_null()), "unknown_id",
                  pl.format(f"id {key!r} '{{}}' matches no ingested row", pl.col(key))),
        _rejected(joined.filter(pl.col(KNOWN_AT) < pl.col(EVENT_TIME)), "known_before_event",
                  pl.format("label known at {} before its row happened at {}",
                            pl.col(KNOWN_AT), pl.col(EVENT_TIME))),
    ]
    joined = joined.filter(pl.col(LABELLED_PARTITION).is_not_null()
                           & (pl.col(KNOWN_AT) >= pl.col(EVENT_TIME)))
    # Conflicts: different labels for one id, in this window or against one stored before.
    before = earlier.select(key, pl.col(target).alias("__before"),
                            origin.alias("__before_origin")).unique(key, keep="first")
    joined = (joined.sort(KNOWN_AT, SOURCE_FILE, ROW_NUMBER)
              .with_columns(pl.col(target).n_unique().over(key).alias("__values"),
                            origin.first().over(key).alias("__first_origin"),
                            pl.col(key).is_first_distinct().alias("__first"))
              .join(before, on=key, how="left"))
    conflict = (pl.col("__values") > 1) | (pl.col("__before").is_not_null()
                                           & (pl.col("__before") != pl.col(target)))
    rejected.append(_rejected(
        joined.filter(conflict), "conflicting_label",
        pl.when(pl.col("__values") > 1)
        .then(pl.format("conflicting labels for id '{}' (also labelled at {})",
                        pl.col(key), pl.col("__first_origin")))
        .otherwise(pl.format("label {} for id '{}' conflicts with {} given at {}",
                             pl.col(target), pl.col(key), pl.col("__before"),
                             pl.col("__before_origin")))))
    joined = joined.filter(~conflict)
    duplicate = ~pl.col("__first") | pl.col("__before").is_not_null()
    rejected.append(_rejected(
        joined.filter(duplicate), "duplicate_label",
        pl.format("duplicate label for id '{}' (first given at {})", pl.col(key),
                  pl.coalesce(pl.col("__before_origin"), pl.col("__first_origin")))))
    accepted = joined.filter(~duplicate).select(list(label_schema(config)))
    return accepted, pl.concat(rejected)


def known_labels(labels: pl.DataFrame, config: Config, delay: int) -> pl.DataFrame:
    """Labels of each labelled partition p that were known by the end of partition p + delay.

    `labels` needs `labelled_partition` and `_partition` (the arrival partition); partition
    keys of one granularity sort in time order.
    """
    from ct_assets.lib.features import offset_partitions

    fmt = config.partitions.key_format
    if labels.is_empty():
        return labels
    horizon = {key: offset_partitions(config, dt.datetime.strptime(key, fmt)
                                      .replace(tzinfo=dt.UTC), delay).strftime(fmt)
               for key in labels[LABELLED_PARTITION].unique().to_list()}
    limit = pl.col(LABELLED_PARTITION).replace_strict(horizon, return_dtype=pl.String)
    return labels.filter(pl.col(PARTITION) <= limit)


def count_by_check(rejected: pl.DataFrame) -> dict[str, int]:
    """Rejected labels per check of `LABEL_CHECKS`."""
    counts = dict.fromkeys(LABEL_CHECKS, 0)
    for check, count in rejected.group_by(CHECK).len().iter_rows():
        counts[CHECK_OF.get(check, "label_values")] += count
    return counts


def attach_labels(frame: pl.DataFrame, labels: pl.DataFrame | None, config: Config
                  ) -> pl.DataFrame:
    """`frame` with its target filled from `labels` (by id) where the row itself has none.

    Where the target sits in the data file (its own label), it is kept; a frame without the
    target column (rows `ct serve` answered) gets it from the labels alone.
    """
    dataset = config.dataset
    key, target = str(dataset.id), str(dataset.target)
    if target not in frame.columns:
        frame = frame.with_columns(pl.lit(None, dtype=labels.schema[target] if labels is not None
                                          and target in labels.columns else pl.String)
                                   .alias(target))
    if labels is None or labels.is_empty() or dataset.id is None:
        return frame
    given = labels.select(key, pl.col(target).alias("__label")).unique(key, keep="first")
    return (frame.join(given, on=key, how="left", maintain_order="left")
            .with_columns(pl.coalesce(pl.col(target), pl.col("__label")).alias(target))
            .drop("__label"))
