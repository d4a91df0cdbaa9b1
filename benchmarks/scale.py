"""Scale: 1M, 3M and 10M simulated rows through ingest, features, training, scoring and drift.

For each size, a fresh project in `benchmarks/work/scale/<size>/` (simulator source with the
label in the data file, daily partitions, `training.window` 30, `training.holdout` 5, its own
SQLite DAGSTER_HOME with the repository's `dagster.yaml`, as `ct run` uses) takes the history
through one stage at a time, each stage ONE run over the whole range, as `ct run` launches it
(a contiguous range is one run, `BackfillPolicy.single_run()`):

    simulate  the days written to the landing dir (`simulator.write_days`, what `ct simulate`
              writes: one Parquet file per day), one worker process per CPU, a day per task;
    ingest    `raw_events` over the range;
    features  `features` over the range (`features_job`);
    training  `retrain_job` (training_set → candidate_model → validation_report →
              deployed_model) on the last 30 labelled days;
    scoring   `predictions` over the range (`scoring_job`);
    drift     `drift_report` over the range (`drift_job`).

Sizes scale the number of days at a fixed `--rows-per-day` (1M = 10 days x 100,000 rows, 3M =
30, 10M = 100): a partition holds the same rows at every size, so the per-partition work (and
Dagster's per-partition overhead) is the same and time per row is flat unless something grows
with the history; that is what the ratio tests. Training reads its window, not the history:
its rows are the training set's (10, 30 and 30 days), so at 3M and 10M it trains on the same
rows and its time must not move.

Each stage is its own process (`scale.py --child STAGE …`): its peak RSS is `ru_maxrss` of
`os.wait4` on that child (Linux: the child's own peak, or a waited-for descendant's if larger:
the simulate workers). Its time is the run's own (`execute_in_process`, from run creation to
run end, measured in the child; the simulator's: all days written), without the ~3 s of Python
and Dagster start-up every process pays, which would flatter the larger sizes; the process
wall time is reported too. Rows read and written are counted in the child by wrapping the
warehouse's read and write calls and the landed-file reader.

After the full load, ONE more day lands and its partition goes through ingest, features,
scoring and drift (one process each, `--repeat` times, best kept): its time and rows read must
not grow with the history (largest size / smallest).

Goals (issue 12): peak RSS ≤ 4 GiB at the largest size; time per row of every stage at each
size ≤ 1.2 x the smallest size's; the incremental step's time ≤ 1.2 x and rows read ≤ 1.2 x
the smallest size's. Results: `benchmarks/results/scale.json`.

    .venv/bin/python benchmarks/scale.py [--sizes 1M,3M,10M] [--rows-per-day 100000]
        [--repeat 3] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
WORK = ROOT / "benchmarks" / "work" / "scale"
GOAL_RSS_MIB = 4096
GOAL_RATIO = 1.2
STAGES = ("simulate", "ingest", "features", "training", "scoring", "drift")
INCREMENTAL = ("simulate", "ingest", "features", "scoring", "drift")
JOBS = {"ingest": "scale_ingest_job", "features": "features_job", "training": "retrain_job",
        "scoring": "scoring_job", "drift": "drift_job"}
ASSETS = {"ingest": "raw_events", "features": "features", "scoring": "predictions",
          "drift": "drift_report"}
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
GAP_DAYS = 3  # the history ends this many days before today: all of it is mature for training


def log(message: str) -> None:
    """A timestamped progress line."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_size(text: str) -> int:
    """`1M`, `300k`, `0.3M` or `1000000` as a number of rows."""
    text = text.strip().lower().replace("_", "")
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    number = text[:-1] if factor > 1 else text
    return round(float(number) * factor)


def size_label(rows: int) -> str:
    """1000000 → `1M`, 300000 → `0.3M`."""
    return f"{rows / 1_000_000:g}M"


# --------------------------------------------------------------------------------- the child

def _simulate_one(landing: str, day: str, rows_per_day: int) -> None:
    from ct_assets.lib.simulator import write_days

    write_days(Path(landing), start=dt.date.fromisoformat(day), days=1,
               rows_per_day=rows_per_day)


