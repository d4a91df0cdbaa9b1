"""A served model version: verified on load, its input encoding, scoring and decisions.

`load_served` is the only way a version gets served: every file's sha256 and the manifest's
seal (`ModelStore.manifest`), the feature schema against the expected one, and a canary batch
that must score finite values of the right shape (probabilities in [0, 1]).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np

from ct_assets.lib.evaluation import OPERATING_THRESHOLD
from ct_assets.lib.model_store import ModelStore, ModelStoreError
from ct_assets.lib.serving import load_verified, schema_problems
from ct_assets.lib.training import TrainedModel

# Columns of every request-log row; a feature may not take one of these names.
LOG_COLUMNS = ("request_id", "row", "row_id", "received_at", "model_name", "model_version",
               "score", "decision")
CANARY_ROWS = 16
PLATFORMS = {"lightgbm": "lightgbm"}  # every other kind is a scikit-learn estimator


class Canary(NamedTuple):
    """Rows to score a version with before it serves: raw columns of a known schema."""

    schema: Mapping[str, str]  # feature name → float/category of the columns
    columns: Mapping[str, Any]
    rows: int


@dataclass(frozen=True)
class Feature:
    """One model input: its name, `float` or `category`, and its advertised OIP datatype."""

    name: str
    kind: str
    datatype: str
    codes: Mapping[str, float] | None = None  # category → the code the model was trained on
    categories: tuple[str, ...] | None = None


class LightGBMPredict:
    """One LightGBM C call per batch (`LGBM_BoosterPredictForMat`, one thread).

    `Booster.predict` builds a predictor, copies its parameters and converts the input on every
    call, which costs more than predicting one row; this calls the same C function directly.
    It uses LightGBM's private ctypes handle, so `fast_predict` checks it against
    `Booster.predict` on the canary and falls back to that when it is missing or differs.
    """

    def __init__(self, booster: Any) -> None:
        from lightgbm.basic import _LIB, _c_str, _safe_call  # private: checked on load

        self.call, self.check, self.handle = _LIB.LGBM_BoosterPredictForMat, _safe_call, \
            booster._handle
        self.parameters = _c_str("num_threads=1")
        self.width = booster.num_feature()
        self.per_row = booster.num_model_per_iteration()
        self.iterations = booster.best_iteration if booster.best_iteration > 0 else -1

    def __call__(self, matrix: np.ndarray) -> np.ndarray:
        """Predictions of a float64 matrix: `(n,)`, or `(n, classes)` for multiclass."""
        matrix = np.ascontiguousarray(matrix, dtype=np.float64)
        rows = matrix.shape[0]
        out = np.empty(rows * self.per_row, dtype=np.float64)
        written = ctypes.c_int64(0)
        self.check(self.call(
            self.handle, matrix.ctypes.data_as(ctypes.c_void_p), ctypes.c_int(1),  # float64
            ctypes.c_int32(rows), ctypes.c_int32(self.width), ctypes.c_int(1),  # row-major
            ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(self.iterations),  # normal, all
            self.parameters, ctypes.byref(written),
            out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))))
        return out if self.per_row == 1 else out.reshape(rows, self.per_row)


def fast_predict(booster: Any, matrix: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """`LightGBMPredict` when it reproduces `booster.predict` on `matrix`, else that."""

    def public(rows: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(rows, num_threads=1), dtype=np.float64)

    try:
        direct = LightGBMPredict(booster)
        if np.array_equal(direct(matrix), public(matrix)):
            return direct
    except Exception:  # a LightGBM without these internals: the public path
        pass
    return public


@dataclass(frozen=True)
class ServedModel:
    """A verified model version ready to score (immutable: a swap replaces the whole object)."""

    version: str
    manifest: dict[str, Any]
    model: TrainedModel
    features: tuple[Feature, ...]
    task: str
    classes: tuple[Any, ...]
    threshold: float
    predict: Callable[[np.ndarray], np.ndarray] | None = None  # LightGBM's, set on load

    @cached_property
    def names(self) -> tuple[str, ...]:
        """Feature names, in the model's column order."""
        return tuple(feature.name for feature in self.features)

    @cached_property
    def category_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """Column positions of the categorical features and how many codes each has."""
        positions = [i for i, f in enumerate(self.features) if f.categories is not None]
        return (np.array(positions, dtype=np.intp),
                np.array([len(self.features[i].categories or ()) for i in positions],
                         dtype=np.float64))

    @cached_property
    def log_features(self) -> tuple[tuple[str, str], ...]:
        """(name, kind) of each feature: the request log's columns of this model."""
        return tuple((feature.name, feature.kind) for feature in self.features)

    @cached_property
    def schema(self) -> dict[str, str]:
        """Feature name → `float` or `category`."""
        return {feature.name: feature.kind for feature in self.features}

    @property
    def platform(self) -> str:
        """The OIP platform: `lightgbm` or `sklearn`."""
        return PLATFORMS.get(self.model.kind, "sklearn")

    @cached_property
    def decision_datatype(self) -> str:
        """INT64 when every class is an integer, else BYTES."""
        integral = all(isinstance(c, int) and not isinstance(c, bool) for c in self.classes)
        return "INT64" if integral else "BYTES"

    def encode(self, columns: Mapping[str, Any], rows: int) -> np.ndarray:
        """The feature matrix of raw columns (numeric arrays, category lists), as training did.

        Unseen or null categories become NaN, which the model treats as missing.
        """
        matrix = np.empty((rows, len(self.features)), dtype=np.float64)
        for index, feature in enumerate(self.features):
            values = columns[feature.name]
            if feature.codes is None:
                matrix[:, index] = values
            else:
                lookup = feature.codes.get
                matrix[:, index] = [lookup(value, math.nan) for value in values]
        return matrix

    def score(self, matrix: np.ndarray) -> np.ndarray:
        """Scores: P(positive) for binary, [n, k] class probabilities, values for regression."""
        if self.predict is not None:
            return self.predict(matrix)
        estimator = self.model.estimator
        if self.model.kind == "lightgbm":
            return np.asarray(estimator.predict(matrix, num_threads=1), dtype=np.float64)
        if self.task == "regression":
            return np.asarray(estimator.predict(matrix), dtype=np.float64)
        probabilities = np.asarray(estimator.predict_proba(matrix), dtype=np.float64)
        return probabilities[:, 1] if self.task == "binary" else probabilities

    def decide(self, scores: np.ndarray) -> list[Any] | None:
        """The class at the operating threshold (binary), the argmax class, or None."""
        if self.task == "binary":
            negative, positive = self.classes
            return np.where(scores >= self.threshold, positive, negative).tolist()
        if self.task == "multiclass":
            classes = self.classes
            return [classes[i] for i in scores.argmax(axis=1).tolist()]
        return None

    def decided_scores(self, scores: np.ndarray) -> np.ndarray:
        """One score per row: the probability of the decided class for multiclass."""
        return scores.max(axis=1) if scores.ndim == 2 else scores


