"""Your own data in one line: a `ct.yaml` naming only the data runs end to end.

`dataset: {source: files, landing_dir, timestamp, target}` and defaults for the rest: the
schema is inferred from the landed files and pinned, `ct run` ingests, trains and deploys, on a
CSV data set (a slice of Elec2) and on a Parquet one (the simulator's files); later files are
validated against the pinned schema. Real files, a real Dagster instance and DuckDB file under
`tmp_path`, through the real CLI in-process.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from ct_assets import cli
from ct_assets.definitions import build_definitions
from ct_assets.lib.config import SCHEMA_FILE, load_config
from ct_assets.lib.model_store import ModelStore
from ct_assets.lib.quarantine import Quarantine
from ct_assets.lib.simulator import write_days
from ct_assets.lib.warehouse import Warehouse
from ct_assets.runner import RANGE_END_TAG, RANGE_START_TAG
from ct_assets_tests.projects import elec2_prepare

ROOT = Path(__file__).resolve().parents[1]
ELEC2_COLUMNS = ["timestamp", "period", "nswprice", "nswdemand", "vicprice", "vicdemand",
                 "transfer", "class"]


def elec2_days(days: int, *, first: dt.datetime | None = None) -> pl.DataFrame:
    """The first `days` days of Elec2 with their rebuilt timestamps (moved to `first`)."""
    prepare = elec2_prepare()
    source = prepare.find_source()  # fails naming every path it tried and $CT_ELEC2_CSV
    frame = prepare.add_timestamps(pl.read_csv(source, n_rows=48 * days))
    if first is not None:
        frame = frame.with_columns(pl.col("timestamp") + (first - prepare.FIRST_DAY))
    return frame


def land_csv(landing: Path, name: str, frame: pl.DataFrame) -> None:
    """One CSV file as a producer writes it: text timestamps, a temporary name renamed."""
    landing.mkdir(parents=True, exist_ok=True)
    temporary = landing / f".{name}.tmp"
    frame.with_columns(pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%SZ")).write_csv(temporary)
    temporary.rename(landing / name)


def minimal_project(root: Path, timestamp: str, target: str) -> Path:
    """A project whose ct.yaml names only the data; its path."""
    path = root / "ct.yaml"
    path.write_text(f"dataset: {{source: files, landing_dir: landing, timestamp: {timestamp}, "
                    f"target: {target}}}\n", encoding="utf-8")
    return path


@pytest.fixture
def project_dir(tmp_path: Path) -> Iterator[Path]:
    """A project directory in memory when the machine has a tmpfs (`/dev/shm`), else `tmp_path`.

    Every run commits its events to the instance's SQLite files; on a disk each commit waits
    for an fsync, which is most of a small `ct run`'s time on a busy machine.
    """
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    root = Path(tempfile.mkdtemp(prefix="ct-minimal-", dir=shm))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def ct(path: Path, capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`ct --config <path> ARGS`, in-process: exit code, stdout, stderr."""
    capfd.readouterr()
    code = cli.main(["--config", str(path), *args])
    out, err = capfd.readouterr()
    return code, out, err


def test_a_csv_data_set_runs_end_to_end_from_a_minimal_config(project_dir, capfd, monkeypatch):
    tmp_path = project_dir
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "data" / "dagster"))
    path = minimal_project(tmp_path, "timestamp", "class")

    code, out, err = ct(path, capfd, "schema")  # nothing landed: one line, non-zero
    assert code == 2 and out == ""
    assert err.startswith("ct schema: nothing has landed under ") and err.count("\n") == 1
    assert not (tmp_path / "data" / SCHEMA_FILE).exists()

    # The fewest days that train and validate (training.holdout is 5): 1996-05-07 … 05-14.
    frame = elec2_days(8)
    land_csv(tmp_path / "landing", "part1.csv", frame.head(48 * 4))
    land_csv(tmp_path / "landing", "part2.csv", frame.slice(48 * 4))
    code, out, err = ct(path, capfd, "run")
    assert code == 0, out + err
    assert "0 failed" in out and "deployed model: " in out

    config = load_config(path)  # reads the pin: the columns, and where the partitions start
    assert config.dataset.columns_pinned_in == tmp_path / "data" / SCHEMA_FILE
    assert config.partitions.start == dt.date(1996, 5, 7)
    assert list(config.dataset.columns) == ELEC2_COLUMNS
    assert config.dataset.column_types()["class"] == "int" and config.dataset.task == "binary"
    deployed = ModelStore(config.models_dir).deployed()
    assert deployed is not None and deployed["reason"] == "initial"
    raw = Warehouse(config.warehouse_path).query("SELECT * FROM raw_events")
    assert raw.height == frame.height
    assert set(raw["class"].unique()) == {0, 1}
    assert Quarantine(config.quarantine_dir).rejected_rows().height == 0

    code, out, _ = ct(path, capfd, "schema")
    assert code == 0
    assert f"# dataset schema pinned in {config.dataset.columns_pinned_in}" in out
    assert "  task: binary\n  columns:\n    timestamp: {type: timestamp, nullable: false}\n" \
           "    period: float\n" in out
    assert yaml.safe_load(out)["columns"]["class"] == "int"
    code, out, _ = ct(path, capfd, "check")
    assert code == 0 and "every column of the schema pinned in" in out


