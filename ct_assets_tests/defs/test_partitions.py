"""The partitions start where the data is: a simulator project's at its first simulated day."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ct_assets import cli
from ct_assets.defs.partitions import build_partitions
from ct_assets.lib.config import ConfigError, load_config


def simulator_project(root: Path, **partitions: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "ct.yaml"
    path.write_text(yaml.safe_dump({"dataset": {"source": "simulator"},
                                    "partitions": partitions, "storage": {"dir": "data"}}),
                    encoding="utf-8")
    return path


def simulate(path: Path, start: str, days: int) -> None:
    assert cli.main(["--config", str(path), "simulate", "--start", start, "--days", str(days),
                     "--rows-per-day", "20", "--json"]) == 0


def first_partition(path: Path) -> str:
    return build_partitions(load_config(path)).get_first_partition_window().start.date() \
        .isoformat()


def test_an_unset_start_is_the_first_simulated_day(tmp_path, capsys):
    path = simulator_project(tmp_path)
    simulate(path, "2026-03-02", 5)
    assert first_partition(path) == "2026-03-02"  # no partition before the data
    keys = build_partitions(load_config(path)).get_partition_keys()
    assert keys[0] == "2026-03-02" and "2026-03-01" not in keys
    simulate(path, "2026-03-10", 2)  # more days later: the start stays
    assert first_partition(path) == "2026-03-02"
    simulate(path, "2026-02-20", 2)  # earlier days: the partitions reach them
    assert first_partition(path) == "2026-02-20"


def test_a_start_in_the_config_wins_and_an_empty_landing_dir_starts_afresh(tmp_path, capsys):
    explicit = simulator_project(tmp_path / "explicit", start="2026-01-01")
    simulate(explicit, "2026-03-02", 2)
    assert first_partition(explicit) == "2026-01-01"
    path = simulator_project(tmp_path / "again")
    simulate(path, "2026-03-02", 2)
    for file in load_config(path).landing_dir.iterdir():
        file.unlink()  # the data is gone: so are its days
    simulate(path, "2026-04-01", 2)
    assert first_partition(path) == "2026-04-01"


def test_an_unreadable_record_of_simulated_days_is_named(tmp_path):
    path = simulator_project(tmp_path)
    record = tmp_path / "data" / "simulated_days.json"
    record.parent.mkdir()
    record.write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"simulated_days\.json: not a record"):
        load_config(path)
