"""Running the app: in the foreground (`batray serve`) or on a background thread (pipeline, tests).

`start_server` binds the socket itself (port 0: a free port chosen by the OS, no race), runs uvicorn
on a daemon thread and returns once the app's startup has finished, with the URL to give an
`openai` client (`base_url=handle.url`).

Both run `ServeServer`: uvicorn's server that, when told to stop (SIGTERM/SIGINT in the foreground,
`handle.close()` in the background), first answers every queued and running generation with a 503
and cancels its rows, so the stop takes one decoding step rather than the longest request.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from dataclasses import dataclass

import uvicorn

from batray.errors import BatrayError
from batray.serve.app import ServedModel, create_app, load_served_model

log = logging.getLogger("batray.serve")


class ServeServer(uvicorn.Server):
    """uvicorn's server; on shutdown it first fails in-flight generation with 503 (see the module doc)."""

    async def shutdown(self, sockets=None) -> None:
        engine = getattr(getattr(self.config.app, "state", None), "engine", None)
        if engine is not None:
            answered = engine.shutdown()
            if answered:
                log.info("stopping: answered %d in-flight requests with 503", answered)
        await super().shutdown(sockets=sockets)


@dataclass
class ServerHandle:
    url: str  # e.g. http://127.0.0.1:PORT/v1, what `openai.OpenAI(base_url=...)` takes
    model: str  # the served model id
    app: object
    _server: uvicorn.Server
    _thread: threading.Thread

    def close(self, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout_s)

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise BatrayError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port") from None
    sock.listen(128)
    return sock


def start_server(model: str | ServedModel | None = None, *, app=None, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, startup_timeout_s: float = 120.0, **app_kwargs) -> ServerHandle:
    """Serve a checkpoint path, a loaded `ServedModel`, or any ASGI `app` on a background thread."""
    ready = threading.Event()
    own_app = app is None
    if own_app:
        served = model if isinstance(model, ServedModel) else load_served_model(str(model))
        app = create_app(served, api_key=api_key, on_ready=ready.set, **app_kwargs)
        name = served.name
    else:
        name = getattr(getattr(app, "state", None), "served", None)
        name = name.name if name is not None else ""
    sock = bind_socket(host, port)
    bound = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    server = ServeServer(config)
    server.install_signal_handlers = lambda: None  # not the main thread
    failed: list[BaseException] = []

    def run():
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as e:  # surfaced to the caller below
            failed.append(e)
        finally:
            sock.close()
            ready.set()

    thread = threading.Thread(target=run, name=f"batray-serve-{bound}", daemon=True)
    thread.start()
    # The socket already listens, so early clients queue in its backlog; for our own app we still wait
    # until its startup (the generation loop) has run, or until the thread died trying.
    if own_app:
        if not ready.wait(startup_timeout_s) or failed or not thread.is_alive():
            server.should_exit = True
            raise BatrayError(f"the server on {host}:{bound} did not start: {failed[0] if failed else 'timeout'}")
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return ServerHandle(f"http://{shown}:{bound}/v1", name, app, server, thread)


def run_server(served: ServedModel, *, host: str, port: int, api_key: str | None, **app_kwargs) -> None:
    """Blocking: serve until interrupted (the `batray serve` command)."""
    app = create_app(served, api_key=api_key, **app_kwargs)
    sock = bind_socket(host, port)
    log.info("listening on http://%s:%d/v1", host, sock.getsockname()[1])
    # in-flight requests are answered at once (ServeServer); the timeout only bounds slow clients
    config = uvicorn.Config(app, log_level="info", lifespan="on", timeout_graceful_shutdown=5)
    ServeServer(config).run(sockets=[sock])