def build_features(manifest: dict[str, Any], datatypes: Mapping[str, str]) -> tuple[Feature, ...]:
    """The served inputs of a manifest's feature schema."""
    features = []
    for spec in manifest.get("feature_schema") or []:
        if spec["type"] == "category":
            categories = tuple(spec.get("categories") or ())
            codes = {value: float(code) for code, value in enumerate(categories)}
            features.append(Feature(spec["name"], "category", "BYTES", codes, categories))
        else:
            features.append(Feature(spec["name"], "float", datatypes.get(spec["name"], "FP64")))
    return tuple(features)


def synthesise_rows(features: Sequence[Feature], rows: int = 8) -> dict[str, Any]:
    """Canary rows made from the schema alone: varied numbers, every category, and missing."""
    numbers = [0.0, 1.0, -1.0, 0.5, 10.0, 100.0, math.nan, 0.25]
    columns: dict[str, Any] = {}
    for feature in features:
        if feature.kind == "category":
            choices = [*(feature.categories or ()), None]
            columns[feature.name] = [choices[i % len(choices)] for i in range(rows)]
        else:
            columns[feature.name] = np.array([numbers[i % len(numbers)] for i in range(rows)])
    return columns


def canary_problems(served: ServedModel, columns: Mapping[str, Any], rows: int) -> list[str]:
    """What is wrong with the model's scores on a canary batch (empty: nothing)."""
    try:
        scores = served.score(served.encode(columns, rows))
    except Exception as error:  # any failure to score is a reason to refuse the version
        return [f"scoring the canary batch failed: {type(error).__name__}: {error}"]
    expected = (rows, len(served.classes)) if served.task == "multiclass" else (rows,)
    if scores.shape != expected:
        return [f"canary scores have shape {scores.shape}, expected {expected}"]
    if not np.isfinite(scores).all():
        return ["canary scores are not all finite"]
    problems = []
    if served.task != "regression" and not ((scores >= 0) & (scores <= 1)).all():
        problems.append("canary probabilities outside [0, 1]")
    if served.task == "multiclass" and not np.allclose(scores.sum(axis=1), 1.0, atol=1e-6):
        problems.append("canary class probabilities do not sum to 1")
    return problems


def load_served(store: ModelStore, version: str, *, datatypes: Mapping[str, str] | None = None,
                expected_schema: Mapping[str, str] | None = None,
                canary: Canary | None = None) -> ServedModel:
    """Load and verify a version: sha256 and seal, feature schema, canary batch.

    Args:
        store: the model store.
        version: the version to load.
        datatypes: advertised OIP datatypes of numeric features (FP64 when absent).
        expected_schema: feature name → type the version must have (None: any).
        canary: rows to score, e.g. the last ones served (None, or rows lacking a feature of
            the version or holding it with another type: rows synthesised from the schema).

    Raises:
        ModelStoreError: naming what failed (a file, the schema, the canary).
    """
    model, manifest = load_verified(store, version)
    features = build_features(manifest, datatypes or {})
    if not features:
        raise ModelStoreError(f"{version}: the manifest has no feature_schema")
    clashes = [feature.name for feature in features if feature.name in LOG_COLUMNS]
    if clashes:
        raise ModelStoreError(f"{version}: features named like request-log columns: "
                              f"{', '.join(clashes)}")
    if expected_schema is not None:
        problems = schema_problems(manifest, dict(expected_schema))
        if problems:
            raise ModelStoreError(f"{version}: feature schema differs from the one served "
                                  f"({'; '.join(problems)})")
    task = manifest.get("task") or model.task
    classes = tuple(manifest.get("classes") or model.classes or (0, 1))
    if task == "binary" and len(classes) != 2:
        raise ModelStoreError(f"{version}: a binary model with classes {list(classes)}")
    threshold = manifest.get("operating_threshold")
    served = ServedModel(version, manifest, model, features, task, classes,
                         float(threshold) if threshold is not None else OPERATING_THRESHOLD)
    if canary is None or any(canary.schema.get(f.name) != f.kind for f in features):
        canary = Canary({}, synthesise_rows(features), 8)
    rows = min(canary.rows, CANARY_ROWS)
    columns = {feature.name: canary.columns[feature.name][:rows] for feature in features}
    if model.kind == "lightgbm":
        served = replace(served, predict=fast_predict(model.estimator,
                                                      served.encode(columns, rows)))
    problems = canary_problems(served, columns, rows)
    if problems:
        raise ModelStoreError(f"{version}: refused by the canary: {'; '.join(problems)}")
    return served
