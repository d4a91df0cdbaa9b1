import datetime as dt

import numpy as np
import polars as pl
import pytest
from scipy import stats

from ct_assets.lib import simulator
from ct_assets.lib.simulator import DRIFTED_SEGMENT, DriftScenario, simulate_day, write_days

DAY = dt.date(2026, 3, 1)
START = DAY + dt.timedelta(days=10)  # first drifted day


def day(offset):
    return DAY + dt.timedelta(days=offset)


def test_deterministic_for_a_seed():
    assert simulate_day(DAY, 500, seed=3).equals(simulate_day(DAY, 500, seed=3))
    assert not simulate_day(DAY, 500, seed=3).equals(simulate_day(DAY, 500, seed=4))
    assert not simulate_day(DAY, 500).equals(simulate_day(day(1), 500))


def test_schema_and_timestamps():
    frame = simulate_day(DAY, 2000)
    assert list(frame.columns) == list(simulator.SIMULATOR_COLUMNS)
    assert frame.schema["ts"] == pl.Datetime("us", "UTC")
    assert frame["transaction_id"].n_unique() == 2000
    assert frame["ts"].min() >= dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    assert frame["ts"].max() < dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
    assert frame["ts"].is_sorted()
    assert set(frame["region"]) == set(simulator.REGIONS)
    assert frame["device_trust_score"].is_between(0, 1).all()
    assert (frame["amount"] > 0).all()
    hours = frame["ts"].dt.hour()
    assert (hours == 12).sum() > 3 * (hours == 3).sum()  # fewer transactions at night


def test_fraud_rate_is_realistic_and_learnable():
    frame = simulate_day(DAY, 60_000)
    rate = frame["is_fraud"].mean()
    assert 0.005 < rate < 0.05
    risky = frame.filter((pl.col("amount") > 150) & (pl.col("device_trust_score") < 0.5))
    assert risky["is_fraud"].mean() > 4 * rate


def amounts(kind, offset, rows=20_000, region=None):
    frame = simulate_day(day(offset), rows, drift=DriftScenario(kind, START))
    if region:
        frame = frame.filter(pl.col("region") == region)
    return frame["amount"].to_numpy()


@pytest.mark.parametrize("kind", ["covariate", "segment"])
def test_covariate_drift_starts_exactly_on_its_day(kind):
    region = DRIFTED_SEGMENT if kind == "segment" else None
    before, earlier = amounts(kind, 9, region=region), amounts(kind, 7, region=region)
    on_start = amounts(kind, 10, region=region)
    assert stats.ks_2samp(before, earlier).pvalue > 0.01
    assert stats.ks_2samp(on_start, before).pvalue < 1e-6


def test_segment_drift_leaves_other_regions_alone():
    before, after = amounts("segment", 9, region="north"), amounts("segment", 10, region="north")
    assert stats.ks_2samp(before, after).pvalue > 0.01


def fraud_counts(kind, offsets, rows=20_000, where=None):
    frames = [simulate_day(day(o), rows, drift=DriftScenario(kind, START)) for o in offsets]
    frame = pl.concat(frames)
    if where is not None:
        frame = frame.filter(where)
    return int(frame["is_fraud"].sum()), frame.height


def test_prior_drift_raises_the_fraud_rate_from_its_day_only():
    clean_a, n_a = fraud_counts("prior", [6, 7])
    clean_b, n_b = fraud_counts("prior", [8, 9])
    drifted, n_d = fraud_counts("prior", [10, 11])
    assert drifted / n_d > 2 * clean_b / n_b
    table = [[clean_a, n_a - clean_a], [clean_b, n_b - clean_b]]
    assert stats.chi2_contingency(table).pvalue > 0.01
    shifted = [[clean_b, n_b - clean_b], [drifted, n_d - drifted]]
    assert stats.chi2_contingency(shifted).pvalue < 1e-6
    before, after = amounts("prior", 9), amounts("prior", 10)
    assert stats.ks_2samp(before, after).pvalue > 0.01


def test_concept_drift_changes_the_relation_not_the_features():
    before, after = amounts("concept", 9), amounts("concept", 10)
    assert stats.ks_2samp(before, after).pvalue > 0.01
    expensive = pl.col("amount") > 150
    hits_before, n_before = fraud_counts("concept", [8, 9], where=expensive)
    hits_after, n_after = fraud_counts("concept", [10, 11], where=expensive)
    assert hits_after / n_after < 0.5 * hits_before / n_before
    overall_before, total_before = fraud_counts("concept", [8, 9])
    overall_after, total_after = fraud_counts("concept", [10, 11])
    assert 0.4 < (overall_after / total_after) / (overall_before / total_before) < 2.5


def test_gradual_drift_grows_with_days():
    scenario = DriftScenario("gradual", START, ramp_days=10)
    weights = [scenario.weight(day(o)) for o in (9, 10, 14, 19, 30)]
    assert weights == [0.0, 0.1, 0.5, 1.0, 1.0]
    expensive = pl.col("amount") > 150
    rates = []
    for offsets in ([6, 7, 8, 9], [12, 13, 14, 15], [22, 23, 24, 25]):
        frames = [simulate_day(day(o), 20_000, drift=scenario) for o in offsets]
        rates.append(pl.concat(frames).filter(expensive)["is_fraud"].mean())
    assert rates[0] > rates[1] > rates[2]


def test_no_drift_changes_nothing():
    assert simulate_day(day(12), 300, drift=DriftScenario()).equals(simulate_day(day(12), 300))
    drifted = simulate_day(day(12), 300, drift=DriftScenario("covariate", START))
    assert simulate_day(day(9), 300, drift=DriftScenario("covariate", START)).equals(
        simulate_day(day(9), 300))
    assert not drifted.equals(simulate_day(day(12), 300))


def test_write_days_is_atomic_and_equals_simulate_day(tmp_path):
    paths = write_days(tmp_path / "landing", start=DAY, days=3, rows_per_day=200, seed=1)
    assert [p.name for p in paths] == [f"transactions_2026-03-0{d}.parquet" for d in (1, 2, 3)]
    assert sorted(p.name for p in (tmp_path / "landing").iterdir()) == [p.name for p in paths]
    assert pl.read_parquet(paths[1]).equals(simulate_day(day(1), 200, seed=1))
    again = write_days(tmp_path / "other", start=day(1), days=1, rows_per_day=200, seed=1)
    assert pl.read_parquet(again[0]).equals(pl.read_parquet(paths[1]))


def test_bad_scenarios_are_refused():
    with pytest.raises(ValueError, match="unknown drift kind 'sideways'"):
        DriftScenario("sideways", START)
    with pytest.raises(ValueError, match="needs a start day"):
        DriftScenario("covariate")
    assert np.isclose(DriftScenario("covariate", START).weight(START), 1.0)
