"""The Dagster instance's SQLite storage, with one SQLAlchemy engine per database file.

Dagster's SQLite run, event-log and schedule storages build a new SQLAlchemy engine for every
statement they run (`create_engine(…, poolclass=NullPool)` in each `connect`). An engine holds
SQLAlchemy's cache of compiled statements, so nothing is ever taken from it: every insert and
query is compiled again, and the dialect is initialised again. A run stores a few dozen events,
each a handful of statements, and the daemon's sensors and queue read the storages every few
seconds, so that compiling is much of what a small run costs in Dagster. And each check of a
database's schema revision reads Dagster's hundred migration scripts again: here they are read
once per process (`alembic_head`). Both together: a one-day `ct run` takes 4.9 s instead of
7.2 s (`benchmarks/ct_run_day.py`).

`SqliteStorage` is Dagster's `DagsterSqliteStorage` (same files, same schema, same Alembic
revisions, same locking) whose three storages take their engine from a per-process cache keyed
by the database file. Each engine keeps one SQLite connection open between statements (more
are opened while several threads use the database at once, and closed after): opening one
costs more than most statements it runs. A connection is only ever used by one thread at a
time (the pool hands it out), holds no lock while idle (every use is a transaction that ends),
and is given up when its file is no longer the one it opened (removed or replaced: a new one is
opened on the file now at that path). The
event log also remembers the tables it found (Dagster looks for one before many reads and
writes, on a new engine each time). The templates' `dagster.yaml` names it:

    storage:
      custom:
        module: ct_assets.defs.instance_storage
        class: SqliteStorage
        config:
          base_dir: {env: DAGSTER_HOME}
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from dagster._core.storage.event_log.schema import SqlEventLogStorageMetadata
from dagster._core.storage.event_log.sqlite import sqlite_event_log
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
)
from dagster._core.storage.runs.sqlite import sqlite_run_storage
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite import sqlite_schedule_storage
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sql import get_alembic_config
from dagster._core.storage.sqlite import create_db_conn_string
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from dagster._serdes import ConfigurableClassData
from sqlalchemy.pool import QueuePool

# Engines kept per process: the run, schedule and index databases, and the per-run event-log
# databases of the latest runs (a daemon writes to a run's database only while it runs).
MAX_ENGINES = 64

_engines: OrderedDict[tuple[str, float | None], sqlalchemy.Engine] = OrderedDict()
_engines_lock = threading.Lock()


def engine_for(conn_string: str, timeout: float | None = None) -> sqlalchemy.Engine:
    """The process's engine for one SQLite database (`timeout`: SQLite's busy timeout, s).

    Its pool keeps one connection (any number may be checked out at once: the others are
    closed when they are returned), checked at every checkout against the file at its path.
    """
    key = (conn_string, timeout)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            connect_args = {} if timeout is None else {"timeout": timeout}
            engine = _engines[key] = sqlalchemy.create_engine(
                conn_string, poolclass=QueuePool, pool_size=1, max_overflow=-1,
                connect_args=connect_args)
            _follow_the_file(engine)
            while len(_engines) > MAX_ENGINES:  # connections still in use close when returned
                _engines.popitem(last=False)[1].dispose()
        else:
            _engines.move_to_end(key)
        return engine


def _file_identity(path: str | None) -> tuple[int, int] | None:
    try:
        found = os.stat(path) if path else None
    except FileNotFoundError:
        return None
    return None if found is None else (found.st_dev, found.st_ino)


def _follow_the_file(engine: sqlalchemy.Engine) -> None:
    """Give up a kept connection whose database file was removed or replaced since it opened.

    Else its statements would go on reading and writing the old file, which nobody else sees.
    """
    path = engine.url.database

    @sqlalchemy.event.listens_for(engine, "connect")
    def remember(_connection: Any, record: Any) -> None:
        record.info["file"] = _file_identity(path)

    @sqlalchemy.event.listens_for(engine, "checkout")
    def same_file(_connection: Any, record: Any, _proxy: Any) -> None:
        if record.info.get("file") != _file_identity(path):
            raise sqlalchemy.exc.DisconnectionError(f"{path} was removed or replaced")


_scripts: dict[str, tuple[ScriptDirectory, str]] = {}


def alembic_head(config: AlembicConfig) -> tuple[ScriptDirectory, str]:
    """Dagster's migration scripts for `config` and their head revision, read once per process.

    Dagster reads the scripts (a hundred Python files) again at every check: for each storage of
    every instance opened (the code server opens one per sensor tick) and twice for each run's
    new event-log database.
    """
    location = config.get_main_option("script_location") or ""
    with _engines_lock:
        if location not in _scripts:
            script = ScriptDirectory.from_config(config)
            _scripts[location] = (script, str(script.as_revision_number("head")))
        return _scripts[location]


def at_head(engine: sqlalchemy.Engine, config: AlembicConfig) -> bool:
    """Whether the database of `engine` is stamped with the head revision of `config`."""
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return current is not None and current == alembic_head(config)[1]


def _up_to_date(directory: str, name: str, module_file: str) -> str | None:
    """The connection string of `<directory>/<name>.db` if it exists at the head revision."""
    conn_string = create_db_conn_string(directory, name)
    if os.path.exists(os.path.join(directory, f"{name}.db")) and at_head(
            engine_for(conn_string), get_alembic_config(module_file)):
        return conn_string
    return None


@contextmanager
def _transaction(engine: sqlalchemy.Engine) -> Iterator[sqlalchemy.Connection]:
    with engine.connect() as connection, connection.begin():
        yield connection


class _OneFileStorage:
    """`from_local` and `connect` of a Dagster storage kept in one file, `<base_dir>/<DATABASE>.db`.

    Mixed in before Dagster's class, whose `from_local` creates or checks the database when it
    is not already at the head revision.
    """

    DATABASE: str
    MODULE_FILE: str  # the Dagster module beside whose alembic.ini its migrations are configured
    _conn_string: str

    @classmethod
    def from_local(cls, base_dir: str, inst_data: ConfigurableClassData | None = None) -> Any:
        """The storage of an up-to-date database at once; else Dagster's creation or check."""
        conn_string = _up_to_date(base_dir, cls.DATABASE, cls.MODULE_FILE)
        if conn_string is not None:
            return cls(conn_string, inst_data)  # type: ignore[call-arg]
        return super().from_local(base_dir, inst_data)  # type: ignore[misc]

    @contextmanager
    def connect(self) -> Iterator[sqlalchemy.Connection]:
        """A transaction on a new SQLite connection of the kept engine."""
        with _transaction(engine_for(self._conn_string)) as connection:
            yield connection


