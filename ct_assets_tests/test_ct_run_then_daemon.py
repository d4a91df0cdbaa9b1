"""What the daemon does after `ct simulate` and `ct run` (as after `ct demo`): nothing again.

A new user runs `ct demo`, then `make dev`. The landing and label sensors of that fresh daemon
read the record of what `ct run` ingested (the file catalog), so they ask for nothing; and a
retrain triggered on the data the champion was trained on trains nothing, saying why.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator

import dagster as dg
import pytest
import yaml

from ct_assets import cli
from ct_assets.definitions import build_definitions
from ct_assets.defs.metadata import REASON_TAG
from ct_assets.lib.config import Config, load_config
from ct_assets.lib.model_store import ModelStore
from ct_assets.lib.simulator import write_days
from ct_assets.lib.triggers import TriggerLog
from ct_assets.runner import run_outcome
from ct_assets_tests.live import open_instance

DAYS, ROWS_PER_DAY = 12, 300


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Config]:
    """`ct simulate` then `ct run` on a simulator project whose labels land a day late."""
    root = tmp_path_factory.mktemp("project")
    path = root / "ct.yaml"
    path.write_text(yaml.safe_dump({
        "dataset": {"source": "simulator", "labels": {"landing_dir": "labels"}},
        "training": {"window": 8, "holdout": 2}, "storage": {"dir": "data"}}), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_HOME", str(root / "data" / "dagster"))
        assert cli.main(["--config", str(path), "simulate", "--days", str(DAYS),
                         "--rows-per-day", str(ROWS_PER_DAY)]) == 0
        assert cli.main(["--config", str(path), "run"]) == 0
        yield load_config(path)


@pytest.fixture
def instance(project: Config) -> Iterator[dg.DagsterInstance]:
    with open_instance(project.dagster_home) as opened:
        yield opened


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, name: str,
         cursor: str | None = None) -> dg.SensorExecutionData:
    """One tick of a sensor of a daemon started now (no cursor yet)."""
    return defs.resolve_sensor_def(name).evaluate_tick(
        dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs))


def test_a_fresh_daemon_ingests_nothing_ct_run_ingested_and_a_new_file_once(project, instance):
    defs = build_definitions(project)
    assert ModelStore(project.models_dir).deployed() is not None  # `ct run` trained one
    for name in ("landing_sensor", "label_sensor"):
        result = tick(defs, instance, name)
        assert not result.run_requests, (name, [r.run_key for r in result.run_requests])

    today = dt.datetime.now(dt.UTC).date()
    [late] = write_days(project.landing_dir / "late", start=today, days=1, rows_per_day=50,
                        seed=7)
    os.utime(late, (late.stat().st_atime - 60, late.stat().st_mtime - 60))  # settled
    first = tick(defs, instance, "landing_sensor")
    [request] = first.run_requests
    assert (request.tags["dagster/asset_partition_range_start"],
            request.tags["dagster/asset_partition_range_end"]) == (today.isoformat(),) * 2
    assert not tick(defs, instance, "landing_sensor", first.cursor).run_requests
    late.unlink()  # leave the project as `ct run` left it
    assert not tick(defs, instance, "landing_sensor").run_requests


def test_a_retrain_on_the_champions_data_trains_nothing_and_says_why(project, instance):
    store = ModelStore(project.models_dir)
    champion = store.deployed()["version"]
    data_version = store.manifest(champion)["training_set_version"]
    versions = store.versions()
    defs = build_definitions(project)

    result = defs.resolve_job_def("retrain_job").execute_in_process(
        instance=instance, resources=defs.resources, raise_on_error=False,
        tags={REASON_TAG: "freshness"})

    assert result.success  # a skip is not a failure
    outcome = run_outcome(result)
    assert outcome["outcome"] == "skipped"
    assert f"data version {data_version}" in outcome["message"]
    assert champion in outcome["message"]
    assert not result.asset_materializations_for_node("candidate_model")
    assert store.versions() == versions and store.deployed()["version"] == champion
    [logged] = [entry for entry in TriggerLog(project.storage_dir).entries()
                if entry["trigger"] == "retrain_job"]
    assert logged["decision"] == "skipped" and data_version in logged["detail"]
