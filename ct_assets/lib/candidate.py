"""A candidate model: judged as trained on the train split, deployed as refitted on every row.

The gate compares models that have not seen the holdout, so the candidate is trained on the
train split (its own inner split drives early stopping and the operating threshold). Once
approved, what is deployed must have learned from the newest rows too, those it will be judged
against next: the same procedure refitted on train + holdout, with the iterations the first fit
chose and the same sample weights rule. Both live in one model version; the gate's verdict
covers both, and serving only ever loads the refitted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from ct_assets.lib.config import Config
from ct_assets.lib.evaluation import (
    OPERATING_THRESHOLD,
    GateDecision,
    best_f1_threshold,
    compute_metrics,
    decide_gate,
)
from ct_assets.lib.features import feature_schema
from ct_assets.lib.training import TrainedModel, encode_labels, inner_split_index, train_model
from ct_assets.lib.training_set import IN_REGIME, REGIME_KIND, SPLIT, regime_weights
from ct_assets.lib.validation import PARTITION

INNER_SCORED_ROWS = 20_000
MIN_REGIME_ROWS = 1_000  # fewer rows since a change of concept are too few to learn it alone
EVALUATION_DIR = "evaluation"  # inside a version: the model the gate judged on the holdout


@dataclass
class Candidate:
    """The evaluation model, the refitted model to deploy, and what their training chose."""

    evaluation: TrainedModel
    final: TrainedModel
    threshold: float | None
    inner_metrics: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)


def _weight_note(weights: Any, in_regime: pl.Series) -> dict[str, Any]:
    if weights is None:
        return {"rows": in_regime.len(), "older_row_weight": 1.0}
    return {"rows": in_regime.len(), "regime_rows": int(in_regime.sum()),
            "older_row_weight": round(float(weights.min()), 6)}


def _threshold_and_metrics(model: TrainedModel, rows: pl.DataFrame, config: Config
                           ) -> tuple[float | None, dict[str, float]]:
    """The F1-best threshold (binary) and the metrics of `model` on the inner split of `rows`."""
    task, target = config.dataset.task, str(config.dataset.target)
    inner = rows.tail(min(rows.height - inner_split_index(rows.height), INNER_SCORED_ROWS))
    labels, _ = encode_labels(inner[target], task, model.classes)
    scores = model.predict(inner)
    threshold = best_f1_threshold(labels, scores) if task == "binary" else None
    return threshold, compute_metrics(labels, scores, task, threshold or OPERATING_THRESHOLD)


def fit_candidate(frame: pl.DataFrame, config: Config) -> Candidate:
    """Train the evaluation model on the train split, then refit it on every row.

    After a change of concept (`regime_kind` = `concept`) with at least `MIN_REGIME_ROWS`
    labelled rows of both classes since it, the deployed model learns from those rows only (the
    window is cut at the change point, as ADWIN does): the old relation is wrong now, and even
    down-weighted it drags the model back. Its iterations are then chosen on the regime's own
    newest rows, since the evaluation model's were chosen on the old concept.

    Args:
        frame: the training set, oldest first, with `split` (train / holdout), `in_regime` and
            `regime_kind`.
        config: the project configuration (`training`, `dataset`).

    Returns:
        The candidate; `info` records iterations, timings, top features and the refit.
    """
    dataset, training = config.dataset, config.training
    target = str(dataset.target)
    schema = feature_schema(config)
    train = frame.filter(pl.col(SPLIT) == "train")
    common = {"schema": schema, "target": target, "task": dataset.task, "kind": training.model,
              "params": training.params, "seed": training.seed}
    kind = frame[REGIME_KIND][0] if frame.height and REGIME_KIND in frame.columns else None
    train_weights = regime_weights(train[IN_REGIME], kind)
    evaluation, info = train_model(train, weights=train_weights, **common)
    # The operating threshold is chosen on an inner split (max F1), never on the holdout.
    threshold, inner_metrics = _threshold_and_metrics(evaluation, train, config)
    regime = frame.filter(pl.col(IN_REGIME))
    cut = (kind == "concept" and regime.height < frame.height
           and regime.height >= MIN_REGIME_ROWS and regime[target].n_unique() > 1)
    if cut:
        probe, probe_info = train_model(regime, **common)
        threshold, inner_metrics = _threshold_and_metrics(probe, regime, config)
        rows, weights, rounds = regime, None, int(probe_info["best_iteration"] or 1)
    else:
        rows, weights = frame, regime_weights(frame[IN_REGIME], kind)
        rounds = int(info["best_iteration"] or 1)
    final, final_info = train_model(rows, weights=weights, fixed_rounds=rounds, **common)
    info["refit"] = {
        "on": "the rows since the change of concept" if cut else "train + holdout",
        "iterations": final_info["best_iteration"],
        "partitions": sorted(rows[PARTITION].unique().to_list()),
        "seconds": round(final_info["seconds"], 3),
        "weights": _weight_note(weights, rows[IN_REGIME]),
    }
    info["train_weights"] = _weight_note(train_weights, train[IN_REGIME])
    info["top_features"] = final_info["top_features"] or info["top_features"]
    return Candidate(evaluation, final, threshold, inner_metrics, info)


@dataclass
class Judgement:
    """Candidate and champion on the same holdout, and the gate's decision."""

    decision: GateDecision
    y: np.ndarray
    scores: dict[str, np.ndarray]
    metrics: dict[str, dict[str, float]]
    holdout: pl.DataFrame
    notes: list[str] = field(default_factory=list)


def judge_candidate(holdout: pl.DataFrame, candidate: TrainedModel,
                    candidate_threshold: float | None, champion: TrainedModel | None,
                    champion_threshold: float | None, config: Config,
                    problems: list[str] | None = None, after_change: bool = False
                    ) -> Judgement:
    """Score candidate and champion on the same holdout and apply the gate.

    Both should be models that never saw the holdout (evaluation models). Multiclass holdout
    rows of a class the candidate never saw are left out, and said so in `notes`.
    `after_change`: the retrain answers a detected change (see `decide_gate`).
    """
    dataset, gate = config.dataset, config.gate
    task, metric = dataset.task, str(gate.metric)
    y, _ = encode_labels(holdout[str(dataset.target)], task, candidate.classes)
    notes: list[str] = []
    unseen = y < 0 if task == "multiclass" else np.zeros(len(y), dtype=bool)
    if unseen.any():
        notes.append(f"{int(unseen.sum())} holdout rows have a class the candidate never "
                     "saw in training; they are left out of the metrics")
        holdout, y = holdout.filter(pl.Series(~unseen)), y[~unseen]
    scores = {"candidate": candidate.predict(holdout)}
    thresholds = {"candidate": candidate_threshold or OPERATING_THRESHOLD}
    if champion is not None:
        scores["champion"] = champion.predict(holdout)
        thresholds["champion"] = champion_threshold or OPERATING_THRESHOLD
    metrics = {role: compute_metrics(y, values, task, thresholds[role])
               for role, values in scores.items()}
    decision = decide_gate(
        task=task, metric=metric, candidate=metrics["candidate"][metric],
        champion=metrics.get("champion", {}).get(metric), min_value=gate.min_value,
        max_regression=gate.max_regression, problems=problems, after_change=after_change)
    return Judgement(decision, y, scores, metrics, holdout, notes + decision.notes)
