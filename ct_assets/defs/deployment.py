"""Deployment stage: promote an approved candidate; score partitions with the champion."""

import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import dagster as dg
import numpy as np
import polars as pl

from ct_assets.defs.automation import DETAIL_TAG, follows_upstream
from ct_assets.defs.metadata import (
    CHANGE_POINT_TAG,
    REASON_TAG,
    frame_metadata,
    record_partition_metadata,
)
from ct_assets.defs.monitoring_events import recorded_drift_timeline, retrain_partitions
from ct_assets.defs.resources import ModelStoreResource, WarehouseResource
from ct_assets.defs.runs import (
    check_in_runs,
    holds_warehouse,
    materialization_in_runs,
    run_lineage,
)
from ct_assets.lib.config import Config, parse_duration
from ct_assets.lib.evaluation import OPERATING_THRESHOLD
from ct_assets.lib.features import key_window, passthrough_columns
from ct_assets.lib.ingest import partition_keys
from ct_assets.lib.model_store import DECISION, ModelStore
from ct_assets.lib.partition_figures import by_partition, score_summary, span
from ct_assets.lib.serving import load_verified
from ct_assets.lib.triggers import regime_partitions
from ct_assets.lib.validation import PARTITION
from ct_assets.lib.warehouse import chunk_partitions


def _judged_candidate(context: dg.AssetExecutionContext, store: ModelStore
                      ) -> tuple[str | None, bool, str]:
    """The candidate `validation_report` judged in this run, whether to promote it, and why not.

    Raises:
        ModelStoreError: the candidate's verdict file was modified (named in the message).
        dg.Failure: the sealed verdict and the instance's `gate` check of that run disagree.
    """
    champion = store.deployed()
    current = champion["version"] if champion else "none"
    found = materialization_in_runs(context.instance, "validation_report", run_lineage(context))
    if found is None or not found[1].get("candidate_version"):
        return None, False, (f"no candidate was validated in this run, so nothing is promoted; "
                             f"the pointer is left alone at {current}")
    run_id, report = found
    version = str(report["candidate_version"])
    path = store.path(version) / DECISION
    decision = store.decision(version)  # verifies its seal; a tampered verdict raises
    if decision is None or decision.get("run_id") != run_id:
        recorded = (decision or {}).get("run_id") or "no run"
        return version, False, (f"the verdict in {path} was recorded by {recorded}, not by this "
                                f"run's validation ({run_id}); nothing promoted, the pointer "
                                f"is left alone at {current}")
    gate = check_in_runs(context.instance, "validation_report", "gate", [run_id])
    if gate is None or bool(gate.passed) != bool(decision.get("approved")):
        raise dg.Failure(f"{path} says approved={decision.get('approved')}, but the gate check "
                         f"of run {run_id} recorded "
                         f"{'nothing' if gate is None else f'passed={gate.passed}'}; the "
                         "verdict is not trusted and nothing is promoted")
    approved, why = store.trusted_verdict(version)
    if not approved:
        return version, False, f"candidate {version} not promoted: {why}"
    if champion and champion["version"] == version:
        return version, False, f"{version} is already deployed"
    if any(record["version"] == version for record in store.pointer()["history"]):
        latest = champion["reason"] if champion else "none"
        return version, False, (
            f"{version} was deployed before and replaced (latest: {latest} → {current}); "
            f"deployed_model does not undo that, the pointer is left alone at {current} "
            f"(`ct rollback --to {version}` deploys it again)")
    return version, True, ""


def trigger_of(run: dg.DagsterRun, reason: str) -> dict[str, str]:
    """What launched a retrain run, from its tags: kind, partition, what tripped, run id."""
    return {"kind": reason, "partition": run.tags.get(CHANGE_POINT_TAG, "none"),
            "detail": run.tags.get(DETAIL_TAG, "none"), "run_id": run.run_id}


def holdout_change(decision: dict | None) -> dict[str, object]:
    """The gate metric of the champion before and of the promoted model, on the same holdout."""
    decision = decision or {}
    return {"metric": decision.get("metric"), "before": decision.get("champion_value"),
            "after": decision.get("candidate_value"),
            "champion_before": decision.get("champion_version")}


