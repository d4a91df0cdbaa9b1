"""Suite-wide test order: the longest files first.

`make test` runs `pytest -n 2 --dist loadfile --no-loadscope-reorder`: each worker takes the next
file in collection order when it finishes one. xdist's default order (files with the most tests
first) would leave the one-test daemon and browser files, the longest by far, for the end, one
worker running them while the other idles. Starting them first lets the short files fill in
around them. The seconds per file in the comments are `benchmarks/suite.py`'s (worker seconds
on the 2-core machine, `benchmarks/results/suite.json`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent

LONGEST_FIRST = (
    "test_retraining_loop.py",  # 200 (the first two start together, one per worker)
    "test_end_to_end.py",  # 284
    "test_concurrency.py",  # 132
    "test_ui.py",  # 81
    "defs/test_monitoring.py",  # 70
    "test_package.py",  # 62
    "defs/test_gate_integrity.py",  # 52
    "test_ct_run.py",  # 44
    "defs/test_lifecycle.py",  # 33
)


@pytest.fixture(autouse=True)
def _no_dagster_home_between_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without `$DAGSTER_HOME`, and whatever it sets is undone after it.

    `ct` run in-process sets `$DAGSTER_HOME` (`cli.prepare_dagster_home`) as its process would;
    left behind, the next test on the worker would open that project's instance.
    """
    monkeypatch.delenv("DAGSTER_HOME", raising=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the files of `LONGEST_FIRST` (paths under this directory) first, in that order."""
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.relative_to(HERE).as_posix(), len(rank)))
