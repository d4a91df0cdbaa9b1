"""A pytest plugin for `benchmarks/suite.py`: the CPU time and wall time of every test.

Loaded with `-p suite_cpu` (this directory on PYTHONPATH); each xdist worker appends one JSON
line per test to `$CT_SUITE_CPU_OUT`: its node id, wall seconds, and the CPU seconds (user +
system) of the worker itself and of the child processes it waited for meanwhile (a daemon,
its code server and run workers, a webserver, Chromium, a canary). CPU of processes nobody
waits for (a Postgres server, which daemonizes) is not counted.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Iterator

import pytest

OUT_ENV = "CT_SUITE_CPU_OUT"


def _cpu() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    out = os.environ.get(OUT_ENV)
    own, children = _cpu()
    began = time.monotonic()
    yield
    if out:
        own_after, children_after = _cpu()
        with open(out, "a", encoding="utf-8") as file:
            file.write(json.dumps({"test": item.nodeid, "wall": time.monotonic() - began,
                                   "cpu_self": own_after - own,
                                   "cpu_children": children_after - children}) + "\n")
