"""Your own data without declaring it: the schema inferred from the landed files, then pinned.

When `dataset.columns` is left out for `source: files`, the columns and their types are inferred
from what has landed and written once to `<storage.dir>/schema.json` (`SCHEMA_FILE`). From then
on that file is the contract: loading the config reads it as if it were written in `ct.yaml`,
later files are validated against it (a file missing one of its columns is quarantined naming
it; a column it does not have is reported and left out, the file's rows still land), and it is
never inferred again unless it is deleted. `ct schema` prints it as the `columns:` block to paste
into `ct.yaml`, where declared columns win.

When it is inferred: never when the config or the code location loads (they read the small
pinned file, never landed data, so definitions load before anything has landed and one bad file
cannot stop them). The first step that needs the columns infers and pins them: `ct run`,
`ct check`, `ct schema` (and `ct backtest`, `ct serve`, `ct rollback`, `ct package`) before they
start (`ensure_schema`), and `raw_events` in a run whose definitions were loaded before the
schema was pinned (`bind_schema`). Two processes pinning at once agree: the first file written
wins, and the other reads it.

The rules:
- every readable landed file that has the timestamp column (and the target, unless labels land
  apart) is read with the ingestion reader and looked at, up to `SAMPLE_ROWS_PER_FILE` rows
  spread over each: one file never decides alone, and each file's values count;
- the timestamp column is `timestamp`, not nullable; it is parsed as ingestion parses it (text
  in CSV included, with `dataset.timestamp_format` when set) and must parse somewhere;
- only columns in every one of those files are pinned; the others are named in the notes;
- a column's type is the narrowest that holds its values in every file: `int` (integer text or
  integer Parquet columns) stays `int` unless a fraction or a float column appears in some file,
  then `float`; `bool` for true/false text or Boolean columns; `timestamp` for Parquet
  datetimes; text (and any mix of the above) is a `category` when it has at most
  `MAX_CATEGORIES` distinct values and at most `MAX_CATEGORY_SHARE` of its sampled values, else
  a `string` (ids, free text: carried, never features); `dataset.id` is never a category;
- every column but the timestamp is nullable, and no min/max is set: a sample cannot tell the
  range that later files keep (declare them in `ct.yaml` to have them checked);
- unless `ct.yaml` sets `dataset.task`, it is inferred from the target: `binary` when its values
  are 0/1 (or true/false), `multiclass` when it takes at most `MAX_CATEGORIES` other values
  (text with two values too: a binary target is 0/1), `regression` otherwise; it is pinned.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import yaml

from ct_assets.lib.config import (
    PROVISIONAL_TARGET_TYPE,
    SCHEMA_FILE,
    ColumnSpec,
    Config,
    ConfigError,
    read_pinned_schema,
)
from ct_assets.lib.files import ROW_NUMBER, SOURCE_FILE, BadFile, discover, read_landed_file
from ct_assets.lib.validation import timestamp_expr

SAMPLE_ROWS_PER_FILE = 50_000
MAX_CATEGORIES = 50
MAX_CATEGORY_SHARE = 0.05
SCHEMA_FORMAT = 1
_LINEAGE = (SOURCE_FILE, ROW_NUMBER, "_field_count")
_MAX_NOTES = 20


class NothingLanded(ConfigError):
    """No landed file to infer the schema from."""


@dataclass
class ColumnSample:
    """What the sampled values of one column say, in one file or merged over several.

    Attributes:
        kind: `null` (no value), `bool`, `int`, `float`, `timestamp`, `text` or `unsupported`.
        non_null: how many sampled values were not null.
        values: the distinct non-null values, or None when more than `MAX_CATEGORIES`.
        files: how many files the column was sampled in.
        dtype: the polars type of an unsupported column (nested, binary …).
    """

    kind: str
    non_null: int = 0
    values: set[Any] | None = field(default_factory=set)
    files: int = 1
    dtype: str = ""

    def merged(self, other: ColumnSample) -> ColumnSample:
        """The sample of both files: the narrowest kind holding both, the union of values."""
        values = (None if self.values is None or other.values is None
                  else self.values | other.values)
        if values is not None and len(values) > MAX_CATEGORIES:
            values = None
        return ColumnSample(_widest(self.kind, other.kind), self.non_null + other.non_null,
                            values, self.files + other.files, self.dtype or other.dtype)


def _widest(first: str, second: str) -> str:
    if first == second or second == "null":
        return first
    if first == "null":
        return second
    if "unsupported" in (first, second):
        return "unsupported"
    if {first, second} == {"int", "float"}:
        return "float"
    return "text"


def sample_column(series: pl.Series) -> ColumnSample:
    """What one file's values of a column say: its kind, count and distinct values.

    Typed (Parquet) columns keep their type; text is looked at value by value (surrounding
    blanks ignored, empty text is null): integers, then numbers, then true/false, else text.
    """
    dtype = series.dtype
    if dtype.is_integer():
        return _with_values("int", series.drop_nulls())
    if dtype.is_float() or isinstance(dtype, pl.Decimal):
        return _with_values("float", series.drop_nulls().cast(pl.Float64))
    if dtype == pl.Boolean:
        return _with_values("bool", series.drop_nulls())
    if isinstance(dtype, pl.Datetime | pl.Date):
        return _with_values("timestamp", series.drop_nulls())
    if dtype == pl.Null:
        return ColumnSample("null")
    if not (dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum)):
        return ColumnSample("unsupported", dtype=str(dtype))
    text = series.cast(pl.String).str.strip_chars()
    text = text.filter(text.is_not_null() & (text != ""))
    if text.is_empty():
        return ColumnSample("null")
    integers = text.cast(pl.Int64, strict=False)
    if text.str.contains(r"^[+-]?\d+$").all() and integers.null_count() == 0:
        return _with_values("int", integers)
    numbers = text.cast(pl.Float64, strict=False)
    if numbers.null_count() == 0:
        return _with_values("float", numbers)
    lowered = text.str.to_lowercase()
    if lowered.is_in(["true", "false"]).all():
        return _with_values("bool", lowered == "true")
    return _with_values("text", text)


def _with_values(kind: str, values: pl.Series) -> ColumnSample:
    distinct = values.unique()
    kept = set(distinct.to_list()) if len(distinct) <= MAX_CATEGORIES else None
    return ColumnSample(kind, len(values), kept)


@dataclass
class _Landed:
    """What the landed files hold, file by file: samples, columns, and what was left out."""

    samples: dict[str, ColumnSample] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    columns_in: dict[str, int] = field(default_factory=dict)
    files: int = 0
    rows: int = 0
    first: dt.datetime | None = None
    notes: list[str] = field(default_factory=list)
    unparsed: str | None = None
    seen_columns: set[str] = field(default_factory=set)


def infer_schema(config: Config) -> dict[str, Any]:
    """Infer the dataset's schema from every readable landed file (the rules: module docstring).

    Returns:
        The record to pin: `columns` (name → `{type, nullable}`), `task` (None when
        `ct.yaml` sets it), `first_timestamp`, the files and rows looked at, `notes`.

    Raises:
        NothingLanded: no readable landed file.
        ConfigError: files landed, but none has the timestamp (or the target), no timestamp
            parses, or the task cannot be told from the target.
    """
    dataset = config.dataset
    landed = _sample_landed(config)
    ts, target = str(dataset.timestamp), str(dataset.target)
    where = config.path or "ct.yaml"
    if landed.files == 0:
        if ts in landed.seen_columns:  # the files with a timestamp have no target
            raise ConfigError(
                f"{where}: dataset.target: column {target!r} is in none of the landed files "
                f"with column {ts!r} under {config.landing_dir} (they have "
                f"{', '.join(sorted(landed.seen_columns))}); if labels land apart from their "
                "rows, set dataset.labels")
        if landed.seen_columns:
            raise ConfigError(
                f"{where}: dataset.timestamp: column {ts!r} is in none of the landed files under "
                f"{config.landing_dir} (they have {', '.join(sorted(landed.seen_columns))})")
        raise NothingLanded(
            f"nothing has landed under {config.landing_dir} to infer dataset.columns from (no "
            f"readable CSV or Parquet file); land files first, or declare dataset.columns in "
            f"{where}")
    if landed.first is None:
        hint = "" if dataset.timestamp_format else "; set dataset.timestamp_format"
        raise ConfigError(f"{where}: dataset.timestamp: no value of column {ts!r} parses as a "
                          f"timestamp in the landed files (e.g. {landed.unparsed!r}){hint}")
    columns = [name for name in landed.order if landed.columns_in[name] == landed.files]
    notes = list(landed.notes)
    notes += [f"column {name!r} is in {landed.columns_in[name]} of {landed.files} files: left "
              "out (reported as an unknown column where it lands)"
              for name in landed.order if name not in columns]
    specs: dict[str, dict[str, Any]] = {}
    for name in columns:
        if name == ts:
            specs[name] = {"type": "timestamp", "nullable": False}
            continue
        sample = landed.samples[name]
        if sample.kind == "unsupported":
            notes.append(f"column {name!r} has type {sample.dtype}, which cannot be ingested: "
                         "left out")
            continue
        specs[name] = {"type": _logical_type(name, sample, config), "nullable": True}
    task = None
    if "task" not in dataset.model_fields_set:
        task = _infer_task(target, landed.samples.get(target) if target in specs else None,
                           config, notes)
    if target in specs and specs[target]["type"] == "category":
        specs[target]["type"] = "string"
    if target not in specs:  # labels land apart: the type the task gives
        specs[target] = {"type": PROVISIONAL_TARGET_TYPE[task or dataset.task], "nullable": True}
        notes.append(f"the target {target!r} is not in the data files: typed "
                     f"{specs[target]['type']} for task {task or dataset.task}")
    return {
        "format": SCHEMA_FORMAT,
        "pinned_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "landing_dir": str(config.landing_dir),
        "files": landed.files,
        "rows_sampled": landed.rows,
        "first_timestamp": landed.first.isoformat(),
        "task": task,
        "columns": specs,
        "notes": notes[:_MAX_NOTES] + ([f"… and {len(notes) - _MAX_NOTES} more"]
                                       if len(notes) > _MAX_NOTES else []),
    }


def _sample_landed(config: Config) -> _Landed:
    """Read every landed file once (the ingestion reader) and sample its columns."""
    dataset = config.dataset
    ts, target = str(dataset.timestamp), str(dataset.target)
    needed = [ts] if dataset.labels is not None else [ts, target]
    landed = _Landed()
    for file in discover(config.landing_dir):
        if file.problem:
            landed.notes.append(f"{file.relpath}: not read ({file.problem})")
            continue
        try:
            frame = read_landed_file(file, [], dataset.delimiter)
        except BadFile as error:
            landed.notes.append(f"{file.relpath}: not read ({error})")
            continue
        names = [name for name in frame.columns if name not in _LINEAGE]
        landed.seen_columns.update(names)
        missing = [name for name in needed if name not in names]
        if missing:
            landed.notes.append(f"{file.relpath}: no column {', '.join(map(repr, missing))}: "
                                "not looked at (ingestion quarantines it)")
            continue
        step = max(1, math.ceil(frame.height / SAMPLE_ROWS_PER_FILE))
        frame = frame.gather_every(step) if step > 1 else frame
        landed.files += 1
        landed.rows += frame.height
        _sample_timestamps(frame, config, landed)
        for name in names:
            if name == ts:
                continue
            sample = sample_column(frame[name])
            known = landed.samples.get(name)
            landed.samples[name] = sample if known is None else known.merged(sample)
        for name in names:
            if name not in landed.columns_in:
                landed.order.append(name)
            landed.columns_in[name] = landed.columns_in.get(name, 0) + 1
    return landed


def _sample_timestamps(frame: pl.DataFrame, config: Config, landed: _Landed) -> None:
    """Parse a file's timestamps as ingestion does; keep the earliest, or an unparsed example."""
    ts = str(config.dataset.timestamp)
    try:
        parsed = frame.select(timestamp_expr(config.dataset, frame.schema[ts]).alias(ts))[ts]
        earliest = parsed.min()
    except pl.exceptions.PolarsError:  # polars found no format to parse the text with
        earliest = None
    if isinstance(earliest, dt.datetime):
        landed.first = earliest if landed.first is None else min(landed.first, earliest)
    elif landed.unparsed is None:
        values = frame[ts].drop_nulls()
        landed.unparsed = str(values[0]) if len(values) else None


