"""Ingestion of a time window: landed files → typed, validated, deduplicated rows.

Pure logic: it reads the landing dir and returns what to write; the Dagster layer writes the
rows to DuckDB and the rejections to the quarantine.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ct_assets.lib.config import Config, ConfigError
from ct_assets.lib.files import (
    ROW_NUMBER,
    SOURCE_FILE,
    BadFile,
    LandedFile,
    csv_header,
    discover,
    read_landed_file,
    sha256_file,
)
from ct_assets.lib.validation import (
    PARTITION,
    REJECTED_SCHEMA,
    raw_schema,
    reject_duplicate_ids,
    validate_rows,
    validate_timestamps,
)

# A range is ingested in chunks of whole partitions whose landed files hold about this many
# bytes, so a run's memory is bounded by the chunk, not by the range (benchmarks/scale.py: 10M
# rows read at once peaked at 7.1 GiB). A Parquet byte counts PARQUET_WEIGHT times (compressed:
# it holds several times the rows of a CSV byte).
CHUNK_BYTES = 64 * 1024 * 1024
PARQUET_WEIGHT = 3

# Reads the first and last partition key of a landed file (data or label file), or None.
RangeReader = Callable[[LandedFile, Config], "tuple[str, str] | None"]


@dataclass
class IngestResult:
    """What one window's ingestion found."""

    rows: pl.DataFrame
    rejected_rows: pl.DataFrame
    unplaced_rows: dict[str, pl.DataFrame]
    rejected_files: list[tuple[LandedFile, str]]
    good_files: list[str]
    present_files: list[str] = field(default_factory=list)
    listed: list[LandedFile] = field(default_factory=list)
    files_read: int = 0
    files_skipped: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    # relpath → columns of that file the schema does not have (left out; its rows still land)
    unknown_columns: dict[str, list[str]] = field(default_factory=dict)


class FileCatalog:
    """What ingestion knows of landed files, and the one record of what each partition holds.

    - `entries`: the time range of each landed file version (fingerprint: path, size, mtime →
      `[first, last]` partition key, `[]` when it has no placeable rows), so a window reads
      only its files; a file whose entry is missing or stale is read.
    - `contents`: the sha256 of each file version ingestion has looked at.
    - `ingested`: partition key → {relpath: sha256} of the files whose rows the last ingestion
      of that partition took in (files rejected whole included). `ct run`, `ct demo` and the
      landing and label sensors compare the landing dir against this record
      (`landed_contents`, `pending_partitions`), so whichever ingested a file, none of them
      ingests it again.

    Partition keys of one granularity sort in time order, so ranges compare as text.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, list[str]] = {}
        self.contents: dict[str, str] = {}
        self.ingested: dict[str, dict[str, str]] = {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return
        if isinstance(data, dict) and isinstance(data.get("files"), dict):
            self.entries = data["files"]
            self.contents = data.get("sha256") or {}
            self.ingested = data.get("ingested") or {}
        elif isinstance(data, dict):  # written before the record: file ranges only
            self.entries = data

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

    def content_id(self, file: LandedFile) -> str | None:
        """The sha256 of a file version, hashed once; None when it changed since it was listed."""
        known = self.contents.get(file.fingerprint)
        if known is not None:
            return known
        try:
            digest = sha256_file(file.path)
            stat = file.path.stat()
        except OSError:  # removed meanwhile
            return None
        if (stat.st_size, stat.st_mtime_ns) != (file.size, file.mtime_ns):
            return None  # rewritten while hashed: its content is not the one listed
        for key in [key for key in self.contents if key.rsplit(":", 2)[0] == file.relpath]:
            del self.contents[key]
        self.contents[file.fingerprint] = digest
        return digest

    def range_of(self, file: LandedFile, config: Config, partition_range: RangeReader
                 ) -> tuple[str, str] | None:
        """The partitions a file covers: from its entry when it was read, else read now."""
        entry = self.entries.get(file.fingerprint)
        if entry is not None:
            return (entry[0], entry[1]) if entry else None
        return partition_range(file, config)

    def record_ingested(self, config: Config, window_keys: list[str], files: list[LandedFile],
                        partition_range: RangeReader) -> None:
        """Record the files (by content) that an ingestion of `window_keys` took in.

        `files` are every file the ingestion listed; each partition of the window is recorded
        with those covering it (`range_of`). A file rewritten since it was listed is left out,
        so its partitions stay pending and are ingested again.
        """
        window = set(window_keys)
        covering: dict[str, dict[str, str]] = {key: {} for key in window_keys}
        for file in files:
            if file.problem:
                continue
            found = self.range_of(file, config, partition_range)
            keys = window.intersection(keys_between(config, *found)) if found else set()
            digest = self.content_id(file) if keys else None
            for key in keys if digest else ():
                covering[key][file.relpath] = digest
        for key, contents in covering.items():
            if contents:
                self.ingested[key] = contents
            else:
                self.ingested.pop(key, None)

    def save(self) -> None:
        """Write the catalog atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        data = {"files": self.entries, "sha256": self.contents, "ingested": self.ingested}
        temporary.write_text(json.dumps(data, indent=0), encoding="utf-8")
        os.replace(temporary, self.path)


