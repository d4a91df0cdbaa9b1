"""Concurrency under load: a manual retrain, a 60-partition backfill and new files, at once.

The real daemon (`dagster-daemon run` on a `dagster api grpc` code server, `live.Daemon`; the
shipped `dagster.yaml`: run queue of 4, pool `duckdb` limit 1, tag `ct/retrain` limit 1) on a
real DuckDB file and a SQLite instance. The history (62 simulated days of 250 rows) is ingested
and a first model trained in-process before the daemon starts (`ct simulate`, then `data_job`
and `retrain_job` as `ct run` runs them). Then, within seconds of each other, as a user would:

- three new days land (`ct simulate`), which `landing_sensor` picks up;
- a backfill of the history's monitoring (`predictions`, `drift_report`, `model_performance`)
  over 60 partitions, added to the instance as the UI's "Materialize…" adds one
  (`PartitionBackfill.from_asset_partitions`) and executed by the daemon's backfill daemon;
- once the landing run is queued, a manual retrain through the run queue:
  `dagster job launch -j retrain_job` with the tag `ct/reason=manual` (`dg launch --job`,
  which the README shows, executes in its own process and bypasses the queue);

and the automation and trigger sensors do whatever that leads them to. Once no run has been
queued or running and no backfill in progress for `QUIET_SECONDS`: no DuckDB lock error in any
run's events, the run workers' compute logs or the daemon's log; no two steps of pool `duckdb`
overlapped; the backfill materialized every partition of every asset it targeted; each
promotion in the model store's history is of the candidate trained, validated (sealed verdict)
and promoted by one and the same run, whose `validation_report` judged that very version, and
the manual retrain promoted its own; every row of the new days is in the warehouse; every run
succeeded (runs may wait queued: the queue holds a run whose first step's pool is full). The
figures (runs by job, longest queue wait, most runs at once, wall time, lock errors,
promotions, gaps in Dagster's partition status cache) are printed (`-s`) and recorded as
properties.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.utils import make_new_backfill_id

from ct_assets import cli
from ct_assets.definitions import build_definitions
from ct_assets.defs.metadata import REASON_TAG
from ct_assets.lib.model_store import ModelStore
from ct_assets.lib.validation import PARTITION
from ct_assets_tests.live import BIN, ROOT, DaemonProject

INTERVAL = 5  # seconds between two ticks of each sensor
HISTORY_DAYS, NEW_DAYS, BACKFILL_DAYS, ROWS_PER_DAY = 62, 3, 60, 250
BACKFILLED = ("predictions", "drift_report", "model_performance")
SETTLE_TIMEOUT = 600
QUIET_SECONDS = 4 * INTERVAL  # a few automation ticks with nothing to do
BACKFILL_TAG = "dagster/backfill"
# DuckDB's "IO Error: Could not set lock on file …: Conflicting lock is held in …".
DUCKDB_LOCK = re.compile(r"could not set lock|conflicting lock", re.IGNORECASE)
SQLITE_LOCK = re.compile(r"database is locked", re.IGNORECASE)
# A run waits in the queue from RUN_ENQUEUED until the coordinator launches it (RUN_STARTING).
QUEUED = (dg.DagsterEventType.RUN_ENQUEUED, dg.DagsterEventType.RUN_STARTING)


class Project(DaemonProject):
    """A temporary simulator project, its instance and the daemon running on it."""

    def __init__(self, root: Path, first_day: dt.date):
        super().__init__(root, {
            "dataset": {"source": "simulator"},
            "partitions": {"start": first_day.isoformat()},
            "training": {"window": 10, "holdout": 3},
            # The test is about concurrency, not about the gate's noise on 250-row days.
            "gate": {"max_regression": 1.0},
            "storage": {"dir": str(root / "storage")},
        }, INTERVAL)


def origin(run: dg.DagsterRun) -> str:
    """Who launched a run: a sensor, a backfill, or a user (a reason tag)."""
    tags = run.tags
    if "dagster/sensor_name" in tags:
        return f"sensor:{tags['dagster/sensor_name']}"
    if BACKFILL_TAG in tags:
        return f"backfill:{tags[BACKFILL_TAG]}"
    return f"reason:{tags.get(REASON_TAG, 'none')}"


def days(first: dt.date, count: int) -> list[str]:
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(count)]


def set_up_history(project: Project, first: dt.date) -> None:
    """`ct simulate` the history, then ingest it and train a first model in-process."""
    env = {"DAGSTER_HOME": str(project.home), "CT_CONFIG": str(project.config_path)}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        assert cli.main(["--config", str(project.config_path), "simulate", "--days",
                         str(HISTORY_DAYS), "--start", first.isoformat(), "--rows-per-day",
                         str(ROWS_PER_DAY)]) == 0
        defs = build_definitions(project.config)
        history = days(first, HISTORY_DAYS)
        with project.instance() as instance:
            for job, tags in (("data_job", {"dagster/asset_partition_range_start": history[0],
                                            "dagster/asset_partition_range_end": history[-1]}),
                              ("retrain_job", {REASON_TAG: "initial"})):
                result = defs.resolve_job_def(job).execute_in_process(
                    instance=instance, resources=defs.resources, tags=tags,
                    run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}})
                assert result.success, job
    assert project.store.deployed() is not None


def submit_backfill(project: Project, partitions: list[str]) -> str:
    """A backfill of the history's monitoring, as the UI submits one; returns its id."""
    defs = build_definitions(project.config)
    backfill_id = make_new_backfill_id()
    with project.instance() as instance:
        instance.add_backfill(PartitionBackfill.from_asset_partitions(
            backfill_id=backfill_id, asset_graph=defs.resolve_asset_graph(),
            partition_names=partitions,
            asset_selection=[dg.AssetKey(asset) for asset in BACKFILLED],
            backfill_timestamp=time.time(), tags={}, dynamic_partitions_store=instance,
            all_partitions=False, title="history monitoring", description=None,
            run_config=None))
    return backfill_id