def child_simulate(config: Any, first: dt.date, days: int, rows_per_day: int) -> dict[str, Any]:
    """Write `days` simulated days from `first`, one day per task over a process pool."""
    from concurrent.futures import ProcessPoolExecutor

    began = time.perf_counter()
    workers = max(1, min(os.cpu_count() or 1, days))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_simulate_one, [str(config.landing_dir)] * days,
                      [(first + dt.timedelta(days=i)).isoformat() for i in range(days)],
                      [rows_per_day] * days))
    return {"run_seconds": time.perf_counter() - began, "rows": days * rows_per_day,
            "workers": workers}


class Counter:
    """Counts the rows the stage reads and writes, by wrapping the warehouse and file reader."""

    def __init__(self) -> None:
        self.read: dict[str, int] = defaultdict(int)
        self.written: dict[str, int] = defaultdict(int)
        self.landed_files = 0
        self.landed_rows = 0

    def install(self) -> None:
        """Wrap `Warehouse` reads and writes and the ingest module's landed-file reader."""
        from ct_assets.lib import ingest
        from ct_assets.lib.warehouse import Warehouse

        def reads(name: str, table_of: Any) -> None:
            original = getattr(Warehouse, name)

            @functools.wraps(original)
            def counted(warehouse: Any, *args: Any, **kwargs: Any) -> Any:
                frame = original(warehouse, *args, **kwargs)
                self.read[table_of(*args, **kwargs)] += frame.height
                return frame

            setattr(Warehouse, name, counted)

        reads("read_range", lambda table, *a, **k: table)
        reads("query", lambda sql, *a, **k: _table_in(sql))
        # Every write goes through `replace_range_chunks` (`replace_range` calls it) where it
        # exists: wrapping both would count twice.
        if hasattr(Warehouse, "replace_range_chunks"):
            chunked = Warehouse.replace_range_chunks

            def count(table: str, build: Any) -> Any:
                def counted() -> Any:
                    frame = build()
                    self.written[table] += frame.height
                    return frame
                return counted

            @functools.wraps(chunked)
            def writes(warehouse: Any, table: str, chunks: Any, *args: Any, **kwargs: Any
                       ) -> Any:
                return chunked(warehouse, table, [count(table, build) for build in chunks],
                               *args, **kwargs)

            Warehouse.replace_range_chunks = writes
        else:
            whole = Warehouse.replace_range

            @functools.wraps(whole)
            def write(warehouse: Any, table: str, frame: Any, *args: Any, **kwargs: Any
                      ) -> Any:
                self.written[table] += frame.height
                return whole(warehouse, table, frame, *args, **kwargs)

            Warehouse.replace_range = write
        reader = ingest.read_landed_file

        @functools.wraps(reader)
        def read_landed(*args: Any, **kwargs: Any) -> Any:
            frame = reader(*args, **kwargs)
            self.landed_files += 1
            self.landed_rows += frame.height
            return frame

        ingest.read_landed_file = read_landed


def _table_in(sql: str) -> str:
    words = sql.replace("\n", " ").split()
    lowered = [word.lower() for word in words]
    return words[lowered.index("from") + 1].strip('"') if "from" in lowered else "?"


