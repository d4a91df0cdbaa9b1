"""`policy_backtest`: on demand only, and what it reports is what `ct backtest` prints."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ct_assets import cli
from ct_assets.definitions import build_definitions
from ct_assets.lib.config import config_from_dict, load_config
from ct_assets.lib.simulator import DriftScenario, write_days
from ct_assets.lib.warehouse import Warehouse
from ct_assets_tests.live import template_instance

FIRST_DAY = dt.date(2026, 1, 1)
# 20 days of 300 rows, a covariate drift from day 12: the drift policy retrains, never does not.
PROJECT = {
    "dataset": {"source": "simulator"},
    "partitions": {"start": FIRST_DAY.isoformat()},
    "training": {"window": 6, "holdout": 2},
    "storage": {"dir": "data"},
}
POLICIES = ["never", "drift"]
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def test_policy_backtest_is_in_no_job_and_never_automated(tmp_path):
    # Every job there is: separate labels and the online strategy add `labels_job`, `online_job`.
    config = config_from_dict({**PROJECT, "dataset": {"source": "simulator",
                                                      "labels": {"landing_dir": "labels"}},
                               "training": {**PROJECT["training"], "strategy": "online"}},
                              base_dir=tmp_path)
    defs = build_definitions(config)
    key = dg.AssetKey("policy_backtest")
    jobs = {job.name: job.asset_layer.selected_asset_keys
            for job in defs.get_repository_def().get_all_jobs()}
    assert {"retrain_job", "landing_job", "labels_job", "online_job"} <= set(jobs)
    # The implicit job of all assets (what the UI's "Materialize" runs) is the only one with it.
    assert [name for name, keys in jobs.items() if key in keys] == ["__ASSET_JOB"]
    assert defs.resolve_assets_def("policy_backtest").automation_conditions_by_key == {}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    path = tmp_path / "ct.yaml"
    path.write_text(yaml.safe_dump(PROJECT), encoding="utf-8")
    write_days(load_config(path).landing_dir, start=FIRST_DAY, days=20, rows_per_day=300,
               drift=DriftScenario("covariate", FIRST_DAY + dt.timedelta(days=11)))
    return path


def markdown_rows(table: str) -> list[dict[str, str]]:
    """The rows of a Markdown table (`lib.reports.markdown_table`) as column → cell."""
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")),
                     strict=True)) for line in lines[1:]]


def test_policy_backtest_reports_what_ct_backtest_prints(project, capsys):
    capsys.readouterr()
    assert cli.main(["--config", str(project), "backtest", "--policies", ",".join(POLICIES),
                     "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    cli_means = {row["policy"]: row["mean_roc_auc"] for row in printed["policies"]}
    assert list(cli_means) == POLICIES
    retrains = {row["policy"]: row["retrains"] for row in printed["policies"]}
    assert retrains["never"] == 0 and retrains["drift"] >= 1  # the two policies differ

    config = load_config(project)
    defs = build_definitions(config)
    # The project's own instance (the `duckdb` pool, limit 1): the write claims a real slot.
    with template_instance(config.dagster_home) as instance:
        result = dg.materialize(
            [defs.resolve_assets_def("policy_backtest")], instance=instance, run_config={
                **QUIET, "ops": {"policy_backtest": {"config": {"policies": POLICIES}}}})
        assert result.success
        # The pool exists once a step claimed it (0 slots before): claimed, then freed.
        pool = instance.event_log_storage.get_concurrency_info("duckdb")
        assert (pool.slot_count, pool.claimed_slots) == (1, [])
    metadata = {name: entry.value for name, entry in
                result.asset_materializations_for_node("policy_backtest")[0].metadata.items()}

    shown = markdown_rows(metadata["policies"])  # the per-policy table
    assert [row["policy"] for row in shown] == POLICIES
    for row in shown:  # cells keep four significant digits
        assert float(row["mean_roc_auc"]) == pytest.approx(cli_means[row["policy"]], abs=6e-5)
        assert int(row["retrains"]) == retrains[row["policy"]]
    assert {policy: metadata[f"retrains_{policy}"] for policy in POLICIES} == retrains
    best = max(cli_means, key=lambda policy: cli_means[policy])
    assert (metadata["best_policy"], metadata["best_mean_roc_auc"]) == (best, cli_means[best])
    first, last = printed["partitions"]
    assert metadata["replayed"].startswith(f"{first} … {last} (")

    chart = re.fullmatch(r"!\[realised metric per policy\]\(data:image/png;base64,(.+)\)",
                         metadata["chart"])
    assert chart is not None
    assert base64.b64decode(chart.group(1)).startswith(b"\x89PNG\r\n\x1a\n")

    written = Warehouse(config.warehouse_path).query(
        "SELECT policy, mean_roc_auc FROM policy_backtest")
    assert dict(written.iter_rows()) == cli_means  # the DuckDB table, exactly
