import math

import numpy as np
import pytest
from sklearn import metrics

from ct_assets.lib.evaluation import (
    METRICS,
    bootstrap_interval,
    calibration_table,
    compute_metrics,
    decide_gate,
    slice_metrics,
)


def binary_data(rows=2_000, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(rows) < 0.2).astype(int)
    scores = np.clip(0.25 * y + rng.beta(2, 5, rows), 1e-6, 1 - 1e-6)
    return y, scores


def multiclass_data(rows=1_500, classes=4, seed=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, rows)
    logits = rng.normal(0, 1, (rows, classes))
    logits[np.arange(rows), y] += 1.5
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probabilities


# --- compute_metrics against scikit-learn --------------------------------------------------


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_binary_metrics_match_sklearn(threshold):
    y, scores = binary_data()
    result = compute_metrics(y, scores, "binary", threshold)
    predicted = (scores >= threshold).astype(int)
    assert set(result) == set(METRICS["binary"])
    assert result["roc_auc"] == pytest.approx(metrics.roc_auc_score(y, scores))
    assert result["pr_auc"] == pytest.approx(metrics.average_precision_score(y, scores))
    assert result["log_loss"] == pytest.approx(metrics.log_loss(y, scores))
    assert result["brier"] == pytest.approx(metrics.brier_score_loss(y, scores))
    assert result["precision"] == pytest.approx(metrics.precision_score(y, predicted))
    assert result["recall"] == pytest.approx(metrics.recall_score(y, predicted))
    assert result["f1"] == pytest.approx(metrics.f1_score(y, predicted))
    assert 0.5 < result["roc_auc"] < 1


def test_threshold_changes_only_thresholded_metrics():
    y, scores = binary_data()
    low, high = (compute_metrics(y, scores, "binary", t) for t in (0.2, 0.6))
    for name in ("roc_auc", "pr_auc", "log_loss", "brier"):
        assert low[name] == high[name]
    assert low["recall"] > high["recall"]


def test_multiclass_metrics_match_sklearn():
    y, probabilities = multiclass_data()
    result = compute_metrics(y, probabilities, "multiclass")
    predicted = probabilities.argmax(axis=1)
    assert set(result) == set(METRICS["multiclass"])
    assert result["accuracy"] == pytest.approx(metrics.accuracy_score(y, predicted))
    assert result["macro_f1"] == pytest.approx(metrics.f1_score(y, predicted, average="macro"))
    assert result["log_loss"] == pytest.approx(metrics.log_loss(y, probabilities))


def test_multiclass_with_a_class_absent_from_the_labels():
    y, probabilities = multiclass_data()
    keep = y != 3
    y, probabilities = y[keep], probabilities[keep]
    result = compute_metrics(y, probabilities, "multiclass")
    predicted = probabilities.argmax(axis=1)
    assert result["macro_f1"] == pytest.approx(metrics.f1_score(
        y, predicted, average="macro", labels=[0, 1, 2, 3], zero_division=0))
    assert result["log_loss"] == pytest.approx(
        metrics.log_loss(y, probabilities, labels=[0, 1, 2, 3]))


def test_regression_metrics_match_sklearn():
    rng = np.random.default_rng(2)
    y = rng.normal(10, 3, 500)
    predicted = y + rng.normal(0, 1, 500)
    result = compute_metrics(y, predicted, "regression")
    assert set(result) == set(METRICS["regression"])
    assert result["rmse"] == pytest.approx(math.sqrt(metrics.mean_squared_error(y, predicted)))
    assert result["mae"] == pytest.approx(metrics.mean_absolute_error(y, predicted))
    assert result["r2"] == pytest.approx(metrics.r2_score(y, predicted))


@pytest.mark.parametrize("label", [0, 1])
def test_auc_is_nan_with_a_single_class(label):
    y = np.full(50, label)
    scores = np.linspace(0.01, 0.99, 50)
    result = compute_metrics(y, scores, "binary")
    assert math.isnan(result["roc_auc"]) and math.isnan(result["pr_auc"])
    assert math.isfinite(result["log_loss"]) and math.isfinite(result["brier"])
    assert result["log_loss"] == pytest.approx(metrics.log_loss(y, scores, labels=[0, 1]))


