"""Loop latency: a drifted batch landing → the retrained model deployed, with the live daemon.

`dagster-daemon run -m ct_assets.definitions` runs against a fresh project in
`benchmarks/work/loop_latency/` with DEFAULT settings: every sensor at its shipped interval
(30 s; `$CT_SENSOR_INTERVAL_SECONDS` is removed from the environment), the repository's
`dagster.yaml`, and the default `ct.yaml` sections (training window 30 partitions, holdout 5,
LightGBM, gate, drift, triggers) — only `dataset`, `partitions.start`, `storage` and two
triggers settings are set (`cooldown: 0`, and `drift_waits_for_labels: false`: by default a
drift retrain waits for the drifted day's labels, which land a day later).

Preparation: `--history` clean days of `--rows-per-day` rows land (30 x 10,000 = a 300k-row
training window); the daemon ingests them and `freshness_sensor` deploys a first model.

Each event lands ONE new day that changes the regime (the days after the history, one per
event, the last one today): covariate-drifted, then clean again, alternately, since a retrain
takes its drift reference from the change it answers (a second drifted day matches it and
retrains nothing: one drift, one retrain). `triggers.cooldown` is 0 here, as the events come a
day apart. Each event times, by polling `models/deployed.json` every 0.25 s, how long until a
new version is deployed. Between events the daemon is left alone until nothing has run for
45 s (the re-check of the day by the new model, which must launch no retrain).

The breakdown of each event comes from the instance: when `landing_sensor`'s `landing_job` run
for the day (ingest, features, predictions, drift_report) was created and finished, when the
`feature_drift` check failed, when the `retrain_job` (reason `drift`) was created, started and
finished, and when `deployed.json` changed. Results: `benchmarks/results/loop_latency.json`.

    .venv/bin/python benchmarks/loop_latency.py [--events 5] [--rows-per-day 10000]
        [--history 30] [--timeout 600]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ct_assets_tests.live import Daemon, idle_for, poll

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "loop_latency.json"
WORK = ROOT / "benchmarks" / "work" / "loop_latency"
BIN = Path(sys.executable).parent
GOAL_SECONDS = 90.0
QUIET_SECONDS = 45.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        today = dt.datetime.now(dt.UTC).date()
        self.event_days = [today - dt.timedelta(days=args.events - 1 - i)
                           for i in range(args.events)]
        self.first_day = self.event_days[0] - dt.timedelta(days=args.history)
        shutil.rmtree(WORK, ignore_errors=True)
        self.home = WORK / "dagster_home"
        self.home.mkdir(parents=True)
        shutil.copyfile(ROOT / "dagster.yaml", self.home / "dagster.yaml")
        self.config_path = WORK / "ct.yaml"
        self.config_path.write_text(yaml.safe_dump({
            "dataset": {"source": "simulator"},
            "partitions": {"start": self.first_day.isoformat()},
            # Events come a day apart, each a new change; the retrain is timed from the drifted
            # day's landing, not from its labels' (a day later): it starts as drift is seen.
            "triggers": {"cooldown": 0, "drift_waits_for_labels": False},
            "storage": {"dir": str(WORK / "storage")},
        }), encoding="utf-8")
        os.environ["DAGSTER_HOME"] = str(self.home)
        os.environ["CT_CONFIG"] = str(self.config_path)
        os.environ.pop("CT_SENSOR_INTERVAL_SECONDS", None)  # default intervals
        from ct_assets.defs.automation import SENSOR_INTERVAL_SECONDS
        from ct_assets.lib.config import load_config
        from ct_assets.lib.model_store import ModelStore

        self.config = load_config(self.config_path)
        self.store = ModelStore(self.config.models_dir)
        self.sensor_interval = SENSOR_INTERVAL_SECONDS  # the shipped default: env removed
        self.daemon = Daemon(dict(os.environ), WORK / "daemon.log")

    # --- instance helpers -----------------------------------------------------------------

    def instance(self):
        import dagster as dg

        return dg.DagsterInstance.from_config(str(self.home))

    def run_records(self) -> list[Any]:
        with self.instance() as instance:
            return list(reversed(instance.get_run_records()))

    def describe_runs(self) -> str:
        lines = []
        for record in self.run_records():
            run = record.dagster_run
            tags = {k: v for k, v in run.tags.items() if k.startswith("ct/") or k in (
                "dagster/partition", "dagster/asset_partition_range_start",
                "dagster/asset_partition_range_end", "dagster/sensor_name")}
            lines.append(f"  {record.create_timestamp:%H:%M:%S} {run.run_id[:8]} "
                         f"{run.job_name} {run.status.value} {tags}")
        return "\n".join(lines)

    def deployed_version(self) -> str | None:
        deployed = self.store.deployed()
        return deployed["version"] if deployed else None

    def wait(self, what: str, condition, timeout: float, every: float = 1.0) -> Any:
        return poll(what, condition, timeout, every, lambda: (
            f"runs:\n{self.describe_runs()}\n--- daemon log ---\n{self.daemon.tail(40)}"))

    def wait_quiet(self, seconds: float, timeout: float) -> None:
        self.wait(f"{seconds:.0f}s without runs", idle_for(self.home, seconds), timeout)

    # --- the benchmark --------------------------------------------------------------------

    def land(self, start: dt.date, days: int, drift: str) -> float:
        from ct_assets.lib.simulator import DriftScenario, write_days

        scenario = DriftScenario(drift, start if drift != "none" else None)
        write_days(self.config.landing_dir, start=start, days=days,
                   rows_per_day=self.args.rows_per_day, seed=0, drift=scenario)
        return time.time()

    def prepare(self) -> dict[str, Any]:
        began = time.time()
        self.daemon.start()
        self.land(self.first_day, self.args.history, "none")
        log(f"landed {self.args.history} clean days {self.first_day} … "
            f"{self.event_days[0] - dt.timedelta(days=1)} ({self.args.rows_per_day} rows/day)")
        self.wait("the first model", self.deployed_version, self.args.timeout * 2)
        deployed = time.time()
        log(f"first model {self.deployed_version()} deployed after {deployed - began:.0f}s")
        self.wait_quiet(QUIET_SECONDS, self.args.timeout)
        return {"first_model_seconds": round(deployed - began, 1),
                "settled_seconds": round(time.time() - began, 1)}

    def event(self, index: int, day: dt.date) -> dict[str, Any]:
        before = self.deployed_version()
        drift = "covariate" if index % 2 == 0 else "none"
        landed = self.land(day, 1, drift)
        log(f"event {index}: landed {'covariate-drifted' if drift != 'none' else 'clean'} {day}")
        self.wait(f"a new deployed version after landing {day}",
                  lambda: self.deployed_version() not in (None, before), self.args.timeout,
                  every=0.25)
        deployed_at = time.time()
        deployed = self.store.deployed()
        total = deployed_at - landed
        log(f"event {index}: {deployed['version']} deployed ({deployed['reason']}) "
            f"{total:.1f}s after landing")
        self.wait_quiet(QUIET_SECONDS, self.args.timeout)
        return {"event": index, "day": day.isoformat(), "drift": drift,
                "landed_at": dt.datetime.fromtimestamp(landed, dt.UTC).isoformat(),
                "seconds": round(total, 2), "version": deployed["version"],
                "reason": deployed["reason"], "previous": before,
                **self.breakdown(day, landed, deployed_at)}

    def breakdown(self, day: dt.date, landed: float, deployed_at: float) -> dict[str, Any]:
        """Stage times (seconds after landing) read from the instance."""
        import dagster as dg
        from dagster._core.storage.asset_check_execution_record import (
            AssetCheckExecutionRecordStatus,
        )

        key = day.isoformat()
        records = [r for r in self.run_records() if r.create_timestamp.timestamp() >= landed]

        def first(predicate) -> Any:
            return next((r for r in records if predicate(r.dagster_run)), None)

        data = first(lambda run: run.job_name == "landing_job"
                     and run.tags.get("dagster/asset_partition_range_end") == key)
        retrain = first(lambda run: run.job_name == "retrain_job")
        with self.instance() as instance:
            failures = instance.event_log_storage.get_asset_check_execution_history(
                dg.AssetCheckKey(dg.AssetKey("drift_report"), "feature_drift"), limit=20,
                status={AssetCheckExecutionRecordStatus.FAILED})
        failed = min((f.event.timestamp if f.event else f.create_timestamp
                      for f in failures if f.create_timestamp >= landed), default=None)

        def after(value: Any) -> float | None:
            if value is None:
                return None
            stamp = value.timestamp() if isinstance(value, dt.datetime) else float(value)
            return round(stamp - landed, 2)

        timeline = {
            "landing_run_created": after(data and data.create_timestamp),
            "landing_run_started": after(data and data.start_time),
            "drift_check_failed": after(failed),
            "landing_run_finished": after(data and data.end_time),
            "retrain_created": after(retrain and retrain.create_timestamp),
            "retrain_started": after(retrain and retrain.start_time),
            "retrain_finished": after(retrain and retrain.end_time),
            "deployed_seen": round(deployed_at - landed, 2),
        }
        points = [(name, value) for name, value in timeline.items() if value is not None]
        waits = {
            "landing_sensor_wait": _gap(timeline, None, "landing_run_created"),
            "landing_run_queue": _gap(timeline, "landing_run_created", "landing_run_started"),
            "landing_run_to_check": _gap(timeline, "landing_run_started",
                                         "drift_check_failed"),
            "drift_sensor_wait": _gap(timeline, "drift_check_failed", "retrain_created"),
            "retrain_queue": _gap(timeline, "retrain_created", "retrain_started"),
            "retrain_run": _gap(timeline, "retrain_started", "deployed_seen"),
        }
        return {"timeline": timeline, "stages": waits, "order_ok": points == sorted(
            points, key=lambda item: item[1]),
            "retrain_reason": retrain.dagster_run.tags.get("ct/reason") if retrain else None,
            "retrain_run_key": retrain.dagster_run.tags.get("dagster/run_key")
            if retrain else None}


def sensor_ticks(bench: Bench) -> dict[str, dict[str, float]]:
    """Per sensor: ticks evaluated and their median / max duration (Dagster times out at 60 s)."""
    figures = {}
    with bench.instance() as instance:
        for state in instance.all_instigator_state():
            ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id,
                                       limit=10_000)
            seconds = [t.end_timestamp - t.timestamp for t in ticks if t.end_timestamp]
            if seconds:
                figures[state.instigator_name] = {
                    "ticks": len(seconds), "median_seconds": round(statistics.median(seconds), 3),
                    "max_seconds": round(max(seconds), 3)}
    return dict(sorted(figures.items()))


def _gap(timeline: dict[str, float | None], start: str | None, end: str) -> float | None:
    begin = 0.0 if start is None else timeline.get(start)
    finish = timeline.get(end)
    return None if begin is None or finish is None else round(finish - begin, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5)
    parser.add_argument("--rows-per-day", type=int, default=10_000)
    parser.add_argument("--history", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    if args.events < 3:
        parser.error("--events must be at least 3 (the figure is a median)")
    bench = Bench(args)
    started = time.time()
    events: list[dict[str, Any]] = []
    try:
        preparation = bench.prepare()
        for index, day in enumerate(bench.event_days):
            events.append(bench.event(index, day))
        drift_runs = [r.dagster_run.run_id for r in bench.run_records()
                      if r.dagster_run.job_name == "retrain_job"
                      and r.dagster_run.tags.get("ct/reason") == "drift"]
        ticks = sensor_ticks(bench)
    finally:
        bench.daemon.stop()
    seconds = [event["seconds"] for event in events]
    stages = {name: round(statistics.median(values), 2) for name in events[0]["stages"]
              if (values := [e["stages"][name] for e in events
                             if e["stages"][name] is not None])}
    median = statistics.median(seconds)
    result = {
        "benchmark": "loop_latency",
        "description": "drifted day landing → retrained model deployed, live dagster-daemon at "
                       "default settings (30 s sensor intervals)",
        "goal_seconds": GOAL_SECONDS,
        "median_seconds": round(median, 2),
        "min_seconds": round(min(seconds), 2),
        "max_seconds": round(max(seconds), 2),
        "meets_goal": median < GOAL_SECONDS,
        "median_stages_seconds": stages,
        "events": events,
        "sensor_ticks": ticks,
        "drift_retrains": len(drift_runs),
        "one_retrain_per_event": len(drift_runs) == len(events),
        "setup": {"rows_per_day": args.rows_per_day, "history_days": args.history,
                  "training_window_partitions": bench.config.training.window,
                  "training_holdout_partitions": bench.config.training.holdout,
                  "training_window_rows": bench.config.training.window * args.rows_per_day,
                  "model": bench.config.training.model,
                  "sensor_interval_seconds": bench.sensor_interval, "events": args.events,
                  **preparation},
        "wall_seconds": round(time.time() - started, 1),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nloop latency over {len(events)} events: median {median:.1f}s "
          f"(min {min(seconds):.1f}s, max {max(seconds):.1f}s); goal < {GOAL_SECONDS:.0f}s: "
          f"{'met' if result['meets_goal'] else 'MISSED'}")
    print("median stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in stages.items()))
    for event in events:
        print(f"  {event['day']}: {event['seconds']:.1f}s → {event['version']} "
              f"({event['reason']}); {event['stages']}")
    print("sensor ticks: " + ", ".join(f"{name} max {t['max_seconds']:.2f}s"
                                       for name, t in ticks.items()))
    print(f"drift retrains: {len(drift_runs)} for {len(events)} events → {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
