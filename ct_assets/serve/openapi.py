"""The OpenAPI description of the server: request and response bodies as pydantic models.

These models document the API (and let a fuzzer generate requests); they are never used to
validate a request on the hot path, which `protocol` decodes itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from ct_assets.serve.models import ServedModel, synthesise_rows

Datatype = Literal["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                   "UINT64", "FP16", "FP32", "FP64", "BYTES"]


class Error(BaseModel):
    """Every refusal: a 4xx (or a 5xx for a genuine server fault) with what was wrong."""

    error: str


class RequestInput(BaseModel):
    """One input tensor: a feature column (shape [n] or [n, 1]) or the [n, k] matrix."""

    name: str = Field(min_length=1)
    shape: list[Annotated[int, Field(ge=0)]] = Field(min_length=1, max_length=2)
    datatype: Datatype
    data: list[Any]
    parameters: dict[str, Any] | None = None


class RequestOutput(BaseModel):
    """An output asked for by name: score, decision (not for regression) or id."""

    name: Literal["score", "decision", "id"]
    parameters: Any = Field(default=None, description="ignored: outputs are always JSON")


class InferenceRequest(BaseModel):
    """An Open Inference Protocol v2 inference request."""

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    """One output tensor."""

    name: str
    shape: list[int]
    datatype: Datatype
    data: list[Any]


class InferenceResponse(BaseModel):
    """The scores, decisions and row ids, with the model version that made them."""

    model_name: str
    model_version: str
    id: str
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    """An input or output the model declares."""

    name: str
    datatype: Datatype
    shape: list[int]


class ModelMetadata(BaseModel):
    """Model metadata; `parameters.version` is the version currently served."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any]


class ServerMetadata(BaseModel):
    """Server metadata."""

    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    """Liveness."""

    live: bool


class Ready(BaseModel):
    """Readiness of the server (a verified model is loaded)."""

    ready: bool


class ModelReady(BaseModel):
    """Readiness of a model (version)."""

    name: str
    ready: bool


class PredictRequest(BaseModel):
    """Rows as JSON records, feature name → value (plus the dataset's id field, optional)."""

    model_config = ConfigDict(extra="forbid")

    records: list[dict[str, Any]] = Field(min_length=1)
    id: str | None = None


class Prediction(BaseModel):
    """One row's id, score and decision (absent for regression)."""

    id: str
    score: float
    decision: Any | None = None
    probabilities: dict[str, float] | None = None


class PredictResponse(BaseModel):
    """The predictions of `/predict`."""

    model_version: str
    request_id: str
    predictions: list[Prediction]


class Label(BaseModel):
    """The label of a row served earlier, by its id."""

    model_config = ConfigDict(extra="forbid")

    id: str | int
    label: Any
    known_at: str | None = Field(default=None, description="ISO 8601; default: now (UTC)")


class FeedbackRequest(BaseModel):
    """Labels for rows served earlier."""

    model_config = ConfigDict(extra="forbid")

    labels: list[Label] = Field(min_length=1)


class FeedbackResponse(BaseModel):
    """How many labels were written, and the label file's name."""

    accepted: int
    file: str


REQUEST_BODIES = {"InferenceRequest": InferenceRequest, "PredictRequest": PredictRequest,
                  "FeedbackRequest": FeedbackRequest}
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Error, "description": text} for status, text in (
        (400, "Malformed JSON or binary data"), (401, "Missing or wrong bearer token"),
        (404, "Unknown model or version"), (409, "Refused in the server's state"),
        (413, "Body or row count over the limit"), (422, "Invalid request content"))}


def body(name: str) -> dict[str, Any]:
    """`openapi_extra` declaring a route's JSON request body as one of `REQUEST_BODIES`."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{name}"}}}}}


def record_schema(served: ServedModel, id_column: str | None) -> dict[str, Any]:
    """The JSON schema of one `/predict` record of the model served: its features exactly."""
    kinds = {"category": {"type": ["string", "null"]}, "BOOL": {"type": ["boolean", "null"]}}
    properties = {feature.name: kinds.get(feature.kind) or kinds.get(feature.datatype)
                  or {"type": ["number", "null"]} for feature in served.features}
    if id_column:
        properties[id_column] = {"anyOf": [{"type": "string", "minLength": 1},
                                           {"type": "integer"}]}
    return {"type": "object", "properties": properties, "required": list(served.names),
            "additionalProperties": False}


def infer_example(served: ServedModel) -> dict[str, Any]:
    """A valid inference request of two rows for the model served."""
    rows = synthesise_rows(served.features, 2)
    return {"inputs": [{
        "name": feature.name, "shape": [2],
        "datatype": "BYTES" if feature.kind == "category" else "FP64",
        "data": rows[feature.name] if feature.kind == "category" else [
            None if value != value else value for value in rows[feature.name].tolist()]}
        for feature in served.features]}


def install(app: FastAPI, version: str, model_name: str,
            current: Callable[[], ServedModel | None], id_column: str | None) -> None:
    """Serve an OpenAPI schema that also describes the request bodies (built once).

    With a model loaded, `/predict` records are described feature by feature, an inference
    request of the model is the example of the infer routes, and the model's name and version
    are the examples of the path parameters.
    """

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=version, routes=app.routes,
                                   description=app.description)
            components = document.setdefault("components", {}).setdefault("schemas", {})
            for name, model in REQUEST_BODIES.items():
                found = TypeAdapter(model).json_schema(
                    ref_template="#/components/schemas/{model}")
                components.update(found.pop("$defs", {}))
                components[name] = found
            served = current()
            examples = {"name": model_name, "version": served.version if served else None}
            for operations in document["paths"].values():
                for operation in operations.values():
                    for parameter in operation.get("parameters", []):
                        if examples.get(parameter["name"]) is not None:
                            parameter["example"] = examples[parameter["name"]]
            if served is not None:
                components["PredictRequest"]["properties"]["records"]["items"] = \
                    record_schema(served, id_column)
                for path in ("/v2/models/{name}/infer",
                             "/v2/models/{name}/versions/{version}/infer"):
                    content = document["paths"][path]["post"]["requestBody"]["content"]
                    content["application/json"]["example"] = infer_example(served)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]
