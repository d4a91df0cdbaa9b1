"""Monitoring stage: drift against the deployed model's reference; realised performance.

A run over a range of partitions records each partition on its own: one materialization per
partition written, with that partition's figures, and one evaluation of the check per
partition judged (the checks are partitioned like their assets), naming the partition, the rule
that tripped and its evidence. A failed evaluation also carries `first_flagged`, the earliest
partition the run flagged, which the retrain sensors take as the partition of the event. The
asset bodies are here; what they record per partition is built in `monitoring_events`.
"""

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl

from ct_assets.defs.automation import follows_upstream
from ct_assets.defs.monitoring_events import (
    TIMELINE_PARTITIONS,
    checks_done,
    drift_events,
    drift_pictures,
    partitioned_check,
    performance_events,
    retrain_partitions,
    unjudged_evaluations,
    unmeasured_reason,
)
from ct_assets.defs.resources import ModelStoreResource, WarehouseResource
from ct_assets.defs.runs import holds_warehouse
from ct_assets.lib.config import Config
from ct_assets.lib.drift import REPORT_SCHEMA
from ct_assets.lib.evaluation import OPERATING_THRESHOLD, compute_metrics
from ct_assets.lib.features import key_window, offset_partitions
from ct_assets.lib.ingest import partition_keys
from ct_assets.lib.labels import LABELLED_PARTITION, attach_labels, known_labels
from ct_assets.lib.monitoring import drift_verdict, error_of, load_profiles, partition_drift
from ct_assets.lib.monitoring_verdicts import drift_history
from ct_assets.lib.partition_figures import span, split_by_partition
from ct_assets.lib.served import RECEIVED_AT
from ct_assets.lib.serving import load_verified
from ct_assets.lib.training import encode_labels
from ct_assets.lib.validation import PARTITION
from ct_assets.lib.warehouse import Warehouse, chunk_partitions, quote_identifier

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
    """The `drift_report` and `model_performance` assets with their per-partition checks."""
    label_source, label_deps = label_dependencies(config)
    # What drift is judged on: the landed rows' features, or the rows `ct serve` answered.
    drift_source, drift_time = (("served_predictions", RECEIVED_AT) if config.drift.on == "served"
                                else ("features", str(config.dataset.timestamp)))
    # … and realised performance on the landed rows' predictions, or on the served ones.
    scored_source, scored_time = (("served_predictions", RECEIVED_AT)
                                  if config.drift.on == "served"
                                  else ("predictions", str(config.dataset.timestamp)))

    @dg.asset(
        partitions_def=partitions_def, backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[drift_source, "deployed_model"], group_name="monitoring",
        kinds={"duckdb", "polars"}, pool="duckdb", output_required=False,
        automation_condition=follows_upstream(),
        check_specs=[partitioned_check(
            "feature_drift", "drift_report", partitions_def,
            description="Fails for a partition whose share of drifted features reaches "
                        "drift.share, whose critical feature or target drifts, or one of whose "
                        "segments drifts; names the rule and each drifted feature's method, "
                        "statistic, threshold and p-value.")],
        metadata={"dagster/table_name": "warehouse.main.drift_report"},
    )
    @holds_warehouse
    def drift_report(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                     model_store: ModelStoreResource):
        """Per-feature drift of each partition against the deployed model's training reference.

        The partition's rows are the landed rows' features, or with `drift.on: served` the
        rows `ct serve` answered (`served_predictions`). Overall and per segment, plus the
        target's distribution (prior shift). The reference profile was fitted once on the
        training window and is stored with the model. Each partition written gets its own
        materialization (its rows, drifted share and features, target and segments; the drift
        over time and the most drifted features of the last partitions, drawn where the asset
        page opens) and its own `feature_drift` evaluation.
        """
        version, directory = _deployed(model_store)
        profiles = load_profiles(directory)
        window = context.partition_time_window
        store = warehouse.get()
        judged = {}
        for key, rows in _partition_rows(store, config, drift_source, drift_time, window):
            if rows is not None:
                report, verdict = partition_drift(profiles, rows, config)
            else:  # nothing served yet (no `served_predictions` table): nothing to judge
                report = pl.DataFrame(schema={**REPORT_SCHEMA, "segment": pl.String})
                verdict = drift_verdict(report, config)
            judged[key] = (report.with_columns(pl.lit(key).alias(PARTITION)), verdict,
                           0 if rows is None else rows.height)
        table = _with_start(pl.concat([report for report, _, _ in judged.values()]), config)
        warehouse.get().replace_range("drift_report", table.with_columns(
            pl.lit(version).alias("model_version")), PARTITION_START, window.start, window.end)
        history = drift_history(warehouse.get().read_range(
            "drift_report", PARTITION_START,
            offset_partitions(config, window.start, -TIMELINE_PARTITIONS), window.end),
            config, PARTITION)
        retrains = retrain_partitions(model_store.get())
        pictures = {key: drift_pictures(history, key, retrains, config) for key in judged}
        yield from drift_events(context.asset_key, judged, version, config, pictures)
        yield checks_done(context, "feature_drift")

    @dg.asset(
        partitions_def=partitions_def, backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[scored_source, *label_deps],
        group_name="monitoring", kinds={"duckdb", "polars"}, pool="duckdb",
        output_required=False, automation_condition=follows_upstream(),
        check_specs=[partitioned_check(
            "performance", "model_performance", partitions_def,
            description="Fails for a measured partition whose gate metric is worse than "
                        "triggers.min_performance, at which Page-Hinkley detects a rise in the "
                        "deployed model's error series (concept drift without a covariate "
                        "signature), or whose model's last 3 measured partitions are worse than "
                        "it was validated at by more than triggers.max_degradation; names the "
                        "rule.")],
        metadata={"dagster/table_name": "warehouse.main.model_performance"},
    )
    @holds_warehouse
    def model_performance(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                          model_store: ModelStoreResource):
        """Realised performance of the deployed model on each partition, once labels are known.

        Measured on `predictions`, or with `drift.on: served` on the rows `ct serve` answered
        (`served_predictions`), whose labels come back through `POST /feedback`.

        Labels of a partition count as known when the partition `triggers.label_delay` later has
        landed (with `dataset.labels`: the labels that became known by the end of that
        partition, joined to the predictions by id). Only partitions with labelled predictions
        are materialized, each with its own metrics and labelled rows, and judged by the
        `performance` check; the others of the run (labels not known yet) are left for a later
        run, said so in the run log and in a check evaluation that judges nothing. Rows still
        without a label are not measured.
        """
        window = context.partition_time_window
        keys = partition_keys(config, window.start, window.end)
        known = labels_known(context.instance, config, label_source, keys)
        if not known:  # e.g. the latest partition alone, re-scored after a promotion
            context.log.info(f"not measured: {span(keys)}: {unmeasured_reason(config)}; "
                             "a later run measures them")
            yield from unjudged_evaluations(context.asset_key, keys, config)
            yield checks_done(context, "performance")
            return
        store = warehouse.get()
        table = measure(store, model_store, config, known,
                        store.read_range(scored_source, scored_time, window.start, window.end))
        store.replace_range("model_performance", table, PARTITION_START, window.start,
                            window.end)
        metric = str(config.gate.metric)
        history = store.query(
            f"SELECT {quote_identifier(PARTITION)}, model_version, error, "
            f"{quote_identifier(metric)} FROM model_performance "
            f"ORDER BY {quote_identifier(PARTITION_START)}")
        measured = sorted(set(table[PARTITION]))
        waiting = [key for key in keys if key not in measured]
        if waiting:
            context.log.info(f"not measured: {span(waiting)}: {unmeasured_reason(config)}; "
                             "a later run measures them")
        yield from performance_events(context.asset_key, table, history, waiting,
                                      model_store, config)
        yield checks_done(context, "performance")

    return [drift_report, model_performance]


