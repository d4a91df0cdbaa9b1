"""The project's configuration: `ct.yaml` (or `$CT_CONFIG`) loaded into one validated object.

Every key outside `dataset` has a default, so a minimal file names only the data. Every path is
relative to the config file. Errors are one line naming the file, the key and the value.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from ct_assets.lib import simulator
from ct_assets.lib.evaluation import METRICS

CONFIG_ENV = "CT_CONFIG"
DEFAULT_CONFIG_NAME = "ct.yaml"

LogicalType = Literal["float", "int", "bool", "string", "category", "timestamp"]
Granularity = Literal["hourly", "daily", "weekly", "monthly"]

# Partition granularity -> (polars truncate interval, Dagster partition key format).
GRANULARITIES: dict[str, tuple[str, str]] = {
    "hourly": ("1h", "%Y-%m-%d-%H:%M"),
    "daily": ("1d", "%Y-%m-%d"),
    "weekly": ("1w", "%Y-%m-%d"),
    "monthly": ("1mo", "%Y-%m-%d"),
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ConfigError(ValueError):
    """The configuration is invalid; the message is one line naming the key and the value."""


def parse_duration(value: str | int | float) -> dt.timedelta:
    """Parse `30m`, `12h`, `7d`, `2w` (or a number of seconds) into a timedelta.

    Raises:
        ValueError: the text is not a duration.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return dt.timedelta(seconds=float(value))
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration like '30m', '12h', '7d' or '2w'")
    return dt.timedelta(seconds=float(match.group(1)) * _DURATION_UNITS[match.group(2)])


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(_Section):
    """One declared input column: its type, whether it may be null, and its valid range."""

    type: LogicalType
    nullable: bool = True
    min: int | float | None = None  # an int bound stays exact past 2**53
    max: int | float | None = None
    allow_non_finite: bool = False


# The target's type by task where the landed data does not say (pending, or labels elsewhere).
PROVISIONAL_TARGET_TYPE = {"binary": "int", "multiclass": "string", "regression": "float"}


def _column_spec(value: Any) -> Any:
    return {"type": value} if isinstance(value, str) else value


class LabelsConfig(_Section):
    """Labels that land after their rows: files holding an id, the label and when it was known.

    Each file under `landing_dir` (CSV or Parquet) has the id column, the label column and,
    optionally, a `known_at` timestamp column; without it a label counts as known from its
    file's modification time. Column names default to `dataset.id` and `dataset.target`.
    """

    landing_dir: Path
    id: str | None = None
    label: str | None = None
    known_at: str | None = "known_at"


