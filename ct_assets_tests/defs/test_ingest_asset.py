"""The real `raw_events` asset, run in-process on hand-made landing dirs, read back from DuckDB."""

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
import yaml

from ct_assets.definitions import build_definitions
from ct_assets.lib.config import Config, config_from_dict
from ct_assets.lib.quarantine import Quarantine
from ct_assets.lib.warehouse import Warehouse

CT = Path(sys.executable).parent / "ct"
HEADER = "id,ts,amount,kind,label"
RAW_CONFIG = {
    "dataset": {
        "source": "files",
        "landing_dir": "landing",
        "timestamp": "ts",
        "target": "label",
        "id": "id",
        "columns": {
            "id": {"type": "string", "nullable": False},
            "ts": "timestamp",
            "amount": {"type": "float", "min": 0},
            "kind": "category",
            "label": "int",
        },
    },
    "partitions": {"start": "2026-01-01"},
    "features": {"lookback": 2},
    "storage": {"dir": "data"},
}
CHECKS = {"schema", "null_rates", "ranges", "duplicate_ids", "has_rows", "quarantine_share"}


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """The config of a project in `tmp_path`, also written as `ct.yaml` for the `ct` command."""
    (tmp_path / "ct.yaml").write_text(yaml.safe_dump(RAW_CONFIG), encoding="utf-8")
    loaded = config_from_dict(RAW_CONFIG, base_dir=tmp_path)
    loaded.landing_dir.mkdir(parents=True)
    return loaded


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


def land_csv(config: Config, name: str, *lines: str) -> Path:
    path = config.landing_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([HEADER, *lines]) + "\n", encoding="utf-8")
    return path


def day_rows(prefix: str, day: str, count: int) -> list[str]:
    return [f"{prefix}{i},{day}T{i % 24:02d}:15:00,{i + 0.5},k{i % 3},{i % 2}"
            for i in range(1, count + 1)]


def materialize(config: Config, instance: dg.DagsterInstance,
                key: str = "2026-01-02") -> dg.ExecuteInProcessResult:
    defs = build_definitions(config)
    raw_events = defs.resolve_assets_def("raw_events")  # resources already bound
    return dg.materialize([raw_events], partition_key=key, instance=instance)


def run_range(config: Config, instance: dg.DagsterInstance, first: str,
              last: str) -> dg.ExecuteInProcessResult:
    defs = build_definitions(config)
    return defs.resolve_job_def("data_job").execute_in_process(
        instance=instance,
        tags={"dagster/asset_partition_range_start": first,
              "dagster/asset_partition_range_end": last},
    )


def stored(config: Config, where: str = "TRUE") -> pl.DataFrame:
    return Warehouse(config.warehouse_path).query(
        f"SELECT * FROM raw_events WHERE {where} ORDER BY _partition, id")


def stored_ids(config: Config, partition: str | None = None) -> list[str]:
    where = f"_partition = '{partition}'" if partition else "TRUE"
    return stored(config, where)["id"].to_list()


