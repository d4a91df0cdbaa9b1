"""`ct` and the Dagster instance config: written from the package template, never overwritten."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

import pytest
import yaml

from ct_assets.cli import main, prepare_dagster_home
from ct_assets.lib.config import load_config

ROOT = Path(__file__).resolve().parents[1]
POSTGRES = b"""# the operator's instance: runs and events in Postgres
storage:
  postgres:
    postgres_db:
      hostname: db.internal
      username: dagster
      password: {env: DAGSTER_PG_PASSWORD}
      db_name: dagster
"""


def template() -> resources.abc.Traversable:
    return resources.files("ct_assets").joinpath("templates/dagster.yaml")


@pytest.fixture
def no_dagster_home(monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", "unset-below")  # so monkeypatch restores the original
    monkeypatch.delenv("DAGSTER_HOME")


def test_an_existing_instance_config_is_left_as_it_is_with_a_warning(tmp_path, monkeypatch,
                                                                    capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_bytes(POSTGRES)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    # The repository's own ct.yaml: its directory holds the project's dagster.yaml.
    assert main(["--config", str(ROOT / "ct.yaml"), "home"]) == 0
    assert (home / "dagster.yaml").read_bytes() == POSTGRES
    captured = capsys.readouterr()
    assert captured.out == f"{home}\n"  # `$(ct home)` stays a path
    assert "warning" in captured.err
    assert str(home / "dagster.yaml") in captured.err and str(template()) in captured.err


def test_the_shipped_postgres_template_copied_as_the_readme_shows_is_not_warned_about(
        tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    shipped = resources.files("ct_assets").joinpath("templates/dagster-postgres.yaml")
    (home / "dagster.yaml").write_bytes(shipped.read_bytes())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert main(["--config", str(ROOT / "ct.yaml"), "home"]) == 0
    assert capsys.readouterr().err == ""
    (home / "dagster.yaml").write_bytes(shipped.read_bytes().replace(b"limit: 1", b"limit: 4"))
    assert main(["--config", str(ROOT / "ct.yaml"), "home"]) == 0
    assert "warning" in capsys.readouterr().err  # edited: no longer the shipped one


def test_a_config_outside_the_repository_gets_the_duckdb_pool(tmp_path, no_dagster_home,
                                                               capsys):
    project = tmp_path / "elsewhere"
    project.mkdir()
    (project / "ct.yaml").write_text(
        "dataset: {source: simulator}\npartitions: {start: 2026-01-01}\n", encoding="utf-8")
    config = load_config(project / "ct.yaml")
    home = prepare_dagster_home(config)
    assert home == project / "data" / "dagster"
    written = yaml.safe_load((home / "dagster.yaml").read_text(encoding="utf-8"))
    assert written["concurrency"]["pools"] == {"default_limit": 1, "granularity": "op"}
    assert written["telemetry"] == {"enabled": False}
    assert prepare_dagster_home(config) == home  # a second call finds it as it wrote it
    assert capsys.readouterr().err == ""
    assert list(home.iterdir()) == [home / "dagster.yaml"]  # no temporary file left


def test_the_instance_template_is_package_data_and_the_root_file_is_it():
    assert template().is_file()
    settings = yaml.safe_load(template().read_bytes())
    assert settings["concurrency"]["pools"]["default_limit"] == 1
    assert (ROOT / "dagster.yaml").read_bytes() == template().read_bytes()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "templates/dagster.yaml" in project["tool"]["setuptools"]["package-data"]["ct_assets"]
