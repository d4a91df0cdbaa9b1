"""How long `make test` takes, and where its time and CPU go.

Runs the suite as `make test` runs it (`pytest -n 2 --dist loadfile --no-loadscope-reorder`,
temporary files on tmpfs when there is one) with the `suite_cpu` plugin beside this file, then
writes `benchmarks/results/suite.json`: the wall time, the CPU seconds of the whole run (pytest,
its workers and every process they waited for), and per test file its tests, worker seconds
and CPU seconds, longest first; the slowest tests; the machine.

    .venv/bin/python benchmarks/suite.py [pytest arguments, e.g. a subset of files]

The machine should be otherwise idle: on 2 cores the suite is CPU-bound, so any other load
lengthens it. The environment's set-up (`make`'s venv step) is not included.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from machine import machine_info

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "suite.json"


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as work:
        lines = Path(work) / "tests.jsonl"
        shm = Path("/dev/shm")
        basetemp = (shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(work)) / (
            f"ct_assets_suite-{os.getuid()}")
        env = {**os.environ, "CT_SUITE_CPU_OUT": str(lines),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE),
                                                           os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadfile",
                   "--no-loadscope-reorder", "-p", "suite_cpu", "-p", "no:cacheprovider",
                   f"--basetemp={basetemp}", *argv]
        began = time.monotonic()
        done = subprocess.run(command, cwd=ROOT, env=env, check=False)
        wall = time.monotonic() - began
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        tests = [json.loads(line) for line in lines.read_text().splitlines()] \
            if lines.exists() else []
        subprocess.run(["rm", "-rf", str(basetemp)], check=False)
    files: dict[str, dict[str, float]] = defaultdict(lambda: {"tests": 0, "wall": 0.0,
                                                              "cpu": 0.0})
    for test in tests:
        entry = files[test["test"].split("::", 1)[0]]
        entry["tests"] += 1
        entry["wall"] += test["wall"]
        entry["cpu"] += test["cpu_self"] + test["cpu_children"]
    by_file = sorted(({"file": name, "tests": int(v["tests"]), "worker_seconds":
                       round(v["wall"], 1), "cpu_seconds": round(v["cpu"], 1)}
                      for name, v in files.items()), key=lambda f: -f["worker_seconds"])
    slowest = sorted(tests, key=lambda t: -t["wall"])[:15]
    result = {
        "command": " ".join(command[1:]), "exit_code": done.returncode,
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "tests": len(tests),
        "worker_seconds": round(sum(t["wall"] for t in tests), 1),
        "files": by_file,
        "slowest_tests": [{"test": t["test"], "seconds": round(t["wall"], 1),
                           "cpu_seconds": round(t["cpu_self"] + t["cpu_children"], 1)}
                          for t in slowest],
        "machine": machine_info(("dagster", "duckdb", "polars", "lightgbm")),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wall {result['wall_seconds']} s, CPU {result['cpu_seconds']} s, "
          f"{result['tests']} tests, exit {done.returncode}")
    for entry in by_file[:12]:
        print(f"  {entry['worker_seconds']:7.1f} s  {entry['cpu_seconds']:7.1f} s CPU  "
              f"{entry['file']}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