def events(instance: dg.DagsterInstance, run_id: str,
           kinds: Iterable[dg.DagsterEventType]) -> list[dg.EventLogEntry]:
    return [record.event_log_entry for kind in kinds
            for record in instance.get_records_for_run(run_id, of_type=kind).records]


def entry_text(entry: dg.EventLogEntry) -> str:
    """An event's message and, for a failure, its error (where a lock error would show)."""
    event = entry.dagster_event
    return f"{entry.message}\n{event.event_specific_data!r}" if event else str(entry.message)


def lock_errors(instance: dg.DagsterInstance, runs: list[dg.RunRecord],
                logs: list[Path]) -> dict[str, list[str]]:
    """Where a DuckDB (or SQLite) lock error shows: run events, compute logs, daemon log."""
    found: dict[str, list[str]] = {"duckdb": [], "sqlite": []}
    texts = [(f"run {record.dagster_run.run_id[:8]}", entry_text(entry))
             for record in runs for entry in instance.all_logs(record.dagster_run.run_id)]
    texts += [(str(path), path.read_text(encoding="utf-8", errors="replace")) for path in logs]
    for where, text in texts:
        for kind, pattern in (("duckdb", DUCKDB_LOCK), ("sqlite", SQLITE_LOCK)):
            found[kind] += [f"{where}: {line.strip()[:300]}" for line in text.splitlines()
                            if pattern.search(line)]
    return found


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


