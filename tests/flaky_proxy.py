"""A real HTTP proxy on loopback in front of the API that answers 503 to the first few
requests: what a client's retries meet during a deploy or behind a load balancer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from tests.helpers import LOOPBACK, serving

# Hop-by-hop headers, and those the proxy sets again itself.
_DROPPED = frozenset({"host", "content-length", "connection", "transfer-encoding"})
_UNAVAILABLE = (
    b'{"type":"about:blank","title":"Service Unavailable","status":503,'
    b'"detail":"the flaky proxy says no"}'
)


@dataclass(frozen=True)
class Seen:
    """One request the proxy received."""

    method: str
    path: str
    headers: dict[str, str]


class FlakyProxy:
    """Answers 503 to the first `failures` requests, then forwards each to `upstream`.

    With `forward_failures` the failing requests are forwarded too and only their answer
    is replaced: the service acted, and the client never heard.
    """

    def __init__(self, upstream: str, failures: int, *, forward_failures: bool = False) -> None:
        self.failures = failures
        self.forward_failures = forward_failures
        self.seen: list[Seen] = []
        self._http = httpx.AsyncClient(base_url=upstream, timeout=10)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name.decode("latin-1").lower() not in _DROPPED
        }
        self.seen.append(Seen(scope["method"], scope["path"], headers))
        failing = len(self.seen) <= self.failures
        if failing and not self.forward_failures:
            await _answer(send, 503, [(b"content-type", b"application/problem+json")], _UNAVAILABLE)
            return
        query = scope["query_string"].decode()
        upstream = await self._http.request(
            scope["method"],
            scope["path"] + (f"?{query}" if query else ""),
            headers=headers,
            content=body,
        )
        if failing:
            await _answer(send, 503, [(b"content-type", b"application/problem+json")], _UNAVAILABLE)
            return
        relayed = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in upstream.headers.multi_items()
            if name.lower() not in _DROPPED
        ]
        await _answer(send, upstream.status_code, relayed, upstream.content)

    async def aclose(self) -> None:
        """Close the connections to upstream."""
        await self._http.aclose()

    def requests_to(self, method: str, path: str) -> list[Seen]:
        """The requests received for `method` `path`."""
        return [s for s in self.seen if s.method == method and s.path == path]


async def _answer(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def flaky_proxy(
    upstream: str, failures: int, *, forward_failures: bool = False
) -> AsyncIterator[tuple[str, FlakyProxy]]:
    """Serve a FlakyProxy in front of `upstream` on a free loopback port; yield its URL
    and the proxy (whose `seen` lists what it received)."""
    proxy = FlakyProxy(upstream, failures, forward_failures=forward_failures)
    try:
        async with serving(proxy, "the flaky proxy", lifespan="off") as port:
            yield f"http://{LOOPBACK}:{port}", proxy
    finally:
        await proxy.aclose()
