"""The real daemon, end to end: files land, and nobody materializes anything by hand.

`dagster-daemon run` runs as a subprocess (its own process group), on the code of a `dagster api
grpc -m ct_assets.definitions` server beside it (`live.Daemon`), against
a fresh project in a temporary directory and a fresh Postgres-backed instance: its DAGSTER_HOME
holds the package's `templates/dagster-postgres.yaml`, pointed at a private PostgreSQL server
(`ct_assets_tests/postgres.py`: Debian's binaries, 127.0.0.1, stopped when the test ends), so
the daemon, its run workers, the webserver and the test all share runs, events, sensor cursors
and the `duckdb` pool's slots through Postgres. (`CT_E2E_STORAGE=sqlite` runs the same loop on
the SQLite template `dagster.yaml` instead.)

1. 12 clean days land → `landing_sensor` ingests them (`landing_job`: `raw_events`, `features`
   only, as no model is deployed) → `freshness_sensor` trains, validates and deploys a first
   model (reason `initial`) → the automation sensor scores and monitors the history;
2. 3 covariate-drifted days land at once (ending today; a later day would be outside the
   partitions) → `landing_sensor`'s run ingests, scores and monitors every new partition → the
   `drift_report.feature_drift` check fails → `drift_sensor` launches exactly one `retrain_job`
   (tag `ct/reason=drift`, run key `drift:<partition>:<evaluation id>`) → a new version is
   deployed with reason `drift`; the new model, whose drift reference is the drifted days,
   re-checks the latest partition and passes: no second retrain;
3. the daemon is restarted; after two ticks of `drift_sensor` there is still one drift retrain;
4. the storage is what the instance config says: on Postgres, every run the instance lists (the
   drift retrain among them, `SUCCESS`) is a row of the server's `runs` table, with its events
   in `event_logs`, the sensors' ticks in `job_ticks` and the pool `duckdb` (limit 1) in
   `concurrency_limits`; and no SQLite file exists anywhere under DAGSTER_HOME;
5. the UI shows the chain, in a real `dagster-webserver` and headless Chromium: the
   `feature_drift` check on `drift_report` (its latest evaluation, by the new model, passed), the
   one `retrain_job` run tagged `ct/reason=drift` with the partition that triggered it, and
   `deployed_model`'s new version with reason `drift`.

Sensor intervals are shortened to `INTERVAL` seconds with `$CT_SENSOR_INTERVAL_SECONDS`. On a
timeout the assertion message carries the daemon's log tail and every run with its status.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecordStatus,  # no public export in 1.13
)

from ct_assets.defs.metadata import REASON_TAG
from ct_assets_tests.live import BIN, ROOT, DaemonProject, chromium_page, webserver
from ct_assets_tests.postgres import PostgresServer, private_postgres, sqlite_files

INTERVAL = 5  # seconds between two ticks of each sensor (30 by default)
HISTORY_DAYS, DRIFTED_DAYS, ROWS_PER_DAY = 12, 3, 1500
FIRST_MODEL_TIMEOUT = 360
DRIFT_RETRAIN_TIMEOUT = 300
SETTLE_TIMEOUT = 180
RESTART_TIMEOUT = 120
DRIFT_CHECK = dg.AssetCheckKey(dg.AssetKey("drift_report"), "feature_drift")
DRIFT_TICK = "Sensor drift_sensor"  # the daemon logs "Sensor drift_sensor skipped: …" per tick
STORAGE_ENV = "CT_E2E_STORAGE"  # `postgres` (default) or `sqlite`: the instance the loop runs on


class Project(DaemonProject):
    """A temporary project: ct.yaml, storage, DAGSTER_HOME, and the daemon running on it."""

    def __init__(self, root: Path, first_day: dt.date, instance_template: str):
        super().__init__(root, {
            "dataset": {"source": "simulator"},
            "partitions": {"start": first_day.isoformat()},
            "training": {"window": 10, "holdout": 3},
            "triggers": {"label_delay": 0},
            # A retrain on 7 days of 1,500 rows: its holdout AUC differs from the champion's by
            # a few hundredths either way; the test is about the loop, not that noise.
            "gate": {"max_regression": 0.05},
            "storage": {"dir": str(root / "storage")},
        }, INTERVAL, instance_template)

    def simulate(self, *args: str) -> None:
        subprocess.run([str(BIN / "ct"), "simulate", "--rows-per-day", str(ROWS_PER_DAY),
                        *args], cwd=ROOT, env=self.env, check=True, capture_output=True)

    def drift_runs(self) -> list[dg.DagsterRun]:
        return [run for run in self.runs() if run.job_name == "retrain_job"
                and run.tags.get(REASON_TAG) == "drift"]

    def failed_drift_checks(self) -> list[Any]:
        with self.instance() as instance:
            return list(instance.event_log_storage.get_asset_check_execution_history(
                DRIFT_CHECK, limit=50, status={AssetCheckExecutionRecordStatus.FAILED}))

    def latest_drift_check(self) -> Any:
        with self.instance() as instance:
            return instance.event_log_storage.get_asset_check_execution_history(
                DRIFT_CHECK, limit=1)[0]

    def latest_scored_by(self) -> str | None:
        """The model version of the latest `predictions` materialization."""
        with self.instance() as instance:
            event = instance.get_latest_materialization_event(dg.AssetKey("predictions"))
        if event is None or event.asset_materialization is None:
            return None
        return event.asset_materialization.metadata["model_version"].value

    def materialized(self, asset: str) -> set[str]:
        with self.instance() as instance:
            return set(instance.get_materialized_partitions(dg.AssetKey(asset)))

    def deployed(self) -> dict[str, Any] | None:
        return self.store.deployed()


def check_ui(project: Project, tmp_path: Path, retrain: dg.DagsterRun, version: str,
             partition: str) -> None:
    """The chain failed drift check → retrain run → new deployed version, read in the UI."""
    shots = tmp_path / "screenshots"
    shots.mkdir()

    def visit(page: Any, url: str, name: str, ready: str) -> str:
        page.goto(url)
        try:
            # An action: Dagster's community dialog, if open, is skipped first (chromium_page).
            page.get_by_text(ready, exact=True).first.hover()
        finally:
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        return page.inner_text("body")

    with webserver(project.env, project.root / "webserver.log") as url, \
            chromium_page() as page:
        checks = visit(page, f"{url}/assets/drift_report?view=checks", "checks",
                       "Evaluation result")
        result = checks.split("Evaluation result", 1)[1]
        # the latest evaluation is the new model's re-check, which passes: drift learned
        assert result.split()[0] == "Passed", (result[:400], shots)
        assert version in result, "the latest drift check is not the new model's re-check"

        runs = visit(page, f"{url}/runs?q%5B%5D=tag%3Act%2Freason%3Ddrift", "drift_runs",
                     "drift_sensor")
        table = runs.split("Duration", 1)[1]
        assert table.count("retrain_job") == 1, (table[:1500], shots)
        assert retrain.run_id[:8] in table and "drift_sensor" in table
        assert f"feature_drift failed for {partition}" in table
        assert "Success" in table

        deployed = visit(page, f"{url}/assets/deployed_model", "deployed_model",
                         "deployed_version")
        assert f"promoted {version} (reason: drift)" in deployed, (deployed[:2000], shots)


def check_postgres_storage(project: Project, server: PostgresServer, retrain: dg.DagsterRun
                           ) -> None:
    """Runs, events, ticks and the pool live in the server; no SQLite file in DAGSTER_HOME."""
    from dagster_postgres import (
        PostgresEventLogStorage,
        PostgresRunStorage,
        PostgresScheduleStorage,
    )

    with project.instance() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        listed = {run.run_id for run in instance.get_runs()}
    with server.connect() as connection, connection.cursor() as cursor:
        cursor.execute("SELECT run_id FROM runs")
        assert {run_id for (run_id,) in cursor.fetchall()} == listed, project.describe()
        cursor.execute("SELECT status FROM runs WHERE run_id = %s", (retrain.run_id,))
        assert cursor.fetchone() == ("SUCCESS",)
        cursor.execute("SELECT count(DISTINCT run_id) FROM event_logs "
                       "WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")
        (materializing_runs,) = cursor.fetchone()
        assert 2 <= materializing_runs <= len(listed)
        cursor.execute("SELECT count(*) FROM job_ticks t JOIN instigators i ON t.selector_id"
                       " = i.selector_id WHERE i.instigator_body LIKE '%\"drift_sensor\"%'")
        (ticks,) = cursor.fetchone()
        assert ticks >= 2
        cursor.execute("SELECT concurrency_key, \"limit\" FROM concurrency_limits")
        assert ("duckdb", 1) in cursor.fetchall()
    connection.close()
    assert sqlite_files(project.home) == []


@pytest.fixture
def postgres(monkeypatch: pytest.MonkeyPatch) -> Iterator[PostgresServer | None]:
    """The private server, its coordinates in the environment; None with CT_E2E_STORAGE=sqlite."""
    storage = os.environ.get(STORAGE_ENV, "postgres")
    if storage == "sqlite":
        yield None
        return
    assert storage == "postgres", f"${STORAGE_ENV} is `postgres` or `sqlite`, not {storage!r}"
    with private_postgres() as server:
        for key, value in server.dagster_env().items():  # the test's own instance reads them
            monkeypatch.setenv(key, value)  # and the daemon and webserver inherit them
        yield server


def drift_ticks(log: Path, start: int) -> int:
    text = log.read_text(encoding="utf-8", errors="replace")[start:]
    return text.count(DRIFT_TICK)


@pytest.mark.timeout(900)
def test_daemon_ingests_trains_detects_drift_and_retrains_once(
        tmp_path: Path, record_property: Callable[[str, object], None],
        postgres: PostgresServer | None):
    began = time.monotonic()
    today = dt.datetime.now(dt.UTC).date()
    drift_start = today - dt.timedelta(days=DRIFTED_DAYS - 1)
    history_start = drift_start - dt.timedelta(days=HISTORY_DAYS)
    project = Project(tmp_path, history_start,
                      "dagster.yaml" if postgres is None else "dagster-postgres.yaml")
    try:
        project.daemon.start()
        # 1. clean history → ingested → first model, all by sensors
        project.simulate("--days", str(HISTORY_DAYS), "--start", history_start.isoformat())
        first = project.wait_for(
            "a first model deployed with reason `initial`",
            lambda: (d := project.deployed()) and d["reason"] == "initial" and d,
            FIRST_MODEL_TIMEOUT)
        first_model_at = time.monotonic() - began
        runs = project.runs()
        assert all(run.tags.get("dagster/sensor_name") or run.tags.get("dagster/backfill")
                   for run in runs), project.describe()  # nothing materialized by hand
        assert [run.tags.get(REASON_TAG) for run in runs if run.job_name == "retrain_job"] == [
            "initial"], project.describe()
        history = {(history_start + dt.timedelta(days=i)).isoformat()
                   for i in range(HISTORY_DAYS)}
        assert project.materialized("features") >= history

        # 2. drifted days land at once → scored and monitored → one drift retrain → deployed
        landed = time.monotonic()
        project.simulate("--days", str(DRIFTED_DAYS), "--start", drift_start.isoformat(),
                         "--drift", "covariate", "--drift-day", "0")
        drifted = {(drift_start + dt.timedelta(days=i)).isoformat()
                   for i in range(DRIFTED_DAYS)}
        project.wait_for("the feature_drift check to fail", project.failed_drift_checks,
                         DRIFT_RETRAIN_TIMEOUT)
        second = project.wait_for(
            "a new model deployed with reason `drift`",
            lambda: (d := project.deployed()) and d["reason"] == "drift" and d,
            DRIFT_RETRAIN_TIMEOUT)
        drift_deployed_at = time.monotonic() - landed
        # the landing run of the history only ingested; that of the drifted days monitored too
        landing = [(run.tags.get("dagster/asset_partition_range_end"),
                    sorted(key.to_user_string() for key in run.asset_selection or ()))
                   for run in project.runs() if run.job_name == "landing_job"]
        assert landing[0][1] == ["features", "raw_events"], project.describe()
        later = [assets for end, assets in landing if end and end >= drift_start.isoformat()]
        assert later and all(assets == ["drift_report", "features", "predictions",
                                        "raw_events"] for assets in later), project.describe()
        assert second["version"] != first["version"]
        assert second["previous"] == first["version"]
        # the new model re-scores and re-checks the latest partition, whose drift it has
        # already answered (the automation sensor asks for it, as a backfill)
        project.wait_for("the latest partition re-scored by the new model",
                         lambda: project.latest_scored_by() == second["version"],
                         DRIFT_RETRAIN_TIMEOUT)
        project.wait_for("the runs to settle", project.idle_for(3 * INTERVAL), SETTLE_TIMEOUT)

        retrains = project.drift_runs()
        assert len(retrains) == 1, project.describe()
        retrain = retrains[0]
        assert retrain.status == dg.DagsterRunStatus.SUCCESS, project.describe()
        assert retrain.tags.get("dagster/sensor_name") == "drift_sensor"
        key = retrain.tags["dagster/run_key"]
        kind, partition, evaluation = key.split(":")
        assert kind == "drift" and partition in drifted and evaluation.isdigit(), key
        assert second["run_id"] == retrain.run_id
        failures = project.failed_drift_checks()
        assert int(evaluation) in {record.id for record in failures}
        # The new model's drift reference is the drifted regime: its re-check of the latest
        # partition passes, so the drift is not flagged again (one drift, one retrain).
        latest = project.latest_drift_check()
        assert latest.status == AssetCheckExecutionRecordStatus.SUCCEEDED, project.describe()
        assert latest.evaluation.metadata["model_version"].value == second["version"]
        # every new partition was scored and monitored, not only the latest one
        for asset in ("predictions", "drift_report"):
            assert project.materialized(asset) >= drifted, (asset, project.describe())
        with project.instance() as instance:
            scored = instance.get_latest_materialization_event(dg.AssetKey("predictions"))
            assert scored and scored.asset_materialization
            assert scored.asset_materialization.metadata["model_version"].value == (
                second["version"])

        # 3. restart: the cursor and the run keys survive; no second retrain for that event
        project.daemon.stop()
        offset = project.daemon.log.stat().st_size
        project.daemon.start()
        project.wait_for("two drift_sensor ticks after the restart",
                         lambda: drift_ticks(project.daemon.log, offset) >= 2,
                         RESTART_TIMEOUT, every=2)
        project.wait_for("the runs to settle after the restart",
                         project.idle_for(INTERVAL), SETTLE_TIMEOUT)
        assert [run.run_id for run in project.drift_runs()] == [retrain.run_id], (
            project.describe())
        assert project.deployed()["version"] == second["version"]

        # 4. where it all is: Postgres, and not a SQLite file beside it
        if postgres is None:
            assert sqlite_files(project.home), "the SQLite template wrote no SQLite storage"
        else:
            check_postgres_storage(project, postgres, retrain)

        # 5. what a data engineer sees in the UI
        check_ui(project, tmp_path, retrain, second["version"], partition)
        record_property("first_model_seconds", round(first_model_at))
        record_property("drift_model_seconds", round(drift_deployed_at))
        record_property("total_seconds", round(time.monotonic() - began))
        record_property("instance_storage", "sqlite" if postgres is None else "postgres")
    finally:
        project.daemon.stop()
