# mlserver and mlserver-lightgbm are benchmark-only dependencies: never import them from
# ct_assets, never install them into .venv. This script makes its own venv,
# benchmarks/.venv-mlserver, for MLServer and for the load generator (benchmarks/serving_load.py),
# and runs itself in the project's .venv (it needs ct_assets to build the model and read the logs).
"""`ct serve` against Seldon's MLServer (LightGBM runtime): the same booster, the same requests.

    .venv/bin/python benchmarks/serving.py [--seconds 10] [--warmup 2] [--quick] [--fresh]

1. A scratch project in benchmarks/work/serving (`dataset.source: simulator`, the categorical
   columns region, merchant_category and channel in `dataset.exclude`, so every model input is
   numeric and MLServer's pandas codec sends the same request): 16 clean days, `ct run` (the
   initial model), 4 days of covariate drift, `ct run` (the drift retrain, promoted):
   two approved versions of the same feature schema.
2. MLServer serves the deployed version's `model.txt` (`mlserver_lightgbm.LightGBMModel`,
   `parameters.uri`); `ct serve` serves the project. Both take the Open Inference Protocol v2
   request `POST /v2/models/ct-model/infer` with one FP64 input per feature and
   `"parameters": {"content_type": "pd"}`; rows are feature rows of the warehouse's `features`
   table (no nulls). Scores of both are checked against the model store's own predictions.
3. Load: 1, 16, 64 closed-loop clients (benchmarks/serving_load.py, aiohttp, one process),
   1 and 100 rows per request, `--warmup` s then `--seconds` s measured, each server in turn on
   this machine, nothing pinned: the server and the load generator share every core.
   MLServer runs in its default configuration (one parallel inference worker) and the
   variants of `--mlserver-workers` (0: inference in the HTTP process; 2: one per core).
4. Hot swap (ct serve): 16 clients while the deployed version alternates between the two
   approved versions `--swaps` times (`ModelStore.promote`, reason `rollback`, every
   `--swap-interval` s); failures and which versions answered.
5. SIGTERM (ct serve): 16 clients, SIGTERM half-way; rows in `<storage.dir>/serving/requests/`
   against the rows of the 2xx responses the clients received, for 1 and 100 rows per request.

The machine may be shared: each level starts once fewer than `--quiet-below` cores are busy
(waiting up to `--quiet-timeout` s), and a level during which other work used more than that
is measured again (`--retries`); what the rest of the machine used is in every level's figures
(`background_cpu_share`) and in the table (`other`, `*` when still contended). A server that
exits between levels (signalled by someone else) is restarted and the level measured again.

Writes benchmarks/results/serving.json and prints a table. `--quick` is a short smoke run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROJECT_VENV = ROOT / ".venv"
PROJECT_PYTHON = PROJECT_VENV / "bin" / "python"
CT = PROJECT_VENV / "bin" / "ct"
VENV = ROOT / "benchmarks" / ".venv-mlserver"
VENV_PYTHON = VENV / "bin" / "python"
LOAD = ROOT / "benchmarks" / "serving_load.py"
WORK = ROOT / "benchmarks" / "work" / "serving"
RESULTS = ROOT / "benchmarks" / "results" / "serving.json"
MODEL_NAME = "ct-model"
# MLServer 1.7.1 with uvloop 0.22+ cannot start its inference workers
# (`asyncio.get_event_loop()` in `Worker._ignore_signals` raises "There is no current event loop");
# uvloop 0.21.0 and pandas 2 are what MLServer 1.7 was released against.
MLSERVER_PACKAGES = ["mlserver>=1.7,<1.8", "mlserver-lightgbm>=1.7,<1.8", "uvloop==0.21.0",
                     "pandas<3", "aiohttp", "orjson"]
EXCLUDED = ["region", "merchant_category", "channel"]  # the simulator's categorical columns
CT_YAML = """\
# Written by benchmarks/serving.py: a numeric-only model, so MLServer takes the same request.
dataset:
  source: simulator
  exclude: [{excluded}]
training:
  window: 20
  holdout: 4
gate:
  max_regression: 1.0   # the drift retrain is promoted: two approved versions to swap between
serving:
  model_name: {model}
storage:
  dir: data
"""


# --- environments -------------------------------------------------------------------------

def ensure_project_python() -> None:
    """Run in the project's .venv (ct_assets, polars, duckdb); re-exec there if needed."""
    if Path(sys.prefix).resolve() == PROJECT_VENV.resolve():
        return
    if not PROJECT_PYTHON.exists():
        sys.exit(f"{PROJECT_PYTHON} is missing: run `make demo` or `make test` first")
    os.execv(str(PROJECT_PYTHON), [str(PROJECT_PYTHON), __file__, *sys.argv[1:]])


