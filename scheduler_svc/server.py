"""Serving: the application under uvicorn, on uvloop and httptools, with the worker
stopped at the signal (imported by the `serve` command only, so that the other
commands start without the web stack)."""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import uvicorn
from litestar import Litestar

from scheduler_svc.app import create_app
from scheduler_svc.config import Settings
from scheduler_svc.console.live import LiveHub
from scheduler_svc.engine.worker import Worker


class Server(uvicorn.Server):
    """uvicorn's server, with two changes to how SIGTERM/SIGINT stop it.

    The worker stops claiming runs at the signal, not once uvicorn has waited for
    the HTTP connections (then the lifespan would start a second grace period). And
    a stop by signal after a full drain exits 0: uvicorn raises the captured signal
    again once it has shut down, so the process would die of it (exit 143).
    """

    def __init__(self, config: uvicorn.Config, app: Litestar) -> None:
        super().__init__(config)
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # What startup built (the app, its routes and OpenAPI schema, the pools) lives
        # as long as the process: keep it out of the collector's full passes, and
        # collect young objects less often: under load the collector's full passes over
        # them cost CPU and pauses (bench/README.md has the measurement).
        gc.freeze()
        gc.set_threshold(10_000, 10, 10)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        worker: Worker | None = getattr(self._app.state, "worker", None)
        if worker is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(worker.begin_stop)
        # Open console streams never end by themselves: end them now, or uvicorn waits
        # the whole grace period for them.
        hub: LiveHub | None = getattr(self._app.state, "console_hub", None)
        if hub is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(hub.stop)
        super().handle_exit(sig, frame)

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


def run(settings: Settings) -> bool:
    """Serve the application until SIGTERM/SIGINT; False if its worker failed for good."""
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="auto" if sys.platform == "win32" else "uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )
    Server(config, app).run()
    return not getattr(app.state, "worker_failed", False)
