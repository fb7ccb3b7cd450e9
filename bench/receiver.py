"""A small, fast webhook receiver on 127.0.0.1 for the fire-lag bench.

A bare asyncio protocol (HTTP/1.1 with Content-Length, keep-alive), not a framework:
it notes when each request had fully arrived and its body, answers 200 at once, and
parses nothing until the measurement is over, so that what it measures is the
service, not itself (wrk gets tens of thousands of requests/s from it).

    python -m bench.receiver [--concurrency 1 8 32] [--requests 2000]

prints how many requests/s the service's webhook client (webhook_http) gets from
it at each concurrency: a ceiling for the webhook path of one replica, whose
executors run SCHEDULER_CONCURRENCY (32) deliveries at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

import yarl

from scheduler_svc.targets.http import webhook_client

_REPLY = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


@dataclass(slots=True)
class Receipts:
    """(time.time() when it arrived, body) of every request, in order."""

    arrived: list[tuple[float, bytes]] = field(default_factory=list)

    def lags_ms(self, start: datetime, end: datetime) -> list[float]:
        """Receipt minus tick of each delivery whose tick (scheduled_for) is in [start, end)."""
        lags = []
        for received_at, body in self.arrived:
            tick = datetime.fromisoformat(json.loads(body)["scheduled_for"])
            if start <= tick < end:
                lags.append((received_at - tick.timestamp()) * 1000)
        return lags


class _Protocol(asyncio.Protocol):
    def __init__(self, receipts: Receipts) -> None:
        self._receipts = receipts
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self._buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self._buffer) < end + 4 + length:
                return
            body = self._buffer[end + 4 : end + 4 + length]
            self._buffer = self._buffer[end + 4 + length :]
            self._receipts.arrived.append((time.time(), body))
            assert self._transport is not None
            self._transport.write(_REPLY)


@asynccontextmanager
async def receiving() -> AsyncIterator[tuple[str, Receipts]]:
    """Serve on a free loopback port; yield its URL and what it receives."""
    receipts = Receipts()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Protocol(receipts), "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook", receipts
    finally:
        server.close()
        await server.wait_closed()


async def client_rate(concurrency: int, requests: int) -> float:
    """Requests/s of the webhook client posting to the receiver, `concurrency` at once."""
    async with (
        receiving() as (url, _),
        webhook_client(allow_private=True, max_connections=concurrency) as client,
    ):
        body = json.dumps({"scheduled_for": "2030-01-01T00:00:00Z"}).encode()
        gate = asyncio.Semaphore(concurrency)
        endpoint = yarl.URL(url)

        async def post() -> None:
            async with gate:
                reply = await client.call("POST", endpoint, [], body, timeout_s=10, limit=4096)
                assert reply.status == 200, reply

        started = time.perf_counter()
        await asyncio.gather(*(post() for _ in range(requests)))
        return requests / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    for concurrency in args.concurrency:
        rate = await client_rate(concurrency, args.requests)
        print(f"webhook client, {concurrency} at once: {rate:,.0f} requests/s")


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
