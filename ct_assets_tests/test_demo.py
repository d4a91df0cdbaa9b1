"""`ct demo`, what `make demo` runs, on the repository's own `ct.yaml` (smaller days).

30 clean days and a first model, then 10 more days up to today with a covariate drift from the
fourth of them, labels landing a day after their rows: the drift is detected from its first
day on, never before, and the retrain it launches learns the first drifted day (whose labels
are known by then) and is deployed; today's rows are scored before any of their labels exist.
"""

from __future__ import annotations

import datetime as dt
import shutil

from ct_assets import cli
from ct_assets.demo import timeline
from ct_assets.lib.config import load_config
from ct_assets.lib.model_store import ModelStore
from ct_assets_tests.live import ROOT


def test_the_demo_detects_the_drift_once_and_deploys_a_model_that_learned_it(
        tmp_path, capsys, monkeypatch):
    shutil.copyfile(ROOT / "ct.yaml", tmp_path / "ct.yaml")
    config = load_config(tmp_path / "ct.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(config.dagster_home))
    capsys.readouterr()
    assert cli.main(["--config", str(tmp_path / "ct.yaml"), "demo", "--rows-per-day",
                     "500"]) == 0
    out = capsys.readouterr().out
    today = dt.datetime.now(dt.UTC).date()
    drift_day = (today - dt.timedelta(days=6)).isoformat()  # the 4th of the last 10 days
    assert f"covariate drift injected from {drift_day}" in out

    store = ModelStore(config.models_dir)
    assert [record["reason"] for record in store.pointer()["history"]] == ["initial", "drift"]
    deployed = store.describe(store.deployed()["version"])
    assert deployed["change_point"] == drift_day
    assert drift_day in deployed["training_info"]["refit"]["partitions"]  # learned the drift

    days = [row for row in timeline(load_config(tmp_path / "ct.yaml"))
            if row["partition"] != "(today)"]
    assert len(days) == 40 and days[-1]["partition"] == today.isoformat()
    detected = [row["partition"] for row in days if row["drift_detected"]]
    assert detected and min(detected) == drift_day
    assert days[-1]["metric"] is None  # scored, but no label of today's rows is known yet
    assert days[-1]["scored_by"] == deployed["version"]  # re-scored by the new model
