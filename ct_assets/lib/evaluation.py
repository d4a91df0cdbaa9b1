"""Model evaluation: metrics per task, per-segment slices, calibration, bootstrap CI, the gate."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

# Metric name → whether larger is better. The gate metric must be one of these for its task.
METRICS: dict[str, dict[str, bool]] = {
    "binary": {"roc_auc": True, "pr_auc": True, "log_loss": False, "brier": False,
               "precision": True, "recall": True, "f1": True, "accuracy": True},
    "multiclass": {"accuracy": True, "macro_f1": True, "log_loss": False},
    "regression": {"rmse": False, "mae": False, "r2": True},
}
OPERATING_THRESHOLD = 0.5


def compute_metrics(y: np.ndarray, scores: np.ndarray, task: str,
                    threshold: float = OPERATING_THRESHOLD) -> dict[str, float]:
    """Every metric of the task; NaN where undefined (e.g. AUC with one class present)."""
    from sklearn import metrics

    if task == "regression":
        if len(y) == 0:
            return dict.fromkeys(METRICS["regression"], math.nan)
        return {"rmse": float(np.sqrt(metrics.mean_squared_error(y, scores))),
                "mae": float(metrics.mean_absolute_error(y, scores)),
                "r2": float(metrics.r2_score(y, scores)) if len(y) > 1 else math.nan}
    if task == "multiclass":
        if len(y) == 0:
            return dict.fromkeys(METRICS["multiclass"], math.nan)
        labels = np.arange(scores.shape[1])
        predicted = scores.argmax(axis=1)
        return {"accuracy": float(metrics.accuracy_score(y, predicted)),
                "macro_f1": float(metrics.f1_score(y, predicted, average="macro",
                                                   labels=labels, zero_division=0)),
                "log_loss": float(metrics.log_loss(y, scores, labels=labels))}
    result = dict.fromkeys(METRICS["binary"], math.nan)
    if len(y) == 0:
        return result
    predicted = (scores >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    result.update(
        roc_auc=float(metrics.roc_auc_score(y, scores)) if both else math.nan,
        pr_auc=float(metrics.average_precision_score(y, scores)) if both else math.nan,
        log_loss=float(metrics.log_loss(y, np.clip(scores, 1e-15, 1 - 1e-15), labels=[0, 1])),
        brier=float(metrics.brier_score_loss(y, scores)),
        precision=float(metrics.precision_score(y, predicted, zero_division=0)),
        recall=float(metrics.recall_score(y, predicted, zero_division=0)),
        f1=float(metrics.f1_score(y, predicted, zero_division=0)),
        accuracy=float(np.mean(predicted == y)),
    )
    return result


def metric_value(y: np.ndarray, scores: np.ndarray, task: str, metric: str,
                 threshold: float = OPERATING_THRESHOLD) -> float:
    """One metric of `compute_metrics`, the same value, without computing the others."""
    from sklearn import metrics

    if task == "binary" and metric in ("roc_auc", "pr_auc") and len(y):
        if len(np.unique(y)) != 2:
            return math.nan
        score = metrics.roc_auc_score if metric == "roc_auc" else metrics.average_precision_score
        return float(score(y, scores))
    return compute_metrics(y, scores, task, threshold)[metric]


def best_f1_threshold(y: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold that maximises F1 (binary); 0.5 when there is no positive."""
    from sklearn.metrics import precision_recall_curve

    if len(np.unique(y)) < 2:
        return OPERATING_THRESHOLD
    precision, recall, thresholds = precision_recall_curve(y, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def slice_metrics(y: np.ndarray, scores: np.ndarray, segments: np.ndarray, task: str,
                  threshold: float = OPERATING_THRESHOLD) -> list[dict[str, Any]]:
    """Metrics per segment value, with row counts."""
    rows = []
    labels = segments.astype(str)
    for value in np.unique(labels):
        mask = labels == value
        rows.append({"segment": str(value), "rows": int(mask.sum()),
                     **compute_metrics(y[mask], scores[mask], task, threshold)})
    return rows


def calibration_table(y: np.ndarray, scores: np.ndarray, bins: int = 10) -> pl.DataFrame:
    """Mean predicted vs observed positive rate per score decile (binary only)."""
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(scores, edges[1:-1], right=True), 0, bins - 1)
    labels = [f"{a:.1f}-{b:.1f}" for a, b in itertools.pairwise(edges)]
    frame = pl.DataFrame({"bin": [labels[i] for i in index], "score": scores,
                          "label": y.astype(float)})
    return (frame.group_by("bin")
            .agg(pl.len().alias("rows"), pl.col("score").mean().alias("mean_score"),
                 pl.col("label").mean().alias("observed_rate"))
            .sort("bin"))


