"""`ct run`: one synchronous, in-process pass of the pipeline against the project's instance."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import polars as pl

from ct_assets.definitions import build_definitions
from ct_assets.defs.automation import DETAIL_TAG, GATE_CHECK
from ct_assets.defs.metadata import CHANGE_POINT_TAG, REASON_TAG
from ct_assets.defs.serving import SERVED_JOB
from ct_assets.defs.training import SKIPPED_KEY
from ct_assets.lib.config import Config
from ct_assets.lib.ingest import FileCatalog, contiguous_ranges, landed_partitions
from ct_assets.lib.model_store import ModelStore
from ct_assets.lib.progress import Progress
from ct_assets.lib.quarantine import Quarantine
from ct_assets.lib.reports import text_table
from ct_assets.lib.served import pending_partitions
from ct_assets.lib.triggers import TriggerLog
from ct_assets.lib.validation import PARTITION
from ct_assets.lib.warehouse import Warehouse, quote_identifier

# (Dagster's beta notices are silenced once, in ct_assets/defs/__init__.py.)

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


# Dagster's own console lines (a blocking check's failure comes with a stack trace) are off by
# default: the runner prints each run's outcome itself. `CT_LOG_LEVEL=INFO` brings them back.
LOG_LEVEL = os.environ.get("CT_LOG_LEVEL", "CRITICAL").upper()


class _Runner:
    """Runs jobs in-process against one instance, showing progress and recording each run."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance, progress: Progress,
                 ordered: list[str]):
        self.defs, self.instance, self.progress = defs, instance, progress
        self.ordered = ordered
        self.runs: list[dict] = []

    def run(self, job_name: str, label: str, tags: dict[str, str],
            assets: tuple[str, ...] | None = None) -> dict:
        """Run one job, or only its `assets`.

        Returns:
            Its record: `outcome` ok, skipped, rejected (the gate said no) or failed.
        """
        began = time.perf_counter()
        self.progress.start(f"{job_name} {label}")
        result = self.defs.resolve_job_def(job_name).execute_in_process(
            instance=self.instance, resources=self.defs.resources, raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": LOG_LEVEL}}}},
            tags=tags,
            asset_selection=[dg.AssetKey(asset) for asset in assets] if assets else None,
        )
        seconds = time.perf_counter() - began
        record = {"job": job_name, "what": label, "run_id": result.run_id,
                  "success": result.success, "seconds": round(seconds, 2), **run_outcome(result)}
        self.runs.append(record)
        self.progress.done({"ok": "ok", "skipped": "SKIPPED", "rejected": "REJECTED",
                            "failed": "FAILED"}[record["outcome"]])
        if record.get("message"):
            self.progress.say(f"    {record['message']}")
        return record

    def partitioned(self, job_name: str, keys: set[str],
                    assets: tuple[str, ...] | None = None) -> None:
        """One run of `job_name` (of its `assets`) per contiguous range of `keys`."""
        for first, last in contiguous_ranges(keys, self.ordered):
            self.run(job_name, f"{first} … {last}",
                     {RANGE_START_TAG: first, RANGE_END_TAG: last}, assets)

    def expect(self, planned: list[tuple[str, set[str]]], more: int = 0) -> None:
        """The total: the runs done, those `planned` (one per contiguous range), and `more`."""
        self.progress.total = len(self.runs) + more + sum(
            len(contiguous_ranges(keys, self.ordered)) for _, keys in planned)


