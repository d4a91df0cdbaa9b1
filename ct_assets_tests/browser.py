"""A real Dagster webserver and a real headless Chromium, for tests of what the UI shows.

The webserver listens on 127.0.0.1 on a free port, in its own process group, and is stopped
(SIGTERM, then SIGKILL) when the `with` block ends; `timeout` stops it even if the test process
dies. Chromium is Debian's (`/usr/bin/chromium`, installed by `make test`), driven by Playwright.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM = Path(os.environ.get("CT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update"]
SERVER_LIFETIME = 900  # seconds: the server stops by itself after this, whatever happens


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def webserver(env: dict[str, str], log: Path, timeout: float = 120) -> Iterator[str]:
    """`dagster-webserver -m ct_assets.definitions` on 127.0.0.1; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("ab") as out:
        process = subprocess.Popen(
            ["timeout", str(SERVER_LIFETIME), str(BIN / "dagster-webserver"), "-h", "127.0.0.1",
             "-p", str(port), "-m", "ct_assets.definitions"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
                raise RuntimeError(f"dagster-webserver did not come up on {url}:\n{tail}")
            time.sleep(1)
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
            yield page
        finally:
            browser.close()
