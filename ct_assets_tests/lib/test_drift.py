import datetime as dt
import json
import math

import numpy as np
import polars as pl
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from ct_assets.lib import drift
from ct_assets.lib.config import DriftConfig
from ct_assets.lib.drift import (
    ReferenceProfile,
    compute_drift,
    drift_summary,
    fit_reference,
)
from ct_assets.lib.simulator import DriftScenario, simulate_day

RNG_SEED = 20260301
SIM_FEATURES = ["region", "merchant_category", "channel", "amount", "customer_age",
                "account_age_days", "distance_from_home_km", "txn_count_24h",
                "device_trust_score"]


def rng(offset=0):
    return np.random.default_rng(RNG_SEED + offset)


def one(reference, current, method, **kwargs):
    """The single report row of column `x` with a given method."""
    report = compute_drift(pl.DataFrame({"x": reference}) if not isinstance(
        reference, ReferenceProfile) else reference, pl.DataFrame({"x": current}),
        config=DriftConfig(methods=method), **kwargs)
    assert report.height == 1
    return report.row(0, named=True)


def by_feature(report):
    return {row["feature"]: row for row in report.iter_rows(named=True)}


# --- agreement with scipy --------------------------------------------------------------------

KS_CASES = {
    "normal-small-exact-p": lambda g: (g.normal(size=500), g.normal(0.1, 1, 300)),
    "normal-equal-sizes": lambda g: (g.normal(size=5000), g.normal(0.05, 1, 5000)),
    "integer-ties": lambda g: (g.integers(0, 10, 2000).astype(float),
                               g.integers(0, 11, 700).astype(float)),
    "rounded-ties-asymptotic": lambda g: (np.round(g.normal(size=30000), 1),
                                          np.round(g.normal(0.02, 1, 12000), 2)),
    "exponential-large": lambda g: (g.exponential(size=60000), g.exponential(1.05, 20000)),
    "uniform-tiny": lambda g: (g.uniform(size=12), g.uniform(0.3, 1.3, 9)),
    "current-below-reference": lambda g: (g.normal(size=200), g.normal(-10, 1, 50)),
    "current-between-two-values": lambda g: (np.arange(10.0), np.full(5, 0.5)),
    "current-above-reference": lambda g: (g.integers(0, 5, 300).astype(float),
                                          g.uniform(4.5, 6, 40)),
}


@pytest.mark.parametrize("case", sorted(KS_CASES))
def test_ks_matches_scipy_on_an_exact_profile(case):
    reference, current = KS_CASES[case](rng(len(case)))
    row = one(reference, current, "ks")
    expected = stats.ks_2samp(reference, current)
    assert row["method"] == "ks"
    assert row["statistic"] == pytest.approx(expected.statistic, abs=1e-12)
    assert row["p_value"] == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-300)
    assert row["drifted"] == (expected.pvalue < 0.05)


def test_ks_on_a_quantile_profile_is_within_1e_3_of_scipy():
    g = rng(1)
    for reference, current in [
        (g.normal(size=250_000), g.normal(0.02, 1, 150_000)),
        (g.lognormal(1.6, 1.2, 250_000), g.lognormal(1.6, 1.2, 40_000) * 1.1),
        (np.concatenate([np.zeros(100_000), g.normal(size=150_000)]), g.normal(size=50_000)),
    ]:
        profile = fit_reference(pl.DataFrame({"x": reference}))
        assert not profile.columns["x"].exact
        row = one(profile, current, "ks")
        expected = stats.ks_2samp(reference, current)
        assert abs(row["statistic"] - expected.statistic) < 1e-3


