"""Why a monitoring check judged one partition as it did: the rules that tripped, the evidence.

The drift check (`feature_drift`) and the performance check (`performance`) judge each
partition on its own. These functions turn one partition's drift report and verdict
(`partition_drift`), or its realised metric and its model's series, into the rules that tripped
(each a sentence naming the setting it crossed) and the figures behind them, as plain values.
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl

from ct_assets.lib.config import Config, worse_than
from ct_assets.lib.drift import drift_summary
from ct_assets.lib.monitoring import degradation, drift_verdict, performance_alarm

EVIDENCE_COLUMNS = ("segment", "feature", "method", "statistic", "threshold", "p_value")


def drift_rules(report: pl.DataFrame, verdict: dict[str, Any], config: Config) -> list[str]:
    """The rules that made one partition drift, each naming its setting; empty when it did not.

    Args:
        report: the partition's drift report, every scope (`partition_drift`'s first value, or
            its rows read back from the `drift_report` table).
        verdict: `drift_verdict` of that report.
        config: `drift.share`, `drift.segment_share`, `drift.critical`, `drift.target_alpha`
            and the dataset's target and segment.
    """
    settings, target = config.drift, config.dataset.target
    rules = []
    overall = report.filter((pl.col("segment") == "all") & (pl.col("feature") != target))
    summary = drift_summary(overall, share=settings.share, critical=settings.critical)
    if summary["tested_features"] and summary["drifted_share"] >= settings.share:
        rules.append(f"drifted share {summary['drifted_share']:.2f} ≥ drift.share "
                     f"{settings.share} ({summary['n_drifted']} of {summary['tested_features']} "
                     f"features: {', '.join(summary['drifted_features'])})")
    rules += [f"critical feature {name} drifted (drift.critical)"
              for name in summary["critical_drifted"]]
    if verdict["target_drifted"]:
        row = report.filter((pl.col("segment") == "all") & (pl.col("feature") == target)).row(
            0, named=True)
        rules.append(f"target {target} drifted: {row['method']} p-value {row['p_value']:.3g} < "
                     f"drift.target_alpha {settings.target_alpha}")
    for scope in verdict["segments_drifted"]:
        rows = report.filter((pl.col("segment") == scope) & (pl.col("feature") != target))
        part = drift_summary(rows, share=settings.segment_share, critical=settings.critical)
        why = (f"drifted share {part['drifted_share']:.2f} ≥ drift.segment_share "
               f"{settings.segment_share}" if part["drifted_share"] >= settings.segment_share
               else f"critical feature {', '.join(part['critical_drifted'])} drifted")
        rules.append(f"segment {config.dataset.segment}={scope}: {why} "
                     f"({', '.join(part['drifted_features'])})")
    return rules


def drifted_feature_rows(report: pl.DataFrame) -> list[dict[str, Any]]:
    """The drifted features of one partition, every scope: method, statistic, threshold, p-value.

    Overall (`segment` `all`) first, then each segment; `p_value` is None for a distance (its
    `threshold` bounds the statistic), else the threshold bounds the p-value.
    """
    drifted = report.filter(pl.col("drifted")).with_columns(
        (pl.col("segment") != "all").alias("__segment"))
    return drifted.sort("__segment", "segment", "feature").select(EVIDENCE_COLUMNS).to_dicts()


def drift_history(rows: pl.DataFrame, config: Config, partition: str, top: int = 3
                  ) -> list[dict[str, Any]]:
    """Each partition's verdict from `drift_report` rows, oldest first, for a timeline.

    Args:
        rows: `drift_report` rows of several partitions, every scope.
        config: the drift settings the verdicts are judged with.
        partition: the column holding the partition key.
        top: how many drifted features to name per partition.

    Returns:
        Per partition: `partition`, `drifted`, `drifted_share` and `top_features`, its most
        drifted features overall (by how far each is past its threshold), strongest first.
    """
    history = []
    target = config.dataset.target
    for key in sorted(rows[partition].unique().to_list()):
        report = rows.filter(pl.col(partition) == key)
        verdict = drift_verdict(report, config)
        drifted = report.filter((pl.col("segment") == "all") & pl.col("drifted")
                                & (pl.col("feature") != target)).to_dicts()
        drifted.sort(key=_excess, reverse=True)
        history.append({"partition": key, "drifted": verdict["drifted"],
                        "drifted_share": verdict["drifted_share"],
                        "top_features": [row["feature"] for row in drifted[:top]]})
    return history


def _excess(row: dict[str, Any]) -> float:
    """How far a drifted feature is past its threshold: > 1, larger is further."""
    statistic, threshold, p_value = row["statistic"], row["threshold"], row["p_value"]
    if p_value is None:  # a distance: the threshold bounds the statistic
        return statistic / threshold if threshold else math.inf
    return math.log(max(p_value, 1e-300)) / math.log(threshold) if 0 < threshold < 1 else 0.0


def performance_rules(value: float | None, errors: list[float], values: list[float | None],
                      validated: float | None, config: Config) -> dict[str, Any]:
    """How the performance check judges one measured partition of one model.

    Three rules, each on this partition as the newest point of the model's series: the metric
    is worse than `triggers.min_performance` (the floor); Page-Hinkley fires on this point of
    the error series; the mean of the last measured partitions is worse than the model's
    validated metric by more than `triggers.max_degradation` (`degradation`).

    Args:
        value: the partition's realised gate metric.
        errors: the model's error series (`error_of`), oldest first, ending with this partition.
        values: its realised gate metric per partition, oldest first, ending with this one.
        validated: the metric the gate validated the model at (None: unknown).
        config: the gate metric, task, triggers and `drift.page_hinkley`.

    Returns:
        `below_floor`, `page_hinkley_alarm`, `degradation` (the sentence or None) and `rules`
        (one sentence per rule that tripped, empty when the partition passes).
    """
    metric, floor = str(config.gate.metric), config.triggers.min_performance
    below = (floor is not None and value is not None and math.isfinite(value)
             and worse_than(config.dataset.task, metric, value, floor))
    settings = config.drift.page_hinkley
    alarm = performance_alarm(errors, **settings.model_dump())
    degraded = degradation([v for v in values if v is not None], validated, config)
    rules = []
    if below:
        rules.append(f"floor: {metric} {value:.4f} is worse than triggers.min_performance "
                     f"{floor}")
    if alarm:
        shown = f"{metric} {value:.4f}" if value is not None else metric
        rules.append(f"Page-Hinkley: the model's error series ({metric} turned so that larger "
                     f"is worse, {len(errors)} measured partitions) rose at this partition, "
                     f"{shown} (drift.page_hinkley delta {settings.delta}, threshold "
                     f"{settings.threshold})")
    if degraded:
        rules.append(f"degradation: {degraded}")
    return {"below_floor": below, "page_hinkley_alarm": alarm, "degradation": degraded,
            "rules": rules}
