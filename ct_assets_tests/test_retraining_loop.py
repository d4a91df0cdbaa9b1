"""One retrain per change, on labels that arrive a day after their rows, through `ct run`.

Each scenario is what a user does with the simulator: 30 clean days land (with their labels a
day later, in separate label files), `ct run` trains the first model; then one day lands per day
and `ct run` follows each. The history is built once and copied per scenario (the simulator
leaves every day before a drift untouched, so the copies are exact).

- covariate drift on day 30: exactly one drift retrain, launched once the drifted day's labels
  are known, whose model learned that day, carries it as its change point and has a drift
  reference fitted on the drifted days (so the next ones pass);
- concept drift on day 30 (no covariate signature): performance retrains, at most two, the first
  one learning the new concept from the rows since the change, the second (the follow-up once
  six partitions of the new concept are labelled) learning and validating on them alone;
- no drift for 60 days: no drift or performance retrain at all.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest
import yaml

from ct_assets import cli
from ct_assets.lib.config import load_config
from ct_assets.lib.model_store import ModelStore
from ct_assets.lib.simulator import DriftScenario, write_days
from ct_assets.lib.triggers import TriggerLog, regime_partitions
from ct_assets.lib.warehouse import Warehouse
from ct_assets_tests.projects import (
    LOOP_CONFIG,
    LOOP_FIRST_DAY,
    LOOP_HISTORY,
    LOOP_ROWS_PER_DAY,
    ct_json,
)

FIRST_DAY, HISTORY, ROWS_PER_DAY, CONFIG = (LOOP_FIRST_DAY, LOOP_HISTORY, LOOP_ROWS_PER_DAY,
                                             LOOP_CONFIG)
AFTER = 8
CHANGE = FIRST_DAY + dt.timedelta(days=HISTORY)


def land(config_path: Path, first: dt.date, days: int, drift: DriftScenario) -> None:
    config = load_config(config_path)
    write_days(config.landing_dir, start=first, days=days, rows_per_day=ROWS_PER_DAY,
               drift=drift, labels_dir=config.labels_dir, label_delay=1)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project after 30 clean days (labels a day late) and `ct run`: the first model."""
    root = tmp_path_factory.mktemp("history")
    (root / "ct.yaml").write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    land(root / "ct.yaml", FIRST_DAY, HISTORY, DriftScenario())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_HOME", str(root / "data" / "dagster"))
        assert cli.main(["--config", str(root / "ct.yaml"), "run", "--json"]) == 0
    return root


