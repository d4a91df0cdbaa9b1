"""Run the app on uvicorn: one worker, uvloop and httptools, no access log, graceful SIGTERM.

The socket is bound before the server starts, so a port in use is a one-line error and `--port
0` picks a free port whose URL is known (and written to `endpoint.json`) before serving.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator

import uvicorn

from ct_assets.serve.app import create_app
from ct_assets.serve.models import ServedModel
from ct_assets.serve.settings import ServeSettings

GRACEFUL_SECONDS = 30  # at shutdown, how long requests in flight may take to finish


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host:port` (port 0: any free port).

    Raises:
        OSError: the address is unknown or in use.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    listening = socket.socket(family, kind, proto)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind(address)
    except OSError as error:
        listening.close()
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    listening.listen(2048)
    listening.set_inheritable(True)
    return listening


def url_of(listening: socket.socket) -> str:
    """The `http://host:port` URL of a bound socket."""
    host, port = listening.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.contextmanager
def stopping_quietly() -> Iterator[None]:
    """After a graceful shutdown on SIGTERM or SIGINT, return instead of dying by the signal.

    uvicorn re-raises the signal it shut down for once its own handlers are gone; with these
    handlers in place that re-raise is a no-op, so `ct serve` exits 0 (and Ctrl-C prints no
    traceback).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT,
                                                                     signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(settings: ServeSettings, listening: socket.socket, initial: ServedModel | None = None,
        on_started: Callable[[ServedModel], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT; then finish requests in flight and flush the log.

    `on_started` is called with the model served once the server is ready (`endpoint.json`
    written, the socket listening).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings.url = settings.url or url_of(listening)
    config = uvicorn.Config(create_app(settings, initial, on_started), loop="uvloop",
                            http="httptools",
                            lifespan="on", access_log=False, log_level="warning",
                            timeout_graceful_shutdown=GRACEFUL_SECONDS)
    with stopping_quietly():
        uvicorn.Server(config).run(sockets=[listening])
