"""`ct package`: a version as a deployable directory, installed and served from a fresh venv.

There is no Docker engine here, so the Dockerfile's own steps run without it: its COPY sources
exist, its `RUN pip install … -r requirements.txt` line runs with the pip of a fresh virtual
environment (no system site-packages), and its CMD starts the server in that environment from
the package directory (on 127.0.0.1 and a free port instead of 0.0.0.0:8080). The packaged
server must answer exactly as `ct serve` does on the project.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from ct_assets import cli
from ct_assets.lib.model_store import SEAL_KEY, ModelStore, ModelStoreError, PinnedStore
from ct_assets.lib.packaging import pin_requirements
from ct_assets.lib.training import LIGHTGBM_FILE, train_model
from ct_assets.package import PACKAGE_FILE, TEMPLATES
from ct_assets.serve.hot_swap import load_initial
from ct_assets.serve.settings import ServeSettings
from ct_assets_tests.serve.conftest import (
    MODEL,
    PROJECT_ROOT,
    CtServe,
    oip_inputs,
    project,
    records,
    save_version,
    store_template,  # noqa: F401 (a fixture, used through `store`)
    trained,  # noqa: F401 (a fixture, used through `models`)
)

START_SECONDS = 60


@dataclass
class Packaged:
    """A package of the deployed version, and a fresh venv its Dockerfile's pip line filled."""

    config: Path
    directory: Path
    venv: Path
    stdout: str
    pip_seconds: float


