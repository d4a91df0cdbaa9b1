"""What the monitoring assets record for each partition: its materialization and its verdict.

The checks `feature_drift` and `performance` are partitioned like their assets
(`AssetCheckSpec(partitions_def=…)`): Dagster 1.13 plans one evaluation per partition of a run,
a range run included, and each is completed here by an evaluation naming its partition, the
rule that tripped and the evidence. A failed evaluation carries `first_flagged`, the earliest
partition the run flagged: the retrain sensors read the newest failure and take that partition
as the event's, so a range run with several flagged partitions is one event.
"""

import warnings
from collections.abc import Iterator
from typing import Any

import dagster as dg
import polars as pl

from ct_assets.defs.resources import ModelStoreResource
from ct_assets.lib.config import Config
from ct_assets.lib.inline_charts import Point, fits_inline, timeline_markdown
from ct_assets.lib.model_store import ModelStore
from ct_assets.lib.monitoring_verdicts import (
    EVIDENCE_COLUMNS,
    drift_rules,
    drifted_feature_rows,
    performance_rules,
)
from ct_assets.lib.partition_figures import rounded, span
from ct_assets.lib.reports import markdown_table
from ct_assets.lib.validation import PARTITION

TIMELINE_PARTITIONS = 30  # partitions shown by the drift-over-time chart (fewer if they must)
RECENT_PARTITIONS = 7  # partitions listed by the recent-drift table


def partitioned_check(name: str, asset: str, partitions_def: dg.PartitionsDefinition,
                      description: str) -> dg.AssetCheckSpec:
    """A check partitioned like its asset: one evaluation per partition, even in a range run.

    Dagster 1.13 marks `AssetCheckSpec(partitions_def=…)` as a preview; what this module relies
    on (one planned evaluation per partition of the run, each completed by an evaluation naming
    its partition) is covered by `ct_assets_tests/defs/test_monitoring.py`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(name, asset=asset, partitions_def=partitions_def,
                                 description=description)


def checks_done(context: dg.AssetExecutionContext, check: str) -> dg.Output:
    """The output that closes a check whose evaluations were yielded one per partition.

    `dg.AssetCheckResult` has no partition (in a range run its evaluation would be stored
    apart from the partitions Dagster planned, which would then show as skipped), so the
    evaluations are yielded as `dg.AssetCheckEvaluation`s and the check's output is closed here.
    """
    key = dg.AssetCheckKey(context.asset_key, check)
    return dg.Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(key))


def retrain_partitions(store: ModelStore) -> frozenset[str]:
    """The partitions whose drift or performance event led to a promoted retrain."""
    return frozenset(
        record["trigger"]["partition"] for record in store.pointer()["history"]
        if (record.get("trigger") or {}).get("partition", "none") != "none")


def drift_pictures(history: list[dict[str, Any]], key: str, retrains: frozenset[str],
                   config: Config) -> dict[str, dg.MetadataValue]:
    """The drift-over-time chart and the recent-drift table as of partition `key`.

    Both are Markdown short enough for the UI to show them where the asset page opens: the
    drifted share of the last `TIMELINE_PARTITIONS` partitions up to `key` (drifted ones red,
    `drift.share` dashed, a blue line at each partition that triggered a promoted retrain), and
    the last `RECENT_PARTITIONS` with their most drifted features.
    """
    upto = [day for day in history if day["partition"] <= key][-TIMELINE_PARTITIONS:]
    chart = _drift_chart([Point(day["partition"], day["drifted_share"], day["drifted"])
                          for day in upto], retrains, config)
    recent = upto[-RECENT_PARTITIONS:][::-1]
    while True:
        table = markdown_table(pl.DataFrame(
            {"partition": [day["partition"] for day in recent],
             "share": [round(day["drifted_share"], 2) for day in recent],
             "drifted": ["yes" if day["drifted"] else "no" for day in recent],
             "top features": [", ".join(day["top_features"]) or "none" for day in recent]},
            schema={"partition": pl.String, "share": pl.Float64, "drifted": pl.String,
                    "top features": pl.String}), RECENT_PARTITIONS)
        if fits_inline(table) or len(recent) <= 1:
            break
        recent = recent[:-1]
    return {"drift_over_time": chart, "recent_drift": dg.MetadataValue.md(table)}


def recorded_drift_timeline(instance: dg.DagsterInstance, retrains: frozenset[str],
                            config: Config, limit: int = 500) -> dg.MetadataValue | None:
    """The drift-over-time chart from the instance's record of `drift_report`, retrains marked.

    Read from the event log (each partition's newest materialization: its drifted share and
    verdict), not the warehouse, so an asset without the DuckDB pool can show it; None before
    any partition was judged.
    """
    newest: dict[str, dict[str, Any]] = {}
    for record in instance.fetch_materializations(dg.AssetKey("drift_report"),
                                                  limit=limit).records:
        event = record.asset_materialization
        if event is None or event.partition is None or event.partition in newest:
            continue
        values = {key: getattr(value, "value", None) for key, value in event.metadata.items()}
        if isinstance(values.get("drifted_share"), int | float):
            newest[event.partition] = values
    if not newest:
        return None
    keys = sorted(newest)[-TIMELINE_PARTITIONS:]
    return _drift_chart([Point(key, float(newest[key]["drifted_share"]),
                               bool(newest[key].get("drifted"))) for key in keys],
                        retrains, config)


def _drift_chart(points: list[Point], retrains: frozenset[str], config: Config
                 ) -> dg.MetadataValue:
    """The drifted share per partition, drawn inline, with the retrains' triggers marked."""
    return dg.MetadataValue.md(timeline_markdown(
        points, "drifted share per partition",
        "Drifted share per partition: red drifted, dashed `drift.share`, blue a retrain's trigger",
        limit=config.drift.share, markers=retrains, scale=1.0))


