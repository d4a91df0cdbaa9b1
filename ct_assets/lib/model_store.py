"""The model store: versioned model directories, each verified by the sha256 in its manifest.

Layout under `<storage>/models/`:
- `<version>/`: the model files in the library's own format, `manifest.json` (sha256 of every
  file, feature schema, window, params, metrics, versions, parent) and, later, `decision.json`;
- `deployed.json`: the champion pointer and the history of every promotion, one document
  replaced atomically, so the pointer and its history can never disagree.

A version directory is built under a hidden temporary name and renamed into place complete, so
a process killed mid-save leaves no half-written version; `deployed.json` is written to a
temporary file, fsynced and `os.replace`d, so it always names a complete, verifiable model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
DECISION = "decision.json"
POINTER = "deployed.json"
log = logging.getLogger(__name__)


class ModelStoreError(Exception):
    """A model cannot be used: missing, incomplete, or its files do not match the manifest."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_json_atomic(path: Path, document: Any) -> None:
    """Write JSON to a temporary file, fsync it, then rename it over `path`."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def now_iso() -> str:
    """The current UTC time, ISO 8601."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class ModelStore:
    """Versioned models under one directory, with an atomic champion pointer."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, version: str) -> Path:
        """Directory of a version."""
        return self.root / version

    def save(self, version: str, files: dict[str, Path], manifest: dict[str, Any]) -> Path:
        """Store a new version: copy `files` in, hash them into the manifest, rename into place.

        Args:
            version: the new version name (a directory name).
            files: artifact name → a file already written elsewhere (e.g. a temp dir).
            manifest: everything else the manifest records.

        Returns:
            The version directory.
        """
        final = self.path(version)
        self.remove_leftovers()
        if final.exists():
            raise ModelStoreError(f"model version {version} already exists in {self.root}")
        staging = self.root / f".staging-{version}-{os.getpid()}"
        staging.mkdir(parents=True)
        hashes = {}
        for name, source in files.items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            with target.open("rb") as handle:
                os.fsync(handle.fileno())
            hashes[name] = sha256_file(target)
        write_json_atomic(staging / MANIFEST, {**manifest, "version": version, "files": hashes})
        _fsync_dir(staging)
        os.replace(staging, final)
        _fsync_dir(self.root)
        return final

    def remove_leftovers(self) -> None:
        """Delete staging dirs and temporary files left by processes that were killed."""
        if not self.root.is_dir():
            return
        for path in self.root.glob(".*"):
            pid = path.name.rsplit("-", 1)[-1] if path.is_dir() else path.name.split(".")[-2]
            if pid.isdigit() and not _alive(int(pid)):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    def manifest(self, version: str) -> dict[str, Any]:
        """A version's manifest after checking every file against its sha256.

        Raises:
            ModelStoreError: naming the missing, unreadable or mismatching file.
        """
        directory = self.path(version)
        manifest_path = directory / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelStoreError(f"{manifest_path}: model manifest is missing") from None
        except ValueError as error:
            raise ModelStoreError(f"{manifest_path}: manifest is not valid JSON ({error})"
                                  ) from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) \
                or not manifest["files"]:
            raise ModelStoreError(f"{manifest_path}: manifest has no 'files' table")
        for name, expected in manifest["files"].items():
            file = directory / name
            if not file.is_file():
                raise ModelStoreError(f"{file}: model file listed in the manifest is missing")
            actual = sha256_file(file)
            if actual != expected:
                raise ModelStoreError(
                    f"{file}: sha256 mismatch (manifest {expected[:12]}…, file {actual[:12]}…); "
                    "the artifact was modified or corrupted and will not be loaded"
                )
        return manifest

    def versions(self) -> list[str]:
        """Every complete version, oldest first; directories without a valid manifest are skipped.

        Each skipped directory is logged as a warning.
        """
        if not self.root.is_dir():
            return []
        found = []
        for directory in sorted(self.root.iterdir()):
            if not directory.is_dir() or directory.name.startswith("."):
                continue
            try:
                manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
                if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) \
                        or not manifest["files"]:
                    raise ValueError("no 'files' table")
            except (OSError, ValueError) as error:
                log.warning("ignoring model directory %s: no valid manifest (%s)", directory, error)
                continue
            found.append(directory.name)
        return found

    def describe(self, version: str) -> dict[str, Any]:
        """The manifest as stored (unverified) plus the decision, for listings."""
        manifest = json.loads((self.path(version) / MANIFEST).read_text(encoding="utf-8"))
        return {**manifest, "decision": self.decision(version)}

    def record_decision(self, version: str, decision: dict[str, Any]) -> None:
        """Record the gate's verdict on a version (`approved` true/false and why)."""
        write_json_atomic(self.path(version) / DECISION, {**decision, "decided_at": now_iso()})

    def decision(self, version: str) -> dict[str, Any] | None:
        """The gate's verdict on a version, or None when it was never validated."""
        path = self.path(version) / DECISION
        if not path.exists():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def pointer(self) -> dict[str, Any]:
        """`deployed.json`: `{"deployed": record | None, "history": [records…]}`."""
        path = self.root / POINTER
        if not path.exists():
            return {"deployed": None, "history": []}
        return json.loads(path.read_text(encoding="utf-8"))

    def deployed(self) -> dict[str, Any] | None:
        """The current promotion record (`version`, `promoted_at`, `reason`, …) or None."""
        return self.pointer()["deployed"]

    def promote(self, version: str, reason: str, **details: Any) -> dict[str, Any]:
        """Make `version` the champion, after verifying its files; returns the new record."""
        manifest = self.manifest(version)
        holdout = (self.decision(version) or {}).get("metrics")
        record = {"version": version, "promoted_at": now_iso(), "reason": reason,
                  "metrics": holdout or manifest.get("metrics", {}), **details}
        state = self.pointer()
        previous = state["deployed"]
        record["previous"] = previous["version"] if previous else None
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.root / POINTER,
                          {"deployed": record, "history": [*state["history"], record]})
        return record

    def status(self, version: str) -> str:
        """`deployed`, `retired` (was deployed), `rejected` (gate failed) or `candidate`."""
        state = self.pointer()
        if state["deployed"] and state["deployed"]["version"] == version:
            return "deployed"
        if any(record["version"] == version for record in state["history"]):
            return "retired"
        decision = self.decision(version)
        if decision is not None and not decision.get("approved", False):
            return "rejected"
        return "candidate"
