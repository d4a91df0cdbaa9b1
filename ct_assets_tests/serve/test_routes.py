"""Each route of a live server, with the scores checked against the pipeline's own scoring."""

from __future__ import annotations

import struct

import httpx
import numpy as np
import orjson
import pytest

from ct_assets.lib.model_store import ModelStore
from ct_assets.lib.serving import load_verified
from ct_assets.lib.training import encode
from ct_assets.serve.app import create_app
from ct_assets.serve.request_log import read_request_log
from ct_assets_tests.serve.conftest import (
    ID,
    MODEL,
    THRESHOLD,
    ThreadServer,
    oip_inputs,
    records,
    save_version,
    serve_in_thread,
)


def expected_scores(settings, version, rows):
    model, _ = load_verified(ModelStore(settings.models_dir), version)
    return model.predict(rows)


def test_health_server_and_model_metadata(shared, trained):
    assert shared.get("/v2/health/live").json() == {"live": True}
    assert shared.get("/v2/health/ready").json() == {"ready": True}
    assert shared.get("/v2").json()["name"] == "ct-serve"
    metadata = shared.get(f"/v2/models/{MODEL}").json()
    assert metadata["name"] == MODEL and metadata["platform"] == "lightgbm"
    assert metadata["versions"] == ["v1", "v2", "v3"]
    assert metadata["parameters"]["version"] == "v1"
    assert metadata["parameters"]["operating_threshold"] == THRESHOLD
    inputs = {tensor["name"]: tensor["datatype"] for tensor in metadata["inputs"]}
    assert list(inputs) == list(trained["schema"])
    assert inputs["region"] == "BYTES" and inputs["amount"] == "FP64"
    assert inputs["customer_age"] == "INT64"
    assert [o["name"] for o in metadata["outputs"]] == ["score", "decision", "id"]
    assert shared.get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
    version = shared.get(f"/v2/models/{MODEL}/versions/v2").json()
    assert version["versions"] == ["v2"] and version["parameters"]["version"] == "v2"
    assert shared.get(f"/v2/models/{MODEL}/versions/v2/ready").status_code == 200


def test_infer_scores_like_the_pipeline_and_returns_ids(shared, shared_settings, trained):
    rows = trained["rows"].head(40)
    response = shared.post(f"/v2/models/{MODEL}/infer",
                         json={"id": "req-1", "inputs": oip_inputs(rows, trained["schema"])})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model_name"], body["model_version"], body["id"]) == (MODEL, "v1", "req-1")
    outputs = {output["name"]: output for output in body["outputs"]}
    expected = expected_scores(shared_settings, "v1", rows)
    np.testing.assert_allclose(outputs["score"]["data"], expected, rtol=1e-12)
    assert outputs["score"]["shape"] == [40] and outputs["score"]["datatype"] == "FP64"
    assert outputs["decision"]["data"] == [int(s >= THRESHOLD) for s in expected]
    assert outputs["id"]["data"] == rows[ID].to_list()


def test_infer_without_ids_numbers_rows_and_accepts_pd_and_column_shapes(shared, trained):
    rows = trained["rows"].head(3)
    inputs = oip_inputs(rows, trained["schema"], with_id=False)
    for tensor in inputs:  # [n, 1] with nested data, as MLServer's pandas codec sends
        tensor["shape"] = [3, 1]
        tensor["data"] = [[value] for value in tensor["data"]]
    body = shared.post(f"/v2/models/{MODEL}/infer",
                     json={"parameters": {"content_type": "pd"}, "inputs": inputs,
                           "outputs": [{"name": "id"}]}).json()
    assert [o["name"] for o in body["outputs"]] == ["id"]
    assert body["outputs"][0]["data"] == [f"{body['id']}:{row}" for row in range(3)]


def test_infer_a_specific_version(shared, shared_settings, trained):
    rows = trained["rows"].head(5)
    body = shared.post(f"/v2/models/{MODEL}/versions/v2/infer",
                     json={"inputs": oip_inputs(rows, trained["schema"])}).json()
    assert body["model_version"] == "v2"
    np.testing.assert_allclose(body["outputs"][0]["data"],
                               expected_scores(shared_settings, "v2", rows), rtol=1e-12)
    assert not np.allclose(body["outputs"][0]["data"], expected_scores(shared_settings, "v1", rows))


def test_matrix_form_and_binary_tensors(shared, shared_settings, trained):
    rows = trained["rows"].head(4)
    model, _ = load_verified(ModelStore(shared_settings.models_dir), "v1")
    matrix = encode(rows, model.specs)
    data = [None if value != value else value for value in matrix.ravel().tolist()]
    body = shared.post(f"/v2/models/{MODEL}/infer", json={
        "parameters": {"content_type": "np"},
        "inputs": [{"name": "predict", "shape": [4, matrix.shape[1]], "datatype": "FP64",
                    "data": data}]}).json()
    np.testing.assert_allclose(body["outputs"][0]["data"], model.predict(rows), rtol=1e-12)

    # the binary tensor extension (tritonclient's default): FP64 little-endian, BYTES prefixed
    header = {"inputs": []}
    chunks = []
    for name, kind in trained["schema"].items():
        values = rows[name].to_list()
        if kind == "category":
            chunk = b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)
            datatype = "BYTES"
        else:
            chunk = np.array(values, dtype="<f8").tobytes()
            datatype = "FP64"
        header["inputs"].append({"name": name, "shape": [4], "datatype": datatype,
                                 "parameters": {"binary_data_size": len(chunk)}})
        chunks.append(chunk)
    head = orjson.dumps(header)
    response = shared.post(f"/v2/models/{MODEL}/infer", content=head + b"".join(chunks),
                         headers={"Inference-Header-Content-Length": str(len(head))})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["outputs"][0]["data"], model.predict(rows),
                               rtol=1e-12)


