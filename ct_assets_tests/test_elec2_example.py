"""The Elec2 example end to end: prepare.py lands the real data set, the pipeline ingests it all."""

import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from ct_assets.definitions import build_definitions
from ct_assets.lib.config import load_config
from ct_assets.lib.features import feature_schema, passthrough_columns
from ct_assets.lib.ingest import FileCatalog, landed_partitions
from ct_assets.lib.quarantine import Quarantine
from ct_assets.lib.warehouse import Warehouse
from ct_assets.runner import RANGE_END_TAG, RANGE_START_TAG, partition_summary
from ct_assets_tests.projects import elec2_prepare

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "elec2"
ELEC2_ROWS = 45_312
FIRST_WEEK, LAST_WEEK, WEEKS = "1996-05-06", "1998-11-30", 135  # weekly partitions, Mondays


@pytest.fixture(scope="module")
def prepare_module():
    module = elec2_prepare()
    module.find_source()  # fails naming every path it tried and $CT_ELEC2_CSV
    return module


def test_prepare_rebuilds_the_timestamps(prepare_module, tmp_path):
    landing = tmp_path / "landing"
    assert prepare_module.prepare(prepare_module.find_source(), landing) == ELEC2_ROWS
    files = sorted(p.name for p in landing.iterdir())
    assert files[0] == "elec2_1996-05.csv" and files[-1] == "elec2_1998-12.csv"
    assert not [name for name in files if name.startswith(".")]  # no temporary left behind
    frame = pl.read_csv(sorted(landing.glob("*.csv")), try_parse_dates=True)
    stamps = frame["timestamp"]
    assert frame.height == ELEC2_ROWS
    assert stamps[0] == dt.datetime(1996, 5, 7, tzinfo=dt.UTC)
    assert stamps[-1] == dt.datetime(1998, 12, 6, 23, 30, tzinfo=dt.UTC)  # 944 days
    assert (stamps.diff().drop_nulls() == dt.timedelta(minutes=30)).all()


def test_elec2_example_runs_end_to_end(prepare_module, tmp_path):
    shutil.copyfile(EXAMPLE / "ct.yaml", tmp_path / "ct.yaml")
    config = load_config(tmp_path / "ct.yaml")
    assert config.landing_dir == tmp_path / "data" / "landing"
    assert config.storage_dir == tmp_path / "data"
    assert prepare_module.prepare(prepare_module.find_source(), config.landing_dir) == ELEC2_ROWS

    landed, pending = landed_partitions(config, FileCatalog(config.landing_catalog_path))
    assert landed == pending and len(landed) == WEEKS
    assert min(landed) == FIRST_WEEK and max(landed) == LAST_WEEK

    # `ct run`'s data step: the whole landed range as one single-run backfill of `data_job`.
    defs = build_definitions(config)
    with dg.DagsterInstance.ephemeral() as instance:
        result = defs.resolve_job_def("data_job").execute_in_process(
            instance=instance, resources=defs.resources,
            tags={RANGE_START_TAG: FIRST_WEEK, RANGE_END_TAG: LAST_WEEK},
        )
        assert result.success
        assert instance.get_materialized_partitions(dg.AssetKey("features")) == landed
        checks = result.get_asset_check_evaluations()
    failed = [check.check_name for check in checks if not check.passed]
    assert checks and not failed, failed

    warehouse = Warehouse(config.warehouse_path)
    raw = warehouse.query("SELECT * FROM raw_events ORDER BY timestamp")
    assert raw.height == ELEC2_ROWS
    stamps = raw["timestamp"]
    assert stamps[0] == dt.datetime(1996, 5, 7, tzinfo=dt.UTC)
    assert stamps.is_sorted() and stamps.n_unique() == ELEC2_ROWS  # strictly increasing
    assert raw["class"].null_count() == 0 and set(raw["class"].unique()) == {0, 1}

    quarantine = Quarantine(config.quarantine_dir)
    assert quarantine.rejected_rows().height == 0
    assert quarantine.rejected_files() == []
    assert sum(p["quarantined"] for p in partition_summary(config, sorted(landed))) == 0

    features = warehouse.query("SELECT * FROM features ORDER BY timestamp")
    assert features.height == ELEC2_ROWS
    declared = feature_schema(config)
    assert {"nswprice_vs_recent", "nswdemand_recent_mean", "hour_sin", "period"} <= set(declared)
    assert features.columns == [*passthrough_columns(config), *declared]
    assert features["timestamp"].equals(stamps)
    # The first week has no earlier weeks to compare with; every later one does.
    later = features.filter(pl.col("_partition") > "1996-05-06")
    assert later["nswprice_recent_mean"].null_count() == 0


def test_a_start_inside_a_week_loses_no_rows(prepare_module, tmp_path):
    """Elec2 starts on a Tuesday: `start: 1996-05-07` must still give its first week a partition.

    Ingestion accepts every row from `partitions.start` and keys it by its Monday; a Dagster
    partition set starting at the next Monday would leave those rows never ingested and never
    quarantined.
    """
    text = (EXAMPLE / "ct.yaml").read_text(encoding="utf-8")
    (tmp_path / "ct.yaml").write_text(text.replace("start: 1996-05-06", "start: 1996-05-07"),
                                      encoding="utf-8")
    config = load_config(tmp_path / "ct.yaml")
    assert config.partitions.start == dt.date(1996, 5, 7)
    prepare_module.prepare(prepare_module.find_source(), config.landing_dir)
    landed, _ = landed_partitions(config, FileCatalog(config.landing_catalog_path))
    partitions_def = build_definitions(config).resolve_job_def("data_job").partitions_def
    assert partitions_def is not None
    assert partitions_def.get_first_partition_key() == FIRST_WEEK
    assert landed <= set(partitions_def.get_partition_keys())


def test_missing_elec2_is_one_line_naming_where_it_looked(tmp_path, monkeypatch):
    missing = tmp_path / "elsewhere" / "elec.csv"
    done = subprocess.run([sys.executable, str(EXAMPLE / "prepare.py"), "--out",
                           str(tmp_path / "landing")], capture_output=True, text=True,
                          env={**os.environ, "CT_ELEC2_CSV": str(missing)}, check=False)
    assert done.returncode != 0
    assert done.stderr.splitlines() == [
        f"prepare.py: Elec2's elec.csv not found: tried $CT_ELEC2_CSV = {missing}; set "
        "CT_ELEC2_CSV to the file's path, or pass --source"]
    assert not (tmp_path / "landing").exists()
    # Without the variable, every default place is named.
    module = elec2_prepare()
    monkeypatch.delenv("CT_ELEC2_CSV", raising=False)
    monkeypatch.setattr(module, "CANDIDATES", [tmp_path / "a" / "elec.csv", missing])
    with pytest.raises(FileNotFoundError) as caught:
        module.find_source()
    assert str(caught.value) == (
        f"Elec2's elec.csv not found: tried {tmp_path / 'a' / 'elec.csv'}, {missing} "
        "($CT_ELEC2_CSV is not set); set CT_ELEC2_CSV to the file's path, or pass --source")
