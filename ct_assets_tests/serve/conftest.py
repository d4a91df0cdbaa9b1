"""Fixtures of the serving tests: small real models in a real model store, live servers.

Models are LightGBM boosters trained on simulated rows (a binary fraud model, a multiclass and
a regression one), saved, approved and promoted through `ModelStore` as the pipeline does,
without Dagster. Servers are real uvicorn servers on 127.0.0.1 (a free port): in a thread of the
test process (`serve_in_thread`), or `ct serve` in its own process (`ct_serve`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
import uvicorn
import yaml

from ct_assets.lib.config import config_from_dict
from ct_assets.lib.features import build_features, feature_schema
from ct_assets.lib.model_store import ModelStore
from ct_assets.lib.monitoring import REFERENCE_FILE
from ct_assets.lib.simulator import simulate_day
from ct_assets.lib.training import TrainedModel, train_model
from ct_assets.serve.app import create_app
from ct_assets.serve.server import bind, url_of
from ct_assets.serve.settings import ServeSettings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODEL = "ct-model"
ID = "transaction_id"
PARAMS = {"num_threads": 1, "num_boost_round": 40, "early_stopping_rounds": 10}
THRESHOLD = 0.2


def simulator_config(base: Path, **extra: Any):
    """A simulator project config with labels landing apart (the pipeline's own schema)."""
    return config_from_dict({"dataset": {"source": "simulator",
                                         "labels": {"landing_dir": "labels"}}, **extra},
                            base_dir=base)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict[str, Any]:
    """Models of each task trained on 3 simulated days, and 300 feature rows to score."""
    base = tmp_path_factory.mktemp("trained")
    config = simulator_config(base)
    days = [dt.date(2026, 4, 1) + dt.timedelta(days=offset) for offset in range(3)]
    raw = pl.concat([simulate_day(day, 1_500, seed=9) for day in days]).with_columns(
        pl.col("ts").dt.strftime("%Y-%m-%d").alias("_partition"))
    frame = build_features(raw, config, [f"{day:%Y-%m-%d}" for day in days])
    schema = feature_schema(config)
    models = {}
    for name, seed in (("a", 0), ("b", 1)):
        models[name], _ = train_model(frame, schema=schema, target="is_fraud", task="binary",
                                      params={**PARAMS, "learning_rate": 0.05 + 0.05 * seed},
                                      seed=seed)
    channel = {k: v for k, v in schema.items() if k != "channel"}
    models["multiclass"], _ = train_model(frame, schema=channel, target="channel",
                                          task="multiclass", params=PARAMS)
    amount = {k: v for k, v in schema.items() if not k.startswith("amount")}
    models["regression"], _ = train_model(frame, schema=amount, target="amount",
                                          task="regression", params=PARAMS)
    # the binary schema, but it predicts amounts: a canary must refuse it as a binary model
    models["amounts"], _ = train_model(frame, schema=schema, target="amount",
                                       task="regression", params=PARAMS)
    return {"models": models, "rows": frame.tail(300), "schema": schema}


def save_version(store: ModelStore, version: str, model: TrainedModel, work: Path,
                 approve: bool = True, task: str | None = None) -> None:
    """Save a version as the retrain job does (manifest fields serving reads) and approve it.

    `task` overrides the manifest's task (to store a model that is not what it claims).
    """
    files = model.save(work / version)
    reference = work / version / REFERENCE_FILE
    reference.write_text("{}", encoding="utf-8")
    files[REFERENCE_FILE] = reference
    store.save(version, files, {
        "feature_schema": [{"name": s.name, "type": s.type, "categories": s.categories}
                           for s in model.specs],
        "task": task or model.task, "classes": model.classes, "model": model.kind,
        "operating_threshold": THRESHOLD if (task or model.task) == "binary" else None})
    if approve:
        store.record_decision(version, {"approved": True, "reasons": []})


@pytest.fixture(scope="session")
def store_template(tmp_path_factory, trained) -> Path:
    """A store with binary versions v1 (a), v2 (b), v3 (a), v1 deployed."""
    root = tmp_path_factory.mktemp("store") / "models"
    store = ModelStore(root)
    work = root.parent / "work"
    for version, name in (("v1", "a"), ("v2", "b"), ("v3", "a")):
        save_version(store, version, trained["models"][name], work)
    store.promote("v1", "initial")
    return root


@pytest.fixture
def models_dir(tmp_path, store_template) -> Path:
    """A fresh copy of the binary store for one test."""
    target = tmp_path / "data" / "models"
    shutil.copytree(store_template, target)
    return target


def make_settings(base: Path, models_dir: Path, schema: dict[str, str]) -> ServeSettings:
    """Settings as `from_config` makes them for the simulator project, with small limits."""
    return ServeSettings(
        models_dir=models_dir, model_name=MODEL, max_body_bytes=200_000, max_rows=100,
        log_flush_rows=1_000, log_flush_seconds=60, watch_seconds=0.05,
        serving_dir=base / "data" / "serving", id_column=ID,
        expected_schema=schema, input_datatypes={"customer_age": "INT64"},
        labels_dir=base / "labels", label_id_column=ID, label_column="is_fraud")


@pytest.fixture
def settings(tmp_path, models_dir, trained) -> ServeSettings:
    """Settings of a server of this test only."""
    return make_settings(tmp_path, models_dir, trained["schema"])


@pytest.fixture(scope="session")
def shared_settings(tmp_path_factory, store_template, trained) -> ServeSettings:
    """Settings of the server the read-only tests share."""
    base = tmp_path_factory.mktemp("shared")
    shutil.copytree(store_template, base / "data" / "models")
    return make_settings(base, base / "data" / "models", trained["schema"])


class ThreadServer:
    """A real uvicorn server in a thread of the test process (no signals; stopped on exit)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.socket = bind("127.0.0.1", 0)
        self.url = url_of(self.socket)
        self.server = uvicorn.Server(uvicorn.Config(
            app, loop="uvloop", http="httptools", lifespan="on", access_log=False,
            log_level="warning", timeout_graceful_shutdown=10))
        self.thread = threading.Thread(target=self.server.run,
                                       kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.socket.close()


@contextlib.contextmanager
def serve_in_thread(settings: ServeSettings) -> Iterator[tuple[ThreadServer, httpx.Client]]:
    """A live server of `create_app(settings)` and an HTTP client for it."""
    with ThreadServer(create_app(settings)) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        yield server, client


@pytest.fixture
def live(settings) -> Iterator[httpx.Client]:
    """A client of a live server of this test only (fresh metrics, log and store)."""
    with serve_in_thread(settings) as (_, client):
        yield client


@pytest.fixture(scope="session")
def shared(shared_settings) -> Iterator[httpx.Client]:
    """A client of the live server shared by tests that change nothing it counts or stores."""
    with serve_in_thread(shared_settings) as (_, client):
        yield client


def oip_inputs(rows: pl.DataFrame, schema: dict[str, str], with_id: bool = True
               ) -> list[dict[str, Any]]:
    """One OIP input per feature column (and the row ids)."""
    inputs = [{"name": name, "shape": [rows.height],
               "datatype": "BYTES" if kind == "category" else "FP64",
               "data": rows[name].to_list()} for name, kind in schema.items()]
    if with_id:
        inputs.append({"name": ID, "shape": [rows.height], "datatype": "BYTES",
                       "data": rows[ID].to_list()})
    return inputs


def records(rows: pl.DataFrame, schema: dict[str, str]) -> list[dict[str, Any]]:
    """Rows as `/predict` records (features only)."""
    return rows.select(list(schema)).to_dicts()


def project(tmp_path: Path, models_dir: Path | None, **serving: Any) -> Path:
    """A `ct.yaml` for the simulator whose storage dir holds `models_dir` (copied)."""
    document = {"dataset": {"source": "simulator", "labels": {"landing_dir": "labels"}},
                "storage": {"dir": "data"},
                "serving": {"watch_seconds": 0.05, "log_flush_seconds": 60, **serving}}
    path = tmp_path / "ct.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    if models_dir is not None and models_dir != tmp_path / "data" / "models":
        shutil.copytree(models_dir, tmp_path / "data" / "models")
    return path


class CtServe:
    """`ct --config CT_YAML serve --port 0` in its own process group."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ct_assets.cli", "--config", str(config), "serve",
             "--port", "0"], cwd=config.parent, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True,
            env={**os.environ, **(env or {})})
        self.line = self.process.stdout.readline().strip()
        if not self.line:
            self.stop()
            raise RuntimeError(f"ct serve did not start: {self.process.stderr.read()}")
        self.url = self.line.rsplit(" at ", 1)[-1]

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, then wait for a graceful exit; returns the exit code."""
        os.killpg(self.process.pid, signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        """Make sure the process is gone."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