def dockerfile_steps(directory: Path) -> dict[str, list]:
    """The Dockerfile's instructions, by keyword: RUN and COPY as argv lists, CMD as JSON."""
    steps: dict[str, list] = {}
    for line in (directory / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        value = json.loads(rest) if keyword == "CMD" else shlex.split(rest)
        steps.setdefault(keyword, []).append(value)
    return steps


def pip_line(directory: Path) -> list[str]:
    """The Dockerfile's `RUN pip install … -r requirements.txt` step."""
    lines = [argv for argv in dockerfile_steps(directory)["RUN"]
             if argv[:2] == ["pip", "install"] and "requirements.txt" in argv]
    assert len(lines) == 1, lines
    return lines[0]


def run_ct(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ct_assets.cli", *argv], capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def models(request) -> dict:
    """The serving tests' models (binary LightGBM `a` and `b`, …) and 300 rows to score."""
    return request.getfixturevalue("trained")


@pytest.fixture(scope="module")
def store(request) -> Path:
    """The serving tests' store: binary LightGBM versions v1 (deployed), v2 and v3."""
    return request.getfixturevalue("store_template")


@pytest.fixture(scope="module")
def packaged(tmp_path_factory, store) -> Packaged:
    """`ct package` of the deployed v1, and the Dockerfile's pip line run in a fresh venv."""
    base = tmp_path_factory.mktemp("project")
    config = project(base, store)
    out, venv = base / "package", base / "venv"
    creating = subprocess.Popen([sys.executable, "-m", "venv", str(venv)])  # meanwhile: package
    done = run_ct("--config", str(config), "package", "--out", str(out))
    assert creating.wait(timeout=300) == 0
    assert done.returncode == 0, done.stderr
    argv = pip_line(out)
    began = time.monotonic()
    # Byte-compiling the installed packages takes longer than installing them and changes
    # nothing that is tested; pip reads its index configuration from the machine as usual.
    installed = subprocess.run([str(venv / "bin" / "pip"), *argv[1:], "--no-compile"],
                               cwd=out, capture_output=True, text=True, timeout=600,
                               check=False)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return Packaged(config, out, venv, done.stdout, time.monotonic() - began)


def packaged_command(package: Packaged) -> list[str]:
    """The Dockerfile's CMD, run by the venv's Python on 127.0.0.1 and a free port."""
    (command,) = dockerfile_steps(package.directory)["CMD"]
    assert command == ["python", "server.py", "--host", "0.0.0.0", "--port", "8080"]
    return [str(package.venv / "bin" / "python"), *command[1:2], "--host", "127.0.0.1",
            "--port", "0"]


@contextlib.contextmanager
def packaged_server(package: Packaged, directory: Path) -> Iterator[Callable[[], str]]:
    """The packaged server started from `directory`; yields a function waiting for its URL.

    The server is stopped by SIGTERM on exit and must exit 0 (its request log flushed).
    """
    process = subprocess.Popen(packaged_command(package), cwd=directory, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True, env={**os.environ, "PYTHONPATH": ""})

    def url() -> str:
        line = process.stdout.readline().strip()
        assert line.startswith(f"serving {MODEL} version v1 at http://127.0.0.1:"), (
            line, process.stderr.read() if process.poll() is not None else "")
        return line.rsplit(" at ", 1)[-1]

    try:
        yield functools.cache(url)
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=10)  # and close the pipes


def answers(url: str, rows, schema) -> tuple[dict, dict, dict]:
    """Model metadata, an OIP inference and `/predict` of `rows`, from the server at `url`."""
    with httpx.Client(base_url=url, timeout=30) as client:
        metadata = client.get(f"/v2/models/{MODEL}").json()
        infer = client.post(f"/v2/models/{MODEL}/infer",
                            json={"inputs": oip_inputs(rows, schema)})
        predict = client.post("/predict", json={"records": records(rows, schema)})
    assert infer.status_code == 200 and predict.status_code == 200, (infer.text, predict.text)
    return metadata, infer.json(), predict.json()


def outputs(body: dict) -> dict[str, list]:
    return {output["name"]: output["data"] for output in body["outputs"]}


def test_the_package_holds_the_version_its_server_and_the_build_files(packaged):
    directory = packaged.directory
    description = json.loads((directory / PACKAGE_FILE).read_text(encoding="utf-8"))
    store = ModelStore(packaged.config.parent / "data" / "models")
    assert store.deployed()["version"] == description["version"] == "v1"
    manifest_sha256 = description["manifest_sha256"]
    assert packaged.stdout.splitlines()[:2] == [
        f"packaged {MODEL} version v1 in {directory}", f"manifest.json sha256 {manifest_sha256}"]
    assert description["model_name"] == MODEL and description["task"] == "binary"
    assert description["id_column"] == "transaction_id" and description["forced"] is None
    assert [spec["name"] for spec in description["feature_schema"]][:2] == ["region",
                                                                           "merchant_category"]
    for name, sha256 in description["files"].items():
        assert (store.root / name.removeprefix("model/")).read_bytes() == \
            (directory / name).read_bytes()
        assert sha256 in (directory / "README.md").read_text(encoding="utf-8")
    assert description["files"]["model/v1/manifest.json"] == manifest_sha256
    assert not list(directory.rglob(SEAL_KEY))  # the store's key never leaves the store
    vendored = {path.relative_to(directory / "app").as_posix()
                for path in (directory / "app").rglob("*.py")}
    assert {"ct_assets/__init__.py", "ct_assets/serve/app.py", "ct_assets/serve/server.py",
            "ct_assets/lib/model_store.py", "ct_assets/lib/training.py"} <= vendored
    assert not {path for path in vendored if path.startswith((
        "ct_assets/defs", "ct_assets/lib/config", "ct_assets/cli", "ct_assets/package",
        "ct_assets/lib/packaging", "ct_assets/lib/drift"))}
    pins = dict(line.split("  #")[0].split("==") for line in
                (directory / "requirements.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert {"lightgbm", "fastapi", "uvicorn", "uvloop", "httptools", "numpy", "polars"} <= set(pins)
    assert not {"dagster", "duckdb", "scikit-learn", "skops", "pyarrow"} & set(pins)
    steps = dockerfile_steps(directory)
    for copy in steps["COPY"]:
        assert all((directory / source).exists() for source in copy[:-1]), copy
    assert steps["FROM"] == [[f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"]]
    assert steps["EXPOSE"] == [["8080"]] and steps["USER"] == [["model"]]


def test_the_fresh_venv_serves_the_package_like_ct_serve(packaged, models, record_property):
    record_property("pip_install_seconds", round(packaged.pip_seconds, 1))
    listed = subprocess.run([str(packaged.venv / "bin" / "pip"), "list", "--format=json"],
                            capture_output=True, text=True, check=True, timeout=120)
    names = {entry["name"].lower() for entry in json.loads(listed.stdout)}
    assert "lightgbm" in names and not {n for n in names if n.startswith(("dagster", "duckdb"))}
    for module in ("dagster", "duckdb", "ct_assets", "sklearn"):
        done = subprocess.run([str(packaged.venv / "bin" / "python"), "-c", f"import {module}"],
                              capture_output=True, text=True, timeout=60, check=False,
                              cwd=packaged.venv, env={**os.environ, "PYTHONPATH": ""})
        assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, module
    rows, schema = models["rows"], models["schema"]
    with packaged_server(packaged, packaged.directory) as url:  # starts while ct serve does
        ct_serve = CtServe(packaged.config)
        try:
            expected = answers(ct_serve.url, rows, schema)
        finally:
            ct_serve.stop()
            ct_serve.process.communicate(timeout=10)
        metadata, infer, predict = answers(url(), rows, schema)
    assert metadata["parameters"]["version"] == "v1" and metadata["versions"] == ["v1"]
    assert {key: metadata[key] for key in ("inputs", "outputs", "platform")} == \
        {key: expected[0][key] for key in ("inputs", "outputs", "platform")}
    assert infer["model_version"] == expected[1]["model_version"] == "v1"
    got, want = outputs(infer), outputs(expected[1])
    assert len(got["score"]) == rows.height
    np.testing.assert_allclose(got["score"], want["score"], rtol=0, atol=1e-12)
    assert got["decision"] == want["decision"] and got["id"] == want["id"]
    assert 0 < sum(got["decision"]) < rows.height  # both decisions occur in these rows
    np.testing.assert_allclose([p["score"] for p in predict["predictions"]],
                               [p["score"] for p in expected[2]["predictions"]], rtol=0,
                               atol=1e-12)
    assert [p["decision"] for p in predict["predictions"]] == \
        [p["decision"] for p in expected[2]["predictions"]]
    logged = list((packaged.directory / "serving" / "requests").glob("*.parquet"))
    assert logged, "the packaged server logs the rows it answered under serving/"


def test_the_packaged_server_refuses_a_tampered_model_file_in_one_line(packaged, tmp_path):
    directory = tmp_path / "package"
    shutil.copytree(packaged.directory, directory, ignore=shutil.ignore_patterns("serving"))
    path = directory / "model" / "v1" / LIGHTGBM_FILE
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    done = subprocess.run(packaged_command(packaged), cwd=directory, capture_output=True,
                          text=True, timeout=START_SECONDS, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert re.match(r"server\.py: .*/model/v1/model\.txt: sha256 mismatch", done.stderr)


def package_settings(directory: Path) -> ServeSettings:
    description = json.loads((directory / PACKAGE_FILE).read_text(encoding="utf-8"))
    return ServeSettings(models_dir=directory / "model", version=description["version"],
                         manifest_sha256=description["manifest_sha256"],
                         **description["serving"])


def test_a_packaged_version_is_verified_without_the_seal_key(packaged, tmp_path):
    directory = tmp_path / "package"
    shutil.copytree(packaged.directory, directory, ignore=shutil.ignore_patterns("serving"))
    settings = package_settings(directory)
    assert load_initial(settings).version == "v1"  # no `.seal-key` anywhere in the package
    manifest = directory / "model" / "v1" / "manifest.json"
    original = manifest.read_bytes()
    document = json.loads(original)
    document["operating_threshold"] = 0.99  # a manifest edited by hand, files untouched
    manifest.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(ModelStoreError, match=r"manifest\.json: sha256 mismatch \(pinned"):
        load_initial(settings)
    manifest.write_bytes(original)
    (directory / "model" / "v1" / "extra.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ModelStoreError, match=r"extra\.txt: not listed in the manifest"):
        load_initial(settings)
    store = PinnedStore(directory / "model", "v1", settings.manifest_sha256)
    with pytest.raises(ModelStoreError, match="read-only"):
        store.record_decision("v1", {"approved": True})
    with pytest.raises(ModelStoreError, match="holds only version v1"):
        store.manifest("v2")


@pytest.fixture
def store_with_a_rejected_version(tmp_path, store, models) -> Path:
    config = project(tmp_path, store)
    copied = ModelStore(tmp_path / "data" / "models")
    save_version(copied, "v4", models["models"]["b"], tmp_path / "work", approve=False)
    copied.record_decision("v4", {"approved": False, "reasons": ["roc_auc below gate.min_value"]})
    return config


def test_ct_package_refuses_a_rejected_version_unless_forced(store_with_a_rejected_version,
                                                              tmp_path, capsys):
    config, out = store_with_a_rejected_version, tmp_path / "out"
    assert cli.main(["--config", str(config), "package", "v4", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("ct package: refusing to package v4: ")
    assert "the gate rejected v4" in error and "--force" in error and not out.exists()
    assert not list(tmp_path.glob(".out.*"))  # nothing half-written beside it
    assert cli.main(["--config", str(config), "package", "v4", "--out", str(out),
                     "--force"]) == 0
    description = json.loads((out / PACKAGE_FILE).read_text(encoding="utf-8"))
    assert description["version"] == "v4" and "the gate rejected v4" in description["forced"]
    assert "--force" in (out / "README.md").read_text(encoding="utf-8")


def test_ct_package_replaces_only_a_previous_package(packaged, tmp_path, capsys):
    config = str(packaged.config)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine", encoding="utf-8")
    assert cli.main(["--config", config, "package", "--out", str(other)]) == 2
    assert "not a package made by `ct package`" in capsys.readouterr().err
    assert (other / "notes.txt").read_text(encoding="utf-8") == "mine"
    previous = tmp_path / "previous"
    shutil.copytree(packaged.directory, previous, ignore=shutil.ignore_patterns("serving"))
    (previous / "app" / "__pycache__").mkdir()  # left by running server.py: ignored
    (previous / "app" / "__pycache__" / "server.cpython-311.pyc").write_bytes(b"")
    assert cli.main(["--config", config, "package", "v2", "--out", str(previous)]) == 0
    assert json.loads((previous / PACKAGE_FILE).read_text())["version"] == "v2"
    assert not (previous / "model" / "v1").exists()
    (previous / "serving").mkdir()
    (previous / "serving" / "rows.parquet").write_bytes(b"served rows")
    assert cli.main(["--config", config, "package", "--out", str(previous)]) == 2
    assert "serving/rows.parquet: not part of the package" in capsys.readouterr().err


def test_requirements_follow_the_model_kind(tmp_path, store, models):
    config = project(tmp_path, store)
    model, _ = train_model(models["rows"], schema=models["schema"], target="amount",
                           task="regression", kind="sklearn_hgb",
                           params={"max_iter": 20})
    save_version(ModelStore(tmp_path / "data" / "models"), "hgb", model, tmp_path / "work")
    out = tmp_path / "hgb"
    assert cli.main(["--config", str(config), "package", "hgb", "--out", str(out)]) == 0
    requirements = (out / "requirements.txt").read_text(encoding="utf-8")
    assert re.search(r"^skops==\S+  # imported by the server$", requirements, re.M)
    assert re.search(r"^scikit-learn==\S+  # via skops$", requirements, re.M)
    assert not re.search(r"^(lightgbm|dagster|duckdb)==", requirements, re.M)
    assert "apt-get" not in (out / "Dockerfile").read_text(encoding="utf-8")  # no libgomp1


def test_pins_are_the_installed_versions_with_declared_extras():
    pins = {pin.name: pin for pin in pin_requirements(["uvicorn", "numpy"])}
    from importlib.metadata import version

    assert pins["numpy"].version == version("numpy") and pins["numpy"].via == "imported"
    assert pins["uvloop"].via == "uvicorn" and pins["httptools"].via == "uvicorn"  # [standard]
    assert "typing-extensions" not in pins or pins["typing-extensions"].via != "uvicorn"
    with pytest.raises(ValueError, match="no installed distribution provides 'not_a_module'"):
        pin_requirements(["not_a_module"])


def test_the_templates_ship_as_package_data():
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["ct_assets"]
    for path in TEMPLATES.values():
        assert any(fnmatch.fnmatch(path, pattern) for pattern in patterns), path
