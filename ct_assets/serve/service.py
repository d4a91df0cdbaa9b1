"""One server's state and its scoring path: the model slot, the request log, metrics, startup.

The scoring routes (`POST …/infer`, `POST /predict`) are answered by `shortcut` straight from
the ASGI scope, without FastAPI's per-request routing and dependency solving (about ten times
the cost of decoding and scoring one row); the FastAPI routes of the same paths describe them
in the OpenAPI schema and answer the same way if reached. A body over `OFFLOAD_BYTES` is decoded
and scored in a worker thread so that the event loop keeps answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ct_assets.lib.model_store import write_json_atomic
from ct_assets.serve import protocol, records, values
from ct_assets.serve.guard import Receive, Scope, Send, send_error
from ct_assets.serve.hot_swap import ModelSlot
from ct_assets.serve.metrics import RequestLogCollector, ServeMetrics
from ct_assets.serve.models import Canary, ServedModel
from ct_assets.serve.request_log import Chunk, RequestLog
from ct_assets.serve.settings import ServeSettings
from ct_assets.serve.values import RequestError

OFFLOAD_BYTES = 256 * 1024
BINARY_HEADER = b"inference-header-content-length"  # the binary tensor extension
INFER = re.compile(r"^/v2/models/([^/]+)/infer$")
VERSION_INFER = re.compile(r"^/v2/models/([^/]+)/versions/([^/]+)/infer$")
JSON_HEADERS = [(b"content-type", b"application/json")]
Decode = Callable[..., values.Batch]
Encode = Callable[..., bytes]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


class Service:
    """Settings, the served model, the request log and the metrics of one server."""

    def __init__(self, settings: ServeSettings, initial: ServedModel | None = None,
                 on_started: Callable[[ServedModel], None] | None = None) -> None:
        self.settings = settings
        self.on_started = on_started
        self.metrics = ServeMetrics(settings.model_name)
        self.slot = ModelSlot(settings, self.metrics)
        self.request_log = RequestLog(settings.request_log_dir, settings.model_name,
                                      settings.log_flush_rows, settings.log_flush_seconds)
        self.metrics.registry.register(RequestLogCollector(self.request_log))
        if initial is not None:
            self.slot.install(initial)

    async def receive_body(self, receive: Receive) -> bytes:
        """The whole request body, refusing one over `max_body_bytes` as it streams in."""
        chunks, size, limit = [], 0, self.settings.max_body_bytes
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestError(400, "the client disconnected before sending its body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def answer(self, raw: bytes, header_length: str | None, served: ServedModel,
                     decode: Decode, encode: Encode) -> bytes:
        """Decode, score, log and encode one request's rows; returns the response body."""
        payload, binary = values.parse_json(raw, header_length)
        if len(raw) > OFFLOAD_BYTES:
            content, due = await asyncio.to_thread(self._score, payload, binary, served,
                                                   decode, encode)
        else:
            content, due = self._score(payload, binary, served, decode, encode)
        if due:
            self.request_log.schedule_flush()
        return content

    def _score(self, payload: Any, binary: bytes, served: ServedModel, decode: Decode,
               encode: Encode) -> tuple[bytes, bool]:
        """The response body, and whether the request log is due for a flush.

        The rows are appended to the request log before the response exists: a request
        answered is a request logged.
        """
        received = time.time_ns() // 1000
        batch = decode(payload, binary, served, id_column=self.settings.id_column,
                       max_rows=self.settings.max_rows)
        matrix = batch.matrix if batch.matrix is not None else served.encode(batch.columns,
                                                                             batch.rows)
        scores = served.score(matrix)
        decisions = served.decide(scores)
        one_per_row = served.decided_scores(scores)
        due = self.request_log.append(Chunk(
            batch.request_id, received, served.version, served.log_features, batch.columns,
            batch.ids, one_per_row, decisions))
        self.metrics.scored(served.version, one_per_row)
        self.slot.recent = Canary(served.schema, batch.columns, batch.rows)
        return encode(self.settings.model_name, served, batch, scores, decisions), due

    def shortcut(self, scope: Scope) -> tuple[str, Handler] | None:
        """The route template and handler of a scoring request (None: let FastAPI route it)."""
        if scope["method"] != "POST":
            return None
        path = scope["path"]
        if path == "/predict":
            return "/predict", self._handler(None, None, records.decode_records,
                                             records.records_response)
        match = INFER.match(path)
        if match:
            return ("/v2/models/{name}/infer",
                    self._handler(match[1], None, protocol.decode_infer,
                                  protocol.infer_response))
        match = VERSION_INFER.match(path)
        if match:
            return ("/v2/models/{name}/versions/{version}/infer",
                    self._handler(match[1], match[2], protocol.decode_infer,
                                  protocol.infer_response))
        return None

    def _handler(self, name: str | None, version: str | None, decode: Decode,
                 encode: Encode) -> Handler:
        """An ASGI handler scoring with the named model (None: the one served) or a version."""

        async def handle(scope: Scope, receive: Receive, send: Send) -> None:
            try:
                model = name if name is not None else self.settings.model_name
                served = (self.slot.model(model) if version is None
                          else await self.slot.version(model, version))
                raw = await self.receive_body(receive)
                header = next((value.decode("latin-1") for key, value in scope["headers"]
                               if key == BINARY_HEADER), None)
                content = await self.answer(raw, header, served, decode, encode)
            except RequestError as error:
                await send_error(send, error.status, str(error))
                return
            await send({"type": "http.response.start", "status": 200,
                        "headers": [*JSON_HEADERS,
                                    (b"content-length", str(len(content)).encode())]})
            await send({"type": "http.response.body", "body": content})

        return handle

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """Load the model, start the watcher and the log; at shutdown flush the log."""
        if self.slot.current is None:
            await asyncio.to_thread(self.slot.load_initial)
        watcher = None
        if self.settings.version is None:
            watcher = asyncio.get_running_loop().create_task(self.slot.watch())
        self.request_log.start()
        self._write_endpoint()
        if self.on_started is not None and self.slot.current is not None:
            self.on_started(self.slot.current)
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
            await self.request_log.close()
            self._remove_endpoint()

    def _write_endpoint(self) -> None:
        """Write `endpoint.json` (url, pid, model name, start time) for `ct status`."""
        path = self.settings.endpoint_file
        if path is None or self.settings.url is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"url": self.settings.url, "pid": os.getpid(),
                                 "model_name": self.settings.model_name,
                                 "started_at": dt.datetime.now(dt.UTC).isoformat()})

    def _remove_endpoint(self) -> None:
        """Remove `endpoint.json` if it is still this process's."""
        path = self.settings.endpoint_file
        if path is None or self.settings.url is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
                path.unlink()
