"""Features stage: `raw_events` → `features` in DuckDB, with a look-back over earlier partitions."""

import time

import dagster as dg

from ct_assets.defs.automation import follows_upstream
from ct_assets.defs.metadata import column_schema, frame_metadata, record_partition_metadata
from ct_assets.defs.resources import WarehouseResource
from ct_assets.lib.config import Config
from ct_assets.lib.features import build_features, feature_schema, offset_partitions
from ct_assets.lib.ingest import partition_keys
from ct_assets.lib.partition_figures import span, split_by_partition


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
    def features(context: dg.AssetExecutionContext,
                 warehouse: WarehouseResource) -> dg.MaterializeResult:
        """Model inputs of each partition: typed columns, cyclical time, recent-mean ratios.

        Reads `raw_events` of the partition and of the `features.lookback` partitions before
        it (never the whole history) and replaces the partition in one transaction. Each
        partition's materialization carries its own rows and preview; `run_rows_read` counts
        the run's read, look-back included.
        """
        window = context.partition_time_window
        began = time.perf_counter()
        store = warehouse.get()
        history_start = offset_partitions(config, window.start, -lookback)
        raw = store.read_range("raw_events", timestamp, history_start, window.end)
        keys = partition_keys(config, window.start, window.end)
        frame = build_features(raw, config, keys)
        built = time.perf_counter()
        store.replace_range("features", frame, timestamp, window.start, window.end)
        written = time.perf_counter()
        described = column_schema(frame, {name: f"feature ({kind})"
                                          for name, kind in schema.items()})
        record_partition_metadata(context, {
            key: {**frame_metadata(rows), "dagster/column_schema": described}
            for key, rows in split_by_partition(frame, keys).items()})
        # Shared by every partition of the run.
        return dg.MaterializeResult(metadata={
            "run_partitions": span(keys),
            "feature_count": len(schema),
            "feature_types": dg.MetadataValue.json(schema),
            "run_rows_read": raw.height,
            "build_seconds": round(built - began, 3),
            "write_seconds": round(written - built, 3),
        })

    return [features]
