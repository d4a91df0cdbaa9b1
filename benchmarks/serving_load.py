# The load generator of benchmarks/serving.py. It runs in its own process, in the benchmark's
# venv (benchmarks/.venv-mlserver: aiohttp, orjson, uvloop), never in the project's .venv.
"""Closed-loop HTTP load: N concurrent clients POST pre-encoded bodies for a fixed duration.

    python benchmarks/serving_load.py SPEC.json OUT.json

SPEC (JSON): `url`, `bodies` (path of a JSON file: {"bodies": [str, ...], "rows": [int, ...]}),
`concurrency`, `warmup` and `seconds` (the measured window starts after the warm-up),
optional `headers`, `timeout` (s, per request), `collect_ids` (keep the `id` of every 2xx
response), `track_versions` (segments of `model_version` in completion order, wall-clock
times).

Each client is a closed loop: send, wait for the whole response, parse it, send the next. A
request counts in the window when it completes inside it; latency is from just before the send
to the parsed response. A request fails when the status is not 200, the connection fails or
breaks, it times out, or the body is not a JSON object with `outputs`. After a connection error
a client waits 10 ms before retrying, so a dead server does not turn the clients into a spin
loop. `all_phases` counts every request of the run (warm-up included): what the SIGTERM test
compares with the server's request log.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson


def percentile(ordered: list[float], q: float) -> float | None:
    """The q-quantile (0..1) of sorted values, nearest-rank; None when empty."""
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


class Recorder:
    """What the clients saw, split into the measured window and the whole run."""

    def __init__(self, window_start: float, window_end: float, spec: dict[str, Any]) -> None:
        self.window_start, self.window_end = window_start, window_end
        self.latencies: list[float] = []
        self.window = {"ok": 0, "failed": 0, "ok_rows": 0}
        self.all = {"ok": 0, "failed": 0, "ok_rows": 0}
        self.failures: dict[str, int] = {}
        self.failure_examples: dict[str, str] = {}
        self.versions: dict[str, int] = {}
        self.collect_ids = bool(spec.get("collect_ids"))
        self.track_versions = bool(spec.get("track_versions"))
        self.ids: list[str] = []
        self.segments: list[list[Any]] = []  # [version, count, first wall time, last wall time]

    def ok(self, started: float, ended: float, rows: int, document: dict[str, Any]) -> None:
        """A 2xx response with outputs."""
        self.all["ok"] += 1
        self.all["ok_rows"] += rows
        version = document.get("model_version")
        if version is not None:
            self.versions[version] = self.versions.get(version, 0) + 1
        if self.collect_ids and document.get("id") is not None:
            self.ids.append(document["id"])
        if self.track_versions:
            wall = time.time()
            if self.segments and self.segments[-1][0] == version:
                self.segments[-1][1] += 1
                self.segments[-1][3] = wall
            else:
                self.segments.append([version, 1, wall, wall])
        if self.window_start <= ended <= self.window_end:
            self.window["ok"] += 1
            self.window["ok_rows"] += rows
            self.latencies.append(ended - started)

    def failed(self, ended: float, kind: str, detail: str) -> None:
        """A failed request, by kind (`http_503`, `connect`, `timeout`, …)."""
        self.all["failed"] += 1
        self.failures[kind] = self.failures.get(kind, 0) + 1
        self.failure_examples.setdefault(kind, detail[:300])
        if self.window_start <= ended <= self.window_end:
            self.window["failed"] += 1


async def client(session: aiohttp.ClientSession, url: str, bodies: list[tuple[bytes, int]],
                 offset: int, stop_at: float, recorder: Recorder,
                 headers: dict[str, str]) -> None:
    """One closed-loop client, cycling through the bodies from its own offset."""
    index = offset
    while True:
        started = time.perf_counter()
        if started >= stop_at:
            return
        body, rows = bodies[index % len(bodies)]
        index += 1
        try:
            async with session.post(url, data=body, headers=headers) as response:
                payload = await response.read()
                status = response.status
            ended = time.perf_counter()
        except TimeoutError:
            recorder.failed(time.perf_counter(), "timeout", "no response within the timeout")
            continue
        except aiohttp.ClientConnectorError as error:
            recorder.failed(time.perf_counter(), "connect", repr(error))
            await asyncio.sleep(0.01)
            continue
        except aiohttp.ClientError as error:
            recorder.failed(time.perf_counter(), "disconnected", repr(error))
            await asyncio.sleep(0.01)
            continue
        if status != 200:
            recorder.failed(ended, f"http_{status}", payload.decode("utf-8", "replace"))
            continue
        try:
            document = orjson.loads(payload)
            if not isinstance(document, dict) or not document.get("outputs"):
                raise ValueError("no outputs")
        except ValueError:
            recorder.failed(ended, "bad_body", payload[:300].decode("utf-8", "replace"))
            continue
        recorder.ok(started, ended, rows, document)


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the load described by `spec`; return the figures."""
    source = json.loads(Path(spec["bodies"]).read_text(encoding="utf-8"))
    bodies = [(text.encode("utf-8"), rows)
              for text, rows in zip(source["bodies"], source["rows"], strict=True)]
    concurrency, warmup, seconds = int(spec["concurrency"]), float(spec["warmup"]), float(
        spec["seconds"])
    headers = {"Content-Type": "application/json", **spec.get("headers", {})}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=float(spec.get("timeout", 30.0)))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        began = time.perf_counter()
        wall_began = time.time()
        recorder = Recorder(began + warmup, began + warmup + seconds, spec)
        cpu_before = time.process_time()
        stop_at = began + warmup + seconds
        step = max(1, len(bodies) // concurrency)
        await asyncio.gather(*[client(session, spec["url"], bodies, i * step, stop_at, recorder,
                                      headers) for i in range(concurrency)])
        finished = time.perf_counter()
        cpu = time.process_time() - cpu_before
    ordered = sorted(recorder.latencies)
    window_requests = recorder.window["ok"] + recorder.window["failed"]
    result = {
        "concurrency": concurrency, "warmup_s": warmup, "seconds": seconds,
        "wall_started": wall_began, "elapsed_s": finished - began,
        "requests": window_requests, "ok": recorder.window["ok"],
        "failed": recorder.window["failed"], "ok_rows": recorder.window["ok_rows"],
        "requests_per_s": recorder.window["ok"] / seconds,
        "rows_per_s": recorder.window["ok_rows"] / seconds,
        "latency_ms": {
            "p50": _ms(percentile(ordered, 0.50)), "p90": _ms(percentile(ordered, 0.90)),
            "p99": _ms(percentile(ordered, 0.99)), "max": _ms(ordered[-1] if ordered else None),
            "mean": _ms(sum(ordered) / len(ordered) if ordered else None),
        },
        "all_phases": recorder.all,
        "failures": recorder.failures, "failure_examples": recorder.failure_examples,
        "versions": recorder.versions,
        "client_cpu_s": cpu,
    }
    if recorder.collect_ids:
        result["ids"] = recorder.ids
    if recorder.track_versions:
        result["version_segments"] = recorder.segments
    return result


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def main(argv: list[str]) -> int:
    """Read the spec, run, write the result."""
    spec_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    try:
        import uvloop
    except ImportError:
        uvloop = None
    result = uvloop.run(run(spec)) if uvloop is not None else asyncio.run(run(spec))
    Path(out_path).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
