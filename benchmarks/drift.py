# Evidently is a benchmark-only dependency, not one of the project's. Install it into the venv:
#     .venv/bin/pip install evidently "pandas<3"
"""Drift benchmark: `compute_drift` vs a per-column scipy loop vs Evidently's `DataDriftPreset`.

Synthetic data (numpy, fixed seed): `--rows` reference rows and `--current-rows` current rows,
`--numeric` numeric columns (normal, lognormal, exponential, uniform, Poisson counts) and
`--categorical` categorical columns (strings); a few columns are shifted in the current sample
(`SHIFTED`), the others are drawn from the reference distribution.

Each method runs in its own subprocess, which builds the data in the method's input format,
then times the method alone:
- `compute_drift`: polars frames; `fit_reference` of the reference, then `compute_drift(profile,
  current)` with the default `auto` methods (normalised Wasserstein / Jensen-Shannon above 1,000
  rows, as Evidently), timed separately and in total; then, untimed for the goal, the same
  profile with `ks` / `chisquare` for comparison with the scipy loop;
- `scipy`: the same polars frames; per column `scipy.stats.ks_2samp` (numeric) or category
  counts (polars `value_counts`) + `scipy.stats.chisquare` (categorical, goodness of fit against
  the reference shares, as Evidently's chi-square);
- `evidently`: pandas frames; `Report([DataDriftPreset()]).run(current, reference)` with a
  `DataDefinition` naming the numeric and categorical columns.

Peak memory is the subprocess's peak resident set size (`getrusage(RUSAGE_SELF).ru_maxrss`,
the same figure `/usr/bin/time -v` reports); `method_peak_mb` subtracts the resident set size
measured once the input frames are built, i.e. what the method needs on top of its inputs.
Speed-ups use the first (cold) run of each method; best-of-`--repeat` times are reported too.
Results: `benchmarks/results/drift.json`.

    .venv/bin/python benchmarks/drift.py [--rows 1000000] [--current-rows 1000000]
        [--numeric 20] [--categorical 5] [--repeat 3] [--skip-evidently]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "drift.json"
GOAL_SPEEDUP = 50.0
CATEGORIES = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot")
CATEGORY_SHARES = np.array([0.3, 0.22, 0.18, 0.14, 0.1, 0.06])
SHIFTED = {  # column → what changes in the current sample
    "n0": "normal mean + 0.3 std",
    "n1": "normal std x 1.4",
    "n2": "lognormal x 1.25",
    "c0": "category shares moved",
}


# --- data ---------------------------------------------------------------------------------------


def numeric_names(count: int) -> list[str]:
    return [f"n{i}" for i in range(count)]


def categorical_names(count: int) -> list[str]:
    return [f"c{i}" for i in range(count)]


def make_columns(rows: int, *, numeric: int, categorical: int, current: bool,
                 seed: int) -> dict[str, np.ndarray]:
    """One sample as numpy arrays (float64 numeric, string categorical)."""
    rng = np.random.default_rng([seed, int(current)])
    columns: dict[str, np.ndarray] = {}
    for index, name in enumerate(numeric_names(numeric)):
        family = index % 5
        shifted = current and name in SHIFTED
        if family == 0:
            columns[name] = rng.normal(0.3 if shifted else 0.0, 1.0, rows)
        elif family == 1:
            columns[name] = rng.normal(10.0, 1.4 * 2.0 if shifted else 2.0, rows)
        elif family == 2:
            columns[name] = rng.lognormal(3.0, 1.0, rows) * (1.25 if shifted else 1.0)
        elif family == 3:
            columns[name] = rng.exponential(5.0, rows)
        else:
            columns[name] = rng.poisson(4.0, rows).astype(np.float64)
    labels = np.array(CATEGORIES)
    for index, name in enumerate(categorical_names(categorical)):
        shares = CATEGORY_SHARES[: 3 + index % 4]
        if current and name in SHIFTED:
            shares = shares[::-1]
        codes = rng.choice(shares.size, rows, p=shares / shares.sum())
        columns[name] = labels[codes]
    return columns


def rss_mb() -> float:
    """Current resident set size (MB)."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    """Peak resident set size of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- workers ------------------------------------------------------------------------------------


