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

from ct_assets.lib.config import Config, DriftConfig, worse_than
from ct_assets.lib.detectors import page_hinkley_scan
from ct_assets.lib.drift import ReferenceProfile, compute_drift, drift_summary
from ct_assets.lib.features import (
    DAY_OF_WEEK_FEATURES,
    HOUR_FEATURES,
    feature_schema,
    recent_mean_feature,
)
from ct_assets.lib.model_store import REFERENCE_FILE

MIN_SEGMENT_ROWS = 50  # segments smaller than this in the reference get no profile of their own
SEGMENT_ALPHA = 0.01  # family-wise significance a segment's feature drift must also reach


def monitored_features(config: Config) -> dict[str, str]:
    """Features whose drift is monitored: all but those constant within one partition.

    Day-of-week features are constant in a daily partition (and hour features in an hourly
    one), and recent means are one value per segment and partition: comparing such columns
    with a multi-partition reference would flag drift on every partition.
    """
    constant = {recent_mean_feature(column) for column in config.relative_columns()}
    if config.partitions.granularity in ("hourly", "daily"):
        constant.update(DAY_OF_WEEK_FEATURES)
    if config.partitions.granularity == "hourly":
        constant.update(HOUR_FEATURES)
    return {name: kind for name, kind in feature_schema(config).items() if name not in constant}


def _columns(config: Config) -> tuple[list[str], list[str]]:
    features = monitored_features(config)
    target = config.dataset.target
    columns = [*features, target] if target else list(features)
    categorical = [n for n, k in features.items() if k == "category"]
    if target and config.dataset.task != "regression":
        categorical.append(target)
    return columns, categorical


def fit_profiles(frame: pl.DataFrame, config: Config, labelled: pl.DataFrame | None = None
                 ) -> dict[str, Any]:
    """Drift references: `{"all": profile, "segments": {value: profile}}`.

    Features are profiled on `frame`; the target on `labelled` when given (the reference rows
    may be too recent to have their labels yet), else on `frame` too.
    """
    from ct_assets.lib.drift import fit_reference

    columns, categorical = _columns(config)
    target = config.dataset.target

    def fit(rows: pl.DataFrame, labels: pl.DataFrame | None) -> dict[str, Any]:
        if labels is None or target not in columns:
            return fit_reference(rows.select(columns), categorical=categorical).to_dict()
        profile = fit_reference(rows.select([c for c in columns if c != target]),
                                categorical=categorical).to_dict()
        profile["columns"] += fit_reference(labels.select(target),
                                            categorical=categorical).to_dict()["columns"]
        return profile

    profiles: dict[str, Any] = {"all": fit(frame, labelled), "segments": {}}
    segment = config.dataset.segment
    if segment and segment in frame.columns:
        for (value,), part in frame.group_by(segment):
            if value is not None and part.height >= MIN_SEGMENT_ROWS:
                labels = (None if labelled is None
                          else labelled.filter(pl.col(segment) == value))
                profiles["segments"][str(value)] = fit(part, labels)
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
    scopes: list[tuple[str, dict[str, Any], pl.DataFrame]] = [("all", profiles["all"], current)]
    segment = config.dataset.segment
    for value, profile in sorted(profiles.get("segments", {}).items()):
        if segment:
            scopes.append((value, profile, current.filter(pl.col(segment).cast(pl.String)
                                                          == value)))
    methods = _with_target_test(settings.methods, target)
    alpha = settings.target_alpha
    for scope, profile, rows in scopes:
        report = compute_drift(ReferenceProfile.from_dict(profile), rows,
                               config=settings.model_copy(update={"methods": methods}))
        # The target (prior shift) is judged by its chi-square p-value against a strict alpha:
        # one test a day at 0.05 would raise a false alarm every three weeks.
        report = report.with_columns(
            pl.when(pl.col("feature") == target)
            .then(pl.col("p_value").is_not_null() & (pl.col("p_value") < alpha))
            .otherwise(pl.col("drifted")).alias("drifted"),
            pl.when(pl.col("feature") == target).then(pl.lit(alpha))
            .otherwise(pl.col("threshold")).alias("threshold"))
        if scope != "all":  # the segment column is constant inside its own segment
            report = _require_significance(report.filter(pl.col("feature") != segment),
                                           profile, rows, settings)
        reports.append(report.with_columns(pl.lit(scope).alias("segment")))
    report = pl.concat(reports)
    return report, drift_verdict(report, config)


