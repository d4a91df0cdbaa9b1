"""Serving stage: the rows `ct serve` scored, taken into the warehouse; the sensor that asks.

`served_predictions` holds, per partition, every row the server answered (its inputs, score,
decision, model version and id), read from the server's request log. With `drift.on: served`
the drift of live traffic is judged on it (`drift_report` reads it instead of `features`), and
`model_performance` measures it against the labels sent back through `POST /feedback`.
"""

import hashlib

import dagster as dg
import polars as pl

from ct_assets.defs.automation import RANGE_END_TAG, RANGE_START_TAG, SENSOR_INTERVAL_SECONDS
from ct_assets.defs.metadata import record_partition_metadata
from ct_assets.defs.resources import WarehouseResource
from ct_assets.defs.runs import holds_warehouse
from ct_assets.lib.config import Config
from ct_assets.lib.ingest import contiguous_ranges, partition_keys
from ct_assets.lib.partition_figures import span
from ct_assets.lib.served import (
    RECEIVED_AT,
    catalog,
    log_files,
    pending_partitions,
    read_served,
    record_ingested,
)
from ct_assets.lib.validation import PARTITION

SERVED_JOB = "served_job"


def served_assets(config: Config) -> list[str]:
    """What a run of new request-log rows materializes: the rows, and their drift if judged."""
    return ["served_predictions", *(["drift_report"] if config.drift.on == "served" else [])]


def build_serving_assets(config: Config, partitions_def: dg.PartitionsDefinition
                         ) -> list[dg.AssetsDefinition]:
    """The `served_predictions` asset."""

    @dg.asset(
        partitions_def=partitions_def, backfill_policy=dg.BackfillPolicy.single_run(),
        deps=["deployed_model"], group_name="serving", kinds={"duckdb", "polars"},
        pool="duckdb", metadata={"dagster/table_name": "warehouse.main.served_predictions"},
    )
    @holds_warehouse
    def served_predictions(context: dg.AssetExecutionContext, warehouse: WarehouseResource
                           ) -> dg.MaterializeResult:
        """Rows `ct serve` answered, by the partition they were received in.

        Read from the server's request log (`<storage.dir>/serving/requests/`, complete files
        only): inputs, score, decision, model version and row id (the dataset's id column, so
        labels sent back by `POST /feedback` join them). Each partition's materialization
        carries its rows and the versions that answered; the files taken in are recorded
        (`serving/ingested.json`), so the sensor asks only for rows not taken in yet.
        """
        window = context.partition_time_window
        keys = partition_keys(config, window.start, window.end)
        record = catalog(config.serving_dir, config)  # the files this run reads, and records
        rows = read_served(config.serving_dir, config, window.start, window.end, keys, record)
        warehouse.get().replace_range("served_predictions", rows, RECEIVED_AT, window.start,
                                      window.end)
        record_ingested(config.serving_dir, keys, record)
        record_partition_metadata(context, {key: _figures(rows.filter(
            pl.col(PARTITION) == key)) for key in keys})
        return dg.MaterializeResult(metadata={"run_partitions": span(keys),
                                              "run_rows": rows.height,
                                              "request_log_files": len(record)})

    return [served_predictions]


def _figures(rows: pl.DataFrame) -> dict[str, object]:
    versions = rows["model_version"].unique().sort().to_list() if rows.height else []
    return {"dagster/row_count": rows.height, "rows": rows.height,
            "requests": rows["request_id"].n_unique() if rows.height else 0,
            "model_versions": ", ".join(versions) or "none",
            "score_mean": float(rows["score"].mean()) if rows.height else None}


def build_serving_sensor(config: Config, partitions_def: dg.PartitionsDefinition
                         ) -> dg.SensorDefinition:
    """The sensor that takes new request-log rows in (runs `served_job`)."""

    @dg.sensor(job_name=SERVED_JOB, minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
               default_status=dg.DefaultSensorStatus.RUNNING)
    def serving_log_sensor(context: dg.SensorEvaluationContext
                           ) -> dg.SensorResult | dg.SkipReason:
        """Request-log rows not taken in yet → `served_predictions` for their partitions.

        With `drift.on: served` the same run judges their drift, so drift in what the
        application sends reaches `drift_sensor` like drift in landed files. The run key names
        the files and partitions, so a retried tick starts no second run and a new file does.
        """
        ordered = partitions_def.get_partition_keys()
        pending = pending_partitions(config.serving_dir, config)
        inside = pending & set(ordered)
        if pending - inside:
            context.log.warning(f"request-log rows of {len(pending - inside)} partition(s) "
                                f"outside the partitions definition (e.g. "
                                f"{min(pending - inside)}) are not taken in")
        if not inside:
            return dg.SkipReason(f"every request-log row under {config.serving_dir} is taken "
                                 "in")
        files = ",".join(path.name for path in log_files(config.serving_dir))
        requests = []
        for first, last in contiguous_ranges(inside, ordered):
            digest = hashlib.sha256(f"{files}|{first}|{last}".encode()).hexdigest()[:16]
            requests.append(dg.RunRequest(
                run_key=f"served:{first}:{last}:{digest}",
                asset_selection=[dg.AssetKey(asset) for asset in served_assets(config)],
                tags={RANGE_START_TAG: first, RANGE_END_TAG: last, "ct/trigger": "served"}))
        return dg.SensorResult(run_requests=requests)

    return serving_log_sensor
