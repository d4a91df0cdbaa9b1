"""What a packaged model server needs: the `ct_assets` modules it runs and pinned requirements.

Both are observed, not listed by hand: `probe_server` runs the package's own `server.py` in a
fresh interpreter (from the installed `ct_assets`), loads the version, answers a metadata, an
inference and a records request, and stops on SIGTERM as a container would. What it loaded of
`ct_assets` is what gets vendored. Every import statement executed by `ct_assets` code (or by
`server.py`) is recorded; the third-party modules among them, mapped to their distributions,
are the roots of the requirements: so LightGBM's optional import of scikit-learn, say, does not
make scikit-learn a requirement of a LightGBM model, while `skops.io`, imported to load a
scikit-learn model, does. The roots take the extras `ct_assets` itself declares for them
(`uvicorn[standard]`: uvloop and httptools, which the server asks uvicorn for by name), and the
closure of their `Requires-Dist` for this Python is pinned at the installed versions.

Run as `python -m ct_assets.lib.packaging PACKAGE_DIR OUT.json` to probe a package directory.
"""

from __future__ import annotations

import builtins
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SELF = "ct_assets"
IMPORTERS = (SELF, "server")  # whose import statements make a requirement
PROBE_SECONDS = 120


class PackagingError(ValueError):
    """A package cannot be made: the server failed its trial run or a requirement is missing."""


@dataclass(frozen=True)
class Pin:
    """One exact requirement: a distribution, its installed version, and why it is needed."""

    name: str
    version: str
    via: str  # "imported", or the distribution that requires it

    def line(self) -> str:
        """The requirements.txt line."""
        why = "imported by the server" if self.via == "imported" else f"via {self.via}"
        return f"{self.name}=={self.version}  # {why}"


@dataclass(frozen=True)
class Probe:
    """What a trial run of the packaged server used."""

    modules: dict[str, str]  # `ct_assets` module name → its source file
    imported: list[str]  # third-party top-level modules `ct_assets` code imported


