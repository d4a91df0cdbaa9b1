"""Definitions load from the config alone: a bad landed file is quarantined, never fatal."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from ct_assets.cli import main
from ct_assets.definitions import build_definitions
from ct_assets.lib.config import Config, config_from_dict
from ct_assets.lib.quarantine import Quarantine
from ct_assets.lib.warehouse import Warehouse
from ct_assets_tests.projects import FILES_CONFIG

RAW_CONFIG = FILES_CONFIG
GOOD = ["id,ts,amount,kind,label", "g1,2026-01-02T10:00:00,1.5,k1,0",
        "g2,2026-01-02T11:00:00,2.5,k2,1"]
RENAMED = ["id,ts,amt,kind,label", "r1,2026-01-02T12:00:00,3.5,k1,0"]  # amount → amt


@pytest.fixture
def config(tmp_path: Path) -> Config:
    (tmp_path / "ct.yaml").write_text(yaml.safe_dump(RAW_CONFIG), encoding="utf-8")
    loaded = config_from_dict(RAW_CONFIG, base_dir=tmp_path)
    loaded.landing_dir.mkdir(parents=True)
    return loaded


def land(config: Config, name: str, lines: list[str]) -> None:
    (config.landing_dir / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_a_file_with_renamed_columns_is_quarantined_and_definitions_still_load(config):
    land(config, "a_renamed.csv", RENAMED)  # the first file to land has a renamed column
    defs = build_definitions(config)  # the code location loads: sensors keep running
    assert defs.resolve_sensor_def("landing_sensor").name == "landing_sensor"
    land(config, "b_good.csv", GOOD)
    with dg.instance_for_test() as instance:
        result = dg.materialize([defs.resolve_assets_def("raw_events")],
                                partition_key="2026-01-02", instance=instance)
    assert result.success
    rejected = {entry.source_file: entry.reason
                for entry in Quarantine(config.quarantine_dir).rejected_files()}
    assert list(rejected) == ["a_renamed.csv"]
    assert "missing required column" in rejected["a_renamed.csv"]
    assert "amount" in rejected["a_renamed.csv"]
    ids = Warehouse(config.warehouse_path).query("SELECT id FROM raw_events ORDER BY id")["id"]
    assert ids.to_list() == ["g1", "g2"]  # the good file still landed


def test_ct_check_names_a_declared_column_no_landed_file_has(config, tmp_path, capsys):
    land(config, "a_renamed.csv", RENAMED)
    assert main(["--config", str(tmp_path / "ct.yaml"), "check"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("ct check:") and "'amount' not found in the landed data" in error
    land(config, "b_good.csv", GOOD)
    assert main(["--config", str(tmp_path / "ct.yaml"), "check"]) == 0