@pytest.mark.parametrize(("task", "scores"), [
    ("binary", np.array([])),
    ("multiclass", np.zeros((0, 3))),
    ("regression", np.array([])),
])
def test_empty_input_gives_nan_for_every_metric(task, scores):
    result = compute_metrics(np.array([], dtype=int), scores, task)
    assert set(result) == set(METRICS[task])
    assert all(math.isnan(value) for value in result.values())


# --- the gate ------------------------------------------------------------------------------


def gate(candidate, champion, *, metric="roc_auc", task="binary", min_value=0.6,
         max_regression=0.01, problems=None, after_change=False):
    return decide_gate(task=task, metric=metric, candidate=candidate, champion=champion,
                       min_value=min_value, max_regression=max_regression, problems=problems,
                       after_change=after_change)


def test_gate_better_candidate_is_approved():
    decision = gate(0.85, 0.80)
    assert decision.approved and decision.reasons == []
    assert decision.summary() == "approved: roc_auc 0.8500 (champion 0.8000)"


def test_gate_equal_candidate_is_approved_since_not_worse():
    assert gate(0.80, 0.80).approved
    assert gate(0.80, 0.80, max_regression=0.0).approved


def test_gate_worse_beyond_max_regression_is_rejected_naming_metric_and_values():
    decision = gate(0.75, 0.80)
    assert not decision.approved
    assert len(decision.reasons) == 1
    reason = decision.reasons[0]
    assert "roc_auc" in reason and "0.7500" in reason and "0.8000" in reason
    assert "max_regression" in reason
    assert decision.summary().startswith("rejected: roc_auc 0.7500")


@pytest.mark.parametrize(("candidate", "champion"), [(0.795, 0.80), (0.79, 0.80),
                                                     (0.7, 0.71), (0.61, 0.62)])
def test_gate_worse_within_max_regression_is_approved(candidate, champion):
    # Includes the boundary: worse by exactly max_regression (up to float rounding).
    assert gate(candidate, champion).approved


def test_gate_worse_just_beyond_max_regression_is_rejected():
    assert not gate(0.7899, 0.80).approved
    assert not gate(0.80 - 1e-9, 0.80, max_regression=0.0).approved


@pytest.mark.parametrize("candidate", [math.nan, math.inf, -math.inf])
def test_gate_non_finite_candidate_is_rejected(candidate):
    decision = gate(candidate, 0.80)
    assert not decision.approved
    assert any("not finite" in reason for reason in decision.reasons)
    assert not gate(candidate, None).approved


def test_gate_first_model_needs_only_min_value():
    decision = gate(0.61, None)
    assert decision.approved
    assert decision.champion_value is None
    assert "first model" in decision.summary()


def test_gate_below_min_value_is_rejected_when_the_champion_is_above_it():
    first = gate(0.55, None)
    assert not first.approved
    assert "below gate.min_value 0.6" in first.reasons[0]
    close = gate(0.595, 0.60)
    assert not close.approved
    assert len(close.reasons) == 1 and "min_value" in close.reasons[0]


def test_gate_below_min_value_replaces_a_champion_below_it_too_after_a_change():
    # A concept change sank both: keeping the champion would keep a model no better.
    assert not gate(0.58, 0.50).approved  # a scheduled or manual retrain: the floor holds
    better = gate(0.58, 0.50, after_change=True)
    assert better.approved and better.reasons == []
    assert better.notes == ["roc_auc 0.5800 is below gate.min_value 0.6, as is the champion's "
                            "0.5000 on the same holdout"]
    assert "as is the champion's" in better.summary()
    worse = gate(0.40, 0.50, after_change=True)  # the regression rule still holds
    assert not worse.approved and "max_regression" in worse.reasons[0]


