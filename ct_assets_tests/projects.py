"""Small project configs shared by several test modules (and benchmarks), `ct_json`, and the
Elec2 example's `prepare.py` as a module."""

import datetime as dt
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ct_assets import cli

# A `files` dataset of CSVs with an id, a timestamp, a number, a category and a binary label.
FILES_HEADER = "id,ts,amount,kind,label"
FILES_CONFIG = {
    "dataset": {"source": "files", "landing_dir": "landing", "timestamp": "ts",
                "target": "label", "id": "id",
                "columns": {"id": "string", "ts": "timestamp", "amount": "float",
                            "kind": "category", "label": "int"}},
    "partitions": {"start": "2026-01-01"},
    "storage": {"dir": "data"},
}

# The retraining-loop scenario (test_retraining_loop.py, benchmarks/ct_run_day.py): simulated
# days of 2,000 rows from Jan 1, 2026, labels in separate files a day late, a 30-day window.
LOOP_FIRST_DAY, LOOP_HISTORY, LOOP_ROWS_PER_DAY = dt.date(2026, 1, 1), 30, 2000
LOOP_CONFIG = {
    "dataset": {"source": "simulator", "labels": {"landing_dir": "labels"}},
    "partitions": {"start": LOOP_FIRST_DAY.isoformat()},
    "training": {"window": 30, "holdout": 5},
    "triggers": {"label_delay": 1, "cooldown": 3},
    "storage": {"dir": "data"},
}


def ct_json(config_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    """`ct --config <path> <args> --json`, in-process: its parsed output (it must exit 0)."""
    capsys.readouterr()
    code = cli.main(["--config", str(config_path), *args, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


ELEC2_PREPARE = Path(__file__).resolve().parents[1] / "examples" / "elec2" / "prepare.py"


def elec2_prepare() -> ModuleType:
    """`examples/elec2/prepare.py` (not a package module): `find_source`, `prepare`, …"""
    spec = importlib.util.spec_from_file_location("elec2_prepare", ELEC2_PREPARE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