def canonical(name: str) -> str:
    """A distribution name as pip compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def probe_server(package_dir: Path) -> Probe:
    """Run the package's `server.py` once in a fresh interpreter and record what it used.

    Raises:
        PackagingError: the server did not start, answer, or stop cleanly (with its stderr).
    """
    with tempfile.TemporaryDirectory() as work:
        output = Path(work) / "probe.json"
        done = subprocess.run([sys.executable, "-m", "ct_assets.lib.packaging",
                               str(package_dir), str(output)], capture_output=True, text=True,
                              timeout=PROBE_SECONDS, check=False,
                              env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        result = json.loads(output.read_text(encoding="utf-8")) if output.exists() else {}
    problem = result.get("error") or (f"the probe exited with {done.returncode}"
                                      if done.returncode != 0 or not result else None)
    if problem:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise PackagingError(f"the packaged server failed its trial run: {problem} ({last})")
    stdlib = sys.stdlib_module_names
    return Probe(result["modules"], sorted(name for name in result["imported"]
                                           if name not in stdlib and name not in IMPORTERS))


def vendor(modules: dict[str, str], target: Path) -> list[str]:
    """Copy the `ct_assets` source files of `modules` under `target`; returns their paths."""
    root = Path(modules[SELF]).parent.parent
    copied = []
    for name in sorted(modules):
        source = Path(modules[name])
        relative = source.relative_to(root)
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target / relative)
        copied.append(relative.as_posix())
    return copied


def pin_requirements(imported: Iterable[str]) -> list[Pin]:
    """Exact pins of the distributions providing `imported` modules, and their requirements.

    Raises:
        PackagingError: a module no installed distribution provides, or a requirement that is
            not installed.
    """
    from packaging.requirements import Requirement

    provides = importlib.metadata.packages_distributions()
    roots = set()
    for module in imported:
        if not provides.get(module):
            raise PackagingError(f"no installed distribution provides {module!r}, which the "
                                 "server imports")
        roots.update(canonical(name) for name in provides[module])
    try:
        declared = [Requirement(text) for text in importlib.metadata.requires(SELF) or []]
    except importlib.metadata.PackageNotFoundError:
        raise PackagingError(f"{SELF} is not installed (pip install -e .): its declared "
                             "requirements name the extras the server needs") from None
    extras_of = {canonical(r.name): set(r.extras) for r in declared}
    queue = [(name, extras_of.get(name, set()), "imported") for name in sorted(roots)]
    pins: dict[str, Pin] = {}
    seen: dict[str, set[str]] = {}
    while queue:
        name, extras, via = queue.pop(0)
        key = canonical(name)
        if key in seen and extras <= seen[key]:
            continue
        seen[key] = seen.get(key, set()) | extras
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise PackagingError(f"{name}, required {via}, is not installed") from None
        pins.setdefault(key, Pin(key, distribution.version, via))
        for text in distribution.requires or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": extra})
                                     for extra in seen[key] | {""}):
                queue.append((requirement.name, set(requirement.extras), key))
    return sorted(pins.values(), key=lambda pin: pin.name)


def _ask(url: str, body: Any = None) -> Any:
    """One JSON request to the server under trial."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _exercise(logs: Path, stop: threading.Event, outcome: dict[str, Any]) -> None:
    """Wait for the server under trial, send it one request of each kind, then SIGTERM it."""
    endpoint = logs / "endpoint.json"
    deadline = time.monotonic() + PROBE_SECONDS
    while not endpoint.exists():
        if stop.is_set() or time.monotonic() > deadline:
            return
        time.sleep(0.02)
    try:
        found = json.loads(endpoint.read_text(encoding="utf-8"))
        url, name = found["url"], found["model_name"]
        metadata = _ask(f"{url}/v2/models/{name}")
        sample = {"BYTES": "unseen", "BOOL": True, "INT64": 1, "INT32": 1}
        row = {spec["name"]: sample.get(spec["datatype"], 0.5) for spec in metadata["inputs"]}
        _ask(f"{url}/v2/models/{name}/infer", {"inputs": [
            {"name": spec["name"], "datatype": spec["datatype"], "shape": [2],
             "data": [row[spec["name"]]] * 2} for spec in metadata["inputs"]]})
        _ask(f"{url}/predict", {"records": [row, row]})
    except Exception as error:  # reported by the parent as the trial's failure
        outcome["error"] = f"{type(error).__name__}: {error}"
    finally:
        os.kill(os.getpid(), signal.SIGTERM)


def _probe_main(package_dir: Path, output: Path) -> int:
    """The probe's own process: record imports while `server.py` serves one trial."""
    imported: set[str] = set()
    original = builtins.__import__

    def recording(name: str, globals: Any = None, locals: Any = None,
                  fromlist: Any = (), level: int = 0) -> Any:
        if level == 0 and globals is not None \
                and str(globals.get("__name__", "")).partition(".")[0] in IMPORTERS:
            imported.add(name.partition(".")[0])
        return original(name, globals, locals, fromlist, level)

    builtins.__import__ = recording
    outcome: dict[str, Any] = {}
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as logs:
        spec = importlib.util.spec_from_file_location("server", package_dir / "server.py")
        assert spec is not None and spec.loader is not None
        server = importlib.util.module_from_spec(spec)
        sys.modules["server"] = server
        spec.loader.exec_module(server)
        trial = threading.Thread(target=_exercise, args=(Path(logs), stop, outcome))
        trial.start()
        code = server.main(["--port", "0", "--log-dir", logs, "--token", ""])  # open
        stop.set()
        trial.join()
    builtins.__import__ = original
    if code != 0:
        outcome.setdefault("error", f"server.py exited with {code}")
    modules = {name: module.__file__ for name, module in sys.modules.items()
               if name.partition(".")[0] == SELF and getattr(module, "__file__", None)}
    output.write_text(json.dumps({**outcome, "modules": modules,
                                  "imported": sorted(imported)}), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(_probe_main(Path(sys.argv[1]), Path(sys.argv[2])))
