"""Online learning: update a trained model with new labelled rows instead of retraining it.

Two model kinds can learn without starting over:

- `lightgbm`: continued boosting. `rounds` new trees are fitted to the new rows' gradients on
  top of the existing ones (`lightgbm.train(..., init_model=booster)`), with the parameters and
  objective training used; the old trees are kept as they are.
- `sklearn_sgd`: one `partial_fit` pass of the SGD estimator over the new rows, in time order,
  through the preprocessing fitted at training (imputation medians, scales and one-hot
  categories stay those of the first fit).

Either way the encoding stays the input model's: categories it never saw encode as NaN (missing),
and a class it does not know (multiclass) cannot be learned, so its rows are left out and
counted. The input model is never modified; the update returns a new model.

Judge an update test-then-train (prequential): score the new rows with the model as it was
(`prequential_metrics`), then let it learn them (`continue_model`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import polars as pl

from ct_assets.lib.evaluation import OPERATING_THRESHOLD, compute_metrics
from ct_assets.lib.training import (
    LIGHTGBM_DEFAULTS,
    SKOPS_EXTRA_TRUSTED,
    TrainedModel,
    _default_threads,
    encode,
    encode_labels,
)

ONLINE_KINDS = ("lightgbm", "sklearn_sgd")
LIGHTGBM_OBJECTIVES = {"binary": "binary", "multiclass": "multiclass", "regression": "regression"}


def can_learn_online(kind: str) -> bool:
    """Whether models of `kind` can learn new rows without being retrained from scratch."""
    return kind in ONLINE_KINDS


def _known_classes(model: TrainedModel) -> np.ndarray | None:
    """Label codes the model can score and learn (None for regression)."""
    if model.task == "regression":
        return None
    if model.kind == "lightgbm":  # the booster has a score per class of `model.classes`
        return np.arange(len(model.classes or [0, 1]))
    # scikit-learn estimators know the classes their first fit saw (possibly fewer).
    return np.asarray(model.estimator.classes_)


def _learnable_rows(model: TrainedModel, frame: pl.DataFrame, target: str, weights: Any
                    ) -> tuple[pl.DataFrame, np.ndarray, np.ndarray | None, dict[str, int]]:
    """The rows of `frame` the model can score and learn, their labels and weights.

    Rows without a label, and (classification) rows whose class the model does not know, are
    left out and counted.
    """
    if target not in frame.columns:
        raise KeyError(f"label column {target!r} missing from the input")
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if len(weights) != frame.height:
            raise ValueError(f"{len(weights)} sample weights for {frame.height} rows")
    labelled = frame[target].is_not_null().to_numpy()
    rows = frame.filter(pl.Series(labelled))
    y, _ = encode_labels(rows[target], model.task, model.classes)
    known = _known_classes(model)
    keep = np.ones(rows.height, dtype=bool) if known is None else np.isin(y, known)
    counts = {"unlabelled_rows": int((~labelled).sum()), "unseen_class_rows": int((~keep).sum())}
    if weights is not None:
        weights = weights[labelled][keep]
    return rows.filter(pl.Series(keep)), y[keep], weights, counts


def _check(model: TrainedModel, task: str) -> None:
    if task != model.task:
        raise ValueError(f"the model was trained for a {model.task} task, not {task}")


def prequential_metrics(model: TrainedModel, frame: pl.DataFrame, *, target: str, task: str,
                        threshold: float | None = None) -> dict[str, float]:
    """The metrics of `model` on rows it has not learned yet (test-then-train).

    Call it before `continue_model` on the same rows: an update is then judged only on rows
    the model had not seen when it scored them. Rows `continue_model` would leave out (no
    label, a class the model does not know) are left out here too.

    Args:
        model: the model as it is before the update.
        frame: new labelled rows with the model's features and `target`.
        target: the label column.
        task: `binary`, `multiclass` or `regression`; must be the model's.
        threshold: the operating threshold for binary decisions (None: 0.5).

    Returns:
        `compute_metrics` of the model's scores on those rows (NaN where undefined).

    Raises:
        ValueError: `task` is not the model's task.
    """
    _check(model, task)
    rows, y, _, _ = _learnable_rows(model, frame, target, None)
    if rows.height == 0:
        return compute_metrics(y, np.empty((0,)), task)
    scores = model.predict(rows)
    if task == "multiclass":  # score columns follow the estimator's classes
        y = np.searchsorted(_known_classes(model), y)
    return compute_metrics(y, scores, task,
                           OPERATING_THRESHOLD if threshold is None else threshold)


def _lightgbm_settings(task: str, classes: list[Any] | None, params: dict[str, Any],
                       seed: int, rows: int) -> dict[str, Any]:
    """The LightGBM parameters `training.train_model` uses, without the round counts."""
    settings = {**LIGHTGBM_DEFAULTS, **params}
    settings.pop("num_boost_round")
    settings.pop("early_stopping_rounds")
    settings.update(objective=LIGHTGBM_OBJECTIVES[task], seed=seed, deterministic=True,
                    force_row_wise=True, verbose=-1,
                    num_threads=settings.get("num_threads", _default_threads(rows)))
    if task == "multiclass":
        settings["num_class"] = len(classes or [])
    return settings


def _continue_lightgbm(model: TrainedModel, x: np.ndarray, y: np.ndarray,
                       weights: np.ndarray | None, rounds: int, params: dict[str, Any],
                       seed: int) -> tuple[Any, dict[str, Any]]:
    import lightgbm

    # Continue from a copy, so nothing of the input model's booster is shared or touched.
    start = lightgbm.Booster(model_str=model.estimator.model_to_string(num_iteration=-1))
    before = start.current_iteration()
    if len(y) == 0:
        return start, {"rounds_added": 0, "iterations": before, "trees": start.num_trees()}
    categorical = [i for i, spec in enumerate(model.specs) if spec.type == "category"]
    settings = _lightgbm_settings(model.task, model.classes, params, seed, len(y))
    dataset = lightgbm.Dataset(x, y, weight=weights, categorical_feature=categorical)
    trained = lightgbm.train(settings, dataset, init_model=start, num_boost_round=rounds,
                             keep_training_booster=True)
    # Frozen as training freezes its models: saved and in-memory predictions agree.
    booster = lightgbm.Booster(model_str=trained.model_to_string(num_iteration=-1))
    return booster, {"rounds_added": booster.current_iteration() - before,
                     "iterations": booster.current_iteration(), "trees": booster.num_trees()}


def _copy_sklearn(estimator: Any) -> Any:
    """An independent copy through skops (no pickle), trusting what `load_model` trusts."""
    import skops.io

    data = skops.io.dumps(estimator)
    untrusted = skops.io.get_untrusted_types(data=data)
    unexpected = [t for t in untrusted
                  if not t.startswith(("sklearn.", "numpy.")) and t not in SKOPS_EXTRA_TRUSTED]
    if unexpected:
        raise ValueError(f"refusing to copy a model holding types {', '.join(unexpected)}")
    return skops.io.loads(data, trusted=untrusted)


def _continue_sgd(model: TrainedModel, x: np.ndarray, y: np.ndarray,
                  weights: np.ndarray | None) -> tuple[Any, dict[str, Any]]:
    pipeline = _copy_sklearn(model.estimator)
    sgd = pipeline.named_steps["model"]
    if len(y):
        # The preprocessing stays as first fitted; only the linear model learns the rows.
        sgd.partial_fit(pipeline.named_steps["prepare"].transform(x), y, sample_weight=weights)
    return pipeline, {"epochs": 1 if len(y) else 0, "updates": int(sgd.t_) - 1}


def continue_model(model: TrainedModel, frame: pl.DataFrame, *, target: str, task: str,
                   rounds: int = 20, params: dict[str, Any] | None = None, seed: int = 0,
                   weights: Any = None) -> tuple[TrainedModel, dict[str, Any]]:
    """A new model that has learned `frame` on top of what `model` knows.

    `model` is left as it is. LightGBM adds `rounds` boosting rounds fitted to the new rows,
    with `params` and `seed` applied as `training.train_model` applies them (pass the training
    parameters, so the objective and learning rate stay those of the model). `sklearn_sgd`
    makes one `partial_fit` pass over the rows in their order (oldest first); `rounds` and
    `params` do not apply to it (its hyperparameters are the trained estimator's). Both keep
    the model's feature encoding and classes: rows without a label, or of a class the model
    does not know, are left out and counted. Without any row left, the result is an unchanged
    copy. LightGBM stops adding rounds once no tree can split: rows of a single class (binary)
    teach it nothing, and `rounds_added` is then 0.

    Args:
        model: a `lightgbm` or `sklearn_sgd` model.
        frame: new labelled rows, oldest first, with the model's features and `target`.
        target: the label column.
        task: `binary`, `multiclass` or `regression`; must be the model's.
        rounds: LightGBM boosting rounds to add.
        params: LightGBM parameters overriding the defaults, as at training.
        seed: random seed (LightGBM bagging).
        weights: per-row sample weights for `frame` (None: every row weighs 1).

    Returns:
        The new model and an info dict: `kind`, `rows` learned, `unlabelled_rows`,
        `unseen_class_rows`, `seconds`; LightGBM: `rounds_added`, `iterations` (in total),
        `trees` (in total); SGD: `epochs` (passes over the rows) and `updates` (weight
        updates since the first fit, in total).

    Raises:
        ValueError: the kind cannot learn online, `task` is not the model's, or the weights do
            not match the rows.
    """
    if not can_learn_online(model.kind):
        raise ValueError(f"model kind {model.kind!r} cannot learn online; expected one of "
                         f"{', '.join(ONLINE_KINDS)}")
    _check(model, task)
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    began = time.perf_counter()
    rows, y, row_weights, counts = _learnable_rows(model, frame, target, weights)
    x = encode(rows, model.specs)
    if model.kind == "lightgbm":
        estimator, info = _continue_lightgbm(model, x, y, row_weights, rounds, params or {}, seed)
    else:
        estimator, info = _continue_sgd(model, x, y, row_weights)
    updated = TrainedModel(model.kind, model.task, list(model.specs),
                           None if model.classes is None else list(model.classes), estimator)
    return updated, {"kind": model.kind, "rows": rows.height, **counts, **info,
                     "seconds": time.perf_counter() - began}


def judge_update(update: TrainedModel, update_threshold: float | None, champion: TrainedModel,
                 champion_threshold: float | None, rows: pl.DataFrame, config: Any
                 ) -> tuple[Any, dict[str, dict[str, float]]]:
    """The gate on an online update, on labelled rows neither model has learned.

    The update learned the partition before `rows`; the champion did not learn it either. Both
    are scored on `rows` before either learns them (prequential), and the update must pass the
    gate as a candidate would (`decide_gate`, as after a change: it answers new labels).

    Returns:
        The gate decision and each model's metrics on `rows`.
    """
    from ct_assets.lib.evaluation import decide_gate

    task, target = config.dataset.task, str(config.dataset.target)
    metric = str(config.gate.metric)
    metrics = {
        "candidate": prequential_metrics(update, rows, target=target, task=task,
                                         threshold=update_threshold),
        "champion": prequential_metrics(champion, rows, target=target, task=task,
                                        threshold=champion_threshold),
    }
    decision = decide_gate(task=task, metric=metric, candidate=metrics["candidate"][metric],
                           champion=metrics["champion"][metric],
                           min_value=config.gate.min_value,
                           max_regression=config.gate.max_regression, after_change=True)
    return decision, metrics
