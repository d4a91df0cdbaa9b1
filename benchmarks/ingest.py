"""Ingestion benchmark: simulated rows through `raw_events` + `features`, Dagster vs bare.

- Dagster: one single-run backfill of `data_job` over every simulated day, `execute_in_process`
  on a fresh instance (a temporary DAGSTER_HOME with the project's dagster.yaml, as `ct run`
  uses; `--instance ephemeral` for an in-memory one);
- bare: the same lib calls without Dagster — `ingest_window`, `Warehouse.replace_range` of
  `raw_events`, the quarantine and file-catalog writes, reading `raw_events` back with the
  look-back, `build_features`, `replace_range` of `features` — into a separate fresh DuckDB file.

Each path runs `--repeat` times on fresh storage (the landed files are shared); the best time
counts. One more, untimed Dagster run wraps the asset bodies' calls with timers to show where
the difference goes. Results: `benchmarks/results/ingest.json`.

    .venv/bin/python benchmarks/ingest.py [--days 10] [--rows-per-day 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import shutil
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
from machine import machine_info

from ct_assets.definitions import build_definitions
from ct_assets.defs import features as features_defs
from ct_assets.defs import ingest as ingest_defs
from ct_assets.lib import simulator
from ct_assets.lib.config import Config, config_from_dict
from ct_assets.lib.features import build_features, offset_partitions
from ct_assets.lib.ingest import FileCatalog, ingest_window, partition_keys
from ct_assets.lib.quarantine import Quarantine
from ct_assets.lib.warehouse import Warehouse

warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

ROOT = Path(__file__).resolve().parents[1]
GOAL_RATIO = 1.5
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
EVENT_LOG = "dagster: event log writes"


def land(landing: Path, start: dt.date, days: int, rows_per_day: int) -> None:
    """Simulate the days into `landing`, unless the same days are already there."""
    marker = landing / ".benchmark.json"
    wanted = {"start": start.isoformat(), "days": days, "rows_per_day": rows_per_day, "seed": 0}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return
    shutil.rmtree(landing, ignore_errors=True)
    began = time.perf_counter()
    simulator.write_days(landing, start=start, days=days, rows_per_day=rows_per_day)
    marker.write_text(json.dumps(wanted))
    print(f"simulated {days} days x {rows_per_day} rows in {time.perf_counter() - began:.1f}s")


def make_config(landing: Path, storage: Path, start: dt.date) -> Config:
    """The simulator config with its landing dir and a fresh storage dir."""
    shutil.rmtree(storage, ignore_errors=True)
    storage.mkdir(parents=True)
    raw = {"dataset": {"source": "simulator", "landing_dir": str(landing)},
           "partitions": {"start": start.isoformat(), "granularity": "daily"},
           "storage": {"dir": str(storage)}}
    return config_from_dict(raw, base_dir=storage)


@contextmanager
def dagster_instance(kind: str, home: Path) -> Iterator[dg.DagsterInstance]:
    """A fresh instance: in memory, or a SQLite DAGSTER_HOME with the project's dagster.yaml."""
    if kind == "ephemeral":
        with dg.DagsterInstance.ephemeral() as instance:
            yield instance
        return
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def run_dagster(config: Config, first: str, last: str, instance_kind: str) -> dict[str, Any]:
    """One single-run backfill of `data_job` over `first..last`; timings in seconds."""
    began = time.perf_counter()
    defs = build_definitions(config)
    job = defs.resolve_job_def("data_job")
    built = time.perf_counter()
    with dagster_instance(instance_kind, config.storage_dir / "dagster") as instance:
        started = time.perf_counter()
        result = job.execute_in_process(instance=instance, resources=defs.resources,
                                        run_config=QUIET,
                                        tags={RANGE_START_TAG: first, RANGE_END_TAG: last})
        finished = time.perf_counter()
    if not result.success:
        raise RuntimeError(f"data_job failed: {result.run_id}")
    steps = {event.step_key: event.event_specific_data.duration_ms / 1000
             for event in result.all_events if event.event_type_value == "STEP_SUCCESS"}
    return {"seconds": finished - started, "definitions_seconds": built - began,
            "step_seconds": steps}