def _logical_type(name: str, sample: ColumnSample, config: Config) -> str:
    """The logical type a column's merged sample gives (see the module docstring)."""
    if sample.kind in ("int", "float", "bool", "timestamp"):
        return sample.kind
    if sample.kind == "null":
        return "string"
    few = (sample.values is not None and len(sample.values) <= MAX_CATEGORIES
           and len(sample.values) <= MAX_CATEGORY_SHARE * sample.non_null)
    return "category" if few and name != config.dataset.id else "string"


def _infer_task(target: str, sample: ColumnSample | None, config: Config,
                notes: list[str]) -> str:
    """The task the target's sampled values give (see the module docstring)."""
    if sample is None or sample.non_null == 0:
        notes.append(f"no value of the target {target!r} has landed yet: task "
                     f"{config.dataset.task} (the default) is pinned")
        return config.dataset.task
    values = sample.values
    if sample.kind == "bool" or (sample.kind in ("int", "float") and values is not None
                                 and values <= {0, 1}):
        return "binary"
    if sample.kind in ("int", "text") and values is not None:
        return "multiclass"
    if sample.kind in ("int", "float"):
        return "regression"
    raise ConfigError(f"{config.path or 'ct.yaml'}: dataset.task: the target {target!r} holds "
                      f"{sample.kind} with more than {MAX_CATEGORIES} distinct values, neither "
                      "classes nor numbers; set dataset.task (or check dataset.target)")