def polars_frames(args: argparse.Namespace) -> tuple[Any, Any]:
    import polars as pl

    frames = []
    for current in (False, True):
        rows = args.current_rows if current else args.rows
        columns = make_columns(rows, numeric=args.numeric, categorical=args.categorical,
                               current=current, seed=args.seed)
        frames.append(pl.DataFrame(columns))
        del columns
    return frames[0], frames[1]


def run_compute_drift(args: argparse.Namespace) -> dict[str, Any]:
    from ct_assets.lib.config import DriftConfig
    from ct_assets.lib.drift import ReferenceProfile, compute_drift, fit_reference

    reference, current = polars_frames(args)
    inputs_mb = rss_mb()
    runs = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        profile = fit_reference(reference)
        fitted = time.perf_counter()
        report = compute_drift(profile, current)
        done = time.perf_counter()
        runs.append({"fit_seconds": fitted - started, "compute_seconds": done - fitted,
                     "total_seconds": done - started})
    peak = peak_mb()
    started = time.perf_counter()
    tests = compute_drift(profile, current,
                          config=DriftConfig(methods={"numeric": "ks", "categorical": "chisquare"}))
    tests_seconds = time.perf_counter() - started
    started = time.perf_counter()
    text = profile.to_json()
    to_json_seconds = time.perf_counter() - started
    started = time.perf_counter()
    restored = ReferenceProfile.from_json(text)
    from_json_seconds = time.perf_counter() - started
    assert compute_drift(restored, current).equals(report)
    return {
        "runs": runs, "inputs_rss_mb": inputs_mb, "peak_mb": peak,
        "auto": {row["feature"]: {"method": row["method"], "statistic": row["statistic"],
                                  "p_value": row["p_value"], "drifted": row["drifted"]}
                 for row in report.iter_rows(named=True)},
        "tests": {row["feature"]: {"method": row["method"], "statistic": row["statistic"],
                                   "p_value": row["p_value"], "drifted": row["drifted"]}
                  for row in tests.iter_rows(named=True)},
        "tests_compute_seconds": tests_seconds,
        "profile": {"json_mb": len(text) / 1e6, "to_json_seconds": to_json_seconds,
                    "from_json_seconds": from_json_seconds},
    }


def run_scipy(args: argparse.Namespace) -> dict[str, Any]:
    import polars as pl
    from scipy import stats

    reference, current = polars_frames(args)
    inputs_mb = rss_mb()
    numeric = set(numeric_names(args.numeric))
    runs, results = [], {}
    for _ in range(args.repeat):
        started = time.perf_counter()
        results = {}
        for name in reference.columns:
            if name in numeric:
                test = stats.ks_2samp(reference[name].to_numpy(), current[name].to_numpy())
                results[name] = {"method": "ks", "statistic": float(test.statistic),
                                 "p_value": float(test.pvalue)}
                continue
            counts = (reference[name].value_counts(name="reference")
                      .join(current[name].value_counts(name="current"), on=name, how="full",
                            coalesce=True)
                      .fill_null(0).sort(name))
            observed = counts["current"].to_numpy().astype(float)
            expected = counts["reference"].to_numpy() * observed.sum() / reference.height
            test = stats.chisquare(observed, expected)
            homogeneity = stats.chi2_contingency(
                np.vstack([counts["reference"].to_numpy(), observed]), correction=False)
            results[name] = {"method": "chisquare", "statistic": float(test.statistic),
                             "p_value": float(test.pvalue),
                             "chi2_contingency_p_value": float(homogeneity.pvalue)}
        runs.append({"total_seconds": time.perf_counter() - started})
    for result in results.values():
        result["drifted"] = result["p_value"] < 0.05
    del pl
    return {"runs": runs, "inputs_rss_mb": inputs_mb, "peak_mb": peak_mb(), "columns": results}