def child_run(stage: str, config: Any, first: str, last: str) -> dict[str, Any]:
    """One Dagster run of the stage's job over `first..last`, in this process."""
    import warnings

    import dagster as dg

    warnings.filterwarnings("ignore")
    from ct_assets.definitions import build_definitions

    counter = Counter()
    counter.install()
    began = time.perf_counter()
    defs = dg.Definitions.merge(build_definitions(config), dg.Definitions(jobs=[
        dg.define_asset_job("scale_ingest_job", selection=dg.AssetSelection.assets(
            "raw_events"))]))
    job = defs.resolve_job_def(JOBS[stage])
    built = time.perf_counter()
    tags: dict[str, str] = {}
    partition = None
    if stage == "training":
        tags["ct/reason"] = "initial"
    elif first == last:
        partition = first  # as a sensor launches one new partition
    else:
        tags = {RANGE_START_TAG: first, RANGE_END_TAG: last}
    with dg.DagsterInstance.get() as instance:
        started = time.perf_counter()
        result = job.execute_in_process(instance=instance, run_config=QUIET, tags=tags,
                                        partition_key=partition, raise_on_error=False)
        finished = time.perf_counter()
    if not result.success:
        errors = []
        for event in result.get_step_failure_events():
            error = event.step_failure_data.error
            while error is not None and error.cause is not None:
                error = error.cause
            errors.append(f"{event.step_key}: {error.message if error else '?'}")
        raise RuntimeError(f"{stage} failed: " + "; ".join(errors))
    steps = {event.step_key: round(event.event_specific_data.duration_ms / 1000, 3)
             for event in result.all_events if event.event_type_value == "STEP_SUCCESS"}
    metadata: dict[str, dict[str, Any]] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        values = metadata.setdefault(materialization.asset_key.to_user_string(), {})
        for key in ("train_rows", "holdout_rows", "run_rows_read", "version", "best_iteration",
                    "training_seconds"):
            if key in materialization.metadata:
                values[key] = materialization.metadata[key].value
    out = {"run_seconds": finished - started, "definitions_seconds": built - began,
           "step_seconds": steps, "rows_read": dict(counter.read),
           "rows_written": dict(counter.written), "landed_files_read": counter.landed_files,
           "landed_rows_read": counter.landed_rows, "metadata": metadata}
    out["rows"] = stage_rows(stage, out)
    return out


def stage_rows(stage: str, out: dict[str, Any]) -> int:
    """The rows a stage processed: what it wrote, or for training the training set's rows,
    for drift the feature rows it judged."""
    if stage == "training":
        values = out["metadata"].get("training_set", {})
        return int(values.get("train_rows", 0)) + int(values.get("holdout_rows", 0))
    if stage == "drift":
        return int(out["rows_read"].get("features", 0))
    return int(out["rows_written"].get(ASSETS[stage], 0))


