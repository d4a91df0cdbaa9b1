"""Model training: encode features, fit LightGBM or scikit-learn, save and load without pickle.

Every model sees the same encoding: numeric features as floats, categorical features as the
index of their value in the category list fitted on the training rows (unseen or null → NaN,
which every supported library treats as missing). The list is part of the saved model, so
serving encodes exactly as training did.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

MODEL_KINDS = ("lightgbm", "sklearn_hgb", "sklearn_logreg", "sklearn_sgd")
TASKS = ("binary", "multiclass", "regression")
LIGHTGBM_FILE = "model.txt"
SKOPS_FILE = "model.skops"
SPEC_FILE = "features.json"
# Non-sklearn types that fitted scikit-learn estimators legitimately hold (HGB's loss).
SKOPS_EXTRA_TRUSTED = frozenset({"functools.partial"})
LIGHTGBM_DEFAULTS: dict[str, Any] = {
    "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 20,
    "feature_fraction": 0.9, "bagging_fraction": 0.9, "bagging_freq": 1,
    "num_boost_round": 500, "early_stopping_rounds": 50,
}
INNER_VALIDATION_SHARE = 0.15


@dataclass(frozen=True)
class FeatureSpec:
    """One model input: name, `float` or `category`, and the categories seen in training."""

    name: str
    type: str
    categories: list[str] | None = None


def fit_feature_specs(frame: pl.DataFrame, schema: dict[str, str]) -> list[FeatureSpec]:
    """Feature specs from the training rows; category lists are sorted for determinism."""
    specs = []
    for name, kind in schema.items():
        if kind == "category":
            values = frame[name].drop_nulls().cast(pl.String).unique().sort().to_list()
            specs.append(FeatureSpec(name, "category", values))
        else:
            specs.append(FeatureSpec(name, "float"))
    return specs


def encode(frame: pl.DataFrame, specs: list[FeatureSpec]) -> np.ndarray:
    """The feature matrix (float64, C order) for `frame`.

    Raises:
        KeyError: a feature the model needs is missing from `frame`, naming it.
    """
    missing = [spec.name for spec in specs if spec.name not in frame.columns]
    if missing:
        raise KeyError(f"features missing from the input: {', '.join(missing)}")
    columns = []
    for spec in specs:
        if spec.type == "category":
            lookup = pl.DataFrame({"__value": spec.categories or [],
                                   "__code": np.arange(len(spec.categories or []),
                                                       dtype=np.float64)},
                                  schema={"__value": pl.String, "__code": pl.Float64})
            codes = (frame.select(pl.col(spec.name).cast(pl.String).alias("__value"))
                     .join(lookup, on="__value", how="left", maintain_order="left")["__code"])
            columns.append(codes.fill_null(np.nan).to_numpy())
        else:
            columns.append(frame[spec.name].cast(pl.Float64).fill_null(np.nan).to_numpy())
    return np.ascontiguousarray(np.column_stack(columns), dtype=np.float64)


def encode_labels(labels: pl.Series, task: str, classes: list[Any] | None = None
                  ) -> tuple[np.ndarray, list[Any] | None]:
    """Targets as numbers: 0/1, class indices (with the class list), or floats."""
    if task == "regression":
        return labels.cast(pl.Float64).to_numpy(), None
    if task == "binary":
        return labels.cast(pl.Int64).to_numpy(), [0, 1]
    classes = classes if classes is not None else sorted(labels.unique().to_list())
    index = {value: position for position, value in enumerate(classes)}
    return np.array([index.get(value, -1) for value in labels.to_list()]), classes


@dataclass
class TrainedModel:
    """A fitted model with the encoding it was trained with."""

    kind: str
    task: str
    specs: list[FeatureSpec]
    classes: list[Any] | None
    estimator: Any

    def predict(self, frame: pl.DataFrame) -> np.ndarray:
        """Scores: P(positive) for binary, class probabilities for multiclass, values else."""
        matrix = encode(frame, self.specs)
        if self.kind == "lightgbm":
            scores = self.estimator.predict(matrix)
            return np.asarray(scores, dtype=np.float64)
        if self.task == "regression":
            return np.asarray(self.estimator.predict(matrix), dtype=np.float64)
        probabilities = self.estimator.predict_proba(matrix)
        return probabilities[:, 1] if self.task == "binary" else probabilities

    def save(self, directory: Path) -> dict[str, Path]:
        """Write the model in its library's own format plus the feature specs; no pickle."""
        directory.mkdir(parents=True, exist_ok=True)
        specs = directory / SPEC_FILE
        specs.write_text(json.dumps({"kind": self.kind, "task": self.task,
                                     "classes": self.classes,
                                     "features": [asdict(s) for s in self.specs]}),
                         encoding="utf-8")
        if self.kind == "lightgbm":
            model = directory / LIGHTGBM_FILE
            self.estimator.save_model(str(model))
        else:
            import skops.io

            model = directory / SKOPS_FILE
            skops.io.dump(self.estimator, model)
        return {model.name: model, SPEC_FILE: specs}


