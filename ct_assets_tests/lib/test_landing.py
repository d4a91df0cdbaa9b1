"""The landing scan and the runs it plans: every content change gets a run key never used before."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ct_assets.lib.config import Config, config_from_dict
from ct_assets.lib.landing import LandingCursor, plan_landing_runs, scan_landing

HEADER = "id,ts,amount,kind,label"
CONFIG = {
    "dataset": {"source": "files", "landing_dir": "landing", "timestamp": "ts",
                "target": "label", "id": "id",
                "columns": {"id": "string", "ts": "timestamp", "amount": "float",
                            "kind": "category", "label": "int"}},
    "partitions": {"start": "2026-01-01"},
    "storage": {"dir": "data"},
}
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
    changes = scan_landing(config, cursor.files, now=LATER)
    return plan_landing_runs(cursor, changes, ORDERED)


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
    path.unlink()
    removal, cursor = look(config, cursor)
    assert [(run.first, run.last) for run in removal] == [("2026-01-02", "2026-01-02")]
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
    land(config, "batch.csv", X, 1_000)
    older = scan_landing(config, {}, now=LATER).state  # what the sensor used to store
    cursor = LandingCursor.parse(json.dumps(older))
    assert cursor == LandingCursor(files=older, generation=0)
    assert look(config, cursor)[0] == []  # nothing ingested again after the upgrade
    assert LandingCursor.parse(cursor.dump()) == cursor
    assert LandingCursor.parse(None) == LandingCursor()
