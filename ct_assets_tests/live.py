"""Real processes for the end-to-end test and the loop-latency benchmark.

`Daemon` is `dagster-daemon run` in its own process group. `webserver` listens on 127.0.0.1 on a
free port, in its own process group, and is stopped (SIGTERM, then SIGKILL) when the `with` block
ends; `timeout` stops it even if the test process dies. Chromium is Debian's
(`/usr/bin/chromium`, installed by `make test`), driven by Playwright.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import dagster as dg

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM = Path(os.environ.get("CT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update"]
LOCATION = "ct_assets.definitions"  # the code location: the module, and `-m`'s location name
SERVER_LIFETIME = 900  # seconds: the server stops by itself after this, whatever happens
CODE_SERVER_LIFETIME = 1800  # seconds: longer than the longest daemon test's timeout (1500)


def stop_group(process: subprocess.Popen[bytes], grace: float = 30) -> None:
    """Stop a process started with `start_new_session=True` and all its children.

    SIGTERM to the whole group, SIGKILL after `grace` seconds, then SIGKILL again for children
    that outlived their parent.
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Daemon:
    """`dagster-daemon run` in its own process group, logging to a file.

    By default the daemon loads `-m ct_assets.definitions` itself: it starts a code server and
    replaces it with a new one every minute (Dagster's workspace refresh), which imports the
    project again each time (about 5 s of CPU). With `code_server=True`, as a deployment that
    runs its code apart does, a `dagster api grpc` server on 127.0.0.1 serves the same module
    under the same location name (`ct_assets.definitions`, so runs launched with `-m` by other
    processes resolve to it), and the daemon loads it from a `workspace.yaml`: a refresh asks
    the running server for its definitions again instead of starting another. The run workers
    are then the code server's children; `stop` stops both process groups.
    """

    def __init__(self, env: dict[str, str], log: Path, code_server: bool = False):
        self.env, self.log, self.code_server = env, log, code_server
        self.process: subprocess.Popen[bytes] | None = None
        self.server: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        target = ["-m", LOCATION]
        with self.log.open("ab") as out:
            if self.code_server:
                port = free_port()
                self.server = subprocess.Popen(  # stops by itself, whatever happens to the test
                    ["timeout", str(CODE_SERVER_LIFETIME), str(BIN / "dagster"), "api", "grpc",
                     "-m", LOCATION, "--location-name", LOCATION, "-h", "127.0.0.1",
                     "-p", str(port)],
                    cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True)
                workspace = self.log.with_name("workspace.yaml")
                workspace.write_text(
                    f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {port}\n"
                    f"      location_name: {LOCATION}\n", encoding="utf-8")
                wait_until_up(f"the code server on port {port}", lambda: listening(port),
                              self.server, self.log)
                target = ["-w", str(workspace)]
            self.process = subprocess.Popen(
                [str(BIN / "dagster-daemon"), "run", *target],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)

    def stop(self) -> None:
        """SIGTERM to the whole group (code server and run workers too), then SIGKILL."""
        for name in ("process", "server"):
            process = getattr(self, name)
            setattr(self, name, None)
            if process is not None:
                stop_group(process)

    def tail(self, lines: int = 60) -> str:
        if not self.log.exists():
            return "(no daemon log)"
        text = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:])


def open_instance(home: Path) -> dg.DagsterInstance:
    """The persistent instance of `home` (its `dagster.yaml`), as its processes open it.

    The template's storage lives under `$DAGSTER_HOME` (`ct_assets/defs/instance_storage.py`
    refuses an instance whose home is not that directory), so it is set to `home` while the
    instance loads, as it is in the daemon's, the webserver's and `ct`'s environment.
    """
    previous = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        return dg.DagsterInstance.from_config(str(home))
    finally:
        if previous is None:
            del os.environ["DAGSTER_HOME"]
        else:
            os.environ["DAGSTER_HOME"] = previous


@contextmanager
def template_instance(home: Path) -> Iterator[dg.DagsterInstance]:
    """The persistent instance of `home` as `ct` writes it: the package's `dagster.yaml`.

    Its storage is the one `ct`, `make dev` and the daemon use (SQLite, engines kept; the
    `duckdb` pool). An existing `dagster.yaml` is kept, as `ct` keeps it.
    """
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_bytes(
            resources.files("ct_assets").joinpath("templates/dagster.yaml").read_bytes())
    with open_instance(home) as instance:
        yield instance


ACTIVE = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
          dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
          dg.DagsterRunStatus.CANCELING]


