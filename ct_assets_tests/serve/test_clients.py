"""Stock clients against a live server: NVIDIA's tritonclient, and the schemathesis fuzzer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton

from ct_assets.lib.model_store import ModelStore
from ct_assets.lib.serving import load_verified
from ct_assets_tests.serve.conftest import ID, MODEL, THRESHOLD, serve_in_thread


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_reads_metadata_and_infers_per_column(shared, shared_settings, trained,
                                                           binary):
    rows = trained["rows"].head(12)
    client = triton.InferenceServerClient(url=str(shared.base_url).removeprefix("http://")
                                          .rstrip("/"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(MODEL)
        assert not client.is_model_ready("another-model")
        metadata = client.get_model_metadata(MODEL)
        assert metadata["name"] == MODEL and metadata["platform"] == "lightgbm"
        inputs = []
        for tensor in metadata["inputs"]:
            values = rows[tensor["name"]].to_list()
            array = (np.array(values, dtype=np.object_) if tensor["datatype"] == "BYTES"
                     else np.array(values, dtype=np.int64 if tensor["datatype"] == "INT64"
                                   else np.float64))
            inputs.append(triton.InferInput(tensor["name"], [rows.height], tensor["datatype"]))
            inputs[-1].set_data_from_numpy(array, binary_data=binary)
        ids = triton.InferInput(ID, [rows.height], "BYTES")
        ids.set_data_from_numpy(np.array(rows[ID].to_list(), dtype=np.object_),
                                binary_data=binary)
        result = client.infer(MODEL, [*inputs, ids], request_id="triton-1",
                              outputs=[triton.InferRequestedOutput(name, binary_data=False)
                                       for name in ("score", "decision", "id")])
    finally:
        client.close()
    model, _ = load_verified(ModelStore(shared_settings.models_dir), "v1")
    expected = model.predict(rows.with_columns(rows["customer_age"].cast(int)))
    response = result.get_response()
    assert response["model_version"] == "v1" and response["id"] == "triton-1"
    np.testing.assert_allclose(result.as_numpy("score"), expected, rtol=1e-12)
    assert result.as_numpy("decision").tolist() == [int(s >= THRESHOLD) for s in expected]
    assert [v.decode() if isinstance(v, bytes) else v
            for v in result.as_numpy("id").tolist()] == rows[ID].to_list()


def test_schemathesis_finds_no_server_error(settings, tmp_path):
    checks = ",".join(["not_a_server_error", "status_code_conformance",
                       "content_type_conformance", "response_schema_conformance",
                       "negative_data_rejection"])
    with serve_in_thread(settings) as (server, _):
        done = subprocess.run(
            [str(Path(sys.executable).parent / "schemathesis"), "run",
             f"{server.url}/openapi.json", "--checks", checks, "--max-examples", "12",
             "--phases", "examples,coverage,fuzzing", "--seed", "1", "--no-color",
             "--generation-database", "none", "--request-timeout", "20"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    summary = done.stdout[-3000:]
    assert done.returncode == 0, summary
    assert "12 passed" in summary or "passed" in summary
    assert "500" not in summary.split("SUMMARY")[-1]