def run_evidently(args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    frames = []
    for current in (False, True):
        rows = args.current_rows if current else args.rows
        frames.append(pd.DataFrame(make_columns(rows, numeric=args.numeric,
                                                categorical=args.categorical, current=current,
                                                seed=args.seed)))
    reference, current_frame = frames
    del frames
    definition = DataDefinition(numerical_columns=numeric_names(args.numeric),
                                categorical_columns=categorical_names(args.categorical))
    inputs_mb = rss_mb()
    runs, snapshot = [], None
    for _ in range(args.repeat):
        started = time.perf_counter()
        snapshot = Report([DataDriftPreset()]).run(
            Dataset.from_pandas(current_frame, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition))
        runs.append({"total_seconds": time.perf_counter() - started})
    peak = peak_mb()
    columns, dataset = {}, {}
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            method, threshold, value = config["method"], config["threshold"], metric["value"]
            p_value = "p_value" in method
            columns[config["column"]] = {
                "method": method, "statistic": float(value), "threshold": threshold,
                "drifted": bool(value <= threshold if p_value else value >= threshold)}
        elif config["type"].endswith("DriftedColumnsCount"):
            dataset = metric["value"]
    return {"runs": runs, "inputs_rss_mb": inputs_mb, "peak_mb": peak, "columns": columns,
            "dataset": dataset}


WORKERS = {"compute_drift": run_compute_drift, "scipy": run_scipy, "evidently": run_evidently}


# --- parent -------------------------------------------------------------------------------------


def spawn(method: str, args: argparse.Namespace, repeat: int) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", method,
               "--rows", str(args.rows), "--current-rows", str(args.current_rows),
               "--numeric", str(args.numeric), "--categorical", str(args.categorical),
               "--seed", str(args.seed), "--repeat", str(repeat)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env, cwd=ROOT)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - started
    result["method_peak_mb"] = result["peak_mb"] - result["inputs_rss_mb"]
    return result


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("numpy", "polars", "scipy", "pandas", "evidently"):
        try:
            module = __import__(package)
            found[package] = getattr(module, "__version__", None)
        except ImportError:
            found[package] = None
    return found


def machine() -> dict[str, Any]:
    model = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle
                          if line.startswith("model name")), None)
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"platform": platform.platform(), "processor": model, "cpus": os.cpu_count(),
            "memory_gb": round(memory, 1)}


def agreement(ours: dict[str, dict[str, Any]], theirs: dict[str, dict[str, Any]],
              *, comparable: set[str] | None = None) -> dict[str, Any]:
    """Same drift decisions? `comparable`: columns whose statistics mean the same thing."""
    columns = sorted(ours)
    differ = [name for name in columns if ours[name]["drifted"] != theirs[name]["drifted"]]
    gaps = [abs(ours[name]["statistic"] - theirs[name]["statistic"]) for name in columns
            if comparable is None or name in comparable]
    return {"columns": len(columns), "same_decision": len(columns) - len(differ),
            "all_agree": not differ, "disagree_on": differ,
            "ours_drifted": sorted(n for n in columns if ours[n]["drifted"]),
            "theirs_drifted": sorted(n for n in columns if theirs[n]["drifted"]),
            "max_abs_statistic_difference": max(gaps) if gaps else None}