def run_pipeline(config: Config, *, rebuild: bool = False, progress: bool = True) -> dict:
    """One in-process pass of what the daemon does, in dependency order.

    1. every landed partition whose files differ from those its last ingestion took in (the
       file catalog's record, which the landing and label sensors read too, so the daemon
       does not ingest again what this pass did) is ingested and featurised (`data_job`, one
       run and one scan per contiguous range; once a model is deployed, `landing_job`, which
       scores them and judges their drift in the same run, as `landing_sensor` does); rows
       `ct serve` answered and not yet taken in are (`served_job`), and labels that landed
       (`labels_job`);
    2. when no model is deployed yet, `retrain_job` trains, validates and promotes one
       (reason `initial`);
    3. partitions without predictions, drift reports or (once labels are known) performance
       are brought up to date (`scoring_job`, `drift_job`, `performance_job`);
    4. the retraining triggers (drift, performance and freshness sensors) are evaluated on the
       instance, and the retrain they ask for is run, tagged with its reason; a model it
       promotes re-scores the latest partition when rows landed in it (and judges its drift).

    Runs are recorded in the Dagster instance of `$DAGSTER_HOME`, so the UI shows them like
    daemon-launched runs. With `progress`, each run's line goes to stderr (under a bar on a
    terminal, `lib.progress`). The total is known before the first run: steps 1 to 3, the
    monitoring planned as if ingestion and the first model succeed (and counted again when it
    starts); a retrain the triggers ask for is added when they are evaluated.

    Returns:
        A summary: the runs, failures, per-partition row counts and the deployed model.
    """
    defs = build_definitions(config)
    partitions_def = defs.resolve_job_def("data_job").partitions_def
    assert partitions_def is not None
    store = ModelStore(config.models_dir)
    with dg.DagsterInstance.get() as instance, \
            Progress(enabled=progress, keep=True) as shown:
        ordered = partitions_def.get_partition_keys()
        runner = _Runner(defs, instance, shown, ordered)
        landed, pending = landed_partitions(config, FileCatalog(config.landing_catalog_path))
        done = _materialized(instance, "raw_events")
        ingest = landed if rebuild else pending | (landed - done)
        # Late rows change the recent means of the next `features.lookback` partitions.
        following = partitions_after(ingest, ordered, config.features.lookback) & (done - ingest)
        served = (pending_partitions(config.serving_dir, config) & set(ordered)  # rows `ct serve`
                  if store.deployed() is not None else set())  # answered, before their labels
        fresh_labels = _fresh_labels(config, instance, rebuild)
        # With a model deployed, what lands is scored (and its drift judged) in the run that
        # ingests it, as `landing_sensor` does: one run per range instead of three.
        scored_on_landing = landing_monitors(config) if store.deployed() is not None else ()
        landing_job = "landing_job" if scored_on_landing else "data_job"
        ingestion = [(landing_job, ingest), ("features_job", following), (SERVED_JOB, served),
                     ("labels_job", fresh_labels)]
        initial = store.deployed() is None and bool(landed)
        taken_in = {"labels": fresh_labels, "served_predictions": served,  # by `ingestion`
                    **{asset: ingest for asset in scored_on_landing}}

        def after_ingestion(asset: str) -> set[str]:
            return _materialized(instance, asset) | taken_in.get(asset, set())

        scored = ingest if scored_on_landing else set()
        planned = (_monitoring(config, after_ingestion, landed, ingest | following, ordered,
                               fresh_labels, scored)
                   if store.deployed() is not None or initial else [])
        runner.expect(ingestion + planned, more=int(initial))
        for job, keys in ingestion:
            runner.partitioned(job, keys, ("raw_events", "features", *scored_on_landing)
                               if job == "landing_job" else None)
        if initial:
            runner.run("retrain_job", "(no model deployed yet)", {REASON_TAG: "initial"})
        if store.deployed() is None:
            runner.expect([])  # no model (rejected, or it failed): nothing to monitor
        else:
            monitoring = _monitoring(config, lambda asset: _materialized(instance, asset),
                                     landed, ingest | following, ordered, fresh_labels, scored)
            runner.expect(monitoring)
            for job, keys in monitoring:
                runner.partitioned(job, keys)
            shown.start("evaluating the retrain triggers")
            triggers = evaluate_triggers(defs, instance, config)
            if triggers.requests:
                runner.expect([], more=1)
                request = triggers.requests[0]  # one retrain per pass: it trains on every
                reason = request.tags[REASON_TAG]  # landed partition, so it answers them all
                detail = request.tags.get(DETAIL_TAG, "")
                before = store.deployed()
                record = runner.run(
                    "retrain_job", f"({reason}: {detail[:90]}{'…' if len(detail) > 90 else ''})",
                    dict(request.tags))
                if record["outcome"] != "failed":  # a crash leaves the events pending
                    triggers.commit(answered_by=record["run_id"])
                if store.deployed() != before and ordered and ordered[-1] in landed:
                    # A new model re-scores (and re-judges) the latest partition, as the
                    # automation sensor does after a promotion (`follows_upstream`).
                    runner.expect([], more=1)
                    runner.partitioned("landing_job", {ordered[-1]}, landing_monitors(config))
            else:
                triggers.commit()
    return {"landed_partitions": len(landed), "runs": runner.runs,
            "failed_runs": sum(run["outcome"] == "failed" for run in runner.runs),
            "rejected": [run["message"] for run in runner.runs if run["outcome"] == "rejected"],
            "skipped": [run["message"] for run in runner.runs if run["outcome"] == "skipped"],
            "partitions": partition_summary(config, sorted(landed)),
            "deployed": store.deployed(),
            "sample_predictions": sample_predictions(config)}


