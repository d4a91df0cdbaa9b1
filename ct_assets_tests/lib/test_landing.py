"""The landing scan and the runs it plans.

The scan compares the landing dir with the catalog's record of what was ingested; every
content change gets a run key never used before.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pytest

from ct_assets.lib.config import Config, config_from_dict
from ct_assets.lib.files import sha256_file
from ct_assets.lib.ingest import FileCatalog, ingest_window
from ct_assets.lib.landing import LandingCursor, plan_landing_runs, scan_landing
from ct_assets_tests.projects import FILES_CONFIG, FILES_HEADER

HEADER = FILES_HEADER
CONFIG = FILES_CONFIG
X = [HEADER, "a1,2026-01-02T10:00:00,1.5,k1,0", "a2,2026-01-02T11:00:00,2.5,k2,1"]
Y = [HEADER, "a1,2026-01-02T10:00:00,9.5,k1,1", "a2,2026-01-02T11:00:00,8.5,k2,0"]
LATER = time.time() + 3600  # every file has settled by then
ORDERED = [f"2026-01-{day:02d}" for day in range(1, 11)]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    loaded = config_from_dict(CONFIG, base_dir=tmp_path)
    loaded.landing_dir.mkdir(parents=True)
    return loaded


def land(config: Config, name: str, lines: list[str], mtime_s: int) -> Path:
    path = config.landing_dir / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.utime(path, ns=(mtime_s * 10**9, mtime_s * 10**9))
    return path


def look(config: Config, cursor: LandingCursor) -> tuple[list, LandingCursor]:
    """One look at the landing dir, as the sensor takes it."""
    changes = scan_landing(config, cursor, FileCatalog(config.landing_catalog_path), now=LATER)
    return plan_landing_runs(cursor, changes, ORDERED)


def ingest_everything(config: Config) -> None:
    """What a run of `raw_events` over every partition records (whoever launched it)."""
    catalog = FileCatalog(config.landing_catalog_path)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ingest_window(config, start, start + dt.timedelta(days=len(ORDERED)), catalog)
    catalog.save()


def test_a_content_that_comes_back_gets_a_new_run_key(config):
    cursor = LandingCursor()
    keys = []
    for lines, mtime in ((X, 1_000), (Y, 2_000), (X, 3_000)):  # X → Y → X
        land(config, "batch.csv", lines, mtime)
        runs, cursor = look(config, cursor)
        assert [(run.first, run.last) for run in runs] == [("2026-01-02", "2026-01-02")]
        keys.append(runs[0].run_key)
    assert len(set(keys)) == 3, keys  # X's second landing is not skipped as already launched
    assert cursor.generation == 3


def test_a_file_removed_and_landed_again_gets_a_new_run_key(config):
    path = land(config, "batch.csv", X, 1_000)
    first, cursor = look(config, LandingCursor())
    ingest_everything(config)  # its run ingested it
    path.unlink()
    removal, cursor = look(config, cursor)
    assert [(run.first, run.last) for run in removal] == [("2026-01-02", "2026-01-02")]
    ingest_everything(config)  # the removal's run took its rows out
    land(config, "batch.csv", X, 1_000)  # the same bytes and mtime, as `cp -p` brings them back
    again, cursor = look(config, cursor)
    keys = [first[0].run_key, removal[0].run_key, again[0].run_key]
    assert len(set(keys)) == 3, keys


def test_a_retried_look_from_the_same_cursor_plans_the_same_keys(config):
    land(config, "batch.csv", X, 1_000)
    before = LandingCursor.parse(LandingCursor().dump())
    runs, after = look(config, before)
    retried, after_retry = look(config, before)  # the daemon died before storing the cursor
    assert [run.run_key for run in retried] == [run.run_key for run in runs]
    assert after_retry == after


def test_nothing_new_plans_no_run_and_keeps_the_generation(config):
    path = land(config, "batch.csv", X, 1_000)
    _, cursor = look(config, LandingCursor())
    runs, unchanged = look(config, cursor)
    assert runs == [] and unchanged == cursor
    os.utime(path, ns=(5_000 * 10**9, 5_000 * 10**9))  # a touch: same content, new mtime
    runs, touched = look(config, cursor)
    assert runs == []
    assert touched.generation == cursor.generation
    assert touched.files["batch.csv"][1] == 5_000 * 10**9  # remembered: not hashed again


def test_a_cursor_written_before_generations_is_read(config):
    path = land(config, "batch.csv", X, 1_000)
    stat = path.stat()  # what the sensor used to store: size, mtime, sha256, first, last
    older = {"batch.csv": [stat.st_size, stat.st_mtime_ns, sha256_file(path), "2026-01-02",
                           "2026-01-02"]}
    cursor = LandingCursor.parse(json.dumps(older))
    assert cursor == LandingCursor(files=older, generation=0, requested=None)
    runs, after = look(config, cursor)
    assert runs == []  # nothing ingested again after the upgrade
    assert LandingCursor.parse(after.dump()) == after
    assert LandingCursor.parse(None) == LandingCursor()
    land(config, "batch.csv", Y, 2_000)
    assert [(run.first, run.last) for run in look(config, after)[0]] == [("2026-01-02",
                                                                          "2026-01-02")]


def test_what_another_process_ingested_is_not_asked_for_again(config):
    land(config, "batch.csv", X, 1_000)
    ingest_everything(config)  # e.g. `ct run` or `ct demo`, before the sensor ever looked
    runs, cursor = look(config, LandingCursor())
    assert runs == [] and cursor.generation == 0
    land(config, "later.csv", [HEADER, "b1,2026-01-05T10:00:00,1.0,k1,0"], 2_000)
    runs, cursor = look(config, cursor)
    assert [(run.first, run.last) for run in runs] == [("2026-01-05", "2026-01-05")]
    assert look(config, cursor)[0] == []  # asked for: not again while its run is pending
    ingest_everything(config)
    runs, ingested = look(config, cursor)
    assert runs == [] and ingested.requested == {}  # the record caught up with the request


def test_a_removed_file_that_was_never_ingested_needs_no_run(config):
    path = land(config, "batch.csv", X, 1_000)
    first, cursor = look(config, LandingCursor())
    path.unlink()  # its run has not ingested it yet: when it runs, it finds nothing
    removal, cursor = look(config, cursor)
    assert removal == [] and cursor.requested == {}
    land(config, "batch.csv", X, 1_000)
    again, _ = look(config, cursor)
    assert again[0].run_key != first[0].run_key


def test_a_file_still_being_written_waits(config):
    land(config, "batch.csv", X, int(LATER))  # modified "now"
    changes = scan_landing(config, LandingCursor(), FileCatalog(config.landing_catalog_path),
                           now=LATER)
    assert changes.partitions == set() and changes.state == {}