class CachedEngineRunStorage(_OneFileStorage, SqliteRunStorage):
    """Dagster's SQLite run storage, its engine kept."""

    DATABASE, MODULE_FILE = "runs", sqlite_run_storage.__file__


class CachedEngineScheduleStorage(_OneFileStorage, SqliteScheduleStorage):
    """Dagster's SQLite schedule storage (sensor cursors and ticks), its engine kept."""

    DATABASE, MODULE_FILE = "schedules", sqlite_schedule_storage.__file__


class CachedEngineEventLogStorage(SqliteEventLogStorage):
    """Dagster's sharded SQLite event log (an index database and one per run), engines kept."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        super().__init__(base_dir, inst_data)
        self._tables_found: set[str] = set()

    def has_table(self, table_name: str) -> bool:
        """Whether the index database has `table_name`; a table once found is remembered.

        Dagster asks before many reads and writes (29 times in a one-day `ct run`), each time
        on a new engine and connection. A table is never dropped (migrations only add them), so
        only its absence is asked again.
        """
        if table_name in self._tables_found:
            return True
        engine = engine_for(self.conn_string_for_shard(INDEX_SHARD_NAME),
                            SQLITE_BUSY_TIMEOUT_SECONDS)
        with engine.connect() as connection:
            found = bool(engine.dialect.has_table(connection, table_name))
        if found:
            self._tables_found.add(table_name)
        return found

    def register_instance(self, instance: dg.DagsterInstance) -> None:
        """Refuse an instance whose home is not the storage's `base_dir`.

        The template's `base_dir` is `$DAGSTER_HOME`: an instance loaded from another home's
        `dagster.yaml` (`DagsterInstance.from_config(path)` with `$DAGSTER_HOME` elsewhere) would
        otherwise read and write the runs of the wrong project without a word.
        """
        expected = Path(_event_logs_directory(instance.root_directory)).resolve()
        if Path(self._base_dir).resolve() != expected:
            raise dg.DagsterInvariantViolationError(
                f"the Dagster instance in {instance.root_directory} keeps its runs under "
                f"{Path(self._base_dir).parents[1]} (storage.custom.config.base_dir in its "
                "dagster.yaml, $DAGSTER_HOME): set DAGSTER_HOME to the instance's directory")
        super().register_instance(instance)

    def _initdb(self, engine: sqlalchemy.Engine, for_index_shard: bool = False) -> None:
        """Dagster's, with the head revision read once per process.

        A database at the head revision needs nothing. A run's new database gets the tables
        and the head stamp as Dagster gives them (WAL journal included); anything else (an old
        revision, the index database, another process creating the same database) is left to
        Dagster's own `_initdb`, with its checks and retries.
        """
        config = get_alembic_config(sqlite_event_log.__file__)
        if at_head(engine, config):
            return
        if not for_index_shard:
            script, _ = alembic_head(config)
            try:
                with engine.connect() as connection:
                    if not sqlalchemy.inspect(connection).get_table_names():
                        SqlEventLogStorageMetadata.create_all(connection)
                        connection.commit()
                        connection.execute(sqlalchemy.text("PRAGMA journal_mode=WAL;"))
                        MigrationContext.configure(connection).stamp(script, "head")
                        connection.commit()
                        return
            except (sqlalchemy.exc.DatabaseError, sqlite3.DatabaseError):
                pass  # a concurrent creation: Dagster's `_initdb` retries until it settles
        super()._initdb(engine, for_index_shard)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[sqlalchemy.Connection]:
        # As Dagster's: under the storage's lock, creating the shard's tables the first time.
        with self._db_lock:
            engine = engine_for(self.conn_string_for_shard(shard), SQLITE_BUSY_TIMEOUT_SECONDS)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with _transaction(engine) as connection:
                yield connection


class SqliteStorage(DagsterSqliteStorage):
    """`DagsterSqliteStorage` under `base_dir`, whose storages keep their engines."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self.base_dir = base_dir
        self._run_storage = CachedEngineRunStorage.from_local(_runs_directory(base_dir))
        self._event_log_storage = CachedEngineEventLogStorage(_event_logs_directory(base_dir))
        self._schedule_storage = CachedEngineScheduleStorage.from_local(
            _schedule_directory(base_dir))
        self._inst_data = inst_data
        super(DagsterSqliteStorage, self).__init__()

    @classmethod
    def from_config_value(  # ty: ignore[invalid-method-override]
            cls, inst_data: ConfigurableClassData, config_value: Any) -> SqliteStorage:
        """The storage of `dagster.yaml`'s `storage.custom.config` (`base_dir`)."""
        return cls.from_local(inst_data=inst_data, **config_value)