def ensure_mlserver_venv() -> dict[str, str]:
    """Create benchmarks/.venv-mlserver if needed; return the versions installed there."""
    import lightgbm

    packages = [*MLSERVER_PACKAGES, f"lightgbm=={lightgbm.__version__}"]  # the same booster code
    if not VENV_PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    probe = [str(VENV_PYTHON), "-c", "import json, importlib.metadata as m; print(json.dumps("
             "{p: m.version(p) for p in ['mlserver', 'mlserver-lightgbm', 'lightgbm', "
             "'uvloop', 'pandas', 'numpy', 'aiohttp', 'orjson', 'uvicorn', 'fastapi']}))"]
    done = subprocess.run(probe, capture_output=True, text=True)
    versions = json.loads(done.stdout) if done.returncode == 0 else {}
    if (versions.get("lightgbm") != lightgbm.__version__ or versions.get("uvloop") != "0.21.0"
            or not versions.get("mlserver", "").startswith("1.7.")):
        subprocess.run([str(VENV_PYTHON), "-m", "pip", "install", "--quiet", *packages],
                       check=True)
        versions = json.loads(subprocess.run(probe, capture_output=True, text=True,
                                             check=True).stdout)
    return versions


def project_versions() -> dict[str, str]:
    """ct_assets (and its git commit) and the serving stack of the project's .venv."""
    import importlib.metadata as metadata

    found = {}
    for name in ("ct_assets", "lightgbm", "numpy", "polars", "uvicorn", "fastapi", "starlette"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                            text=True)
    found["git_commit"] = commit.stdout.strip() or None
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "ct_assets"],
                           capture_output=True, text=True)
    found["ct_assets_uncommitted_changes"] = bool(dirty.stdout.strip())
    found["ct_assets_serve_sha256"] = serve_source_sha256()
    return found


def serve_source_sha256() -> str:
    """sha256 over ct_assets/serve/*.py: which `ct serve` a server process started from."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "ct_assets" / "serve").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def machine() -> dict[str, Any]:
    """CPU, cores, memory, OS and Python of this machine."""
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    memory = next((int(line.split()[1]) // 1024 for line in
                   Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), None)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_mib": memory,
            "os": platform.platform(), "python": platform.python_version(),
            "load_average_at_start": os.getloadavg()}


# --- the scratch project -------------------------------------------------------------------

def ct(*args: str) -> str:
    """Run `ct --config <work>/ct.yaml ARGS` and return its output; raise on failure."""
    done = subprocess.run([str(CT), "--config", str(WORK / "ct.yaml"), *args],
                          capture_output=True, text=True, cwd=WORK)
    if done.returncode != 0:
        raise RuntimeError(f"ct {' '.join(args)} failed ({done.returncode}):\n"
                           f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout


def approved_versions(models_dir: Path) -> list[str]:
    """Versions whose sealed verdict approves them, oldest first."""
    from ct_assets.lib.model_store import ModelStore

    store = ModelStore(models_dir)
    return [v for v in store.versions() if store.trusted_verdict(v)[0]]


def build_project(args: argparse.Namespace) -> dict[str, Any]:
    """The scratch project with two approved, numeric-only LightGBM versions (reused if there)."""
    from ct_assets.lib.config import load_config

    recipe = {"days": args.days, "drift_days": args.drift_days,
              "rows_per_day": args.rows_per_day, "excluded": EXCLUDED, "model": MODEL_NAME}
    stamp = WORK / "benchmark_project.json"
    config_text = CT_YAML.format(excluded=", ".join(EXCLUDED), model=MODEL_NAME)
    reuse = (not args.fresh and stamp.exists() and (WORK / "ct.yaml").exists()
             and (WORK / "ct.yaml").read_text() == config_text
             and json.loads(stamp.read_text()).get("recipe") == recipe)
    if reuse:
        config = load_config(WORK / "ct.yaml")
        reuse = len(approved_versions(config.models_dir)) >= 2
    if not reuse:
        print("building the scratch project (simulate, ct run, drift, ct run) …", flush=True)
        shutil.rmtree(WORK, ignore_errors=True)
        WORK.mkdir(parents=True)
        (WORK / "ct.yaml").write_text(config_text)
        today = dt.datetime.now(dt.UTC).date()
        first = today - dt.timedelta(days=args.days + args.drift_days - 1)
        drift_start = today - dt.timedelta(days=args.drift_days - 1)
        began = time.perf_counter()
        warnings = []
        ct("simulate", "--days", str(args.days), "--start", first.isoformat(),
           "--rows-per-day", str(args.rows_per_day))
        ct("run")
        ct("simulate", "--days", str(args.drift_days), "--start", drift_start.isoformat(),
           "--rows-per-day", str(args.rows_per_day), "--drift", "covariate", "--drift-day", "0")
        try:
            ct("run")
        except RuntimeError as error:  # what matters here is the promoted second version
            warnings.append(str(error)[-1500:])
        config = load_config(WORK / "ct.yaml")
        versions = approved_versions(config.models_dir)
        if len(versions) < 2:
            raise RuntimeError(f"expected two approved versions, got {versions}: see "
                               f"`ct --config {WORK / 'ct.yaml'} models`\n{warnings}")
        if warnings:
            print(f"warning: the drift `ct run` failed, but promoted {versions[-1]}:\n"
                  f"{warnings[0]}", flush=True)
        stamp.write_text(json.dumps({"recipe": recipe, "built": dt.datetime.now(dt.UTC)
                                     .isoformat(), "build_s": time.perf_counter() - began,
                                     "warnings": warnings}))
    config = load_config(WORK / "ct.yaml")
    return {"config": config, "config_text": config_text, "recipe": recipe,
            "build": json.loads(stamp.read_text()),
            "versions": approved_versions(config.models_dir)[-2:]}


def sample_rows(config: Any, features: list[str], count: int) -> Any:
    """`count` feature rows without nulls from the newest partitions of `features`."""
    import duckdb
    import polars as pl

    columns = ", ".join(f'"{name}"' for name in features)
    present = " AND ".join(f'"{name}" IS NOT NULL AND isfinite("{name}")' for name in features)
    with duckdb.connect(str(config.storage_dir / "warehouse.duckdb"), read_only=True) as db:
        frame = db.execute(f"SELECT {columns} FROM main.features WHERE {present} "
                           f"ORDER BY ts DESC LIMIT {count}").pl()
    if frame.height < count:
        raise RuntimeError(f"only {frame.height} complete feature rows, {count} needed")
    return frame.select([pl.col(name).cast(pl.Float64) for name in features])


def oip_body(frame: Any) -> str:
    """The OIP v2 request: one FP64 input per feature column, MLServer's pandas content type."""
    inputs = [{"name": name, "shape": [frame.height], "datatype": "FP64",
               "data": frame[name].to_list()} for name in frame.columns]
    return json.dumps({"inputs": inputs, "parameters": {"content_type": "pd"}})