def load_model(directory: Path) -> TrainedModel:
    """Load a model saved by `TrainedModel.save`.

    Call only after the model store verified the files' sha256: LightGBM's text parser must
    never see an unverified file. scikit-learn models are loaded with skops, trusting only the
    scikit-learn and numpy types this project produces.

    Raises:
        ValueError: the skops file holds types outside that list.
    """
    info = json.loads((directory / SPEC_FILE).read_text(encoding="utf-8"))
    specs = [FeatureSpec(**spec) for spec in info["features"]]
    if info["kind"] == "lightgbm":
        import lightgbm

        estimator = lightgbm.Booster(model_file=str(directory / LIGHTGBM_FILE))
    else:
        import skops.io

        path = directory / SKOPS_FILE
        untrusted = skops.io.get_untrusted_types(file=path)
        unexpected = [t for t in untrusted
                      if not t.startswith(("sklearn.", "numpy.")) and t not in SKOPS_EXTRA_TRUSTED]
        if unexpected:
            raise ValueError(f"{path}: refusing to load types {', '.join(unexpected)}")
        estimator = skops.io.load(path, trusted=untrusted)
    return TrainedModel(info["kind"], info["task"], specs, info["classes"], estimator)


def inner_split_index(rows: int) -> int:
    """Index where the inner validation rows (the most recent share) start."""
    return max(1, int(rows * (1 - INNER_VALIDATION_SHARE)))


def _default_threads(rows: int) -> int:
    """LightGBM threads: one below 200k rows, else up to four.

    On small data OpenMP's spinning threads cost more than they bring, and on a busy machine
    they slow training many times over.
    """
    return 1 if rows < 200_000 else min(4, os.cpu_count() or 1)


def _fit_lightgbm(x: np.ndarray, y: np.ndarray, specs: list[FeatureSpec], task: str,
                  classes: list[Any] | None, params: dict[str, Any], seed: int,
                  weights: np.ndarray | None, fixed_rounds: int | None
                  ) -> tuple[Any, dict[str, Any]]:
    import lightgbm

    settings = {**LIGHTGBM_DEFAULTS, **params}
    rounds = int(settings.pop("num_boost_round"))
    patience = int(settings.pop("early_stopping_rounds"))
    objective = {"binary": "binary", "multiclass": "multiclass", "regression": "regression"}
    settings.update(objective=objective[task], seed=seed, deterministic=True,
                    force_row_wise=True, verbose=-1,
                    num_threads=settings.get("num_threads", _default_threads(len(y))))
    if task == "multiclass":
        settings["num_class"] = len(classes or [])
    categorical = [i for i, spec in enumerate(specs) if spec.type == "category"]
    if fixed_rounds is not None:  # a refit on every row, with the rounds chosen before
        every = lightgbm.Dataset(x, y, weight=weights, categorical_feature=categorical)
        booster = lightgbm.train(settings, every, num_boost_round=max(1, fixed_rounds))
        best = booster.current_iteration()
        return booster, {"best_iteration": int(best),
                         "importance": booster.feature_importance("gain").tolist()}
    split = inner_split_index(len(y))
    train = lightgbm.Dataset(x[:split], y[:split],
                             weight=None if weights is None else weights[:split],
                             categorical_feature=categorical, free_raw_data=False)
    valid = lightgbm.Dataset(x[split:], y[split:], reference=train)
    booster = lightgbm.train(settings, train, num_boost_round=rounds, valid_sets=[valid],
                             callbacks=[lightgbm.early_stopping(patience, verbose=False)])
    best = booster.best_iteration or booster.current_iteration()
    # Keep only the trees up to the best iteration, so saved and in-memory models agree.
    booster = lightgbm.Booster(model_str=booster.model_to_string(num_iteration=best))
    importance = booster.feature_importance("gain")
    return booster, {"best_iteration": int(best), "importance": importance.tolist()}


