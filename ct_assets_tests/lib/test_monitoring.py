"""Which features drift monitoring watches."""

from ct_assets.lib.config import config_from_dict
from ct_assets.lib.monitoring import monitored_features


def test_monitored_features_leave_out_exactly_the_per_partition_constants(tmp_path):
    dataset = {"source": "files", "landing_dir": "landing", "timestamp": "ts", "target": "label",
               "columns": {"ts": "timestamp", "shadow_price": "float", "hour_count": "int",
                           "amount": "float", "recent_mean_gap": "float", "label": "int"}}
    daily = config_from_dict({"dataset": dataset,
                              "features": {"relative_to_recent": ["amount"]}},
                             base_dir=tmp_path)
    watched = monitored_features(daily)
    # Names that merely contain `dow_`, `hour_` or `recent_mean` are data, and are watched.
    for name in ("shadow_price", "hour_count", "recent_mean_gap", "amount", "amount_vs_recent",
                 "hour_sin", "hour_cos"):
        assert name in watched, name
    for name in ("dow_sin", "dow_cos", "amount_recent_mean"):  # constant within a day
        assert name not in watched, name
    hourly = config_from_dict({"dataset": dataset, "partitions": {"granularity": "hourly"}},
                              base_dir=tmp_path)
    assert "hour_sin" not in monitored_features(hourly)
    assert "hour_count" in monitored_features(hourly)