def test_predict_records(shared, shared_settings, trained):
    rows = trained["rows"].head(6)
    given = records(rows, trained["schema"])
    given[0][ID] = "tx-0"
    body = shared.post("/predict", json={"records": given}).json()
    assert body["model_version"] == "v1"
    predictions = body["predictions"]
    assert predictions[0]["id"] == "tx-0"
    assert predictions[1]["id"] == f"{body['request_id']}:1"
    expected = expected_scores(shared_settings, "v1", rows)
    np.testing.assert_allclose([p["score"] for p in predictions], expected, rtol=1e-12)
    assert [p["decision"] for p in predictions] == [int(s >= THRESHOLD) for s in expected]


def test_missing_values_are_allowed(shared, trained):
    rows = trained["rows"].head(2)
    given = records(rows, trained["schema"])
    given[0]["amount"] = None
    given[1]["region"] = None
    given[1]["merchant_category"] = "never-seen"
    response = shared.post("/predict", json={"records": given})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_multiclass_and_regression_outputs(task, tmp_path, settings, trained):
    from ct_assets.lib.model_store import ModelStore

    store = ModelStore(tmp_path / "other")
    model = trained["models"][task]
    save_version(store, "m1", model, tmp_path / "work")
    store.promote("m1", "initial")
    settings.models_dir, settings.expected_schema = store.root, None
    rows = trained["rows"].head(7)
    schema = {spec.name: spec.type for spec in model.specs}
    expected = model.predict(rows)
    with serve_in_thread(settings) as (_, client):
        body = client.post(f"/v2/models/{MODEL}/infer",
                           json={"inputs": oip_inputs(rows, schema)}).json()
        outputs = {output["name"]: output for output in body["outputs"]}
        metadata = client.get(f"/v2/models/{MODEL}").json()
        predictions = client.post("/predict", json={"records": records(rows, schema)}).json()
    np.testing.assert_allclose(np.array(outputs["score"]["data"]).reshape(expected.shape),
                               expected, rtol=1e-12)
    if task == "multiclass":
        classes = model.classes
        assert outputs["score"]["shape"] == [7, len(classes)]
        decided = [classes[i] for i in expected.argmax(axis=1)]
        assert outputs["decision"]["data"] == decided
        assert outputs["decision"]["datatype"] == "BYTES"
        assert [p["decision"] for p in predictions["predictions"]] == decided
        assert metadata["outputs"][0]["shape"] == [-1, len(classes)]
    else:
        assert "decision" not in outputs
        assert "decision" not in predictions["predictions"][0]
        assert [o["name"] for o in metadata["outputs"]] == ["score", "id"]
    log = read_request_log(settings.request_log_dir)
    assert log.height == 14 and set(log["model_version"]) == {"m1"}


def test_metrics_count_requests_rows_errors_and_version(live, trained):
    rows = trained["rows"].head(10)
    for _ in range(3):
        live.post(f"/v2/models/{MODEL}/infer", json={"inputs": oip_inputs(rows,
                                                                           trained["schema"])})
    live.post(f"/v2/models/{MODEL}/infer", content=b"{not json")
    text = live.get("/metrics").text
    route = 'route="/v2/models/{name}/infer"'
    assert f'ct_serve_requests_total{{method="POST",{route},status="200"}} 3.0' in text
    assert f'ct_serve_request_errors_total{{{route},status="400"}} 1.0' in text
    assert 'ct_serve_rows_scored_total{model_version="v1"} 30.0' in text
    assert 'ct_serve_model_info{model_name="ct-model",model_version="v1"} 1.0' in text
    assert 'ct_serve_score_count{model_version="v1"} 30.0' in text
    assert f'ct_serve_request_duration_seconds_count{{{route}}} 4.0' in text
    assert "ct_serve_hot_swaps_total 0.0" in text
    assert "ct_serve_hot_swaps_refused_total 0.0" in text


def test_openapi_describes_the_request_bodies(shared):
    document = shared.get("/openapi.json").json()
    infer = document["paths"]["/v2/models/{name}/infer"]["post"]
    reference = infer["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert reference.endswith("/InferenceRequest")
    schemas = document["components"]["schemas"]
    assert "inputs" in schemas["InferenceRequest"]["required"]
    assert set(schemas) >= {"PredictRequest", "FeedbackRequest", "RequestInput", "Error"}


def test_the_fastapi_routes_answer_like_the_shortcut(settings, trained):
    app = create_app(settings)
    app.state.service.shortcut = lambda scope: None  # every request through FastAPI's routing
    rows = trained["rows"].head(3)
    inputs = oip_inputs(rows, trained["schema"])
    with ThreadServer(app) as server, httpx.Client(base_url=server.url) as client:
        now = client.post(f"/v2/models/{MODEL}/infer", json={"inputs": inputs}).json()
        old = client.post(f"/v2/models/{MODEL}/versions/v2/infer", json={"inputs": inputs})
        predictions = client.post("/predict", json={"records": records(rows, trained["schema"])})
        bad = client.post(f"/v2/models/{MODEL}/infer", json={"inputs": inputs[1:]})
        unknown = client.post("/v2/models/nope/infer", json={"inputs": inputs})
        text = client.get("/metrics").text
    np.testing.assert_allclose(now["outputs"][0]["data"], expected_scores(settings, "v1", rows))
    assert old.json()["model_version"] == "v2"
    np.testing.assert_allclose([p["score"] for p in predictions.json()["predictions"]],
                               expected_scores(settings, "v1", rows))
    assert bad.status_code == 422 and "region" in bad.json()["error"]
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
    assert 'route="/v2/models/{name}/infer",status="422"' in text