def ingest_window(
    config: Config, start: dt.datetime, end: dt.datetime, catalog: FileCatalog
) -> IngestResult:
    """Read, type and validate every landed row with `start <= timestamp < end`.

    Bad files are returned whole with their reason and do not stop the other files; bad rows
    are returned with theirs and do not stop the good rows of the same file. A file's columns
    that the schema does not have are left out and reported (`IngestResult.unknown_columns`).

    Raises:
        ConfigError: the schema is still pending (see `ct_assets.lib.schema.ensure_schema`).
    """
    dataset = config.dataset
    if dataset.schema_pending:
        raise ConfigError("dataset.columns is neither declared nor pinned yet: infer and pin "
                          "them first (ct_assets.lib.schema.ensure_schema)")
    required = data_columns(config)
    ts = dataset.timestamp
    window_keys = partition_keys(config, start, end)
    began = time.perf_counter()
    goods: list[pl.DataFrame] = []
    rejected: list[pl.DataFrame] = []
    result = IngestResult(pl.DataFrame(), pl.DataFrame(), {}, [], [])
    for file, frame in read_window_files(config.landing_dir, catalog, window_keys, required,
                                         dataset.delimiter, result):
        unknown = unknown_columns(frame.columns, config)
        if unknown:
            result.unknown_columns[file.relpath] = unknown
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
    catalog.record_ingested(config, window_keys, result.listed, file_partition_range)
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


def plan_chunks(config: Config, catalog: FileCatalog, keys: list[str],
                max_bytes: int | None = None) -> list[list[str]]:
    """Split the consecutive partitions `keys` into chunks, each reading about `max_bytes`.

    A window whose landed files fit the budget is one chunk, decided from the listing alone.
    Otherwise each file's partitions come from the catalog (or its timestamp column), and a
    chunk grows while the files overlapping it fit the budget, or while the next partition
    brings no file the chunk does not already read: a file larger than the budget is read
    once, not once per partition. A file spanning two chunks is read by both. Files that
    cannot be read do not shape the chunks (ingestion quarantines them).
    """
    if not keys:
        return []
    budget = CHUNK_BYTES if max_bytes is None else max_bytes
    files = [file for file in discover(config.landing_dir)
             if not file.problem and catalog.may_overlap(file, keys[0], keys[-1])]
    if sum(_weight(file) for file in files) <= budget:
        return [keys]
    covering: dict[str, dict[str, int]] = {key: {} for key in keys}
    for file in files:
        found = catalog.range_of(file, config, file_partition_range)
        for key in keys if found else ():
            if found[0] <= key <= found[1]:
                covering[key][file.relpath] = _weight(file)
    chunks: list[list[str]] = [[]]
    held: dict[str, int] = {}  # the files the current chunk reads
    for key in keys:
        new = {path: size for path, size in covering[key].items() if path not in held}
        if chunks[-1] and new and sum(held.values()) + sum(new.values()) > budget:
            chunks.append([])
            held, new = {}, covering[key]
        chunks[-1].append(key)
        held.update(new)
    return chunks