def _fit_sklearn(kind: str, x: np.ndarray, y: np.ndarray, specs: list[FeatureSpec], task: str,
                 params: dict[str, Any], seed: int, weights: np.ndarray | None,
                 fixed_rounds: int | None) -> tuple[Any, dict[str, Any]]:
    categorical = [spec.type == "category" and len(spec.categories or []) < 255
                   for spec in specs]
    # As for LightGBM, the newest rows (the inner split) are held out: early stopping and the
    # operating threshold are chosen on rows the model never fitted. A refit (`fixed_rounds`)
    # fits every row instead, with the iterations chosen before.
    split = len(y) if fixed_rounds is not None else inner_split_index(len(y))
    fit_weights = None if weights is None else weights[:split]
    if kind == "sklearn_hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        estimator_class = (HistGradientBoostingRegressor if task == "regression"
                           else HistGradientBoostingClassifier)
        settings = {"max_iter": 300, "learning_rate": 0.05, "early_stopping": True,
                    "n_iter_no_change": 30, **params, "random_state": seed,
                    "categorical_features": categorical or None}
        if fixed_rounds is not None:
            settings.update(max_iter=max(1, fixed_rounds), early_stopping=False)
            estimator = estimator_class(**settings).fit(x, y, sample_weight=fit_weights)
        else:
            estimator = estimator_class(**settings).fit(
                x[:split], y[:split], sample_weight=fit_weights, X_val=x[split:],
                y_val=y[split:])
        return estimator, {"best_iteration": int(estimator.n_iter_), "importance": None}
    if kind == "sklearn_logreg" and task == "regression":
        raise ValueError("training.model: sklearn_logreg is a classifier; use lightgbm or "
                         "sklearn_hgb for a regression task")
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [i for i, is_cat in enumerate(categorical) if not is_cat]
    nominal = [i for i, is_cat in enumerate(categorical) if is_cat]
    prepare = ColumnTransformer([
        ("numeric", Pipeline([("impute", SimpleImputer(strategy="median")),
                              ("scale", StandardScaler())]), numeric),
        ("nominal", Pipeline([("impute", SimpleImputer(strategy="constant", fill_value=-1)),
                              ("onehot", OneHotEncoder(handle_unknown="ignore"))]), nominal),
    ])
    if kind == "sklearn_sgd":
        return _fit_sgd(prepare, x[:split], y[:split], task, params, seed, fit_weights,
                        fixed_rounds)
    settings = {"max_iter": 1000, "C": 1.0, **params, "random_state": seed}
    estimator = Pipeline([("prepare", prepare),
                          ("model", LogisticRegression(**settings))]).fit(
        x[:split], y[:split], model__sample_weight=fit_weights)
    return estimator, {"best_iteration": None, "importance": None}