def duckdb_step_intervals(instance: dg.DagsterInstance, runs: list[dg.RunRecord],
                          pooled: set[str]) -> list[tuple[float, float]]:
    """(start, end) of every step of pool `duckdb` in `runs`, from their events."""
    intervals = []
    for record in runs:
        starts: dict[str, float] = {}
        for entry in sorted(events(instance, record.dagster_run.run_id, (
                dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS,
                dg.DagsterEventType.STEP_FAILURE)), key=lambda e: e.timestamp):
            step = entry.step_key
            if step not in pooled:
                continue
            if entry.dagster_event_type == dg.DagsterEventType.STEP_START:
                starts[step] = entry.timestamp
            elif step in starts:
                intervals.append((starts.pop(step), entry.timestamp))
    return intervals


def promotions(instance: dg.DagsterInstance, store: ModelStore) -> list[dict[str, object]]:
    """Each promotion of the model store's history, with the runs behind its candidate.

    `trained_by` is the manifest's run, `validated_by` the run whose sealed verdict approved it
    (and `candidate_from_run` the run that verdict says trained it), `promoted_by` the run of
    the history record, and `judged` the versions `validation_report` judged in that run.
    """
    found = []
    for record in store.pointer()["history"]:
        version = record["version"]
        decision = store.decision(version) or {}
        found.append({
            "version": version, "reason": record["reason"], "promoted_by": record["run_id"],
            "trained_by": store.manifest(version)["run_id"],
            "validated_by": decision.get("run_id"),
            "candidate_from_run": decision.get("candidate_from_run"),
            "approved": bool(decision.get("approved")) and bool(decision.get("sealed")),
            "judged": [entry.asset_materialization.metadata["candidate_version"].value
                       for entry in events(instance, record["run_id"],
                                           [dg.DagsterEventType.ASSET_MATERIALIZATION])
                       if entry.asset_materialization.asset_key
                       == dg.AssetKey("validation_report")]})
    return found


def status_cache_gaps(instance: dg.DagsterInstance, partitions_def: dg.PartitionsDefinition,
                      assets: Iterable[str]) -> dict[str, list[str]]:
    """Partitions the event log has materialized but Dagster's partition status cache lacks.

    The automation sensor reads the cache: a partition missing there counts as missing, so its
    downstream partitions are never requested (a gap nobody is told about).
    """
    keys = partitions_def.get_partition_keys()
    gaps = {}
    for asset in assets:
        key = dg.AssetKey(asset)
        status = instance.get_status_by_partition(key, keys, partitions_def)
        cached = {k for k, value in status.items()
                  if value == dg.AssetPartitionStatus.MATERIALIZED}
        lost = sorted(set(instance.get_materialized_partitions(key)) - cached)
        if lost:
            gaps[asset] = lost
    return gaps


def error_of(entry: dg.EventLogEntry) -> str:
    """The error message of a failure event."""
    data = entry.dagster_event.event_specific_data if entry.dagster_event else None
    error = getattr(data, "error", None)
    return error.message.strip() if error else ""


def materialized_by(instance: dg.DagsterInstance, run_ids: list[str]) -> set[tuple[str, str]]:
    """(asset, partition) materialized by `run_ids`."""
    return {(entry.asset_materialization.asset_key.to_user_string(),
             entry.asset_materialization.partition)
            for run_id in run_ids
            for entry in events(instance, run_id, [dg.DagsterEventType.ASSET_MATERIALIZATION])}


def warehouse_rows(project: Project, partitions: list[str]) -> dict[str, int]:
    """Rows of `raw_events` per partition, read from the DuckDB file (daemon stopped)."""
    path = project.config.storage_dir / "warehouse.duckdb"
    with duckdb.connect(str(path), read_only=True) as connection:
        rows = connection.execute(
            f"SELECT {PARTITION}, count(*) FROM raw_events WHERE {PARTITION} IN "
            f"({', '.join('?' * len(partitions))}) GROUP BY 1", partitions).fetchall()
    return {str(key): count for key, count in rows}


