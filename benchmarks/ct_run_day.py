"""A one-day `ct run` on the template's instance storage and on Dagster's own SQLite storage.

The retraining-loop scenario of the tests: a simulator project, 30 clean days of 2,000 rows
whose labels land a day late (separate label files), `ct run` (first model); then one clean day
lands per day and `ct run` follows, `--days` times. Each storage gets its own project in
`benchmarks/work/ct_run_day/<storage>/` and its own Python process (nothing cached across):

- `template`: the `dagster.yaml` `ct` writes (`ct_assets/defs/instance_storage.py`: Dagster's
  SQLite storage, engines kept, migration scripts read once per process);
- `dagster_sqlite`: the same file with `storage: sqlite` under the same directory, Dagster's own.

Results (seconds of the history run and of each day's run): `benchmarks/results/ct_run_day.json`.

    .venv/bin/python benchmarks/ct_run_day.py [--days 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import yaml
from machine import machine_info

from ct_assets_tests.projects import (
    LOOP_CONFIG,
    LOOP_FIRST_DAY,
    LOOP_HISTORY,
    LOOP_ROWS_PER_DAY,
)

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work" / "ct_run_day"
OUT = ROOT / "benchmarks" / "results" / "ct_run_day.json"
FIRST_DAY, HISTORY, ROWS_PER_DAY, CONFIG = (LOOP_FIRST_DAY, LOOP_HISTORY, LOOP_ROWS_PER_DAY,
                                             LOOP_CONFIG)  # the retraining-loop test's scenario
STORAGES = ("template", "dagster_sqlite")


def instance_config(storage: str, home: Path) -> str:
    """The `dagster.yaml` of `storage` for the home `home`."""
    text = resources.files("ct_assets").joinpath("templates/dagster.yaml").read_text("utf-8")
    if storage == "template":
        return text
    settings = yaml.safe_load(text)
    settings["storage"] = {"sqlite": {"base_dir": str(home)}}
    return yaml.safe_dump(settings)


def measure(storage: str, days: int) -> dict:
    """In this process: build the project on `storage`, then time `days` one-day `ct run`s."""
    from ct_assets import cli
    from ct_assets.lib.config import load_config
    from ct_assets.lib.simulator import write_days

    root = WORK / storage
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    path = root / "ct.yaml"
    path.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    config = load_config(path)
    home = config.dagster_home
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(instance_config(storage, home), encoding="utf-8")
    os.environ["DAGSTER_HOME"] = str(home)

    def land_and_run(first: dt.date, count: int) -> float:
        write_days(config.landing_dir, start=first, days=count, rows_per_day=ROWS_PER_DAY,
                   labels_dir=config.labels_dir, label_delay=1)
        began = time.perf_counter()
        code = cli.main(["--config", str(path), "run", "--json"])
        seconds = time.perf_counter() - began
        if code != 0:
            raise SystemExit(f"ct run failed on {storage} ({first})")
        return round(seconds, 2)

    history = land_and_run(FIRST_DAY, HISTORY)
    runs = [land_and_run(FIRST_DAY + dt.timedelta(days=HISTORY + n), 1) for n in range(days)]
    return {"history_seconds": history, "day_seconds": runs,
            "day_median_seconds": round(statistics.median(runs), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--storage", choices=STORAGES, help=argparse.SUPPRESS)  # one, in-process
    args = parser.parse_args(argv)
    if args.storage:
        print(json.dumps(measure(args.storage, args.days)))
        return 0
    results = {}
    for storage in STORAGES:
        done = subprocess.run(
            [sys.executable, __file__, "--days", str(args.days), "--storage", storage],
            cwd=ROOT, capture_output=True, text=True, check=False,
            env={k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"})
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        results[storage] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{storage:15} history {results[storage]['history_seconds']:6.2f} s   "
              f"one day (median of {args.days}) {results[storage]['day_median_seconds']:5.2f} s"
              f"   {results[storage]['day_seconds']}")
    OUT.write_text(json.dumps({
        "command": f"benchmarks/ct_run_day.py --days {args.days}",
        "rows_per_day": ROWS_PER_DAY, "history_days": HISTORY, "results": results,
        "machine": machine_info(("dagster", "duckdb", "polars", "lightgbm")),
    }, indent=2) + "\n", encoding="utf-8")
    print(f"results: {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
