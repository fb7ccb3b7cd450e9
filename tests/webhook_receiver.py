"""A real HTTP server on 127.0.0.1 that records webhook calls and answers as it is told.

    async with serve_receiver() as receiver:
        receiver.reply_with(Reply(503, headers={"Retry-After": "2"}), Reply(200))
        ...  # point a job's target at receiver.url("/hook")
        first, second = await receiver.wait_for(2)
        assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
        receiver.reply_on("/slow", Reply(hold=True))  # requests to /slow take this one first
        await receiver.wait_until(lambda requests: any(r.path == "/slow" for r in requests))

It runs uvicorn in the test's own event loop, so waiting on it is waiting on an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import serving

Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request as the receiver got it."""

    method: str
    path: str
    query: str
    headers: httpx.Headers
    body: bytes
    received_at: float = 0.0  # time.time() when the request had fully arrived
    client: tuple[str, int] | None = None  # the caller's address: one per connection

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class Reply:
    """How to answer one request."""

    status: int = 200
    body: bytes | str = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    hold: bool = False  # answer only once receiver.release() is called (or the receiver stops)
    delay_s: float = 0.0  # answer this much later (cut short when the receiver stops)
    chunk_size: int | None = None  # send the body in pieces of this size
    hold_after: int | None = None  # with chunk_size: after this many bytes, wait for release()


class WebhookReceiver:
    """Records every request and answers from a queue of replies, then with `default`.

    A request to a path given to `reply_on` takes that path's queued replies first.
    """

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.bytes_sent: list[int] = []  # response body bytes handed to the server, per request
        self.default = Reply()
        self.port = 0
        self.scheme = "http"
        self._replies: deque[Reply] = deque()
        self._path_replies: dict[str, deque[Reply]] = {}
        self._arrived = asyncio.Condition()
        self._released = asyncio.Event()
        self._closing = asyncio.Event()

    def url(self, path: str = "/hook") -> str:
        """An address on this receiver."""
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def reply_with(self, *replies: Reply) -> None:
        """Answer the next requests with these, in order; `default` after them."""
        self._replies.extend(replies)

    def reply_on(self, path: str, *replies: Reply) -> None:
        """Answer the next requests to `path` with these, in order; then as any other request."""
        self._path_replies.setdefault(path, deque()).extend(replies)

    def release(self) -> None:
        """Let every held reply go on, now and from here on."""
        self._released.set()

    def reset(self) -> None:
        """Start afresh: forget requests and queued replies, let held replies finish."""
        self._released.set()
        self._released = asyncio.Event()
        self.requests = []
        self.bytes_sent = []
        self._replies.clear()
        self._path_replies.clear()
        self.default = Reply()

    async def wait_for(self, count: int = 1, timeout: float = 5.0) -> list[Recorded]:  # noqa: ASYNC109
        """The first `count` requests, once they have arrived; TimeoutError after `timeout` s."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)
        return self.requests[:count]

    async def wait_until(
        self,
        predicate: Callable[[list[Recorded]], bool],
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> list[Recorded]:
        """The requests so far, once `predicate(requests)` holds; TimeoutError after `timeout` s."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: predicate(self.requests))
        return list(self.requests)

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the caller died mid-request (a killed replica): nothing arrived
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = Recorded(
            method=scope["method"],
            path=scope["path"],
            query=scope["query_string"].decode("latin-1"),
            headers=httpx.Headers(
                [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
            ),
            body=bytes(body),
            received_at=time.time(),
            client=(scope["client"][0], scope["client"][1]) if scope.get("client") else None,
        )
        # Taken now, so that a reply still running after reset() touches only its own test's state.
        requests, sent, released = self.requests, self.bytes_sent, self._released
        index = len(requests)
        for_path = self._path_replies.get(request.path)
        if for_path:
            reply = for_path.popleft()
        else:
            reply = self._replies.popleft() if self._replies else self.default
        async with self._arrived:
            requests.append(request)
            sent.append(0)
            self._arrived.notify_all()
        await self._answer(reply, send, released, sent, index)

    async def _answer(
        self, reply: Reply, send: Any, released: asyncio.Event, sent: list[int], index: int
    ) -> None:
        if reply.hold:
            await released.wait()
        if reply.delay_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), reply.delay_s)
        payload = reply.body.encode() if isinstance(reply.body, str) else reply.body
        headers = [(k.lower().encode(), v.encode()) for k, v in reply.headers.items()]
        if not any(k == b"content-length" for k, _ in headers):
            headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        size = reply.chunk_size or max(1, len(payload))
        for start in range(0, len(payload), size):
            if reply.hold_after is not None and start >= reply.hold_after:
                await released.wait()
            piece = payload[start : start + size]
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            sent[index] += len(piece)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@contextlib.asynccontextmanager
async def serve_receiver(
    *, certfile: Path | None = None, keyfile: Path | None = None
) -> AsyncIterator[WebhookReceiver]:
    """A WebhookReceiver served on a free loopback port (https with a certificate and key)."""
    receiver = WebhookReceiver()
    tls = {"ssl_certfile": certfile, "ssl_keyfile": keyfile}
    # Idle connections are kept a minute (uvicorn's default is 5 s): a replica that calls
    # every few seconds would otherwise meet, now and then, a connection closed just as it
    # reuses it. This release's client sends such a call again (test_webhook_http.py), but
    # the previous release's, run beside it in test_rolling_upgrade.py, retries it after
    # its backoff, and an overlap-forbidding job then skips the ticks meanwhile.
    options = {
        "lifespan": "off",
        "ws": "none",
        "timeout_graceful_shutdown": 5,
        "timeout_keep_alive": 60,
        **tls,
    }
    async with serving(receiver, "the webhook receiver", **options) as port:
        receiver.port = port
        receiver.scheme = "https" if certfile else "http"
        try:
            yield receiver
        finally:
            # Before the server stops: held and delayed replies end now.
            receiver._closing.set()
            receiver.release()
