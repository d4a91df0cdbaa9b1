"""`model_update` with scikit-learn's SGD: online versions through `ct run`, the gate, rollback.

A small simulator project (`training.strategy: online`, `model: sklearn_sgd`) trains its first
model on seven days, then learns each newly labelled day with one `partial_fit` pass. The gate
is opened (`max_regression: 1.0`, `min_value: 0.0`) so the first update is promoted whatever
its score: what is tested is that an online version is an ordinary version, deployed with
reason `online` and rolled back to the version it continued.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import yaml

from ct_assets.lib.config import load_config
from ct_assets.lib.model_store import ModelStore
from ct_assets.lib.serving import load_verified
from ct_assets.lib.simulator import write_days
from ct_assets.lib.warehouse import Warehouse
from ct_assets_tests.projects import ct_json

FIRST_DAY, HISTORY, ROWS_PER_DAY = dt.date(2026, 1, 1), 7, 400
PROJECT = {
    "dataset": {"source": "simulator"},
    "partitions": {"start": FIRST_DAY.isoformat()},
    "training": {"window": 6, "holdout": 2, "model": "sklearn_sgd", "strategy": "online"},
    "triggers": {"drift": False, "performance": False},  # only online updates here
    "gate": {"max_regression": 1.0, "min_value": 0.0},  # every judged update is approved
    "storage": {"dir": "data"},
}


def land(path: Path, first: dt.date, days: int) -> None:
    """Simulated days, their labels in the rows (known once the next day lands)."""
    write_days(load_config(path).landing_dir, start=first, days=days,
               rows_per_day=ROWS_PER_DAY)


def day(offset: int) -> str:
    return (FIRST_DAY + dt.timedelta(days=offset)).isoformat()


def test_sgd_updates_are_versions_promoted_through_the_gate_and_rolled_back(tmp_path, capsys,
                                                                             monkeypatch):
    path = tmp_path / "ct.yaml"
    path.write_text(yaml.safe_dump(PROJECT), encoding="utf-8")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "data" / "dagster"))
    land(path, FIRST_DAY, HISTORY)
    assert ct_json(path, capsys, "run")["failed_runs"] == 0  # the first model, on days 0 … 6
    land(path, FIRST_DAY + dt.timedelta(days=HISTORY), 2)  # day 7 labelled: a first update
    assert ct_json(path, capsys, "run")["failed_runs"] == 0
    land(path, FIRST_DAY + dt.timedelta(days=HISTORY + 2), 1)  # day 8 labelled: judged on it
    assert ct_json(path, capsys, "run")["failed_runs"] == 0

    store = ModelStore(load_config(path).models_dir)
    versions = [store.describe(version) for version in store.versions()]
    initial, updates = versions[0], versions[1:]
    assert initial["reason"] == "initial" and initial["model"] == "sklearn_sgd"
    assert [u["reason"] for u in updates] == ["online", "online"]
    # Each labelled day the first model had not learned, continued from the champion of its
    # time: the first update from the initial model, the second from the promoted first.
    assert [u["online"]["learned_partition"] for u in updates] == [day(7), day(8)]
    assert [u["parent"] for u in updates] == [initial["version"], updates[0]["version"]]
    assert all(u["online"]["continued_from"] == u["parent"] for u in updates)
    assert [(u["model"], u["online"]["epochs"], u["online"]["rows"]) for u in updates] == [
        ("sklearn_sgd", 1, ROWS_PER_DAY)] * 2
    # The partial_fit pass changed the model: the same rows score differently.
    rows = Warehouse(load_config(path).warehouse_path).query(
        "SELECT * FROM features WHERE _partition = ?", [day(9)])
    assert rows.height == ROWS_PER_DAY
    before, _ = load_verified(store, initial["version"])
    after, _ = load_verified(store, updates[0]["version"])
    assert not np.allclose(before.predict(rows), after.predict(rows))
    # The first update was judged on day 8, which neither model had learned, and promoted.
    decision = updates[0]["decision"]
    assert decision["approved"] and decision["champion_version"] == initial["version"]
    assert f"judged on partition {day(8)}" in decision["notes"][0]
    assert updates[1]["decision"] is None  # judged once day 9's labels are known
    status = ct_json(path, capsys, "status")
    assert (status["deployed"]["version"], status["deployed"]["reason"]) == (
        updates[0]["version"], "online")

    rolled = ct_json(path, capsys, "rollback")  # back to the version the update continued
    assert rolled["version"] == updates[0]["parent"] == initial["version"]
    status = ct_json(path, capsys, "status")
    assert (status["deployed"]["version"], status["deployed"]["reason"]) == (
        initial["version"], "rollback")
    assert store.deployed()["rolled_back_from"] == updates[0]["version"]
