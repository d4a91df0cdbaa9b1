"""`ct run`: one synchronous, in-process pass of the pipeline against the project's instance."""

from __future__ import annotations

import json
import sys
import time
import warnings

import dagster as dg
import polars as pl

from ct_assets.definitions import build_definitions
from ct_assets.defs.automation import DETAIL_TAG
from ct_assets.defs.metadata import REASON_TAG
from ct_assets.lib.config import Config
from ct_assets.lib.ingest import FileCatalog, contiguous_ranges, landed_partitions
from ct_assets.lib.model_store import ModelStore
from ct_assets.lib.quarantine import Quarantine
from ct_assets.lib.reports import text_table
from ct_assets.lib.validation import PARTITION
from ct_assets.lib.warehouse import Warehouse

# Beta notices about backfill policies and partition mappings are noise for `ct` users.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


class _Runner:
    """Runs jobs in-process against one instance, printing progress and recording each run."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance, progress: bool):
        self.defs, self.instance, self.progress = defs, instance, progress
        self.runs: list[dict] = []

    def run(self, job_name: str, label: str, tags: dict[str, str]) -> bool:
        began = time.perf_counter()
        if self.progress:
            print(f"[{len(self.runs) + 1}] {job_name} {label}", end="", file=sys.stderr,
                  flush=True)
        result = self.defs.resolve_job_def(job_name).execute_in_process(
            instance=self.instance, resources=self.defs.resources, raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            tags=tags,
        )
        seconds = time.perf_counter() - began
        self.runs.append({"job": job_name, "what": label, "run_id": result.run_id,
                          "success": result.success, "seconds": round(seconds, 2)})
        if self.progress:
            print(f"  {'ok' if result.success else 'FAILED'} in {seconds:.1f}s",
                  file=sys.stderr)
        return result.success

    def partitioned(self, job_name: str, keys: set[str], ordered: list[str]) -> None:
        for first, last in contiguous_ranges(keys, ordered):
            self.run(job_name, f"{first} … {last}",
                     {RANGE_START_TAG: first, RANGE_END_TAG: last})


def run_pipeline(config: Config, *, rebuild: bool = False, progress: bool = True) -> dict:
    """One in-process pass of what the daemon does, in dependency order.

    1. every landed partition that is new or changed is ingested and featurised (`data_job`,
       one run and one scan per contiguous range);
    2. when no model is deployed yet, `retrain_job` trains, validates and promotes one
       (reason `initial`);
    3. partitions without predictions, drift reports or (once labels are known) performance
       are brought up to date (`scoring_job`, `drift_job`, `performance_job`);
    4. the retraining triggers (drift, performance and freshness sensors) are evaluated on the
       instance, and the retrain they ask for is run, tagged with its reason.

    Runs are recorded in the Dagster instance of `$DAGSTER_HOME`, so the UI shows them like
    daemon-launched runs.

    Returns:
        A summary: the runs, failures, per-partition row counts and the deployed model.
    """
    defs = build_definitions(config)
    partitions_def = defs.resolve_job_def("data_job").partitions_def
    assert partitions_def is not None
    store = ModelStore(config.models_dir)
    with dg.DagsterInstance.get() as instance:
        runner = _Runner(defs, instance, progress)
        landed, pending = landed_partitions(config, FileCatalog(config.landing_catalog_path))
        ordered = partitions_def.get_partition_keys()
        done = _materialized(instance, "raw_events")
        ingest = landed if rebuild else pending | (landed - done)
        runner.partitioned("data_job", ingest, ordered)
        fresh_labels: set[str] = set()
        if config.dataset.labels is not None:
            arrived, changed = landed_partitions(
                config, FileCatalog(config.labels_catalog_path), labels=True)
            fresh_labels = arrived if rebuild else changed | (
                arrived - _materialized(instance, "labels"))
            runner.partitioned("labels_job", fresh_labels, ordered)
        if store.deployed() is None and landed:
            runner.run("retrain_job", "(no model deployed yet)", {REASON_TAG: "initial"})
        if store.deployed() is not None:
            _monitor(runner, config, landed, ingest, ordered, fresh_labels)
            triggered = evaluate_triggers(defs, instance, config)
            if triggered:
                request = triggered[0]  # one retrain per pass answers every pending trigger
                reason = request.tags[REASON_TAG]
                runner.run("retrain_job", f"({reason}: {request.tags.get(DETAIL_TAG, '')})",
                           dict(request.tags))
    return {"landed_partitions": len(landed), "runs": runner.runs,
            "failed_runs": sum(not run["success"] for run in runner.runs),
            "partitions": partition_summary(config, sorted(landed)),
            "deployed": store.deployed(),
            "sample_predictions": sample_predictions(config)}


def _materialized(instance: dg.DagsterInstance, asset: str) -> set[str]:
    return set(instance.get_materialized_partitions(dg.AssetKey(asset)))


def _monitor(runner: _Runner, config: Config, landed: set[str], ingested: set[str],
             ordered: list[str], fresh_labels: set[str]) -> None:
    """Score, check drift and measure performance where it is missing or out of date.

    A partition's performance is measured once its labels are known (the partition
    `label_delay` later has landed: its data, or with `dataset.labels` its labels), and
    measured again when its rows or labels changed.
    """
    instance = runner.instance
    fresh = ingested & landed
    for job, asset in (("scoring_job", "predictions"), ("drift_job", "drift_report")):
        runner.partitioned(job, (landed - _materialized(instance, asset)) | fresh, ordered)
    delay = config.triggers.label_delay
    separate = config.dataset.labels is not None
    clock = _materialized(instance, "labels") if separate else landed
    position = {key: index for index, key in enumerate(ordered)}

    def window(key: str) -> set[str]:  # the partitions whose labels count for `key`
        return set(ordered[position[key]:position[key] + delay + 1])

    labelled = {key for key in landed if key in position and position[key] + delay < len(ordered)
                and ordered[position[key] + delay] in clock}
    measured = _materialized(instance, "model_performance")
    relabelled = {key for key in labelled if window(key) & fresh_labels}
    runner.partitioned("performance_job",
                       (labelled - measured) | (fresh & labelled) | relabelled, ordered)
    if config.training.strategy == "online":  # learn each newly labelled partition once
        runner.partitioned("online_job", labelled - _materialized(instance, "model_update"),
                           ordered)


def evaluate_triggers(defs: dg.Definitions, instance: dg.DagsterInstance, config: Config
                      ) -> list[dg.RunRequest]:
    """Evaluate the retrain sensors that `triggers` switches on, as the daemon would.

    Their cursors and the run keys already launched are kept in `<storage>/ct_run_state.json`,
    so a pass never answers the same event twice.
    """
    state_path = config.storage_dir / "ct_run_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    cursors, launched = state.get("cursors", {}), set(state.get("run_keys", []))
    switched = {"drift_sensor": config.triggers.drift,
                "performance_sensor": config.triggers.performance,
                "freshness_sensor": config.triggers.freshness}
    requests = []
    for name, enabled in switched.items():
        if not enabled:
            continue
        context = dg.build_sensor_context(instance=instance, cursor=cursors.get(name),
                                          definitions=defs)
        result = defs.resolve_sensor_def(name).evaluate_tick(context)
        if result.cursor is not None:
            cursors[name] = result.cursor
        for request in result.run_requests or []:
            if request.run_key not in launched:
                launched.add(request.run_key)
                requests.append(request)
    state_path.write_text(json.dumps({"cursors": cursors, "run_keys": sorted(launched)}))
    return requests


def sample_predictions(config: Config, rows: int = 5) -> list[dict]:
    """A few of the latest predictions, for the summary."""
    warehouse = Warehouse(config.warehouse_path)
    if not warehouse.table_exists("predictions"):
        return []
    frame = warehouse.query(
        f'SELECT * EXCLUDE ({PARTITION}) FROM predictions '
        f'ORDER BY "{config.dataset.timestamp}" DESC LIMIT {int(rows)}')
    return frame.to_dicts()


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
    """The summary as text: runs, one line per partition, totals, the deployed model."""
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
    deployed = summary.get("deployed")
    if deployed:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in deployed.get("metrics", {}).items()
                            if isinstance(v, float))
        lines += ["", f"deployed model: {deployed['version']} ({deployed['reason']}, promoted "
                      f"{deployed['promoted_at']})", f"holdout metrics: {metrics}"]
    else:
        lines += ["", "deployed model: none"]
    if summary.get("sample_predictions"):
        sample = summary["sample_predictions"]
        lines += ["", "latest predictions:", text_table(sample, list(sample[0]))]
    return "\n".join(lines)