def pin_schema(config: Config, record: dict[str, Any]) -> dict[str, Any]:
    """Write `record` as the project's pinned schema, unless one is pinned already.

    Written under a temporary name and linked into place, so a reader never sees half a file
    and a schema pinned meanwhile by another process is never replaced.

    Returns:
        The schema pinned now: `record`, or the one another process pinned first.
    """
    path = config.storage_dir / SCHEMA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
    pinned = read_pinned_schema(config.storage_dir)
    assert pinned is not None
    return pinned


def ensure_schema(config: Config, *, required: bool = True) -> Config:
    """`config` with its columns: declared, pinned, or inferred from the landed files now.

    A pending schema (`files` without `dataset.columns`, none pinned) is inferred from the
    landing dir and pinned, then the config is loaded again with it (the task, its metric
    defaults and `partitions.start` follow). Declared or already pinned columns are returned
    as they are: a pinned schema is never inferred again.

    Args:
        config: the loaded configuration.
        required: raise `NothingLanded` when nothing has landed yet; else return `config`
            still pending (nothing to ingest: nothing needs the columns yet).

    Raises:
        NothingLanded: `required` and no landed file to infer from.
        ConfigError: the landed files do not fit the dataset (see `infer_schema`), or the
            pinned schema does not fit the rest of `ct.yaml`.
    """
    if not config.dataset.schema_pending:
        return config
    if read_pinned_schema(config.storage_dir) is None:
        try:
            record = infer_schema(config)
        except NothingLanded:
            if required:
                raise
            return config
        pin_schema(config, record)
    return config.reloaded()


