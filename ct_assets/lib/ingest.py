"""Ingestion of a time window: landed files → typed, validated, deduplicated rows.

Pure logic: it reads the landing dir and returns what to write; the Dagster layer writes the
rows to DuckDB and the rejections to the quarantine.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ct_assets.lib.config import Config, ConfigError
from ct_assets.lib.files import BadFile, LandedFile, csv_header, discover, read_landed_file
from ct_assets.lib.validation import (
    PARTITION,
    REJECTED_SCHEMA,
    raw_schema,
    reject_duplicate_ids,
    validate_rows,
    validate_timestamps,
)


@dataclass
class IngestResult:
    """What one window's ingestion found."""

    rows: pl.DataFrame
    rejected_rows: pl.DataFrame
    unplaced_rows: dict[str, pl.DataFrame]
    rejected_files: list[tuple[LandedFile, str]]
    good_files: list[str]
    present_files: list[str] = field(default_factory=list)
    files_read: int = 0
    files_skipped: int = 0
    timings: dict[str, float] = field(default_factory=dict)


class FileCatalog:
    """Remembers the time range of each landed file version, so a window reads only its files.

    Keyed by path, size and modification time; a file whose entry is missing or stale is read.
    Partition keys of one granularity sort in time order, so ranges compare as text.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.entries: dict[str, list[str]] = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            self.entries = {}

    def may_overlap(self, file: LandedFile, first_key: str, last_key: str) -> bool:
        """False only when the file is known to hold no rows in partitions first..last."""
        entry = self.entries.get(file.fingerprint)
        if entry is None:
            return True
        if not entry:  # a readable file with no placeable rows
            return False
        return entry[0] <= last_key and entry[1] >= first_key

    def record(self, file: LandedFile, keys: pl.Series) -> None:
        """Remember the first and last partition key of a file just read."""
        stale = [key for key in self.entries if key.rsplit(":", 2)[0] == file.relpath]
        for key in stale:
            del self.entries[key]
        valid = keys.drop_nulls()
        self.entries[file.fingerprint] = [valid.min(), valid.max()] if len(valid) else []

    def save(self) -> None:
        """Write the catalog atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(self.entries, indent=0), encoding="utf-8")
        os.replace(temporary, self.path)


def ingest_window(
    config: Config, start: dt.datetime, end: dt.datetime, catalog: FileCatalog
) -> IngestResult:
    """Read, type and validate every landed row with `start <= timestamp < end`.

    Bad files are returned whole with their reason and do not stop the other files; bad rows
    are returned with theirs and do not stop the good rows of the same file.
    """
    dataset = config.dataset
    required = data_columns(config)
    ts = dataset.timestamp
    window_keys = partition_keys(config, start, end)
    began = time.perf_counter()
    goods: list[pl.DataFrame] = []
    rejected: list[pl.DataFrame] = []
    result = IngestResult(pl.DataFrame(), pl.DataFrame(), {}, [], [])
    for file, frame in read_window_files(config.landing_dir, catalog, window_keys, required,
                                         dataset.delimiter, result):
        if dataset.target not in frame.columns:  # labels land separately (dataset.labels)
            frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(str(dataset.target)))
        try:
            good, bad = validate_rows(frame, dataset, config.partitions)
        except pl.exceptions.PolarsError as error:  # e.g. a nested column where text is declared
            detail = " ".join(str(error).split())[:200]
            result.rejected_files.append((file, f"columns cannot be cast to the declared types: "
                                                f"{detail}"))
            continue
        result.files_read += 1
        result.good_files.append(file.relpath)
        catalog.record(file, pl.concat([good[PARTITION], bad[PARTITION]]))
        goods.append(good.filter((pl.col(ts) >= start) & (pl.col(ts) < end)))
        placed = bad.filter(pl.col(PARTITION).is_not_null())
        result.unplaced_rows[file.relpath] = bad.filter(pl.col(PARTITION).is_null())
        rejected.append(placed)
    read_done = time.perf_counter()
    rows = pl.concat(goods) if goods else pl.DataFrame(schema=raw_schema(dataset))
    if not rows.is_empty():
        rows, duplicates = reject_duplicate_ids(rows, dataset.id)
        rejected.append(duplicates)
        rows = rows.sort(ts, "_source_file", "_row_number")
    rejected_rows = pl.concat(rejected) if rejected else pl.DataFrame(schema=REJECTED_SCHEMA)
    result.rows = rows
    result.rejected_rows = rejected_rows.filter(pl.col(PARTITION).is_in(window_keys))
    result.timings = {"read_validate_s": read_done - began,
                      "deduplicate_s": time.perf_counter() - read_done}
    return result


def read_window_files(directory: Path, catalog: FileCatalog, window_keys: list[str],
                      required: list[str], delimiter: str, seen: Any
                      ) -> Iterator[tuple[LandedFile, pl.DataFrame]]:
    """Each readable landed file that may hold rows of `window_keys`, read, with its frame.

    Records on `seen` (an `IngestResult` or a label batch) every file present, those the
    catalog knows hold nothing in the window (skipped) and those rejected whole with their
    reason (in-flight, unsupported, unreadable, a required column missing). The caller counts
    the files it validates as read.
    """
    for file in discover(directory):
        seen.present_files.append(file.relpath)
        if file.problem:
            seen.rejected_files.append((file, file.problem))
            continue
        if not catalog.may_overlap(file, window_keys[0], window_keys[-1]):
            seen.files_skipped += 1
            continue
        try:
            yield file, read_landed_file(file, required, delimiter)
        except BadFile as error:
            seen.rejected_files.append((file, str(error)))


