import collections
import datetime as dt
import json
import math

import lightgbm
import numpy as np
import polars as pl
import pytest
from sklearn.metrics import log_loss, roc_auc_score
from threadpoolctl import threadpool_limits

from ct_assets.lib.config import config_from_dict
from ct_assets.lib.features import build_features, feature_schema
from ct_assets.lib.simulator import simulate_day
from ct_assets.lib.training import (
    INNER_VALIDATION_SHARE,
    LIGHTGBM_FILE,
    MODEL_KINDS,
    SKOPS_FILE,
    SPEC_FILE,
    FeatureSpec,
    encode,
    encode_labels,
    fit_feature_specs,
    inner_split_index,
    load_model,
    train_model,
)

TARGET = "is_fraud"
# One LightGBM thread: on a busy two-core machine OpenMP spinning makes two threads ~10x slower.
PARAMS = {"num_threads": 1}
START = dt.date(2026, 3, 2)


class Smuggled:
    """A non-scikit-learn type hidden inside an estimator."""

    def __init__(self) -> None:
        self.payload = "anything"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return config_from_dict({"dataset": {"source": "simulator"}},
                            base_dir=tmp_path_factory.mktemp("config"))


@pytest.fixture(scope="module")
def schema(config):
    return feature_schema(config)


def simulated_features(config, days, rows, seed):
    dates = [START + dt.timedelta(days=offset) for offset in range(days)]
    raw = pl.concat([simulate_day(day, rows, seed=seed) for day in dates]).with_columns(
        pl.col("ts").dt.strftime("%Y-%m-%d").alias("_partition"))
    return build_features(raw, config, [f"{day:%Y-%m-%d}" for day in dates])


def split_last_day(frame):
    last = frame["_partition"].max()
    return (frame.filter(pl.col("_partition") != last),
            frame.filter(pl.col("_partition") == last))


@pytest.fixture(scope="module")
def small(config):
    """Five days of training rows and one later holdout day."""
    return split_last_day(simulated_features(config, 6, 5_000, seed=11))


@pytest.fixture(scope="module")
def large(config):
    """Ten days of 10k training rows and one later holdout day."""
    return split_last_day(simulated_features(config, 11, 10_000, seed=5))


@pytest.fixture(scope="module")
def fraud_model(large, schema):
    train, _ = large
    model, _ = train_model(train, schema=schema, target=TARGET, task="binary",
                           kind="lightgbm", params=PARAMS, seed=0)
    return model


def params_for(kind):
    return PARAMS if kind == "lightgbm" else {}


# --- each model kind: learns, saves without pickle, reloads identically --------------------


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_model_kind_learns_and_reloads_with_identical_predictions(kind, small, schema,
                                                                   tmp_path):
    train, holdout = small
    assert train["ts"].max() < holdout["ts"].min()
    model, info = train_model(train, schema=schema, target=TARGET, task="binary", kind=kind,
                              params=params_for(kind), seed=0)
    scores = model.predict(holdout)
    assert scores.shape == (holdout.height,)
    assert np.all((scores >= 0) & (scores <= 1))
    assert roc_auc_score(holdout[TARGET].to_numpy(), scores) > 0.75
    assert info["rows"] == train.height and info["seconds"] > 0

    directory = tmp_path / "model"
    files = model.save(directory)
    expected_file = LIGHTGBM_FILE if kind == "lightgbm" else SKOPS_FILE
    assert set(files) == {expected_file, SPEC_FILE}
    assert {path.name for path in directory.iterdir()} == {expected_file, SPEC_FILE}
    for path in directory.iterdir():
        assert path.suffix not in (".pkl", ".pickle", ".joblib")
        assert path.read_bytes()[:1] != b"\x80", f"{path.name} looks like a pickle"
    if kind == "lightgbm":
        assert (directory / LIGHTGBM_FILE).read_text(encoding="utf-8").startswith("tree")
    else:
        assert (directory / SKOPS_FILE).read_bytes()[:2] == b"PK"  # skops: a zip archive
    spec = json.loads((directory / SPEC_FILE).read_text(encoding="utf-8"))
    assert spec["kind"] == kind and spec["task"] == "binary"
    assert [feature["name"] for feature in spec["features"]] == list(schema)

    loaded = load_model(directory)
    assert loaded.kind == kind and loaded.task == "binary"
    assert loaded.specs == model.specs
    assert loaded.classes == model.classes
    assert np.array_equal(loaded.predict(holdout), scores)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_training_is_deterministic_for_a_seed(kind, small, schema):
    train, holdout = small
    runs = [train_model(train, schema=schema, target=TARGET, task="binary", kind=kind,
                        params=params_for(kind), seed=3)[0].predict(holdout)
            for _ in range(2)]
    assert np.array_equal(runs[0], runs[1])


