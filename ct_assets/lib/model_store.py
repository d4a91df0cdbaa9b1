"""The model store: versioned model directories, each verified by the sha256 in its manifest.

Layout under `<storage>/models/`:
- `<version>/`: the model files in the library's own format, `manifest.json` (sha256 of every
  file, feature schema, window, params, metrics, versions, parent) and, later, `decision.json`
  (the gate's verdict, bound to the manifest's sha256);
- `deployed.json`: the champion pointer and the history of every promotion, one document
  replaced atomically, so the pointer and its history can never disagree;
- `.seal-key`: the store's secret (mode 0600). `manifest.json` and `decision.json` each carry a
  `seal`, an HMAC-SHA256 of their content under that key, so neither a model file (its sha256
  is in the sealed manifest), nor the manifest, nor the verdict can be edited unnoticed: every
  load verifies all of them, and promotion trusts only a sealed verdict. Versions written
  before the store sealed anything (listed in the key file when it was created) still load,
  but their unsealed verdicts are never trusted for promotion.

A version directory is built under a hidden temporary name and renamed into place complete, so
a process killed mid-save leaves no half-written version; `deployed.json` is written to a
temporary file, fsynced and `os.replace`d, so it always names a complete, verifiable model.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from ct_assets.lib.files import sha256_file

# The drift reference profile every deployable version carries (fitted on its training rows).
REFERENCE_FILE = "reference_profile.json"

__all__ = ["ModelStore", "ModelStoreError", "PinnedStore", "read_manifest", "sha256_file",
           "verify_files"]

MANIFEST = "manifest.json"
DECISION = "decision.json"
POINTER = "deployed.json"
SEAL_KEY = ".seal-key"
SEAL = "seal"
log = logging.getLogger(__name__)


class ModelStoreError(Exception):
    """A model cannot be used: missing, incomplete, or its files do not match the manifest."""


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


def _canonical(document: Any) -> bytes:
    """The bytes a seal covers: the document as it reads back from JSON, keys sorted."""
    plain = json.loads(json.dumps(document, default=str))
    return json.dumps(plain, sort_keys=True, separators=(",", ":")).encode("utf-8")


def now_iso() -> str:
    """The current UTC time, ISO 8601."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def read_manifest(path: Path) -> dict[str, Any]:
    """A version's manifest as stored (its seal and files unchecked).

    Raises:
        ModelStoreError: naming `path`, when it is missing, not JSON, or lists no files.
    """
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelStoreError(f"{path}: model manifest is missing") from None
    except ValueError as error:
        raise ModelStoreError(f"{path}: manifest is not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) \
            or not manifest["files"]:
        raise ModelStoreError(f"{path}: manifest has no 'files' table")
    return manifest


def verify_files(directory: Path, manifest: dict[str, Any]) -> None:
    """Check a version directory against its manifest: every listed file, no unlisted one.

    Needs no seal key: whoever trusts the manifest (by its seal, or by its sha256 recorded
    elsewhere, as a package does) trusts the files through it.

    Raises:
        ModelStoreError: naming the missing, mismatching or unlisted file.
    """
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
    for file in directory.rglob("*"):
        name = file.relative_to(directory).as_posix()
        if file.is_file() and not file.name.startswith(".") \
                and name not in (MANIFEST, DECISION) and name not in manifest["files"]:
            raise ModelStoreError(f"{file}: not listed in the manifest; the version was "
                                  "modified after it was saved and will not be loaded")


class ModelStore:
    """Versioned models under one directory, with an atomic champion pointer."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, version: str) -> Path:
        """Directory of a version."""
        return self.root / version

    def save(self, version: str, files: dict[str, Path], manifest: dict[str, Any]) -> Path:
        """Store a new version: copy `files` in, hash them into a sealed manifest, rename it in.

        Args:
            version: the new version name (a directory name).
            files: artifact name → a file already written elsewhere (e.g. a temp dir); it must
                hold the drift reference (`reference_profile.json`).
            manifest: everything else the manifest records.

        Returns:
            The version directory.

        Raises:
            ModelStoreError: the version exists, or no drift reference is among `files` (a model
                without one would fail the drift check of every partition it scores).
        """
        final = self.path(version)
        self.remove_leftovers()
        if final.exists():
            raise ModelStoreError(f"model version {version} already exists in {self.root}")
        if REFERENCE_FILE not in files:
            raise ModelStoreError(
                f"model version {version} has no drift reference ({REFERENCE_FILE}) among its "
                f"files ({', '.join(sorted(files)) or 'none'}); it is not saved, since every "
                "partition it scored would fail its drift check")
        found = self._seal_key(create=True)
        assert found is not None
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
        document = {**manifest, "version": version, "files": hashes}
        document.pop(SEAL, None)
        write_json_atomic(staging / MANIFEST, {**document, SEAL: _seal(found[0], document)})
        _fsync_dir(staging)
        os.replace(staging, final)
        _fsync_dir(self.root)
        return final

    def _seal_key(self, create: bool = False) -> tuple[bytes, list[str]] | None:
        """The store's secret and the versions written before it existed (None: no key yet).

        With `create`, a missing key is generated (0600, never replaced once written: two
        processes racing to create it agree on the one that landed first).
        """
        path = self.root / SEAL_KEY
        if not path.exists():
            if not create:
                return None
            self.root.mkdir(parents=True, exist_ok=True)
            document = {"key": os.urandom(32).hex(), "created_at": now_iso(),
                        "unsealed_versions": self.versions()}
            temporary = path.with_name(f"{SEAL_KEY}.{os.getpid()}.tmp")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(document, handle)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temporary, path)  # fails if another process created it first
            except FileExistsError:
                pass
            finally:
                temporary.unlink(missing_ok=True)
            _fsync_dir(self.root)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            return bytes.fromhex(document["key"]), list(document.get("unsealed_versions", []))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ModelStoreError(f"{path}: the model store's seal key is unreadable ({error}); "
                                  "no manifest or verdict can be verified") from None

    def _verify_seal(self, path: Path, document: dict[str, Any], version: str) -> bool:
        """Check a document's seal; returns False for an unsealed document of an old version.

        Raises:
            ModelStoreError: naming `path`, when the seal does not match, or when a version
                written since the store seals its files carries none.
        """
        found = self._seal_key()
        seal = document.get(SEAL)
        if seal is None:
            if found is None or version in found[1]:
                return False  # written before this store sealed anything
            raise ModelStoreError(f"{path}: not sealed by the model store, although {version} "
                                  "was written after sealing began; it was replaced by hand "
                                  "and will not be trusted")
        if found is None:
            raise ModelStoreError(f"{path}: sealed, but the store's seal key "
                                  f"{self.root / SEAL_KEY} is missing; it cannot be verified")
        content = {k: v for k, v in document.items() if k != SEAL}
        if not hmac.compare_digest(str(seal), _seal(found[0], content)):
            raise ModelStoreError(f"{path}: seal mismatch; the file was modified after the "
                                  "model store wrote it and will not be trusted")
        return True

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
        """A version's manifest after verifying every file of the version directory.

        The manifest's seal, every listed file against its sha256, no unlisted file, and the
        gate's verdict (`decision.json`) when there is one. The result has `sealed`: False
        only for a version written before the store sealed manifests.

        Raises:
            ModelStoreError: naming the missing, unreadable, mismatching or unlisted file.
        """
        directory = self.path(version)
        manifest_path = directory / MANIFEST
        manifest = read_manifest(manifest_path)
        sealed = self._verify_seal(manifest_path, manifest, version)
        verify_files(directory, manifest)
        self.decision(version)  # a tampered verdict makes the whole version untrustworthy
        manifest.pop(SEAL, None)
        return {**manifest, "sealed": sealed}

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
        """The manifest as stored (its files unverified) plus the decision, for listings.

        A verdict that fails verification is left out (`decision` None) and the reason is in
        `decision_error`, so a listing shows the version without trusting it.
        """
        manifest = json.loads((self.path(version) / MANIFEST).read_text(encoding="utf-8"))
        manifest.pop(SEAL, None)
        try:
            return {**manifest, "decision": self.decision(version)}
        except ModelStoreError as error:
            return {**manifest, "decision": None, "decision_error": str(error)}

    def record_decision(self, version: str, decision: dict[str, Any]) -> dict[str, Any]:
        """Record the gate's verdict on a version (`approved` true/false and why), sealed.

        The record names the version and the sha256 of its manifest, so a verdict cannot be
        moved to another version or outlive a change of the manifest. Returns the record.
        """
        manifest_path = self.path(version) / MANIFEST
        if not manifest_path.is_file():
            raise ModelStoreError(f"{manifest_path}: model manifest is missing")
        found = self._seal_key(create=True)
        assert found is not None
        document = {**decision, "decided_at": now_iso(), "version": version,
                    "manifest_sha256": sha256_file(manifest_path)}
        document.pop(SEAL, None)
        document.pop("sealed", None)
        write_json_atomic(self.path(version) / DECISION,
                          {**document, SEAL: _seal(found[0], document)})
        return {**json.loads(_canonical(document)), "sealed": True}

    def decision(self, version: str) -> dict[str, Any] | None:
        """The gate's verdict on a version after verifying its seal, or None when never validated.

        The result has `sealed`: False only for a verdict written before the store sealed
        verdicts; such a verdict is shown, never trusted for promotion.

        Raises:
            ModelStoreError: naming `decision.json`, when it is unreadable, its seal does not
                match, or it was made for another version or another manifest.
        """
        path = self.path(version) / DECISION
        document = read_verdict(path)
        if document is None:
            return None
        sealed = self._verify_seal(path, document, version)
        if sealed:
            manifest_path = self.path(version) / MANIFEST
            actual = sha256_file(manifest_path) if manifest_path.is_file() else None
            if document.get("version") != version or document.get("manifest_sha256") != actual:
                raise ModelStoreError(f"{path}: the verdict was made for another version or "
                                      "another manifest and will not be trusted")
        document.pop(SEAL, None)
        return {**document, "sealed": sealed}

    def trusted_verdict(self, version: str) -> tuple[bool, str]:
        """Whether the sealed verdict on `version` approves it, and why not (for promotion).

        Raises:
            ModelStoreError: the verdict file was tampered with (see `decision`).
        """
        decision = self.decision(version)
        path = self.path(version) / DECISION
        if decision is None:
            return False, f"the gate never validated {version} ({path} is missing)"
        if not decision["sealed"]:
            return False, (f"{path} was written before verdicts were sealed, so it cannot be "
                           f"trusted; validate {version} again")
        if not decision.get("approved"):
            reasons = "; ".join(decision.get("reasons") or []) or "no reason recorded"
            return False, f"the gate rejected {version} ({path}): {reasons}"
        return True, f"the gate approved {version}"

    def pointer(self) -> dict[str, Any]:
        """`deployed.json`: `{"deployed": record | None, "history": [records…]}`."""
        path = self.root / POINTER
        if not path.exists():
            return {"deployed": None, "history": []}
        return json.loads(path.read_text(encoding="utf-8"))

    def deployed(self) -> dict[str, Any] | None:
        """The current promotion record (`version`, `promoted_at`, `reason`, …) or None."""
        return self.pointer()["deployed"]

    def promote(self, version: str, reason: str, *, force: bool = False,
                **details: Any) -> dict[str, Any]:
        """Make `version` the champion, after verifying it; returns the new record.

        Only a version whose sealed verdict approves it is promoted, unless `force` (an
        operator's explicit override, recorded as `forced` with the reason it was needed).
        Files, manifest and verdict are verified either way.

        Raises:
            ModelStoreError: a file was modified, or the verdict does not approve the version.
        """
        manifest = self.manifest(version)
        approved, why = self.trusted_verdict(version)
        if not approved and not force:
            raise ModelStoreError(f"{version} is not promoted: {why}")
        holdout = (self.decision(version) or {}).get("metrics")
        record = {"version": version, "promoted_at": now_iso(), "reason": reason,
                  "metrics": holdout or manifest.get("metrics", {}), **details}
        if not approved:
            record["forced"] = why
        state = self.pointer()
        previous = state["deployed"]
        record["previous"] = previous["version"] if previous else None
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.root / POINTER,
                          {"deployed": record, "history": [*state["history"], record]})
        return record

    def status(self, version: str) -> str:
        """`deployed`, `retired` (was deployed), `rejected` (gate failed) or `candidate`.

        A version whose verdict fails verification is `rejected`: it cannot be promoted.
        """
        state = self.pointer()
        if state["deployed"] and state["deployed"]["version"] == version:
            return "deployed"
        if any(record["version"] == version for record in state["history"]):
            return "retired"
        try:
            decision = self.decision(version)
        except ModelStoreError:
            return "rejected"
        if decision is not None and not decision.get("approved", False):
            return "rejected"
        return "candidate"


class PinnedStore(ModelStore):
    """One version copied out of its store (`ct package`), trusted by its manifest's sha256.

    The store's seal key never leaves the store (whoever holds it can forge verdicts there), so
    a copy cannot check seals: its manifest is trusted because its sha256 is the one recorded
    when the version was copied, after the store had verified the seal, and every file is
    verified against the manifest as in the store. The copied `decision.json` keeps its seal
    for whoever holds the key; here it must name this version and this manifest. Read-only.
    """

    def __init__(self, root: Path | str, version: str, manifest_sha256: str) -> None:
        super().__init__(root)
        self.version = version
        self.manifest_sha256 = manifest_sha256

    def _seal_key(self, create: bool = False) -> tuple[bytes, list[str]] | None:
        if create:
            raise ModelStoreError(f"{self.root}: a packaged model version is read-only")
        return None

    def _own(self, version: str) -> Path:
        if version != self.version:
            raise ModelStoreError(f"{self.root}: holds only version {self.version}, "
                                  f"not {version}")
        return self.path(version)

    def manifest(self, version: str) -> dict[str, Any]:
        """The manifest after checking its sha256 against the pin and every file against it.

        Raises:
            ModelStoreError: naming the manifest or the file that does not match.
        """
        directory = self._own(version)
        path = directory / MANIFEST
        manifest = read_manifest(path)
        actual = sha256_file(path)
        if actual != self.manifest_sha256:
            raise ModelStoreError(
                f"{path}: sha256 mismatch (pinned {self.manifest_sha256[:12]}…, file "
                f"{actual[:12]}…); the manifest was modified and will not be trusted")
        verify_files(directory, manifest)
        self.decision(version)
        manifest.pop(SEAL, None)
        return {**manifest, "sealed": False}

    def decision(self, version: str) -> dict[str, Any] | None:
        """The copied verdict (its seal unchecked: no key here), if it judged this manifest.

        Raises:
            ModelStoreError: naming `decision.json`, when it is unreadable or made for another
                version or manifest.
        """
        path = self._own(version) / DECISION
        document = read_verdict(path)
        if document is None:
            return None
        if document.get("version", version) != version \
                or document.get("manifest_sha256", self.manifest_sha256) != self.manifest_sha256:
            raise ModelStoreError(f"{path}: the verdict was made for another version or "
                                  "another manifest and will not be trusted")
        document.pop(SEAL, None)
        return {**document, "sealed": False}

    def versions(self) -> list[str]:
        """The one version, when its manifest is there."""
        return [self.version] if (self.path(self.version) / MANIFEST).is_file() else []

    def pointer(self) -> dict[str, Any]:
        """The one version, as if deployed (a package never follows `deployed.json`)."""
        return {"deployed": {"version": self.version, "reason": "packaged"}, "history": []}


def read_verdict(path: Path) -> dict[str, Any] | None:
    """A `decision.json` as a JSON object, None when there is none.

    Raises:
        ModelStoreError: naming the file, when it is not valid JSON or not an object.
    """
    if not path.exists():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ModelStoreError(f"{path}: the verdict is not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise ModelStoreError(f"{path}: the verdict is not a JSON object")
    return document


def _seal(key: bytes, document: dict[str, Any]) -> str:
    """HMAC-SHA256 (hex) of a document's canonical JSON under the store's key."""
    return hmac.new(key, _canonical(document), hashlib.sha256).hexdigest()
