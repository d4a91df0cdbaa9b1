"""The template's instance storage: Dagster's SQLite storage with its engines kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy
import yaml
from dagster._core.storage.event_log.sqlite import sqlite_event_log
from dagster._core.storage.sql import get_alembic_config

import ct_assets
from ct_assets.defs import instance_storage
from ct_assets.defs.instance_storage import (
    SQLITE_BUSY_TIMEOUT_SECONDS,
    CachedEngineEventLogStorage,
    CachedEngineRunStorage,
    alembic_head,
    engine_for,
)
from ct_assets_tests.live import open_instance

TEMPLATE = Path(ct_assets.__file__).parent / "templates" / "dagster.yaml"


@dg.asset(partitions_def=dg.StaticPartitionsDefinition(["a", "b", "c"]))
def probe() -> None:
    """An asset with nothing to store: only its events."""


def home_with(path: Path, config: bytes) -> Path:
    path.mkdir()
    (path / "dagster.yaml").write_bytes(config)
    return path


def test_runs_land_where_dagsters_own_sqlite_storage_reads_them(tmp_path):
    home = home_with(tmp_path / "home", TEMPLATE.read_bytes())
    with open_instance(home) as instance:
        assert isinstance(instance.run_storage, CachedEngineRunStorage)
        assert isinstance(instance.event_log_storage, CachedEngineEventLogStorage)
        for key in ("a", "b"):
            assert dg.materialize([probe], instance=instance, partition_key=key).success
        run_ids = [run.run_id for run in instance.get_runs()]
    # Dagster's files, under DAGSTER_HOME, as its default storage lays them out …
    assert (home / "history" / "runs.db").is_file()
    assert (home / "history" / "runs" / "index.db").is_file()
    assert {path.stem for path in (home / "history" / "runs").glob("*.db")} == {
        "index", *run_ids}
    assert (home / "schedules" / "schedules.db").is_file()
    # … so Dagster's own storage, on the same directory, reads the same runs and partitions.
    plain = home_with(tmp_path / "plain", yaml.safe_dump(
        {"storage": {"sqlite": {"base_dir": str(home)}}}).encode())
    with dg.DagsterInstance.from_config(str(plain)) as instance:
        assert type(instance.event_log_storage).__name__ == "SqliteEventLogStorage"
        assert sorted(run.run_id for run in instance.get_runs()) == sorted(run_ids)
        assert instance.get_materialized_partitions(probe.key) == {"a", "b"}
        # and a run's database created by Dagster is the same as one created by ours
        assert dg.materialize([probe], instance=instance, partition_key="c").success
        theirs = instance.get_runs(limit=1)[0].run_id
    assert shard_layout(home, theirs) == shard_layout(home, run_ids[0])


def shard_layout(home: Path, run_id: str) -> tuple[list[tuple[str, ...]], ...]:
    """A run's event-log database: its schema, Alembic stamp and journal mode."""
    with sqlite3.connect(home / "history" / "runs" / f"{run_id}.db") as connection:
        schema = connection.execute(
            "SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
        stamp = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        journal = connection.execute("PRAGMA journal_mode").fetchall()
    assert schema and stamp == [(alembic_head(get_alembic_config(sqlite_event_log.__file__))[1],)]
    return schema, stamp, journal


def test_each_database_has_one_engine_whose_compiled_statements_are_reused(tmp_path):
    home = home_with(tmp_path / "home", TEMPLATE.read_bytes())
    with open_instance(home) as instance:
        assert dg.materialize([probe], instance=instance, partition_key="a").success
        storage = instance.event_log_storage
        index = engine_for(storage.conn_string_for_shard("index"), SQLITE_BUSY_TIMEOUT_SECONDS)
        cached = len(index._compiled_cache)
        assert cached > 0  # the first run's inserts and queries, compiled once
        assert dg.materialize([probe], instance=instance, partition_key="b").success
        # the second run's statements are the first run's: nothing new to compile, and the
        # index database is still served by the same engine
        assert len(index._compiled_cache) <= cached + 2
        assert engine_for(storage.conn_string_for_shard("index"),
                          SQLITE_BUSY_TIMEOUT_SECONDS) is index
        assert instance.get_materialized_partitions(probe.key) == {"a", "b"}


def test_a_table_found_is_not_looked_for_again_and_a_missing_one_is(tmp_path):
    home = home_with(tmp_path / "home", TEMPLATE.read_bytes())
    used = []

    def count(*_: object) -> None:
        used.append(1)

    with open_instance(home) as instance:
        storage = instance.event_log_storage
        index = engine_for(storage.conn_string_for_shard("index"), SQLITE_BUSY_TIMEOUT_SECONDS)
        sqlalchemy.event.listen(index, "checkout", count)
        try:
            assert storage.has_table("asset_check_executions")
            assert storage.has_table("no_such_table") is False
            assert len(used) == 2  # each looked for once, on the index database's engine
            assert storage.has_table("asset_check_executions")  # remembered: not looked for
            assert storage.supports_asset_checks
            assert len(used) == 2
            assert storage.has_table("no_such_table") is False  # absent: looked for again
            assert len(used) == 3
        finally:
            sqlalchemy.event.remove(index, "checkout", count)


def test_a_kept_connection_follows_its_file_when_it_is_replaced(tmp_path):
    path = tmp_path / "kept.db"
    engine = engine_for(f"sqlite:///{path}")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text("CREATE TABLE old_file (x INTEGER)"))
        connection.commit()
    path.unlink()  # removed, as `rm -rf $DAGSTER_HOME` would, and another file made there
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE new_file (x INTEGER)")
    with engine.connect() as connection:  # the kept connection is given up: the new file
        tables = connection.execute(sqlalchemy.text(
            "SELECT name FROM sqlite_master WHERE type = 'table'")).scalars().all()
    assert tables == ["new_file"]
    with engine.connect() as first, engine.connect() as second:  # two threads' worth at once
        assert first.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
        assert second.execute(sqlalchemy.text("SELECT 2")).scalar() == 2


def test_the_engines_kept_are_bounded(tmp_path):
    strings = [f"sqlite:///{tmp_path / f'{n}.db'}" for n in range(instance_storage.MAX_ENGINES
                                                                     + 5)]
    first = engine_for(strings[0])
    for string in strings[1:]:
        engine_for(string)
    assert len(instance_storage._engines) <= instance_storage.MAX_ENGINES
    assert engine_for(strings[0]) is not first  # the oldest was let go, a new one made
    assert engine_for(strings[-1]) is engine_for(strings[-1])


def test_an_instance_whose_home_is_not_dagster_home_is_refused(tmp_path, monkeypatch):
    home = home_with(tmp_path / "home", TEMPLATE.read_bytes())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(elsewhere))
    with pytest.raises(dg.DagsterInvariantViolationError) as raised:
        dg.DagsterInstance.from_config(str(home))
    assert f"the Dagster instance in {home} keeps its runs under {elsewhere}" in str(
        raised.value)
    assert "set DAGSTER_HOME" in str(raised.value)
