"""`ct package`: one model version as a self-contained, deployable directory.

The directory holds the version's files as the store verified them (`model/<version>/`),
`package.json` (what it is, the sha256 of its manifest and of every file, the server's
settings), the `ct_assets` modules the server runs (`app/`), `server.py`, exact
`requirements.txt`, a `Dockerfile` and a `README.md`. It is built beside the target under a
hidden name and renamed into place, so a failed build leaves nothing half-written; a directory
is replaced only when it holds a previous package and nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import string
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

from ct_assets.lib.config import Config
from ct_assets.lib.files import sha256_file
from ct_assets.lib.model_store import (
    DECISION,
    MANIFEST,
    ModelStore,
    ModelStoreError,
    PinnedStore,
    now_iso,
)
from ct_assets.lib.packaging import PackagingError, Pin, pin_requirements, probe_server, vendor
from ct_assets.serve.settings import from_config

FORMAT = "ct-package/1"
PACKAGE_FILE = "package.json"
TEMPLATES = {"server.py": "templates/package_server.py", "Dockerfile": "templates/Dockerfile",
             "README.md": "templates/package_README.md"}  # package data of ct_assets
# Debian packages a pinned distribution's wheel links against but does not bundle.
SYSTEM_PACKAGES = {"lightgbm": ("libgomp1",)}
DOCKERIGNORE = "serving/\n**/__pycache__/\n.venv/\n"
# Settings chosen where the package runs (or never shipped, like the token), not packaged.
LOCAL_SETTINGS = ("models_dir", "version", "manifest_sha256", "token", "serving_dir",
                  "labels_dir", "url")


@dataclass(frozen=True)
class Package:
    """A package written: where, which version, its manifest's sha256, its requirements."""

    directory: Path
    version: str
    manifest_sha256: str
    requirements: list[Pin]


def build_package(config: Config, version: str | None, out: Path,
                  force: bool = False) -> Package:
    """Write `version` (default: the deployed one) as a deployable directory at `out`.

    Raises:
        ModelStoreError: no such version, it fails verification, or the gate rejected or never
            approved it (unless `force`).
        PackagingError: `out` holds something other than a previous package, or the packaged
            server failed its trial run.
    """
    store = ModelStore(config.models_dir)
    if version is None:
        deployed = store.deployed()
        if deployed is None:
            raise ModelStoreError(f"no model is deployed in {store.root}; name a VERSION")
        version = str(deployed["version"])
    if version not in store.versions():
        raise ModelStoreError(f"no model version {version!r} in {store.root}")
    manifest_sha256 = sha256_file(store.path(version) / MANIFEST)
    manifest = store.manifest(version)  # the seal, every file, the verdict
    approved, why = store.trusted_verdict(version)
    if not approved and not force:
        raise ModelStoreError(f"refusing to package {version}: {why}; pass --force to package "
                              "it anyway")
    check_target(out)
    staging = out.parent / f".{out.name}.ct-package-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        files = copy_version(store, version, manifest, staging)
        PinnedStore(staging / "model", version, manifest_sha256).manifest(version)
        description = describe(config, version, manifest, manifest_sha256, files,
                               None if approved else why)
        write_json(staging / PACKAGE_FILE, description)
        (staging / "server.py").write_bytes(template("server.py"))
        probe = probe_server(staging)
        vendored = vendor(probe.modules, staging / "app")
        pins = pin_requirements(probe.imported)
        write_build_files(staging, description, pins)
        contents = sorted(path.relative_to(staging).as_posix()
                          for path in staging.rglob("*") if path.is_file())
        write_json(staging / PACKAGE_FILE, {
            **description, "requirements": [f"{pin.name}=={pin.version}" for pin in pins],
            "vendored": vendored, "contents": sorted({*contents, PACKAGE_FILE})})
        replace_directory(out, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Package(out, version, manifest_sha256, pins)


def check_target(out: Path) -> None:
    """Refuse `out` unless it is absent, empty, or a previous package with nothing added.

    Raises:
        PackagingError: naming what is in the way.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise PackagingError(f"{out}: exists and is not a directory")
    if not any(out.iterdir()):
        return
    try:
        previous = json.loads((out / PACKAGE_FILE).read_text(encoding="utf-8"))
        contents = set(previous["contents"]) if previous.get("format") == FORMAT else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        contents = None
    if contents is None:
        raise PackagingError(f"{out}: not empty and not a package made by `ct package`; "
                             "choose a new or empty directory")
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out)
        if "__pycache__" in relative.parts or path.is_dir():
            continue
        if relative.as_posix() not in contents:
            raise PackagingError(f"{path}: not part of the package made there before (a "
                                 "request log of a server run from it?); move it away or "
                                 "choose another directory")


def copy_version(store: ModelStore, version: str, manifest: dict[str, Any],
                 staging: Path) -> dict[str, str]:
    """Copy a version's files, manifest and verdict; returns path in the package → sha256."""
    source = store.path(version)
    names = [*manifest["files"], MANIFEST]
    if (source / DECISION).is_file():
        names.append(DECISION)
    files = {}
    for name in names:
        target = staging / "model" / version / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target)
        files[target.relative_to(staging).as_posix()] = sha256_file(target)
    return files


