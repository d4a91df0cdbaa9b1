"""The time partitions of every partitioned asset, from `partitions` in `ct.yaml`."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from ct_assets.lib.config import Config


def build_partitions(config: Config) -> dg.TimeWindowPartitionsDefinition:
    """UTC time partitions starting at `partitions.start`, including the current period.

    An unset `partitions.start` was resolved when the config was loaded: for the simulator,
    the first simulated day (`PartitionsConfig`), so the UI shows no empty years before the
    data; reading that small record is all this costs, never the landed files.
    `end_offset=1` makes the period in progress a partition too: data for today lands today.
    Weekly partitions start on Monday, as polars' `truncate("1w")` does. A `partitions.start`
    inside a week or month starts the partitions at that week's Monday or month's 1st, so every
    row ingestion accepts (timestamp >= start) falls in a partition that exists.
    """
    first = config.partitions.start
    granularity = config.partitions.granularity
    if granularity == "weekly":
        first -= dt.timedelta(days=first.weekday())
    elif granularity == "monthly":
        first = first.replace(day=1)
    start = first.isoformat()
    if granularity == "hourly":
        return dg.HourlyPartitionsDefinition(start_date=f"{start}-00:00", end_offset=1)
    if granularity == "weekly":
        return dg.WeeklyPartitionsDefinition(start_date=start, day_offset=1, end_offset=1)
    if granularity == "monthly":
        return dg.MonthlyPartitionsDefinition(start_date=start, end_offset=1)
    return dg.DailyPartitionsDefinition(start_date=start, end_offset=1)