# --- servers ---------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from `state` on (index 0 = field 3)


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) of `root`, its reaped children and its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, stack, seen = 0, [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        fields = _proc_stat(pid)
        if fields is None:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
        if pid == root:
            total += int(fields[13]) + int(fields[14])  # cutime, cstime
        stack.extend(children.get(pid, []))
    return total / tick


def system_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy since boot (/proc/stat, not idle)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def machine_busy(seconds: float = 2.0) -> float:
    """Cores busy on average over the next `seconds` (everything on the machine)."""
    before, began = system_busy_seconds(), time.perf_counter()
    time.sleep(seconds)
    return (system_busy_seconds() - before) / (time.perf_counter() - began)


def wait_quiet(args: argparse.Namespace) -> dict[str, Any]:
    """Wait (up to `--quiet-timeout` s) until the machine, our idle server included, is quiet.

    Other work on the machine (a test suite, a build) takes cores from the server and the load
    generator alike and makes the figures meaningless; each level starts only once less than
    `--quiet-below` cores are busy over 2 s, or says that it could not.
    """
    began = time.perf_counter()
    busy = machine_busy()
    while busy > args.quiet_below and time.perf_counter() - began < args.quiet_timeout:
        time.sleep(3.0)
        busy = machine_busy()
    return {"waited_s": round(time.perf_counter() - began, 1), "busy_cores": round(busy, 3),
            "quiet": busy <= args.quiet_below}


class Server:
    """A server process started by this benchmark (its own session), its log and its URL."""

    def __init__(self, label: str, command: list[str], port: int, cwd: Path,
                 env: dict[str, str]) -> None:
        self.label, self.port = label, port
        self.command, self.cwd, self.env = command, cwd, env
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = WORK / "logs" / f"{label}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.unlink(missing_ok=True)
        self.deaths: list[int | None] = []  # exit codes of unexpected exits (restarted)
        self.source_sha256: str | None = None  # ct serve's source when it started
        self._launch()

    def _launch(self) -> None:
        self.log = self.log_path.open("ab")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(self.command, cwd=self.cwd, env=self.env,
                                        stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def alive(self) -> bool:
        """Whether the server process is still running."""
        return self.process.poll() is None

    def restart(self) -> None:
        """Start the server again after it exited when it should not have; wait until ready."""
        self.deaths.append(self.process.returncode)
        self.stop()
        self._launch()
        self.wait_ready()

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Seconds until `/v2/health/ready` answers 200 and the model's ready route too."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.process.returncode}; "
                                   f"log: {self.log_path}\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/models/{MODEL_NAME}/ready",
                                            timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - self.started
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.label} not ready after {timeout} s; log: {self.log_path}")

    def cpu_seconds(self) -> float:
        """CPU seconds used by the server's processes so far."""
        return tree_cpu_seconds(self.process.pid)

    def tail(self, lines: int = 30) -> str:
        """The end of the server's log."""
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait, then SIGKILL the server's process group if it is still there."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        try:  # what the group left behind (MLServer's workers), ours alone
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()
        return self.process.returncode


