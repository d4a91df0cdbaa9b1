import datetime as dt

import numpy as np
import polars as pl
import pytest
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from ct_assets.lib.config import config_from_dict
from ct_assets.lib.evaluation import compute_metrics
from ct_assets.lib.features import build_features, feature_schema
from ct_assets.lib.online import (
    ONLINE_KINDS,
    can_learn_online,
    continue_model,
    prequential_metrics,
)
from ct_assets.lib.simulator import DriftScenario, simulate_day
from ct_assets.lib.training import (
    MODEL_KINDS,
    SKOPS_FILE,
    TrainedModel,
    encode,
    encode_labels,
    inner_split_index,
    load_model,
    train_model,
)

TARGET = "is_fraud"
PARAMS = {"num_threads": 1}  # one LightGBM thread: faster and steadier on a busy machine
START = dt.date(2026, 3, 2)
DRIFT_DAY = 4  # days 0-3 follow the old concept, days 4-7 the new one
ROWS_PER_DAY = 2_500


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


@pytest.fixture(scope="module")
def days(config):
    """Eight days of features, one frame a day; a concept change from day `DRIFT_DAY` on."""
    dates = [START + dt.timedelta(days=offset) for offset in range(8)]
    drift = DriftScenario("concept", dates[DRIFT_DAY])
    raw = pl.concat([simulate_day(day, ROWS_PER_DAY, seed=7, drift=drift)
                     for day in dates]).with_columns(
        pl.col("ts").dt.strftime("%Y-%m-%d").alias("_partition"))
    keys = [f"{day:%Y-%m-%d}" for day in dates]
    frame = build_features(raw, config, keys)
    return [frame.filter(pl.col("_partition") == key) for key in keys]


@pytest.fixture(scope="module")
def old(days):
    """Three days before the change to train on, and the fourth as new rows to learn."""
    return pl.concat(days[:3]), days[3]


def params_for(kind):
    return PARAMS if kind == "lightgbm" else {}


@pytest.fixture(scope="module")
def models(old, schema):
    train, _ = old
    return {kind: train_model(train, schema=schema, target=TARGET, task="binary", kind=kind,
                              params=params_for(kind), seed=0)[0]
            for kind in ONLINE_KINDS}


def test_online_kinds_are_model_kinds_and_only_they_learn_online():
    assert set(ONLINE_KINDS) <= set(MODEL_KINDS)
    assert [kind for kind in MODEL_KINDS if can_learn_online(kind)] == list(ONLINE_KINDS)
    assert not can_learn_online("sklearn_hgb") and not can_learn_online("xgboost")


# --- LightGBM: continued boosting ----------------------------------------------------------


def test_lightgbm_adds_exactly_rounds_trees_on_top_of_the_unchanged_old_ones(models, old):
    model = models["lightgbm"]
    _, new = old
    text, scores = model.estimator.model_to_string(), model.predict(new)
    before = model.estimator.current_iteration()
    updated, info = continue_model(model, new, target=TARGET, task="binary", rounds=7,
                                   params=PARAMS)
    assert info["rounds_added"] == 7 and info["rows"] == new.height
    assert updated.estimator.current_iteration() == before + 7 == info["iterations"]
    assert updated.estimator.num_trees() == model.estimator.num_trees() + 7 == info["trees"]
    assert info["seconds"] > 0
    # The input model is untouched: same booster text, same predictions.
    assert updated is not model and updated.estimator is not model.estimator
    assert model.estimator.model_to_string() == text
    assert np.array_equal(model.predict(new), scores)
    # The old trees are kept as they were; the new ones change the scores.
    matrix = encode(new, model.specs)
    assert np.allclose(updated.estimator.predict(matrix, num_iteration=before, raw_score=True),
                       model.estimator.predict(matrix, raw_score=True))
    assert not np.allclose(updated.predict(new), scores)
    assert updated.specs == model.specs and updated.classes == model.classes


def test_lightgbm_continuation_keeps_the_encoding_unseen_categories_are_missing(models, old):
    model = models["lightgbm"]
    _, new = old
    renamed = new.with_columns(pl.lit("crypto").alias("merchant_category"))
    updated, info = continue_model(model, renamed, target=TARGET, task="binary", rounds=3,
                                   params=PARAMS)
    assert info["rounds_added"] == 3
    assert updated.specs == model.specs
    assert "crypto" not in next(s for s in updated.specs
                                if s.name == "merchant_category").categories
    assert np.isnan(encode(renamed, updated.specs)[:, [s.name for s in updated.specs]
                                                   .index("merchant_category")]).all()


def test_lightgbm_continuation_is_deterministic_and_uses_the_weights(models, old):
    model = models["lightgbm"]
    _, new = old
    runs = [continue_model(model, new, target=TARGET, task="binary", rounds=5, params=PARAMS,
                           seed=1)[0].predict(new) for _ in range(2)]
    assert np.array_equal(runs[0], runs[1])
    fraud = new[TARGET].to_numpy() == 1
    weighted, _ = continue_model(model, new, target=TARGET, task="binary", rounds=5,
                                 params=PARAMS, seed=1, weights=np.where(fraud, 20.0, 1.0))
    assert weighted.predict(new).mean() > 1.5 * runs[0].mean()
    with pytest.raises(ValueError, match="3 sample weights"):
        continue_model(model, new, target=TARGET, task="binary", weights=np.ones(3))