def _partition_rows(store: Warehouse, config: Config, table: str, time_column: str,
                    window: dg.TimeWindow) -> Iterator[tuple[str, pl.DataFrame | None]]:
    """Each partition key of `window` with its rows of `table` (None: no such table yet).

    Read in chunks of whole partitions of about `CHUNK_ROWS` rows, so a run over a long
    range holds one chunk at a time, and split once per chunk (not filtered once per key).
    """
    keys = partition_keys(config, window.start, window.end)
    if not store.table_exists(table):
        yield from ((key, None) for key in keys)
        return
    counts = store.partition_rows(table, time_column, window.start, window.end, PARTITION)
    for chunk in chunk_partitions(keys, counts):
        frame = store.read_range(table, time_column, *key_window(config, chunk))
        yield from split_by_partition(frame, chunk).items()


def labels_known(instance: dg.DagsterInstance, config: Config, label_source: str,
                 keys: list[str]) -> list[str]:
    """The partitions of `keys` whose labels are known: `triggers.label_delay` later landed."""
    delay, fmt = config.triggers.label_delay, config.partitions.key_format
    if delay == 0:
        return keys
    landed = instance.get_materialized_partitions(dg.AssetKey(label_source))
    return [key for key in keys if offset_partitions(
        config, dt.datetime.strptime(key, fmt).replace(tzinfo=dt.UTC), delay
    ).strftime(fmt) in landed]


def measure(store: Warehouse, model_store: ModelStoreResource, config: Config,
            keys: list[str], predictions: pl.DataFrame) -> pl.DataFrame:
    """Realised metrics of each of `keys` per scoring model, on its labelled predictions.

    A partition without a labelled prediction has no row; raises `dg.Failure` when none has.
    """
    dataset = config.dataset
    if dataset.labels is not None:
        arrived = (store.query(f"SELECT * FROM labels "
                               f"WHERE {quote_identifier(LABELLED_PARTITION)} IN "
                               f"({', '.join('?' for _ in keys)})", keys)
                   if store.table_exists("labels") else None)
        known = None if arrived is None else known_labels(arrived, config,
                                                          config.triggers.label_delay)
        predictions = attach_labels(predictions, known, config)
    rows = []
    for key in keys:
        part = predictions.filter(pl.col(PARTITION) == key)
        unlabelled = part.filter(pl.col(dataset.target).is_null()).height
        part = part.filter(pl.col(dataset.target).is_not_null())
        for model_version, scored in part.group_by("model_version"):
            _, manifest = load_verified(model_store.get(), str(model_version[0]))
            y, _ = encode_labels(scored[dataset.target], dataset.task, manifest.get("classes"))
            threshold = manifest.get("operating_threshold") or OPERATING_THRESHOLD
            metrics = compute_metrics(y, scored["score"].to_numpy(), dataset.task, threshold)
            rows.append({PARTITION: key, "model_version": str(model_version[0]),
                         "rows": scored.height, "unlabelled_rows": unlabelled, **metrics,
                         "error": error_of(metrics, config)})
    if not rows:
        raise dg.Failure(f"no labelled predictions in {span(keys)} yet: no label is known for "
                         "their rows")
    return _with_start(pl.DataFrame(rows), config)