def rounded(value: Any, digits: int = 4) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {key: rounded(item, digits) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item, digits) for item in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--current-rows", type=int, default=1_000_000)
    parser.add_argument("--numeric", type=int, default=20)
    parser.add_argument("--categorical", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--evidently-repeat", type=int, default=1)
    parser.add_argument("--skip-evidently", action="store_true")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return

    results: dict[str, Any] = {}
    print(f"{args.rows:,} reference rows, {args.current_rows:,} current rows, "
          f"{args.numeric} numeric + {args.categorical} categorical columns; "
          f"shifted: {', '.join(SHIFTED)}")
    plan = [("compute_drift", args.repeat), ("scipy", args.repeat)]
    if not args.skip_evidently:
        plan.append(("evidently", args.evidently_repeat))
    for method, repeat in plan:
        print(f"running {method} ({repeat} run{'s' if repeat > 1 else ''}) …", flush=True)
        results[method] = spawn(method, args, repeat)

    ours = results["compute_drift"]
    first = ours["runs"][0]
    times = {
        "compute_drift": {
            "fit_seconds": first["fit_seconds"], "compute_seconds": first["compute_seconds"],
            "total_seconds": first["total_seconds"],
            "best_total_seconds": min(run["total_seconds"] for run in ours["runs"]),
            "best_fit_seconds": min(run["fit_seconds"] for run in ours["runs"]),
            "best_compute_seconds": min(run["compute_seconds"] for run in ours["runs"]),
            "ks_chisquare_compute_seconds": ours["tests_compute_seconds"]},
        "scipy": {"total_seconds": results["scipy"]["runs"][0]["total_seconds"],
                  "best_total_seconds": min(r["total_seconds"]
                                            for r in results["scipy"]["runs"])},
    }
    memory = {name: {"peak_mb": result["peak_mb"], "inputs_rss_mb": result["inputs_rss_mb"],
                     "method_peak_mb": result["method_peak_mb"]}
              for name, result in results.items()}
    total = first["total_seconds"]
    speedups = {"vs_scipy_total": times["scipy"]["total_seconds"] / total,
                "vs_scipy_compute_only": times["scipy"]["total_seconds"]
                / first["compute_seconds"]}
    agreements: dict[str, Any] = {
        # Only the KS statistics are comparable: the loop's chisquare is the goodness of fit.
        "compute_drift_ks_chisquare_vs_scipy": agreement(
            ours["tests"], results["scipy"]["columns"],
            comparable=set(numeric_names(args.numeric))),
        "truth": {"shifted": sorted(SHIFTED),
                  "compute_drift_auto": sorted(n for n, r in ours["auto"].items()
                                               if r["drifted"]),
                  "compute_drift_ks_chisquare": sorted(n for n, r in ours["tests"].items()
                                                       if r["drifted"]),
                  "scipy": sorted(n for n, r in results["scipy"]["columns"].items()
                                  if r["drifted"])},
    }
    ks_p_gaps = [abs(ours["tests"][n]["p_value"] - r["p_value"])
                 for n, r in results["scipy"]["columns"].items() if r["method"] == "ks"]
    agreements["compute_drift_ks_chisquare_vs_scipy"]["max_abs_ks_p_value_difference"] = (
        max(ks_p_gaps) if ks_p_gaps else None)
    homogeneity = {n: r["chi2_contingency_p_value"] < 0.05
                   for n, r in results["scipy"]["columns"].items() if r["method"] == "chisquare"}
    agreements["compute_drift_chisquare_vs_scipy_chi2_contingency"] = {
        "same_decision": all(ours["tests"][n]["drifted"] == d for n, d in homogeneity.items()),
        "max_abs_p_value_difference": max(
            abs(ours["tests"][n]["p_value"] - results["scipy"]["columns"][n]
                ["chi2_contingency_p_value"]) for n in homogeneity) if homogeneity else None}
    goal: dict[str, Any] = {"speedup_vs_evidently_at_least": GOAL_SPEEDUP}
    if "evidently" in results:
        evidently = results["evidently"]
        times["evidently"] = {"total_seconds": evidently["runs"][0]["total_seconds"]}
        speedups["vs_evidently_total"] = times["evidently"]["total_seconds"] / total
        speedups["vs_evidently_compute_only"] = (times["evidently"]["total_seconds"]
                                                 / first["compute_seconds"])
        agreements["compute_drift_auto_vs_evidently"] = agreement(ours["auto"],
                                                                  evidently["columns"])
        agreements["truth"]["evidently"] = sorted(n for n, r in evidently["columns"].items()
                                                  if r["drifted"])
        goal["speed_met"] = speedups["vs_evidently_total"] >= GOAL_SPEEDUP
        goal["memory_met"] = memory["compute_drift"]["peak_mb"] < memory["evidently"]["peak_mb"]
        goal["method_memory_met"] = (memory["compute_drift"]["method_peak_mb"]
                                     < memory["evidently"]["method_peak_mb"])
        goal["met"] = goal["speed_met"] and goal["memory_met"]
    else:
        goal["met"] = None

    output = {
        "config": {"reference_rows": args.rows, "current_rows": args.current_rows,
                   "numeric_columns": args.numeric, "categorical_columns": args.categorical,
                   "seed": args.seed, "repeat": args.repeat, "shifted": SHIFTED},
        "measurement": {
            "time": "wall time (perf_counter) of the method alone, inputs already built; the "
                    "first run of each subprocess is used for speed-ups (best-of also given)",
            "memory": "peak RSS of the method's own subprocess (getrusage ru_maxrss); "
                      "method_peak_mb = peak RSS - RSS once its input frames were built"},
        "seconds": times, "memory_mb": memory, "speedups": speedups, "goal": goal,
        "agreement": agreements,
        "profile": ours["profile"],
        "per_column": {"compute_drift_auto": ours["auto"],
                       "compute_drift_ks_chisquare": ours["tests"],
                       "scipy": results["scipy"]["columns"],
                       **({"evidently": results["evidently"]["columns"]}
                          if "evidently" in results else {})},
        "versions": versions(), "machine": machine(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rounded(output, 6), indent=2) + "\n", encoding="utf-8")

    print()
    print(f"{'method':<34}{'seconds':>10}{'peak MB':>10}{'method MB':>11}")
    rows = [("compute_drift fit_reference", first["fit_seconds"], None, None),
            ("compute_drift compute (auto)", first["compute_seconds"], None, None),
            ("compute_drift total", total, memory["compute_drift"]["peak_mb"],
             memory["compute_drift"]["method_peak_mb"]),
            ("compute_drift compute (ks/chi2)", ours["tests_compute_seconds"], None, None),
            ("scipy loop (ks_2samp/chisquare)", times["scipy"]["total_seconds"],
             memory["scipy"]["peak_mb"], memory["scipy"]["method_peak_mb"])]
    if "evidently" in results:
        rows.append(("Evidently DataDriftPreset", times["evidently"]["total_seconds"],
                     memory["evidently"]["peak_mb"], memory["evidently"]["method_peak_mb"]))
    for label, seconds, peak, extra in rows:
        peak_text = f"{peak:>10.0f}" if peak is not None else " " * 10
        extra_text = f"{extra:>11.0f}" if extra is not None else " " * 11
        print(f"{label:<34}{seconds:>10.3f}{peak_text}{extra_text}")
    best = times["compute_drift"]["best_total_seconds"]
    print(f"best of {args.repeat}: compute_drift total {best:.3f} s, "
          f"scipy loop {times['scipy']['best_total_seconds']:.3f} s")
    print()
    for key, value in speedups.items():
        print(f"speed-up {key}: {value:.1f}x")
    if goal["met"] is not None:
        print(f"goal (>= {GOAL_SPEEDUP:.0f}x faster than Evidently and lower peak memory): "
              f"{'met' if goal['met'] else 'NOT met'} (speed {goal['speed_met']}, "
              f"memory {goal['memory_met']})")
    print()
    for key, value in agreements.items():
        print(f"agreement {key}: {json.dumps(rounded(value, 6))}")
    print(f"profile JSON: {ours['profile']['json_mb']:.1f} MB")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
