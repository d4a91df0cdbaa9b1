"""Feature engineering: typed raw events → model inputs, with a look-back over earlier partitions.

- numeric columns pass through as floats, booleans become 0/1;
- `category` columns stay text (models encode them natively, with the categories they saw);
- `string` columns (identifiers, free text) are not features;
- the timestamp gives cyclical hour-of-day and day-of-week features;
- each `features.relative_to_recent` column gets its mean over the previous `features.lookback`
  partitions of the same segment, and its value relative to that mean.
"""

from __future__ import annotations

import datetime as dt
import math

import polars as pl

from ct_assets.lib.config import Config
from ct_assets.lib.validation import PARTITION

KEY_COLUMNS = (PARTITION,)


def feature_schema(config: Config) -> dict[str, str]:
    """Name → logical type (`float` or `category`) of every feature, in output order."""
    types = config.dataset.column_types()
    schema: dict[str, str] = {}
    for name in config.dataset.feature_columns():
        if types[name] in ("float", "int", "bool"):
            schema[name] = "float"
        elif types[name] == "category":
            schema[name] = "category"
    for name in (*HOUR_FEATURES, *DAY_OF_WEEK_FEATURES):
        schema[name] = "float"
    for name in config.relative_columns():
        schema[recent_mean_feature(name)] = "float"
        schema[f"{name}_vs_recent"] = "float"
    return schema


HOUR_FEATURES = ("hour_sin", "hour_cos")
DAY_OF_WEEK_FEATURES = ("dow_sin", "dow_cos")


def recent_mean_feature(column: str) -> str:
    """The feature holding `column`'s mean over the previous `features.lookback` partitions."""
    return f"{column}_recent_mean"


def passthrough_columns(config: Config) -> list[str]:
    """Columns carried next to the features: partition, id, timestamp, segment, target."""
    dataset = config.dataset
    named = [PARTITION, dataset.id, dataset.timestamp, dataset.segment, dataset.target]
    features = feature_schema(config)
    return [name for name in dict.fromkeys(named) if name and name not in features]


def offset_partitions(config: Config, moment: dt.datetime, count: int) -> dt.datetime:
    """`moment` moved by `count` partitions (negative moves back)."""
    every = config.partitions.truncate_every
    unit = every.lstrip("0123456789")
    moved = pl.Series([moment]).dt.offset_by(f"{count}{unit}")
    return moved.item()


def key_window(config: Config, keys: list[str]) -> tuple[dt.datetime, dt.datetime]:
    """The time window `[start, end)` of the consecutive partition keys `keys` (UTC)."""
    fmt = config.partitions.key_format
    start = dt.datetime.strptime(keys[0], fmt).replace(tzinfo=dt.UTC)
    last = dt.datetime.strptime(keys[-1], fmt).replace(tzinfo=dt.UTC)
    return start, offset_partitions(config, last, 1)


def lookback_columns(config: Config) -> list[str]:
    """The `raw_events` columns `build_features` needs of the look-back partitions.

    Rows before the partitions being built only feed the recent means: their partition,
    segment and `relative_to_recent` columns (none without such columns). Reading only these
    keeps the look-back's cost a few narrow columns, however wide the rows are.
    """
    relative = config.relative_columns()
    if not relative:
        return []
    named = [PARTITION, config.dataset.timestamp, config.dataset.segment, *relative]
    return [name for name in dict.fromkeys(named) if name]


def _cyclical(value: pl.Expr, period: float, name: str) -> list[pl.Expr]:
    angle = value.cast(pl.Float64) * (2 * math.pi / period)
    return [angle.sin().alias(f"{name}_sin"), angle.cos().alias(f"{name}_cos")]


def _recent_means(raw: pl.DataFrame, config: Config, segment: str | None) -> pl.DataFrame:
    """Per (segment, partition): each relative column's mean over the previous partitions."""
    columns = config.relative_columns()
    fmt, every = config.partitions.key_format, config.partitions.truncate_every
    starts = raw[PARTITION].unique().str.strptime(pl.Datetime("us"), fmt)
    calendar = pl.datetime_range(starts.min(), starts.max(), every, eager=True)
    keys = calendar.dt.strftime(fmt)  # every partition, with data or not
    index = pl.DataFrame({PARTITION: keys, "__index": range(len(keys))})
    group = [segment] if segment else []
    totals = (
        raw.join(index, on=PARTITION)
        .group_by([*group, "__index"])
        .agg(*[pl.col(c).cast(pl.Float64).sum().alias(f"{c}__sum") for c in columns],
             *[pl.col(c).is_not_null().sum().alias(f"{c}__count") for c in columns])
    )
    lookback = config.features.lookback
    shifted = pl.concat(
        [totals.with_columns(pl.col("__index") + offset) for offset in range(1, lookback + 1)]
    )
    recent = shifted.group_by([*group, "__index"]).agg(pl.all().sum())
    return recent.select(
        *group, "__index",
        *[(pl.col(f"{c}__sum") / pl.col(f"{c}__count")).alias(f"{c}_recent_mean")
          for c in columns],
    ).join(index, on="__index")


def build_features(raw: pl.DataFrame, config: Config, keys: list[str]) -> pl.DataFrame:
    """Features of the partitions `keys`.

    Args:
        raw: `raw_events` rows of `keys` and of the `features.lookback` partitions before them
            (earlier rows are only used for the look-back means: `lookback_columns` of them
            are enough).
        config: the project configuration.
        keys: the partition keys to build features for.

    Returns:
        One row per raw event of `keys`: passthrough columns then features.
    """
    dataset = config.dataset
    schema = feature_schema(config)
    ts = pl.col(dataset.timestamp)
    current = raw.filter(pl.col(PARTITION).is_in(keys))
    hour = ts.dt.hour().cast(pl.Float64) + ts.dt.minute().cast(pl.Float64) / 60
    relative = config.relative_columns()
    frame = current
    if relative:  # joined on the segment as stored: an int one must not be a float yet
        segment = dataset.segment
        means = _recent_means(raw, config, segment)
        frame = frame.join(means.drop("__index"), on=[PARTITION, *([segment] if segment else [])],
                           how="left")
    frame = frame.with_columns(
        *[pl.col(name).cast(pl.Float64) for name, kind in schema.items()
          if kind == "float" and name in current.columns],
        *_cyclical(hour, 24.0, "hour"),
        *_cyclical(ts.dt.weekday() - 1, 7.0, "dow"),
    )
    if relative:
        frame = frame.with_columns(
            pl.when(pl.col(f"{c}_recent_mean") != 0)
            .then(pl.col(c).cast(pl.Float64) / pl.col(f"{c}_recent_mean"))
            .alias(f"{c}_vs_recent")
            for c in relative
        )
    ordered = [*passthrough_columns(config), *schema]
    return frame.select(ordered).sort(dataset.timestamp)
