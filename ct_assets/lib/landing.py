"""What a sensor must ingest: the landing dir compared with the record of what was ingested.

The record is the file catalog's `ingested` (partition → the files, by sha256, that its last
ingestion took in), written by `raw_events` and `labels` whoever launched them: the landing and
label sensors, `ct run` or `ct demo`. So a sensor that first looks after `ct demo` finds every
file ingested and asks for nothing. A partition is asked for when its landed files differ from
that record and from what the sensor already asked for it (a run queued or running): new,
changed and removed complete files. A file still being written — hidden or in-flight names, or
modified less than `settle_seconds` ago — waits for a later look.

Every look that asks for something is a new generation, and the generation is part of each run
key: Dagster launches a run key once, so a file going X → Y → X, or removed and landed again,
must give keys never used before, or the last change would be skipped and stale rows would stay.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

from ct_assets.lib.config import Config
from ct_assets.lib.files import discover, sha256_file
from ct_assets.lib.ingest import (
    FileCatalog,
    RangeReader,
    contiguous_ranges,
    file_partition_range,
    keys_between,
)


@dataclass
class LandedContents:
    """What the landing dir holds now, by content.

    Attributes:
        partitions: partition key → {relpath: sha256} of the files covering it.
        files: relpath → [size, mtime_ns, sha256, first, last] of each file looked at.
        unsettled: files modified too recently to be read (still being written, perhaps).
    """

    partitions: dict[str, dict[str, str]] = field(default_factory=dict)
    files: dict[str, list] = field(default_factory=dict)
    unsettled: set[str] = field(default_factory=set)


def landed_contents(config: Config, catalog: FileCatalog, *, labels: bool = False,
                    known: dict[str, list] | None = None, settle_seconds: float = 0.0,
                    now: float | None = None) -> LandedContents:
    """The content of every complete landed file and the partitions it covers.

    A file version the catalog or `known` (a previous result's `files`) has seen is not hashed
    or read again; its range comes from the catalog once ingestion has read it, so both sides
    of `pending_partitions` use the same ranges. A file modified less than `settle_seconds`
    ago and not seen before is left for later (`unsettled`). With `labels`, the label files
    (`dataset.labels`) and the partitions their labels became known in.
    """
    from ct_assets.lib.labels import label_range

    known = known or {}
    now = time.time() if now is None else now
    partition_range: RangeReader = label_range if labels else file_partition_range
    directory = config.labels_dir if labels else config.landing_dir
    result = LandedContents()
    for file in discover(directory) if directory else []:
        if file.problem:
            continue
        seen = known.get(file.relpath)
        same = seen is not None and (seen[0], seen[1]) == (file.size, file.mtime_ns)
        digest = catalog.contents.get(file.fingerprint) or (seen[2] if same and seen else None)
        if digest is None:
            if now - file.mtime_ns / 1e9 < settle_seconds:
                result.unsettled.add(file.relpath)
                continue
            digest = sha256_file(file.path)
        if file.fingerprint in catalog.entries or not same or seen is None:
            found = catalog.range_of(file, config, partition_range)
        else:
            found = (seen[3], seen[4]) if seen[3] else None
        first, last = found or (None, None)
        result.files[file.relpath] = [file.size, file.mtime_ns, digest, first, last]
        for key in keys_between(config, first, last) if first and last else []:
            result.partitions.setdefault(key, {})[file.relpath] = digest
    return result


def pending_partitions(landed: LandedContents, ingested: dict[str, dict[str, str]]
                       ) -> set[str]:
    """Partitions whose landed files differ from those their last ingestion took in.

    New, changed and removed files make their partitions pending; files still settling are
    judged once they have settled.
    """
    return {key for key in set(landed.partitions) | set(ingested)
            if differs(landed.partitions.get(key, {}), ingested.get(key, {}), landed.unsettled)}


def differs(landed: dict[str, str], recorded: dict[str, str], ignore: set[str]) -> bool:
    """Whether two {relpath: sha256} maps differ, leaving out the files in `ignore`."""
    if not ignore:
        return landed != recorded
    return ({path: digest for path, digest in landed.items() if path not in ignore}
            != {path: digest for path, digest in recorded.items() if path not in ignore})


@dataclass
class LandingChanges:
    """What a look found to ingest: partitions, the files that changed, and what to remember."""

    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    partitions: set[str] = field(default_factory=set)
    content_ids: list[str] = field(default_factory=list)
    state: dict[str, list] = field(default_factory=dict)
    requested: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class LandingCursor:
    """What a landing sensor remembers between looks.

    Attributes:
        files: relpath → [size, mtime_ns, sha256, first, last] of each file seen, so a file
            whose size and mtime are unchanged is not hashed again.
        generation: how many looks asked for a run; only ever grows.
        requested: partition → {relpath: sha256} the sensor asked a run to ingest and the
            record does not show ingested yet; None in a cursor written before the record
            (what it had seen counts as asked for).
    """

    files: dict[str, list] = field(default_factory=dict)
    generation: int = 0
    requested: dict[str, dict[str, str]] | None = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> LandingCursor:
        """Read a cursor written by `dump`, or an older one (no `requested`, or bare `files`)."""
        if not text:
            return cls()
        data = json.loads(text)
        if isinstance(data.get("files"), dict) and isinstance(data.get("generation"), int):
            return cls(files=data["files"], generation=data["generation"],
                       requested=data.get("requested"))
        return cls(files=data, requested=None)  # before generations: no key with one was used

    def dump(self) -> str:
        """The cursor as the JSON text the sensor stores in the instance."""
        return json.dumps({"generation": self.generation, "files": self.files,
                           "requested": self.requested or {}})


@dataclass(frozen=True)
class LandingRun:
    """One run to request for a contiguous range of changed partitions."""

    run_key: str
    first: str
    last: str


def scan_landing(config: Config, cursor: LandingCursor, catalog: FileCatalog, *,
                 settle_seconds: float = 5.0, now: float | None = None, labels: bool = False
                 ) -> LandingChanges:
    """The partitions to ingest: landed files that differ from the record and from the cursor.

    Args:
        config: the project's configuration.
        cursor: what the sensor remembers (`LandingCursor`).
        catalog: the file catalog holding the record of what was ingested (read only).
        settle_seconds: files modified more recently than this, and not seen before, wait.
        now: the current time in seconds (tests).
        labels: scan the label landing dir (`dataset.labels`); a file's partitions are those
            its labels became known in.

    Returns:
        The partitions to ask for, the files that changed or disappeared, and the file cache
        and requests to remember.
    """
    landed = landed_contents(config, catalog, labels=labels, known=cursor.files,
                             settle_seconds=settle_seconds, now=now)
    requested = (cursor.requested if cursor.requested is not None
                 else seen_as_requested(config, cursor.files))
    result = LandingChanges(state=landed.files)
    changed: set[str] = set()
    removed: set[str] = set()
    for key in sorted(set(landed.partitions) | set(catalog.ingested) | set(requested)):
        want = landed.partitions.get(key, {})
        ingested = catalog.ingested.get(key, {})
        if not differs(want, ingested, landed.unsettled):
            continue  # ingested as it landed
        asked = requested.get(key)
        if asked is not None and not differs(want, asked, landed.unsettled):
            result.requested[key] = asked  # asked for: its run is queued, running or failed
            continue
        before = asked if asked is not None else ingested
        changed.update(path for path, digest in want.items() if before.get(path) != digest)
        removed.update(path for path in before
                       if path not in want and path not in landed.unsettled)
        result.partitions.add(key)
        result.requested[key] = want
        result.content_ids.append(
            f"{key}=" + ",".join(f"{path}@{digest}" for path, digest in sorted(want.items())))
    result.changed, result.removed = sorted(changed), sorted(removed - changed)
    return result


def seen_as_requested(config: Config, files: dict[str, list]) -> dict[str, dict[str, str]]:
    """The partitions an older cursor's files cover, as if the sensor had asked for them."""
    requested: dict[str, dict[str, str]] = {}
    for relpath, (_, _, digest, first, last) in files.items():
        for key in keys_between(config, first, last) if first and last else []:
            requested.setdefault(key, {})[relpath] = digest
    return requested


def plan_landing_runs(cursor: LandingCursor, changes: LandingChanges, ordered: list[str],
                      kind: str = "landing") -> tuple[list[LandingRun], LandingCursor]:
    """The runs a look at the landing dir asks for, and the cursor to store after it.

    A look that asks for something is the next generation. Each run key holds that
    generation, a digest of the contents asked for and the range, so a content that comes back
    (X → Y → X), or a file removed and landed again, gets a key never launched before, while a
    retried look from the same cursor gives the same keys (Dagster starts no second run).

    Args:
        cursor: the cursor the look started from.
        changes: what `scan_landing` found, given `cursor`.
        ordered: every partition key of the partitions definition, in time order.
        kind: the first part of each run key.

    Returns:
        The runs (none when nothing changed) and the cursor to store.
    """
    after = LandingCursor(files=changes.state, generation=cursor.generation,
                          requested=changes.requested)
    if not changes.partitions:
        return [], after
    after.generation += 1
    content = hashlib.sha256("\n".join(sorted(changes.content_ids)).encode()).hexdigest()
    runs = [LandingRun(f"{kind}:{after.generation}:{content[:16]}:{first}:{last}", first, last)
            for first, last in contiguous_ranges(changes.partitions, ordered)]
    return runs, after