def child_main(args: argparse.Namespace) -> int:
    """`--child STAGE`: run one stage of the project in `--project`, write `--out`."""
    from ct_assets.lib import warehouse
    from ct_assets.lib.config import load_config

    if args.chunk_rows:
        warehouse.CHUNK_ROWS = args.chunk_rows
    config = load_config(Path(args.project) / "ct.yaml")
    if args.child == "simulate":
        out = child_simulate(config, dt.date.fromisoformat(args.first), args.days,
                             args.rows_per_day)
    else:
        out = child_run(args.child, config, args.first, args.last)
    import resource

    out["self_maxrss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    Path(args.out).write_text(json.dumps(out, default=str), encoding="utf-8")
    return 0


# -------------------------------------------------------------------------------- the parent

class Project:
    """One size's project: its config, landing dir, warehouse, model store and instance."""

    def __init__(self, rows: int, rows_per_day: int, today: dt.date, chunk_rows: int = 0
                 ) -> None:
        import yaml

        self.rows, self.rows_per_day, self.chunk_rows = rows, rows_per_day, chunk_rows
        self.days = max(1, round(rows / rows_per_day))
        self.label = size_label(rows)
        self.root = WORK / self.label
        shutil.rmtree(self.root, ignore_errors=True)
        (self.root / "dagster_home").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "dagster.yaml", self.root / "dagster_home" / "dagster.yaml")
        self.first = today - dt.timedelta(days=self.days + GAP_DAYS)
        self.last = self.first + dt.timedelta(days=self.days - 1)
        self.new_day = self.last + dt.timedelta(days=1)
        (self.root / "ct.yaml").write_text(yaml.safe_dump({
            "dataset": {"source": "simulator", "landing_dir": "landing"},
            "partitions": {"start": self.first.isoformat(), "granularity": "daily"},
            "training": {"window": 30, "holdout": 5},
            "storage": {"dir": "storage"},
        }), encoding="utf-8")

    def run(self, stage: str, first: dt.date, last: dt.date) -> dict[str, Any]:
        """Run one stage in a child process; its result with wall time and peak RSS."""
        out = self.root / f"{stage}.json"
        out.unlink(missing_ok=True)
        env = {**os.environ, "CT_CONFIG": str(self.root / "ct.yaml"),
               "DAGSTER_HOME": str(self.root / "dagster_home"), "PYTHONWARNINGS": "ignore"}
        command = [sys.executable, str(Path(__file__).resolve()), "--child", stage,
                   "--project", str(self.root), "--first", first.isoformat(),
                   "--last", last.isoformat(), "--days", str((last - first).days + 1),
                   "--rows-per-day", str(self.rows_per_day), "--out", str(out),
                   "--chunk-rows", str(self.chunk_rows)]
        with (self.root / f"{stage}.log").open("ab") as log_file:
            began = time.perf_counter()
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file,
                                       stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(process.pid, 0)
            wall = time.perf_counter() - began
            process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0 or not out.is_file():
            tail = (self.root / f"{stage}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.label} {stage} exited {process.returncode}:\n{tail}")
        result = json.loads(out.read_text(encoding="utf-8"))
        result["wall_seconds"] = wall
        result["peak_rss_mib"] = round(usage.ru_maxrss / 1024, 1)  # KiB on Linux
        rows, seconds = result["rows"], result["run_seconds"]
        result["rows_per_second"] = round(rows / seconds) if seconds > 0 else None
        result["seconds_per_million_rows"] = round(seconds / rows * 1e6, 3) if rows else None
        return result

    def full_load(self) -> dict[str, dict[str, Any]]:
        """Every stage over the whole history, one process each."""
        stages = {}
        for stage in STAGES:
            stages[stage] = self.run(stage, self.first, self.last)
            log(f"  {self.label} {stage:9s} {summary_line(stages[stage])}")
        return stages

    def incremental(self, repeat: int) -> dict[str, Any]:
        """One more day lands; its partition through each per-partition stage, best of `repeat`."""
        runs: dict[str, list[dict[str, Any]]] = {stage: [] for stage in INCREMENTAL}
        runs["simulate"].append(self.run("simulate", self.new_day, self.new_day))
        for repetition in range(repeat):
            for stage in INCREMENTAL[1:]:
                runs[stage].append(self.run(stage, self.new_day, self.new_day))
            log(f"  {self.label} new partition #{repetition + 1}: " + ", ".join(
                f"{stage} {runs[stage][-1]['run_seconds']:.2f}s" for stage in INCREMENTAL[1:]))
        best = {stage: min(values, key=lambda run: run["run_seconds"])
                for stage, values in runs.items()}
        return {"partition": self.new_day.isoformat(), "best": best,
                "run_seconds_all": {stage: [round(run["run_seconds"], 3) for run in values]
                                    for stage, values in runs.items()}}

    def disk_mib(self) -> float:
        """Size of the project directory (landing, warehouse, models, instance)."""
        return round(sum(path.stat().st_size for path in self.root.rglob("*")
                         if path.is_file()) / 2**20, 1)


def summary_line(result: dict[str, Any]) -> str:
    """`12.34s  1,000,000 rows  81,037 rows/s  peak 812 MiB`."""
    rate = result.get("rows_per_second") or 0
    return (f"{result['run_seconds']:8.2f}s  {result['rows']:>11,} rows  {rate:>10,} rows/s  "
            f"peak {result['peak_rss_mib']:7.0f} MiB  (process {result['wall_seconds']:.1f}s)")


def rows_read_total(result: dict[str, Any]) -> int:
    """Rows a stage read: warehouse rows returned plus landed rows read."""
    return int(sum(result.get("rows_read", {}).values()) + result.get("landed_rows_read", 0))


