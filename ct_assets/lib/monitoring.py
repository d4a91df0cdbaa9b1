"""Monitoring logic: reference profiles saved with a model, per-partition drift, performance.

A model carries `reference_profile.json`: the drift reference of its training rows (features
and target), overall and per segment. Each partition is compared with it, so drift costs
O(partition) however long the history is.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl

from ct_assets.lib.config import Config
from ct_assets.lib.drift import ReferenceProfile, compute_drift, drift_summary, page_hinkley_scan
from ct_assets.lib.evaluation import METRICS
from ct_assets.lib.features import feature_schema

REFERENCE_FILE = "reference_profile.json"
MIN_SEGMENT_ROWS = 50  # segments smaller than this in the reference get no profile of their own


def monitored_features(config: Config) -> dict[str, str]:
    """Features whose drift is monitored: all but those constant within one partition.

    Day-of-week features are constant in a daily partition (and hour features in an hourly
    one), and recent means are one value per segment and partition: comparing such columns
    with a multi-partition reference would flag drift on every partition.
    """
    constant = {"recent_mean"}
    if config.partitions.granularity in ("hourly", "daily"):
        constant.add("dow_")
    if config.partitions.granularity == "hourly":
        constant.add("hour_")
    return {name: kind for name, kind in feature_schema(config).items()
            if not any(marker in name for marker in constant)}


def _columns(config: Config) -> tuple[list[str], list[str]]:
    features = monitored_features(config)
    target = config.dataset.target
    columns = [*features, target] if target else list(features)
    categorical = [n for n, k in features.items() if k == "category"]
    if target and config.dataset.task != "regression":
        categorical.append(target)
    return columns, categorical


def fit_profiles(frame: pl.DataFrame, config: Config) -> dict[str, Any]:
    """Drift references of training rows: `{"all": profile, "segments": {value: profile}}`."""
    from ct_assets.lib.drift import fit_reference

    columns, categorical = _columns(config)
    data = frame.select(columns)
    profiles: dict[str, Any] = {"all": fit_reference(data, categorical=categorical).to_dict(),
                                "segments": {}}
    segment = config.dataset.segment
    if segment and segment in frame.columns:
        for (value,), part in frame.group_by(segment):
            if value is not None and part.height >= MIN_SEGMENT_ROWS:
                profiles["segments"][str(value)] = fit_reference(
                    part.select(columns), categorical=categorical).to_dict()
    return profiles


def save_profiles(profiles: dict[str, Any], directory: Path) -> Path:
    """Write the profiles as JSON (no pickle) into `directory`; returns the file."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / REFERENCE_FILE
    path.write_text(json.dumps(profiles), encoding="utf-8")
    return path


def load_profiles(directory: Path) -> dict[str, Any]:
    """Read profiles saved by `save_profiles` (verify the model's sha256 first)."""
    return json.loads((directory / REFERENCE_FILE).read_text(encoding="utf-8"))


def partition_drift(profiles: dict[str, Any], current: pl.DataFrame, config: Config
                    ) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Drift of one partition: overall, per segment, and of the target.

    Returns:
        The per-feature report (with a `segment` column: `all` or the segment value) and a
        verdict: `drifted` when the share of drifted features reaches `drift.share`, a critical
        feature drifts, the target's distribution drifts (prior shift), or any segment drifts.
    """
    settings = config.drift
    target = config.dataset.target
    reports = []
    verdict: dict[str, Any] = {"segments_drifted": []}
    scopes: list[tuple[str, dict[str, Any], pl.DataFrame]] = [("all", profiles["all"], current)]
    segment = config.dataset.segment
    for value, profile in sorted(profiles.get("segments", {}).items()):
        if segment:
            scopes.append((value, profile, current.filter(pl.col(segment).cast(pl.String)
                                                          == value)))
    for scope, profile, rows in scopes:
        report = compute_drift(ReferenceProfile.from_dict(profile), rows, config=settings)
        features = report.filter(pl.col("feature") != target)
        summary = drift_summary(features, share=settings.share, critical=settings.critical)
        target_row = report.filter(pl.col("feature") == target)
        target_drifted = bool(target_row.height and target_row["drifted"][0])
        if scope == "all":
            verdict.update(summary, target_drifted=target_drifted)
        elif summary["dataset_drifted"]:
            verdict["segments_drifted"].append(scope)
        reports.append(report.with_columns(pl.lit(scope).alias("segment")))
    verdict["drifted"] = bool(verdict["dataset_drifted"] or verdict["target_drifted"]
                              or verdict["segments_drifted"])
    return pl.concat(reports), verdict


def error_of(metrics: dict[str, float], config: Config) -> float:
    """The monitored error: the gate metric turned so that larger is worse."""
    metric = config.gate.metric
    value = metrics.get(metric, math.nan)
    higher_is_better = METRICS[config.dataset.task][metric]
    return 1.0 - value if higher_is_better else value


def performance_alarm(errors: list[float], **params: Any) -> bool:
    """Whether Page-Hinkley fires on the newest point of a per-partition error series."""
    alarms = page_hinkley_scan(errors, **params)
    return bool(alarms) and alarms[-1] == len(errors) - 1