def why_metadata(champion: dict | None) -> dict[str, object]:
    """Why the deployed model is there, as `deployed_model` metadata (`ct status` says it too)."""
    trigger = (champion or {}).get("trigger") or {}
    holdout = (champion or {}).get("holdout") or {}
    out: dict[str, object] = {
        "trigger_kind": trigger.get("kind", (champion or {}).get("reason", "none")),
        "trigger_partition": trigger.get("partition", "none"),
        "trigger_detail": trigger.get("detail", "none"),
        "trigger_run_id": trigger.get("run_id", "none")}
    metric = holdout.get("metric")
    for key in ("before", "after"):
        value = holdout.get(key)
        if metric and isinstance(value, float) and np.isfinite(value):
            out[f"holdout_{metric}_{key}"] = round(value, 4)
    return out


def build_deployment_assets(config: Config, partitions_def: dg.PartitionsDefinition
                            ) -> list[dg.AssetsDefinition]:
    """The `deployed_model` and `predictions` assets."""
    dataset = config.dataset

    @dg.asset(deps=["validation_report", "candidate_model"], group_name="deployment",
              kinds={"json"}, output_required=False,
              # Dagster's freshness daemon measures it from the latest materialization, which
              # is a promotion (or a `ct rollback`): a model is as fresh as its promotion.
              freshness_policy=dg.FreshnessPolicy.time_window(
                  fail_window=parse_duration(config.triggers.max_model_age)))
    def deployed_model(context: dg.AssetExecutionContext, model_store: ModelStoreResource
                       ) -> Iterator[dg.MaterializeResult | dg.AssetObservation]:
        """The champion in production: the candidate is promoted only when the gate approved it.

        The candidate is the one `validation_report` judged in this run (or the run it
        re-executes); its verdict must be sealed in the model store by that run, approve it, and
        agree with the `gate` check the instance recorded. Without such a candidate (this asset
        materialized on its own), or for a candidate that was deployed before and replaced
        (e.g. by a rollback), the pointer is left alone and the outcome says why. The pointer
        (`deployed.json`) is replaced atomically and keeps the promotion history; when the
        gate rejected the candidate, the champion stays and the reason is shown here.

        Only a promotion is a materialization, so the asset's freshness is the model's age
        since its promotion; a run that changes nothing records an observation saying why.
        """
        store = model_store.get()
        champion = store.deployed()
        version, approved, outcome = _judged_candidate(context, store)
        decision = store.decision(version) if version else None
        if approved:
            reason = (context.run.tags.get(REASON_TAG)
                      or store.describe(version).get("reason")
                      or ("initial" if champion is None else "manual"))
            if champion is None:
                reason = "initial"
            champion = store.promote(version, reason, run_id=context.run.run_id,
                                     gate=config.gate.metric,
                                     trigger=trigger_of(context.run, reason),
                                     holdout=holdout_change(decision))
            outcome = f"promoted {version} (reason: {reason})"
        context.log.info(outcome)
        deployed = champion["version"] if champion else "none"
        metrics = (champion or {}).get("metrics", {})
        learned = store.describe(deployed) if champion else {}
        metadata = {
            "deployed_version": deployed,
            "outcome": outcome,
            "reason": (champion or {}).get("reason", "none"),
            "promoted_at": (champion or {}).get("promoted_at", "never"),
            "candidate_version": version or "none",
            "candidate_approved": bool(decision and decision.get("approved")),
            # What the follow-up of a change of concept needs (performance_sensor).
            "regime_start": learned.get("regime_start") or "none",
            "regime_kind": learned.get("regime_kind") or "none",
            "regime_partitions": regime_partitions(learned),
            **{f"deployed_{k}": round(v, 4) for k, v in metrics.items()
               if isinstance(v, float) and np.isfinite(v)},
            **why_metadata(champion),
        }
        if approved:
            # The change that led here, where the asset page opens: drift over time, marked.
            chart = recorded_drift_timeline(context.instance, retrain_partitions(store), config)
            yield dg.MaterializeResult(metadata={**({"drift_over_time": chart} if chart else {}),
                                                 **metadata})
        else:
            yield dg.AssetObservation(asset_key=context.asset_key, metadata=metadata)

    @dg.asset(
        partitions_def=partitions_def, backfill_policy=dg.BackfillPolicy.single_run(),
        deps=["features", deployed_model], group_name="deployment",
        kinds={"duckdb", "polars"}, pool="duckdb",
        automation_condition=follows_upstream(),
        metadata={"dagster/table_name": "warehouse.main.predictions"},
    )
    @holds_warehouse
    def predictions(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                    model_store: ModelStoreResource) -> dg.MaterializeResult:
        """Each partition scored by the deployed model, with the model version on every row.

        The model's files are checked against their sha256 before loading; a mismatch fails
        the run naming the file, and nothing is scored with it. A range is scored in chunks
        of whole partitions of about `CHUNK_ROWS` rows, staged, then replaced in one
        transaction (`replace_range_chunks`), so a run's memory does not grow with its range.
        Each partition's materialization carries its own rows and score summary (mean, min,
        max; the positive rate for a binary task).
        """
        store = model_store.get()
        champion = store.deployed()
        if champion is None:
            raise dg.Failure("no model is deployed yet: materialize the retrain job "
                             "(training_set → candidate_model → validation_report → "
                             "deployed_model) first")
        model, manifest = load_verified(store, champion["version"])
        window = context.partition_time_window
        keys = partition_keys(config, window.start, window.end)
        warehouse_store = warehouse.get()
        figures: dict[str, dict[str, object]] = {}
        scored = {"rows": 0, "seconds": 0.0}

        def score(chunk: list[str]) -> pl.DataFrame:
            features = warehouse_store.read_range("features", dataset.timestamp,
                                                  *key_window(config, chunk))
            began = time.perf_counter()
            frame = score_rows(model, manifest, features, config, champion["version"])
            scored["seconds"] += time.perf_counter() - began
            scored["rows"] += frame.height
            figures.update(by_partition(frame, chunk, lambda part: {
                **frame_metadata(part), **score_summary(part, dataset.task)}))
            return frame

        rows = warehouse_store.partition_rows("features", dataset.timestamp, window.start,
                                              window.end, PARTITION)
        warehouse_store.replace_range_chunks(
            "predictions", [partial(score, chunk) for chunk in chunk_partitions(keys, rows)],
            dataset.timestamp, window.start, window.end)
        record_partition_metadata(context, figures)
        seconds = scored["seconds"]
        # Shared by every partition of the run: the model, and the run's scoring speed.
        return dg.MaterializeResult(metadata={
            "run_partitions": span(keys),
            "model_version": champion["version"],
            "scoring_seconds": round(seconds, 4),
            "rows_per_second": round(scored["rows"] / seconds) if seconds > 0 else None,
        })

    return [deployed_model, predictions]


def score_rows(model: Any, manifest: dict, features: pl.DataFrame, config: Config,
               version: str) -> pl.DataFrame:
    """`features` scored: passthrough columns, `score` (and `prediction`), `model_version`."""
    dataset = config.dataset
    scores = model.predict(features)
    frame = features.select(passthrough_columns(config))
    if dataset.task == "multiclass":
        classes = manifest.get("classes") or []
        frame = frame.with_columns(
            pl.Series("prediction", [str(classes[i]) for i in scores.argmax(axis=1)]),
            pl.Series("score", scores.max(axis=1)))
    else:
        frame = frame.with_columns(pl.Series("score", scores))
        if dataset.task == "binary":
            threshold = manifest.get("operating_threshold") or OPERATING_THRESHOLD
            frame = frame.with_columns((pl.col("score") >= threshold).cast(pl.Int8)
                                       .alias("prediction"))
    return frame.with_columns(pl.lit(version).alias("model_version"))