def drift_events(asset_key: dg.AssetKey,
                 judged: dict[str, tuple[pl.DataFrame, dict[str, Any], int]], version: str,
                 config: Config, pictures: dict[str, dict[str, dg.MetadataValue]] | None = None
                 ) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """One materialization and one `feature_drift` evaluation per partition judged.

    Args:
        asset_key: `drift_report`.
        judged: partition key → its drift report (every scope), verdict and feature rows.
        version: the deployed model whose reference the partitions were compared with.
        config: the drift settings.
        pictures: partition key → its `drift_pictures`, shown first in its materialization.
    """
    flagged = [key for key, (_, verdict, _) in judged.items() if verdict["drifted"]]
    for key, (report, verdict, rows) in judged.items():
        statistics = {f"statistic_{row['feature']}": row["statistic"] for row in report.filter(
            pl.col("segment") == "all").iter_rows(named=True) if row["statistic"] is not None}
        rules = drift_rules(report, verdict, config)
        figures = {"model_version": version, "rows": rows,
                   "drifted_share": verdict["drifted_share"],
                   "drifted_features": ", ".join(verdict["drifted_features"]) or "none",
                   "target_drifted": verdict["target_drifted"],
                   "segments_drifted": ", ".join(verdict["segments_drifted"]) or "none",
                   "drifted": verdict["drifted"], "rule": "; ".join(rules) or "none"}
        yield dg.AssetMaterialization(asset_key=asset_key, partition=key, metadata={
            **(pictures or {}).get(key, {}), **rounded({**figures, **statistics})})
        yield dg.AssetCheckEvaluation(
            asset_key=asset_key, check_name="feature_drift", partition=key,
            passed=not verdict["drifted"], severity=dg.AssetCheckSeverity.WARN,
            description=(_verdict_text(key, rules) if rows else
                         f"{key} not judged: it has no feature rows to compare"),
            metadata={**rounded(figures), "partition": key, "judged": rows > 0,
                      "observed": rounded(verdict["drifted_share"]),
                      "threshold": config.drift.share,
                      "partitions_judged": span(list(judged)),
                      "partitions_flagged": ", ".join(flagged) or "none",
                      "first_flagged": min(flagged) if verdict["drifted"] else "none",
                      "drifted_feature_table": evidence_table(drifted_feature_rows(report))})


def evidence_table(rows: list[dict[str, Any]]) -> dg.TableMetadataValue:
    """The drifted features as a table: scope, feature, method, statistic, threshold, p-value."""
    types = {"segment": "string", "feature": "string", "method": "string",
             "statistic": "float", "threshold": "float", "p_value": "float"}
    return dg.MetadataValue.table(
        records=[dg.TableRecord(rounded(row)) for row in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(name, types[name])
                                       for name in EVIDENCE_COLUMNS]))


