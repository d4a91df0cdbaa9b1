"""Deployment stage: promote an approved candidate; score partitions with the champion."""

import time

import dagster as dg
import numpy as np
import polars as pl

from ct_assets.defs.automation import follows_upstream
from ct_assets.defs.metadata import REASON_TAG, frame_metadata, latest_metadata
from ct_assets.defs.resources import ModelStoreResource, WarehouseResource
from ct_assets.lib.config import Config, parse_duration
from ct_assets.lib.evaluation import OPERATING_THRESHOLD
from ct_assets.lib.features import passthrough_columns
from ct_assets.lib.ingest import partition_keys
from ct_assets.lib.serving import load_verified
from ct_assets.lib.triggers import regime_partitions
from ct_assets.lib.validation import PARTITION


def build_deployment_assets(config: Config, partitions_def: dg.PartitionsDefinition
                            ) -> list[dg.AssetsDefinition]:
    """The `deployed_model` and `predictions` assets."""
    dataset = config.dataset

    @dg.asset(deps=["validation_report", "candidate_model"], group_name="deployment",
              kinds={"json"}, freshness_policy=dg.FreshnessPolicy.time_window(
                  fail_window=parse_duration(config.triggers.max_model_age)))
    def deployed_model(context: dg.AssetExecutionContext,
                       model_store: ModelStoreResource) -> dg.MaterializeResult:
        """The champion in production: the candidate is promoted only when the gate approved it.

        The pointer (`deployed.json`) is replaced atomically and keeps the promotion history;
        when the gate rejected the candidate, the champion stays and the reason is shown here.
        """
        store = model_store.get()
        version = str(latest_metadata(context, "candidate_model", "version") or "")
        decision = store.decision(version) if version else None
        champion = store.deployed()
        if decision is not None and decision.get("approved"):
            reason = (context.run.tags.get(REASON_TAG)
                      or store.describe(version).get("reason")
                      or ("initial" if champion is None else "manual"))
            if champion is None:
                reason = "initial"
            if champion and champion["version"] == version:
                outcome = f"{version} is already deployed"
            else:
                champion = store.promote(version, reason, run_id=context.run.run_id,
                                         gate=decision.get("metric"))
                outcome = f"promoted {version} (reason: {reason})"
        elif decision is None:
            outcome = f"candidate {version or '(none)'} has not been validated; nothing promoted"
        else:
            outcome = f"candidate {version} rejected: {'; '.join(decision['reasons'])}"
        context.log.info(outcome)
        deployed = champion["version"] if champion else "none"
        metrics = (champion or {}).get("metrics", {})
        learned = store.describe(deployed) if champion else {}
        return dg.MaterializeResult(metadata={
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
            **{f"deployed_{k}": v for k, v in metrics.items()
               if isinstance(v, float) and np.isfinite(v)},
        })

    @dg.asset(
        partitions_def=partitions_def, backfill_policy=dg.BackfillPolicy.single_run(),
        deps=["features", deployed_model], group_name="deployment",
        kinds={"duckdb", "polars"}, pool="duckdb",
        automation_condition=follows_upstream(),
        metadata={"dagster/table_name": "warehouse.main.predictions"},
    )
    def predictions(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                    model_store: ModelStoreResource) -> dg.MaterializeResult:
        """Each partition scored by the deployed model, with the model version on every row.

        The model's files are checked against their sha256 before loading; a mismatch fails
        the run naming the file, and nothing is scored with it.
        """
        store = model_store.get()
        champion = store.deployed()
        if champion is None:
            raise dg.Failure("no model is deployed yet: materialize the retrain job "
                             "(training_set → candidate_model → validation_report → "
                             "deployed_model) first")
        model, manifest = load_verified(store, champion["version"])
        window = context.partition_time_window
        features = warehouse.get().read_range("features", dataset.timestamp, window.start,
                                              window.end)
        began = time.perf_counter()
        scores = model.predict(features)
        seconds = time.perf_counter() - began
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
        frame = frame.with_columns(pl.lit(champion["version"]).alias("model_version"))
        warehouse.get().replace_range("predictions", frame, dataset.timestamp, window.start,
                                      window.end)
        keys = partition_keys(config, window.start, window.end)
        return dg.MaterializeResult(metadata={
            **frame_metadata(frame),
            "model_version": champion["version"],
            "partitions": len(keys),
            "mean_score": float(frame["score"].mean()) if frame.height else None,
            "scoring_seconds": round(seconds, 4),
            "rows_per_second": round(frame.height / seconds) if seconds > 0 else None,
            "by_partition": dg.MetadataValue.json(
                dict(frame.group_by(PARTITION).len().sort(PARTITION).iter_rows())),
        })

    return [deployed_model, predictions]