def test_lightgbm_reports_the_rounds_it_really_added(models, old):
    """LightGBM's binary objective learns nothing from rows of one class; info says so."""
    model = models["lightgbm"]
    _, new = old
    legit = new.filter(pl.col(TARGET) == 0)
    updated, info = continue_model(model, legit, target=TARGET, task="binary", rounds=5,
                                   params=PARAMS)
    assert info["rows"] == legit.height
    assert info["rounds_added"] == 0
    assert info["iterations"] == model.estimator.current_iteration()
    assert np.array_equal(updated.predict(new), model.predict(new))


# --- scikit-learn SGD: partial_fit ---------------------------------------------------------


def test_sgd_trains_on_the_older_rows_only_and_learns(old, schema):
    train, new = old
    split = inner_split_index(train.height)
    flipped = pl.concat([train[:split], train[split:].with_columns(
        (1 - pl.col(TARGET)).alias(TARGET))])
    honest, info = train_model(train, schema=schema, target=TARGET, task="binary",
                               kind="sklearn_sgd", seed=0)
    poisoned, _ = train_model(flipped, schema=schema, target=TARGET, task="binary",
                              kind="sklearn_sgd", seed=0)
    scores = honest.predict(new)
    assert np.array_equal(scores, poisoned.predict(new))  # the inner split is never fitted
    assert roc_auc_score(new[TARGET].to_numpy(), scores) > 0.8
    assert info["best_iteration"] == honest.estimator.named_steps["model"].n_iter_ >= 1


def test_sgd_refit_runs_fixed_rounds_epochs_on_every_row(old, schema):
    train, new = old
    split = inner_split_index(train.height)
    flipped = pl.concat([train[:split], train[split:].with_columns(
        (1 - pl.col(TARGET)).alias(TARGET))])
    common = {"schema": schema, "target": TARGET, "task": "binary", "kind": "sklearn_sgd",
              "seed": 0, "fixed_rounds": 4}
    refit, info = train_model(train, **common)
    assert info["best_iteration"] == 4 == refit.estimator.named_steps["model"].n_iter_
    poisoned, _ = train_model(flipped, **common)
    assert not np.array_equal(refit.predict(new), poisoned.predict(new))  # every row fitted


def test_sgd_fits_the_sample_weights_of_the_older_rows(old, schema):
    train, new = old
    weights = np.where(train[TARGET].to_numpy() == 1, 10.0, 1.0)
    common = {"schema": schema, "target": TARGET, "task": "binary", "kind": "sklearn_sgd",
              "seed": 0}
    plain, _ = train_model(train, **common)
    weighted, _ = train_model(train, weights=weights, **common)
    assert not np.array_equal(weighted.predict(new), plain.predict(new))
    split = inner_split_index(train.height)
    expected = clone(plain.estimator).fit(
        encode(train, plain.specs)[:split], train[TARGET].to_numpy()[:split],
        model__sample_weight=weights[:split])
    assert np.array_equal(weighted.estimator.named_steps["model"].coef_,
                          expected.named_steps["model"].coef_)


def test_sgd_partial_fit_on_a_copy_with_the_preprocessing_of_the_first_fit(models, old,
                                                                          tmp_path):
    model = models["sklearn_sgd"]
    _, new = old
    sgd = model.estimator.named_steps["model"]
    coef, scores = sgd.coef_.copy(), model.predict(new)
    model.save(tmp_path / "before")
    updated, info = continue_model(model, new, target=TARGET, task="binary")
    assert info["rows"] == new.height and info["epochs"] == 1
    # The input model is untouched and shares no state with the update.
    assert np.array_equal(sgd.coef_, coef) and np.array_equal(model.predict(new), scores)
    assert updated.estimator.named_steps["model"] is not sgd
    assert not np.array_equal(updated.estimator.named_steps["model"].coef_, coef)
    assert not np.array_equal(updated.predict(new), scores)
    # The update is exactly one partial_fit of the SGD step; the preprocessing is not refitted.
    expected = load_model(tmp_path / "before").estimator
    prepared = expected.named_steps["prepare"].transform(encode(new, model.specs))
    expected.named_steps["model"].partial_fit(prepared, new[TARGET].to_numpy())
    assert np.array_equal(updated.estimator.named_steps["model"].coef_,
                          expected.named_steps["model"].coef_)
    scale = updated.estimator.named_steps["prepare"].named_transformers_["numeric"]["scale"]
    assert np.array_equal(scale.mean_, model.estimator.named_steps["prepare"]
                          .named_transformers_["numeric"]["scale"].mean_)