def drift_verdict(report: pl.DataFrame, config: Config) -> dict[str, Any]:
    """The verdict on one partition's drift report (every scope, told by its `segment` column).

    `drifted` when the share of drifted features overall reaches `drift.share`, a critical
    feature drifts, the target drifts (prior shift), or a segment's share of drifted features
    reaches `drift.segment_share`. Works on `partition_drift`'s report and on the rows of one
    partition read back from the `drift_report` table.
    """
    settings, target = config.drift, config.dataset.target
    verdict: dict[str, Any] = {"dataset_drifted": False, "target_drifted": False,
                               "drifted_share": 0.0, "drifted_features": [],
                               "segments_drifted": []}
    for scope in report["segment"].unique().sort().to_list():
        rows = report.filter(pl.col("segment") == scope)
        features = rows.filter(pl.col("feature") != target)
        # One segment drifting is a localised shift: it counts from `drift.segment_share`.
        share = settings.share if scope == "all" else settings.segment_share
        summary = drift_summary(features, share=share, critical=settings.critical)
        if scope == "all":
            target_row = rows.filter(pl.col("feature") == target)
            verdict.update(summary, target_drifted=bool(
                target_row.height and target_row["drifted"][0]))
        elif summary["dataset_drifted"]:
            verdict["segments_drifted"].append(scope)
    verdict["drifted"] = bool(verdict["dataset_drifted"] or verdict["target_drifted"]
                              or verdict["segments_drifted"])
    return verdict


def _require_significance(report: pl.DataFrame, profile: dict[str, Any], rows: pl.DataFrame,
                          settings: DriftConfig) -> pl.DataFrame:
    """A segment's feature drifts only if its shift is both large and significant.

    Segments are small samples, where a distance such as the normalised Wasserstein is noisy
    (a 170-row segment exceeds 0.1 by chance). The KS / chi-square p-value, Bonferroni-corrected
    over the features, must also be below `SEGMENT_ALPHA`.
    """
    tests = compute_drift(ReferenceProfile.from_dict(profile), rows, config=settings.model_copy(
        update={"methods": {"numeric": "ks", "categorical": "chisquare"}}))
    alpha = SEGMENT_ALPHA / max(1, tests.height)
    significant = tests.select("feature", (pl.col("p_value") < alpha).fill_null(False)
                               .alias("__significant"))
    return (report.join(significant, on="feature", how="left")
            .with_columns((pl.col("drifted") & pl.col("__significant").fill_null(False))
                          .alias("drifted"))
            .drop("__significant"))


def _with_target_test(methods: str | dict[str, str], target: str | None
                      ) -> str | dict[str, str]:
    """The configured methods, with the target always tested by chi-square (it has a p-value)."""
    if target is None:
        return methods
    if isinstance(methods, dict):
        return {**methods, target: "chisquare"}
    chosen = {} if methods == "auto" else {"numeric": methods, "categorical": methods}
    return {**chosen, target: "chisquare"}


def error_of(metrics: dict[str, float], config: Config) -> float:
    """The monitored error: the gate metric turned so that larger is worse."""
    metric = str(config.gate.metric)
    value = metrics.get(metric, math.nan)
    return 1.0 - value if config.metric_higher_is_better else value


def performance_alarm(errors: list[float], **params: Any) -> bool:
    """Whether Page-Hinkley fires on the newest point of a per-partition error series.

    Only a rise of the error counts (mode `up`): a model getting better is no reason to
    retrain it.
    """
    alarms = page_hinkley_scan(errors, **{"mode": "up", **params})
    return bool(alarms) and alarms[-1] == len(errors) - 1


DEGRADATION_PARTITIONS = 3  # the realised metric is averaged over this many newest partitions


def degradation(values: list[float], validated: float | None, config: Config) -> str | None:
    """Why the deployed model performs worse than it was validated at, or None.

    A model approved by the gate was measured on its holdout; when the mean of its realised
    metric over its newest `DEGRADATION_PARTITIONS` measured partitions is worse than that
    by more than `triggers.max_degradation`, the world it learned has moved on, even if the
    metric never crosses `triggers.min_performance` and never drops in one step (which
    Page-Hinkley would see): a change in one segment, say, after a retrain on the inputs.

    Args:
        values: the deployed model's realised metric per partition, oldest first.
        validated: its metric on the holdout the gate judged it on (None: unknown).
        config: `gate.metric`, `dataset.task` and `triggers.max_degradation`.
    """
    allowed = config.triggers.max_degradation
    finite = [value for value in values if value is not None and math.isfinite(value)]
    if allowed is None or validated is None or not math.isfinite(validated) or \
            len(finite) < DEGRADATION_PARTITIONS:
        return None
    metric = str(config.gate.metric)
    mean = sum(finite[-DEGRADATION_PARTITIONS:]) / DEGRADATION_PARTITIONS
    bound = validated - allowed if config.metric_higher_is_better else validated + allowed
    if not worse_than(config.dataset.task, metric, mean, bound):
        return None
    return (f"{metric} {mean:.4f} over the last {DEGRADATION_PARTITIONS} measured partitions "
            f"is worse than the {validated:.4f} the model was validated at by more than "
            f"triggers.max_degradation {allowed}")
