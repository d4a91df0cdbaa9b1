"""Why a monitoring check judged a partition: the rules named, the evidence tabled."""

from pathlib import Path

import polars as pl

from ct_assets.lib.config import config_from_dict
from ct_assets.lib.monitoring import drift_verdict
from ct_assets.lib.monitoring_verdicts import (
    EVIDENCE_COLUMNS,
    drift_history,
    drift_rules,
    drifted_feature_rows,
    performance_rules,
)

CONFIG = config_from_dict({"dataset": {"source": "simulator"},
                           "partitions": {"start": "2026-01-01"},
                           "drift": {"critical": ["amount"]},
                           "triggers": {"min_performance": 0.7, "max_degradation": 0.05}},
                          base_dir=Path("."))
TARGET, SEGMENT = CONFIG.dataset.target, CONFIG.dataset.segment


def report(rows: list[tuple[str, str, str, float, float, float | None, bool]]) -> pl.DataFrame:
    """A drift report from (segment, feature, method, statistic, threshold, p_value, drifted)."""
    return pl.DataFrame(rows, schema=["segment", "feature", "method", "statistic", "threshold",
                                      "p_value", "drifted"], orient="row")


def test_a_quiet_partition_trips_no_rule_and_has_no_evidence():
    quiet = report([("all", "amount", "wasserstein", 0.01, 0.1, None, False),
                    ("all", "channel", "chisquare", 3.0, 0.05, 0.4, False),
                    ("all", TARGET, "chisquare", 0.5, 0.001, 0.5, False)])
    assert drift_rules(quiet, drift_verdict(quiet, CONFIG), CONFIG) == []
    assert drifted_feature_rows(quiet) == []


def test_each_drift_rule_is_named_with_its_setting_and_evidence():
    drifted = report([
        ("all", "amount", "wasserstein", 0.3, 0.1, None, True),
        ("all", "channel", "chisquare", 40.0, 0.05, 1e-6, True),
        ("all", "customer_age", "wasserstein", 0.02, 0.1, None, False),
        ("all", TARGET, "chisquare", 20.0, 0.001, 1e-5, True),
        ("north", "amount", "wasserstein", 0.2, 0.1, None, True),
        ("north", "channel", "chisquare", 1.0, 0.05, 0.6, False),
    ])
    verdict = drift_verdict(drifted, CONFIG)
    rules = drift_rules(drifted, verdict, CONFIG)
    assert rules[0] == ("drifted share 0.67 ≥ drift.share 0.5 (2 of 3 features: amount, "
                        "channel)")
    assert rules[1] == "critical feature amount drifted (drift.critical)"
    assert rules[2] == (f"target {TARGET} drifted: chisquare p-value 1e-05 < "
                        "drift.target_alpha 0.001")
    assert rules[3].startswith(f"segment {SEGMENT}=north: drifted share 0.50 ≥ "
                               "drift.segment_share 0.3")
    evidence = drifted_feature_rows(drifted)
    assert [(row["segment"], row["feature"]) for row in evidence] == [
        ("all", "amount"), ("all", "channel"), ("all", TARGET), ("north", "amount")]
    assert list(evidence[1]) == list(EVIDENCE_COLUMNS)
    assert evidence[1]["p_value"] == 1e-6 and evidence[0]["p_value"] is None


def test_performance_rules_name_the_floor_and_the_degradation():
    fine = performance_rules(0.9, [0.1] * 6, [0.9] * 6, 0.9, CONFIG)
    assert fine["rules"] == [] and not fine["below_floor"]
    worse = performance_rules(0.6, [0.1, 0.1, 0.1, 0.2, 0.3, 0.4], [0.9, 0.9, 0.9, 0.8, 0.7, 0.6],
                              0.9, CONFIG)
    assert worse["below_floor"]
    assert worse["rules"][0] == ("floor: roc_auc 0.6000 is worse than "
                                 "triggers.min_performance 0.7")
    assert worse["rules"][-1].startswith("degradation: roc_auc 0.7000 over the last 3")
    assert "triggers.max_degradation 0.05" in worse["rules"][-1]


def test_a_page_hinkley_alarm_names_the_series_its_value_and_its_settings():
    errors = [0.05] * 20 + [0.9]  # 20 quiet partitions, then the error jumps
    rules = performance_rules(0.75, errors, [0.95] * 20 + [0.75], None, CONFIG)
    assert rules["page_hinkley_alarm"] and not rules["below_floor"]
    assert rules["rules"] == [
        "Page-Hinkley: the model's error series (roc_auc turned so that larger is worse, 21 "
        "measured partitions) rose at this partition, roc_auc 0.7500 (drift.page_hinkley delta "
        "0.01, threshold 0.25)"]
    quiet = performance_rules(0.95, [0.05] * 21, [0.95] * 21, None, CONFIG)
    assert not quiet["page_hinkley_alarm"] and quiet["rules"] == []


def test_drift_history_gives_each_partitions_verdict_and_its_most_drifted_features_first():
    quiet = report([("all", "amount", "wasserstein", 0.01, 0.1, None, False),
                    ("all", "channel", "chisquare", 3.0, 0.05, 0.4, False)])
    loud = report([("all", "amount", "wasserstein", 0.15, 0.1, None, True),  # 1.5 times its bound
                   ("all", "channel", "chisquare", 90.0, 0.05, 1e-9, True),  # p far below
                   ("all", "hour", "wasserstein", 0.5, 0.1, None, True),  # 5 times its bound
                   ("all", TARGET, "chisquare", 20.0, 0.001, 1e-5, True),  # the target: no
                   ("north", "distance_km", "wasserstein", 9.0, 0.1, None, True)])  # a segment
    rows = pl.concat([quiet.with_columns(pl.lit("2026-01-02").alias("day")),
                      loud.with_columns(pl.lit("2026-01-03").alias("day")),
                      quiet.with_columns(pl.lit("2026-01-01").alias("day"))])
    history = drift_history(rows, CONFIG, "day", top=2)
    assert [day["partition"] for day in history] == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert [day["drifted"] for day in history] == [False, False, True]
    assert history[0]["top_features"] == [] and history[0]["drifted_share"] == 0
    assert history[2]["drifted_share"] == 1.0
    assert history[2]["top_features"] == ["channel", "hour"]  # log(1e-9)/log(0.05) ≈ 6.9 > 5
