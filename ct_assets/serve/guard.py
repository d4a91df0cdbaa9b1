"""The ASGI layer around every route: bearer token, body-size limit, metrics, last-resort 500.

A plain ASGI middleware (not Starlette's `BaseHTTPMiddleware`, which costs a task per request).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.routing import Match

from ct_assets.serve.metrics import ServeMetrics

log = logging.getLogger("ct_assets.serve")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
ROUTE = "ct_serve.route"  # the scope key holding the route template of a shortcut request
OPEN_PREFIX = "/v2/health/"


async def send_error(send: Send, status: int, message: str,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer `{"error": message}` with `status`."""
    content = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(content)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": content})


class Guard:
    """Refuse unauthorised or oversized requests before routing; count every response."""

    def __init__(self, app: Any, *, token: str | None, max_body_bytes: int,
                 metrics: ServeMetrics, routes: list[Any],
                 shortcut: Callable[[Scope], tuple[str, Handler] | None]) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.routes = routes  # the app's routes: to name the route of a refused request
        self.shortcut = shortcut  # the scoring routes, answered without FastAPI's routing

    def _refusal(self, scope: Scope) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        """Why a request is refused before it reaches a route (None: it is not)."""
        headers = dict(scope["headers"])
        if self.expected is not None and not scope["path"].startswith(OPEN_PREFIX):
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                problem = "missing" if not given else "wrong"
                return 401, f"{problem} bearer token (Authorization: Bearer <token>)", [
                    (b"www-authenticate", b"Bearer")]
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return 400, f"Content-Length {length.decode(errors='replace')!r} is not a " \
                            "number", []
            if int(length) > self.max_body_bytes:
                return 413, f"body of {int(length)} bytes exceeds the limit of " \
                            f"{self.max_body_bytes} bytes", []
        return None

    def _template(self, scope: Scope) -> str:
        """The route template a request matched (`unmatched` for none)."""
        if ROUTE in scope:
            return str(scope[ROUTE])
        route = scope.get("route")
        if route is not None:
            return str(route.path)
        for candidate in self.routes:
            match, _ = candidate.matches(scope)
            if match is Match.FULL:
                return str(candidate.path)
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request (or lifespan event) through the checks."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500
        started = False

        async def send_counted(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            refusal = self._refusal(scope)
            shortcut = self.shortcut(scope) if refusal is None else None
            if refusal is not None:
                await send_error(send_counted, refusal[0], refusal[1], refusal[2])
            elif shortcut is not None:
                scope[ROUTE], handler = shortcut
                await handler(scope, receive, send_counted)
            else:
                await self.app(scope, receive, send_counted)
        except Exception:  # a genuine server fault: logged, answered as JSON, counted
            log.exception("serving %s %s failed", scope["method"], scope["path"])
            status = 500
            if not started:
                await send_error(send, 500, "internal server error (logged by the server)")
        finally:
            self.metrics.answered(self._template(scope), scope["method"], status,
                                  time.perf_counter() - began)