def test_a_parquet_data_set_runs_end_to_end_from_a_minimal_config(project_dir, capfd,
                                                                  monkeypatch):
    tmp_path = project_dir
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "data" / "dagster"))
    path = minimal_project(tmp_path, "ts", "is_fraud")
    write_days(tmp_path / "landing", start=dt.date(2026, 3, 1), days=7, rows_per_day=600)

    code, out, err = ct(path, capfd, "run")
    assert code == 0, out + err
    assert "0 failed" in out and "deployed model: " in out

    config = load_config(path)
    assert config.dataset.column_types() == {
        "transaction_id": "string", "ts": "timestamp", "customer_id": "string",
        "region": "category", "merchant_category": "category", "channel": "category",
        "amount": "float", "customer_age": "int", "account_age_days": "int",
        "distance_from_home_km": "float", "txn_count_24h": "int",
        "device_trust_score": "float", "is_fraud": "int"}
    assert config.partitions.start == dt.date(2026, 3, 1)
    store = ModelStore(config.models_dir)
    deployed = store.deployed()
    assert deployed is not None
    features = {spec["name"]: spec["type"]
                for spec in store.manifest(deployed["version"])["feature_schema"]}
    assert features["region"] == "category" and features["customer_age"] == "float"
    assert "transaction_id" not in features and "customer_id" not in features  # ids: strings
    raw = Warehouse(config.warehouse_path).query("SELECT count(*) AS n FROM raw_events")
    assert raw["n"][0] == 7 * 600


def test_definitions_load_before_data_lands_and_later_files_meet_the_pinned_schema(
        tmp_path):
    path = minimal_project(tmp_path, "timestamp", "class")
    pending = load_config(path)
    defs = build_definitions(pending)  # nothing landed, nothing pinned: it still loads
    assert pending.dataset.schema_pending

    frame = elec2_days(5, first=dt.datetime(2026, 1, 5, tzinfo=dt.UTC))
    landing = tmp_path / "landing"
    land_csv(landing, "days1-3.csv", frame.head(48 * 3))
    with dg.DagsterInstance.ephemeral() as instance:
        # A run of definitions loaded before the pin: raw_events pins the schema, and the
        # features step of the same run reads the same columns.
        result = defs.resolve_job_def("data_job").execute_in_process(
            instance=instance, resources=defs.resources,
            tags={RANGE_START_TAG: "2026-01-05", RANGE_END_TAG: "2026-01-07"})
        assert result.success
        pinned = json.loads((tmp_path / "data" / SCHEMA_FILE).read_text(encoding="utf-8"))
        assert list(pinned["columns"]) == ELEC2_COLUMNS
        warehouse = Warehouse(pending.warehouse_path)
        features = warehouse.query("SELECT * FROM features")
        assert features.height == 48 * 3 and {"period", "nswprice", "hour_sin"} <= set(
            features.columns)

        # Later files: one with a column the schema does not have, one missing a column.
        land_csv(landing, "day4.csv", frame.slice(48 * 3, 48).with_columns(
            pl.lit("checked").alias("operator_note")))
        land_csv(landing, "day5.csv", frame.slice(48 * 4).drop("vicprice"))
        config = load_config(path)
        assert config.dataset.columns_pinned_in is not None
        later = build_definitions(config)
        result = later.resolve_job_def("data_job").execute_in_process(
            instance=instance, resources=later.resources,
            tags={RANGE_START_TAG: "2026-01-08", RANGE_END_TAG: "2026-01-09"})
        assert result.success
        [materialization, *_] = [
            event.event_specific_data.materialization
            for event in result.get_asset_materialization_events()
            if event.asset_key == dg.AssetKey("raw_events")]
        shown = {key: value.value for key, value in materialization.metadata.items()}
        assert shown["run_files_with_unknown_columns"] == 1
        assert "| day4.csv | operator_note |" in shown["run_unknown_columns"]
        assert shown["schema_source"] == f"pinned in {tmp_path / 'data' / SCHEMA_FILE}"
        warnings = [entry.user_message for entry in instance.all_logs(result.run_id)
                    if "operator_note" in entry.user_message]
        assert any("file day4.csv: column(s) operator_note not in the schema" in line
                   for line in warnings), warnings

    raw = warehouse.query("SELECT _source_file, count(*) AS n FROM raw_events "
                          "GROUP BY 1 ORDER BY 1")
    assert raw.to_dicts() == [{"_source_file": "day4.csv", "n": 48},
                              {"_source_file": "days1-3.csv", "n": 144}]
    assert "operator_note" not in warehouse.query("SELECT * FROM raw_events LIMIT 1").columns
    rejected = {file.source_file: file.reason
                for file in Quarantine(pending.quarantine_dir).rejected_files()}
    assert rejected == {"day5.csv": "missing required column(s) vicprice"}
