"""The Postgres-backed instance template, on a private PostgreSQL server.

The daemon end to end on this template is `test_end_to_end.py`; here: the template holds the
SQLite template's settings plus `storage`, an instance made from it keeps runs, events and the
`duckdb` pool's slots in Postgres and writes no SQLite file, and the test server stops when the
process that started it is killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import dagster as dg
import psycopg2  # comes with dagster-postgres
import pytest
import yaml
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from ct_assets_tests.postgres import postgres_bin, private_postgres, sqlite_files

ROOT = Path(__file__).resolve().parents[1]


def template(name: str) -> bytes:
    return resources.files("ct_assets").joinpath(f"templates/{name}").read_bytes()


def test_the_postgres_template_is_the_sqlite_one_plus_postgres_storage():
    sqlite = yaml.safe_load(template("dagster.yaml"))
    postgres = yaml.safe_load(template("dagster-postgres.yaml"))
    storage = postgres.pop("storage")
    # The SQLite template's storage is Dagster's, its engines kept (defs/instance_storage.py).
    assert sqlite.pop("storage") == {"custom": {
        "module": "ct_assets.defs.instance_storage", "class": "SqliteStorage",
        "config": {"base_dir": {"env": "DAGSTER_HOME"}}}}
    assert postgres == sqlite  # pools, run queue, tag limits, run monitoring, telemetry
    database = storage["postgres"]["postgres_db"]
    assert {key: value for key, value in database.items() if key != "scheme"} == {
        "username": {"env": "DAGSTER_PG_USERNAME"}, "password": {"env": "DAGSTER_PG_PASSWORD"},
        "hostname": {"env": "DAGSTER_PG_HOST"}, "db_name": {"env": "DAGSTER_PG_DB"},
        "port": {"env": "DAGSTER_PG_PORT"}}
    assert database["scheme"] == "postgresql+psycopg2"  # SQLAlchemy 2.1's default is psycopg 3


def test_an_instance_on_the_template_keeps_runs_events_and_pool_slots_in_postgres(
        tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_bytes(template("dagster-postgres.yaml"))

    @dg.asset(pool="duckdb")
    def warehouse_table() -> int:
        return 1

    with private_postgres() as server:
        for key, value in server.dagster_env().items():
            monkeypatch.setenv(key, value)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert isinstance(instance.run_storage, PostgresRunStorage)
            assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
            assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
            result = dg.materialize([warehouse_table], instance=instance)
            assert result.success
        with server.connect() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT run_id, status FROM runs")
            assert cursor.fetchall() == [(result.run_id, "SUCCESS")]
            cursor.execute("SELECT count(*) FROM event_logs WHERE run_id = %s "
                           "AND dagster_event_type = 'ASSET_MATERIALIZATION'", (result.run_id,))
            assert cursor.fetchone() == (1,)
            # the pool's limit, from dagster.yaml, is held by the database every process shares
            cursor.execute("SELECT concurrency_key, count(*) FROM concurrency_slots "
                           "GROUP BY concurrency_key")
            assert cursor.fetchall() == [("duckdb", 1)]
        connection.close()
        # the server checks the password (md5, cheaper per connection than SCRAM): a wrong one
        # is refused
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(host=server.host, port=server.port, user=server.user,
                             password=server.password + "x", dbname=server.database).close()
    assert sqlite_files(home) == []
    assert not server.directory.exists()  # stopped and removed when the block ended
    with pytest.raises(OSError):
        socket.create_connection((server.host, server.port), timeout=2).close()


def test_the_server_stops_when_the_process_that_started_it_is_killed(tmp_path):
    holder = tmp_path / "holder.py"
    holder.write_text(
        "import json, sys, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from ct_assets_tests.postgres import private_postgres\n"
        "with private_postgres() as server:\n"
        "    print(json.dumps({'port': server.port, 'directory': str(server.directory)}),"
        " flush=True)\n"
        "    time.sleep(600)\n", encoding="utf-8")
    process = subprocess.Popen([sys.executable, str(holder)], stdout=subprocess.PIPE,
                               start_new_session=True)
    try:
        assert process.stdout is not None
        started = json.loads(process.stdout.readline())
        socket.create_connection(("127.0.0.1", started["port"]), timeout=5).close()
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # no `with` exit, no pg_ctl stop: the watchdog
        process.wait()
    directory = Path(started["directory"])
    deadline = time.monotonic() + 60
    while directory.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not directory.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", started["port"]), timeout=2).close()


def test_missing_server_binaries_fail_saying_how_to_install_them(tmp_path, monkeypatch):
    monkeypatch.delenv("CT_POSTGRES_BIN", raising=False)
    (tmp_path / "15" / "bin").mkdir(parents=True)  # a client-only install: no initdb
    with pytest.raises(RuntimeError, match=r"apt-get install postgresql"):
        postgres_bin(tmp_path)