def _fit_sgd(prepare: Any, x: np.ndarray, y: np.ndarray, task: str, params: dict[str, Any],
             seed: int, weights: np.ndarray | None, fixed_rounds: int | None
             ) -> tuple[Any, dict[str, Any]]:
    """A linear model learned by SGD, behind the same preprocessing as logistic regression.

    The Pipeline's preprocessing (impute, scale, one-hot) is fitted here, once; later updates
    (`ct_assets.lib.online.continue_model`) only transform through it and `partial_fit` the
    final `SGDClassifier` (log loss, so it gives probabilities) or `SGDRegressor`. Iterations
    are epochs: the first fit stops when the training loss stops improving (scikit-learn's
    `tol`) and reports the epochs run as `best_iteration`; a refit (`fixed_rounds`) runs exactly
    that many epochs over every row.
    """
    from sklearn.linear_model import SGDClassifier, SGDRegressor
    from sklearn.pipeline import Pipeline

    if task == "regression":
        model = SGDRegressor(**{"alpha": 1e-4, "max_iter": 1000, **params, "random_state": seed})
    else:
        model = SGDClassifier(**{"alpha": 1e-4, "max_iter": 1000, **params,
                                 "loss": "log_loss", "random_state": seed})
    if fixed_rounds is not None:
        model.set_params(max_iter=max(1, fixed_rounds), tol=None)
    estimator = Pipeline([("prepare", prepare), ("model", model)]).fit(
        x, y, model__sample_weight=weights)
    return estimator, {"best_iteration": int(model.n_iter_), "importance": None}


def train_model(train: pl.DataFrame, *, schema: dict[str, str], target: str, task: str,
                kind: str = "lightgbm", params: dict[str, Any] | None = None, seed: int = 0,
                weights: np.ndarray | None = None, fixed_rounds: int | None = None
                ) -> tuple[TrainedModel, dict[str, Any]]:
    """Fit a model on time-ordered training rows.

    Every model kind holds out the most recent `INNER_VALIDATION_SHARE` of these rows (the
    inner split: early stopping, the operating threshold, inner metrics); the caller's holdout
    is never seen. With `fixed_rounds` (a refit), every row is fitted instead, for that many
    boosting iterations (LightGBM, HGB; logistic regression ignores it; SGD runs that many
    epochs), without early stopping.

    Args:
        train: training rows, oldest first, with the features of `schema` and `target`.
        schema: feature name → `float` or `category`.
        target: the label column.
        task: `binary`, `multiclass` or `regression`.
        kind: one of `MODEL_KINDS`.
        params: library parameters overriding the defaults.
        seed: random seed.
        weights: per-row sample weights (None: every row weighs 1).
        fixed_rounds: refit on every row with this many iterations.

    Returns:
        The model and training info: `seconds`, `best_iteration`, `top_features`.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"training.model: unknown model {kind!r}; "
                         f"expected one of {', '.join(MODEL_KINDS)}")
    if train.height < 10:
        raise ValueError(f"training set has {train.height} labelled rows; need at least 10")
    began = time.perf_counter()
    specs = fit_feature_specs(train, schema)
    x = encode(train, specs)
    y, classes = encode_labels(train[target], task)
    if task != "regression" and len(np.unique(y)) < 2:
        raise ValueError(f"training set has a single class in {target!r}; cannot train")
    if weights is not None and len(weights) != train.height:
        raise ValueError(f"{len(weights)} sample weights for {train.height} rows")
    if kind == "lightgbm":
        estimator, info = _fit_lightgbm(x, y, specs, task, classes, params or {}, seed,
                                        weights, fixed_rounds)
    else:
        estimator, info = _fit_sklearn(kind, x, y, specs, task, params or {}, seed, weights,
                                       fixed_rounds)
    importance = info.pop("importance")
    top = []
    if importance is not None:
        order = np.argsort(importance)[::-1][:10]
        top = [(specs[i].name, round(float(importance[i]), 3)) for i in order]
    model = TrainedModel(kind, task, specs, classes, estimator)
    return model, {**info, "seconds": time.perf_counter() - began, "top_features": top,
                   "rows": train.height}
