"""The machine a benchmark ran on, recorded with its results (shared by the benchmark scripts).

The scripts run as `python benchmarks/<name>.py`, so this directory is on `sys.path` and they
import it as `from machine import machine_info`.
"""

from __future__ import annotations

import os
import platform
from importlib.metadata import version
from pathlib import Path
from typing import Any


def machine_info(packages: tuple[str, ...], **extra: Any) -> dict[str, Any]:
    """CPU, memory, platform, Python, the versions of `packages`, the load now, and `extra`."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu_count": os.cpu_count(), "cpu_model": model or platform.processor(),
            "memory_gib": round(memory, 1), "platform": platform.platform(),
            "python": platform.python_version(),
            **{name: version(name) for name in packages},
            "load_average_1m": round(os.getloadavg()[0], 2), **extra}