def bind_schema(config: Config) -> Config:
    """Give a pending `config` the pinned schema in place (inferring and pinning it first).

    For a run whose definitions were built while no schema was pinned (the code location
    loaded before the first file landed): the asset that ingests binds it, and the later
    steps of the same run, built from this same config object, read the same columns. The one
    mutation of a loaded config, made once: the dataset and the task's gate and trigger
    defaults; the partitions stay those the definitions were built with.

    Raises:
        NothingLanded, ConfigError: as `ensure_schema` with `required`.
    """
    if not config.dataset.schema_pending:
        return config
    resolved = ensure_schema(config, required=True)
    for name in ("dataset", "gate", "triggers"):
        object.__setattr__(config, name, getattr(resolved, name))
    return config


def _spec_yaml(spec: ColumnSpec) -> Any:
    written = spec.model_dump(exclude_defaults=True)
    return spec.type if written == {"type": spec.type} else written


def schema_yaml(config: Config) -> str:
    """The columns in force as the YAML to paste under `dataset:` in `ct.yaml`.

    A header comment says where they come from (the pinned file, when and from what; or
    `ct.yaml`), what was left out, and where the partitions start; then `task:` when it was
    inferred, the `columns:` block and `categorical:` when `ct.yaml` has one, indented by two
    spaces.
    """
    dataset = config.dataset
    lines: list[str] = []
    block: dict[str, Any] = {}
    if dataset.columns_pinned_in is not None:
        record = read_pinned_schema(config.storage_dir) or {}
        lines += [
            f"# dataset schema pinned in {dataset.columns_pinned_in} at "
            f"{record.get('pinned_at')},",
            f"# inferred from {record.get('files')} landed files ({record.get('rows_sampled')} "
            f"rows looked at) under {record.get('landing_dir')}.",
            "# It is the contract later files are validated against; it is never inferred "
            "again.",
            "# To change it, paste this under `dataset:` in ct.yaml and edit it (declared "
            "columns win),",
            f"# or delete {SCHEMA_FILE} to infer it again from what has landed.",
        ]
        lines += [f"# note: {note}" for note in record.get("notes") or []]
        if record.get("task"):
            block["task"] = record["task"]
    else:
        lines.append(f"# dataset.columns as declared in {config.path or 'ct.yaml'}.")
    if not config.partitions.start_from_file:
        lines.append(f"# partitions.start is unset: the partitions start at "
                     f"{config.partitions.start}.")
    block["columns"] = {name: _spec_yaml(spec) for name, spec in dataset.columns.items()}
    if dataset.categorical:
        block["categorical"] = list(dataset.categorical)
    text = yaml.safe_dump(block, sort_keys=False, default_flow_style=None, width=100)
    return "\n".join([*lines, *("  " + line for line in text.splitlines())]) + "\n"