@pytest.mark.parametrize("exact", [True, False])
def test_wasserstein_matches_scipy_divided_by_reference_std(exact):
    g = rng(2)
    size = 20_000 if exact else 300_000
    for reference, current in [
        (g.normal(size=size), g.normal(0.2, 1.1, 7_000)),
        (g.lognormal(1.6, 1.2, size), g.lognormal(1.6, 1.2, 9_000) * 1.8),
        (np.round(g.gamma(2.0, 3.0, size)), np.round(g.gamma(2.0, 3.3, 5_000))),
    ]:
        profile = fit_reference(pl.DataFrame({"x": reference}))
        assert profile.columns["x"].exact == (exact or np.unique(reference).size <= 100_000)
        row = one(profile, current, "wasserstein")
        expected = stats.wasserstein_distance(reference, current) / np.std(reference)
        assert row["statistic"] == pytest.approx(expected, rel=1e-9 if exact else 1e-3)


def right_closed_counts(values, edges):
    return np.bincount(np.searchsorted(edges, values, side="left"), minlength=edges.size + 1)


def test_jensen_shannon_matches_scipy_distance_on_the_same_bins():
    g = rng(3)
    reference, current = g.normal(size=5000), g.normal(0.4, 1.2, 3000)
    profile = fit_reference(pl.DataFrame({"x": reference}))
    edges = profile.columns["x"].edges
    assert edges.size == drift.DEFAULT_BINS - 1
    assert np.array_equal(profile.columns["x"].edge_counts, right_closed_counts(reference, edges))
    assert np.array_equal(profile.columns["x"].edge_counts, [500] * 10)  # the deciles
    row = one(profile, current, "jensen_shannon")
    expected = jensenshannon(right_closed_counts(reference, edges),
                             right_closed_counts(current, edges))
    assert row["statistic"] == pytest.approx(expected, rel=1e-9)  # the distance, natural log
    assert row["p_value"] is None

    cats_ref = g.choice(["a", "b", "c", "d"], 4000, p=[0.4, 0.3, 0.2, 0.1])
    cats_cur = g.choice(["a", "b", "c", "d"], 2500, p=[0.25, 0.3, 0.25, 0.2])
    row = one(cats_ref, cats_cur, "jensen_shannon")
    counts = [[np.sum(sample == v) for v in "abcd"] for sample in (cats_ref, cats_cur)]
    assert row["statistic"] == pytest.approx(jensenshannon(*counts), rel=1e-9)
    assert row["drifted"] == (row["statistic"] >= 0.1)


def test_chisquare_is_the_test_of_homogeneity_and_matches_scipy():
    g = rng(4)
    cats_ref = g.choice(list("abcde"), 3000, p=[0.3, 0.25, 0.2, 0.15, 0.1])
    cats_cur = g.choice(list("abcde"), 2000, p=[0.28, 0.25, 0.2, 0.15, 0.12])
    row = one(cats_ref, cats_cur, "chisquare")
    table = np.array([[np.sum(sample == v) for v in "abcde"] for sample in (cats_ref, cats_cur)])
    expected = stats.chi2_contingency(table, correction=False)
    assert row["statistic"] == pytest.approx(expected.statistic, rel=1e-9)
    assert row["p_value"] == pytest.approx(expected.pvalue, rel=1e-9)

    # With a reference much larger than the current sample it is scipy.stats.chisquare's
    # goodness of fit (Evidently's test) against the reference shares.
    big_ref = g.choice(list("abcde"), 2_000_000, p=[0.3, 0.25, 0.2, 0.15, 0.1])
    small_cur = g.choice(list("abcde"), 2_000, p=[0.27, 0.25, 0.2, 0.15, 0.13])
    row = one(big_ref, small_cur, "chisquare")
    ref_counts = np.array([np.sum(big_ref == v) for v in "abcde"])
    cur_counts = np.array([np.sum(small_cur == v) for v in "abcde"])
    gof = stats.chisquare(cur_counts, ref_counts * cur_counts.sum() / ref_counts.sum())
    assert row["statistic"] == pytest.approx(gof.statistic, rel=2e-3)
    assert row["p_value"] == pytest.approx(gof.pvalue, rel=2e-2)


