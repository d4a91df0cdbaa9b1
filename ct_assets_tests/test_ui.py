"""The UI tells the truth per partition, read in a real browser.

A simulator project lands 6 clean days and `ct run` trains a first model on them; 4 more days
land with a covariate drift (from day 7), and `ct run --all` ingests, scores and checks drift
over the 10 days in one run per job, then the drift trigger retrains. Then a real
`dagster-webserver` and headless Chromium (Debian's, driven by Playwright) open:

- `drift_report`, partition by partition, every day: days 1 to 6 show no drifted feature, days 7
  to 10 show drift, "amount" among the drifted features (the figures of each day, not the
  range's);
- `deployed_model`: the trigger's day (day 7) and the drifted features;
- the pictures where each page opens: `drift_report`'s drift-over-time chart (drifted share per
  day, the retrain's trigger day marked) and recent-drift table, `validation_report`'s holdout
  chart, drawn inline (not behind "[Show Markdown]");
- the lineage and the drift-over-time views, saved under `benchmarks/results/ui/` for the README
  when `CT_SAVE_UI_SCREENSHOTS=1` (else under the test's temporary directory).

The days end yesterday, as `ct simulate`'s do, so the UI's per-partition plots (which show the
newest partitions of the partition set, ending today) cover them.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Any

import yaml

from ct_assets import cli
from ct_assets.lib.config import load_config
from ct_assets.lib.simulator import DriftScenario, write_days
from ct_assets_tests.live import ROOT, chromium_page, webserver

DAYS, DRIFT_DAY, LABELLED, ROWS_PER_DAY = 10, 7, 6, 600
FIRST_DAY = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=DAYS)
SHOTS = ROOT / "benchmarks" / "results" / "ui"


def day(number: int) -> str:
    return (FIRST_DAY + dt.timedelta(days=number - 1)).isoformat()


def build_project(root: Path, monkeypatch: Any) -> dict[str, str]:
    """The project after `ct run`; the environment the webserver needs."""
    config = {"dataset": {"source": "simulator", "labels": {"landing_dir": "labels"}},
              "partitions": {"start": day(1)},
              "training": {"window": LABELLED, "holdout": 1},
              "triggers": {"label_delay": 0, "cooldown": 0},
              "gate": {"max_regression": 1.0},  # the drift candidate is promoted: see its why
              "storage": {"dir": "data"}}
    path = root / "ct.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    loaded = load_config(path)
    env = {**os.environ, "CT_CONFIG": str(path), "DAGSTER_HOME": str(loaded.dagster_home)}
    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    drift = DriftScenario("covariate", FIRST_DAY + dt.timedelta(days=DRIFT_DAY - 1))
    write_days(loaded.landing_dir, start=FIRST_DAY, days=LABELLED, rows_per_day=ROWS_PER_DAY,
               drift=drift, labels_dir=loaded.labels_dir, label_delay=0)
    assert cli.main(["--config", str(path), "run"]) == 0  # the first model, on days 1 to 6
    write_days(loaded.landing_dir, start=FIRST_DAY + dt.timedelta(days=LABELLED),
               days=DAYS - LABELLED, rows_per_day=ROWS_PER_DAY, drift=drift,
               labels_dir=loaded.labels_dir, label_delay=0)
    # Every partition again, each job in one run over the 10 days; then the drift retrain.
    assert cli.main(["--config", str(path), "run", "--all"]) == 0
    return env


def visit(page: Any, url: str, ready: str, shot: Path | None = None) -> str:
    """Open `url` and wait for `ready` (the welcome dialog dismissed); the page's text."""
    page.goto(url)
    # An action: Dagster's community dialog, if open, is skipped first (`chromium_page`).
    page.get_by_text(ready).first.hover()
    if shot is not None:
        page.wait_for_timeout(1500)  # let the plots draw
        page.screenshot(path=str(shot), full_page=True)
    return page.inner_text("body")


def inline_image(page: Any, alt: str) -> None:
    """Assert the page draws the image `alt` where it opens: loaded, sized, on screen."""
    image = page.locator(f"img[alt='{alt}']").first
    image.wait_for()
    width = image.evaluate("img => img.complete ? img.naturalWidth : 0")
    assert width > 100, f"{alt}: not drawn (natural width {width})"
    assert image.is_visible(), f"{alt}: loaded but not shown where the page opens"


def metadata_value(text: str, key: str) -> str:
    """The value shown next to a metadata key on an asset page."""
    match = re.search(rf"^{re.escape(key)}\s*\n?\s*(.+)$", text, flags=re.MULTILINE)
    assert match, f"{key} not on the page:\n{text[:3000]}"
    return match.group(1).strip()


def test_the_ui_shows_each_days_drift_and_why_the_model_was_retrained(tmp_path, monkeypatch):
    env = build_project(tmp_path, monkeypatch)
    # The README's pictures are refreshed with CT_SAVE_UI_SCREENSHOTS=1; otherwise they are
    # taken (the drawing is part of what is tested) into the test's own directory.
    shots = SHOTS if os.environ.get("CT_SAVE_UI_SCREENSHOTS") == "1" else tmp_path / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    with webserver(env, tmp_path / "webserver.log") as url, chromium_page() as page:
        # Every day's own page: no drifted feature before the drift day, drift on it and after
        # (the recorded figures are compared with the warehouse in
        # defs/test_partition_metadata.py and defs/test_monitoring.py).
        for number in range(1, DAYS + 1):
            text = visit(page, f"{url}/assets/drift_report?view=partitions&partition="
                               f"{day(number)}", "drifted_share",
                         shots / "drift_report_partition.png" if number == DRIFT_DAY else None)
            features = metadata_value(text, "drifted_features")
            if number < DRIFT_DAY:
                assert features == "none", (day(number), features)
            else:
                assert "amount" in features.split(", "), (day(number), features)
        deployed = visit(page, f"{url}/assets/deployed_model?view=events", "trigger_partition",
                         shots / "deployed_model.png")
        assert metadata_value(deployed, "trigger_kind") == "drift"
        assert metadata_value(deployed, "trigger_partition") == day(DRIFT_DAY)
        assert "amount" in metadata_value(deployed, "trigger_detail")
        # Where the pages open: the pictures drawn inline, the newest day's table of features.
        visit(page, f"{url}/assets/drift_report", "drift_over_time")
        inline_image(page, "drifted share per partition")
        page.screenshot(path=str(shots / "drift_over_time.png"), full_page=True)
        recent = page.locator("table", has_text="top features").first
        assert "amount" in recent.inner_text()
        visit(page, f"{url}/assets/validation_report", "holdout_chart",
              shots / "validation_report.png")
        inline_image(page, "holdout comparison")
        # The UI's own per-partition plots: one point per day, the figures of each day.
        visit(page, f"{url}/assets/drift_report", "drift_over_time")
        page.get_by_role("button", name="Plots").first.click()
        page.get_by_role("button", name="Partitions").first.click()
        page.locator("canvas").first.wait_for()
        page.wait_for_timeout(3000)
        page.screenshot(path=str(shots / "drift_plots.png"), full_page=True)
        visit(page, f"{url}/assets/drift_report?view=lineage&lineageScope=upstream"
                    "&lineageDepth=6", "raw_events", shots / "lineage.png")
    assert {path.name for path in shots.glob("*.png")} >= {
        "drift_report_partition.png", "deployed_model.png", "drift_over_time.png",
        "validation_report.png", "drift_plots.png", "lineage.png"}
