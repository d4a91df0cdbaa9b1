"""`ct serve` as a command: its line, its exits, the token, and what the package imports."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from ct_assets.lib.config import load_config
from ct_assets.lib.model_store import POINTER
from ct_assets.lib.training import LIGHTGBM_FILE
from ct_assets.serve.server import bind
from ct_assets.serve.settings import TOKEN_ENV, from_config
from ct_assets_tests.serve.conftest import ID, MODEL, PROJECT_ROOT, CtServe, project

TOKEN = "s3cret-token"


def test_ct_serve_requires_the_token_except_on_health(tmp_path, models_dir):
    config = project(tmp_path, models_dir, token="from-the-yaml")
    server = CtServe(config, env={TOKEN_ENV: TOKEN})  # the environment overrides ct.yaml
    try:
        assert server.line == f"serving {MODEL} version v1 at {server.url}"
        endpoint = json.loads((tmp_path / "data" / "serving" / "endpoint.json").read_text())
        assert endpoint["model_name"] == MODEL and endpoint["url"] == server.url
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/v2/health/live").status_code == 200
            assert client.get("/v2/health/ready").status_code == 200
            for path in ("/v2", f"/v2/models/{MODEL}", "/metrics", "/openapi.json"):
                response = client.get(path)
                assert response.status_code == 401, path
                assert "bearer token" in response.json()["error"]
                assert response.headers["www-authenticate"] == "Bearer"
            wrong = client.get(f"/v2/models/{MODEL}",
                               headers={"Authorization": "Bearer from-the-yaml"})
            assert wrong.status_code == 401 and "wrong" in wrong.json()["error"]
            response = client.post("/predict", json={"records": []})
            assert response.status_code == 401
            good = {"Authorization": f"Bearer {TOKEN}"}
            metadata = client.get(f"/v2/models/{MODEL}", headers=good)
            assert metadata.status_code == 200
            assert metadata.json()["parameters"]["version"] == "v1"
            assert metadata.json()["parameters"]["id_input"] == ID
            assert client.get("/metrics", headers=good).status_code == 200
            text = client.get("/metrics", headers=good).text
            assert 'ct_serve_requests_total{method="GET",route="/metrics",status="401"}' in text
        assert server.terminate() == 0
    finally:
        server.stop()
    assert not (tmp_path / "data" / "serving" / "endpoint.json").exists()


def run_ct_serve(config) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ct_assets.cli", "--config", str(config),
                           "serve", "--port", "0"], capture_output=True, text=True,
                          timeout=60, check=False)


def test_ct_serve_fails_in_one_line_without_a_deployed_model(tmp_path, models_dir):
    (models_dir / POINTER).unlink()
    done = run_ct_serve(project(tmp_path, models_dir))
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("ct serve: no model is deployed")


def test_ct_serve_fails_in_one_line_when_the_deployed_model_is_tampered(tmp_path, models_dir):
    path = models_dir / "v1" / LIGHTGBM_FILE
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    done = run_ct_serve(project(tmp_path, models_dir))
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert "model.txt: sha256 mismatch" in done.stderr


def test_from_config_reads_serving_and_the_dataset(tmp_path, monkeypatch):
    path = project(tmp_path, None, model_name="fraud", max_rows=7, token="yaml-token")
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    settings = from_config(load_config(path))
    assert (settings.model_name, settings.max_rows, settings.token) == ("fraud", 7, "yaml-token")
    assert settings.id_column == ID and settings.label_column == "is_fraud"
    assert settings.labels_dir == tmp_path / "labels"
    assert settings.request_log_dir == tmp_path / "data" / "serving" / "requests"
    assert settings.input_datatypes["customer_age"] == "INT64"
    assert settings.expected_schema["region"] == "category"
    monkeypatch.setenv(TOKEN_ENV, "env-token")
    assert from_config(load_config(path)).token == "env-token"


def test_a_port_in_use_is_a_one_line_error():
    taken = bind("127.0.0.1", 0)
    try:
        with pytest.raises(OSError, match=r"cannot listen on 127\.0\.0\.1"):
            bind("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


def test_the_serve_package_imports_neither_dagster_nor_duckdb():
    code = ("import sys, ct_assets.serve.app, ct_assets.serve.server; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'duckdb') "
            "or m.startswith('ct_assets.defs')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, timeout=60, check=True)
    assert done.stdout.strip() == "[]"
