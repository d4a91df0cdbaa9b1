import datetime as dt

import numpy as np
import polars as pl
import pytest
from scipy import stats

from ct_assets.lib import simulator
from ct_assets.lib.simulator import DRIFTED_SEGMENT, DriftScenario, simulate_day, write_days

DAY = dt.date(2026, 3, 1)
START = DAY + dt.timedelta(days=10)  # first drifted day
EXPENSIVE = pl.col("amount") > 150
DTYPES = {"string": pl.String, "category": pl.String, "float": pl.Float64, "int": pl.Int64,
          "timestamp": pl.Datetime("us", "UTC")}


def day(offset):
    return DAY + dt.timedelta(days=offset)


def drifted(kind, offset, rows=20_000, **kwargs):
    return simulate_day(day(offset), rows, drift=DriftScenario(kind, START, **kwargs))


def amounts(kind, offset, region=None):
    frame = drifted(kind, offset)
    if region:
        frame = frame.filter(pl.col("region") == region)
    return frame["amount"].to_numpy()


def fraud_counts(kind, offsets, where=None):
    frame = pl.concat([drifted(kind, o) for o in offsets])
    if where is not None:
        frame = frame.filter(where)
    return int(frame["is_fraud"].sum()), frame.height


def features(frame):
    return frame.drop(simulator.TARGET_COLUMN)


def test_deterministic_for_a_seed():
    assert simulate_day(DAY, 500, seed=3).equals(simulate_day(DAY, 500, seed=3))
    assert not simulate_day(DAY, 500, seed=3).equals(simulate_day(DAY, 500, seed=4))
    assert not simulate_day(DAY, 500).equals(simulate_day(day(1), 500))


def test_schema_and_timestamps():
    frame = simulate_day(DAY, 2000, seed=7)
    assert frame.columns == list(simulator.SIMULATOR_COLUMNS)
    assert dict(frame.schema) == {c: DTYPES[t] for c, t in simulator.SIMULATOR_COLUMNS.items()}
    assert simulator.SIMULATOR_COLUMNS[simulator.TARGET_COLUMN] == "int"
    assert frame[simulator.ID_COLUMN].n_unique() == 2000
    assert frame[simulator.ID_COLUMN][0] == "20260301-7-0000000"
    other = simulate_day(DAY, 2000, seed=8)[simulator.ID_COLUMN]
    assert not set(frame[simulator.ID_COLUMN]) & set(other)
    ts = frame[simulator.TIMESTAMP_COLUMN]
    assert ts.min() >= dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    assert ts.max() < dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
    assert ts.is_sorted()
    assert set(frame["region"]) == set(simulator.REGIONS)
    assert set(frame["channel"]) == {"pos", "online", "atm"}
    assert frame["merchant_category"].n_unique() == len(simulator.MERCHANTS)
    assert frame["device_trust_score"].is_between(0, 1).all()
    assert (frame["amount"] > 0).all()
    assert frame["customer_age"].is_between(18, 90).all()
    for name in ("account_age_days", "distance_from_home_km", "txn_count_24h"):
        assert (frame[name] >= 0).all(), name
    assert set(frame["is_fraud"]) <= {0, 1}
    assert frame.null_count().sum_horizontal().item() == 0
    hours = frame["ts"].dt.hour()
    assert (hours == 12).sum() > 3 * (hours == 3).sum()  # fewer transactions at night


def design(frame):
    hour = frame["ts"].dt.hour().to_numpy()
    columns = [
        np.ones(frame.height),
        np.log(frame["amount"].to_numpy()),
        ((hour < 6) | (hour >= 23)).astype(float),
        (frame["channel"] == "online").to_numpy().astype(float),
        frame["device_trust_score"].to_numpy(),
        np.log1p(frame["distance_from_home_km"].to_numpy()),
        (frame["account_age_days"] < 90).to_numpy().astype(float),
    ]
    return np.column_stack(columns), frame["is_fraud"].to_numpy().astype(float)


def test_fraud_rate_is_realistic_and_learnable():
    train, test = simulate_day(DAY, 50_000), simulate_day(day(1), 50_000)
    rate = train["is_fraud"].mean()
    assert 0.005 < rate < 0.05
    night = pl.col("ts").dt.hour().is_in([0, 1, 2, 3, 4, 5, 23])
    risky = train.filter(EXPENSIVE & night & (pl.col("channel") == "online"))
    assert risky["is_fraud"].mean() > 5 * rate
    # A plain logistic regression (Newton's method) on a few features ranks fraud well.
    x, y = design(train)
    beta = np.zeros(x.shape[1])
    for _ in range(12):
        p = 1 / (1 + np.exp(-x @ beta))
        beta += np.linalg.solve(x.T @ (x * (p * (1 - p))[:, None]), x.T @ (y - p))
    x_test, y_test = design(test)
    ranks = stats.rankdata(x_test @ beta)
    positives = int(y_test.sum())
    auc = (ranks[y_test == 1].sum() - positives * (positives + 1) / 2) / (
        positives * (len(y_test) - positives))
    assert auc > 0.8