def bootstrap_interval(y: np.ndarray, scores: np.ndarray, task: str, metric: str, *,
                       resamples: int = 200, seed: int = 0, level: float = 0.95
                       ) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of one metric.

    ROC AUC and PR AUC (the usual gate metrics) are computed from each resample's row counts on
    the scores sorted once (`_ranked_auc`), the same values as scikit-learn's on the resampled
    rows at a fraction of the cost; other metrics are computed on the resampled rows.
    """
    rng = np.random.default_rng(seed)
    ranked = _RankedScores(y, scores) if task == "binary" and metric in _RANKED else None
    values = []
    for _ in range(resamples):
        index = rng.integers(0, len(y), len(y))
        if ranked is not None:
            value = ranked.metric(np.bincount(index, minlength=len(y)), metric)
        else:
            value = metric_value(y[index], scores[index], task, metric)
        if math.isfinite(value):
            values.append(value)
    if not values:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


_RANKED = ("roc_auc", "pr_auc")


class _RankedScores:
    """Binary scores grouped by distinct value once, for AUCs of reweighted rows.

    ROC AUC and average precision of any reweighting of the rows (a bootstrap resample's
    counts) cost two `bincount`s. With rows repeated `weights` times, both equal
    scikit-learn's `roc_auc_score` (ties count one half) and `average_precision_score` (one
    step per distinct score) on the repeated rows.
    """

    def __init__(self, y: np.ndarray, scores: np.ndarray):
        self.unique, self.group = np.unique(np.asarray(scores, dtype=float), return_inverse=True)
        self.positive = np.asarray(y) == 1

    def metric(self, weights: np.ndarray, metric: str) -> float:
        groups = len(self.unique)
        pos = np.bincount(self.group, weights=weights * self.positive, minlength=groups)
        neg = np.bincount(self.group, weights=weights * ~self.positive, minlength=groups)
        total_pos, total_neg = pos.sum(), neg.sum()
        if total_pos == 0 or total_neg == 0:
            return math.nan
        if metric == "roc_auc":  # ascending scores: negatives below each positive, ties half
            below = np.cumsum(neg) - neg
            return float(np.sum(pos * (below + 0.5 * neg)) / (total_pos * total_neg))
        # average precision: thresholds from the highest score down
        tp, fp = np.cumsum(pos[::-1]), np.cumsum(neg[::-1])
        present = (pos[::-1] + neg[::-1]) > 0
        tp, fp = tp[present], fp[present]
        precision = tp / (tp + fp)
        recall_steps = np.diff(np.concatenate(([0.0], tp / total_pos)))
        return float(np.sum(recall_steps * precision))


@dataclass
class GateDecision:
    """Whether the candidate may replace the champion, and every reason it may not."""

    approved: bool
    metric: str
    candidate_value: float
    champion_value: float | None
    min_value: float | None
    max_regression: float
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: approved, or why not."""
        if self.approved:
            known = self.champion_value is not None and math.isfinite(self.champion_value)
            versus = f"champion {self.champion_value:.4f}" if known else "first model"
            notes = "".join(f"; {note}" for note in self.notes)
            return f"approved: {self.metric} {self.candidate_value:.4f} ({versus}){notes}"
        return "rejected: " + "; ".join(self.reasons)


def decide_gate(*, task: str, metric: str, candidate: float, champion: float | None,
                min_value: float | None, max_regression: float,
                problems: list[str] | None = None, after_change: bool = False
                ) -> GateDecision:
    """Apply the gate to a candidate's metric on the shared holdout.

    Passes when the metric is finite, not on the bad side of `min_value` (below it when higher
    is better, above it for rmse, log_loss …; None: no bound), and not worse than the
    champion's by more than `max_regression` (no champion: the first model needs only
    `min_value`). For a retrain that answers a detected change (`after_change`), when the
    champion is on the bad side of `min_value` too, on the same holdout, `min_value` does not
    refuse the candidate (it is noted): the world changed under both, and the candidate
    replaces a model that is no better.
    `problems` are other failures (schema mismatch, artifact not reproducible) that reject on
    their own.
    """
    if metric not in METRICS[task]:
        raise ValueError(f"gate.metric: {metric!r} is not a {task} metric; "
                         f"expected one of {', '.join(METRICS[task])}")
    higher = METRICS[task][metric]
    reasons = list(problems or [])
    notes: list[str] = []

    def bad(value: float) -> bool:
        return min_value is not None and ((value < min_value) if higher else (value > min_value))

    if not math.isfinite(candidate):
        reasons.append(f"{metric} of the candidate is not finite ({candidate})")
    else:
        side = "below" if higher else "above"
        if bad(candidate):
            if after_change and champion is not None and math.isfinite(champion) \
                    and bad(champion):
                # The world changed under both (e.g. a concept drift): refusing would keep a
                # champion that is no better; the regression rule below still applies.
                notes.append(f"{metric} {candidate:.4f} is {side} gate.min_value {min_value}, "
                             f"as is the champion's {champion:.4f} on the same holdout")
            else:
                reasons.append(f"{metric} {candidate:.4f} is {side} gate.min_value "
                               f"{min_value}")
        if champion is not None and math.isfinite(champion):
            worse_by = (champion - candidate) if higher else (candidate - champion)
            if worse_by > max_regression + 1e-12:
                reasons.append(f"{metric} {candidate:.4f} is worse than the champion's "
                               f"{champion:.4f} by {worse_by:.4f} > gate.max_regression "
                               f"{max_regression}")
    return GateDecision(not reasons, metric, candidate, champion, min_value, max_regression,
                        reasons, notes)