def test_psi_matches_a_hand_computation():
    reference = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    current = ["a"] * 40 + ["b"] * 30 + ["c"] * 25 + ["new"] * 5
    row = one(reference, current, "psi")
    eps = drift.PSI_EPSILON
    hand = ((0.40 - 0.50) * math.log(0.40 / 0.50) + 0.0
            + (0.25 - 0.20) * math.log(0.25 / 0.20) + (0.05 - eps) * math.log(0.05 / eps))
    assert row["statistic"] == pytest.approx(hand, rel=1e-12)
    assert row["drifted"] is True  # 0.061 + 0.011 + 0.0 + the unseen category
    assert "psi band: act" in row["note"]
    assert "1 unseen categories" in row["note"]

    reference = ["a"] * 50 + ["b"] * 50
    row = one(reference, ["a"] * 55 + ["b"] * 45, "psi")
    assert row["statistic"] == pytest.approx(
        0.05 * math.log(0.55 / 0.5) - 0.05 * math.log(0.45 / 0.5), rel=1e-12)
    assert row["drifted"] is False and "psi band: stable" in row["note"]


# --- behaviour -------------------------------------------------------------------------------

NUMERIC_METHODS = ["ks", "wasserstein", "jensen_shannon", "psi", "chisquare"]


def test_same_distribution_is_not_drift_for_any_method():
    # Distances never cross their threshold; p-value tests reject about 5 % of the time (they
    # are calibrated: a single sample may legitimately have p < 0.05).
    g = rng(5)
    reference = pl.DataFrame({"x": g.normal(size=50_000),
                              "c": g.choice(list("abcdef"), 50_000)})
    profile = fit_reference(reference)
    rejections = {method: 0 for method in NUMERIC_METHODS}
    p_values = {method: [] for method in drift.P_VALUE_METHODS}
    replicates = 60
    for _ in range(replicates):
        current = pl.DataFrame({"x": g.normal(size=5_000),
                                "c": g.choice(list("abcdef"), 5_000)})
        for method in NUMERIC_METHODS:
            rows = by_feature(compute_drift(profile, current, config=DriftConfig(methods=method)))
            assert rows["x"]["method"] == method
            checked = [rows["x"]]
            if method in drift.CATEGORICAL_METHODS:
                assert rows["c"]["method"] == method
                checked.append(rows["c"])
            for row in checked:
                rejections[method] += row["drifted"]
                if method in drift.P_VALUE_METHODS:
                    p_values[method].append(row["p_value"])
    for method in ("wasserstein", "jensen_shannon", "psi"):
        assert rejections[method] == 0, method
    assert rejections["ks"] <= 0.12 * replicates
    assert rejections["chisquare"] <= 0.12 * 2 * replicates
    for method, values in p_values.items():  # roughly uniform under no drift
        assert 0.35 < np.mean(values) < 0.65, method


def test_a_shifted_mean_is_drift():
    g = rng(6)
    reference = g.normal(10, 2, 20_000)
    small_shift = g.normal(10 + 0.3 * 2, 2, 5_000)
    for method in ("ks", "wasserstein", "chisquare"):
        assert one(reference, small_shift, method)["drifted"] is True, method
    # PSI and JS on the deciles are less sensitive: ~0.08 and ~0.10 at 0.3 std; 0.5 std is clear.
    large_shift = g.normal(10 + 0.5 * 2, 2, 5_000)
    for method in ("psi", "jensen_shannon"):
        assert one(reference, large_shift, method)["drifted"] is True, method
    assert one(reference, small_shift, "wasserstein")["statistic"] == pytest.approx(0.3, abs=0.03)


@pytest.mark.parametrize("reference_rows", [800, 20_000])
def test_a_categorical_shift_is_drift(reference_rows):
    g = rng(7)
    reference = g.choice(["pos", "online", "atm"], reference_rows, p=[0.6, 0.32, 0.08])
    current = g.choice(["pos", "online", "atm"], 3000, p=[0.4, 0.53, 0.07])
    row = one(reference, current, "auto")
    assert row["method"] == ("chisquare" if reference_rows <= 1000 else "jensen_shannon")
    assert row["drifted"] is True