def clean_env(*drop_prefixes: str) -> dict[str, str]:
    """This process's environment without variables that would change a server's settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)}


def start_mlserver(version_dir: Path, version: str, workers: int | None) -> tuple[Server, dict]:
    """MLServer on a free port serving `<version_dir>/model.txt`; `workers` None = default."""
    label = "mlserver" if workers is None else f"mlserver_workers{workers}"
    repo = WORK / "mlserver" / label
    shutil.rmtree(repo, ignore_errors=True)
    (repo / MODEL_NAME).mkdir(parents=True)
    port = free_port()
    settings: dict[str, Any] = {"host": "127.0.0.1", "http_port": port,
                                "grpc_port": free_port(), "metrics_port": free_port()}
    if workers is not None:
        settings["parallel_workers"] = workers
    model_settings = {"name": MODEL_NAME, "implementation": "mlserver_lightgbm.LightGBMModel",
                      "parameters": {"uri": str(version_dir / "model.txt"), "version": version}}
    (repo / "settings.json").write_text(json.dumps(settings, indent=2))
    (repo / MODEL_NAME / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    server = Server(label, [str(VENV / "bin" / "mlserver"), "start", str(repo)], port, repo,
                    clean_env("MLSERVER_"))
    return server, {"settings.json": settings, "model-settings.json": model_settings}


def start_ct_serve(label: str = "ct_serve") -> Server:
    """`ct --config <work>/ct.yaml serve` on a free port (no token)."""
    port = free_port()
    command = [str(CT), "--config", str(WORK / "ct.yaml"), "serve", "--host", "127.0.0.1",
               "--port", str(port)]
    source = serve_source_sha256()
    server = Server(label, command, port, WORK, clean_env("CT_SERVE_TOKEN"))
    server.source_sha256 = source
    return server


def ct_serve_available() -> tuple[bool, str]:
    """Whether `ct serve --help` works in the project's .venv."""
    done = subprocess.run([str(CT), "serve", "--help"], capture_output=True, text=True)
    return done.returncode == 0, (done.stdout + done.stderr).strip()[-500:]


