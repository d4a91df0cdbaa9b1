"""Features stage: `raw_events` → `features` in DuckDB, with a look-back over earlier partitions."""

import time
from functools import partial

import dagster as dg
import polars as pl

from ct_assets.defs.automation import follows_upstream
from ct_assets.defs.metadata import column_schema, frame_metadata, record_partition_metadata
from ct_assets.defs.resources import WarehouseResource
from ct_assets.defs.runs import holds_warehouse
from ct_assets.lib.config import Config
from ct_assets.lib.features import (
    build_features,
    feature_schema,
    key_window,
    lookback_columns,
    offset_partitions,
)
from ct_assets.lib.ingest import partition_keys
from ct_assets.lib.partition_figures import span, split_by_partition
from ct_assets.lib.validation import PARTITION
from ct_assets.lib.warehouse import Warehouse, chunk_partitions


def build_feature_assets(
    config: Config, partitions_def: dg.PartitionsDefinition
) -> list[dg.AssetsDefinition]:
    """The `features` asset for this configuration."""
    lookback = config.features.lookback
    timestamp = config.dataset.timestamp
    schema = feature_schema(config)

    @dg.asset(
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[dg.AssetDep("raw_events", partition_mapping=dg.TimeWindowPartitionMapping(
            start_offset=-lookback, allow_nonexistent_upstream_partitions=True))],
        group_name="features",
        kinds={"duckdb", "polars"},
        # Not only the latest partition: late rows for partition p change the recent means
        # of p+1 … p+lookback, which read them, so those are rebuilt too (and what follows).
        automation_condition=follows_upstream(),
        pool="duckdb",
        metadata={"dagster/table_name": "warehouse.main.features",
                  "feature_count": len(schema)},
    )
    @holds_warehouse
    def features(context: dg.AssetExecutionContext,
                 warehouse: WarehouseResource) -> dg.MaterializeResult:
        """Model inputs of each partition: typed columns, cyclical time, recent-mean ratios.

        Reads `raw_events` of the partition and the few columns the recent means need of the
        `features.lookback` partitions before it (never the whole history) and replaces the
        partition in one transaction. A range is built in chunks of whole partitions of about
        `CHUNK_ROWS` rows, staged, then replaced in one transaction (`replace_range_chunks`),
        so a run's memory does not grow with its range. Each partition's materialization
        carries its own rows and preview; `run_rows_read` counts the run's read, look-back
        included.
        """
        window = context.partition_time_window
        began = time.perf_counter()
        store = warehouse.get()
        keys = partition_keys(config, window.start, window.end)
        figures: dict[str, dict[str, object]] = {}
        read = {"rows": 0, "seconds": 0.0}

        def build(chunk: list[str]) -> pl.DataFrame:
            frame = _build_chunk(store, config, chunk, read)
            described = column_schema(frame, {name: f"feature ({kind})"
                                              for name, kind in schema.items()})
            figures.update({key: {**frame_metadata(part), "dagster/column_schema": described}
                            for key, part in split_by_partition(frame, chunk).items()})
            return frame

        rows = store.partition_rows("raw_events", timestamp, window.start, window.end, PARTITION)
        store.replace_range_chunks(
            "features", [partial(build, chunk) for chunk in chunk_partitions(keys, rows)],
            timestamp, window.start, window.end)
        seconds = time.perf_counter() - began
        record_partition_metadata(context, figures)
        # Shared by every partition of the run.
        return dg.MaterializeResult(metadata={
            "run_partitions": span(keys),
            "feature_count": len(schema),
            "feature_types": dg.MetadataValue.json(schema),
            "run_rows_read": read["rows"],
            "read_seconds": round(read["seconds"], 3),
            "build_write_seconds": round(seconds - read["seconds"], 3),
        })

    return [features]


def _build_chunk(store: Warehouse, config: Config, keys: list[str], read: dict[str, float]
                 ) -> pl.DataFrame:
    """Features of the consecutive partitions `keys`: their rows plus the look-back's columns.

    Adds the rows read and the seconds spent reading to `read`.
    """
    timestamp = config.dataset.timestamp
    start, end = key_window(config, keys)
    began = time.perf_counter()
    raw = store.read_range("raw_events", timestamp, start, end)
    narrow = lookback_columns(config)
    if narrow:
        earlier = store.read_range("raw_events", timestamp,
                                   offset_partitions(config, start, -config.features.lookback),
                                   start, columns=narrow)
        raw = pl.concat([earlier, raw], how="diagonal")
    read["rows"] += raw.height
    read["seconds"] += time.perf_counter() - began
    return build_features(raw, config, keys)