def follow(history: Path, target: Path, kind: str, days: int, per_run: int,
           capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Path:
    """Copy the history, then land `days` more days, `per_run` at a time, `ct run` after each."""
    shutil.copytree(history, target)
    path = target / "ct.yaml"
    monkeypatch.setenv("DAGSTER_HOME", str(target / "data" / "dagster"))
    drift = DriftScenario(kind, CHANGE) if kind != "none" else DriftScenario()
    for offset in range(0, days, per_run):
        land(path, CHANGE + dt.timedelta(days=offset), min(per_run, days - offset), drift)
        summary = ct_json(path, capsys, "run")
        assert summary["failed_runs"] == 0, summary["runs"]
    return path


def retrains(path: Path) -> list[dict[str, Any]]:
    """Every model version trained after the first, with its reason and gate verdict."""
    store = ModelStore(load_config(path).models_dir)
    versions = [store.describe(version) for version in store.versions()]
    assert versions and versions[0]["reason"] == "initial"
    return versions[1:]


def realised(path: Path) -> pl.DataFrame:
    """Realised ROC AUC per partition, with the model that scored it."""
    return Warehouse(load_config(path).warehouse_path).query(
        "SELECT _partition, model_version, roc_auc, rows FROM model_performance ORDER BY 1")


def test_covariate_drift_gives_exactly_one_retrain(history, tmp_path, capsys, monkeypatch):
    path = follow(history, tmp_path / "covariate", "covariate", AFTER, 1, capsys, monkeypatch)
    done = retrains(path)
    assert [v["reason"] for v in done] == ["drift"], [(v["reason"], v["change_point"])
                                                        for v in done]
    model = done[0]
    assert model["change_point"] == CHANGE.isoformat()
    assert model["decision"]["approved"]
    # What it learned: the drifted day itself. Its labels come a day later, and the retrain
    # waited for them (the trigger log says so), then refitted on train + holdout.
    refit = model["training_info"]["refit"]
    assert refit["on"] == "train + holdout"
    assert refit["partitions"][-1] == CHANGE.isoformat()
    waited = [e for e in TriggerLog(path.parent / "data").entries() if e["decision"] == "waiting"]
    assert [(e["partition"], "waiting for the labels of" in e["detail"]) for e in waited] == [
        (CHANGE.isoformat(), True)]
    status = ct_json(path, capsys, "status")
    assert status["deployed"]["version"] == model["version"]
    assert status["deployed"]["reason"] == "drift"
    # Its drift reference is the drifted regime, so the six drifted days after the one it was
    # launched on pass.
    drift = Warehouse(load_config(path).warehouse_path).query(
        "SELECT _partition, model_version, count(*) FILTER (drifted) AS drifted "
        "FROM drift_report WHERE segment = 'all' AND _partition > ? GROUP BY ALL ORDER BY 1",
        [(CHANGE + dt.timedelta(days=1)).isoformat()])
    assert drift.height == AFTER - 2
    assert set(drift["model_version"]) == {model["version"]}
    assert drift["drifted"].max() <= 1
    launched = [e for e in TriggerLog(path.parent / "data").entries()
                if e["decision"] == "launched"]
    assert [(e["trigger"], e["partition"]) for e in launched] == [
        ("drift_sensor", CHANGE.isoformat())]


def test_concept_drift_retrains_at_most_twice_and_learns_it(history, tmp_path, capsys,
                                                            monkeypatch):
    path = follow(history, tmp_path / "concept", "concept", AFTER, 1, capsys, monkeypatch)
    done = retrains(path)
    assert 1 <= len(done) <= 2, [(v["reason"], v["change_point"]) for v in done]
    assert {v["reason"] for v in done} <= {"performance", "drift"}
    first = done[0]
    assert first["change_point"] == CHANGE.isoformat()
    assert first["regime_start"] == CHANGE.isoformat() and first["regime_kind"] == "concept"
    assert first["training_info"]["refit"]["on"] == "the rows since the change of concept"
    # Realised performance: the old model fails on the new concept; the retrained one learned it.
    performance = realised(path)
    old = performance.filter(pl.col("_partition") == CHANGE.isoformat())
    assert old["roc_auc"][0] < 0.5
    learned = performance.filter(pl.col("model_version") == first["version"])
    assert learned.height >= 2 and learned["roc_auc"].mean() > 0.65
    # Once six partitions of the new concept are labelled (holdout + 1), one follow-up retrain
    # learns and validates on them alone; it is the second retrain, if any.
    assert [(v["change_point"], regime_partitions(v) >= 6) for v in done[1:]] in (
        [], [(CHANGE.isoformat(), True)])
    # Every decision a trigger took is logged with its partition; skips say why.
    entries = TriggerLog(path.parent / "data").entries()
    assert all(e["partition"] for e in entries)
    skipped = [e for e in entries if e["decision"] == "skipped"]
    assert all(": " in e["detail"] for e in skipped)
    status = ct_json(path, capsys, "status")
    assert status["triggers"]["performance_sensor"]["trigger"] == "performance_sensor"


def test_sixty_quiet_days_retrain_nothing(history, tmp_path, capsys, monkeypatch):
    path = follow(history, tmp_path / "none", "none", 60 - HISTORY, 10, capsys, monkeypatch)
    assert retrains(path) == []
    performance = realised(path)
    assert performance["_partition"].max() == (CHANGE + dt.timedelta(days=28)).isoformat()
    assert TriggerLog(path.parent / "data").entries() == []


def test_online_strategy_learns_each_labelled_partition_through_the_gate(history, tmp_path,
                                                                          capsys, monkeypatch):
    shutil.copytree(history, tmp_path / "online")
    path = tmp_path / "online" / "ct.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["training"]["strategy"] = "online"
    raw["triggers"].update(drift=False, performance=False)  # only online updates here
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "online" / "data" / "dagster"))
    drift = DriftScenario("concept", CHANGE)
    for offset in range(3):
        land(path, CHANGE + dt.timedelta(days=offset), 1, drift)
        assert ct_json(path, capsys, "run")["failed_runs"] == 0
    store = ModelStore(load_config(path).models_dir)
    updates = [store.describe(v) for v in store.versions() if store.describe(v)["reason"]
               == "online"]
    first = store.describe(store.versions()[0])
    # One update per newly labelled partition, each continuing the champion of its time: the
    # last history day (labels came with the first new day), then each labelled drifted day.
    learned = [u["online"]["learned_partition"] for u in updates]
    assert learned == [(CHANGE - dt.timedelta(days=1) + dt.timedelta(days=n)).isoformat()
                       for n in range(3)]
    assert updates[0]["parent"] == first["version"]
    assert updates[0]["online"]["rounds_added"] == 20
    # Each update but the newest was judged, prequentially, on the next partition.
    judged = [u for u in updates if u["decision"] is not None]
    assert len(judged) == 2 and updates[-1]["decision"] is None
    for update in judged:
        assert "which neither model had learned" in update["decision"]["notes"][0]
    with dg.DagsterInstance.get() as instance:  # each partition's model_update says its own
        for update in updates:
            key = update["online"]["learned_partition"]
            records = instance.fetch_materializations(dg.AssetRecordsFilter(
                asset_key=dg.AssetKey("model_update"), asset_partitions=[key]), limit=1).records
            shown = {name: entry.value for name, entry in
                     records[0].asset_materialization.metadata.items()}
            assert shown["pending_version"] == update["version"]
            assert f"learned {key} into {update['version']}" in shown["outcome"]
    # Promotions are ordinary versions: deployed with reason online, and rolled back as any.
    promoted = [u for u in judged if u["decision"]["approved"]]
    status = ct_json(path, capsys, "status")
    if promoted:
        assert status["deployed"]["version"] == promoted[-1]["version"]
        assert status["deployed"]["reason"] == "online"
        rolled = ct_json(path, capsys, "rollback")
        assert rolled["version"] == promoted[-1]["parent"]
    else:
        assert status["deployed"]["version"] == first["version"]