def test_unseen_categories_are_their_own_bins():
    reference = ["a"] * 600 + ["b"] * 400
    current = ["a"] * 300 + ["b"] * 200 + ["zzz"] * 100 + [None] * 50
    for method in ("chisquare", "jensen_shannon", "psi"):
        row = one(reference, current, method)
        assert math.isfinite(row["statistic"]) and row["statistic"] > 0
        assert row["drifted"] is True, method
        assert "1 unseen categories" in row["note"]
        assert row["current_rows"] == 600
        assert row["null_share_current"] == pytest.approx(50 / 650)
    # Only an unseen category's share drifts: JS of (0.6, 0.4, 0) vs (0.5, 0.333, 0.167).
    js = one(reference, current, "jensen_shannon")["statistic"]
    assert js == pytest.approx(jensenshannon([0.6, 0.4, 0], [3 / 6, 2 / 6, 1 / 6]), rel=1e-12)


def test_degenerate_columns_give_defined_rows_with_notes():
    reference = pl.DataFrame({
        "num": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        "const": [7.0] * 6,
        "nulls": pl.Series([None] * 6, dtype=pl.Float64),
        "cat": ["a", "b", "a", "b", "a", "b"],
        "gone": [1, 2, 3, 4, 5, 6],
        "nested": [[1], [2], [3], [4], [5], [6]],
    })
    profile = fit_reference(reference)
    cases = {
        "empty current": reference.clear(),
        "all null current": reference.select(pl.all().map_batches(lambda s: s.clear(6))),
        "tiny": reference.head(1),
    }
    for name, current in cases.items():
        current = current.drop("gone")
        report = compute_drift(profile, current)
        assert report.columns == list(drift.REPORT_SCHEMA), name
        assert report.schema == pl.Schema(drift.REPORT_SCHEMA)
        rows = by_feature(report)
        assert set(rows) == set(reference.columns)
        assert not any(row["drifted"] for row in rows.values()), name
        assert all(row["statistic"] is None and row["note"] for row in rows.values()), name
        assert rows["gone"]["note"] == "missing from current"
        assert rows["nulls"]["note"] == "all null in reference"
        assert rows["nested"]["kind"] == "unsupported"
        assert rows["nested"]["note"].startswith("unsupported dtype")
    rows = by_feature(compute_drift(profile, cases["empty current"]))
    assert rows["num"]["note"] == "no current rows"
    rows = by_feature(compute_drift(profile, cases["all null current"]))
    assert rows["num"]["note"] == "all null in current"
    assert rows["cat"]["null_share_current"] == 1.0
    rows = by_feature(compute_drift(profile, cases["tiny"]))
    assert rows["num"]["note"] == "too few rows (reference 6, current 1)"
    assert rows["nulls"]["null_share_reference"] == 1.0


def test_nan_and_infinite_values_are_missing_and_reported():
    reference = pl.DataFrame({"x": [0.0, 1.0, 2.0, 3.0, None, float("nan")]})
    current = pl.DataFrame({"x": [0.0, 1.0, float("inf"), 2.0, 3.0, float("-inf"), None, 2.5]})
    row = compute_drift(reference, current, config=DriftConfig(methods="ks")).row(0, named=True)
    assert row["reference_rows"] == 4 and row["current_rows"] == 5
    assert row["null_share_reference"] == pytest.approx(2 / 6)
    assert row["null_share_current"] == pytest.approx(3 / 8)
    expected = stats.ks_2samp([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0, 2.5])
    assert row["statistic"] == pytest.approx(expected.statistic)


def test_a_constant_reference_gets_an_absolute_distance_and_a_note():
    g = rng(8)
    current = g.normal(7.0, 1.0, 400)
    row = one(np.full(2000, 7.0), current, "wasserstein")
    assert row["statistic"] == pytest.approx(np.mean(np.abs(current - 7.0)), rel=1e-9)
    assert row["drifted"] is True
    assert row["note"] == "constant reference: absolute distance"
    assert one(np.full(2000, 7.0), np.full(300, 7.0), "wasserstein")["statistic"] == 0.0
    ks = one(np.full(2000, 7.0), current, "ks")
    assert ks["statistic"] == pytest.approx(stats.ks_2samp(np.full(2000, 7.0), current).statistic)
    # auto: a constant reference and a constant current are discrete: JS on the values.
    row = one(np.full(2000, 7.0), np.full(300, 7.0), "auto")
    assert row["method"] == "jensen_shannon" and row["statistic"] == 0.0 and not row["drifted"]


