"""`ct run`: one synchronous, in-process pass of the pipeline against the project's instance."""

from __future__ import annotations

import sys
import time
import warnings

import dagster as dg
import polars as pl

from ct_assets.definitions import build_definitions
from ct_assets.lib.config import Config
from ct_assets.lib.ingest import FileCatalog, landed_partitions
from ct_assets.lib.quarantine import Quarantine
from ct_assets.lib.reports import text_table
from ct_assets.lib.validation import PARTITION
from ct_assets.lib.warehouse import Warehouse

# Beta notices about backfill policies and partition mappings are noise for `ct` users.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


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


def run_pipeline(config: Config, *, rebuild: bool = False, progress: bool = True) -> dict:
    """Ingest landed partitions that are new or changed and build their features.

    Each contiguous range of partitions is one run of `data_job` (one scan), recorded in the
    Dagster instance of `$DAGSTER_HOME`, so the UI shows it like a daemon-launched run.

    Returns:
        A summary: the ranges run, failures, and per-partition row counts.
    """
    defs = build_definitions(config)
    job = defs.resolve_job_def("data_job")
    partitions_def = job.partitions_def
    assert partitions_def is not None
    with dg.DagsterInstance.get() as instance:
        landed, pending = landed_partitions(config, FileCatalog(config.landing_catalog_path))
        done = instance.get_materialized_partitions(dg.AssetKey("raw_events"))
        ordered = partitions_def.get_partition_keys()
        wanted = landed if rebuild else pending | (landed - done)
        ranges = contiguous_ranges(wanted, ordered)
        failed = 0
        runs = []
        for number, (first, last) in enumerate(ranges, start=1):
            began = time.perf_counter()
            if progress:
                print(f"[{number}/{len(ranges)}] data_job {first} … {last}", end="",
                      file=sys.stderr, flush=True)
            result = job.execute_in_process(
                instance=instance, resources=defs.resources, raise_on_error=False,
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
                tags={RANGE_START_TAG: first, RANGE_END_TAG: last},
            )
            seconds = time.perf_counter() - began
            failed += not result.success
            runs.append({"run_id": result.run_id, "first": first, "last": last,
                         "success": result.success, "seconds": round(seconds, 2)})
            if progress:
                print(f"  {'ok' if result.success else 'FAILED'} in {seconds:.1f}s",
                      file=sys.stderr)
    return {"landed_partitions": len(landed), "runs": runs, "failed_runs": failed,
            "partitions": partition_summary(config, sorted(landed))}


def partition_summary(config: Config, keys: list[str]) -> list[dict]:
    """Rows ingested, quarantined and featurised per partition."""
    warehouse = Warehouse(config.warehouse_path)
    counts: dict[str, dict[str, int]] = {key: {} for key in keys}
    for table in ("raw_events", "features"):
        if warehouse.table_exists(table):
            frame = warehouse.query(f"SELECT {PARTITION}, count(*) AS n FROM {table} GROUP BY 1")
            for key, count in frame.iter_rows():
                counts.setdefault(key, {})[table] = count
    rejected = Quarantine(config.quarantine_dir).rejected_rows()
    for key, count in rejected.group_by(PARTITION).len().drop_nulls().iter_rows():
        counts.setdefault(key, {})["quarantined"] = count
    return [{"partition": key, "rows": c.get("raw_events", 0),
             "quarantined": c.get("quarantined", 0), "features": c.get("features", 0)}
            for key, c in sorted(counts.items())]


def format_summary(summary: dict) -> str:
    """The summary as text: runs, then one line per partition, then totals."""
    partitions = summary["partitions"]
    totals = pl.DataFrame(partitions) if partitions else None
    lines = [f"{summary['landed_partitions']} partitions landed; "
             f"{len(summary['runs'])} run(s), {summary['failed_runs']} failed"]
    if partitions:
        lines += ["", text_table(partitions, ["partition", "rows", "quarantined", "features"])]
    if totals is not None:
        lines.append(
            f"\ntotal: {totals['rows'].sum()} rows ingested, {totals['quarantined'].sum()} "
            f"quarantined, {totals['features'].sum()} feature rows"
        )
    return "\n".join(lines)