def checks_of(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {evaluation.check_name: evaluation
            for evaluation in result.get_asset_check_evaluations()}


def metadata_value(evaluation: dg.AssetCheckEvaluation, key: str) -> object:
    return evaluation.metadata[key].value


def materialization_metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    events = [event for event in result.get_asset_materialization_events()
              if event.asset_key == dg.AssetKey("raw_events")]
    assert len(events) == 1
    return {key: value.value for key, value in
            events[0].step_materialization_data.materialization.metadata.items()}


def whole_files(entries: list[dict]) -> dict[str, dict]:
    return {entry["source_file"]: entry for entry in entries if entry["check"] == "bad_file"}


def row_entries(entries: list[dict]) -> list[tuple]:
    return sorted((e["source_file"], e["check"], e["partition"], e["rows"], e["row_numbers"])
                  for e in entries if e["check"] != "bad_file")


def land_messy(config: Config, tmp_path: Path) -> None:
    """Good CSV and Parquet files for 2026-01-02 beside one of several bad kinds each."""
    land_csv(config, "good.csv", *day_rows("g", "2026-01-02", 4),
             "x1,2026-01-02T05:00:00,abc,k1,1",        # row 5: wrong type
             "x2,yesterday,1,k1,1",                     # row 6: unparsable timestamp
             "x3,2026-01-02T06:00:00,1,k1,3")           # row 7: invalid target
    good = pl.DataFrame({
        "id": ["p1", "p2", "p3"],
        "ts": [dt.datetime(2026, 1, 2, 1), dt.datetime(2026, 1, 2, 2), dt.datetime(2026, 1, 3, 1)],
        "amount": [1.0, 2.0, 3.0], "kind": ["a", "b", "c"], "label": [0, 1, 0],
    })
    (config.landing_dir / "nested").mkdir()
    good.write_parquet(config.landing_dir / "nested" / "good.parquet")
    data = (config.landing_dir / "nested" / "good.parquet").read_bytes()
    (config.landing_dir / "cut.parquet").write_bytes(data[: len(data) // 2])
    (config.landing_dir / "empty.csv").write_bytes(b"")
    (config.landing_dir / "image.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (config.landing_dir / "semi.csv").write_text(
        "id;ts;amount;kind;label\ns1;2026-01-02T01:00:00;1;a;0\n", encoding="utf-8")
    (config.landing_dir / "latin1.csv").write_bytes(
        f"{HEADER}\nl1,2026-01-02T01:00:00,1,caf\xe9,0\nl2,2026-01-02T02:00:00,1,a,0\n"
        .encode("latin-1"))
    (config.landing_dir / "notes.txt").write_text("not data", encoding="utf-8")
    outside = tmp_path / "outside.csv"
    outside.write_text(f"{HEADER}\no1,2026-01-02T01:00:00,1,a,0\n", encoding="utf-8")
    os.symlink(outside, config.landing_dir / "link.csv")
    land_csv(config, ".hidden.csv", "h1,2026-01-02T01:00:00,1,a,0")
    land_csv(config, "inflight.csv.tmp", "h2,2026-01-02T01:00:00,1,a,0")


EXPECTED_BAD_FILES = {
    "cut.parquet": "truncated",
    "empty.csv": "empty",
    "image.csv": "binary",
    "semi.csv": "';'-separated",
    "latin1.csv": "UTF-8",
    "notes.txt": "unsupported file type",
    "link.csv": "symlink",
}
EXPECTED_ROW_ENTRIES = [
    ("good.csv", "invalid_target", "2026-01-02", 1, [7]),
    ("good.csv", "unparsable_timestamp", None, 1, [6]),
    ("good.csv", "wrong_type", "2026-01-02", 1, [5]),
]


def test_messy_landing_dir_ingests_exactly_the_good_rows_and_quarantines_the_rest(
        config, instance, tmp_path):
    land_messy(config, tmp_path)
    result = materialize(config, instance)
    assert result.success

    rows = stored(config)
    assert rows["id"].to_list() == ["g1", "g2", "g3", "g4", "p1", "p2"]  # p3 is 2026-01-03
    assert set(rows["_partition"]) == {"2026-01-02"}
    assert set(rows["_source_file"]) == {"good.csv", "nested/good.parquet"}
    described = Warehouse(config.warehouse_path).query("DESCRIBE raw_events")
    types = dict(zip(described["column_name"], described["column_type"], strict=True))
    assert types["ts"] == "TIMESTAMP WITH TIME ZONE" and types["amount"] == "DOUBLE"
    assert types["label"] == "BIGINT"

    entries = Quarantine(config.quarantine_dir).entries()
    files = whole_files(entries)
    assert set(files) == set(EXPECTED_BAD_FILES)
    for name, word in EXPECTED_BAD_FILES.items():
        assert word in files[name]["reason"], files[name]
        assert files[name]["rows"] is None
        assert files[name]["partition"] is None
    assert row_entries(entries) == EXPECTED_ROW_ENTRIES
    reasons = {e["check"]: e["reason"] for e in entries}
    assert reasons["wrong_type"] == "column 'amount': 'abc' is not float"
    assert "'yesterday'" in reasons["unparsable_timestamp"]

    metadata = materialization_metadata(result)
    assert metadata["dagster/row_count"] == 6
    assert metadata["run_rejected_files"] == len(EXPECTED_BAD_FILES)
    # the partition's own quarantined rows; the unplaced one belongs to no partition
    assert metadata["quarantined_rows"] == 2 and metadata["run_unplaced_rows"] == 1
    assert metadata["quarantine_share"] == round(2 / 8, 4)
    assert metadata["run_files_read"] == 2
    assert "semi.csv" in metadata["run_rejected"]

    # `ct quarantine --json`, the real console script, reports the same entries
    done = subprocess.run([str(CT), "--config", str(tmp_path / "ct.yaml"), "quarantine",
                           "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert isinstance(listed, list)
    assert listed == json.loads(json.dumps([{**e, "kind": "rows"} for e in entries], default=str))
    assert set(whole_files(listed)) == set(EXPECTED_BAD_FILES)
    assert row_entries(listed) == EXPECTED_ROW_ENTRIES

    text = subprocess.run([str(CT), "--config", str(tmp_path / "ct.yaml"), "quarantine"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert text.returncode == 0 and "semi.csv" in text.stdout and "wrong_type" in text.stdout


def test_rematerializing_is_idempotent_and_follows_fixed_and_removed_files(config, instance):
    day1 = land_csv(config, "day1.csv", *day_rows("a", "2026-01-01", 3))
    day2 = land_csv(config, "day2.csv", *day_rows("b", "2026-01-02", 4),
                    "b9,2026-01-02T09:00:00,abc,k1,0")
    land_csv(config, "stray.csv", "s1,2026-01-02T10:00:00,1,k1,0", "s2,soon,1,k1,0")
    land_csv(config, "day3.csv", *day_rows("c", "2026-01-03", 2))
    (config.landing_dir / "broken.csv").write_bytes(b"")
    assert run_range(config, instance, "2026-01-01", "2026-01-03").success
    before = stored(config)
    assert before.group_by("_partition").len().sort("_partition").rows() == [
        ("2026-01-01", 3), ("2026-01-02", 5), ("2026-01-03", 2)]
    entries = Quarantine(config.quarantine_dir).entries()
    assert set(whole_files(entries)) == {"broken.csv"}
    assert row_entries(entries) == [("day2.csv", "wrong_type", "2026-01-02", 1, [5]),
                                    ("stray.csv", "unparsable_timestamp", None, 1, [2])]

    # the same partition again, nothing changed: identical rows, no duplicates
    assert materialize(config, instance).success
    again = stored(config)
    assert again.equals(before)
    counts = Warehouse(config.warehouse_path).query(
        "SELECT count(*) AS n, count(DISTINCT (_partition, id)) AS d FROM raw_events")
    assert counts.rows() == [(10, 10)]
    assert row_entries(Quarantine(config.quarantine_dir).entries()) == row_entries(entries)

    # only 2026-01-02 is replaced: a row added to day 1 stays out until day 1 is rebuilt
    day1.write_text(day1.read_text(encoding="utf-8") + "a9,2026-01-01T20:00:00,1,k1,0\n",
                    encoding="utf-8")
    day2.write_text("\n".join([HEADER, *day_rows("b", "2026-01-02", 4),
                               "b9,2026-01-02T09:00:00,9.5,k1,0"]) + "\n", encoding="utf-8")
    (config.landing_dir / "broken.csv").unlink()
    (config.landing_dir / "stray.csv").unlink()
    assert materialize(config, instance).success
    after = stored(config)
    assert after.filter(pl.col("_partition") != "2026-01-02").equals(
        before.filter(pl.col("_partition") != "2026-01-02"))
    assert stored_ids(config, "2026-01-02") == ["b1", "b2", "b3", "b4", "b9"]
    assert after.filter(pl.col("id") == "b9")["amount"].to_list() == [9.5]
    assert Quarantine(config.quarantine_dir).entries() == []  # fixed and removed files

    assert materialize(config, instance, "2026-01-01").success
    assert stored_ids(config, "2026-01-01") == ["a1", "a2", "a3", "a9"]

    # a landed file removed: its rows leave the partition
    day2.unlink()
    result = materialize(config, instance)
    assert result.success
    assert stored_ids(config, "2026-01-02") == []
    assert stored_ids(config, "2026-01-03") == ["c1", "c2"]
    assert checks_of(result)["has_rows"].passed is False


def test_a_file_that_turns_bad_drops_its_rows_and_earlier_rejections(config, instance):
    path = land_csv(config, "day2.csv", *day_rows("b", "2026-01-02", 3), "b9,never,1,k1,0")
    land_csv(config, "other.csv", *day_rows("o", "2026-01-02", 2))
    assert materialize(config, instance).success
    assert row_entries(Quarantine(config.quarantine_dir).entries()) == [
        ("day2.csv", "unparsable_timestamp", None, 1, [4])]

    path.write_bytes(b"\x00\x01\x02 garbage")
    assert materialize(config, instance).success
    assert stored_ids(config) == ["o1", "o2"]
    entries = Quarantine(config.quarantine_dir).entries()
    assert [(e["source_file"], e["check"], e["rows"]) for e in entries] == [
        ("day2.csv", "bad_file", None)]
    assert "binary" in entries[0]["reason"]


def test_a_failed_write_leaves_the_previous_rows(config, instance):
    land_csv(config, "day2.csv", *day_rows("b", "2026-01-02", 3))
    assert materialize(config, instance).success
    before = stored(config)
    assert before.height == 3

    warehouse = Warehouse(config.warehouse_path)
    broken = before.drop("amount").with_columns(
        pl.lit("not a number").alias("amount"), pl.lit(1).alias("brand_new_column"))
    start = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    with pytest.raises(duckdb.Error):
        warehouse.replace_range("raw_events", broken, "ts", start,
                                start + dt.timedelta(days=1))
    assert stored(config).equals(before)
    columns = warehouse.query("DESCRIBE raw_events")["column_name"].to_list()
    assert "brand_new_column" not in columns  # the schema change was rolled back too

    # and a good write still works afterwards
    deleted = warehouse.replace_range("raw_events", before.head(1), "ts", start,
                                      start + dt.timedelta(days=1))
    assert deleted == 3
    assert stored_ids(config) == ["b1"]


def test_a_high_quarantined_share_fails_its_check_but_the_good_rows_land(config, instance):
    land_csv(config, "day2.csv", "g1,2026-01-02T01:00:00,1,a,0", "g2,2026-01-02T02:00:00,1,a,1",
             "x1,2026-01-02T03:00:00,-1,a,0", "x2,2026-01-02T04:00:00,inf,a,0",
             "x3,2026-01-02T05:00:00,1,a,7", "u1,2026-01-02T06:00:00,1,a,")
    result = materialize(config, instance)
    assert result.success  # quality checks warn, they do not fail the run
    checks = checks_of(result)
    assert set(checks) == CHECKS
    share = checks["quarantine_share"]
    assert share.passed is False
    assert metadata_value(share, "observed") == pytest.approx(3 / 6)
    assert metadata_value(share, "threshold") == pytest.approx(0.05)
    assert metadata_value(share, "rejected_rows") == 3
    assert share.severity == dg.AssetCheckSeverity.WARN
    assert all(checks[name].passed for name in CHECKS - {"quarantine_share"})
    # u1 has no label yet: a valid row (scored, never trained on), not a rejected one
    assert stored_ids(config) == ["g1", "g2", "u1"]

    # the same verdict is recorded in the instance
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("raw_events"), "quarantine_share")])
    execution = record[dg.AssetCheckKey(dg.AssetKey("raw_events"), "quarantine_share")]
    evaluation = execution.event.dagster_event.event_specific_data
    assert evaluation.passed is False
    assert evaluation.metadata["observed"].value == pytest.approx(0.5)


def test_clean_data_passes_every_check(config, instance):
    land_csv(config, "day2.csv", *day_rows("g", "2026-01-02", 20))
    result = materialize(config, instance)
    assert result.success
    checks = checks_of(result)
    assert set(checks) == CHECKS
    failed = {name: check.metadata for name, check in checks.items() if not check.passed}
    assert failed == {}
    assert metadata_value(checks["quarantine_share"], "observed") == 0
    assert metadata_value(checks["has_rows"], "observed") == 20
    assert Quarantine(config.quarantine_dir).entries() == []


def test_a_partition_range_is_materialized_in_one_run(config, instance):
    for day in ("2026-01-01", "2026-01-02", "2026-01-03"):
        land_csv(config, f"{day}.csv", *day_rows(f"d{day[-1]}-", day, 5))
    land_csv(config, "2026-01-04.csv", *day_rows("d4-", "2026-01-04", 5))  # outside the range
    result = run_range(config, instance, "2026-01-01", "2026-01-03")
    assert result.success
    assert len(instance.get_runs()) == 1
    events = [(event.asset_key.to_user_string(), event.partition)
              for event in result.get_asset_materialization_events()]
    assert sorted(events) == sorted(
        (asset, day) for asset in ("raw_events", "features")
        for day in ("2026-01-01", "2026-01-02", "2026-01-03"))
    assert instance.get_materialized_partitions(dg.AssetKey("raw_events")) == {
        "2026-01-01", "2026-01-02", "2026-01-03"}
    warehouse = Warehouse(config.warehouse_path)
    for table in ("raw_events", "features"):
        counts = warehouse.query(f"SELECT _partition, count(*) FROM {table} GROUP BY 1 ORDER BY 1")
        assert counts.rows() == [("2026-01-01", 5), ("2026-01-02", 5), ("2026-01-03", 5)]
    raw_step = [event for event in result.get_asset_materialization_events()
                if event.asset_key == dg.AssetKey("raw_events")]
    assert {event.step_key for event in raw_step} == {"raw_events"}  # one step, one scan
    by_day = {event.partition: event.step_materialization_data.materialization.metadata
              for event in raw_step}
    for day in ("2026-01-01", "2026-01-02", "2026-01-03"):
        assert by_day[day]["run_partitions"].value == "2026-01-01 … 2026-01-03 (3)"
        assert by_day[day]["dagster/row_count"].value == 5
