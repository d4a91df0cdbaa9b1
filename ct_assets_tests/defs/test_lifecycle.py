"""The whole model lifecycle, in-process on the real asset graph and a real persistent instance.

ingest → features → training set → candidate → validation (blocking gate) → deployment →
scoring, then the gate refusing a candidate, a drift retrain, a rollback, a tampered artifact
and the Elec2 example. Each test gets its own copy of a project (config, landing dir, warehouse,
model store and Dagster instance): the expensive first retrain is built once per module and
copied, so the tests stay independent and the file stays fast.
"""

from __future__ import annotations

import datetime as dt
import math
import shutil
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import polars as pl
import pytest
import yaml

from ct_assets import cli
from ct_assets.definitions import build_definitions
from ct_assets.lib.config import Config, load_config
from ct_assets.lib.features import feature_schema
from ct_assets.lib.ingest import FileCatalog, landed_partitions
from ct_assets.lib.model_store import DECISION, MANIFEST, ModelStore, sha256_file
from ct_assets.lib.partition_figures import significant
from ct_assets.lib.simulator import write_days
from ct_assets.lib.warehouse import Warehouse
from ct_assets.runner import RANGE_END_TAG, RANGE_START_TAG
from ct_assets_tests.live import template_instance
from ct_assets_tests.projects import ct_json, elec2_prepare

ROOT = Path(__file__).resolve().parents[2]
ELEC2_EXAMPLE = ROOT / "examples" / "elec2"
FIRST_DAY, DAYS, ROWS_PER_DAY = dt.date(2026, 1, 1), 10, 2000
FIRST, LAST = "2026-01-01", "2026-01-10"
SCORED = "2026-01-05"
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
BASE_CONFIG: dict[str, Any] = {
    "dataset": {"source": "simulator"},
    "partitions": {"start": FIRST},
    "training": {"window": 10, "holdout": 3, "model": "lightgbm"},
    "storage": {"dir": "data"},
}


# --------------------------------------------------------------------------- project helpers

def write_config(root: Path, **sections: dict[str, Any]) -> Path:
    """`ct.yaml` in `root`: the base config with `sections` merged in; returns its path."""
    raw = {key: dict(value) for key, value in BASE_CONFIG.items()}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    path = root / "ct.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def project_instance(config: Config) -> AbstractContextManager[dg.DagsterInstance]:
    """The project's own persistent instance under `<storage>/dagster`, as `ct` writes it."""
    return template_instance(config.dagster_home)


def run_job(config: Config, instance: dg.DagsterInstance, job: str, *,
            tags: dict[str, str] | None = None, partition: str | None = None,
            partitions: tuple[str, str] | None = None,
            raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    """Execute one job of freshly built definitions against `instance`."""
    defs = build_definitions(config)
    run_tags = dict(tags or {})
    if partitions:
        run_tags.update({RANGE_START_TAG: partitions[0], RANGE_END_TAG: partitions[1]})
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance, tags=run_tags, partition_key=partition, run_config=QUIET,
        raise_on_error=raise_on_error)


def checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def materialized(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    """Asset key → metadata (plain values) of each materialization in the run."""
    return {event.asset_key.to_user_string(): {
        key: value.value for key, value in
        event.step_materialization_data.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()}


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    """Every step failure's error, causes included, as one string."""
    texts = []
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None:
            texts.append(error.message)
            error = error.cause
    return "\n".join(texts)


def predictions_of(config: Config, partition: str) -> pl.DataFrame:
    return Warehouse(config.warehouse_path).query(
        "SELECT * FROM predictions WHERE _partition = ? ORDER BY transaction_id", [partition])


def features_of(config: Config, partition: str) -> pl.DataFrame:
    return Warehouse(config.warehouse_path).query(
        "SELECT * FROM features WHERE _partition = ? ORDER BY transaction_id", [partition])


# ---------------------------------------------------------------- shared, copied-per-test state

_BUILT: dict[str, dict[str, Any]] = {}


def _build_pipeline(root: Path, model: str) -> dict[str, Any]:
    """Simulate, ingest, retrain (first model), score every partition; record what happened."""
    path = write_config(root, training={"model": model})
    config = load_config(path)
    write_days(config.landing_dir, start=FIRST_DAY, days=DAYS, rows_per_day=ROWS_PER_DAY)
    with project_instance(config) as instance:
        data = run_job(config, instance, "data_job", partitions=(FIRST, LAST))
        assert data.success
        retrain = run_job(config, instance, "retrain_job")
        assert retrain.success
        scoring = run_job(config, instance, "scoring_job", partitions=(FIRST, LAST))
        assert scoring.success
        return {"root": root, "config_path": path, "checks": checks(retrain),
                "retrain": materialized(retrain), "scoring": materialized(scoring),
                "version": ModelStore(config.models_dir).deployed()["version"]}


def built(tmp_path_factory: pytest.TempPathFactory, model: str) -> dict[str, Any]:
    if model not in _BUILT:
        _BUILT[model] = _build_pipeline(tmp_path_factory.mktemp(f"base-{model}"), model)
    return _BUILT[model]


def clone(source: Path, target: Path) -> tuple[Path, Config]:
    """A private copy of a whole project (closed instance included); its ct.yaml and config."""
    shutil.copytree(source, target, symlinks=True)
    return target / "ct.yaml", load_config(target / "ct.yaml")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A lightgbm project with one deployed model (reason `initial`) and all partitions scored."""
    return built(tmp_path_factory, "lightgbm")


@pytest.fixture(scope="module")
def drifted(base: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`base` after a drift retrain (change point Jan 6, approved) and re-scoring LAST."""
    path, config = clone(base["root"], tmp_path_factory.mktemp("drifted") / "project")
    with project_instance(config) as instance:
        # As drift_sensor tags it: a retrain on exactly the champion's data would be skipped.
        retrain = run_job(config, instance, "retrain_job",
                          tags={"ct/reason": "drift", "ct/change_point": "2026-01-06"})
        assert retrain.success
        scoring = run_job(config, instance, "scoring_job", partition=LAST)
        assert scoring.success
    return {"root": path.parent, "config_path": path, "config": config,
            "checks": checks(retrain), "retrain": materialized(retrain),
            "version": ModelStore(config.models_dir).deployed()["version"]}


# ------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("model", ["lightgbm", "sklearn_hgb"])
def test_first_retrain_deploys_and_scores(model: str, tmp_path_factory: pytest.TempPathFactory):
    state = built(tmp_path_factory, model)
    config = load_config(state["config_path"])
    store = ModelStore(config.models_dir)
    deployed = store.deployed()
    version = state["version"]
    assert deployed is not None and deployed["version"] == version
    assert deployed["reason"] == "initial" and deployed["previous"] is None
    assert store.status(version) == "deployed"

    gate = state["checks"]["gate"]
    assert gate.passed and gate.asset_key == dg.AssetKey("validation_report")
    assert set(state["retrain"]) == {"training_set", "candidate_model", "validation_report",
                                     "deployed_model"}
    assert state["retrain"]["deployed_model"]["deployed_version"] == version

    # Manifest: every file hashed, schema, window, params, versions, lineage, reason.
    manifest = store.manifest(version)  # verifies every sha256 on the way
    directory = store.path(version)
    on_disk = {p.relative_to(directory).as_posix() for p in directory.rglob("*")
               if p.is_file()} - {MANIFEST, DECISION}
    # The deployable model, its feature specs and drift reference, and the evaluation model
    # (fitted without the holdout, the one the gate judged) with its specs.
    assert set(manifest["files"]) == on_disk and len(on_disk) == 5
    assert "reference_profile.json" in on_disk  # the drift reference travels with the model
    assert {"evaluation/features.json"} < on_disk
    for name, digest in manifest["files"].items():
        assert digest == sha256_file(directory / name)
    assert manifest["model"] == model
    assert [s["name"] for s in manifest["feature_schema"]] == list(feature_schema(config))
    window = manifest["training_window"]
    # Deployed: refitted on train + holdout; judged: the evaluation model, train split only.
    assert window["partitions"] == [f"2026-01-{day:02d}" for day in range(1, 11)]
    assert window["rows"] == 10 * ROWS_PER_DAY
    assert manifest["evaluation_window"]["partitions"] == window["partitions"][:7]
    assert manifest["training_info"]["refit"]["on"] == "train + holdout"
    assert manifest["training_info"]["refit"]["partitions"] == window["partitions"]
    assert manifest["params"] == {} and manifest["seed"] == 0
    versions = manifest["library_versions"]
    assert {"python", "lightgbm", "scikit-learn", "polars", "duckdb", "dagster"} <= set(versions)
    training_set = state["retrain"]["training_set"]
    assert manifest["training_set_version"] == training_set["data_version"]
    assert training_set["holdout_rows"] == 3 * ROWS_PER_DAY
    assert manifest["parent"] is None and manifest["reason"] == "initial"

    report = state["retrain"]["validation_report"]
    assert report["candidate_version"] == version and report["champion_version"] == "none"
    assert report["verdict"].startswith("approved")
    assert 0.6 <= report["candidate_roc_auc"] <= 1.0
    assert "data:image/png;base64," in report["report"]
    assert report["report"].startswith("## approved")

    # One prediction per feature row, each carrying the deployed version.
    predictions, features = predictions_of(config, SCORED), features_of(config, SCORED)
    assert predictions.height == features.height == ROWS_PER_DAY
    assert predictions["transaction_id"].to_list() == features["transaction_id"].to_list()
    assert predictions["transaction_id"].n_unique() == ROWS_PER_DAY
    assert set(predictions["model_version"]) == {version}
    assert predictions["score"].is_between(0, 1).all()
    assert state["scoring"]["predictions"]["model_version"] == version
    # The ten days were scored in one run; each partition records its own rows.
    assert state["scoring"]["predictions"]["dagster/row_count"] == ROWS_PER_DAY


def test_gate_rejects_and_the_champion_stays(base, tmp_path, capsys):
    path, _ = clone(base["root"], tmp_path / "project")
    path = write_config(path.parent, gate={"min_value": 0.99})
    config = load_config(path)
    assert config.gate.min_value == 0.99
    with project_instance(config) as instance:
        result = run_job(config, instance, "retrain_job", raise_on_error=False)
        gate = checks(result)["gate"]
        assert not gate.passed
        assert gate.severity == dg.AssetCheckSeverity.ERROR
        assert "below gate.min_value 0.99" in gate.metadata["verdict"].value
        done = materialized(result)
        assert {"training_set", "candidate_model", "validation_report"} <= set(done)
        assert "deployed_model" not in done  # the blocking check stopped promotion
        deployed_events = instance.get_latest_materialization_event(
            dg.AssetKey("deployed_model"))
        assert deployed_events.run_id != result.run_id

    candidate = done["candidate_model"]["version"]
    store = ModelStore(config.models_dir)
    assert candidate != base["version"]
    assert store.deployed()["version"] == base["version"]
    assert store.status(candidate) == "rejected"
    assert store.describe(candidate)["parent"] == base["version"]
    listed = {row["version"]: row for row in ct_json(path, capsys, "models")}
    assert listed[candidate]["status"] == "rejected"
    assert listed[base["version"]]["status"] == "deployed"
    status = ct_json(path, capsys, "status")
    assert status["deployed"]["version"] == base["version"]
    assert status["last_retrain"]["status"] == "rejected"


def test_drift_retrain_deploys_with_reason_drift(base, drifted, capsys):
    config = drifted["config"]
    assert drifted["checks"]["gate"].passed
    new = drifted["version"]
    assert new != base["version"]
    assert drifted["retrain"]["candidate_model"]["reason"] == "drift"
    manifest = ModelStore(config.models_dir).manifest(new)
    assert manifest["parent"] == base["version"] and manifest["reason"] == "drift"
    report = drifted["retrain"]["validation_report"]
    assert report["champion_version"] == base["version"]
    # The UI shows the metrics rounded; decision.json and the warehouse keep them whole.
    gate = drifted["checks"]["gate"].metadata
    shown = {**{key: value for key, value in report.items()
                if key.startswith(("candidate_", "champion_")) and isinstance(value, float)},
             "observed": gate["observed"].value, "champion_value": gate["champion_value"].value}
    assert {"candidate_roc_auc", "champion_roc_auc", "candidate_brier"} <= set(shown)
    for key, value in shown.items():
        assert isinstance(value, float) and value == significant(value), (key, value)
    decision = ModelStore(config.models_dir).decision(new)
    assert shown["observed"] == significant(decision["candidate_value"])
    assert shown["champion_value"] == significant(decision["champion_value"])
    stored = Warehouse(config.warehouse_path).query(
        "SELECT value FROM validation_report WHERE candidate_version = ? AND segment = 'all'",
        [new])["value"].drop_nulls().drop_nans().to_list()
    assert any(value != significant(value) for value in stored), stored

    status = ct_json(drifted["config_path"], capsys, "status")
    deployed = status["deployed"]
    assert deployed["version"] == new and deployed["reason"] == "drift"
    assert isinstance(deployed["metrics"], dict) and deployed["metrics"]
    assert all(isinstance(k, str) and isinstance(v, float) for k, v in
               deployed["metrics"].items())
    assert math.isfinite(deployed["metrics"]["roc_auc"])
    promoted = dt.datetime.fromisoformat(deployed["promoted_at"])
    assert promoted.tzinfo is not None
    assert abs(dt.datetime.now(dt.UTC) - promoted) < dt.timedelta(hours=1)
    assert set(predictions_of(config, LAST)["model_version"]) == {new}


def test_rollback_restores_the_previous_version_for_scoring(drifted, base, tmp_path, capsys):
    path, config = clone(drifted["root"], tmp_path / "project")
    rolled = ct_json(path, capsys, "rollback")
    assert rolled["version"] == base["version"] and rolled["reason"] == "rollback"
    status = ct_json(path, capsys, "status")
    assert status["deployed"]["version"] == base["version"]
    assert status["deployed"]["reason"] == "rollback"
    assert set(predictions_of(config, LAST)["model_version"]) == {drifted["version"]}

    with project_instance(config) as instance:
        assert run_job(config, instance, "scoring_job", partition=LAST).success
    rescored = predictions_of(config, LAST)
    assert rescored.height == ROWS_PER_DAY
    assert set(rescored["model_version"]) == {base["version"]}
    history = ModelStore(config.models_dir).pointer()["history"]
    assert [r["reason"] for r in history] == ["initial", "drift", "rollback"]


def test_tampered_model_is_refused_and_nothing_is_scored(base, tmp_path, capsys):
    path, config = clone(base["root"], tmp_path / "project")
    model_file = ModelStore(config.models_dir).path(base["version"]) / "model.txt"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    model_file.write_bytes(bytes(data))
    before = predictions_of(config, SCORED)

    with project_instance(config) as instance:
        result = run_job(config, instance, "scoring_job", partition=SCORED,
                         raise_on_error=False)
    assert not result.success
    message = failure_text(result)
    assert str(model_file) in message and "sha256" in message
    assert "predictions" not in materialized(result)
    assert predictions_of(config, SCORED).equals(before)

    status = ct_json(path, capsys, "status")
    assert status["deployed"]["version"] == base["version"]
    assert cli.main(["--config", str(path), "status"]) == 0
    assert base["version"] in capsys.readouterr().out


def test_model_dirs_without_a_valid_manifest_are_ignored(base, tmp_path, capsys):
    path, config = clone(base["root"], tmp_path / "project")
    models = config.models_dir
    (models / "zz-empty").mkdir()
    (models / "zz-not-json").mkdir()
    (models / "zz-not-json" / MANIFEST).write_text("{not json", encoding="utf-8")
    (models / "zz-no-files").mkdir()
    (models / "zz-no-files" / MANIFEST).write_text('{"model": "lightgbm"}', encoding="utf-8")
    (models / "zz-list").mkdir()
    (models / "zz-list" / MANIFEST).write_text("[1, 2]", encoding="utf-8")
    (models / "zz-files-text").mkdir()
    (models / "zz-files-text" / MANIFEST).write_text('{"files": "model.txt"}', encoding="utf-8")
    (models / "zz-files-empty").mkdir()
    (models / "zz-files-empty" / MANIFEST).write_text('{"files": {}}', encoding="utf-8")
    (models / ".staging-half-written").mkdir()

    listed = ct_json(path, capsys, "models")
    assert [row["version"] for row in listed] == [base["version"]]
    assert listed[0]["status"] == "deployed"
    assert cli.main(["--config", str(path), "models"]) == 0
    assert "zz-" not in capsys.readouterr().out
    status = ct_json(path, capsys, "status")
    assert status["models"] == 1 and status["last_retrain"]["version"] == base["version"]
    assert cli.main(["--config", str(path), "rollback", "--to", "zz-files-empty"]) == 2
    assert "no model version 'zz-files-empty'" in capsys.readouterr().err
    assert ModelStore(models).deployed()["version"] == base["version"]

    # A hand-made manifest that lists files but names no version: listed, never a crash.
    (models / "zzz-hand-made").mkdir()
    (models / "zzz-hand-made" / MANIFEST).write_text('{"files": {"model.txt": "00"}}',
                                                     encoding="utf-8")
    status = ct_json(path, capsys, "status")
    assert status["last_retrain"]["version"] == "zzz-hand-made"
    assert status["last_retrain"]["status"] == "candidate"
    assert status["deployed"]["version"] == base["version"]


# --------------------------------------------------------------------------------- Elec2

def test_elec2_landed_data_to_deployed_model_to_predictions(tmp_path):
    rows = 10_000
    source = tmp_path / "elec_head.csv"
    prepare = elec2_prepare()
    pl.read_csv(prepare.find_source(), n_rows=rows).write_csv(source)  # fails naming the paths
    shutil.copyfile(ELEC2_EXAMPLE / "ct.yaml", tmp_path / "ct.yaml")
    config = load_config(tmp_path / "ct.yaml")
    assert prepare.prepare(source, config.landing_dir) == rows

    landed, _ = landed_partitions(config, FileCatalog(config.landing_catalog_path))
    first, last = min(landed), max(landed)
    with project_instance(config) as instance:
        assert run_job(config, instance, "data_job", partitions=(first, last)).success
        retrain = run_job(config, instance, "retrain_job")
        assert retrain.success
        assert checks(retrain)["gate"].passed
        assert run_job(config, instance, "scoring_job", partitions=(first, last)).success

    report = materialized(retrain)["validation_report"]
    assert math.isfinite(report["candidate_roc_auc"])
    assert report["candidate_roc_auc"] >= config.gate.min_value
    deployed = ModelStore(config.models_dir).deployed()
    assert deployed is not None and deployed["reason"] == "initial"
    assert math.isfinite(deployed["metrics"]["roc_auc"])

    warehouse = Warehouse(config.warehouse_path)
    predictions = warehouse.query("SELECT * FROM predictions ORDER BY timestamp")
    assert predictions.height == warehouse.query("SELECT count(*) AS n FROM features")["n"][0]
    assert predictions.height == rows
    assert set(predictions["model_version"]) == {deployed["version"]}
    scores = predictions["score"].to_numpy()
    assert np.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()