def describe(config: Config, version: str, manifest: dict[str, Any], manifest_sha256: str,
             files: dict[str, str], forced: str | None) -> dict[str, Any]:
    """`package.json`: what the package holds and the settings its server runs with."""
    schema = {spec["name"]: spec["type"] for spec in manifest.get("feature_schema") or []}
    serving = {key: value for key, value in dataclasses.asdict(from_config(config)).items()
               if key not in LOCAL_SETTINGS}
    serving["expected_schema"] = schema
    serving["input_datatypes"] = {name: datatype for name, datatype
                                  in serving["input_datatypes"].items() if name in schema}
    return {
        "format": FORMAT, "model_name": config.serving.model_name, "version": version,
        "task": manifest.get("task"), "model": manifest.get("model"),
        "classes": manifest.get("classes"),
        "operating_threshold": manifest.get("operating_threshold"),
        "feature_schema": manifest.get("feature_schema"), "id_column": config.dataset.id,
        "manifest_sha256": manifest_sha256, "files": files,
        "forced": forced, "created_at": now_iso(),
        "ct_assets_version": installed_version("ct_assets"),
        "python_version": platform.python_version(),
        "platform": f"{platform.system().lower()}-{platform.machine()}",
        "serving": serving,
    }


def write_build_files(staging: Path, description: dict[str, Any], pins: list[Pin]) -> None:
    """`requirements.txt`, `Dockerfile`, `README.md` and `.dockerignore`."""
    header = (f"# What the server of {description['model_name']} version "
              f"{description['version']} runs on, pinned as installed where `ct package` "
              "made it:\n# the distributions its code imports, and what those require.\n")
    (staging / "requirements.txt").write_text(
        header + "".join(f"{pin.line()}\n" for pin in pins), encoding="utf-8")
    python_minor = ".".join(description["python_version"].split(".")[:2])
    system = sorted({name for pin in pins for name in SYSTEM_PACKAGES.get(pin.name, ())})
    apt = (f"RUN apt-get update && apt-get install -y --no-install-recommends "
           f"{' '.join(system)} && rm -rf /var/lib/apt/lists/*" if system
           else "# no system libraries beyond the base image")
    (staging / "Dockerfile").write_text(string.Template(template("Dockerfile").decode())
                                        .substitute(python=python_minor, system_packages=apt),
                                        encoding="utf-8")
    version = description["version"]
    forced = description["forced"]
    rows = "\n".join(f"| `{name}` | `{sha}` |" for name, sha in description["files"].items())
    readme = string.Template(template("README.md").decode()).substitute(
        **{key: description[key] for key in ("model_name", "version", "task",
                                             "ct_assets_version", "python_version",
                                             "created_at", "manifest_sha256")},
        kind=description["model"], python_minor=python_minor, files=rows,
        image=f"{description['model_name']}:{version}".lower(),
        forced=f"\n\n**Packaged with `--force`**: {forced}." if forced else "")
    (staging / "README.md").write_text(readme, encoding="utf-8")
    (staging / ".dockerignore").write_text(DOCKERIGNORE, encoding="utf-8")


def template(name: str) -> bytes:
    """A template of the package, from the package data of `ct_assets`."""
    return resources.files("ct_assets").joinpath(TEMPLATES[name]).read_bytes()


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write a JSON document, indented, with a final newline."""
    path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")


def replace_directory(out: Path, staging: Path) -> None:
    """Rename the finished package into place, replacing what `check_target` allowed."""
    if out.exists():
        old = out.parent / f".{out.name}.ct-package-old-{os.getpid()}"
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)