@pytest.mark.parametrize("kind", ONLINE_KINDS)
def test_continued_model_saves_and_reloads_with_identical_predictions(kind, models, old,
                                                                     days, tmp_path):
    _, new = old
    updated, _ = continue_model(models[kind], new, target=TARGET, task="binary", rounds=5,
                                params=params_for(kind))
    files = updated.save(tmp_path / "m")
    if kind == "sklearn_sgd":
        assert set(files) == {SKOPS_FILE, "features.json"}
        assert (tmp_path / "m" / SKOPS_FILE).read_bytes()[:2] == b"PK"  # skops zip, no pickle
    loaded = load_model(tmp_path / "m")
    assert loaded.kind == kind and loaded.specs == updated.specs
    later = days[5]
    assert np.array_equal(loaded.predict(later), updated.predict(later))


# --- learning a change of concept ----------------------------------------------------------


@pytest.mark.parametrize("kind", ONLINE_KINDS)
def test_continuing_on_drifted_days_recovers_after_a_concept_change(kind, days, schema):
    model, _ = train_model(pl.concat(days[:DRIFT_DAY]), schema=schema, target=TARGET,
                           task="binary", kind=kind, params=params_for(kind), seed=0)
    drifted = pl.concat(days[DRIFT_DAY:DRIFT_DAY + 3])
    updated, _ = continue_model(model, drifted, target=TARGET, task="binary", rounds=100,
                                params=PARAMS)
    later = days[DRIFT_DAY + 3]
    labels = later[TARGET].to_numpy()
    stale = roc_auc_score(labels, model.predict(later))
    fresh = roc_auc_score(labels, updated.predict(later))
    assert stale < 0.5  # the relation reversed: the old model ranks backwards
    assert fresh > 0.65 and fresh > stale + 0.25


# --- prequential evaluation ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ONLINE_KINDS)
def test_prequential_metrics_are_those_of_the_model_before_it_learns(kind, models, old):
    model = models[kind]
    _, new = old
    labels = new[TARGET].to_numpy()
    before = compute_metrics(labels, model.predict(new), "binary", 0.3)
    measured = prequential_metrics(model, new, target=TARGET, task="binary", threshold=0.3)
    assert measured == before
    updated, _ = continue_model(model, new, target=TARGET, task="binary", rounds=20,
                                params=params_for(kind))
    after = compute_metrics(labels, updated.predict(new), "binary", 0.3)
    assert prequential_metrics(updated, new, target=TARGET, task="binary",
                               threshold=0.3) == after
    assert after["log_loss"] < before["log_loss"]  # having seen the rows flatters the update


# --- multiclass: classes the model does not know -------------------------------------------


@pytest.mark.parametrize("kind", ONLINE_KINDS)
def test_multiclass_rows_of_an_unseen_class_are_left_out_and_counted(kind, old, schema):
    train, new = old
    features = {name: type_ for name, type_ in schema.items() if name != "merchant_category"}
    params = {**PARAMS, "num_boost_round": 30} if kind == "lightgbm" else {}
    model, _ = train_model(train.filter(pl.col("merchant_category") != "gambling"),
                           schema=features, target="merchant_category", task="multiclass",
                           kind=kind, params=params, seed=0)
    assert "gambling" not in model.classes
    gambling = int((new["merchant_category"] == "gambling").sum())
    assert gambling > 0
    updated, info = continue_model(model, new, target="merchant_category", task="multiclass",
                                   rounds=3, params=params)
    assert info["unseen_class_rows"] == gambling
    assert info["rows"] == new.height - gambling
    assert updated.classes == model.classes
    probabilities = updated.predict(new)
    assert probabilities.shape == (new.height, len(model.classes))
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    known = new.filter(pl.col("merchant_category") != "gambling")
    labels, _ = encode_labels(known["merchant_category"], "multiclass", model.classes)
    assert prequential_metrics(model, new, target="merchant_category",
                               task="multiclass") == compute_metrics(
        labels, model.predict(known), "multiclass")


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sklearn_hgb", "sklearn_logreg", "xgboost"])
def test_a_kind_that_cannot_learn_online_is_refused_by_name(kind, models, old):
    _, new = old
    model = TrainedModel(kind, "binary", models["lightgbm"].specs, [0, 1], None)
    with pytest.raises(ValueError, match=f"model kind '{kind}' cannot learn online"):
        continue_model(model, new, target=TARGET, task="binary")


def test_a_task_other_than_the_models_is_refused(models, old):
    _, new = old
    with pytest.raises(ValueError, match="binary task, not regression"):
        continue_model(models["lightgbm"], new, target="amount", task="regression")
    with pytest.raises(ValueError, match="binary task, not multiclass"):
        prequential_metrics(models["sklearn_sgd"], new, target=TARGET, task="multiclass")


def test_rows_without_a_label_are_left_out(models, old):
    _, new = old
    unlabelled = new.with_columns(
        pl.when(pl.int_range(pl.len()) < 100).then(None).otherwise(pl.col(TARGET))
        .alias(TARGET))
    updated, info = continue_model(models["lightgbm"], unlabelled, target=TARGET,
                                   task="binary", rounds=2, params=PARAMS)
    assert info["unlabelled_rows"] == 100 and info["rows"] == new.height - 100
    reference, _ = continue_model(models["lightgbm"], new.slice(100), target=TARGET,
                                  task="binary", rounds=2, params=PARAMS)
    assert np.array_equal(updated.predict(new), reference.predict(new))