def test_gate_knows_lower_is_better_metrics():
    assert gate(0.30, 0.32, metric="rmse", task="regression", min_value=None).approved
    worse = gate(0.35, 0.32, metric="rmse", task="regression", min_value=None)
    assert not worse.approved and "worse than the champion's 0.3200" in worse.reasons[0]
    ceiling = gate(0.9, None, metric="log_loss", min_value=0.5)
    assert not ceiling.approved and "above gate.min_value 0.5" in ceiling.reasons[0]


def test_gate_nan_champion_is_treated_like_no_champion():
    assert gate(0.61, math.nan).approved
    decision = gate(0.55, math.nan)
    assert not decision.approved
    assert len(decision.reasons) == 1 and "min_value" in decision.reasons[0]


def test_gate_problems_reject_on_their_own_and_are_listed_first():
    problem = "feature types differ: amount (category vs float)"
    decision = gate(0.95, 0.80, problems=[problem])
    assert not decision.approved
    assert decision.reasons == [problem]
    both = gate(0.70, 0.80, problems=[problem])
    assert both.reasons[0] == problem and len(both.reasons) == 2


def test_gate_problems_list_is_not_modified():
    problems = ["schema mismatch"]
    gate(0.5, 0.8, problems=problems)
    assert problems == ["schema mismatch"]


@pytest.mark.parametrize(("task", "metric"), [("binary", "log_loss"), ("binary", "brier"),
                                              ("multiclass", "log_loss"),
                                              ("regression", "rmse"), ("regression", "mae")])
def test_gate_lower_is_better_metrics(task, metric):
    kwargs = {"task": task, "metric": metric, "min_value": 10.0, "max_regression": 0.01}
    assert gate(0.20, 0.25, **kwargs).approved  # lower: better
    assert gate(0.255, 0.25, **kwargs).approved  # worse within max_regression
    worse = gate(0.30, 0.25, **kwargs)
    assert not worse.approved
    assert metric in worse.reasons[0] and "0.3000" in worse.reasons[0]
    assert "0.2500" in worse.reasons[0]
    # For these metrics min_value is a ceiling.
    too_high = gate(12.0, None, **kwargs)
    assert not too_high.approved
    assert "above gate.min_value 10.0" in too_high.reasons[0]
    assert gate(9.0, None, **kwargs).approved


def test_gate_r2_is_higher_is_better():
    kwargs = {"task": "regression", "metric": "r2", "min_value": 0.0}
    assert gate(0.6, 0.5, **kwargs).approved
    assert not gate(0.4, 0.5, **kwargs).approved


@pytest.mark.parametrize(("task", "metric"), [("regression", "roc_auc"), ("binary", "rmse"),
                                              ("multiclass", "roc_auc"),
                                              ("binary", "macro_f1"), ("binary", "auc")])
def test_gate_unknown_metric_for_the_task_is_an_error(task, metric):
    with pytest.raises(ValueError, match=rf"'{metric}' is not a {task} metric"):
        gate(0.8, 0.8, task=task, metric=metric)


# --- bootstrap, slices, calibration --------------------------------------------------------


@pytest.mark.parametrize("metric", ["roc_auc", "log_loss", "f1"])
def test_bootstrap_interval_brackets_the_point_estimate(metric):
    y, scores = binary_data(rows=1_000)
    point = compute_metrics(y, scores, "binary")[metric]
    low, high = bootstrap_interval(y, scores, "binary", metric, resamples=100, seed=0)
    assert low < point < high
    assert high - low < 0.25


def test_bootstrap_interval_is_deterministic_for_a_seed_and_narrows_with_level():
    y, scores = binary_data(rows=500)
    first = bootstrap_interval(y, scores, "binary", "roc_auc", resamples=40, seed=1)
    assert bootstrap_interval(y, scores, "binary", "roc_auc", resamples=40, seed=1) == first
    wide = bootstrap_interval(y, scores, "binary", "roc_auc", resamples=40, seed=1, level=0.99)
    narrow = bootstrap_interval(y, scores, "binary", "roc_auc", resamples=40, seed=1,
                                level=0.5)
    assert wide[0] <= first[0] <= narrow[0] < narrow[1] <= first[1] <= wide[1]


