"""The FastAPI app of `ct serve`: Open Inference Protocol v2, `/predict`, `/feedback`, metrics.

`create_app(settings)` needs no `ct.yaml`, Dagster or DuckDB: a model store directory (or one
fixed version in it) is enough. Every route is declared here, so the OpenAPI schema describes
them all; the scoring routes are answered by `Service.shortcut` before FastAPI routes them.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from ct_assets.serve import feedback, openapi, protocol, records, values
from ct_assets.serve.guard import Guard
from ct_assets.serve.models import ServedModel
from ct_assets.serve.service import BINARY_HEADER, Decode, Encode, Service
from ct_assets.serve.settings import ServeSettings
from ct_assets.serve.values import RequestError

JSON = "application/json"
# FastAPI >= 0.16x checks for OpenTelemetry providers on every request; the server reports
# through Prometheus, so that check is switched off where the option exists.
NO_TELEMETRY = ({"telemetry": {"tracing": False, "metrics": False, "logs": False}}
                if "telemetry" in inspect.signature(FastAPI.__init__).parameters else {})

try:
    SERVER_VERSION = package_version("ct_assets")
except PackageNotFoundError:  # a source tree never installed, or a `ct package` directory
    from ct_assets import __version__ as SERVER_VERSION


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _ok(document: Any) -> Response:
    return Response(values.dumps(document), media_type=JSON)


def create_app(settings: ServeSettings, initial: ServedModel | None = None,
               on_started: Callable[[ServedModel], None] | None = None) -> FastAPI:
    """The server's ASGI app.

    Args:
        settings: what to serve and how.
        initial: an already verified model to start with (else loaded at startup).
        on_started: called with the model once startup is done (`ct serve` prints its line).
    """
    service = Service(settings, initial, on_started)
    app = FastAPI(title="ct serve", description=__doc__, lifespan=service.lifespan,
                  docs_url=None, redoc_url=None, **NO_TELEMETRY)
    app.state.service = service
    slot, metrics = service.slot, service.metrics

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError) -> JSONResponse:
        return _error(error.status, str(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail), error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    async def score(request: Request, served: ServedModel, decode: Decode,
                    encode: Encode) -> Response:
        raw = await service.receive_body(request.receive)
        header = request.headers.get(BINARY_HEADER.decode())
        return Response(await service.answer(raw, header, served, decode, encode),
                        media_type=JSON)

    errors = openapi.ERRORS

    @app.get("/v2", responses={200: {"model": openapi.ServerMetadata}, **errors})
    async def server_metadata() -> Response:
        """Server metadata."""
        return _ok({"name": "ct-serve", "version": SERVER_VERSION, "extensions": []})

    @app.get("/v2/health/live", responses={200: {"model": openapi.Live}})
    async def live() -> Response:
        """Liveness: the process answers."""
        return _ok({"live": True})

    @app.get("/v2/health/ready", responses={200: {"model": openapi.Ready},
                                            503: {"model": openapi.Error}})
    async def ready() -> Response:
        """Readiness: a verified model is loaded."""
        if slot.current is None:
            return _error(503, "no verified model is loaded yet")
        return _ok({"ready": True})

    @app.get("/v2/models/{name}", responses={200: {"model": openapi.ModelMetadata}, **errors})
    async def model_metadata(name: str) -> Response:
        """Metadata of the model as served now (`parameters.version`)."""
        served = slot.model(name)
        versions = await asyncio.to_thread(slot.versions)
        return _ok(protocol.model_metadata(name, served, versions, settings.id_column))

    @app.get("/v2/models/{name}/versions/{version}",
             responses={200: {"model": openapi.ModelMetadata}, **errors})
    async def version_metadata(name: str, version: str) -> Response:
        """Metadata of one version (loaded and verified on first use)."""
        served = await slot.version(name, version)
        return _ok(protocol.model_metadata(name, served, [version], settings.id_column))

    @app.get("/v2/models/{name}/ready", responses={200: {"model": openapi.ModelReady}, **errors})
    async def model_ready(name: str) -> Response:
        """The model is ready (a verified version is loaded)."""
        slot.model(name)
        return _ok({"name": name, "ready": True})

    @app.get("/v2/models/{name}/versions/{version}/ready",
             responses={200: {"model": openapi.ModelReady}, **errors})
    async def version_ready(name: str, version: str) -> Response:
        """The version is ready: it loads and verifies."""
        await slot.version(name, version)
        return _ok({"name": name, "ready": True})

    infer_doc = {"responses": {200: {"model": openapi.InferenceResponse}, **errors},
                 "openapi_extra": openapi.body("InferenceRequest")}

    @app.post("/v2/models/{name}/infer", **infer_doc)
    async def infer(request: Request, name: str) -> Response:
        """Score rows with the model as served now (Open Inference Protocol v2)."""
        return await score(request, slot.model(name), protocol.decode_infer,
                           protocol.infer_response)

    @app.post("/v2/models/{name}/versions/{version}/infer", **infer_doc)
    async def infer_version(request: Request, name: str, version: str) -> Response:
        """Score rows with one version still in the store."""
        return await score(request, await slot.version(name, version), protocol.decode_infer,
                           protocol.infer_response)

    @app.post("/predict", responses={200: {"model": openapi.PredictResponse}, **errors},
              openapi_extra=openapi.body("PredictRequest"))
    async def predict(request: Request) -> Response:
        """Score JSON records: `{"records": [{feature: value, …}, …]}`."""
        return await score(request, slot.model(settings.model_name), records.decode_records,
                           records.records_response)

    @app.post("/feedback", responses={200: {"model": openapi.FeedbackResponse}, **errors},
              openapi_extra=openapi.body("FeedbackRequest"))
    async def post_feedback(request: Request) -> Response:
        """Labels for rows served earlier, by id: one label file in the labels landing dir."""
        served = slot.model(settings.model_name)
        payload, _ = values.parse_json(await service.receive_body(request.receive))
        frame = feedback.parse_labels(payload, served, settings)
        assert settings.labels_dir is not None
        name = await asyncio.to_thread(feedback.write_labels, frame, settings.labels_dir)
        return _ok({"accepted": frame.height, "file": name})

    @app.get("/metrics", response_class=Response, responses={
        200: {"content": {"text/plain": {}}}, 401: errors[401]})
    async def prometheus() -> Response:
        """Prometheus metrics (text format)."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    openapi.install(app, SERVER_VERSION, settings.model_name, lambda: slot.current,
                    settings.id_column)
    app.add_middleware(Guard, token=settings.token, max_body_bytes=settings.max_body_bytes,
                       metrics=metrics, routes=app.routes,
                       shortcut=lambda scope: service.shortcut(scope))
    return app
