import json
import math

import numpy as np
import pytest

from ct_assets.lib.detectors import PageHinkley, page_hinkley_scan

RNG_SEED = 20260301


def rng(offset=0):
    return np.random.default_rng(RNG_SEED + offset)


PH = {"min_instances": 10, "delta": 0.005, "threshold": 0.05}


def test_page_hinkley_defaults_are_rivers():
    detector = PageHinkley()
    assert (detector.min_instances, detector.delta, detector.threshold, detector.alpha,
            detector.mode) == (30, 0.005, 50.0, 0.9999, "both")


def test_page_hinkley_stays_quiet_on_a_stationary_series():
    series = rng(14).normal(0.05, 0.005, 200)
    assert page_hinkley_scan(series, **PH) == []
    assert page_hinkley_scan(rng(15).normal(0.05, 0.005, 200), **PH) == []


@pytest.mark.parametrize("step", [0.03, -0.03])
def test_page_hinkley_fires_soon_after_a_step(step):
    series = np.concatenate([rng(16).normal(0.05, 0.005, 100),
                             rng(17).normal(0.05 + step, 0.005, 100)])
    alarms = page_hinkley_scan(series, **PH)
    assert alarms and 100 <= alarms[0] <= 104
    up_only = page_hinkley_scan(series, **PH, mode="up")
    assert bool(up_only) == (step > 0)


def test_page_hinkley_resets_after_an_alarm_and_skips_missing_values():
    levels = [0.05] * 60 + [0.09] * 60 + [0.13] * 60
    series = np.asarray(levels) + rng(18).normal(0, 0.003, 180)
    alarms = page_hinkley_scan([*series[:30], None, math.nan, *series[30:]], **PH)
    assert len(alarms) == 2
    assert 62 <= alarms[0] <= 66 and 122 <= alarms[1] <= 126  # +2 for the missing values


def test_page_hinkley_state_round_trips_between_partitions():
    series = np.concatenate([rng(19).normal(0.05, 0.005, 80), rng(20).normal(0.1, 0.005, 40)])
    continuous = PageHinkley(**PH)
    flags = [continuous.update(x) for x in series]
    resumed = PageHinkley(**PH)
    resumed_flags = []
    for x in series:  # one partition at a time, through JSON
        resumed = PageHinkley.from_dict(json.loads(json.dumps(resumed.to_dict())))
        resumed_flags.append(resumed.update(x))
    assert resumed_flags == flags and any(flags)
    assert resumed.to_dict() == continuous.to_dict()
    assert continuous.drift_detected == flags[-1]
    with pytest.raises(ValueError, match="mode"):
        PageHinkley(mode="sideways")


def test_performance_alarm_fires_on_a_rising_error_never_on_an_improvement():
    from ct_assets.lib.monitoring import performance_alarm

    settings = {"min_instances": 5, "delta": 0.01, "threshold": 0.25}
    steady = [0.08, 0.07, 0.09, 0.08, 0.07, 0.08, 0.09, 0.08]
    assert not performance_alarm(steady, **settings)
    assert performance_alarm([*steady, 0.4], **settings)  # fires on the partition that rose
    better = [0.5, 0.48, 0.52, 0.5, 0.49, 0.5, 0.51, 0.05, 0.04]
    assert not performance_alarm(better, **settings)
    assert page_hinkley_scan(better, mode="both", **settings)  # a two-sided test would fire


def test_degradation_compares_the_newest_partitions_with_the_validated_metric(tmp_path):
    from ct_assets.lib.config import config_from_dict
    from ct_assets.lib.monitoring import degradation

    binary = config_from_dict({"dataset": {"source": "simulator"}}, base_dir=tmp_path)
    assert degradation([0.80, 0.93, 0.90, 0.88], 0.92, binary) is None  # the newest three
    assert degradation([0.80, 0.81], 0.92, binary) is None  # …and two are not enough
    reason = degradation([0.93, 0.80, 0.82, 0.84], 0.92, binary)
    assert reason is not None and "0.8200" in reason and "0.9200" in reason
    assert "triggers.max_degradation 0.05" in reason
    assert degradation([0.95, 0.97, 0.96], 0.92, binary) is None  # better never degrades
    assert degradation([0.80, 0.81, 0.82], None, binary) is None  # never validated
    rmse = config_from_dict({"dataset": {"source": "simulator"}, "gate": {"metric": "log_loss"},
                             "triggers": {"max_degradation": 0.1}}, base_dir=tmp_path)
    assert degradation([0.30, 0.31, 0.32], 0.20, rmse) is not None  # lower is better
    assert degradation([0.10, 0.11, 0.12], 0.20, rmse) is None