def run_bare(config: Config, start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    """The asset bodies' lib calls without Dagster (no checks, no metadata); phase timings."""
    dataset = config.dataset
    phases: dict[str, float] = {}
    mark = time.perf_counter()
    began = mark

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = now - mark
        mark = now

    keys = partition_keys(config, start, end)
    catalog = FileCatalog(config.landing_catalog_path)
    result = ingest_window(config, start, end, catalog)
    lap("ingest_window")
    warehouse = Warehouse(config.warehouse_path)
    warehouse.replace_range("raw_events", result.rows, dataset.timestamp, start, end)
    lap("write_raw_events")
    records = Quarantine(config.quarantine_dir)
    records.replace_partition_rows(keys, result.rejected_rows)
    for source_file, unplaced in result.unplaced_rows.items():
        records.replace_unplaced_rows(source_file, unplaced)
    for source_file in result.good_files:
        records.clear_file(source_file)
    records.forget_missing_files(result.present_files)
    for file, reason in result.rejected_files:
        records.reject_file(file.relpath, reason, file.size)
    catalog.save()
    lap("quarantine_and_catalog")
    history_start = offset_partitions(config, start, -config.features.lookback)
    raw = warehouse.read_range("raw_events", dataset.timestamp, history_start, end)
    lap("read_raw_events")
    frame = build_features(raw, config, keys)
    lap("build_features")
    warehouse.replace_range("features", frame, dataset.timestamp, start, end)
    lap("write_features")
    return {"seconds": time.perf_counter() - began, "phases": phases,
            "rows": result.rows.height, "feature_rows": frame.height,
            "quarantined": result.rejected_rows.height}


class Timers:
    """Wraps functions with timers (cumulative seconds and calls per label) while active."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._restore: list[tuple[object, str, object]] = []

    def wrap(self, owner: object, name: str, label: str | Callable[..., str]) -> None:
        """Time every call of `owner.name` under `label` (or `label(*args)`)."""
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            key = label(*args, **kwargs) if callable(label) else label
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - began
                self.calls[key] += 1

        self._restore.append((owner, name, original))
        setattr(owner, name, timed)

    def restore(self) -> None:
        """Put the original functions back."""
        for owner, name, original in reversed(self._restore):
            setattr(owner, name, original)
        self._restore.clear()


def attribute_dagster(config: Config, first: str, last: str, instance_kind: str
                      ) -> dict[str, Any]:
    """An untimed Dagster run with the asset bodies' top-level calls timed one by one."""
    timers = Timers()
    timers.wrap(ingest_defs, "ingest_window", "raw_events: ingest_window")
    timers.wrap(Warehouse, "replace_range", lambda _self, table, *a, **k: f"{table}: write")
    timers.wrap(Warehouse, "read_range", "features: read raw_events back")
    for method in ("replace_partition_rows", "replace_unplaced_rows", "clear_file",
                   "forget_missing_files", "reject_file"):
        timers.wrap(Quarantine, method, "raw_events: quarantine and catalog writes")
    timers.wrap(FileCatalog, "save", "raw_events: quarantine and catalog writes")
    timers.wrap(ingest_defs, "check_raw_events", "raw_events: checks (DuckDB queries)")
    for name in ("_partition_figures", "record_partition_metadata", "_rejections",
                 "range_check_results"):
        timers.wrap(ingest_defs, name, "raw_events: metadata building")
    timers.wrap(features_defs, "build_features", "features: build_features")
    timers.wrap(features_defs, "offset_partitions", "features: build_features")
    for name in ("frame_metadata", "column_schema"):
        timers.wrap(features_defs, name, "features: metadata building")
    # Informational, overlaps the lines above: every event Dagster writes to its event log.
    timers.wrap(dg.DagsterInstance, "handle_new_event", EVENT_LOG)
    try:
        outcome = run_dagster(config, first, last, instance_kind)
    finally:
        timers.restore()
    event_log = {"events": timers.calls.pop(EVENT_LOG, 0),
                 "seconds": round(timers.seconds.pop(EVENT_LOG, 0.0), 3)}
    inside = {key: round(value, 3) for key, value in sorted(timers.seconds.items())}
    steps = outcome["step_seconds"]
    for asset in ("raw_events", "features"):
        named = sum(v for k, v in timers.seconds.items() if k.startswith(f"{asset}:"))
        inside[f"{asset}: rest of the step (context, resources, outputs)"] = round(
            steps.get(asset, 0.0) - named, 3)
    inside["dagster: run outside the steps (run record, plan, events, storage)"] = round(
        outcome["seconds"] - sum(steps.values()), 3)
    return {"run_seconds": round(outcome["seconds"], 3),
            "step_seconds": {k: round(v, 3) for k, v in steps.items()},
            "breakdown_seconds": inside, "calls": dict(timers.calls),
            "event_log_writes": event_log}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write the JSON, print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--rows-per-day", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2025, 1, 1))
    parser.add_argument("--instance", choices=["sqlite", "ephemeral"], default="sqlite",
                        help="sqlite: a temporary DAGSTER_HOME as `ct run` uses (default)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                        "ingest.json")
    args = parser.parse_args(argv)
    load_before = round(os.getloadavg()[0], 2)

    work = args.work.resolve()
    landing = work / "landing"
    land(landing, args.start, args.days, args.rows_per_day)
    rows = args.days * args.rows_per_day
    first = args.start.isoformat()
    last = (args.start + dt.timedelta(days=args.days - 1)).isoformat()
    window_start = dt.datetime.combine(args.start, dt.time(), tzinfo=dt.UTC)
    window_end = window_start + dt.timedelta(days=args.days)

    dagster_runs: list[dict[str, Any]] = []
    bare_runs: list[dict[str, Any]] = []
    for repetition in range(1, args.repeat + 1):
        config = make_config(landing, work / "dagster", args.start)
        dagster_runs.append(run_dagster(config, first, last, args.instance))
        counts = Warehouse(config.warehouse_path).query(
            "SELECT (SELECT count(*) FROM raw_events), (SELECT count(*) FROM features)").row(0)
        if counts != (rows, rows):
            raise RuntimeError(f"Dagster path stored {counts} rows, expected {rows}")
        bare_config = make_config(landing, work / "bare", args.start)
        bare_runs.append(run_bare(bare_config, window_start, window_end))
        if (bare_runs[-1]["rows"], bare_runs[-1]["feature_rows"]) != (rows, rows):
            raise RuntimeError(f"bare path built {bare_runs[-1]['rows']} rows, expected {rows}")
        print(f"[{repetition}/{args.repeat}] dagster {dagster_runs[-1]['seconds']:.2f}s  "
              f"bare {bare_runs[-1]['seconds']:.2f}s", flush=True)

    best_dagster = min(dagster_runs, key=lambda run: run["seconds"])
    best_bare = min(bare_runs, key=lambda run: run["seconds"])
    dagster_seconds, bare_seconds = best_dagster["seconds"], best_bare["seconds"]
    ratio = dagster_seconds / bare_seconds
    attribution = attribute_dagster(make_config(landing, work / "attribution", args.start),
                                    first, last, args.instance)
    report = {
        "rows": rows, "days": args.days, "rows_per_day": args.rows_per_day,
        "partitions": args.days, "repeat": args.repeat, "instance": args.instance,
        "dagster_seconds": round(dagster_seconds, 3),
        "bare_seconds": round(bare_seconds, 3),
        "dagster_rows_per_second": round(rows / dagster_seconds),
        "bare_rows_per_second": round(rows / bare_seconds),
        "ratio": round(ratio, 3),
        "goal": {"ratio_at_most": GOAL_RATIO, "met": ratio <= GOAL_RATIO},
        "dagster_seconds_all": [round(run["seconds"], 3) for run in dagster_runs],
        "bare_seconds_all": [round(run["seconds"], 3) for run in bare_runs],
        "dagster_definitions_seconds": round(best_dagster["definitions_seconds"], 3),
        "dagster_step_seconds": {k: round(v, 3) for k, v in best_dagster["step_seconds"].items()},
        "bare_phase_seconds": {k: round(v, 3) for k, v in best_bare["phases"].items()},
        "dagster_attribution": attribution,
        "notes": ("dagster_seconds is execute_in_process (run creation to run end) on a fresh "
                  "instance; building the definitions is dagster_definitions_seconds, outside "
                  "the ratio. The bare path skips what only the assets do: the raw_events "
                  "checks and the materialization metadata."),
        "machine": machine_info(("polars", "duckdb", "dagster"),
                                polars_threads=pl.thread_pool_size(),
                                load_average_1m_before=load_before),
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.out.with_name(f".{args.out.name}.tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, args.out)
    for storage in ("dagster", "bare", "attribution"):  # the landed files stay for the next run
        shutil.rmtree(work / storage, ignore_errors=True)

    verdict = "met" if ratio <= GOAL_RATIO else "MISSED"
    print(f"\n{rows:,} rows, {args.days} partitions, best of {args.repeat} "
          f"({report['machine']['cpu_count']} CPUs, {args.instance} instance)")
    print(f"  dagster  {dagster_seconds:7.2f}s  {rows / dagster_seconds:>10,.0f} rows/s")
    print(f"  bare     {bare_seconds:7.2f}s  {rows / bare_seconds:>10,.0f} rows/s")
    print(f"  ratio    {ratio:7.2f}   goal <= {GOAL_RATIO}: {verdict}")
    print("  where the Dagster run's time goes (one extra instrumented run, "
          f"{attribution['run_seconds']:.2f}s):")
    for label, seconds in attribution["breakdown_seconds"].items():
        print(f"    {seconds:7.3f}s  {label}")
    writes = attribution["event_log_writes"]
    print(f"    (of which Dagster event-log writes: {writes['events']} events, "
          f"{writes['seconds']:.3f}s)")
    print("  bare phases: " + ", ".join(f"{k} {v:.2f}s" for k, v in best_bare["phases"].items()))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
