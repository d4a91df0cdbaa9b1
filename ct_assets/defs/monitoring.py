"""Monitoring stage: drift against the deployed model's reference; realised performance."""

import datetime as dt
from pathlib import Path

import dagster as dg
import polars as pl

from ct_assets.defs.automation import follows_upstream
from ct_assets.defs.resources import ModelStoreResource, WarehouseResource
from ct_assets.lib.config import Config, worse_than
from ct_assets.lib.evaluation import OPERATING_THRESHOLD, compute_metrics
from ct_assets.lib.features import offset_partitions
from ct_assets.lib.ingest import partition_keys
from ct_assets.lib.labels import LABELLED_PARTITION, attach_labels, known_labels
from ct_assets.lib.monitoring import (
    degradation,
    error_of,
    load_profiles,
    partition_drift,
    performance_alarm,
)
from ct_assets.lib.serving import load_verified
from ct_assets.lib.training import encode_labels
from ct_assets.lib.validation import PARTITION
from ct_assets.lib.warehouse import quote_identifier

PARTITION_START = "partition_start"


def _deployed(model_store: ModelStoreResource) -> tuple[str, Path]:
    store = model_store.get()
    champion = store.deployed()
    if champion is None:
        raise dg.Failure("no model is deployed yet, so there is no reference to compare with")
    store.manifest(champion["version"])  # verifies every file's sha256, the profile's too
    return champion["version"], store.path(champion["version"])


def _with_start(frame: pl.DataFrame, config: Config) -> pl.DataFrame:
    fmt = config.partitions.key_format
    return frame.with_columns(pl.col(PARTITION).str.strptime(pl.Datetime("us"), fmt)
                              .dt.replace_time_zone("UTC").alias(PARTITION_START))


def label_dependencies(config: Config) -> tuple[str, list[dg.AssetDep]]:
    """Where a partition's labels come from, and the dependency that says when they are known.

    Labels of partition p count as known once the partition `triggers.label_delay` later has
    landed: its data (labels in the data file) or its labels (`dataset.labels`).
    """
    delay, separate = config.triggers.label_delay, config.dataset.labels is not None
    source = "labels" if separate else "raw_events"
    return source, [dg.AssetDep(source, partition_mapping=dg.TimeWindowPartitionMapping(
        start_offset=0 if separate else delay, end_offset=delay))]


