"""Issue 9 on the real asset graph: the gate cannot be forged, fails closed, and each retrain
promotes its own candidate; rollback refuses what the gate never approved.

Reuses the lifecycle module's project (ten simulated days, one deployed model) and clones it per
test, so each test runs against its own warehouse, model store and persistent Dagster instance.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest
import yaml
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.execution.api import create_execution_plan, execute_run_iterator

import ct_assets
from ct_assets import cli
from ct_assets.definitions import build_definitions
from ct_assets.defs.resources import WarehouseResource
from ct_assets.defs.runs import RETRAIN_TAG, duckdb_slot
from ct_assets.defs.validation import _write_report
from ct_assets.lib.config import Config, load_config
from ct_assets.lib.model_store import DECISION, ModelStore
from ct_assets.lib.warehouse import Warehouse
from ct_assets_tests.defs.test_lifecycle import (
    QUIET,
    built,
    checks,
    clone,
    failure_text,
    materialized,
    project_instance,
    run_job,
    write_config,
)
from ct_assets_tests.live import template_instance

TEMPLATE = Path(ct_assets.__file__).parent / "templates" / "dagster.yaml"


# Tagged as drift_sensor tags it (a change point): a drift retrain on exactly the champion's
# data would train nothing (`unchanged_training_reason`).
DRIFT_RETRAIN = {"ct/reason": "drift", "ct/change_point": "2026-01-06"}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A lightgbm project with one deployed model (reason `initial`)."""
    return built(tmp_path_factory, "lightgbm")