@pytest.mark.parametrize("kind", ["covariate", "segment"])
def test_covariate_drift_starts_exactly_on_its_day(kind):
    region = DRIFTED_SEGMENT if kind == "segment" else None
    clean, two_before = amounts(kind, 2, region), amounts(kind, 8, region)
    before, on_start = amounts(kind, 9, region), amounts(kind, 10, region)
    assert stats.ks_2samp(before, clean).pvalue > 0.01
    assert stats.ks_2samp(before, two_before).pvalue > 0.01
    assert stats.ks_2samp(on_start, before).pvalue < 1e-6
    assert np.median(on_start) > 1.3 * np.median(before)
    assert drifted(kind, 9, rows=300).equals(simulate_day(day(9), 300))


def test_segment_drift_leaves_other_regions_alone():
    others = pl.col("region") != DRIFTED_SEGMENT
    after = drifted("segment", 10).filter(others)
    assert after.equals(simulate_day(day(10), 20_000).filter(others))
    before = drifted("segment", 9).filter(others)
    assert stats.ks_2samp(before["amount"], after["amount"]).pvalue > 0.01


def test_prior_drift_raises_the_fraud_rate_from_its_day_only():
    clean_a, n_a = fraud_counts("prior", [6, 7])
    clean_b, n_b = fraud_counts("prior", [8, 9])
    hits, n_d = fraud_counts("prior", [10, 11])
    assert hits / n_d > 2 * clean_b / n_b
    same = [[clean_a, n_a - clean_a], [clean_b, n_b - clean_b]]
    assert stats.chi2_contingency(same).pvalue > 0.01
    shifted = [[clean_b, n_b - clean_b], [hits, n_d - hits]]
    assert stats.chi2_contingency(shifted).pvalue < 1e-6
    assert features(drifted("prior", 10)).equals(features(simulate_day(day(10), 20_000)))


def test_concept_drift_changes_the_relation_not_the_features():
    before, after = drifted("concept", 9), drifted("concept", 10)
    assert before.equals(simulate_day(day(9), 20_000))
    assert stats.ks_2samp(before["amount"], after["amount"]).pvalue > 0.01
    assert features(after).equals(features(simulate_day(day(10), 20_000)))
    assert not after.equals(simulate_day(day(10), 20_000))
    hits_before, n_before = fraud_counts("concept", [8, 9], where=EXPENSIVE)
    hits_after, n_after = fraud_counts("concept", [10, 11], where=EXPENSIVE)
    assert hits_after / n_after < 0.3 * hits_before / n_before
    overall_before, total_before = fraud_counts("concept", [8, 9])
    overall_after, total_after = fraud_counts("concept", [10, 11])
    assert 0.6 < (overall_after / total_after) / (overall_before / total_before) < 1.6


def test_gradual_drift_grows_with_days():
    scenario = DriftScenario("gradual", START, ramp_days=10)
    weights = [scenario.weight(day(o)) for o in (9, 10, 14, 19, 30)]
    assert weights == [0.0, 0.1, 0.5, 1.0, 1.0]
    rates = []
    for offsets in ([6, 7, 8, 9], [12, 13, 14, 15], [22, 23, 24, 25]):
        frames = [simulate_day(day(o), 20_000, drift=scenario) for o in offsets]
        rates.append(pl.concat(frames).filter(EXPENSIVE)["is_fraud"].mean())
    assert rates[0] > 1.5 * rates[1] > 1.5 * rates[2]
    assert simulate_day(day(9), 300, drift=scenario).equals(simulate_day(day(9), 300))


def test_no_drift_changes_nothing():
    assert simulate_day(day(12), 300, drift=DriftScenario()).equals(simulate_day(day(12), 300))
    assert DriftScenario().weight(day(12)) == 0.0
    covariate = simulate_day(day(12), 300, drift=DriftScenario("covariate", START))
    assert not covariate.equals(simulate_day(day(12), 300))


def test_write_days_is_atomic_and_equals_simulate_day(tmp_path):
    landing = tmp_path / "landing"
    paths = write_days(landing, start=DAY, days=3, rows_per_day=200, seed=1)
    assert [p.name for p in paths] == [f"transactions_2026-03-0{d}.parquet" for d in (1, 2, 3)]
    assert sorted(p.name for p in landing.iterdir()) == [p.name for p in paths]
    for offset, path in enumerate(paths):
        assert pl.read_parquet(path).equals(simulate_day(day(offset), 200, seed=1))
    again = write_days(tmp_path / "other", start=day(1), days=1, rows_per_day=200, seed=1)
    assert pl.read_parquet(again[0]).equals(pl.read_parquet(paths[1]))


def test_write_days_leaves_nothing_behind_on_failure(tmp_path, monkeypatch):
    def explode(self, target, **kwargs):
        target.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", explode)
    with pytest.raises(OSError, match="disk full"):
        write_days(tmp_path, start=DAY, days=2, rows_per_day=10)
    assert list(tmp_path.iterdir()) == []


def test_bad_scenarios_are_refused():
    with pytest.raises(ValueError, match="unknown drift kind 'sideways'"):
        DriftScenario("sideways", START)
    with pytest.raises(ValueError, match="needs a start day"):
        DriftScenario("covariate")
    with pytest.raises(ValueError, match="ramp_days"):
        DriftScenario("gradual", START, ramp_days=0)
    assert DriftScenario("covariate", START).weight(START) == 1.0