def landing_monitors(config: Config) -> tuple[str, ...]:
    """What a deployed model makes of newly landed partitions, in the run that ingests them.

    Their scores and, unless drift is judged on served rows (`drift.on: served`), their drift.
    """
    return ("predictions", "drift_report") if config.drift.on == "landed" else ("predictions",)


def partitions_after(keys: set[str], ordered: list[str], count: int) -> set[str]:
    """The `count` partitions after each of `keys` (in `ordered`), which read them."""
    position = {key: index for index, key in enumerate(ordered)}
    return {ordered[index] for key in keys if key in position
            for index in range(position[key] + 1, min(position[key] + count + 1, len(ordered)))}


def _materialized(instance: dg.DagsterInstance, asset: str) -> set[str]:
    return set(instance.get_materialized_partitions(dg.AssetKey(asset)))


def _fresh_labels(config: Config, instance: dg.DagsterInstance, rebuild: bool) -> set[str]:
    """Partitions whose labels landed or changed since `labels` took them in (all: `rebuild`)."""
    if config.dataset.labels is None:
        return set()
    arrived, changed = landed_partitions(config, FileCatalog(config.labels_catalog_path),
                                         labels=True)
    return arrived if rebuild else changed | (arrived - _materialized(instance, "labels"))


def _monitoring(config: Config, materialized: Callable[[str], set[str]], landed: set[str],
                ingested: set[str], ordered: list[str], fresh_labels: set[str],
                scored: set[str]) -> list[tuple[str, set[str]]]:
    """The monitoring runs due: scoring, drift and performance where missing or out of date.

    A partition's performance is measured once its labels are known (the partition
    `label_delay` later has landed: its data, or with `dataset.labels` its labels), and
    measured again when its rows or labels changed. `materialized(asset)` is the partitions
    of `asset` materialized (before ingestion runs: those they will add, to plan the total);
    `scored` the ingested partitions `landing_job` scored and judged in the run ingesting them.

    Returns:
        (job, partitions) in the order to run them.
    """
    fresh = ingested & landed
    # With `drift.on: served`, drift is judged on served rows, as `served_job` takes them in.
    jobs = [("scoring_job", "predictions")] + (
        [("drift_job", "drift_report")] if config.drift.on == "landed" else [])
    planned = [(job, (landed - materialized(asset)) | (fresh - scored)) for job, asset in jobs]
    delay = config.triggers.label_delay
    separate = config.dataset.labels is not None
    clock = materialized("labels") if separate else landed
    position = {key: index for index, key in enumerate(ordered)}

    def window(key: str) -> set[str]:  # the partitions whose labels count for `key`
        return set(ordered[position[key]:position[key] + delay + 1])

    # What performance is measured on: landed partitions, or those `ct serve` answered rows in.
    scored = materialized("served_predictions") if config.drift.on == "served" else landed
    labelled = {key for key in scored if key in position and position[key] + delay < len(ordered)
                and ordered[position[key] + delay] in clock}
    measured = materialized("model_performance")
    relabelled = {key for key in labelled if window(key) & fresh_labels}
    planned.append(("performance_job", (labelled - measured) | (fresh & labelled) | relabelled))
    if config.training.strategy == "online":  # learn each newly labelled partition once
        planned.append(("online_job", labelled - materialized("model_update")))
    return planned