class DatasetConfig(_Section):
    """What the data is and where it lands.

    For `files`, `columns` may be left out: the schema is then inferred from the landed files
    and pinned under `storage.dir` (`SCHEMA_FILE`, see `ct_assets.lib.schema`), and loading the
    config reads it from there as if it were written here. Until it is pinned the dataset is
    `schema_pending`: only the timestamp and the target are known.
    """

    source: Literal["simulator", "files"]
    landing_dir: Path | None = None
    timestamp: str | None = None
    timestamp_format: str | None = None
    target: str | None = None
    id: str | None = None
    segment: str | None = None
    columns: dict[str, Annotated[ColumnSpec, Field()]] = Field(default_factory=dict)
    categorical: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    task: Literal["binary", "multiclass", "regression"] = "binary"
    delimiter: str = ","
    labels: LabelsConfig | None = None
    _pinned_in: Path | None = PrivateAttr(default=None)

    @property
    def schema_pending(self) -> bool:
        """Whether the columns are still unknown: `files` without `columns`, none pinned yet."""
        return self.source == "files" and not self.columns

    @property
    def columns_pinned_in(self) -> Path | None:
        """The pinned schema file the columns were read from (None: declared, or pending)."""
        return self._pinned_in

    @field_validator("columns", mode="before")
    @classmethod
    def _short_column_specs(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {name: _column_spec(spec) for name, spec in value.items()}
        return value

    @model_validator(mode="after")
    def _fill_and_check(self) -> DatasetConfig:
        if self.source == "simulator":
            defaults = {
                "timestamp": simulator.TIMESTAMP_COLUMN,
                "target": simulator.TARGET_COLUMN,
                "id": simulator.ID_COLUMN,
                "segment": simulator.SEGMENT_COLUMN,
            }
            for key, value in defaults.items():
                if getattr(self, key) is None:
                    object.__setattr__(self, key, value)
            if not self.columns:
                object.__setattr__(self, "columns", simulator_columns())
        else:
            for key in ("timestamp", "target"):
                if not getattr(self, key):
                    raise ValueError(f"dataset.{key} is required when dataset.source is 'files'")
        if len(self.delimiter) != 1:
            raise ValueError(f"dataset.delimiter must be one character, got {self.delimiter!r}")
        if self.labels is not None:
            if self.id is None:
                raise ValueError("dataset.labels needs dataset.id: labels are joined to their "
                                 "rows by id")
            object.__setattr__(self, "labels", self.labels.model_copy(update={
                "id": self.labels.id or self.id, "label": self.labels.label or self.target}))
        if self.schema_pending:
            return self  # the columns named below are checked once the schema is pinned
        named = {"timestamp": self.timestamp, "target": self.target, "id": self.id,
                 "segment": self.segment}
        for key, column in named.items():
            if column is not None and column not in self.columns:
                raise ValueError(f"dataset.{key}: column {column!r} is not in dataset.columns")
        for key in ("categorical", "exclude"):
            for column in getattr(self, key):
                if column not in self.columns:
                    raise ValueError(f"dataset.{key}: column {column!r} is not in dataset.columns")
        if self.columns[self.timestamp].type not in ("timestamp", "string"):
            raise ValueError(
                f"dataset.columns.{self.timestamp}: the timestamp column must have type "
                f"'timestamp', got {self.columns[self.timestamp].type!r}"
            )
        return self

    def column_types(self) -> dict[str, str]:
        """Declared logical type of every column; `categorical` columns become `category`.

        While the schema is pending, the timestamp, and the target and id with provisional
        types (nothing is ingested until the schema is pinned, see `ct_assets.lib.schema`).
        """
        if self.schema_pending:
            provisional = {str(self.target): PROVISIONAL_TARGET_TYPE[self.task]}
            if self.id:
                provisional[self.id] = "string"
            return {**provisional, str(self.timestamp): "timestamp"}
        types = {name: spec.type for name, spec in self.columns.items()}
        types[self.timestamp] = "timestamp"
        for name in self.categorical:
            types[name] = "category"
        return types

    def feature_columns(self) -> list[str]:
        """Input columns that feed features: all but timestamp, target, id and `exclude`."""
        skip = {self.timestamp, self.target, self.id, *self.exclude}
        return [name for name in self.columns if name not in skip]


def simulator_columns() -> dict[str, ColumnSpec]:
    """Column specs of the built-in simulator, with the ranges its data must respect."""
    specs = {name: ColumnSpec(type=kind) for name, kind in simulator.SIMULATOR_COLUMNS.items()}
    bounds = {"amount": (0.0, None), "customer_age": (18, 120), "account_age_days": (0, None),
              "distance_from_home_km": (0.0, None), "txn_count_24h": (0, None),
              "device_trust_score": (0.0, 1.0)}
    for name, (low, high) in bounds.items():
        if name in specs:
            specs[name] = ColumnSpec(type=specs[name].type, min=low, max=high)
    # The target may be null: a row whose label comes later is scored, never trained on.
    for name in (simulator.TIMESTAMP_COLUMN, simulator.ID_COLUMN):
        specs[name] = ColumnSpec(type=specs[name].type, nullable=False)
    return specs


# Where time starts when neither `partitions.start` nor a simulation says so.
DEFAULT_START = dt.date(2025, 1, 1)
# What `ct simulate` and `ct demo` wrote, under `storage.dir`: `{"first": day, "last": day}`.
SIMULATED_DAYS_FILE = "simulated_days.json"


class PartitionsConfig(_Section):
    """How time is cut into partitions (UTC).

    `start` left out of `ct.yaml` is resolved when the file is loaded: for the simulator, the
    first day `ct simulate` or `ct demo` wrote (`simulated_days.json` under `storage.dir`, a
    record those commands keep; never the landed data), so there are no empty partitions
    before the history; for `files` with a pinned schema (`SCHEMA_FILE`), the first day of the
    data it was pinned from; otherwise, and before anything was simulated or pinned,
    `DEFAULT_START`.
    """

    start: dt.date = DEFAULT_START
    granularity: Granularity = "daily"
    _start_from_file: bool = PrivateAttr(default=True)

    @property
    def start_from_file(self) -> bool:
        """Whether `start` was written in `ct.yaml` (else it was resolved at load)."""
        return self._start_from_file

    @property
    def truncate_every(self) -> str:
        """The polars `dt.truncate` interval of one partition."""
        return GRANULARITIES[self.granularity][0]

    @property
    def key_format(self) -> str:
        """The strftime format of a partition key."""
        return GRANULARITIES[self.granularity][1]


class FeaturesConfig(_Section):
    """Feature engineering settings."""

    lookback: int = Field(default=7, ge=1, le=366)
    relative_to_recent: list[str] | None = None


class TrainingConfig(_Section):
    """How candidate models are trained."""

    window: int = Field(default=30, ge=2)
    holdout: int = Field(default=5, ge=1)
    model: str = "lightgbm"
    params: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    strategy: Literal["batch", "online"] = "batch"
    online_rounds: int = Field(default=20, ge=1)

    @model_validator(mode="after")
    def _holdout_inside_window(self) -> TrainingConfig:
        if self.holdout >= self.window:
            raise ValueError(
                f"training.holdout ({self.holdout}) must be smaller than "
                f"training.window ({self.window})"
            )
        if self.strategy == "online" and self.model not in ("lightgbm", "sklearn_sgd"):
            raise ValueError(f"training.strategy online needs a model that can learn new rows "
                             f"(lightgbm or sklearn_sgd), not {self.model!r}")
        return self


# Per task: the default gate metric, its default gate.min_value, triggers.min_performance and
# triggers.max_degradation.
DEFAULT_METRIC: dict[str, tuple[str, float | None, float | None, float | None]] = {
    "binary": ("roc_auc", 0.6, 0.7, 0.05),
    "multiclass": ("accuracy", None, None, 0.05),
    "regression": ("rmse", None, None, None),
}
# Metrics whose values lie in [0, 1]; the others (log_loss, rmse, mae) are >= 0, r2 is <= 1.
UNIT_METRICS = frozenset({"roc_auc", "pr_auc", "brier", "precision", "recall", "f1",
                          "accuracy", "macro_f1"})


def higher_is_better(task: str, metric: str) -> bool:
    """Whether a larger value of `metric` is better (roc_auc) or worse (rmse, log_loss)."""
    return METRICS[task][metric]


def worse_than(task: str, metric: str, value: float, bound: float) -> bool:
    """Whether `value` is on the bad side of `bound` for this metric's direction."""
    return value < bound if higher_is_better(task, metric) else value > bound


class GateConfig(_Section):
    """When a candidate may replace the champion.

    `metric` defaults per task (roc_auc, accuracy, rmse); `min_value` is the worst value a
    candidate may have (a floor for higher-is-better metrics, a ceiling for rmse, log_loss …).
    `on_champion_error`: what the gate does when the deployed champion cannot be loaded (a file
    missing or modified): `refuse` the candidate (default: fail closed, since it cannot be
    compared), or `approve` it on `min_value` alone.
    """

    metric: str | None = None
    min_value: float | None = None
    max_regression: float = Field(default=0.01, ge=0)
    on_champion_error: Literal["refuse", "approve"] = "refuse"


class PageHinkleyConfig(_Section):
    """Page-Hinkley settings for per-partition series (one value per partition)."""

    min_instances: int = Field(default=5, ge=1)
    delta: float = Field(default=0.01, ge=0)
    threshold: float = Field(default=0.25, gt=0)


class DriftConfig(_Section):
    """Drift detection settings."""

    methods: str | dict[str, str] = "auto"
    thresholds: dict[str, float] = Field(default_factory=dict)
    share: float = Field(default=0.5, gt=0, le=1)
    segment_share: float = Field(default=0.3, gt=0, le=1)
    critical: list[str] = Field(default_factory=list)
    target_alpha: float = Field(default=0.001, gt=0, lt=1)
    page_hinkley: PageHinkleyConfig = PageHinkleyConfig()
    # What `drift_report` judges: the landed rows' features, or the rows `ct serve` scored.
    on: Literal["landed", "served"] = "landed"


class TriggersConfig(_Section):
    """Which retraining triggers are on, and their settings."""

    drift: bool = True
    performance: bool = True
    freshness: bool = True
    schedule: bool = False
    max_model_age: str = "7d"
    cron: str = "0 3 * * 0"
    min_performance: float | None = None
    max_degradation: float | None = Field(default=None, ge=0)
    label_delay: int = Field(default=1, ge=0)
    cooldown: int = Field(default=3, ge=0)
    # A drift retrain waits for the labels of the partition where the drift began, so that it
    # learns them (`lib.triggers.awaiting_labels`); false: it starts as soon as drift is seen.
    drift_waits_for_labels: bool = True

    @field_validator("max_model_age")
    @classmethod
    def _is_duration(cls, value: str) -> str:
        if parse_duration(value) < dt.timedelta(minutes=1):
            # also the shortest window of a Dagster freshness policy (`deployed_model`'s)
            raise ValueError(f"{value!r} is shorter than the shortest model age, 1 minute")
        return value


class ChecksConfig(_Section):
    """Thresholds of the data-quality checks on `raw_events`."""

    max_null_rate: float = Field(default=0.1, ge=0, le=1)
    max_quarantine_share: float = Field(default=0.05, ge=0, le=1)


class ServingConfig(_Section):
    """`ct serve`: the model's name on the Open Inference Protocol, access, limits, request log."""

    model_name: str = Field(default="ct-model", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    # A bearer token every route but health requires; `$CT_SERVE_TOKEN` overrides it.
    token: str | None = None
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_rows: int = Field(default=10_000, ge=1)
    # The request log is flushed to a Parquet file at this many rows or this age, whichever first.
    log_flush_rows: int = Field(default=10_000, ge=1)
    log_flush_seconds: float = Field(default=5.0, gt=0)
    # How often the server looks at `deployed.json` for a promotion or a rollback.
    watch_seconds: float = Field(default=1.0, gt=0)


class StorageConfig(_Section):
    """Where this project's state lives."""

    dir: Path = Path("data")


class Config(_Section):
    """The whole validated configuration; paths are absolute once loaded."""

    dataset: DatasetConfig
    partitions: PartitionsConfig = PartitionsConfig()
    features: FeaturesConfig = FeaturesConfig()
    training: TrainingConfig = TrainingConfig()
    gate: GateConfig = GateConfig()
    drift: DriftConfig = DriftConfig()
    triggers: TriggersConfig = TriggersConfig()
    checks: ChecksConfig = ChecksConfig()
    serving: ServingConfig = ServingConfig()
    storage: StorageConfig = StorageConfig()
    path: Path | None = None
    # What `config_from_dict` was given (document, base dir, source), to load it again.
    _origin: tuple[dict[str, Any], Path, str] | None = PrivateAttr(default=None)

    def reloaded(self) -> Config:
        """This configuration loaded again from the same document, reading what changed since.

        A schema pinned since it was loaded is read (and a simulated history recorded).

        Raises:
            ConfigError: the configuration was not loaded by `config_from_dict`/`load_config`.
        """
        if self._origin is None:
            raise ConfigError("this configuration was not loaded from a document")
        raw, base_dir, source = self._origin
        return config_from_dict(raw, base_dir=base_dir, source=source).model_copy(
            update={"path": self.path})

    @model_validator(mode="after")
    def _check_metrics(self) -> Config:
        """Resolve the per-task metric defaults; refuse a metric or bound the task cannot have."""
        task = self.dataset.task
        metric, min_value, floor, degradation = DEFAULT_METRIC[task]
        chosen = self.gate.metric or metric
        if chosen not in METRICS[task]:
            raise ValueError(f"gate.metric: {chosen!r} is not a {task} metric; expected one of "
                             f"{', '.join(METRICS[task])}")
        if chosen != metric:
            # the defaults belong to the default metric
            min_value, floor, degradation = None, None, None
        gate = self.gate.model_copy(update={
            "metric": chosen, "min_value": self.gate.min_value if self.gate.min_value is not None
            else min_value})
        triggers = self.triggers.model_copy(update={
            "min_performance": self.triggers.min_performance
            if self.triggers.min_performance is not None else floor,
            "max_degradation": self.triggers.max_degradation
            if self.triggers.max_degradation is not None else degradation})
        for key, value in (("gate.min_value", gate.min_value),
                           ("triggers.min_performance", triggers.min_performance)):
            if value is None:
                continue
            if chosen in UNIT_METRICS and not 0 <= value <= 1:
                raise ValueError(f"{key}: {chosen} lies in [0, 1], got {value}")
            if chosen in ("log_loss", "rmse", "mae") and value < 0:
                raise ValueError(f"{key}: {chosen} is never negative, got {value}")
            if chosen == "r2" and value > 1:
                raise ValueError(f"{key}: r2 is at most 1, got {value}")
        object.__setattr__(self, "gate", gate)
        object.__setattr__(self, "triggers", triggers)
        return self

    @property
    def metric_higher_is_better(self) -> bool:
        """Whether a larger value of the gate (and monitored) metric is better."""
        return higher_is_better(self.dataset.task, str(self.gate.metric))

    @model_validator(mode="after")
    def _check_features(self) -> Config:
        if self.dataset.schema_pending:
            return self  # checked once the schema is pinned
        for column in self.relative_columns():
            if column not in self.dataset.columns:
                raise ValueError(
                    f"features.relative_to_recent: column {column!r} is not in dataset.columns"
                )
            if self.dataset.column_types()[column] not in ("float", "int"):
                raise ValueError(
                    f"features.relative_to_recent: column {column!r} is not numeric"
                )
        return self

    def relative_columns(self) -> list[str]:
        """Numeric columns expressed relative to their recent (segment) mean."""
        if self.features.relative_to_recent is not None:
            return list(self.features.relative_to_recent)
        return ["amount"] if self.dataset.source == "simulator" else []

    @property
    def storage_dir(self) -> Path:
        """Directory holding the warehouse, the model store, quarantine and Dagster's storage."""
        return self.storage.dir

    @property
    def landing_dir(self) -> Path:
        """Directory where incoming files land."""
        return self.dataset.landing_dir or self.storage.dir / "landing"

    @property
    def warehouse_path(self) -> Path:
        """The DuckDB file."""
        return self.storage.dir / "warehouse.duckdb"

    @property
    def quarantine_dir(self) -> Path:
        """Where rejected rows and files are recorded."""
        return self.storage.dir / "quarantine"

    @property
    def models_dir(self) -> Path:
        """The model store."""
        return self.storage.dir / "models"

    @property
    def landing_catalog_path(self) -> Path:
        """What ingestion knows of each landed file version (per granularity)."""
        return self.storage.dir / f"landing_catalog.{self.partitions.granularity}.json"

    @property
    def reference_dir(self) -> Path:
        """Drift reference profiles of training sets."""
        return self.storage.dir / "reference"

    @property
    def labels_dir(self) -> Path | None:
        """Directory where label files land, or None (labels come with their rows)."""
        labels = self.dataset.labels
        return labels.landing_dir if labels else None

    @property
    def labels_catalog_path(self) -> Path:
        """What label ingestion knows of each landed label file version (per granularity)."""
        return self.storage.dir / f"labels_catalog.{self.partitions.granularity}.json"

    @property
    def serving_dir(self) -> Path:
        """Where `ct serve` writes its request log (Parquet files, one per flush)."""
        return self.storage_dir / "serving"

    @property
    def dagster_home(self) -> Path:
        """Dagster's instance directory for this project."""
        return self.storage.dir / "dagster"


class _TextDatesLoader(yaml.SafeLoader):
    """Safe YAML loader that leaves dates as text, so pydantic reports a bad one by key."""


_TextDatesLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _format_error(source: str, error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        value = item.get("input")
        shown = "" if isinstance(value, dict) or item["type"] == "missing" else f" (got {value!r})"
        parts.append(f"{key}: {message}{shown}" if key else f"{message}{shown}")
    return f"{source}: " + "; ".join(parts)


def config_from_dict(raw: Any, *, base_dir: Path, source: str = "config") -> Config:
    """Validate a parsed YAML document and resolve its paths against `base_dir`.

    Raises:
        ConfigError: one line naming each wrong key and its value.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    config = _validated(raw, source)
    storage_dir = (base_dir / config.storage.dir).resolve()
    pinned_in = None
    if config.dataset.schema_pending:
        pinned = read_pinned_schema(storage_dir)
        if pinned is not None:  # as if the pinned columns were written in the file
            pinned_in = storage_dir / SCHEMA_FILE
            config = _validated(with_pinned_schema(raw, pinned),
                                f"{source} (with the schema pinned in {pinned_in})")
    dataset = config.dataset
    landing = (base_dir / dataset.landing_dir).resolve() if dataset.landing_dir else None
    labels = dataset.labels
    if labels is not None:
        labels = labels.model_copy(update={
            "landing_dir": (base_dir / labels.landing_dir).resolve()})
        data_dir = landing or storage_dir / "landing"
        if labels.landing_dir == data_dir or labels.landing_dir.is_relative_to(data_dir) \
                or data_dir.is_relative_to(labels.landing_dir):
            raise ConfigError(f"{source}: dataset.labels.landing_dir ({labels.landing_dir}) must "
                              f"be apart from the data landing dir ({data_dir})")
    partitions = config.partitions
    if "start" not in partitions.model_fields_set:
        partitions = resolve_start(partitions, dataset.source, storage_dir)
    dataset = dataset.model_copy(update={"landing_dir": landing, "labels": labels})
    dataset._pinned_in = pinned_in
    loaded = config.model_copy(
        update={
            "storage": StorageConfig(dir=storage_dir),
            "dataset": dataset,
            "partitions": partitions,
        }
    )
    loaded._origin = (copy.deepcopy(raw), base_dir, source)
    return loaded


def _validated(raw: dict[str, Any], source: str) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_error(source, error)) from None


# The schema inferred from the landed files when `dataset.columns` is left out, under
# `storage.dir`; written once by `ct_assets.lib.schema.pin_schema`, read at every load.
SCHEMA_FILE = "schema.json"


def read_pinned_schema(storage_dir: Path) -> dict[str, Any] | None:
    """The schema pinned under `storage_dir` (`SCHEMA_FILE`), or None when none is.

    A small JSON file, never the landed data: loading the config stays cheap.

    Raises:
        ConfigError: the file exists but is not a pinned schema (naming it).
    """
    path = storage_dir / SCHEMA_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("columns"), dict) \
            or not record["columns"]:
        raise ConfigError(f"{path}: not a pinned schema (a JSON object with `columns`); delete "
                          "it to infer the schema again from the landed files, or declare "
                          "dataset.columns in ct.yaml")
    return record


def with_pinned_schema(raw: dict[str, Any], pinned: dict[str, Any]) -> dict[str, Any]:
    """The parsed config `raw` with the pinned columns (and task, unless `raw` sets one)."""
    dataset = dict(raw["dataset"])
    dataset["columns"] = pinned["columns"]
    if "task" not in dataset and pinned.get("task"):
        dataset["task"] = pinned["task"]
    return {**raw, "dataset": dataset}


def pinned_first_day(storage_dir: Path) -> dt.date | None:
    """The first day of the data the schema was pinned from, or None (no schema pinned).

    Raises:
        ConfigError: the pinned schema is unreadable, or its `first_timestamp` is not a time.
    """
    record = read_pinned_schema(storage_dir)
    first = record.get("first_timestamp") if record else None
    if first is None:
        return None
    try:
        return dt.datetime.fromisoformat(str(first)).date()
    except ValueError:
        raise ConfigError(f"{storage_dir / SCHEMA_FILE}: first_timestamp {first!r} is not an "
                          "ISO 8601 time") from None


def resolve_start(partitions: PartitionsConfig, source: str, storage_dir: Path
                  ) -> PartitionsConfig:
    """`partitions` starting where an unset `partitions.start` starts (see `PartitionsConfig`).

    Raises:
        ConfigError: the record of simulated days, or the pinned schema, is unreadable.
    """
    if source == "simulator":
        first = simulated_days(storage_dir)[0]
    else:
        first = pinned_first_day(storage_dir)
    resolved = partitions.model_copy(update={"start": first or DEFAULT_START})
    resolved._start_from_file = False
    return resolved


def with_simulated_start(config: Config) -> Config:
    """`config` with an unset `partitions.start` resolved again (after `ct simulate` wrote)."""
    if config.partitions.start_from_file:
        return config
    partitions = resolve_start(config.partitions, config.dataset.source, config.storage_dir)
    return config.model_copy(update={"partitions": partitions})


def simulated_days(storage_dir: Path) -> tuple[dt.date, dt.date] | tuple[None, None]:
    """The first and last day the simulator wrote for this project, or `(None, None)`.

    Raises:
        ConfigError: the record exists but is not one (naming the file).
    """
    path = storage_dir / SIMULATED_DAYS_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return dt.date.fromisoformat(record["first"]), dt.date.fromisoformat(record["last"])
    except FileNotFoundError:
        return None, None
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path}: not a record of simulated days (first and last, "
                          "YYYY-MM-DD); delete it or set partitions.start") from None


def record_simulated_days(storage_dir: Path, first: dt.date, last: dt.date, *,
                          fresh: bool = False) -> None:
    """Widen the record of simulated days to `first … last` (replace it when `fresh`).

    `fresh` is for a landing dir that held nothing before: older days recorded are gone.
    """
    if not fresh:
        known_first, known_last = simulated_days(storage_dir)
        first = min(first, known_first or first)
        last = max(last, known_last or last)
    path = storage_dir / SIMULATED_DAYS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"first": first.isoformat(), "last": last.isoformat()}),
                         encoding="utf-8")
    os.replace(temporary, path)


def config_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The config file in use: `path`, else `$CT_CONFIG`, else `./ct.yaml`."""
    chosen = path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_NAME
    return Path(chosen).expanduser().resolve()


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate the configuration file.

    Raises:
        ConfigError: the file is missing, not YAML, or invalid.
    """
    file = config_path(path)
    if not file.is_file():
        raise ConfigError(
            f"{file}: config file not found (set {CONFIG_ENV} or run from the project root)"
        )
    try:
        raw = yaml.load(file.read_text(encoding="utf-8"), Loader=_TextDatesLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        detail = str(error).replace("\n", " ")
        raise ConfigError(f"{file}: not valid YAML: {detail}") from None
    config = config_from_dict(raw, base_dir=file.parent, source=str(file))
    return config.model_copy(update={"path": file})