def test_auto_picks_p_value_tests_up_to_1000_reference_rows_and_distances_above():
    g = rng(9)
    current = pl.DataFrame({"num": g.normal(size=500), "few": g.integers(0, 3, 500),
                            "cat": g.choice(list("xyz"), 500)})
    for rows, numeric, discrete, categorical in [
        (1000, "ks", "chisquare", "chisquare"),
        (1001, "wasserstein", "jensen_shannon", "jensen_shannon"),
    ]:
        reference = pl.DataFrame({"num": g.normal(size=rows), "few": g.integers(0, 3, rows),
                                  "cat": g.choice(list("xyz"), rows)})
        methods = dict(compute_drift(reference, current).select("feature", "method").iter_rows())
        assert methods == {"num": numeric, "few": discrete, "cat": categorical}
    # Null values do not count: 1500 rows of which 600 null is a small reference.
    reference = pl.DataFrame({"num": [*g.normal(size=900), *[None] * 600]})
    assert compute_drift(reference, current.select("num"))["method"][0] == "ks"
    # Integer codes named categorical are categories.
    reference = pl.DataFrame({"code": g.integers(0, 20, 5000)})
    report = compute_drift(reference, pl.DataFrame({"code": g.integers(0, 20, 300)}),
                           categorical=["code"])
    assert report.row(0, named=True)["kind"] == "categorical"


def test_config_methods_and_thresholds():
    g = rng(10)
    reference = pl.DataFrame({"a": g.normal(size=3000), "b": g.normal(size=3000),
                              "c": g.choice(list("pq"), 3000)})
    current = pl.DataFrame({"a": g.normal(0.15, 1, 1000), "b": g.normal(size=1000),
                            "c": g.choice(list("pq"), 1000)})
    report = by_feature(compute_drift(reference, current, config=DriftConfig(
        methods={"a": "ks", "numeric": "psi", "categorical": "chisquare"})))
    assert [report[f]["method"] for f in "abc"] == ["ks", "psi", "chisquare"]
    # One method for all: applied where it applies, auto elsewhere with a note.
    report = by_feature(compute_drift(reference, current, config=DriftConfig(methods="ks")))
    assert report["c"]["method"] == "jensen_shannon"
    assert report["c"]["note"] == "ks does not apply to categorical columns: auto used"
    default = by_feature(compute_drift(reference, current))["a"]
    assert default["threshold"] == 0.1 and default["drifted"] is True
    stricter = by_feature(compute_drift(reference, current, config=DriftConfig(
        thresholds={"wasserstein": default["statistic"] + 0.01})))["a"]
    assert stricter["drifted"] is False
    with pytest.raises(ValueError, match="unknown drift method"):
        compute_drift(reference, current, config=DriftConfig(methods="energy"))
    with pytest.raises(ValueError, match="does not apply"):
        compute_drift(reference, current, config=DriftConfig(methods={"c": "ks"}))


def test_temporal_and_boolean_columns():
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    reference = pl.DataFrame({
        "ts": pl.datetime_range(start, start + dt.timedelta(hours=99), "1h", eager=True),
        "flag": [True, False] * 50,
    })
    current = reference.with_columns(pl.col("ts") + dt.timedelta(days=30))
    rows = by_feature(compute_drift(reference, current))
    assert rows["ts"]["kind"] == "numeric" and rows["ts"]["drifted"] is True
    assert rows["flag"]["kind"] == "categorical" and rows["flag"]["drifted"] is False


# --- the profile -------------------------------------------------------------------------------


