"""The cooldown between change-triggered retrains, and the trigger log `ct status` reads."""

from pathlib import Path

import pytest

from ct_assets.lib.config import config_from_dict
from ct_assets.lib.triggers import (
    TriggerLog,
    awaiting_labels,
    cooldown_reason,
    describe_failure,
    followup_due,
    partition_distance,
    regime_partitions,
)


def make_config(cooldown: int = 3, granularity: str = "daily"):
    return config_from_dict({"dataset": {"source": "simulator"},
                             "partitions": {"granularity": granularity},
                             "triggers": {"cooldown": cooldown}}, base_dir=Path("/tmp"))


@pytest.mark.parametrize(("earlier", "later", "distance"), [
    ("2026-01-30", "2026-02-02", 3), ("2026-02-02", "2026-01-30", -3),
    ("2026-02-02", "2026-02-02", 0)])
def test_partition_distance_counts_partitions(earlier, later, distance):
    assert partition_distance(make_config(), earlier, later) == distance


def test_cooldown_skips_events_within_cooldown_partitions_of_the_last_change():
    config = make_config(cooldown=3)
    assert cooldown_reason(config, "2026-02-01", None) is None
    for later in ("2026-01-31", "2026-02-01", "2026-02-02"):
        reason = cooldown_reason(config, later, "2026-01-31")
        assert reason is not None and "triggers.cooldown 3" in reason
    assert "2026-01-31" in cooldown_reason(config, "2026-02-02", "2026-01-31")
    assert cooldown_reason(config, "2026-02-03", "2026-01-31") is None
    assert cooldown_reason(config, "2026-01-20", "2026-01-31") is not None  # already answered
    assert cooldown_reason(make_config(cooldown=0), "2026-01-31", "2026-01-31") is None


def test_a_drift_retrain_waits_for_the_drifted_partitions_labels_unless_overdue():
    def config(delay: int, label_files: bool):
        labels = {"labels": {"landing_dir": "labels"}} if label_files else {}
        return config_from_dict({"dataset": {"source": "simulator", **labels},
                                 "triggers": {"label_delay": delay}}, base_dir=Path("/tmp"))

    landed = ["2026-01-30", "2026-01-31"]
    late = config(delay=1, label_files=True)
    reason = awaiting_labels(late, "2026-01-31", {"2026-01-30"}, landed)
    assert reason is not None and "labels of 2026-01-31" in reason and "0 landed since" in reason
    assert awaiting_labels(late, "2026-01-31", {"2026-01-30", "2026-01-31"}, landed) is None
    # Due a partition later: one more partition without them is still waited for, two are not.
    assert awaiting_labels(late, "2026-01-31", set(), [*landed, "2026-02-01"]) is not None
    assert awaiting_labels(late, "2026-01-31", set(), [*landed, "2026-02-01", "2026-02-02"]
                           ) is None
    # Labels in the data file count as known label_delay partitions later: 0 means at once.
    assert awaiting_labels(config(delay=0, label_files=False), "2026-01-31", set(), landed
                           ) is None
    assert awaiting_labels(config(delay=1, label_files=False), "2026-01-31", set(), landed
                           ) is not None
    assert awaiting_labels(config(delay=0, label_files=True), "2026-01-31", set(), landed
                           ) is not None
    assert awaiting_labels(late, "?", set(), landed) is None  # no partition: nothing to wait on
    at_once = config_from_dict({"dataset": {"source": "simulator",
                                            "labels": {"landing_dir": "labels"}},
                                "triggers": {"drift_waits_for_labels": False}},
                               base_dir=Path("/tmp"))
    assert awaiting_labels(at_once, "2026-01-31", set(), landed) is None  # switched off


def test_weekly_cooldown_counts_weeks():
    config = make_config(cooldown=2, granularity="weekly")
    assert cooldown_reason(config, "2026-01-12", "2026-01-05") is not None
    assert cooldown_reason(config, "2026-01-19", "2026-01-05") is None


def test_trigger_log_keeps_every_decision_and_the_latest_per_trigger(tmp_path):
    log = TriggerLog(tmp_path)
    assert log.entries() == [] and log.latest() == {}
    log.record("drift_sensor", "launched", "2026-01-31", "drift failed for 2026-01-31")
    log.record("drift_sensor", "skipped", "2026-02-01", "cooldown: …")
    log.record("performance_sensor", "skipped", "2026-02-01", "cooldown: …")
    with log.path.open("a", encoding="utf-8") as handle:
        handle.write('{"torn')  # a writer killed mid-line loses only that line
    assert [e["decision"] for e in log.entries()] == ["launched", "skipped", "skipped"]
    assert log.latest()["drift_sensor"]["partition"] == "2026-02-01"


def test_one_followup_is_due_once_a_change_of_concept_can_be_learned_alone():
    config = make_config()  # training.holdout 5: six labelled regime partitions are needed
    days = [f"2026-02-{day:02d}" for day in range(1, 15)]
    labelled_until = lambda last: [d for d in days if d <= last]  # noqa: E731
    # The model answered a concept change at Feb 5 having learned one partition of it.
    assert not followup_due(config, "concept", "2026-02-05", 1, labelled_until("2026-02-09"))
    assert followup_due(config, "concept", "2026-02-05", 1, labelled_until("2026-02-10"))
    # Not after a change of inputs, not once the model learned enough of the regime, not
    # without a regime.
    assert not followup_due(config, "inputs", "2026-02-05", 1, days)
    assert not followup_due(config, "concept", "2026-02-05", 6, days)
    assert not followup_due(config, "concept", None, 0, days)


def test_regime_partitions_counts_the_fitted_partitions_of_the_regime():
    manifest = {"regime_start": "2026-02-05", "training_info": {"refit": {"partitions": [
        "2026-02-03", "2026-02-04", "2026-02-05", "2026-02-06"]}}}
    assert regime_partitions(manifest) == 2
    assert regime_partitions({"regime_start": None}) == 0


def test_a_failure_is_described_by_its_rule_or_by_what_tripped():
    ruled = describe_failure("feature_drift", "2026-01-15",
                             {"rule": "drifted share 0.50 >= drift.share 0.5 (amount, channel); "})
    assert ruled == ("feature_drift failed for 2026-01-15: drifted share 0.50 >= drift.share "
                     "0.5 (amount, channel)")
    drift = describe_failure("feature_drift", "2026-01-15", {
        "drifted_features": "amount, channel", "observed": 0.6, "threshold": 0.5,
        "target_drifted": True, "segments_drifted": "none"})
    assert drift == ("feature_drift failed for 2026-01-15; drifted features: amount, channel; "
                     "drifted share 0.60 (threshold 0.50); target drifted")
    performance = describe_failure("performance", "2026-01-20", {
        "metric": "roc_auc", "observed": 0.65, "threshold": 0.7, "page_hinkley_alarm": True,
        "degradation": "none"})
    assert performance == ("performance failed for 2026-01-20; roc_auc 0.6500 (floor 0.7000); "
                           "Page-Hinkley alarm on the error series")