def run_outcome(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    """What a run came to: `ok`, `skipped`, `rejected` or `failed`, and a message.

    `skipped`: a retrain that trained nothing, its data being the champion's (the reason);
    `rejected`: the gate refused the candidate and nothing else failed, a normal outcome of a
    retrain; `failed`: anything else that did not succeed, with each failed step's error.
    """
    if result.success:
        observed = [event.asset_observation_data.asset_observation
                    for event in result.get_asset_observation_events()]
        skipped = [observation.metadata[SKIPPED_KEY].value for observation in observed
                   if observation.asset_key == dg.AssetKey("training_set")
                   and SKIPPED_KEY in observation.metadata]
        if skipped:
            return {"outcome": "skipped", "message": str(skipped[-1])}
        return {"outcome": "ok"}
    refused = [evaluation for evaluation in result.get_asset_check_evaluations()
               if evaluation.asset_check_key == GATE_CHECK and not evaluation.passed]
    failures = result.get_step_failure_events()
    only_gate = all(event.step_key == "validation_report" and event.step_failure_data.error
                    and event.step_failure_data.error.cls_name == "DagsterAssetCheckFailedError"
                    for event in failures)
    if refused and only_gate:
        metadata = refused[-1].metadata
        version = metadata["candidate_version"].value if "candidate_version" in metadata \
            else "?"
        verdict = str(metadata["verdict"].value if "verdict" in metadata
                      else "refused by the gate").removeprefix("rejected: ")
        return {"outcome": "rejected", "candidate": str(version),
                "message": f"candidate {version} rejected: {verdict}"}
    errors = []
    for event in failures:
        error = event.step_failure_data.error
        while error is not None and error.cause is not None:  # the user's error, not the
            error = error.cause  # framework's wrapper around it
        message = " ".join(str(error.message).split()) if error else "no error recorded"
        errors.append(f"step {event.step_key}: {message}")
    return {"outcome": "failed",
            "message": "; ".join(errors) or f"run {result.run_id} failed (see its logs in the "
                                             "Dagster UI)"}


class TriggerPass:
    """The retrains the trigger sensors ask for in one pass, and their state to keep.

    The state (sensor cursors and the run keys answered, `<storage>/ct_run_state.json`) is
    written only by `commit`: when the retrain ran to a verdict, or nothing was asked. A
    retrain that crashed leaves the events pending, so the next pass asks again.
    """

    def __init__(self, config: Config, requests: list[tuple[str, dg.RunRequest]],
                 cursors: dict, answered: set[str]) -> None:
        self.config, self.sensors = config, [name for name, _ in requests]
        self.requests = [request for _, request in requests]
        self.cursors, self.answered = cursors, answered

    def commit(self, answered_by: str | None = None) -> None:
        """Keep the sensors' cursors and mark the requests answered (by run `answered_by`)."""
        log = TriggerLog(self.config.storage_dir)
        for sensor, request in zip(self.sensors[1:], self.requests[1:], strict=True):
            log.record(sensor, "skipped",
                       str(request.tags.get(CHANGE_POINT_TAG, "?")),
                       f"{request.run_key}: answered by retrain run {answered_by} "
                       f"({self.requests[0].run_key}), one retrain per pass")
        answered = self.answered | {request.run_key for request in self.requests
                                    if request.run_key}
        state_path(self.config).write_text(json.dumps(
            {"cursors": self.cursors, "run_keys": sorted(answered)}))


def state_path(config: Config) -> Path:
    """Where `ct run` keeps its sensors' cursors and the run keys it answered."""
    return config.storage_dir / "ct_run_state.json"


def evaluate_triggers(defs: dg.Definitions, instance: dg.DagsterInstance, config: Config
                      ) -> TriggerPass:
    """Evaluate the retrain sensors that `triggers` switches on, as the daemon would.

    Their cursors and the run keys already answered are kept in `<storage>/ct_run_state.json`
    (once the pass commits), so a pass never answers the same event twice.
    """
    path = state_path(config)
    state = json.loads(path.read_text()) if path.exists() else {}
    cursors, answered = dict(state.get("cursors", {})), set(state.get("run_keys", []))
    switched = {"drift_sensor": config.triggers.drift,
                "performance_sensor": config.triggers.performance,
                "freshness_sensor": config.triggers.freshness}
    requests: list[tuple[str, dg.RunRequest]] = []
    for name, enabled in switched.items():
        if not enabled:
            continue
        context = dg.build_sensor_context(instance=instance, cursor=cursors.get(name),
                                          definitions=defs)
        result = defs.resolve_sensor_def(name).evaluate_tick(context)
        if result.cursor is not None:
            cursors[name] = result.cursor
        requests += [(name, request) for request in result.run_requests or []
                     if request.run_key not in answered]
    return TriggerPass(config, requests, cursors, answered)


def sample_predictions(config: Config, rows: int = 5) -> list[dict]:
    """A few of the latest predictions, for the summary."""
    warehouse = Warehouse(config.warehouse_path)
    if not warehouse.table_exists("predictions"):
        return []
    frame = warehouse.query(
        f"SELECT * EXCLUDE ({quote_identifier(PARTITION)}) FROM predictions "
        f"ORDER BY {quote_identifier(str(config.dataset.timestamp))} DESC LIMIT ?", [int(rows)])
    return frame.to_dicts()


def partition_summary(config: Config, keys: list[str]) -> list[dict]:
    """Rows ingested, quarantined and featurised per partition."""
    warehouse = Warehouse(config.warehouse_path)
    counts: dict[str, dict[str, int]] = {key: {} for key in keys}
    for table in ("raw_events", "features"):
        if warehouse.table_exists(table):
            frame = warehouse.query(f"SELECT {quote_identifier(PARTITION)}, count(*) AS n "
                                    f"FROM {quote_identifier(table)} GROUP BY 1")
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
    lines += summary.get("rejected", []) + summary.get("skipped", [])
    lines += [f"run {run['run_id']} ({run['job']} {run['what']}) failed: {run['message']}"
              for run in summary["runs"] if run["outcome"] == "failed"]
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