def data_columns(config: Config) -> list[str]:
    """Columns every landed data file must have.

    All declared ones, but the target when labels land separately (`dataset.labels`): rows
    usually arrive without their label in production.
    """
    dataset = config.dataset
    optional = {dataset.target} if dataset.labels is not None else set()
    return [name for name in dataset.columns if name not in optional]


def partition_keys(config: Config, start: dt.datetime, end: dt.datetime) -> list[str]:
    """The partition keys covering `[start, end)`."""
    every = config.partitions.truncate_every
    keys = pl.datetime_range(start, end, every, closed="left", eager=True, time_zone="UTC")
    return keys.dt.strftime(config.partitions.key_format).to_list()


def _header(file: LandedFile, delimiter: str) -> list[str] | None:
    """Column names of a landed file, or None when its header cannot be read."""
    try:
        if file.path.suffix.lower() == ".parquet":
            return list(pl.read_parquet_schema(file.path))
        return csv_header(file.path, delimiter)
    except Exception:  # an unreadable file is quarantined at ingestion, not a config error
        return None


def check_columns_in_data(config: Config, sample: int = 5) -> None:
    """Fail when a column named in `dataset` is in none of the first readable landed files.

    A column missing from some files only makes those files bad (they are quarantined); one
    missing from every file is a configuration mistake, reported before any asset runs.

    Raises:
        ConfigError: naming the column and the files looked at.
    """
    if config.dataset.source == "simulator":
        return
    headers: dict[str, list[str]] = {}
    for file in discover(config.landing_dir):
        if file.problem or file.size == 0:
            continue
        header = _header(file, config.dataset.delimiter)
        if header and len(header) > 1:
            headers[file.relpath] = header
        if len(headers) >= sample:
            break
    if not headers:
        return
    seen = set().union(*headers.values())
    missing = [name for name in data_columns(config) if name not in seen]
    if missing:
        where = config.path or "config"
        raise ConfigError(
            f"{where}: dataset.columns: {', '.join(repr(m) for m in missing)} not found in the "
            f"landed data (looked at {', '.join(headers)}; they have {', '.join(sorted(seen))})"
        )


def file_partition_range(file: LandedFile, config: Config) -> tuple[str, str] | None:
    """First and last partition key of a file, reading only its timestamp column."""
    dataset = config.dataset
    try:
        if file.path.suffix.lower() == ".parquet":
            frame = pl.read_parquet(file.path, columns=[dataset.timestamp])
        else:  # by position: polars misreads a header name holding a double quote
            header = csv_header(file.path, dataset.delimiter) or []
            frame = pl.read_csv(file.path, columns=[header.index(dataset.timestamp)],
                                infer_schema=False, separator=dataset.delimiter,
                                truncate_ragged_lines=True)
            frame.columns = [dataset.timestamp]
        frame = frame.with_columns(pl.lit(file.relpath).alias("_source_file"),
                                   pl.lit(0).alias("_row_number"))
        timestamps = validate_timestamps(frame, dataset, config.partitions)
    except Exception:  # unreadable: ingestion quarantines it with the precise reason
        return None
    keys = timestamps.drop_nulls()
    return (keys.min(), keys.max()) if len(keys) else None


def landed_partitions(config: Config, catalog: FileCatalog, *, labels: bool = False
                      ) -> tuple[set[str], set[str]]:
    """Partitions holding landed data, and those whose files changed since they were ingested.

    A file the catalog does not know (new or changed since `raw_events` last read it) makes its
    partitions pending, as do the old partitions of a changed or deleted file. With `labels`,
    the label files (`dataset.labels`) and their arrival partitions.

    Returns:
        `(landed, pending)` sets of partition keys.
    """
    landed: set[str] = set()
    pending: set[str] = set()
    ranges: list[tuple[str, str]] = []
    present: set[str] = set()
    if labels:
        from ct_assets.lib.labels import label_range as partition_range
    else:
        partition_range = file_partition_range
    directory = config.labels_dir if labels else config.landing_dir
    for file in discover(directory) if directory else []:
        if file.problem:
            continue
        present.add(file.fingerprint)
        entry = catalog.entries.get(file.fingerprint)
        if entry is not None:
            if entry:
                ranges.append((entry[0], entry[1]))
            continue
        found = partition_range(file, config)
        if found:
            ranges.append(found)
            pending.update(keys_between(config, *found))
    for fingerprint, entry in catalog.entries.items():
        if fingerprint not in present and entry:
            pending.update(keys_between(config, entry[0], entry[1]))
    for first, last in ranges:
        landed.update(keys_between(config, first, last))
    return landed, pending


def keys_between(config: Config, first: str, last: str) -> list[str]:
    """Every partition key from `first` to `last`, inclusive."""
    fmt = config.partitions.key_format
    start = dt.datetime.strptime(first, fmt).replace(tzinfo=dt.UTC)
    end = dt.datetime.strptime(last, fmt).replace(tzinfo=dt.UTC)
    keys = pl.datetime_range(start, end, config.partitions.truncate_every, eager=True,
                             time_zone="UTC")
    return keys.dt.strftime(fmt).to_list()


def contiguous_ranges(keys: set[str], ordered: list[str]) -> list[tuple[str, str]]:
    """Group `keys` into runs of consecutive partitions of `ordered`."""
    ranges: list[tuple[str, str]] = []
    previous = -2
    for position, key in enumerate(ordered):
        if key not in keys:
            continue
        if position == previous + 1:
            ranges[-1] = (ranges[-1][0], key)
        else:
            ranges.append((key, key))
        previous = position
    return ranges