def poll(what: str, condition: Callable[[], Any], timeout: float, every: float,
         diagnostics: Callable[[], str]) -> Any:
    """Call `condition` every `every` seconds until it returns something truthy, and return it.

    Raises:
        TimeoutError: after `timeout` seconds, naming `what` and carrying `diagnostics()`.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}\n"
                               f"{diagnostics()}")
        time.sleep(every)


def idle_for(home: Path, seconds: float) -> Callable[[], bool]:
    """A condition: no run queued or running and no backfill in progress, for `seconds`.

    Backfills count: the automation sensor (`emit_backfills`) and the UI hand requests to the
    backfill daemon as backfills, which can sit without a run for a while (the backfill daemon
    iterates about every 30 s), so no run does not mean nothing is pending.
    """
    from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus

    pending = BulkActionsFilter(statuses=[BulkActionStatus.REQUESTED,
                                          BulkActionStatus.CANCELING, BulkActionStatus.FAILING])
    state: dict[str, float | None] = {"since": None}

    def check() -> bool:
        with open_instance(home) as instance:
            busy = (instance.get_runs(dg.RunsFilter(statuses=ACTIVE), limit=1)
                    or instance.get_backfills(filters=pending, limit=1))
        if busy:
            state["since"] = None
            return False
        state["since"] = state["since"] or time.monotonic()
        return time.monotonic() - state["since"] >= seconds

    return check


class DaemonProject:
    """A temporary project for a live daemon test: ct.yaml, storage, DAGSTER_HOME, the daemon.

    DAGSTER_HOME holds the package's instance template `instance_template` (as a user gets
    it); the environment shortens the sensors' interval to `interval` seconds.
    """

    def __init__(self, root: Path, config: dict[str, Any], interval: int,
                 instance_template: str = "dagster.yaml"):
        from importlib import resources

        import yaml

        from ct_assets.defs.automation import SENSOR_INTERVAL_ENV
        from ct_assets.lib.config import load_config
        from ct_assets.lib.model_store import ModelStore

        self.root = root
        self.home = root / "dagster_home"
        self.home.mkdir()
        (self.home / "dagster.yaml").write_bytes(
            resources.files("ct_assets").joinpath(f"templates/{instance_template}").read_bytes())
        self.config_path = root / "ct.yaml"
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.config = load_config(self.config_path)
        self.env = {**os.environ, "DAGSTER_HOME": str(self.home),
                    "CT_CONFIG": str(self.config_path), SENSOR_INTERVAL_ENV: str(interval)}
        self.daemon = Daemon(self.env, root / "daemon.log", code_server=True)
        self.store = ModelStore(self.config.models_dir)

    def instance(self) -> dg.DagsterInstance:
        return open_instance(self.home)

    def run_records(self) -> list[dg.RunRecord]:
        """Every run of the instance, oldest first."""
        with self.instance() as instance:
            return list(reversed(instance.get_run_records()))

    def runs(self) -> list[dg.DagsterRun]:
        return [record.dagster_run for record in self.run_records()]

    def describe(self) -> str:
        """Every run with its status and tags, and the deployed model: for failure messages."""
        lines = ["runs:"]
        try:
            for record in self.run_records():
                run = record.dagster_run
                tags = {k: v for k, v in run.tags.items()
                        if k.startswith("ct/") or k in (
                            "dagster/partition", "dagster/asset_partition_range_start",
                            "dagster/asset_partition_range_end", "dagster/run_key",
                            "dagster/sensor_name", "dagster/backfill")}
                assets = sorted(k.to_user_string() for k in run.asset_selection or ())
                lines.append(f"  {record.create_timestamp:%H:%M:%S} {run.run_id[:8]} "
                             f"{run.job_name} {run.status.value} {assets or ''} {tags}")
        except Exception as error:  # diagnostics must never hide the real failure
            lines.append(f"  (could not read runs: {error!r})")
        lines.append(f"deployed: {self.store.deployed()}")
        return "\n".join(lines)

    def wait_for(self, what: str, condition: Callable[[], Any], timeout: float,
                 every: float = 3.0) -> Any:
        """Poll `condition` until it returns something truthy; fail with diagnostics."""
        return poll(what, condition, timeout, every, lambda: (
            f"{self.describe()}\n--- daemon log tail ---\n{self.daemon.tail()}"))

    def idle_for(self, seconds: float) -> Callable[[], bool]:
        """A condition: no run queued or running and no backfill in progress, for `seconds`."""
        return idle_for(self.home, seconds)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(what: str, ready: Callable[[], bool], process: subprocess.Popen[bytes],
                  log: Path, timeout: float = 120) -> None:
    """Poll `ready` until it holds; fail with `log`'s tail if `process` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
            raise RuntimeError(f"{what} did not come up:\n{tail}")
        time.sleep(0.5)


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


@contextmanager
def webserver(env: dict[str, str], log: Path, timeout: float = 120) -> Iterator[str]:
    """`dagster-webserver -m ct_assets.definitions` on 127.0.0.1; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("ab") as out:
        process = subprocess.Popen(
            ["timeout", str(SERVER_LIFETIME), str(BIN / "dagster-webserver"), "-h", "127.0.0.1",
             "-p", str(port), "-m", LOCATION],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    def answers() -> bool:
        with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
            return response.status == 200

    try:
        wait_until_up(f"dagster-webserver on {url}", answers, process, log, timeout)
        yield url
    finally:
        stop_group(process)


@contextmanager
def chromium_page() -> Iterator[object]:
    """A Playwright page in Debian's headless Chromium."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} not found: `make test` installs Debian's chromium "
                           "(apt-get install chromium), or set $CT_CHROMIUM")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60_000)
            # Dagster's "Join the Dagster community" dialog opens in a fresh browser a moment
            # after a page has loaded, so a check right after loading may miss it; whenever it
            # covers what a test is about to click, it is skipped first.
            page.add_locator_handler(page.get_by_role("button", name="Skip"),
                                     lambda skip: skip.click())
            yield page
        finally:
            browser.close()