def _weight(file: LandedFile) -> int:
    """A file's size in CSV-equivalent bytes (see `PARQUET_WEIGHT`)."""
    parquet = file.path.suffix.lower() == ".parquet"
    return file.size * (PARQUET_WEIGHT if parquet else 1)


def merge_results(results: list[IngestResult]) -> IngestResult:
    """One `IngestResult` for a range ingested in chunks, without the rows (they were written).

    A file read by several chunks counts once; the last listing of the landing dir stands.
    """
    merged = IngestResult(pl.DataFrame(), pl.DataFrame(schema=REJECTED_SCHEMA), {}, [], [])
    rejected: dict[str, tuple[LandedFile, str]] = {}
    for result in results:
        merged.unplaced_rows.update(result.unplaced_rows)
        merged.unknown_columns.update(result.unknown_columns)
        merged.good_files.extend(path for path in result.good_files
                                 if path not in merged.good_files)
        rejected.update({file.relpath: (file, reason) for file, reason in result.rejected_files})
        for name, seconds in result.timings.items():
            merged.timings[name] = merged.timings.get(name, 0.0) + seconds
    if results:
        merged.present_files, merged.listed = results[-1].present_files, results[-1].listed
    frames = [result.rejected_rows for result in results if result.rejected_rows.height]
    if frames:
        merged.rejected_rows = pl.concat(frames)
    merged.rejected_files = list(rejected.values())
    merged.files_read = len(merged.good_files)
    merged.files_skipped = len(set(merged.present_files) - set(merged.good_files) - set(rejected))
    return merged


def read_window_files(directory: Path, catalog: FileCatalog, window_keys: list[str],
                      required: list[str], delimiter: str, seen: Any
                      ) -> Iterator[tuple[LandedFile, pl.DataFrame]]:
    """Each readable landed file that may hold rows of `window_keys`, read, with its frame.

    Records on `seen` (an `IngestResult` or a label batch) every file present (`listed`: as
    listed, for `FileCatalog.record_ingested`), those the
    catalog knows hold nothing in the window (skipped) and those rejected whole with their
    reason (in-flight, unsupported, unreadable, a required column missing). The caller counts
    the files it validates as read.
    """
    for file in discover(directory):
        seen.present_files.append(file.relpath)
        seen.listed.append(file)
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


def unknown_columns(columns: list[str], config: Config) -> list[str]:
    """The columns of a landed file that the schema (declared or pinned) does not have."""
    known = {*config.dataset.columns, SOURCE_FILE, ROW_NUMBER, "_field_count"}
    return [name for name in columns if name not in known]


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

    Compares the landing dir with the catalog's record of what each partition's last
    ingestion took in (`FileCatalog.ingested`): new and changed files make their partitions
    pending, as do the old partitions of a changed or deleted file. With `labels`, the label
    files (`dataset.labels`) and their arrival partitions.

    Returns:
        `(landed, pending)` sets of partition keys.
    """
    from ct_assets.lib.landing import landed_contents, pending_partitions  # built on this module

    landed = landed_contents(config, catalog, labels=labels)
    return set(landed.partitions), pending_partitions(landed, catalog.ingested)


def keys_between(config: Config, first: str, last: str) -> list[str]:
    """Every partition key from `first` to `last`, inclusive."""
    return list(_keys_between(config.partitions.key_format, config.partitions.truncate_every,
                              first, last))


@functools.lru_cache(maxsize=4096)
def _keys_between(fmt: str, every: str, first: str, last: str) -> tuple[str, ...]:
    # Called for every landed file at every scan (each `ct run`, each sensor tick), where most
    # files hold one partition: polars' datetime_range costs 3-4 ms a call (126 calls, 0.5 s of
    # a one-day `ct run`), so a single key skips it, and a range is computed once per process.
    start = dt.datetime.strptime(first, fmt).replace(tzinfo=dt.UTC)
    end = dt.datetime.strptime(last, fmt).replace(tzinfo=dt.UTC)
    if start == end and start.strftime(fmt) == first:
        return (first,)
    keys = pl.datetime_range(start, end, every, eager=True, time_zone="UTC")
    return tuple(keys.dt.strftime(fmt).to_list())


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