@pytest.mark.timeout(1500)
def test_manual_retrain_backfill_and_landing_at_once(
        tmp_path: Path, record_property: Callable[[str, object], None]):
    today = dt.datetime.now(dt.UTC).date()
    new_first = today - dt.timedelta(days=NEW_DAYS - 1)
    first = new_first - dt.timedelta(days=HISTORY_DAYS)
    project = Project(tmp_path, first)
    began = time.monotonic()
    set_up_history(project, first)
    setup_seconds = time.monotonic() - began
    initial = project.store.deployed()
    history = days(first, HISTORY_DAYS)
    # The newest history day is left out: its labels count as known once the first new day
    # has landed, which races with the backfill (model_performance would leave it unmeasured).
    backfilled = history[-BACKFILL_DAYS - 1:-1]
    new_days = days(new_first, NEW_DAYS)
    clients: list[subprocess.Popen[bytes]] = []
    try:
        project.daemon.start()
        project.wait_for("the daemon's first landing_sensor tick",
                         lambda: "landing_sensor" in project.daemon.tail(400), 120, every=1)
        # The new files land and the backfill is submitted; the manual retrain follows as soon
        # as landing_sensor has queued its run, so that it is promoted after the landing run
        # scored the latest partition: the automation sensor then re-scores that partition with
        # the new model and asks model_performance for it alone, before its labels are known.
        started = time.monotonic()
        clients.append(simulate := subprocess.Popen(
            [str(BIN / "ct"), "simulate", "--days", str(NEW_DAYS), "--start",
             new_first.isoformat(), "--rows-per-day", str(ROWS_PER_DAY), "--seed", "1"],
            cwd=ROOT, env=project.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        backfill_id = submit_backfill(project, backfilled)
        output = simulate.communicate(timeout=120)[0].decode(errors="replace")
        assert simulate.returncode == 0, f"ct simulate failed:\n{output}"
        project.wait_for("landing_sensor to queue its run", lambda: any(
            r.dagster_run.job_name == "landing_job" for r in project.run_records()), 120,
            every=0.5)
        clients.append(launch := subprocess.Popen(
            [str(BIN / "dagster"), "job", "launch", "-j", "retrain_job", "-m",
             "ct_assets.definitions", "--tags", json.dumps({REASON_TAG: "manual"})],
            cwd=ROOT, env=project.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        output = launch.communicate(timeout=120)[0].decode(errors="replace")
        assert launch.returncode == 0, f"dagster job launch failed:\n{output}"

        def settled() -> bool:
            with project.instance() as instance:
                backfill = instance.get_backfill(backfill_id)
                manual = instance.get_runs(dg.RunsFilter(
                    job_name="retrain_job", tags={REASON_TAG: "manual"}))
                landed = set(instance.get_materialized_partitions(dg.AssetKey("raw_events")))
            return (backfill is not None and backfill.status != BulkActionStatus.REQUESTED
                    and bool(manual) and manual[0].is_finished and set(new_days) <= landed)

        project.wait_for("the backfill, the manual retrain and the new days", settled,
                         SETTLE_TIMEOUT)
        project.wait_for("no run queued or running and no backfill in progress",
                         project.idle_for(QUIET_SECONDS), SETTLE_TIMEOUT)
        wall = time.monotonic() - started - QUIET_SECONDS
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait()
        project.daemon.stop()

    records = project.run_records()
    defs = build_definitions(project.config)
    pooled = {node.name for job in defs.resolve_all_job_defs()
              for node in job.graph.node_defs if getattr(node, "pool", None) == "duckdb"}
    partitions_def = defs.resolve_job_def("data_job").partitions_def
    assert partitions_def is not None
    logs = [project.daemon.log, *(path for path in (project.home / "storage").rglob("*")
                                  if path.is_file() and path.suffix in (".out", ".err"))]
    with project.instance() as instance:
        found = lock_errors(instance, records, logs)
        waits = {}
        for record in records:
            stamps = {entry.dagster_event_type: entry.timestamp for entry in events(
                instance, record.dagster_run.run_id, QUEUED)}
            if len(stamps) == 2:
                waits[record.dagster_run.run_id] = stamps[QUEUED[1]] - stamps[QUEUED[0]]
        running = [(r.start_time, r.end_time) for r in records
                   if r.start_time is not None and r.end_time is not None]
        pool_overlap = max_overlap(duckdb_step_intervals(instance, records, pooled))
        promoted = promotions(instance, project.store)
        backfill = instance.get_backfill(backfill_id)
        backfill_runs = [r.dagster_run.run_id for r in records
                         if r.dagster_run.tags.get(BACKFILL_TAG) == backfill_id]
        backfill_done = materialized_by(instance, backfill_runs)
        gaps = status_cache_gaps(instance, partitions_def, (
            "raw_events", "features", "predictions", "drift_report", "model_performance"))
        failed = [r for r in records if r.dagster_run.status != dg.DagsterRunStatus.SUCCESS]
        why_failed = "\n".join(
            f"  {r.dagster_run.run_id[:8]} {r.dagster_run.tags.get('dagster/partition', '')}: "
            f"{entry.message}: {error_of(entry)}" for r in failed
            for entry in events(instance, r.dagster_run.run_id,
                                [dg.DagsterEventType.STEP_FAILURE]))
    by_job = Counter(f"{r.dagster_run.job_name} ({origin(r.dagster_run)})".replace(
        backfill_id, "history") for r in records)
    figures = {
        "setup_seconds": round(setup_seconds, 1),
        "wall_seconds": round(wall, 1),
        "runs": len(records),
        "runs_by_job": dict(sorted(by_job.items())),
        "runs_not_successful": len(failed),
        "max_queued_seconds": round(max(waits.values(), default=0.0), 1),
        "max_concurrent_runs": max_overlap(running),
        "max_concurrent_duckdb_steps": pool_overlap,
        "duckdb_lock_errors": len(found["duckdb"]),
        "sqlite_lock_errors": len(found["sqlite"]),
        "backfill_runs": len(backfill_runs),
        # Not asserted: a race in Dagster's partition status cache (see status_cache_gaps).
        "status_cache_gaps": gaps,
        "promotions": [f"{p['version']} ({p['reason']})" for p in promoted],
    }
    print(json.dumps(figures, indent=2))  # noqa: T201 (the figures are the output)
    for name, value in figures.items():
        record_property(name, value)

    description = project.describe()
    assert not found["duckdb"], "\n".join(found["duckdb"][:20])
    assert pool_overlap <= 1, "two steps of pool duckdb ran at once"
    # the backfill: one single run (single-run policy), every partition of every asset
    assert backfill is not None and backfill.status == BulkActionStatus.COMPLETED_SUCCESS, (
        backfill and backfill.status, description)
    assert len(backfill_runs) == 1, description
    planned = {(asset, key) for asset in BACKFILLED for key in backfilled}
    assert backfill_done == planned, (sorted(planned ^ backfill_done)[:10], description)
    # each promotion is of the candidate its own run trained and validated
    for promotion in promoted:
        assert promotion["approved"], promotion
        assert promotion["trained_by"] == promotion["validated_by"] == promotion[
            "candidate_from_run"] == promotion["promoted_by"], promotion
        assert promotion["judged"] == [promotion["version"]], promotion
    assert promoted[0]["reason"] == "initial" and promoted[0]["version"] == initial["version"]
    manual = [r.dagster_run.run_id for r in records
              if r.dagster_run.tags.get(REASON_TAG) == "manual"]
    assert len(manual) == 1, description
    assert [p["reason"] for p in promoted if p["promoted_by"] == manual[0]] == ["manual"], (
        promoted, description)
    # the new days were ingested: every row of them is in the warehouse
    assert warehouse_rows(project, new_days) == dict.fromkeys(new_days, ROWS_PER_DAY)
    assert not failed, f"runs that did not succeed:\n{why_failed}\n{description}"
