"""The request log: every answered row, flushed by size, age and at shutdown (SIGTERM)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import polars as pl

from ct_assets.serve.request_log import Chunk, RequestLog, read_request_log
from ct_assets_tests.serve.conftest import (
    ID,
    MODEL,
    CtServe,
    oip_inputs,
    project,
    records,
    serve_in_thread,
)


def log_files(directory):
    """Complete request-log files (not the hidden temporary ones being written)."""
    return sorted(directory.glob("requests-*.parquet")) if directory.is_dir() else []


def test_rows_are_logged_with_their_inputs_and_flushed_by_size(settings, trained):
    settings.log_flush_rows = 25
    rows = trained["rows"].head(10)
    with serve_in_thread(settings) as (_, client):
        for index in range(3):
            response = client.post(f"/v2/models/{MODEL}/infer",
                                   json={"id": f"r{index}",
                                         "inputs": oip_inputs(rows, trained["schema"])})
            assert response.status_code == 200
        deadline = time.monotonic() + 10
        while not log_files(settings.request_log_dir) and time.monotonic() < deadline:
            time.sleep(0.02)
        files = log_files(settings.request_log_dir)  # flushed at 30 rows, server still up
        assert len(files) == 1 and files[0].name.startswith("requests-")
        scores = response.json()["outputs"][0]["data"]
    log = pl.read_parquet(files[0])
    assert log.height == 30
    assert log["request_id"].to_list() == [f"r{i}" for i in range(3) for _ in range(10)]
    assert log["row"].to_list() == list(range(10)) * 3
    assert log["row_id"].to_list() == rows[ID].to_list() * 3
    assert set(log["model_name"]) == {MODEL} and set(log["model_version"]) == {"v1"}
    assert log.schema["received_at"] == pl.Datetime("us", "UTC")
    assert log.schema["region"] == pl.String and log.schema["amount"] == pl.Float64
    assert log["amount"].to_list()[:10] == rows["amount"].to_list()
    np.testing.assert_allclose(log["score"].to_list()[20:], scores)
    assert set(log["decision"]) <= {"0", "1"}
    assert ID not in log.columns  # the id is the row's id, not a feature


def test_rows_are_flushed_by_age(settings, trained):
    settings.log_flush_seconds = 0.2
    with serve_in_thread(settings) as (_, client):
        client.post("/predict", json={"records": records(trained["rows"].head(2),
                                                         trained["schema"])})
        deadline = time.monotonic() + 10
        while not log_files(settings.request_log_dir) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert read_request_log(settings.request_log_dir).height == 2


def test_a_failed_write_keeps_the_rows(tmp_path):
    blocked = tmp_path / "requests"
    blocked.write_text("not a directory")
    log = RequestLog(blocked, MODEL, flush_rows=100, flush_seconds=60)
    chunk = Chunk("r", 0, "v1", (("x", "float"),), {"x": np.array([1.0, 2.0])}, ["a", "b"],
                  np.array([0.1, 0.2]), [0, 1])
    log.append(chunk)
    assert log.flush() is None and log.write_errors == 1 and log.buffered_rows == 2
    blocked.unlink()
    log.append(chunk)
    written = log.flush()
    assert written is not None and pl.read_parquet(written).height == 4
    assert log.buffered_rows == 0 and log.flushed_rows == 4


def test_sigterm_mid_load_logs_exactly_the_rows_answered(tmp_path, models_dir, trained):
    config = project(tmp_path, models_dir, log_flush_rows=50_000)
    server = CtServe(config)
    try:
        assert server.line.startswith(f"serving {MODEL} version v1 at http://127.0.0.1:")
        endpoint = json.loads((tmp_path / "data" / "serving" / "endpoint.json").read_text())
        assert endpoint["url"] == server.url and endpoint["pid"] == server.process.pid
        answered = []
        lock = threading.Lock()
        bodies = [{"inputs": oip_inputs(trained["rows"].slice(i * 7, n), trained["schema"])}
                  for i, n in enumerate((1, 5, 20))]

        def client_loop(offset: int) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                for index in range(offset, 100_000):
                    body = bodies[index % len(bodies)]
                    try:
                        response = client.post(f"/v2/models/{MODEL}/infer", json=body)
                    except httpx.HTTPError:
                        return  # the server is going away
                    if response.status_code == 200:
                        with lock:
                            answered.append(response.json()["outputs"][0]["shape"][0])

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20
        while len(answered) < 300 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.terminate() == 0
        for thread in threads:
            thread.join(timeout=30)
    finally:
        server.stop()
    directory = tmp_path / "data" / "serving" / "requests"
    assert all(path.name.startswith("requests-") for path in directory.iterdir())
    assert read_request_log(directory).height == sum(answered) > 0
    assert not (tmp_path / "data" / "serving" / "endpoint.json").exists()
