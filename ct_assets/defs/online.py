"""Online strategy: the deployed model continued on each newly labelled partition."""

import datetime as dt
import tempfile
from pathlib import Path

import dagster as dg
import polars as pl

from ct_assets.defs.automation import follows_upstream
from ct_assets.defs.metadata import record_partition_metadata
from ct_assets.defs.resources import ModelStoreResource, WarehouseResource
from ct_assets.defs.runs import holds_warehouse
from ct_assets.defs.training import labelled_features
from ct_assets.lib.config import Config
from ct_assets.lib.ingest import partition_keys
from ct_assets.lib.model_store import ModelStore
from ct_assets.lib.monitoring import REFERENCE_FILE
from ct_assets.lib.online import continue_model, judge_update
from ct_assets.lib.partition_figures import span
from ct_assets.lib.serving import load_verified
from ct_assets.lib.validation import PARTITION
from ct_assets.lib.warehouse import quote_identifier

ONLINE = "online"


def learned_until(manifest: dict) -> str:
    """The newest partition a version has learned (online update, or its training window)."""
    online = manifest.get(ONLINE) or {}
    return online.get("learned_partition") or max(manifest["training_window"]["partitions"])


def pending_update(store: ModelStore, champion: str) -> str | None:
    """The newest online update of the champion that the gate has not judged yet."""
    for version in reversed(store.versions()):
        info = store.describe(version)
        if info.get("reason") == ONLINE and info.get("parent") == champion \
                and info.get("decision") is None:
            return version
    return None


def build_online_assets(config: Config, partitions_def: dg.PartitionsDefinition,
                        label_deps: list[dg.AssetDep]) -> list[dg.AssetsDefinition]:
    """The `model_update` asset, when `training.strategy` is `online`."""
    if config.training.strategy != ONLINE:
        return []
    dataset = config.dataset
    target = str(dataset.target)

    @dg.asset(
        partitions_def=partitions_def, backfill_policy=dg.BackfillPolicy.single_run(),
        deps=["features", "deployed_model", *label_deps], group_name="training",
        kinds={"lightgbm", "duckdb"}, pool="duckdb", automation_condition=follows_upstream(),
    )
    @holds_warehouse
    def model_update(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                     model_store: ModelStoreResource) -> dg.MaterializeResult:
        """The deployed model continued on each newly labelled partition, through the gate.

        Test-then-train: the update made from the previous partition and the champion are first
        scored on this partition's labelled rows, which neither has learned; the update is
        promoted (reason `online`) only if the gate approves. Then the champion continues on
        this partition (`training.online_rounds` more trees for LightGBM, a `partial_fit` pass
        for sklearn_sgd) into a new version (parent = the version it continued), judged on the
        next labelled partition. Partitions the champion already learned are skipped. Each
        version is in the model store like any other, and can be rolled back. Each partition's
        materialization says what happened to it and the deployed and pending versions after.
        """
        store = model_store.get()
        window = context.partition_time_window
        keys = partition_keys(config, window.start, window.end)
        done = [_update(context, store, warehouse, key) for key in keys]
        record_partition_metadata(context, {row["partition"]: {
            "outcome": row["outcome"], "deployed_version": row["deployed"],
            "pending_version": row["pending"]} for row in done})
        return dg.MaterializeResult(metadata={"run_partitions": span(keys)})

    def _update(context: dg.AssetExecutionContext, store: ModelStore,
                warehouse: WarehouseResource, key: str) -> dict:
        champion = store.deployed()
        if champion is None:
            raise dg.Failure("no model is deployed yet: the online strategy continues one")
        model, manifest = load_verified(store, champion["version"])
        if key <= learned_until(manifest):
            return {"partition": key, "outcome": f"already learned by {champion['version']}",
                    "deployed": champion["version"], "pending": "none"}
        rows = labelled_features(warehouse.get(), config, f"{quote_identifier(PARTITION)} = ?",
                                 [key])
        rows = rows.filter(pl.col(target).is_not_null())
        outcome = []
        pending = pending_update(store, champion["version"])
        if pending is not None and rows.height:
            update, update_manifest = load_verified(store, pending)
            decision, metrics = judge_update(update, update_manifest.get("operating_threshold"),
                                             model, manifest.get("operating_threshold"), rows,
                                             config)
            store.record_decision(pending, {
                "approved": decision.approved, "reasons": decision.reasons,
                "metric": config.gate.metric, "candidate_value": decision.candidate_value,
                "champion_value": decision.champion_value,
                "champion_version": champion["version"], "metrics": metrics["candidate"],
                "notes": [f"judged on partition {key} ({rows.height} labelled rows), which "
                          "neither model had learned", *decision.notes]})
            if decision.approved:
                champion = store.promote(pending, ONLINE, run_id=context.run.run_id,
                                         gate=config.gate.metric)
                model, manifest = load_verified(store, pending)
                context.log_event(dg.AssetMaterialization(
                    asset_key="deployed_model", metadata={
                        "deployed_version": pending, "reason": ONLINE,
                        "promoted_at": champion["promoted_at"],
                        "outcome": f"promoted {pending} (reason: online)"}))
            outcome.append(f"{pending} {decision.summary()}")
        if rows.height < 10:
            outcome.append(f"{rows.height} labelled rows: nothing to learn")
            return {"partition": key, "outcome": "; ".join(outcome),
                    "deployed": champion["version"], "pending": "none"}
        updated, info = continue_model(model, rows, target=target, task=dataset.task,
                                       rounds=config.training.online_rounds,
                                       params=config.training.params, seed=config.training.seed)
        version = (f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{context.run.run_id[:8]}-"
                   f"{key.replace(':', '')}")
        record = {name: manifest[name] for name in (
            "model", "task", "target", "feature_schema", "classes", "operating_threshold",
            "params", "seed", "regime_start", "regime_kind") if name in manifest}
        record.update(
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            reason=ONLINE, parent=champion["version"], run_id=context.run.run_id,
            training_window=manifest["training_window"], metrics={},
            online={"learned_partition": key, "continued_from": champion["version"],
                    "rows": info["rows"], **{k: v for k, v in info.items()
                                             if k in ("rounds_added", "trees", "epochs")}})
        with tempfile.TemporaryDirectory() as work:
            files = updated.save(Path(work))
            reference = store.path(champion["version"]) / REFERENCE_FILE
            if reference.is_file():  # the drift reference stays the batch model's (verified)
                files[REFERENCE_FILE] = reference
            store.save(version, files, record)
        outcome.append(f"learned {key} into {version}, judged on the next labelled partition")
        return {"partition": key, "outcome": "; ".join(outcome),
                "deployed": champion["version"], "pending": version}

    return [model_update]
