"""What changed in the landing dir since the last look: by content, complete files only.

The landing sensor keeps, per file, its size, modification time, sha256 and the partitions it
covers. A file whose size and mtime are unchanged is not re-read; one whose content hash is
unchanged (a `touch`, or a `cp -p` of the same bytes) is not new. A file still being written —
hidden or in-flight names, or modified less than `settle_seconds` ago — waits for a later look.

Every look that finds a change is a new generation, and the generation is part of each run key:
Dagster launches a run key once, so a file going X → Y → X, or removed and landed again, must
give keys never used before, or the last change would be skipped and stale rows would stay.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ct_assets.lib.config import Config
from ct_assets.lib.files import discover
from ct_assets.lib.ingest import contiguous_ranges, file_partition_range, keys_between


@dataclass
class LandingChanges:
    """Files whose content is new or changed, or that disappeared, and their partitions."""

    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    partitions: set[str] = field(default_factory=set)
    content_ids: list[str] = field(default_factory=list)
    state: dict[str, list] = field(default_factory=dict)


@dataclass
class LandingCursor:
    """What a landing sensor remembers between looks.

    Attributes:
        files: relpath → [size, mtime_ns, sha256, first, last] of each file seen.
        generation: how many looks found a change; only ever grows.
    """

    files: dict[str, list] = field(default_factory=dict)
    generation: int = 0

    @classmethod
    def parse(cls, text: str | None) -> LandingCursor:
        """Read a cursor written by `dump`, or the older form (the bare `files` mapping)."""
        if not text:
            return cls()
        data = json.loads(text)
        if isinstance(data.get("files"), dict) and isinstance(data.get("generation"), int):
            return cls(files=data["files"], generation=data["generation"])
        return cls(files=data)  # written before generations: keys with one were never used

    def dump(self) -> str:
        """The cursor as the JSON text the sensor stores in the instance."""
        return json.dumps({"generation": self.generation, "files": self.files})


@dataclass(frozen=True)
class LandingRun:
    """One run to request for a contiguous range of changed partitions."""

    run_key: str
    first: str
    last: str


def plan_landing_runs(cursor: LandingCursor, changes: LandingChanges, ordered: list[str],
                      kind: str = "landing") -> tuple[list[LandingRun], LandingCursor]:
    """The runs a look at the landing dir asks for, and the cursor to store after it.

    A look that found a change is the next generation. Each run key holds that generation, a
    digest of the contents seen and the range, so a content that comes back (X → Y → X), or
    a file removed and landed again, gets a key never launched before, while a retried look
    from the same cursor gives the same keys (Dagster starts no second run).

    Args:
        cursor: the cursor the look started from.
        changes: what `scan_landing` found, given `cursor.files`.
        ordered: every partition key of the partitions definition, in time order.
        kind: the first part of each run key.

    Returns:
        The runs (none when nothing changed) and the cursor to store.
    """
    if not changes.changed and not changes.removed:
        return [], LandingCursor(files=changes.state, generation=cursor.generation)
    generation = cursor.generation + 1
    content = hashlib.sha256("\n".join(sorted(changes.content_ids)).encode()).hexdigest()
    runs = [LandingRun(f"{kind}:{generation}:{content[:16]}:{first}:{last}", first, last)
            for first, last in contiguous_ranges(changes.partitions, ordered)]
    return runs, LandingCursor(files=changes.state, generation=generation)


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