def compact(result: dict[str, Any]) -> dict[str, Any]:
    """A stage's figures as written to the JSON."""
    keep = ("run_seconds", "wall_seconds", "definitions_seconds", "rows", "rows_per_second",
            "seconds_per_million_rows", "peak_rss_mib", "self_maxrss_mib", "step_seconds",
            "rows_read", "rows_written", "landed_files_read", "landed_rows_read", "workers",
            "metadata")
    out = {key: result[key] for key in keep if key in result}
    for key in ("run_seconds", "wall_seconds", "definitions_seconds"):
        if key in out:
            out[key] = round(out[key], 3)
    out["rows_read_total"] = rows_read_total(result)
    return out


def assess(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """Ratios against the smallest size, and each goal met or not."""
    base, largest = sizes[0], sizes[-1]
    ratios: dict[str, dict[str, float]] = {}
    for stage in STAGES:
        per_row = base["stages"][stage]["run_seconds"] / base["stages"][stage]["rows"]
        ratios[stage] = {size["label"]: round(
            size["stages"][stage]["run_seconds"] / size["stages"][stage]["rows"] / per_row, 3)
            for size in sizes[1:]}
    rss = {stage: largest["stages"][stage]["peak_rss_mib"] for stage in STAGES}
    incremental_time = {}
    incremental_rows = {}
    for stage in INCREMENTAL[1:]:
        first, last = base["incremental"]["best"][stage], largest["incremental"]["best"][stage]
        incremental_time[stage] = round(last["run_seconds"] / first["run_seconds"], 3)
        incremental_rows[stage] = round(rows_read_total(last) / max(1, rows_read_total(first)),
                                        3)
    goals = {
        "peak_rss": {"at": largest["label"], "limit_mib": GOAL_RSS_MIB, "per_stage": {
            stage: {"peak_rss_mib": value, "met": value <= GOAL_RSS_MIB}
            for stage, value in rss.items()}},
        "time_per_row_flat": {"limit": GOAL_RATIO, "against": base["label"], "per_stage": {
            stage: {"ratios": values, "met": all(v <= GOAL_RATIO for v in values.values())}
            for stage, values in ratios.items()}},
        "incremental": {"limit": GOAL_RATIO, "compared": f"{largest['label']} / {base['label']}",
                        "per_stage": {stage: {
                            "time_ratio": incremental_time[stage],
                            "rows_read_ratio": incremental_rows[stage],
                            "met": incremental_time[stage] <= GOAL_RATIO
                            and incremental_rows[stage] <= GOAL_RATIO}
                            for stage in incremental_time}},
    }
    goals["all_met"] = all(item["met"] for goal in goals.values() if isinstance(goal, dict)
                           for item in goal["per_stage"].values())
    return {"ratios_time_per_row": ratios, "goals": goals}


def print_table(sizes: list[dict[str, Any]], assessment: dict[str, Any]) -> None:
    """The results as text tables."""
    ratios = assessment["ratios_time_per_row"]
    header = (f"{'size':>5} {'stage':9} {'seconds':>9} {'rows':>11} {'rows/s':>10} "
              f"{'s/M rows':>9} {'peak MiB':>9} {'ratio':>6}")
    print("\nfull load (one run, one process per stage; seconds: the run, without start-up)")
    print(header)
    for size in sizes:
        for stage in STAGES:
            item = size["stages"][stage]
            ratio = ratios[stage].get(size["label"])
            print(f"{size['label']:>5} {stage:9} {item['run_seconds']:9.2f} {item['rows']:>11,} "
                  f"{item['rows_per_second'] or 0:>10,} {item['seconds_per_million_rows']:>9.2f} "
                  f"{item['peak_rss_mib']:>9.0f} {'' if ratio is None else f'{ratio:.2f}':>6}")
    print("\none new partition after the full load (best of the repetitions)")
    print(f"{'size':>5} {'stage':9} {'seconds':>9} {'rows read':>10} {'files read':>10} "
          f"{'peak MiB':>9}")
    for size in sizes:
        for stage in INCREMENTAL[1:]:
            item = size["incremental"]["best"][stage]
            print(f"{size['label']:>5} {stage:9} {item['run_seconds']:9.2f} "
                  f"{rows_read_total(item):>10,} {item.get('landed_files_read', 0):>10} "
                  f"{item['peak_rss_mib']:>9.0f}")
    print("\ngoals")
    for name, goal in assessment["goals"].items():
        if not isinstance(goal, dict):
            continue
        for stage, item in goal["per_stage"].items():
            figures = {key: value for key, value in item.items() if key != "met"}
            print(f"  {name:18s} {stage:9s} {'met' if item['met'] else 'MISSED':6s} {figures}")
    print(f"  all met: {assessment['goals']['all_met']}")


def main(argv: list[str] | None = None) -> int:
    """Run every size, write the JSON, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1M,3M,10M")
    parser.add_argument("--rows-per-day", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3,
                        help="repetitions of the one-new-partition step (best kept)")
    parser.add_argument("--keep", action="store_true", help="keep the projects' data")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--chunk-rows", type=int, default=0,
                        help="experiments: rows per chunk of a range run (default: "
                             "ct_assets.lib.warehouse.CHUNK_ROWS)")
    parser.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--project", help=argparse.SUPPRESS)
    parser.add_argument("--first", help=argparse.SUPPRESS)
    parser.add_argument("--last", help=argparse.SUPPRESS)
    parser.add_argument("--days", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args)

    rows_wanted = sorted(parse_size(text) for text in args.sizes.split(","))
    today = dt.datetime.now(dt.UTC).date()
    load_before = round(os.getloadavg()[0], 2)
    began = time.perf_counter()
    sizes = []
    for rows in rows_wanted:
        project = Project(rows, args.rows_per_day, today, args.chunk_rows)
        log(f"{project.label}: {project.days} days x {args.rows_per_day:,} rows "
            f"({project.first} … {project.last}) in {project.root}")
        stages = project.full_load()
        incremental = project.incremental(args.repeat)
        sizes.append({"label": project.label, "rows": project.days * args.rows_per_day,
                      "days": project.days, "first_day": project.first.isoformat(),
                      "last_day": project.last.isoformat(), "disk_mib": project.disk_mib(),
                      "stages": {stage: compact(result) for stage, result in stages.items()},
                      "incremental": {
                          "partition": incremental["partition"],
                          "best": {stage: compact(result)
                                   for stage, result in incremental["best"].items()},
                          "run_seconds_all": incremental["run_seconds_all"]}})
        if not args.keep:
            shutil.rmtree(project.root, ignore_errors=True)
    assessment = assess(sizes)
    total = time.perf_counter() - began
    report = {
        "benchmark": "scale",
        "description": "simulated days through ingest, features, training (30-day window), "
                       "scoring and drift, each stage one run over the whole history in its "
                       "own process; then one new partition through ingest, features, scoring "
                       "and drift",
        "rows_per_day": args.rows_per_day,
        "sizes": sizes,
        **assessment,
        "method": {
            "sizes": "days scale at fixed rows per day, so a partition is the same work at "
                     "every size; time per row is flat unless something grows with history",
            "seconds": "run_seconds: the run's own time in the child (execute_in_process, "
                       "or all days written for simulate), without interpreter and Dagster "
                       "start-up; wall_seconds: the whole child process",
            "peak_rss": "ru_maxrss of os.wait4 on the stage's child process (Linux: the "
                        "child's peak, or a waited-for descendant's if larger)",
            "rows": "ingest, features, scoring: rows written; training: training-set rows "
                    "(train + holdout); drift: feature rows judged; simulate: rows written",
            "rows_read": "rows returned by Warehouse.read_range / Warehouse.query, plus "
                         "landed rows read by ingestion, counted in the child",
            "incremental": f"best of {args.repeat} runs of the one new partition",
        },
        "total_seconds": round(total, 1),
        "machine": machine_info(("dagster", "duckdb", "polars", "lightgbm"),
                                load_average_1m_before=load_before,
                                load_average_1m_after=round(os.getloadavg()[0], 2)),
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.out.with_name(f".{args.out.name}.tmp")
    temporary.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(temporary, args.out)
    print_table(sizes, assessment)
    print(f"\ntotal {total / 60:.1f} min; results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