def build_monitoring_assets(config: Config, partitions_def: dg.PartitionsDefinition
                            ) -> list[dg.AssetsDefinition]:
    """The `drift_report` and `model_performance` assets with their checks."""
    dataset, triggers = config.dataset, config.triggers
    delay = triggers.label_delay

    @dg.asset(
        partitions_def=partitions_def, backfill_policy=dg.BackfillPolicy.single_run(),
        deps=["features", "deployed_model"], group_name="monitoring",
        kinds={"duckdb", "polars"}, pool="duckdb",
        automation_condition=follows_upstream(),
        check_specs=[dg.AssetCheckSpec(
            "feature_drift", asset="drift_report",
            description="Fails when the share of drifted features reaches drift.share, a "
                        "critical feature or the target drifts, or a segment drifts.")],
        metadata={"dagster/table_name": "warehouse.main.drift_report"},
    )
    def drift_report(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                     model_store: ModelStoreResource):
        """Per-feature drift of each partition against the deployed model's training reference.

        Overall and per segment, plus the target's distribution (prior shift). The reference
        profile was fitted once on the training window and is stored with the model.
        """
        version, directory = _deployed(model_store)
        profiles = load_profiles(directory)
        window = context.partition_time_window
        features = warehouse.get().read_range("features", dataset.timestamp, window.start,
                                              window.end)
        reports, verdicts = [], {}
        for key in partition_keys(config, window.start, window.end):
            report, verdict = partition_drift(
                profiles, features.filter(pl.col(PARTITION) == key), config)
            reports.append(report.with_columns(pl.lit(key).alias(PARTITION)))
            verdicts[key] = verdict
        table = _with_start(pl.concat(reports), config).with_columns(
            pl.lit(version).alias("model_version"))
        warehouse.get().replace_range("drift_report", table, PARTITION_START, window.start,
                                      window.end)
        flagged = [key for key, verdict in verdicts.items() if verdict["drifted"]]
        last = verdicts[max(verdicts)]
        overall = table.filter(pl.col("segment") == "all")
        statistics = {f"statistic_{row['feature']}": row["statistic"]
                      for row in overall.filter(pl.col(PARTITION) == max(verdicts))
                      .iter_rows(named=True) if row["statistic"] is not None}
        yield dg.MaterializeResult(metadata={
            "model_version": version,
            "drifted_share": last["drifted_share"],
            "drifted_features": ", ".join(last["drifted_features"]) or "none",
            "target_drifted": last["target_drifted"],
            "segments_drifted": ", ".join(last["segments_drifted"]) or "none",
            "partitions_flagged": ", ".join(flagged) or "none",
            **statistics,
        })
        yield dg.AssetCheckResult(
            check_name="feature_drift", passed=not flagged,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"observed": last["drifted_share"], "threshold": config.drift.share,
                      "partitions_flagged": ", ".join(flagged) or "none",
                      "first_flagged": min(flagged) if flagged else "none",
                      "drifted_features": ", ".join(last["drifted_features"]) or "none",
                      "target_drifted": last["target_drifted"],
                      "segments_drifted": ", ".join(last["segments_drifted"]) or "none",
                      "model_version": version},
        )

    label_source, label_deps = label_dependencies(config)

    @dg.asset(
        partitions_def=partitions_def, backfill_policy=dg.BackfillPolicy.single_run(),
        deps=["predictions", *label_deps],
        group_name="monitoring", kinds={"duckdb", "polars"}, pool="duckdb",
        automation_condition=follows_upstream(),
        check_specs=[dg.AssetCheckSpec(
            "performance", asset="model_performance",
            description="Fails when the gate metric on labelled predictions falls below "
                        "triggers.min_performance, Page-Hinkley detects a rise in the error "
                        "series (concept drift without a covariate signature), or the deployed "
                        "model's last partitions are worse than it was validated at by more "
                        "than triggers.max_degradation.")],
        metadata={"dagster/table_name": "warehouse.main.model_performance"},
    )
    def model_performance(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                          model_store: ModelStoreResource):
        """Realised performance of the deployed model on each partition, once labels are known.

        Labels of a partition count as known when the partition `triggers.label_delay` later has
        landed (with `dataset.labels`: the labels that became known by the end of that
        partition, joined to the predictions by id); partitions whose labels are not known yet
        are left for a later run. Rows still without a label are not measured.
        """
        window = context.partition_time_window
        landed = context.instance.get_materialized_partitions(dg.AssetKey(label_source))
        fmt = config.partitions.key_format
        keys = [key for key in partition_keys(config, window.start, window.end)
                if delay == 0 or offset_partitions(
                    config, dt.datetime.strptime(key, fmt).replace(tzinfo=dt.UTC), delay
                ).strftime(fmt) in landed]
        if not keys:
            raise dg.Failure(f"labels of {context.partition_key_range.start}… are not known "
                             f"yet (triggers.label_delay = {delay} partitions)")
        store = warehouse.get()
        predictions = store.read_range("predictions", dataset.timestamp, window.start,
                                       window.end)
        if dataset.labels is not None:
            arrived = (store.query(f"SELECT * FROM labels "
                                   f"WHERE {quote_identifier(LABELLED_PARTITION)} IN "
                                   f"({', '.join('?' for _ in keys)})", keys)
                       if store.table_exists("labels") else None)
            known = None if arrived is None else known_labels(arrived, config, delay)
            predictions = attach_labels(predictions, known, config)
        rows = []
        for key in keys:
            part = predictions.filter(pl.col(PARTITION) == key)
            unlabelled = part.filter(pl.col(dataset.target).is_null()).height
            part = part.filter(pl.col(dataset.target).is_not_null())
            for model_version, scored in part.group_by("model_version"):
                _, manifest = load_verified(model_store.get(), str(model_version[0]))
                y, _ = encode_labels(scored[dataset.target], dataset.task,
                                     manifest.get("classes"))
                threshold = manifest.get("operating_threshold") or OPERATING_THRESHOLD
                metrics = compute_metrics(y, scored["score"].to_numpy(), dataset.task,
                                          threshold)
                rows.append({PARTITION: key, "model_version": str(model_version[0]),
                             "rows": scored.height, "unlabelled_rows": unlabelled, **metrics,
                             "error": error_of(metrics, config)})
        if not rows:
            raise dg.Failure(f"no labelled predictions in {keys[0]} … {keys[-1]} yet: no label "
                             "is known for their rows")
        table = _with_start(pl.DataFrame(rows), config)
        store.replace_range("model_performance", table, PARTITION_START, window.start,
                            window.end)
        metric = str(config.gate.metric)
        history = store.query(
            f"SELECT {quote_identifier(PARTITION)}, model_version, error, "
            f"{quote_identifier(metric)} FROM model_performance "
            f"ORDER BY {quote_identifier(PARTITION_START)}")
        latest = table.sort(PARTITION).row(-1, named=True)
        series = history.filter(pl.col("model_version") == latest["model_version"])
        alarm = performance_alarm(series["error"].to_list(),
                                  **config.drift.page_hinkley.model_dump())
        validated = (model_store.get().decision(latest["model_version"]) or {}
                     ).get("candidate_value")
        degraded = degradation(series[metric].to_list(), validated, config)
        value = latest.get(metric)
        floor = triggers.min_performance
        low = [row[PARTITION] for row in table.iter_rows(named=True)
               if floor is not None and row.get(metric) is not None
               and worse_than(dataset.task, metric, row[metric], floor)]
        yield dg.MaterializeResult(metadata={
            "model_version": latest["model_version"], metric: value,
            "error": latest["error"], "rows": int(table["rows"].sum()),
            "labelled_partitions": ", ".join(keys), "page_hinkley_alarm": alarm,
        })
        yield dg.AssetCheckResult(
            check_name="performance", passed=not low and not alarm and degraded is None,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"observed": value, "threshold": triggers.min_performance,
                      "metric": metric, "partitions_below": ", ".join(low) or "none",
                      "first_flagged": (min(low) if low else latest[PARTITION]
                                        if alarm or degraded else "none"),
                      "page_hinkley_alarm": alarm, "validated_value": validated,
                      "degradation": degraded or "none",
                      "model_version": latest["model_version"]},
        )

    return [drift_report, model_performance]