def observed(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """The metadata of `deployed_model`'s observation in a run that promoted nothing."""
    assert "deployed_model" not in materialized(result)  # only a promotion materializes it
    [event] = [event for event in result.get_asset_observation_events()
               if event.asset_key == dg.AssetKey("deployed_model")]
    observation = event.event_specific_data.asset_observation
    return {key: value.value for key, value in observation.metadata.items()}


def deployed_model_alone(config: Config, instance: dg.DagsterInstance) -> dict[str, Any]:
    """Materialize `deployed_model` on its own (as from the UI); what it observed."""
    job = build_definitions(config).resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(instance=instance, run_config=QUIET,
                                    asset_selection=[dg.AssetKey("deployed_model")])
    assert result.success
    return observed(result)


def test_a_forged_verdict_is_not_deployed_by_materializing_deployed_model(base, tmp_path):
    """The reproduction of issue 9: edit `approved` in a rejected candidate's decision.json."""
    path, _ = clone(base["root"], tmp_path / "project")
    config = load_config(write_config(path.parent, gate={"min_value": 0.99}))
    with project_instance(config) as instance:
        rejected = run_job(config, instance, "retrain_job", raise_on_error=False)
        assert not checks(rejected)["gate"].passed
        candidate = materialized(rejected)["candidate_model"]["version"]
        store = ModelStore(config.models_dir)
        decision = store.path(candidate) / DECISION
        forged = json.loads(decision.read_text(encoding="utf-8"))
        forged.update(approved=True, reasons=[])
        decision.write_text(json.dumps(forged), encoding="utf-8")

        outcome = deployed_model_alone(config, instance)
    assert store.deployed()["version"] == base["version"]
    assert outcome["deployed_version"] == base["version"]
    assert "left alone" in outcome["outcome"]
    assert [r["version"] for r in store.pointer()["history"]] == [base["version"]]


def test_deployed_model_alone_never_reverts_a_rollback(base, tmp_path, capsys):
    path, config = clone(base["root"], tmp_path / "project")
    with project_instance(config) as instance:
        retrain = run_job(config, instance, "retrain_job", tags=DRIFT_RETRAIN)
        newer = materialized(retrain)["deployed_model"]["deployed_version"]
        assert newer != base["version"]
        assert cli.main(["--config", str(path), "rollback"]) == 0
        store = ModelStore(config.models_dir)
        assert store.deployed()["version"] == base["version"]

        alone = deployed_model_alone(config, instance)
        assert store.deployed()["version"] == base["version"]
        assert alone["deployed_version"] == base["version"]
        assert "no candidate was validated in this run" in alone["outcome"]

        # Re-validating the newest candidate and deploying in one run does not undo it either.
        job = build_definitions(config).resolve_implicit_global_asset_job_def()
        again = job.execute_in_process(
            instance=instance, run_config=QUIET,
            asset_selection=[dg.AssetKey("validation_report"), dg.AssetKey("deployed_model")])
        assert again.success
        outcome = observed(again)["outcome"]
        assert f"{newer} was deployed before and replaced" in outcome
    assert store.deployed()["version"] == base["version"]
    assert [r["reason"] for r in store.pointer()["history"]] == ["initial", "drift", "rollback"]


def _corrupt_champion(config: Config, version: str) -> Path:
    model = next((ModelStore(config.models_dir).path(version) / "evaluation").glob("model.*"))
    model.write_bytes(model.read_bytes() + b"\n")
    return model


def test_the_gate_refuses_when_the_champion_cannot_be_loaded(base, tmp_path):
    _, config = clone(base["root"], tmp_path / "project")
    broken = _corrupt_champion(config, base["version"])
    with project_instance(config) as instance:
        result = run_job(config, instance, "retrain_job", raise_on_error=False)
    gate = checks(result)["gate"]
    assert not gate.passed
    verdict = gate.metadata["verdict"].value
    assert f"champion {base['version']} could not be loaded" in verdict
    assert "gate.on_champion_error: refuse" in verdict and str(broken) in verdict
    assert "deployed_model" not in materialized(result)
    assert ModelStore(config.models_dir).deployed()["version"] == base["version"]


def test_the_gate_may_opt_out_of_failing_closed(base, tmp_path):
    path, _ = clone(base["root"], tmp_path / "project")
    config = load_config(write_config(path.parent, gate={"on_champion_error": "approve"}))
    _corrupt_champion(config, base["version"])
    with project_instance(config) as instance:
        result = run_job(config, instance, "retrain_job")
    assert checks(result)["gate"].passed
    report = materialized(result)["validation_report"]["report"]
    assert "judged on gate.min_value alone (gate.on_champion_error: approve)" in report
    assert ModelStore(config.models_dir).deployed()["version"] != base["version"]


def test_rollback_refuses_a_rejected_candidate_unless_forced(base, tmp_path, capsys):
    path, _ = clone(base["root"], tmp_path / "project")
    strict = write_config(path.parent, gate={"min_value": 0.99})
    config = load_config(strict)
    with project_instance(config) as instance:
        result = run_job(config, instance, "retrain_job", raise_on_error=False)
    rejected = materialized(result)["candidate_model"]["version"]
    capsys.readouterr()
    assert cli.main(["--config", str(strict), "rollback", "--to", rejected]) == 2
    error = capsys.readouterr().err
    assert f"refusing to roll back to {rejected}" in error and "the gate rejected" in error
    assert "--force" in error
    store = ModelStore(config.models_dir)
    assert store.deployed()["version"] == base["version"]

    assert cli.main(["--config", str(strict), "rollback", "--to", rejected, "--force"]) == 0
    deployed = store.deployed()
    assert deployed["version"] == rejected and "the gate rejected" in deployed["forced"]


def test_rollback_refuses_a_version_the_gate_never_validated_unless_forced(base, tmp_path,
                                                                          capsys):
    """A candidate trained on its own (as from the UI, without `validation_report`)."""
    path, config = clone(base["root"], tmp_path / "project")
    job = build_definitions(config).resolve_implicit_global_asset_job_def()
    with project_instance(config) as instance:
        trained = job.execute_in_process(
            instance=instance, run_config=QUIET,
            asset_selection=[dg.AssetKey("training_set"), dg.AssetKey("candidate_model")])
    assert trained.success
    unvalidated = materialized(trained)["candidate_model"]["version"]
    store = ModelStore(config.models_dir)
    assert store.decision(unvalidated) is None
    assert not (store.path(unvalidated) / DECISION).exists()

    capsys.readouterr()
    assert cli.main(["--config", str(path), "rollback", "--to", unvalidated]) == 2
    error = capsys.readouterr().err
    assert f"refusing to roll back to {unvalidated}" in error
    assert f"the gate never validated {unvalidated}" in error
    assert str(store.path(unvalidated) / DECISION) in error and "--force" in error
    assert store.deployed()["version"] == base["version"]
    assert [r["version"] for r in store.pointer()["history"]] == [base["version"]]

    assert cli.main(["--config", str(path), "rollback", "--to", unvalidated, "--force"]) == 0
    deployed = store.deployed()
    assert deployed["version"] == unvalidated and deployed["reason"] == "rollback"
    assert f"the gate never validated {unvalidated}" in deployed["forced"]
    assert deployed["forced_because"] == [deployed["forced"]]
    assert deployed["rolled_back_from"] == base["version"]
    with project_instance(config) as instance:  # what the UI and the freshness sensor read
        event = instance.get_latest_materialization_event(dg.AssetKey("deployed_model"))
    assert event.asset_materialization.metadata["deployed_version"].value == unvalidated


def test_rollback_refuses_a_version_whose_schema_differs_from_the_config(base, tmp_path,
                                                                         capsys):
    path, config = clone(base["root"], tmp_path / "project")
    with project_instance(config) as instance:
        assert run_job(config, instance, "retrain_job", tags=DRIFT_RETRAIN).success
    changed = write_config(path.parent, features={"relative_to_recent": []})
    capsys.readouterr()
    assert cli.main(["--config", str(changed), "rollback"]) == 2
    error = capsys.readouterr().err
    assert "feature schema does not match the current config" in error
    assert ModelStore(config.models_dir).deployed()["reason"] == "drift"
    assert cli.main(["--config", str(changed), "rollback", "--force"]) == 0
    assert ModelStore(config.models_dir).deployed()["version"] == base["version"]


def _advance_until(events, asset: str) -> None:
    """Pull a run's events until it has materialized `asset` (its step has ended)."""
    for event in events:
        if event.is_step_materialization and event.asset_key == dg.AssetKey(asset):
            return
    raise AssertionError(f"the run ended without materializing {asset}")


def test_interleaved_retrains_each_promote_their_own_candidate(base, tmp_path):
    """A manual retrain and a sensor's (drift) retrain, their steps interleaved in one process.

    A trains its candidate, then B trains its own, then A validates and deploys, then B. Each
    run must judge and promote the candidate it trained, not the newest one.
    """
    _, config = clone(base["root"], tmp_path / "project")
    job = build_definitions(config).resolve_job_def("retrain_job")
    assert job.tags.get(RETRAIN_TAG) == "true"
    with project_instance(config) as instance:
        plan = create_execution_plan(job, run_config=QUIET)
        runs = {name: instance.create_run_for_job(
            job, execution_plan=plan, run_config=QUIET,
            tags={**job.tags, **tags}) for name, tags in
            (("manual", {"ct/reason": "manual"}), ("sensor", DRIFT_RETRAIN))}
        events = {name: execute_run_iterator(InMemoryJob(job), run, instance)
                  for name, run in runs.items()}
        _advance_until(events["manual"], "candidate_model")
        _advance_until(events["sensor"], "candidate_model")
        for name in ("manual", "sensor"):
            list(events[name])  # the rest of the run: validation, gate, deployment
        done = {name: {event.asset_key.to_user_string(): {
            key: value.value for key, value in event.metadata.items()}
            for event in (entry.event_log_entry.asset_materialization
                          for entry in instance.get_records_for_run(
                              run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
                          ).records)}
            for name, run in runs.items()}
        statuses = {name: instance.get_run_by_id(run.run_id).status
                    for name, run in runs.items()}
    assert statuses == dict.fromkeys(runs, dg.DagsterRunStatus.SUCCESS)
    store = ModelStore(config.models_dir)
    for name, run in runs.items():
        own = done[name]["candidate_model"]["version"]
        assert done[name]["validation_report"]["candidate_version"] == own, name
        assert done[name]["validation_report"]["candidate_from_run"] == run.run_id, name
        assert done[name]["deployed_model"]["candidate_version"] == own, name
        decision = store.decision(own)
        assert decision["run_id"] == run.run_id and decision["sealed"]
        assert done[name]["deployed_model"]["deployed_version"] == own, name
    manual, sensor = (done[name]["candidate_model"]["version"] for name in runs)
    history = [(r["version"], r["reason"]) for r in store.pointer()["history"]]
    assert history == [(base["version"], "initial"), (manual, "manual"), (sensor, "drift")]


def test_the_run_queue_runs_one_retrain_at_a_time(tmp_path):
    assert {"key": RETRAIN_TAG, "limit": 1} in yaml.safe_load(
        TEMPLATE.read_text(encoding="utf-8"))["concurrency"]["runs"]["tag_concurrency_limits"]
    with template_instance(tmp_path / "dagster") as instance:
        queue = instance.get_concurrency_config().run_queue_config
        assert queue is not None
        limits = queue.tag_concurrency_limits
    assert any(limit["key"] == RETRAIN_TAG and limit["limit"] == 1
               and "value" not in limit for limit in limits)


def test_duckdb_slot_is_held_only_inside_the_block(tmp_path):
    seen: dict[str, int] = {}

    @dg.asset
    def probe(context):
        storage = context.instance.event_log_storage
        seen["before"] = storage.get_concurrency_info("duckdb").active_slot_count
        with duckdb_slot(context):
            seen["inside"] = storage.get_concurrency_info("duckdb").active_slot_count
        seen["after"] = storage.get_concurrency_info("duckdb").active_slot_count

    with template_instance(tmp_path / "dagster") as instance:
        assert dg.materialize([probe], instance=instance).success
    assert seen == {"before": 0, "inside": 1, "after": 0}


def test_retrain_assets_declare_no_duckdb_pool_for_the_whole_step(base):
    defs = build_definitions(load_config(base["config_path"]))
    for name in ("candidate_model", "validation_report"):
        assert defs.resolve_assets_def(name).op.pool is None, name
    assert defs.resolve_assets_def("training_set").op.pool == "duckdb"


def test_the_validation_report_is_replaced_in_one_transaction(tmp_path):
    """A failed insert leaves the candidate's previous report in place."""
    warehouse = WarehouseResource(path=str(tmp_path / "warehouse.duckdb"))
    good = {"candidate": {"roc_auc": 0.9}}
    slices = {"candidate": [{"segment": "north", "rows": 10, "roc_auc": 0.8}]}
    _write_report(warehouse, "v1", None, good, slices)
    before = Warehouse(warehouse.path).query("SELECT role, segment, metric, value "
                                             "FROM validation_report ORDER BY segment")
    assert before.height == 2
    bad = {"candidate": {"roc_auc": "not a number"}}  # the insert cannot cast it
    with pytest.raises(Exception, match=r"(?i)conver|cast"):
        _write_report(warehouse, "v1", None, bad, slices)
    after = Warehouse(warehouse.path).query("SELECT role, segment, metric, value "
                                            "FROM validation_report ORDER BY segment")
    assert isinstance(after, pl.DataFrame) and after.equals(before)


def test_the_model_is_as_fresh_as_its_promotion(base, tmp_path):
    """Dagster's freshness evaluator (what its daemon runs) judges `deployed_model` from its
    promotion: a run that promotes nothing does not make an old model look fresh."""
    import asyncio

    from dagster._core.definitions.freshness import FreshnessState
    from dagster._core.definitions.freshness_evaluator import (
        TimeWindowFreshnessPolicyEvaluator,
    )
    from dagster._core.loader import LoadingContextForTest
    from dagster._core.test_utils import freeze_time

    path, _ = clone(base["root"], tmp_path / "project")
    config = load_config(write_config(path.parent, triggers={"max_model_age": "1m"}))
    node = build_definitions(config).resolve_asset_graph().get(dg.AssetKey("deployed_model"))
    assert node.freshness_policy is not None

    def freshness(instance: dg.DagsterInstance, at: float) -> FreshnessState:
        with freeze_time(at):  # the daemon's clock, a minute and a second after the promotion
            return asyncio.run(TimeWindowFreshnessPolicyEvaluator().evaluate_freshness(
                context=LoadingContextForTest(instance), node=node))

    with project_instance(config) as instance:
        promoted = instance.get_latest_materialization_event(dg.AssetKey("deployed_model"))
        assert promoted is not None
        time.sleep(1.5)
        deployed_model_alone(config, instance)  # promotes nothing, a second or more later
        latest = instance.get_latest_materialization_event(dg.AssetKey("deployed_model"))
        assert latest.timestamp == promoted.timestamp and latest.run_id == promoted.run_id
        assert freshness(instance, promoted.timestamp + 30) == FreshnessState.PASS
        assert freshness(instance, promoted.timestamp + 61) == FreshnessState.FAIL


def _redeploy_in(config: Config, instance: dg.DagsterInstance, parent: str
                 ) -> dg.ExecuteInProcessResult:
    """Re-execute only `deployed_model` of run `parent` (the UI's "re-execute selected"): a new
    run carrying the parent tags Dagster's re-execution sets, so `deployed_model` judges the
    candidate the parent run validated."""
    job = build_definitions(config).resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance, run_config=QUIET, raise_on_error=False,
        tags={"dagster/parent_run_id": parent, "dagster/root_run_id": parent},
        asset_selection=[dg.AssetKey("deployed_model")])