@pytest.mark.parametrize("metric", ["roc_auc", "pr_auc"])
def test_bootstrap_resamples_score_as_scikit_learn_does_on_the_resampled_rows(metric):
    """The counts-based AUC of each resample is scikit-learn's on the rows it draws, ties and
    all, so the interval is the one resampling the rows would give."""
    rng = np.random.default_rng(7)
    for _ in range(60):
        rows = int(rng.integers(2, 300))
        y = (rng.random(rows) < rng.uniform(0.02, 0.5)).astype(int)
        scores = np.round(rng.random(rows), int(rng.integers(1, 4)))  # many tied scores
        seed = int(rng.integers(0, 1000))
        draws = np.random.default_rng(seed)
        expected = []
        for _ in range(30):
            index = draws.integers(0, rows, rows)
            if len(np.unique(y[index])) == 2:
                score = (metrics.roc_auc_score if metric == "roc_auc"
                         else metrics.average_precision_score)
                expected.append(score(y[index], scores[index]))
        got = bootstrap_interval(y, scores, "binary", metric, resamples=30, seed=seed)
        if not expected:
            assert all(math.isnan(value) for value in got)
            continue
        assert got == pytest.approx((np.percentile(expected, 2.5), np.percentile(expected, 97.5)),
                                    abs=1e-12)


def test_bootstrap_interval_regression():
    rng = np.random.default_rng(3)
    truth = rng.normal(0, 1, 300)
    predicted = truth + rng.normal(0, 0.5, 300)
    point = compute_metrics(truth, predicted, "regression")["rmse"]
    low, high = bootstrap_interval(truth, predicted, "regression", "rmse", resamples=100)
    assert low < point < high


def test_bootstrap_interval_is_nan_when_metric_never_defined():
    low, high = bootstrap_interval(np.zeros(40, dtype=int), np.linspace(0, 1, 40), "binary",
                                   "roc_auc", resamples=20)
    assert math.isnan(low) and math.isnan(high)


def test_slice_metrics_row_counts_and_values():
    y, scores = binary_data(rows=1_000)
    segments = np.array(["north", "south", "east"])[np.arange(1_000) % 3]
    rows = slice_metrics(y, scores, segments, "binary")
    assert [row["segment"] for row in rows] == ["east", "north", "south"]
    counts = {row["segment"]: row["rows"] for row in rows}
    assert counts == {"north": 334, "south": 333, "east": 333}
    assert sum(counts.values()) == len(y)
    north = segments == "north"
    assert rows[1]["roc_auc"] == pytest.approx(metrics.roc_auc_score(y[north], scores[north]))


def test_slice_metrics_single_class_segment_has_nan_auc():
    y = np.array([0, 1, 0, 1, 0, 0, 0])
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.4, 0.6])
    segments = np.array([1, 1, 1, 1, 2, 2, 2])  # not strings: labelled by their text
    rows = slice_metrics(y, scores, segments, "binary")
    assert [(row["segment"], row["rows"]) for row in rows] == [("1", 4), ("2", 3)]
    assert rows[0]["roc_auc"] == 1.0
    assert math.isnan(rows[1]["roc_auc"])


def test_calibration_table_row_sums():
    y, scores = binary_data(rows=3_000)
    table = calibration_table(y, scores)
    assert table["rows"].sum() == len(y)
    assert table.height <= 10
    for row in table.iter_rows(named=True):
        low, high = (float(edge) for edge in row["bin"].split("-"))
        assert low - 1e-12 <= row["mean_score"] <= high + 1e-12
        assert 0 <= row["observed_rate"] <= 1
    weighted = (table["observed_rate"] * table["rows"]).sum()
    assert weighted == pytest.approx(y.sum())


def test_calibration_table_edges_and_perfect_calibration():
    scores = np.array([0.0, 0.05, 0.1, 0.1000001, 0.95, 1.0])
    y = np.array([0, 0, 0, 1, 1, 1])
    table = calibration_table(y, scores)
    counts = dict(zip(table["bin"].cast(str), table["rows"], strict=True))
    assert counts == {"0.0-0.1": 3, "0.1-0.2": 1, "0.9-1.0": 2}
