"""Bad input gets a 4xx with a JSON error naming the field, never a 5xx."""

from __future__ import annotations

import copy

import numpy as np
import orjson
import pytest

from ct_assets_tests.serve.conftest import ID, MODEL, oip_inputs, records

INFER = f"/v2/models/{MODEL}/infer"


@pytest.fixture
def valid(trained):
    rows = trained["rows"].head(3)
    return {"inputs": oip_inputs(rows, trained["schema"]),
            "records": records(rows, trained["schema"])}


def tensor(document, name):
    return next(t for t in document["inputs"] if t["name"] == name)


def drop(name):
    def change(document):
        document["inputs"] = [t for t in document["inputs"] if t["name"] != name]
    return change


def set_field(name, key, value):
    def change(document):
        tensor(document, name)[key] = value
    return change


def add_input(document):
    document["inputs"].append({"name": "colour", "shape": [3], "datatype": "FP64",
                               "data": [1.0, 2.0, 3.0]})


def duplicate(document):
    document["inputs"].append(copy.deepcopy(tensor(document, "amount")))


def shorter(document):
    set_field("amount", "shape", [2])(document)
    set_field("amount", "data", [1.0, 2.0])(document)


# (what, change to a valid OIP request, status, words the error must contain)
OIP_CASES = [
    ("missing feature", drop("amount"), 422, ["amount"]),
    ("extra input", add_input, 422, ["colour"]),
    ("duplicate input", duplicate, 422, ["amount"]),
    ("string for a number", set_field("amount", "data", ["abc", 1.0, 2.0]), 422, ["amount"]),
    ("bool for FP64", set_field("amount", "data", [True, 1.0, 2.0]), 422, ["amount"]),
    ("fraction for INT64", lambda d: (set_field("customer_age", "datatype", "INT64")(d),
                                      set_field("customer_age", "data", [1.5, 2, 3])(d)),
     422, ["customer_age"]),
    ("numeric datatype for a category", set_field("region", "datatype", "FP64"), 422,
     ["region"]),
    ("number in a category", set_field("region", "data", [5, "north", "south"]), 422,
     ["region"]),
    ("BYTES for a number", set_field("amount", "datatype", "BYTES"), 422, ["amount"]),
    ("unknown datatype", set_field("amount", "datatype", "FLOAT"), 422, ["amount", "datatype"]),
    ("wrong shape", set_field("amount", "shape", [1, 3]), 422, ["amount"]),
    ("three dimensions", set_field("amount", "shape", [3, 1, 1]), 422, ["amount", "shape"]),
    ("shape and data disagree", set_field("amount", "shape", [4]), 422, ["amount"]),
    ("mismatched lengths", shorter, 422, ["amount"]),
    ("data not a list", set_field("amount", "data", 3.0), 422, ["amount", "data"]),
    ("nameless tensor", set_field("amount", "name", ""), 422, ["name"]),
    ("null id", set_field(ID, "data", [None, "a", "b"]), 422, [ID]),
    ("request id not a string", lambda d: d.update(id=5), 422, ["id"]),
    ("unknown output", lambda d: d.update(outputs=[{"name": "logits"}]), 422, ["outputs[0]"]),
    ("unknown content type", lambda d: d.update(parameters={"content_type": "xml"}), 422,
     ["content_type"]),
    ("no inputs", lambda d: d.update(inputs=[]), 422, ["inputs"]),
    ("inputs not a list", lambda d: d.update(inputs={"amount": 1}), 422, ["inputs"]),
    ("no rows", lambda d: [t.update(shape=[0], data=[]) for t in d["inputs"]], 422, ["rows"]),
    ("matrix of the wrong width", lambda d: d.update(inputs=[
        {"name": "predict", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]), 422,
     ["predict"]),
]


@pytest.mark.parametrize(("change", "status", "words"),
                         [case[1:] for case in OIP_CASES], ids=[c[0] for c in OIP_CASES])
def test_bad_inference_request(shared, valid, change, status, words):
    document = {"inputs": copy.deepcopy(valid["inputs"])}
    change(document)
    response = shared.post(INFER, json=document)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    for word in words:
        assert word in error


@pytest.mark.parametrize(("body", "status", "words"), [
    (b"{not json", 400, ["malformed JSON"]),
    (b'{"inputs": [{"name": "amount", "shape": [1], "datatype": "FP64", "data": [NaN]}]}', 400,
     ["JSON"]),
    (b"\xff\xfe", 400, ["JSON"]),
    (b"[1, 2]", 422, ["inputs"]),
    (b"", 400, ["JSON"]),
], ids=["malformed", "NaN literal", "not UTF-8", "not an object", "empty"])
def test_bad_bodies(shared, body, status, words):
    response = shared.post(INFER, content=body)
    assert response.status_code == status, response.text
    for word in words:
        assert word in response.json()["error"]


def test_infinity_is_refused(shared, valid):
    body = orjson.dumps({"inputs": valid["inputs"]}).replace(b"[", b"[1e999,", 1)
    assert b"1e999" in body
    response = shared.post(INFER, content=body)  # JSON has no infinity: a number too large
    assert response.status_code == 400 and "infinity" in response.json()["error"]
    # in a binary tensor it is a value: refused naming the element
    inputs = copy.deepcopy(valid["inputs"])
    amount = tensor({"inputs": inputs}, "amount")
    amount.pop("data")
    amount["parameters"] = {"binary_data_size": 24}
    header = orjson.dumps({"inputs": inputs})
    response = shared.post(INFER, content=header + np.array([1.0, np.inf, 2.0]).tobytes(),
                         headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 422
    assert "amount" in response.json()["error"] and "infinite" in response.json()["error"]


def test_bad_binary_data(shared):
    header = orjson.dumps({"inputs": [
        {"name": "amount", "shape": [2], "datatype": "FP64",
         "parameters": {"binary_data_size": 99}}]})
    response = shared.post(INFER, content=header + b"x" * 16,
                         headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400 and "binary_data_size" in response.json()["error"]
    response = shared.post(INFER, content=header,
                         headers={"Inference-Header-Content-Length": "oops"})
    assert response.status_code == 400
    assert "Inference-Header-Content-Length" in response.json()["error"]


def test_unknown_model_and_version(shared, valid):
    response = shared.post("/v2/models/nope/infer", json={"inputs": valid["inputs"]})
    assert response.status_code == 404 and "nope" in response.json()["error"]
    response = shared.post(f"/v2/models/{MODEL}/versions/v9/infer", json={"inputs": []})
    assert response.status_code == 404 and "v9" in response.json()["error"]
    response = shared.get(f"/v2/models/{MODEL}/versions/..%2Fmodels/ready")
    assert response.status_code == 404
    assert shared.get("/v2/models/nope").status_code == 404
    assert shared.get("/nowhere").json() == {"error": "Not Found"}


def test_body_over_the_limit(shared, shared_settings, valid):
    big = b'{"inputs": [], "pad": "' + b"x" * shared_settings.max_body_bytes + b'"}'
    response = shared.post(INFER, content=big)
    assert response.status_code == 413 and "limit" in response.json()["error"]

    def chunks():  # no Content-Length: the streamed size is checked
        for _ in range(shared_settings.max_body_bytes // 10_000 + 2):
            yield b" " * 10_000

    response = shared.post(INFER, content=chunks())
    assert response.status_code == 413 and "limit" in response.json()["error"]


def test_too_many_rows(shared, shared_settings, trained):
    rows = trained["rows"].head(shared_settings.max_rows + 1)
    response = shared.post(INFER, json={"inputs": oip_inputs(rows, trained["schema"])})
    assert response.status_code == 413 and "rows" in response.json()["error"]
    response = shared.post("/predict", json={"records": records(rows, trained["schema"])})
    assert response.status_code == 413 and "records" in response.json()["error"]


RECORD_CASES = [
    ("missing feature", lambda r: r[1].pop("amount"), 422, ["records[1].amount"]),
    ("extra field", lambda r: r[2].update(colour=1), 422, ["records[2].colour"]),
    ("string for a number", lambda r: r[0].update(amount="12"), 422, ["records[0].amount"]),
    ("number for a category", lambda r: r[0].update(region=3), 422, ["records[0].region"]),
    ("bool for a number", lambda r: r[1].update(amount=True), 422, ["records[1].amount"]),
    ("list for a number", lambda r: r[1].update(amount=[1]), 422, ["records[1].amount"]),
    ("record not an object", lambda r: r.__setitem__(0, 5), 422, ["records[0]"]),
    ("bad id", lambda r: r[0].update({ID: ""}), 422, [f"records[0].{ID}"]),
]


@pytest.mark.parametrize(("change", "status", "words"),
                         [case[1:] for case in RECORD_CASES], ids=[c[0] for c in RECORD_CASES])
def test_bad_records(shared, valid, change, status, words):
    given = copy.deepcopy(valid["records"])
    change(given)
    response = shared.post("/predict", json={"records": given})
    assert response.status_code == status, response.text
    for word in words:
        assert word in response.json()["error"]


@pytest.mark.parametrize("document", [{"records": []}, {"records": "x"}, {"rows": []},
                                      {"records": [{}], "extra": 1}])
def test_bad_record_documents(shared, document):
    response = shared.post("/predict", json=document)
    assert response.status_code == 422
    assert response.json()["error"]


def test_no_request_with_bad_input_was_counted_as_scored(live, valid):
    document = {"inputs": copy.deepcopy(valid["inputs"])}
    set_field("amount", "data", ["abc", 1.0, 2.0])(document)
    live.post(INFER, json=document)
    text = live.get("/metrics").text
    assert "ct_serve_rows_scored_total{" not in text
    assert 'status="422"' in text