def frames(rows, seed):
    g = rng(seed)
    frame = pl.DataFrame({
        "amount": g.lognormal(3, 1, rows),
        "count": g.poisson(2, rows),
        "few": g.integers(0, 3, rows),
        "channel": g.choice(["pos", "online", "atm"], rows, p=[0.6, 0.3, 0.1]),
        "mostly_null": pl.Series([None] * (rows - 3) + [1.0, 2.0, 3.0]),
    })
    return frame


@pytest.mark.parametrize("rows", [900, 5_000, 150_000])
def test_profile_round_trips_through_json_and_equals_the_frame_path(rows):
    reference = frames(rows, 11)
    current = frames(4_000, 12).with_columns(pl.col("amount") * 1.2)
    profile = fit_reference(reference)
    assert profile.columns["amount"].exact == (rows <= drift.MAX_EXACT_ROWS)
    text = profile.to_json()
    json.loads(text)  # plain JSON, no pickle
    restored = ReferenceProfile.from_json(text)
    assert restored.to_json() == text
    assert restored.features == reference.columns
    for config in (None, DriftConfig(methods="psi"), DriftConfig(methods={"numeric": "ks"})):
        from_frame = compute_drift(reference, current, config=config)
        assert compute_drift(profile, current, config=config).equals(from_frame)
        assert compute_drift(restored, current, config=config).equals(from_frame)
    with pytest.raises(ValueError, match="not a"):
        ReferenceProfile.from_json('{"format": "other"}')


def test_profile_of_a_large_reference_is_small_and_fast_to_use():
    g = rng(13)
    reference = pl.DataFrame({"x": g.normal(size=400_000)})
    profile = fit_reference(reference)
    column = profile.columns["x"]
    assert not column.exact
    assert column.grid.size <= 2 * drift.DEFAULT_QUANTILES + 2
    assert column.cum_le[-1] == 400_000
    assert len(profile.to_json()) < 2_000_000


# --- the simulator -----------------------------------------------------------------------------


def test_simulated_covariate_drift_is_found_and_a_clean_day_is_not():
    start = dt.date(2026, 3, 10)
    scenario = DriftScenario("covariate", start)
    reference = pl.concat([simulate_day(start - dt.timedelta(days=k), 4000, drift=scenario)
                           for k in range(4, 7)]).select(SIM_FEATURES)
    profile = fit_reference(reference)
    config = DriftConfig()

    clean = compute_drift(profile, simulate_day(start - dt.timedelta(days=1), 4000,
                                                drift=scenario).select(SIM_FEATURES))
    summary = drift_summary(clean, share=config.share)
    assert summary["dataset_drifted"] is False
    assert summary["drifted_features"] == []

    drifted = compute_drift(profile, simulate_day(start, 4000, drift=scenario)
                            .select(SIM_FEATURES))
    rows = by_feature(drifted)
    for feature in ("amount", "distance_from_home_km", "device_trust_score", "channel"):
        assert rows[feature]["drifted"] is True, feature
    for feature in ("region", "merchant_category", "customer_age", "account_age_days"):
        assert rows[feature]["drifted"] is False, feature
    summary = drift_summary(drifted, share=config.share)
    assert summary["dataset_drifted"] is True
    assert "amount" in summary["drifted_features"]


def test_drift_summary_share_and_critical_features():
    report = pl.DataFrame({
        "feature": ["a", "b", "c", "d"], "drifted": [True, False, False, False],
        "statistic": [0.5, 0.01, 0.02, None],
    })
    summary = drift_summary(report, share=0.5)
    assert summary["drifted_features"] == ["a"] and summary["n_drifted"] == 1
    assert summary["tested_features"] == 3 and summary["untested_features"] == ["d"]
    assert summary["drifted_share"] == pytest.approx(1 / 3)
    assert summary["dataset_drifted"] is False
    assert drift_summary(report, share=0.3)["dataset_drifted"] is True
    critical = drift_summary(report, share=0.9, critical=["a", "b"])
    assert critical["critical_drifted"] == ["a"] and critical["dataset_drifted"] is True
    assert drift_summary(report.clear(), share=0.5)["dataset_drifted"] is False
