"""What changed in the landing dir since the last look: by content, complete files only.

The landing sensor keeps, per file, its size, modification time, sha256 and the partitions it
covers. A file whose size and mtime are unchanged is not re-read; one whose content hash is
unchanged (a `touch`, or a `cp -p` of the same bytes) is not new. A file still being written —
hidden or in-flight names, or modified less than `settle_seconds` ago — waits for a later look.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from ct_assets.lib.config import Config
from ct_assets.lib.files import discover
from ct_assets.lib.ingest import file_partition_range, keys_between


@dataclass
class LandingChanges:
    """Files whose content is new or changed, or that disappeared, and their partitions."""

    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    partitions: set[str] = field(default_factory=set)
    content_ids: list[str] = field(default_factory=list)
    state: dict[str, list] = field(default_factory=dict)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def scan_landing(config: Config, known: dict[str, list], *, settle_seconds: float = 5.0,
                 now: float | None = None, labels: bool = False) -> LandingChanges:
    """Compare the landing dir with `known` (relpath → [size, mtime_ns, sha256, first, last]).

    With `labels`, the label landing dir (`dataset.labels`) is scanned instead, and a file's
    partitions are those of when its labels became known.

    Returns:
        The changes and the new state to remember; partitions are those of changed files
        (new and old ranges) and of removed files.
    """
    from ct_assets.lib.labels import label_range

    now = time.time() if now is None else now
    result = LandingChanges(state=dict(known))
    present: set[str] = set()
    directory = config.labels_dir if labels else config.landing_dir
    partition_range = label_range if labels else file_partition_range
    if directory is None:
        return result
    for file in discover(directory):
        if file.problem:
            continue
        present.add(file.relpath)
        entry = known.get(file.relpath)
        if entry and entry[0] == file.size and entry[1] == file.mtime_ns:
            continue
        if now - file.mtime_ns / 1e9 < settle_seconds:
            continue  # possibly still being written in place: look again next time
        digest = sha256_of(file.path)
        keys = partition_range(file, config)
        first, last = keys if keys else (None, None)
        result.state[file.relpath] = [file.size, file.mtime_ns, digest, first, last]
        if entry and entry[2] == digest:
            continue  # same content under a new mtime
        result.changed.append(file.relpath)
        result.content_ids.append(f"{file.relpath}@{digest}")
        _add_range(result.partitions, config, first, last)
        if entry:
            _add_range(result.partitions, config, entry[3], entry[4])
    for relpath in sorted(set(known) - present):
        entry = result.state.pop(relpath)
        result.removed.append(relpath)
        result.content_ids.append(f"{relpath}@removed@{entry[2]}")
        _add_range(result.partitions, config, entry[3], entry[4])
    return result


def _add_range(keys: set[str], config: Config, first: str | None, last: str | None) -> None:
    if first and last:
        keys.update(keys_between(config, first, last))