def performance_events(asset_key: dg.AssetKey, table: pl.DataFrame, history: pl.DataFrame,
                       waiting: list[str], model_store: ModelStoreResource, config: Config
                       ) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """One materialization and one `performance` evaluation per measured partition.

    Each partition is judged against the floor (`triggers.min_performance`); the series rules
    (Page-Hinkley, degradation) judge the model's stored series where it ends, on the run's
    newest measured partition (`series_rules_judged_on`), as they did before the checks were
    partitioned, so a range run raises the alarms a run of its newest partition would. A partition
    of the run that was not measured (`waiting`) gets an evaluation that says why and judges
    nothing, not a materialization.
    """
    metric = str(config.gate.metric)
    newest = str(table[PARTITION].max())
    judged: dict[str, dict[str, Any]] = {}
    for row in table.sort(PARTITION, "rows").iter_rows(named=True):  # most rows last: it counts
        version = row["model_version"]
        # The series rules judge where the model's series ends: on the run's newest partition.
        series = (history.filter(pl.col("model_version") == version) if row[PARTITION] == newest
                  else history.clear())
        validated = (model_store.get().decision(version) or {}).get("candidate_value")
        verdict = performance_rules(row[metric], series["error"].to_list(),
                                    series[metric].to_list(), validated, config)
        earlier = judged.get(row[PARTITION], {"rules": [], "versions": [],
                                              "below_floor": False})
        judged[row[PARTITION]] = {**row, **verdict, "validated_value": validated,
                                  "rules": earlier["rules"] + verdict["rules"],
                                  "below_floor": earlier["below_floor"] or verdict["below_floor"],
                                  "versions": [*earlier["versions"], version]}
    flagged = sorted(key for key, verdict in judged.items() if verdict["rules"])
    below = sorted(key for key, verdict in judged.items() if verdict["below_floor"])
    for key, verdict in sorted(judged.items()):
        labelled = int(table.filter(pl.col(PARTITION) == key)["rows"].sum())
        figures = {"model_version": ", ".join(verdict["versions"]), metric: verdict[metric],
                   "error": verdict["error"], "rows": labelled,
                   "unlabelled_rows": verdict["unlabelled_rows"],
                   "page_hinkley_alarm": verdict["page_hinkley_alarm"],
                   "rule": "; ".join(verdict["rules"]) or "none"}
        yield dg.AssetMaterialization(asset_key=asset_key, partition=key,
                                      metadata=rounded(figures))
        yield dg.AssetCheckEvaluation(
            asset_key=asset_key, check_name="performance", partition=key,
            passed=not verdict["rules"], severity=dg.AssetCheckSeverity.WARN,
            description=_verdict_text(key, verdict["rules"]),
            metadata={**rounded(figures), "partition": key, "judged": True, "metric": metric,
                      "observed": rounded(verdict[metric]),
                      "threshold": config.triggers.min_performance,
                      "max_degradation": config.triggers.max_degradation,
                      "validated_value": rounded(verdict["validated_value"]),
                      "degradation": verdict["degradation"] or "none",
                      "series_rules_judged_on": newest,
                      "partitions_judged": span(list(judged)),
                      "partitions_below": ", ".join(below) or "none",
                      "partitions_flagged": ", ".join(flagged) or "none",
                      "first_flagged": flagged[0] if verdict["rules"] else "none"})
    yield from unjudged_evaluations(asset_key, waiting, config)


def unjudged_evaluations(asset_key: dg.AssetKey, waiting: list[str], config: Config
                         ) -> Iterator[dg.AssetCheckEvaluation]:
    """A `performance` evaluation for each partition not measured yet, judging nothing."""
    reason = unmeasured_reason(config)
    for key in waiting:
        yield dg.AssetCheckEvaluation(
            asset_key=asset_key, check_name="performance", partition=key, passed=True,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"{key} not judged: {reason}; a later run measures it",
            metadata={"partition": key, "judged": False, "reason": reason})


def unmeasured_reason(config: Config) -> str:
    """Why a partition of a `model_performance` run was not measured."""
    delay = config.triggers.label_delay
    return (f"no label of its rows is known yet (they count as known once the partition "
            f"triggers.label_delay = {delay} later has landed)")


def _verdict_text(key: str, rules: list[str]) -> str:
    return f"{key} failed: {'; '.join(rules)}" if rules else f"{key} passed: no rule tripped"
