"""`landing_sensor` on a real instance: every change of a file's content is a run Dagster launches.

Dagster launches a run key once per sensor; a key that repeats is skipped, so a content that
comes back (X → Y → X) or a file landed again after its removal would leave stale rows behind.
The sensor compares the landing dir with the record `raw_events` keeps of what it ingested, so
what another process ingested (`ct run`, `ct demo`) is not ingested again.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from ct_assets.definitions import build_definitions
from ct_assets.lib.config import Config, config_from_dict
from ct_assets.lib.files import sha256_file
from ct_assets_tests.projects import FILES_CONFIG, FILES_HEADER

HEADER = FILES_HEADER
CONFIG = FILES_CONFIG
X = [HEADER, "a1,2026-01-02T10:00:00,1.5,k1,0", "a2,2026-01-03T11:00:00,2.5,k2,1"]
Y = [HEADER, "a1,2026-01-02T10:00:00,9.5,k1,1", "a2,2026-01-03T11:00:00,8.5,k2,0"]
PAST = int(time.time()) - 3600  # settled: the sensor leaves files younger than 5 s alone
RANGE = ("2026-01-02", "2026-01-03")


@pytest.fixture
def config(tmp_path: Path) -> Config:
    loaded = config_from_dict(CONFIG, base_dir=tmp_path)
    loaded.landing_dir.mkdir(parents=True)
    return loaded


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


def land(config: Config, lines: list[str], mtime_s: int) -> Path:
    path = config.landing_dir / "batch.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.utime(path, ns=(mtime_s * 10**9, mtime_s * 10**9))
    return path


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None
         ) -> dg.SensorExecutionData:
    sensor = defs.resolve_sensor_def("landing_sensor")
    return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor,
                                                        definitions=defs))


def ranges(result: dg.SensorExecutionData) -> list[tuple[str, str]]:
    return [(request.tags["dagster/asset_partition_range_start"],
             request.tags["dagster/asset_partition_range_end"])
            for request in result.run_requests]


def test_x_then_y_then_x_again_gives_three_runs_with_distinct_keys(config, instance):
    defs = build_definitions(config)
    cursor, keys = None, []
    for lines, mtime in ((X, PAST), (Y, PAST + 10), (X, PAST + 20)):
        land(config, lines, mtime)
        result = tick(defs, instance, cursor)
        assert ranges(result) == [RANGE]
        assert result.run_requests[0].asset_selection == [dg.AssetKey("raw_events"),
                                                          dg.AssetKey("features")]
        keys.append(result.run_requests[0].run_key)
        cursor = result.cursor
    assert len(set(keys)) == 3, keys  # the third (X again) is not skipped as launched before
    assert not tick(defs, instance, cursor).run_requests  # and nothing more after it


def test_a_retried_tick_gives_the_same_run_key(config, instance):
    defs = build_definitions(config)
    land(config, X, PAST)
    first = tick(defs, instance, None)
    land(config, Y, PAST + 10)
    changed = tick(defs, instance, first.cursor)
    retried = tick(defs, instance, first.cursor)  # the cursor of `changed` was never stored
    assert [r.run_key for r in retried.run_requests] == [r.run_key for r in changed.run_requests]


def run(defs: dg.Definitions, instance: dg.DagsterInstance, request: dg.RunRequest) -> None:
    """Launch a requested landing run in-process, as the daemon would."""
    result = defs.resolve_job_def("landing_job").execute_in_process(
        instance=instance, resources=defs.resources, tags=request.tags,
        asset_selection=request.asset_selection)
    assert result.success


def test_a_file_removed_and_landed_again_gives_a_new_run(config, instance):
    defs = build_definitions(config)
    path = land(config, X, PAST)
    landed = tick(defs, instance, None)
    run(defs, instance, landed.run_requests[0])
    path.unlink()
    removed = tick(defs, instance, landed.cursor)
    assert ranges(removed) == [RANGE]  # its rows leave the warehouse
    run(defs, instance, removed.run_requests[0])
    land(config, X, PAST)  # the same bytes and mtime come back
    again = tick(defs, instance, removed.cursor)
    assert ranges(again) == [RANGE]
    keys = {landed.run_requests[0].run_key, removed.run_requests[0].run_key,
            again.run_requests[0].run_key}
    assert len(keys) == 3, keys


def test_what_a_run_ingested_is_not_asked_for_again_by_a_fresh_sensor(config, instance):
    defs = build_definitions(config)
    land(config, X, PAST)
    first = tick(defs, instance, None)
    run(defs, instance, first.run_requests[0])
    assert not tick(defs, instance, None).run_requests  # a new daemon: nothing to ingest
    assert not tick(defs, instance, first.cursor).run_requests


def test_a_cursor_stored_before_generations_ingests_nothing_twice(config, instance):
    defs = build_definitions(config)
    path = land(config, X, PAST)
    stat = path.stat()  # the cursor the sensor used to store: size, mtime, sha256, range
    older = json.dumps({"batch.csv": [stat.st_size, stat.st_mtime_ns, sha256_file(path), *RANGE]})
    assert not tick(defs, instance, older).run_requests
    land(config, Y, PAST + 10)
    assert ranges(tick(defs, instance, older)) == [RANGE]
