"""Production closes the loop: what `ct serve` answers is monitored, and its feedback measured.

A simulator project (labels landing apart, `drift.on: served`) lands 6 days and `ct run`
deploys a first model. `ct serve` then answers today's traffic (rows of a held-back day, under
new ids that never land as files), `ct status` reads the version from the running server, and
the application sends the true labels back through `POST /feedback`. After SIGTERM (the request
log is flushed), one `ct run` takes the served rows in (`served_predictions`), judges their
drift, ingests the feedback as labels of those rows, and measures today's realised performance
on them: every figure checked against the warehouse.
"""

from __future__ import annotations

import datetime as dt
import json

import duckdb
import httpx
import polars as pl
import yaml

from ct_assets import cli
from ct_assets.lib.config import load_config
from ct_assets.lib.features import build_features
from ct_assets.lib.simulator import simulate_day, write_days
from ct_assets.lib.validation import PARTITION
from ct_assets_tests.serve.conftest import CtServe

DAYS, ROWS_PER_DAY, SERVED = 6, 500, 300


def test_served_rows_and_their_feedback_reach_drift_and_performance(tmp_path, monkeypatch,
                                                                   capsys):
    today = dt.datetime.now(dt.UTC).date()
    first = today - dt.timedelta(days=DAYS)
    path = tmp_path / "ct.yaml"
    path.write_text(yaml.safe_dump({
        "dataset": {"source": "simulator", "labels": {"landing_dir": "labels"}},
        "partitions": {"start": first.isoformat()},
        "training": {"window": DAYS, "holdout": 1},
        "triggers": {"label_delay": 0, "drift": False, "performance": False},
        "drift": {"on": "served"},
        "serving": {"log_flush_seconds": 0.2, "watch_seconds": 0.2},
        "storage": {"dir": "data"}}), encoding="utf-8")
    config = load_config(path)
    monkeypatch.setenv("DAGSTER_HOME", str(config.dagster_home))
    write_days(config.landing_dir, start=first, days=DAYS, rows_per_day=ROWS_PER_DAY,
               labels_dir=config.labels_dir, label_delay=0)
    assert cli.main(["--config", str(path), "run"]) == 0
    version = json.loads((config.models_dir / "deployed.json").read_text())["deployed"]["version"]

    server = CtServe(path, env={"DAGSTER_HOME": str(config.dagster_home)})
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            inputs = client.get(f"/v2/models/{config.serving.model_name}").json()["inputs"]
            features = [spec["name"] for spec in inputs]
            # Today's traffic: a day the model never saw, under ids that never land as files.
            day = simulate_day(today, SERVED, seed=77)
            rows = _features_of(day, config, features)
            ids = [f"live-{index:04d}" for index in range(rows.height)]
            answered = client.post("/predict", json={"records": [
                {**record, config.dataset.id: row_id}
                for record, row_id in zip(rows.select(features).to_dicts(), ids, strict=True)]})
            assert answered.status_code == 200, answered.text
            predictions = answered.json()["predictions"]
            assert [p["id"] for p in predictions] == ids
            assert answered.json()["model_version"] == version
            capsys.readouterr()
            assert cli.main(["--config", str(path), "status", "--json"]) == 0
            serving = json.loads(capsys.readouterr().out)["serving"]
            assert serving["reachable"] and serving["version"] == version, serving
            truth = day[config.dataset.target].to_list()
            feedback = client.post("/feedback", json={"labels": [
                {"id": row_id, "label": label} for row_id, label in zip(ids, truth, strict=True)]})
            assert feedback.status_code == 200, feedback.text
            assert feedback.json()["accepted"] == SERVED
    finally:
        assert server.terminate() == 0
        server.stop()

    assert cli.main(["--config", str(path), "run"]) == 0
    key = today.isoformat()
    with duckdb.connect(str(config.warehouse_path), read_only=True) as warehouse:
        served = warehouse.sql("SELECT * FROM served_predictions").pl()
        labels = warehouse.sql("SELECT * FROM labels WHERE labelled_partition = ?",
                               params=[key]).pl()
        drift = warehouse.sql("SELECT * FROM drift_report WHERE _partition = ? "
                              "AND segment = 'all'", params=[key]).pl()
        performance = warehouse.sql("SELECT * FROM model_performance WHERE _partition = ?",
                                    params=[key]).pl()
    assert sorted(served[config.dataset.id].to_list()) == ids  # every answered row, once
    assert set(served[PARTITION]) == {key}
    assert sorted(labels[config.dataset.id].to_list()) == ids  # feedback matched its rows
    assert drift.height and drift["statistic"].is_not_null().sum() >= len(features) // 2
    assert performance["rows"].to_list() == [SERVED]  # measured on the served rows
    expected = _roc_auc(pl.Series(truth), pl.Series([p["score"] for p in predictions]))
    assert abs(performance["roc_auc"][0] - expected) < 1e-9


def _features_of(day: pl.DataFrame, config, features: list[str]) -> pl.DataFrame:
    """The model's inputs for `day`'s rows, as the pipeline computes them (recent means from
    the landed days before it)."""
    with duckdb.connect(str(config.warehouse_path), read_only=True) as warehouse:
        history = warehouse.sql("SELECT * FROM raw_events").pl()
    today = day.with_columns(pl.col(config.dataset.timestamp).dt.strftime("%Y-%m-%d")
                             .alias(PARTITION))
    raw = pl.concat([history.select(today.columns).cast(dict(today.schema)), today])
    return build_features(raw, config, [today[PARTITION][0]]).select(features)


def _roc_auc(y: pl.Series, scores: pl.Series) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y.cast(pl.Int64).to_numpy(), scores.to_numpy()))