def post(url: str, body: str) -> tuple[int, dict[str, Any]]:
    """POST a JSON body; the status and the decoded answer."""
    request = urllib.request.Request(url, data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def check_scores(server: Server, bodies: dict[int, list[str]], frames: dict[int, list[Any]],
                 reference: dict[str, Any]) -> dict[str, Any]:
    """Send one request of each size; compare the scores with the store's own predictions."""
    import numpy as np

    checks, worst = [], 0.0
    for rows in sorted(bodies):
        status, answer = post(f"{server.url}/v2/models/{MODEL_NAME}/infer", bodies[rows][0])
        if status != 200:
            checks.append({"rows": rows, "status": status, "error": answer})
            worst = float("inf")
            continue
        outputs = {o["name"]: o for o in answer.get("outputs", [])}
        output = outputs.get("score") or outputs.get("predict")
        version = answer.get("model_version")
        expected = reference[version](frames[rows][0]) if version in reference else None
        scores = np.asarray(output["data"], dtype=np.float64) if output else None
        gap = (float(np.max(np.abs(scores - expected)))
               if scores is not None and expected is not None and scores.size == expected.size
               else float("inf"))
        worst = max(worst, gap)
        checks.append({"rows": rows, "status": status, "model_version": version,
                       "output": output and output["name"],
                       "output_shape": output and output["shape"], "max_abs_diff": gap})
    return {"max_abs_diff": worst, "equal_within_1e-9": worst <= 1e-9, "requests": checks}


# --- load --------------------------------------------------------------------------------------

def start_load(url: str, bodies_file: Path, concurrency: int, warmup: float, seconds: float,
               tag: str, **extra: Any) -> tuple[subprocess.Popen, Path]:
    """The load generator in its own process (benchmark venv); returns it and its result path."""
    spec_dir = WORK / "load"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec, out = spec_dir / f"{tag}.spec.json", spec_dir / f"{tag}.result.json"
    out.unlink(missing_ok=True)
    spec.write_text(json.dumps({"url": f"{url}/v2/models/{MODEL_NAME}/infer",
                                "bodies": str(bodies_file), "concurrency": concurrency,
                                "warmup": warmup, "seconds": seconds, **extra}))
    process = subprocess.Popen([str(VENV_PYTHON), str(LOAD), str(spec), str(out)])
    return process, out


def finish_load(process: subprocess.Popen, out: Path) -> dict[str, Any]:
    """Wait for the load generator; its result."""
    if process.wait() != 0:
        raise RuntimeError(f"the load generator failed ({process.returncode})")
    return json.loads(out.read_text())


def measure(server: Server, bodies_file: Path, rows: int, concurrency: int,
            args: argparse.Namespace) -> dict[str, Any]:
    """One level: load at `concurrency`, with the server's CPU time over the run."""
    quiet = wait_quiet(args)
    cpu_before, busy_before = server.cpu_seconds(), system_busy_seconds()
    began = time.perf_counter()
    process, out = start_load(server.url, bodies_file, concurrency, args.warmup, args.seconds,
                              f"{server.label}-{rows}-{concurrency}")
    result = finish_load(process, out)
    elapsed = time.perf_counter() - began
    server_cpu = server.cpu_seconds() - cpu_before
    busy = system_busy_seconds() - busy_before
    if not result["failures"]:
        result.pop("failure_examples", None)
    # The client's CPU is counted from its event loop's start; the process start-up (imports,
    # reading the bodies) lands in `background`, so background is an upper bound.
    result.update(server=server.label, rows=rows, before=quiet,
                  server_cpu_s=round(server_cpu, 3),
                  server_cpu_share=round(server_cpu / elapsed, 3),
                  client_cpu_share=round(result["client_cpu_s"] / elapsed, 3),
                  machine_cpu_share=round(busy / elapsed, 3),
                  background_cpu_share=round(max(0.0, busy - server_cpu - result["client_cpu_s"])
                                             / elapsed, 3))
    return result


def throughput(server: Server, files: dict[int, Path], args: argparse.Namespace
               ) -> list[dict[str, Any]]:
    """Every level (rows per request, concurrency) against one server."""
    levels = []
    for rows in args.rows:
        for concurrency in args.concurrency:
            for attempt in range(1, args.retries + 2):
                if not server.alive():  # e.g. signalled by something else on the machine
                    print(f"  {server.label} exited ({server.process.returncode}) between "
                          "levels: restarting it", flush=True)
                    server.restart()
                level = measure(server, files[rows], rows, concurrency, args)
                level.update(attempt=attempt,
                             contended=level["background_cpu_share"] > args.quiet_below,
                             server_exited=not server.alive())
                if not (level["contended"] or level["server_exited"]) or attempt > args.retries:
                    break
                if level["server_exited"]:
                    print(f"  {server.label} exited during the level: measuring again",
                          flush=True)
                    continue
                print(f"  {server.label:<20} rows={rows:<4} clients={concurrency:<3} other work "
                      f"used {level['background_cpu_share']:.2f} cores: measuring again",
                      flush=True)
            levels.append(level)
            print(f"  {server.label:<20} rows={rows:<4} clients={concurrency:<3} "
                  f"{level['requests_per_s']:9.1f} req/s {level['rows_per_s']:10.1f} rows/s "
                  f"p50 {level['latency_ms']['p50']} ms p99 {level['latency_ms']['p99']} ms "
                  f"failed {level['failed']}", flush=True)
            time.sleep(0.5)
    return levels


# --- hot swap and SIGTERM --------------------------------------------------------------------

def hot_swap(files: dict[int, Path], versions: list[str], config: Any,
             args: argparse.Namespace) -> dict[str, Any]:
    """16 clients while the deployed version alternates `args.swaps` times."""
    from ct_assets.lib.model_store import ModelStore

    store = ModelStore(config.models_dir)
    original = store.deployed()["version"]
    quiet = wait_quiet(args)
    server = start_ct_serve("ct_serve_hot_swap")
    try:
        server.wait_ready()
        first = post(f"{server.url}/v2/models/{MODEL_NAME}/infer", files["sample"])[1]
        duration = (args.swaps + 1) * args.swap_interval
        process, out = start_load(server.url, files[1], 16, 0.0, duration, "hot_swap",
                                  track_versions=True)
        began = time.time()
        time.sleep(args.swap_interval / 2)
        swaps, current = [], original
        for _ in range(args.swaps):
            target = versions[1] if current == versions[0] else versions[0]
            store.promote(target, "rollback", rolled_back_from=current,
                          note="benchmarks/serving.py hot swap")
            swaps.append({"to": target, "at": time.time()})
            current = target
            time.sleep(args.swap_interval)
        result = finish_load(process, out)
    finally:
        code = server.stop()
        if store.deployed()["version"] != original:
            store.promote(original, "rollback", note="benchmarks/serving.py: restored")
    segments = result.pop("version_segments", [])
    for index, swap in enumerate(swaps):
        until = swaps[index + 1]["at"] if index + 1 < len(swaps) else float("inf")
        seen = [s for s in segments if s[0] == swap["to"] and swap["at"] < s[2] < until]
        swap["answered_after_s"] = round(seen[0][2] - swap["at"], 3) if seen else None
        swap["at"] = round(swap["at"] - began, 3)
    delays = sorted(s["answered_after_s"] for s in swaps if s["answered_after_s"] is not None)
    return {
        "clients": 16, "rows_per_request": 1, "swaps": len(swaps),
        "swap_interval_s": args.swap_interval, "watch_seconds": config.serving.watch_seconds,
        "versions": versions, "first_answer_version": first.get("model_version"),
        "requests": result["all_phases"]["ok"] + result["all_phases"]["failed"],
        "failed": result["all_phases"]["failed"], "failures": result["failures"],
        "failure_examples": result.get("failure_examples", {}),
        "answered_by_version": result["versions"],
        "swaps_seen_by_clients": sum(1 for s in swaps if s["answered_after_s"] is not None),
        "swap_to_first_answer_s": {"median": delays[len(delays) // 2] if delays else None,
                                   "max": delays[-1] if delays else None},
        "version_changes_in_completion_order": max(0, len(segments) - 1),
        "requests_per_s": result["requests_per_s"],
        "latency_ms": result["latency_ms"], "server_exit_code": code, "before": quiet,
        "ct_assets_serve_sha256": server.source_sha256,
        "timeline": swaps,
    }


def request_log_rows(directory: Path) -> dict[str, Any]:
    """Rows and request ids in the Parquet files of the request log; files that are not."""
    import polars as pl

    files = sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []
    parquet = [p for p in files if p.suffix == ".parquet" and not p.name.startswith(".")]
    others = [str(p.relative_to(directory)) for p in files if p not in parquet]
    rows, ids, schema, unreadable = 0, None, None, []
    frames = []
    for path in parquet:
        try:
            frame = pl.read_parquet(path)
        except Exception as error:  # a torn file is a finding, not a crash
            unreadable.append(f"{path.name}: {error}")
            continue
        rows += frame.height
        schema = schema or {k: str(v) for k, v in frame.schema.items()}
        frames.append(frame)
    column = next((c for c in (schema or {}) if c in ("request_id", "request")), None)
    if column and frames:
        ids = set(pl.concat([f.select(column) for f in frames])[column].cast(pl.String)
                  .to_list())
    return {"files": len(parquet), "rows": rows, "other_files": others,
            "unreadable": unreadable, "schema": schema, "request_id_column": column,
            "request_ids": ids}


def sigterm(files: dict[int, Path], rows: int, config: Any, args: argparse.Namespace
            ) -> dict[str, Any]:
    """16 clients; SIGTERM to ct serve half-way; the request log against what was answered."""
    log_dir = config.serving_dir / "requests"
    shutil.rmtree(log_dir, ignore_errors=True)
    quiet = wait_quiet(args)
    server = start_ct_serve(f"ct_serve_sigterm_{rows}")
    try:
        server.wait_ready()
        process, out = start_load(server.url, files[rows], 16, 0.0, args.seconds,
                                  f"sigterm-{rows}", collect_ids=True)
        time.sleep(args.seconds / 2)
        signalled = time.perf_counter()
        server.process.send_signal(signal.SIGTERM)
        try:
            code = server.process.wait(60)
        except subprocess.TimeoutExpired:
            code = None
        exit_s = time.perf_counter() - signalled
        result = finish_load(process, out)
    finally:
        server.stop()
    logged = request_log_rows(log_dir)
    answered_ids = set(result.pop("ids", []))
    logged_ids = logged.pop("request_ids")
    compare = {}
    if logged_ids is not None:
        compare = {"answered_requests_missing_from_log": len(answered_ids - logged_ids),
                   "logged_requests_not_answered": len(logged_ids - answered_ids)}
    answered_rows = result["all_phases"]["ok_rows"]
    return {
        "clients": 16, "rows_per_request": rows, "seconds": args.seconds,
        "sigterm_after_s": args.seconds / 2, "before": quiet, "server_exit_code": code,
        "ct_assets_serve_sha256": server.source_sha256,
        "server_exit_s": round(exit_s, 3),
        "answered_requests": result["all_phases"]["ok"], "answered_rows": answered_rows,
        "failed_requests": result["all_phases"]["failed"], "failures": result["failures"],
        "logged_rows": logged["rows"], "log": logged, **compare,
        "equal": logged["rows"] == answered_rows and not logged["unreadable"]
        and not compare.get("answered_requests_missing_from_log")
        and not compare.get("logged_requests_not_answered"),
    }


# --- report ------------------------------------------------------------------------------------

def judge(levels: list[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """Per level (rows, concurrency): ct serve against `baseline` on throughput and p99."""
    index = {(x["server"], x["rows"], x["concurrency"]): x for x in levels}
    verdicts = []
    for (server, rows, concurrency), ours in index.items():
        if server != "ct_serve" or (baseline, rows, concurrency) not in index:
            continue
        theirs = index[(baseline, rows, concurrency)]
        p99_ours, p99_theirs = ours["latency_ms"]["p99"], theirs["latency_ms"]["p99"]
        verdicts.append({
            "rows": rows, "concurrency": concurrency, "against": baseline,
            "throughput_ratio": round(ours["requests_per_s"] / theirs["requests_per_s"], 3)
            if theirs["requests_per_s"] else None,
            "p99_ratio": round(p99_ours / p99_theirs, 3) if p99_ours and p99_theirs else None,
            "contended": bool(ours.get("contended") or theirs.get("contended")),
            "throughput_met": ours["requests_per_s"] >= theirs["requests_per_s"],
            "p99_met": p99_ours is not None and p99_theirs is not None
            and p99_ours <= p99_theirs,
        })
    return verdicts


def print_table(levels: list[dict[str, Any]]) -> None:
    """The throughput table: one line per level (rows, concurrency) and server."""
    header = (f"{'rows':>4} {'clients':>7}  {'server':<20} {'req/s':>9} {'rows/s':>10} "
              f"{'p50 ms':>8} {'p99 ms':>8} {'failed':>6} {'srv cpu':>7} {'cli cpu':>7} "
              f"{'other':>6}")
    print(header)
    print("-" * len(header))
    order = sorted(levels, key=lambda x: (x["rows"], x["concurrency"], x["server"] != "ct_serve",
                                          x["server"]))
    previous = None
    for x in order:
        if previous and previous != (x["rows"], x["concurrency"]):
            print()
        previous = (x["rows"], x["concurrency"])
        print(f"{x['rows']:>4} {x['concurrency']:>7}  {x['server']:<20} "
              f"{x['requests_per_s']:>9.1f} {x['rows_per_s']:>10.1f} "
              f"{x['latency_ms']['p50'] or float('nan'):>8.2f} "
              f"{x['latency_ms']['p99'] or float('nan'):>8.2f} {x['failed']:>6} "
              f"{x['server_cpu_share']:>7.2f} {x['client_cpu_share']:>7.2f} "
              f"{x['background_cpu_share']:>6.2f}{' *' if x.get('contended') else ''}")
    print("(cpu: cores used on average over the level by the server's processes, the load "
          "generator, and everything else on the machine; * other work used more than "
          "--quiet-below cores even after the retries: the level is not trustworthy)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options; `--quick` shortens every phase."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured s per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up s per level")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--rows", default="1,100", help="rows per request")
    parser.add_argument("--mlserver-workers", default="default,0,2",
                        help="MLServer parallel_workers settings to measure; the first is the "
                             "baseline the goals are judged against (default: MLServer's own, 1)")
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--swap-interval", type=float, default=3.0)
    parser.add_argument("--days", type=int, default=16)
    parser.add_argument("--drift-days", type=int, default=4)
    parser.add_argument("--rows-per-day", type=int, default=2000)
    parser.add_argument("--fresh", action="store_true", help="rebuild the scratch project")
    parser.add_argument("--skip-ct-serve", action="store_true",
                        help="MLServer only (also automatic when `ct serve` does not exist)")
    parser.add_argument("--quiet-below", type=float, default=0.3,
                        help="start a level once fewer cores than this are busy (over 2 s)")
    parser.add_argument("--quiet-timeout", type=float, default=900.0,
                        help="longest wait for a quiet machine before a level, s")
    parser.add_argument("--retries", type=int, default=3,
                        help="re-measure a level this many times at most when other work on "
                             "the machine used more than --quiet-below cores during it")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.swaps, args.swap_interval = 2.0, 0.5, 4, 2.0
        args.mlserver_workers = args.mlserver_workers.split(",")[0]
        args.quiet_timeout, args.retries = 0.0, 0
        if args.out == RESULTS:
            args.out = WORK / "serving-quick.json"
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.rows = [int(r) for r in args.rows.split(",")]
    args.mlserver_workers = [None if w == "default" else int(w)
                             for w in args.mlserver_workers.split(",")]
    return args


def main(argv: list[str]) -> int:
    """Build, serve, load, judge, write."""
    ensure_project_python()
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    ours = project_versions()  # ct serve's source as it was when the run started
    mlserver_versions = ensure_mlserver_venv()
    project = build_project(args)
    config, versions = project["config"], project["versions"]

    from ct_assets.lib.model_store import ModelStore
    from ct_assets.lib.serving import load_verified

    store = ModelStore(config.models_dir)
    deployed = store.deployed()["version"]
    model, _ = load_verified(store, deployed)
    features = [spec.name for spec in model.specs]
    if any(spec.type != "float" for spec in model.specs):
        raise RuntimeError(f"{deployed} has categorical features: MLServer cannot take the "
                           "same request")
    frame = sample_rows(config, features, 1000)
    frames = {1: [frame.slice(i, 1) for i in range(500)],
              100: [frame.slice(i * 100, 100) for i in range(10)]}
    bodies = {rows: [oip_body(f) for f in chunks] for rows, chunks in frames.items()}
    files: dict[Any, Any] = {}
    for rows, texts in bodies.items():
        files[rows] = WORK / f"bodies_{rows}.json"
        files[rows].write_text(json.dumps({"bodies": texts, "rows": [rows] * len(texts)}))
    files["sample"] = bodies[1][0]
    loaded = {v: load_verified(store, v)[0] for v in {*versions, deployed}}
    reference = {v: m.predict for v, m in loaded.items()}

    available, why = ct_serve_available()
    run_ct = available and not args.skip_ct_serve
    if not available:
        print(f"`ct serve` is not available ({why}); measuring MLServer only", flush=True)

    levels: list[dict[str, Any]] = []
    servers: dict[str, Any] = {}

    def measure_server(server: Server, extra: dict[str, Any]) -> None:
        try:
            ready_s = server.wait_ready()
            scores = check_scores(server, bodies, frames, reference)
            print(f"{server.label}: ready in {ready_s:.1f} s; scores equal to the store's "
                  f"within 1e-9: {scores['equal_within_1e-9']} (max |diff| "
                  f"{scores['max_abs_diff']:.3g})", flush=True)
            servers[server.label] = {"ready_s": round(ready_s, 3), "score_check": scores,
                                     "log": str(server.log_path.relative_to(ROOT)), **extra}
            levels.extend(throughput(server, files, args))
        finally:
            servers.setdefault(server.label, {}).update(exit_code=server.stop(),
                                                        unexpected_exits=server.deaths)
            if server.source_sha256:
                servers[server.label]["ct_assets_serve_sha256"] = server.source_sha256

    if run_ct:
        measure_server(start_ct_serve(), {"command": f"ct --config {WORK / 'ct.yaml'} serve "
                                                     "--host 127.0.0.1 --port <free port>"})
    for workers in args.mlserver_workers:
        server, settings = start_mlserver(store.path(deployed), deployed, workers)
        measure_server(server, {"configuration": settings})

    hot, terms = None, []
    if run_ct:
        print(f"hot swap: {args.swaps} swaps every {args.swap_interval} s under 16 clients …",
              flush=True)
        hot = hot_swap(files, versions, config, args)
        print(f"  failed {hot['failed']} of {hot['requests']}; answered by "
              f"{hot['answered_by_version']}; swaps seen by clients {hot['swaps_seen_by_clients']}"
              f"/{hot['swaps']} (median {hot['swap_to_first_answer_s']['median']} s after the "
              "promotion)", flush=True)
        for rows in args.rows:
            term = sigterm(files, rows, config, args)
            terms.append(term)
            print(f"SIGTERM, {rows} row(s)/request: answered {term['answered_rows']} rows, "
                  f"logged {term['logged_rows']} (exit {term['server_exit_code']} after "
                  f"{term['server_exit_s']} s); equal: {term['equal']}", flush=True)

    baseline = "mlserver" if None in args.mlserver_workers else (
        f"mlserver_workers{args.mlserver_workers[0]}")
    verdicts = judge(levels, baseline) if run_ct else []
    variants = sorted({x["server"] for x in levels if x["server"].startswith("mlserver")})
    others = {v: judge(levels, v) for v in variants if v != baseline} if run_ct else {}
    goals = {
        "throughput_at_least_mlserver": all(v["throughput_met"] for v in verdicts)
        if verdicts else None,
        "p99_at_most_mlserver": all(v["p99_met"] for v in verdicts) if verdicts else None,
        "zero_failures_over_hot_swaps": (hot["failed"] == 0
                                         and hot["swaps_seen_by_clients"] == hot["swaps"])
        if hot else None,
        "request_log_equals_answered_after_sigterm": all(t["equal"] for t in terms)
        if terms else None,
        "scores_equal_within_1e-9": all(s.get("score_check", {}).get("equal_within_1e-9")
                                        for s in servers.values()),
    }
    document = {
        "benchmark": "benchmarks/serving.py", "started": started.isoformat(),
        "finished": dt.datetime.now(dt.UTC).isoformat(),
        "command": "python benchmarks/serving.py " + " ".join(argv),
        "machine": machine(),
        "versions": {"project_venv": {
            **ours, "ct_assets_serve_sha256_at_end":
            project_versions()["ct_assets_serve_sha256"]}, "mlserver_venv": mlserver_versions},
        "settings": {"seconds": args.seconds, "warmup": args.warmup,
                     "concurrency": args.concurrency, "rows_per_request": args.rows,
                     "mlserver_workers": ["default" if w is None else w
                                          for w in args.mlserver_workers],
                     "baseline": baseline, "swaps": args.swaps,
                     "swap_interval": args.swap_interval, "quick": args.quick,
                     "quiet_below_cores": args.quiet_below,
                     "quiet_timeout_s": args.quiet_timeout, "retries": args.retries,
                     "pinning": "none: each server and the load generator share every core"},
        "project": {"dir": str(WORK.relative_to(ROOT)), "ct.yaml": project["config_text"],
                    "recipe": project["recipe"], "build": project["build"],
                    "deployed": deployed,
                    "approved_versions": versions, "features": features,
                    "request": {"route": f"POST /v2/models/{MODEL_NAME}/infer",
                                "inputs": "one FP64 tensor per feature, shape [n]",
                                "parameters": {"content_type": "pd"},
                                "rows": "feature rows of main.features without nulls, newest "
                                        "first; 500 one-row and 10 hundred-row bodies"}},
        "ct_serve": {"available": available, "measured": run_ct,
                     **({} if available else {"why": why})},
        "servers": servers, "levels": levels,
        "verdicts": verdicts, "verdicts_against_other_mlserver_settings": others,
        "contended_levels": [f"{x['server']} rows={x['rows']} clients={x['concurrency']}"
                             for x in levels if x.get("contended")],
        "hot_swap": hot, "sigterm": terms,
        "goals": {"definition": {
            "throughput_at_least_mlserver": f"ct serve's requests/s >= {baseline}'s at every "
                                            "rows x concurrency level",
            "p99_at_most_mlserver": f"ct serve's p99 <= {baseline}'s at every level",
            "zero_failures_over_hot_swaps": "no failed request while the deployed version "
                                            "changes --swaps times under 16 clients, and "
                                            "every swap answered by the new version",
            "request_log_equals_answered_after_sigterm": "rows in serving/requests/*.parquet "
                                                         "== rows of the 2xx responses, with "
                                                         "SIGTERM half-way through the load",
            "scores_equal_within_1e-9": "each server's scores == the model store's"},
            **goals},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print()
    print_table(levels)
    print()
    for name, value in goals.items():
        print(f"{name:<45} {'n/a' if value is None else ('met' if value else 'NOT MET')}")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
