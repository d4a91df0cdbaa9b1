"""Incremental monitoring: is one new partition as cheap with a year of history as with a week?

Two projects in `benchmarks/work/incremental/`, each with its own persistent Dagster instance
(sqlite, the repository's `dagster.yaml`), warehouse and model store:

- `year`: 365 daily partitions of history (the 365 days before today);
- `week`: 7 daily partitions of history (the 7 days before today).

Each is prepared with ONE range run per job (`data_job`, `scoring_job`, `drift_job` over the
whole history) and one `retrain_job`. Both train on the same last 7 days (`training.window` 7,
`training.holdout` 2), so the two deployed models are trained on identical rows and only the
length of the history differs. Then today's file lands (the same rows in both projects) and the
per-partition pipeline for that one new partition — `data_job` (raw_events + features),
`scoring_job` (predictions), `drift_job` (drift_report), each `execute_in_process` with
`partition_key` — is timed, best of `--repeat` (the total; per-job figures come from that same
repetition, and the best per job is reported too). Goal: year / week <= 1.2.

`--profile` also profiles one repetition per setup (cProfile, top functions by cumulative time).
Results: `benchmarks/results/incremental.json`.

    .venv/bin/python benchmarks/incremental.py [--rows-per-day 2000] [--repeat 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import os
import platform
import pstats
import shutil
import sys
import time
import warnings
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "incremental.json"
WORK = ROOT / "benchmarks" / "work" / "incremental"
GOAL_RATIO = 1.2
JOBS = ("data_job", "scoring_job", "drift_job")
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Setup:
    """One project with `history` days before `today` ingested, scored and monitored."""

    def __init__(self, name: str, history: int, today: dt.date, rows_per_day: int):
        import dagster as dg

        from ct_assets.definitions import build_definitions
        from ct_assets.lib.config import load_config

        self.name, self.history, self.today = name, history, today
        self.rows_per_day = rows_per_day
        self.root = WORK / name
        shutil.rmtree(self.root, ignore_errors=True)
        home = self.root / "dagster_home"
        home.mkdir(parents=True)
        shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
        self.first_day = today - dt.timedelta(days=history)
        config_path = self.root / "ct.yaml"
        config_path.write_text(yaml.safe_dump({
            "dataset": {"source": "simulator"},
            "partitions": {"start": self.first_day.isoformat()},
            "training": {"window": 7, "holdout": 2},
            "storage": {"dir": str(self.root / "storage")},
        }), encoding="utf-8")
        self.config = load_config(config_path)
        self.home = home
        self.instance = dg.DagsterInstance.from_config(str(home))
        self.defs = build_definitions(self.config)

    def run(self, job: str, *, partition: str | None = None,
            partitions: tuple[str, str] | None = None, tags: dict[str, str] | None = None
            ) -> float:
        run_tags = dict(tags or {})
        if partitions:
            run_tags.update({RANGE_START_TAG: partitions[0], RANGE_END_TAG: partitions[1]})
        began = time.perf_counter()
        result = self.defs.resolve_job_def(job).execute_in_process(
            instance=self.instance, partition_key=partition, tags=run_tags, run_config=QUIET,
            raise_on_error=False)
        seconds = time.perf_counter() - began
        if not result.success:
            raise RuntimeError(f"{self.name}: {job} failed: " + "; ".join(
                str(event.step_failure_data.error and event.step_failure_data.error.message)
                for event in result.get_step_failure_events()))
        return seconds

    def prepare(self) -> dict[str, float]:
        from ct_assets.lib.simulator import write_days

        timings: dict[str, float] = {}
        began = time.perf_counter()
        write_days(self.config.landing_dir, start=self.first_day, days=self.history,
                   rows_per_day=self.rows_per_day)
        timings["simulate"] = time.perf_counter() - began
        history = (self.first_day.isoformat(),
                   (self.today - dt.timedelta(days=1)).isoformat())
        timings["data_job"] = self.run("data_job", partitions=history)
        timings["retrain_job"] = self.run("retrain_job", tags={"ct/reason": "initial"})
        timings["scoring_job"] = self.run("scoring_job", partitions=history)
        timings["drift_job"] = self.run("drift_job", partitions=history)
        write_days(self.config.landing_dir, start=self.today, days=1,
                   rows_per_day=self.rows_per_day)
        return {key: round(value, 2) for key, value in timings.items()}

    def new_partition(self) -> dict[str, float]:
        key = self.today.isoformat()
        times = {job: self.run(job, partition=key) for job in JOBS}
        times["total"] = sum(times.values())
        return times

    def close(self) -> None:
        self.instance.dispose()


def profile(setup: Setup, top: int = 25) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    setup.new_partition()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-day", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--year", type=int, default=365)
    parser.add_argument("--week", type=int, default=7)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import dagster as dg

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    os.environ.pop("CT_CONFIG", None)
    today = dt.datetime.now(dt.UTC).date()
    setups = {}
    preparation = {}
    for name, history in (("year", args.year), ("week", args.week)):
        log(f"preparing {name}: {history} partitions x {args.rows_per_day} rows")
        setup = Setup(name, history, today, args.rows_per_day)
        preparation[name] = setup.prepare()
        log(f"  {preparation[name]}")
        setups[name] = setup
    # Alternate the setups so that drift in the machine's speed hits both alike.
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in setups}
    for repetition in range(args.repeat):
        for name, setup in setups.items():
            times = setup.new_partition()
            runs[name].append(times)
            log(f"{name} #{repetition + 1}: " + ", ".join(
                f"{job} {seconds:.2f}s" for job, seconds in times.items()))
    best = {name: min(values, key=lambda t: t["total"]) for name, values in runs.items()}
    best_per_job = {name: {job: min(t[job] for t in values) for job in (*JOBS, "total")}
                    for name, values in runs.items()}
    ratio = best["year"]["total"] / best["week"]["total"]
    profiles = {}
    if args.profile:
        for name, setup in setups.items():
            profiles[name] = profile(setup)
    rows = {}
    for name, setup in setups.items():
        rows[name] = {"partitions_materialized": {
            asset: len(setup.instance.get_materialized_partitions(dg.AssetKey(asset)))
            for asset in ("raw_events", "features", "predictions", "drift_report")}}
        setup.close()
    result = {
        "benchmark": "incremental",
        "description": "one new daily partition through data_job + scoring_job + drift_job "
                       "(execute_in_process, partition_key), with 365 vs 7 partitions of "
                       "history already ingested, scored and monitored",
        "goal_ratio": GOAL_RATIO,
        "ratio_year_over_week": round(ratio, 3),
        "meets_goal": ratio <= GOAL_RATIO,
        "best_seconds": {name: {k: round(v, 3) for k, v in t.items()} for name, t in best.items()},
        "best_per_job_seconds": {name: {k: round(v, 3) for k, v in t.items()}
                                 for name, t in best_per_job.items()},
        "per_job_ratio": {job: round(best_per_job["year"][job] / best_per_job["week"][job], 3)
                          for job in (*JOBS, "total")},
        "runs": {name: [{k: round(v, 3) for k, v in t.items()} for t in values]
                 for name, values in runs.items()},
        "setup": {"rows_per_day": args.rows_per_day, "history_partitions":
                  {"year": args.year, "week": args.week}, "new_partition": today.isoformat(),
                  "repeat": args.repeat, "training_window": 7, "training_holdout": 2,
                  "preparation_seconds": preparation, **rows},
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
    }
    if profiles:
        result["profiles"] = {name: text.splitlines()[:60] for name, text in profiles.items()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nnew partition, best of {args.repeat}: year {best['year']['total']:.2f}s, week "
          f"{best['week']['total']:.2f}s → ratio {ratio:.3f} (goal <= {GOAL_RATIO}: "
          f"{'met' if ratio <= GOAL_RATIO else 'MISSED'})")
    for job in (*JOBS, "total"):
        print(f"  {job:12s} year {best_per_job['year'][job]:.3f}s  week "
              f"{best_per_job['week'][job]:.3f}s  ratio {result['per_job_ratio'][job]:.3f}")
    for name, text in profiles.items():
        print(f"\n--- profile: {name} ---\n" + "\n".join(text.splitlines()[:45]))
    print(f"→ {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
