"""The policy backtest on a small simulated history: same first model, honest clock."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from ct_assets import cli
from ct_assets.lib.backtest import KNOWN, POLICIES, backtest, chart_png, results_table
from ct_assets.lib.config import config_from_dict
from ct_assets.lib.simulator import DriftScenario, write_days

FIRST = dt.date(2026, 3, 1)
DAYS, CHANGE, ROWS = 22, 14, 1500


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """22 days of a covariate drift from day 14, labels a day late in label files."""
    root = tmp_path_factory.mktemp("backtest")
    raw = {"dataset": {"source": "simulator", "labels": {"landing_dir": "labels"}},
           "partitions": {"start": FIRST.isoformat()},
           "training": {"window": 10, "holdout": 3}, "storage": {"dir": "data"}}
    (root / "ct.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    config = config_from_dict(raw, base_dir=root)
    write_days(config.landing_dir, start=FIRST, days=DAYS, rows_per_day=ROWS,
               drift=DriftScenario("covariate", FIRST + dt.timedelta(days=CHANGE)),
               labels_dir=config.labels_dir, label_delay=1)
    return root


@pytest.fixture(scope="module")
def replayed(project: Path):
    config = config_from_dict(yaml_load(project / "ct.yaml"), base_dir=project)
    return config, *backtest(config, ["never", "schedule", "drift", "online"], every=4)


def yaml_load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_every_policy_starts_from_the_same_model_and_measures_the_same_partitions(replayed):
    config, results, replay = replayed
    keys = replay.history.keys
    assert keys[0] == FIRST.isoformat() and len(keys) == DAYS
    # The first model needs training.window labelled partitions: labels come a day late.
    assert replay.first == config.training.window
    measured = [[row["partition"] for row in result.measured] for result in results]
    assert all(partitions == measured[0] for partitions in measured)
    # From the day after the first model to the last day whose labels have landed.
    assert measured[0] == keys[replay.first + 1:-1]
    never = results[0]
    assert never.retrains == {} and {row["model"] for row in never.measured} == {
        f"initial@{keys[replay.first]}"}


def test_triggers_retrain_as_the_live_loop_does(replayed):
    _, results, replay = replayed
    by_policy = {result.policy: result for result in results}
    keys = replay.history.keys
    schedule = by_policy["schedule"]
    due = [step for step in range(replay.first + 1, len(keys)) if (step - replay.first) % 4 == 0]
    assert sum(schedule.retrains.values()) + schedule.refusals == len(due) > 0
    assert [e["partition"] for e in schedule.events] == [keys[step] for step in due]
    drift = by_policy["drift"]
    change = (FIRST + dt.timedelta(days=CHANGE)).isoformat()
    learned = (FIRST + dt.timedelta(days=CHANGE + 1)).isoformat()  # its labels are known
    # The drift retrain waits for the drifted day's labels (a day late), as drift_sensor does.
    assert drift.events[0] == {"partition": change, "event": "drift",
                               "action": "waiting for labels"}
    retrained = [e for e in drift.events if e["action"] == "retrained"]
    assert retrained and retrained[0] == {"partition": learned, "event": "drift",
                                          "action": "retrained"}
    assert drift.retrains == {"drift": 1}  # the reference moved with the change: once
    # Partitions after the retrain are scored by the retrained model.
    after = [row["model"] for row in drift.measured if row["partition"] > learned]
    assert after and set(after) == {f"drift@{learned}"}
    online = by_policy["online"]
    assert online.retrains["online"] + online.refusals >= len(online.measured) - 2


def test_no_policy_sees_a_label_before_it_is_known(replayed):
    _, _, replay = replayed
    rows = replay.history.rows
    # Labels land a day after their rows: each is known at the end of the next partition.
    day = rows.filter(pl.col("_partition") == "2026-03-05")
    assert set(day[KNOWN]) == {"2026-03-06"}
    seen = replay.known_by("2026-03-05")
    assert seen.filter(pl.col("_partition") == "2026-03-05")["is_fraud"].null_count() == ROWS
    assert seen.filter(pl.col("_partition") == "2026-03-04")["is_fraud"].null_count() == 0


def test_table_and_chart(replayed):
    _, results, _ = replayed
    rows = results_table(results, "roc_auc")
    assert [row["policy"] for row in rows] == ["never", "schedule", "drift", "online"]
    for row in rows:
        assert 0.5 < row["mean_roc_auc"] <= 1 and row["worst_roc_auc"] <= row["mean_roc_auc"]
        assert row["partitions"] == len(results[0].measured)
    assert chart_png(results, "roc_auc")[:8] == b"\x89PNG\r\n\x1a\n"


def test_ct_backtest_leaves_the_live_state_alone(project, capsys, tmp_path):
    chart = tmp_path / "chart.png"
    capsys.readouterr()
    assert cli.main(["--config", str(project / "ct.yaml"), "backtest", "--policies",
                     "never,performance", "--json", "--chart", str(chart)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["policy"] for row in report["policies"]] == ["never", "performance"]
    assert report["metric"] == "roc_auc" and chart.is_file()
    config = config_from_dict(yaml_load(project / "ct.yaml"), base_dir=project)
    # No warehouse, model store, catalog or instance: the live state is untouched.
    assert sorted(p.name for p in config.storage_dir.iterdir()) == ["landing"]
    assert cli.main(["--config", str(project / "ct.yaml"), "backtest", "--policies",
                     "weekly"]) == 2
    assert "unknown policy 'weekly'" in capsys.readouterr().err
    assert set(POLICIES) == {"never", "schedule", "drift", "performance", "drift+performance",
                             "online"}