def test_lightgbm_deterministic_with_default_threads(config, schema):
    train, holdout = split_last_day(simulated_features(config, 3, 1_500, seed=2))
    # Default thread count (two); few rounds, as each round pays the threads' start-up.
    runs = [train_model(train, schema=schema, target=TARGET, task="binary",
                        params={"num_boost_round": 40}, seed=4)[0].predict(holdout)
            for _ in range(2)]
    assert np.array_equal(runs[0], runs[1])


def test_lightgbm_seed_is_used(small, schema):
    train, holdout = small
    first, second = (train_model(train, schema=schema, target=TARGET, task="binary",
                                 params=PARAMS, seed=seed)[0].predict(holdout)
                     for seed in (0, 1))
    assert not np.array_equal(first, second)  # bagging depends on the seed


# --- multiclass and regression -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lightgbm", "sklearn_logreg"])
def test_multiclass_probabilities_shape_and_reload(kind, small, schema, tmp_path):
    train, holdout = small
    features = {name: kind_ for name, kind_ in schema.items() if name != "channel"}
    model, _ = train_model(train, schema=features, target="channel", task="multiclass",
                           kind=kind, params=params_for(kind), seed=0)
    assert model.classes == ["atm", "online", "pos"]
    probabilities = model.predict(holdout)
    assert probabilities.shape == (holdout.height, 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.classes == ["atm", "online", "pos"]
    assert np.array_equal(loaded.predict(holdout), probabilities)


def test_multiclass_learns_something(small, schema):
    """Merchant category is partly predictable (each category has its own amount scale)."""
    train, holdout = small
    features = {name: kind for name, kind in schema.items() if name != "merchant_category"}
    model, _ = train_model(train, schema=features, target="merchant_category",
                           task="multiclass", params=PARAMS, seed=0)
    probabilities = model.predict(holdout)
    assert probabilities.shape == (holdout.height, 8)
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    labels, _ = encode_labels(holdout["merchant_category"], "multiclass", model.classes)
    train_labels, _ = encode_labels(train["merchant_category"], "multiclass", model.classes)
    prior = np.bincount(train_labels, minlength=8) / train.height
    model_loss = log_loss(labels, probabilities, labels=range(8))
    prior_loss = log_loss(labels, np.tile(prior, (holdout.height, 1)), labels=range(8))
    assert model_loss < 0.95 * prior_loss


@pytest.mark.parametrize("kind", ["lightgbm", "sklearn_hgb"])
def test_regression_values_shape_and_reload(kind, small, schema, tmp_path):
    train, holdout = small
    features = {name: kind_ for name, kind_ in schema.items()
                if name not in ("amount", "amount_vs_recent")}
    model, _ = train_model(train, schema=features, target="amount", task="regression",
                           kind=kind, params=params_for(kind), seed=0)
    assert model.classes is None
    values = model.predict(holdout)
    assert values.shape == (holdout.height,)
    assert np.all(np.isfinite(values))
    truth = holdout["amount"].to_numpy()
    baseline = np.sqrt(np.mean((truth - train["amount"].mean()) ** 2))
    assert np.sqrt(np.mean((truth - values) ** 2)) < baseline
    model.save(tmp_path / "m")
    assert np.array_equal(load_model(tmp_path / "m").predict(holdout), values)


# --- categorical encoding ------------------------------------------------------------------


def test_encoding_unseen_and_null_categories_are_nan_known_ones_their_index():
    train = pl.DataFrame({"colour": ["red", "blue", None, "green", "blue"],
                          "size": [1.0, None, 3.0, 4.0, 5.0]})
    specs = fit_feature_specs(train, {"colour": "category", "size": "float"})
    assert specs == [FeatureSpec("colour", "category", ["blue", "green", "red"]),
                     FeatureSpec("size", "float")]
    serving = pl.DataFrame({"size": [7.0, None, 2.0, 1.0, 0.5],
                            "colour": ["red", "purple", None, "blue", "green"],
                            "other": ["x"] * 5})
    matrix = encode(serving, specs)
    assert matrix.dtype == np.float64 and matrix.flags["C_CONTIGUOUS"]
    assert matrix.shape == (5, 2)
    assert matrix[0, 0] == 2.0  # red
    assert math.isnan(matrix[1, 0])  # unseen
    assert math.isnan(matrix[2, 0])  # null
    assert matrix[3, 0] == 0.0 and matrix[4, 0] == 1.0
    assert matrix[:, 1][~np.isnan(matrix[:, 1])].tolist() == [7.0, 2.0, 1.0, 0.5]
    assert math.isnan(matrix[1, 1])


def test_encoding_non_string_and_categorical_dtypes_match_training():
    specs = fit_feature_specs(pl.DataFrame({"code": [30, 10, 20]}), {"code": "category"})
    assert specs[0].categories == ["10", "20", "30"]
    assert encode(pl.DataFrame({"code": [20, 99, 10]}), specs)[:, 0].tolist()[::2] == [1.0, 0.0]
    as_categorical = pl.DataFrame({"code": ["30", "10"]}).with_columns(
        pl.col("code").cast(pl.Categorical))
    assert encode(as_categorical, specs)[:, 0].tolist() == [2.0, 0.0]


def test_encoding_a_missing_feature_raises_key_error_naming_it():
    specs = [FeatureSpec("amount", "float"), FeatureSpec("device_trust_score", "float"),
             FeatureSpec("channel", "category", ["pos"])]
    with pytest.raises(KeyError, match="device_trust_score") as raised:
        encode(pl.DataFrame({"amount": [1.0], "channel": ["pos"]}), specs)
    assert "amount" not in str(raised.value) and "channel" not in str(raised.value)


def test_predict_reports_missing_feature(small, schema):
    train, holdout = small
    model, _ = train_model(train, schema=schema, target=TARGET, task="binary",
                           kind="sklearn_logreg", seed=0)
    with pytest.raises(KeyError, match="txn_count_24h"):
        model.predict(holdout.drop("txn_count_24h"))


# --- early stopping never sees the holdout -------------------------------------------------


@pytest.mark.parametrize("rows", [10, 20, 100, 1_000, 12_345, 50_000])
def test_inner_split_index_is_the_most_recent_share_of_training_rows(rows):
    split = inner_split_index(rows)
    assert 1 <= split < rows
    validation = rows - split
    assert INNER_VALIDATION_SHARE * rows <= validation < INNER_VALIDATION_SHARE * rows + 1


def test_inner_split_index_values():
    assert inner_split_index(100) == 85
    assert inner_split_index(1_000) == 850
    assert inner_split_index(10) == 8
    assert inner_split_index(1) == 1


def test_lightgbm_early_stopping_uses_only_the_latest_training_rows(small, schema,
                                                                    monkeypatch):
    train, holdout = small
    seen = {}
    real_train = lightgbm.train

    def spy(params, train_set, *args, valid_sets=None, **kwargs):
        seen["train"] = train_set.data
        seen["valid"] = [valid.data for valid in valid_sets]
        return real_train(params, train_set, *args, valid_sets=valid_sets, **kwargs)

    monkeypatch.setattr(lightgbm, "train", spy)
    model, _ = train_model(train, schema=schema, target=TARGET, task="binary", params=PARAMS,
                           seed=0)
    split = inner_split_index(train.height)
    assert len(seen["valid"]) == 1
    expected_valid = encode(train[split:], model.specs)
    assert np.array_equal(seen["valid"][0], expected_valid, equal_nan=True)
    assert np.array_equal(seen["train"], encode(train[:split], model.specs), equal_nan=True)
    assert seen["train"].shape[0] + seen["valid"][0].shape[0] == train.height
    # The validation rows are the most recent training rows, still before the holdout.
    assert train[split:]["ts"].min() >= train[:split]["ts"].max()
    assert train[split:]["ts"].max() < holdout["ts"].min()


@pytest.mark.parametrize("kind", ["sklearn_logreg", "sklearn_hgb"])
def test_sklearn_models_never_fit_the_inner_split(kind, small, schema):
    """The newest rows (where the operating threshold is chosen) are held out for every kind."""
    train, holdout = small
    split = inner_split_index(train.height)
    flipped = pl.concat([train[:split], train[split:].with_columns(
        (1 - pl.col(TARGET)).alias(TARGET))])
    honest, _ = train_model(train, schema=schema, target=TARGET, task="binary", kind=kind,
                            params=params_for(kind), seed=0)
    poisoned, _ = train_model(flipped, schema=schema, target=TARGET, task="binary", kind=kind,
                              params=params_for(kind), seed=0)
    honest_scores, poisoned_scores = honest.predict(holdout), poisoned.predict(holdout)
    if kind == "sklearn_logreg":  # no early stopping: the inner labels are not used at all
        assert np.array_equal(honest_scores, poisoned_scores)
    else:  # the inner labels only choose when to stop: the trees up to then are the same
        stop = poisoned.estimator.n_iter_
        assert stop < honest.estimator.n_iter_
        stages = list(honest.estimator.staged_predict_proba(encode(holdout, honest.specs)))
        assert np.allclose(stages[stop - 1][:, 1], poisoned_scores)


# --- refusals ------------------------------------------------------------------------------


def test_logreg_refuses_regression(small, schema):
    train, _ = small
    with pytest.raises(ValueError, match="sklearn_logreg is a classifier"):
        train_model(train, schema={"customer_age": "float"}, target="amount",
                    task="regression", kind="sklearn_logreg")


def test_unknown_model_kind_is_named(small, schema):
    train, _ = small
    with pytest.raises(ValueError, match="'xgboost'"):
        train_model(train, schema=schema, target=TARGET, task="binary", kind="xgboost")


def test_single_class_training_set_is_refused(small, schema):
    train, _ = small
    legit = train.filter(pl.col(TARGET) == 0)
    assert legit.height > 100
    for kind in MODEL_KINDS:
        with pytest.raises(ValueError, match="single class"):
            train_model(legit, schema=schema, target=TARGET, task="binary", kind=kind)


def test_too_few_rows_is_refused(small, schema):
    train, _ = small
    with pytest.raises(ValueError, match="need at least 10"):
        train_model(train.head(5), schema=schema, target=TARGET, task="binary")


# --- behaviour of a model trained on ten simulated days ------------------------------------


def test_fraud_model_quality(fraud_model, large):
    _, holdout = large
    assert roc_auc_score(holdout[TARGET].to_numpy(), fraud_model.predict(holdout)) > 0.85


def test_direction_larger_amount_raises_the_fraud_score(fraud_model, large):
    _, holdout = large
    base = fraud_model.predict(holdout)
    bigger = holdout.with_columns(pl.col("amount") * 5, pl.col("amount_vs_recent") * 5)
    raised = fraud_model.predict(bigger)
    assert raised.mean() > 2 * base.mean()
    assert np.mean(raised > base) > 0.9


def test_direction_lower_device_trust_raises_the_fraud_score(fraud_model, large):
    _, holdout = large
    base = fraud_model.predict(holdout)
    distrusted = holdout.with_columns(pl.col("device_trust_score") * 0.3)
    lowered = fraud_model.predict(distrusted)
    assert lowered.mean() > 2 * base.mean()
    assert np.mean(lowered > base) > 0.9


def test_invariance_to_identifiers(fraud_model, large):
    _, holdout = large
    names = {spec.name for spec in fraud_model.specs}
    assert not names & {"customer_id", "transaction_id", "ts", "_partition", TARGET}
    base = fraud_model.predict(holdout)
    renamed = holdout.with_columns(
        pl.lit("c99999").alias("customer_id"),
        ("other-" + pl.col("transaction_id")).alias("transaction_id"),
        pl.lit(1).alias(TARGET),
    )
    changed = fraud_model.predict(renamed)
    assert np.array_equal(changed, base)
    assert np.array_equal((changed >= 0.5), (base >= 0.5))
    # Column order and extra columns do not matter either.
    shuffled = holdout.select(list(reversed(holdout.columns))).with_columns(pl.lit(0).alias("x"))
    assert np.array_equal(fraud_model.predict(shuffled), base)


def test_invariance_to_tiny_amount_noise(fraud_model, large):
    _, holdout = large
    base = fraud_model.predict(holdout)
    # Lowering by 1e-9 keeps every value in its LightGBM bin: bins are (lower, upper] and
    # amounts are on a 0.01 grid, so the scores do not move at all.
    lowered = fraud_model.predict(holdout.with_columns(pl.col("amount") - 1e-9))
    assert np.max(np.abs(lowered - base)) < 1e-6
    # Random ±1e-9 noise: a value sitting exactly on a bin's upper bound (LightGBM puts one
    # at a frequent value) can cross it, which moves that row's score by a leaf value of
    # one tree. No decision flips, and almost every score is unchanged.
    noise = np.random.default_rng(0).choice([-1e-9, 1e-9], holdout.height)
    jittered = fraud_model.predict(holdout.with_columns(pl.col("amount") + pl.Series(noise)))
    moved = np.abs(jittered - base)
    assert np.array_equal(jittered >= 0.5, base >= 0.5)
    assert np.mean(moved > 1e-6) <= 0.001
    assert np.mean(moved) < 1e-6


def _transaction(template, *, hour, **values):
    angle = hour * 2 * math.pi / 24
    return template.head(1).with_columns(
        pl.lit(math.sin(angle)).alias("hour_sin"), pl.lit(math.cos(angle)).alias("hour_cos"),
        *[pl.lit(value).alias(name) for name, value in values.items()],
    ).with_columns((pl.col("amount") / pl.col("amount_recent_mean")).alias("amount_vs_recent"))


def test_minimum_functionality_risky_transaction_ranks_above_safe(fraud_model, large):
    _, holdout = large
    risky = _transaction(holdout, hour=3, channel="online", merchant_category="electronics",
                         amount=4_000.0, account_age_days=3.0, device_trust_score=0.05,
                         distance_from_home_km=3_000.0, txn_count_24h=9.0)
    safe = _transaction(holdout, hour=14, channel="pos", merchant_category="grocery",
                        amount=25.0, account_age_days=3_000.0, device_trust_score=0.97,
                        distance_from_home_km=1.0, txn_count_24h=0.0)
    risky_score = float(fraud_model.predict(risky)[0])
    safe_score = float(fraud_model.predict(safe)[0])
    assert risky_score > safe_score
    assert risky_score > 0.5 > 0.01 > safe_score


# --- skops refuses types it does not trust -------------------------------------------------


@pytest.mark.parametrize(("smuggled", "type_name"), [
    (Smuggled(), "Smuggled"),
    (collections.Counter(a=1), "collections.Counter"),
    (eval, "builtins.eval"),
])
def test_skops_load_refuses_untrusted_types(smuggled, type_name, small, schema, tmp_path):
    train, holdout = small
    model, _ = train_model(train.tail(3_000), schema=schema, target=TARGET, task="binary",
                           kind="sklearn_logreg", seed=0)
    model.save(tmp_path / "clean")
    assert load_model(tmp_path / "clean").predict(holdout.head(5)).shape == (5,)
    model.estimator.smuggled_ = smuggled
    model.save(tmp_path / "dirty")
    with pytest.raises(ValueError, match=rf"refusing to load types .*{type_name}"):
        load_model(tmp_path / "dirty")