@pytest.mark.parametrize("resealed", [False, True], ids=["edited", "edited_and_resealed"])
def test_a_verdict_tampered_after_the_gate_is_refused_by_the_run_that_validated_it(
        base, tmp_path, resealed):
    """The run did validate a candidate: the gate rejected it, then `approved` was edited.

    Edited by hand, the seal gives it away; re-sealed with the store's key (by someone who has
    it), the verdict disagrees with the `gate` check the instance recorded for that run. Either
    way the re-executed `deployed_model` fails naming the file, and the pointer stays.
    """
    path, _ = clone(base["root"], tmp_path / "project")
    config = load_config(write_config(path.parent, gate={"min_value": 0.99}))
    store = ModelStore(config.models_dir)
    with project_instance(config) as instance:
        rejected = run_job(config, instance, "retrain_job", raise_on_error=False)
        assert not checks(rejected)["gate"].passed
        candidate = materialized(rejected)["validation_report"]["candidate_version"]
        decision = store.path(candidate) / DECISION
        forged = {**json.loads(decision.read_text(encoding="utf-8")),
                  "approved": True, "reasons": []}
        assert forged["run_id"] == rejected.run_id
        if resealed:
            store.record_decision(candidate, forged)
            assert store.trusted_verdict(candidate)[0]  # the seal alone would let it through
        else:
            decision.write_text(json.dumps(forged), encoding="utf-8")

        again = _redeploy_in(config, instance, rejected.run_id)
    assert not again.success
    assert [event.step_key for event in again.get_step_failure_events()] == ["deployed_model"]
    error = failure_text(again)
    assert str(decision) in error
    if resealed:
        assert (f"says approved=True, but the gate check of run {rejected.run_id} recorded "
                "passed=False") in error
    else:
        assert "seal mismatch" in error
    assert "deployed_model" not in materialized(again)
    assert store.deployed()["version"] == base["version"]
    assert [r["version"] for r in store.pointer()["history"]] == [base["version"]]
