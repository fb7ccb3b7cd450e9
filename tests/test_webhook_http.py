"""The webhook client on its own: one call against real local servers, what it returns,
how much it reads, how each failure is named, and what it refuses to do.

The Deliverer's use of it (envelopes, signatures, retries, the call-time SSRF check) is
in test_targets.py; the guard's judgement of hosts is in test_netguard.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import pytest
import yarl

from scheduler_svc.targets.http import CallFailed, WebhookClient, webhook_client
from scheduler_svc.targets.netguard import RefusedAddress
from tests.helpers import LOOPBACK, FakeResolver, free_port, never_accepting
from tests.webhook_receiver import Reply, WebhookReceiver

pytestmark = pytest.mark.timeout(20)

Headers = list[tuple[str, str]]


async def call(
    client: WebhookClient,
    url: str,
    headers: Headers | None = None,
    body: bytes | None = b"{}",
    *,
    timeout_s: float = 5,
    limit: int = 4096,
) -> tuple[int, str | None, bytes]:
    """One POST; what came back as (status, Retry-After, head of the body)."""
    reply = await client.call(
        "POST", yarl.URL(url), headers or [], body, timeout_s=timeout_s, limit=limit
    )
    return reply.status, reply.retry_after, reply.head


# --- what a call returns -----------------------------------------------------------------


async def test_a_call_returns_the_status_retry_after_and_body_it_got(
    http: WebhookClient, receiver: WebhookReceiver
) -> None:
    receiver.reply_with(Reply(503, body=b"busy", headers={"Retry-After": "7"}))

    got = await call(http, receiver.url("/hook?x=1"), [("X-Mine", "v")], b'{"a": 1}')

    assert got == (503, "7", b"busy")
    [request] = receiver.requests
    assert (request.method, request.path, request.query) == ("POST", "/hook", "x=1")
    assert (request.headers["x-mine"], request.body) == ("v", b'{"a": 1}')


async def test_the_body_is_read_up_to_the_limit_and_no_further(
    http: WebhookClient, receiver: WebhookReceiver
) -> None:
    size = 1024 * 1024
    # After 64 KiB the receiver waits to be released: reading on would hang the call.
    receiver.default = Reply(200, body=b"a" * size, chunk_size=16 * 1024, hold_after=64 * 1024)

    got = await asyncio.wait_for(call(http, receiver.url(), limit=10), 5)

    assert got == (200, None, b"a" * 10)
    assert receiver.bytes_sent[0] <= 64 * 1024 < size


async def test_a_body_that_stalls_keeps_what_arrived_once_a_read_times_out(
    http: WebhookClient, receiver: WebhookReceiver
) -> None:
    # Three pieces of 10 bytes, then nothing: each read is bounded by the timeout.
    receiver.default = Reply(200, body=b"x" * 100, chunk_size=10, hold_after=30)

    got = await asyncio.wait_for(call(http, receiver.url(), timeout_s=0.2), 5)

    assert got == (200, None, b"x" * 30)


async def test_a_body_read_to_its_end_keeps_the_connection_and_a_cut_one_closes_it(
    http: WebhookClient, receiver: WebhookReceiver
) -> None:
    # The third body is cut at the limit while most of it has not even been sent.
    unread = Reply(200, b"b" * 1024 * 1024, chunk_size=16 * 1024, hold_after=64 * 1024)
    receiver.reply_with(Reply(200, b"ok"), Reply(200, b"ok"), unread, Reply(200))

    for _ in range(4):
        await asyncio.wait_for(call(http, receiver.url(), limit=10), 5)

    first, second, cut, after = (r.client for r in receiver.requests)
    assert first is not None and after is not None
    assert first == second == cut, "a connection whose body was read whole is used again"
    assert after != cut, "a connection whose body was cut is not"


async def test_a_pooled_connection_the_server_closed_is_replaced_and_the_call_sent_again(
    http: WebhookClient,
) -> None:
    # Each connection answers one request and keeps itself open; a second request on it
    # meets a hang-up, as one does when the server closes an idle connection just as the
    # client reuses it.
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            for answered in (True, False):
                heads.append(await reader.readuntil(b"\r\n\r\n"))
                await reader.readexactly(2)  # the body, b"{}"
                if not answered:
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, LOOPBACK, 0)
    url = f"http://{LOOPBACK}:{server.sockets[0].getsockname()[1]}/hook"
    try:
        first = await call(http, url)
        second = await call(http, url)
    finally:
        server.close()
        await server.wait_closed()

    assert (first, second) == ((200, None, b"ok"), (200, None, b"ok"))
    # The second call went out twice: on the pooled connection, then on a new one.
    assert len(heads) == 3, heads


async def test_redirects_are_returned_not_followed(
    http: WebhookClient, receiver: WebhookReceiver
) -> None:
    receiver.reply_with(Reply(302, headers={"Location": receiver.url("/elsewhere")}))

    got = await call(http, receiver.url("/hook"))

    assert got == (302, None, b"")
    assert [r.path for r in receiver.requests] == ["/hook"]


async def test_no_cookie_is_kept_from_one_call_to_the_next(
    http: WebhookClient, receiver: WebhookReceiver
) -> None:
    receiver.reply_with(Reply(200, headers={"Set-Cookie": "session=tenant-a; Path=/"}))

    await call(http, receiver.url())
    await call(http, receiver.url())

    assert [r.headers.get("cookie") for r in receiver.requests] == [None, None]


async def test_proxy_variables_are_ignored(
    receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Through a proxy the address check would mean nothing; this one is not even there.
    nowhere = f"http://{LOOPBACK}:{free_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, nowhere)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    async with webhook_client(allow_private=True) as client:
        got = await call(client, receiver.url())

    assert got[0] == 200
    assert len(receiver.requests) == 1


# --- how a call fails ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw_server(answer: bytes) -> AsyncIterator[int]:
    """A TCP server on loopback that reads a request's head, writes `answer` as it is and
    hangs up; its port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, LOOPBACK, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def at_port(port: int) -> AsyncIterator[int]:
    yield port


@contextlib.asynccontextmanager
async def no_listener() -> AsyncIterator[int]:
    yield free_port()


@contextlib.asynccontextmanager
async def full_queue() -> AsyncIterator[int]:
    with never_accepting() as port:
        yield port


Scene = Callable[[WebhookReceiver], AbstractAsyncContextManager[int]]


def holding(receiver: WebhookReceiver) -> AbstractAsyncContextManager[int]:
    receiver.default = Reply(200, hold=True)
    return at_port(receiver.port)


SPLIT_HEADER = [("X-A", "a\r\nX-B: b")]  # a second header smuggled into a value

# (case, where the call goes, its headers, the kind, whether a retry may succeed)
FAILURES: list[tuple[str, Scene, Headers, str, bool]] = [
    ("nothing listens", lambda _: no_listener(), [], "connect", True),
    ("never accepted", lambda _: full_queue(), [], "connect_timeout", True),
    ("no answer", holding, [], "read_timeout", True),
    ("hung up", lambda _: raw_server(b""), [], "lost", True),
    ("not HTTP", lambda _: raw_server(b"NOT HTTP AT ALL\r\n\r\n"), [], "protocol", True),
    ("line break in a header", lambda r: at_port(r.port), SPLIT_HEADER, "unsendable", False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("scene", "headers", "kind", "retryable"),
    [pytest.param(*case[1:], id=case[0]) for case in FAILURES],
)
async def test_each_way_a_call_gets_no_response_is_one_kind_of_failure(
    http: WebhookClient,
    receiver: WebhookReceiver,
    scene: Scene,
    headers: Headers,
    kind: str,
    retryable: bool,
) -> None:
    async with scene(receiver) as port:
        with pytest.raises(CallFailed) as failed:
            await call(http, f"http://{LOOPBACK}:{port}/hook", headers, timeout_s=0.3)

    assert (failed.value.kind, failed.value.retryable) == (kind, retryable)
    assert failed.value.__cause__ is not None, "the original exception is kept as the cause"
    if kind == "unsendable":
        assert receiver.requests == []


async def test_waiting_for_a_free_connection_is_bounded_by_the_timeout(
    receiver: WebhookReceiver,
) -> None:
    receiver.default = Reply(200, hold=True)
    async with webhook_client(allow_private=True, max_connections=1) as client:
        first = asyncio.create_task(call(client, receiver.url()))
        await receiver.wait_for(1)  # the only connection is busy

        with pytest.raises(CallFailed) as failed:
            await call(client, receiver.url(), timeout_s=0.2)

        receiver.release()
        assert (await first)[0] == 200
    assert failed.value.kind == "connect_timeout"
    assert len(receiver.requests) == 1


# --- private addresses -------------------------------------------------------------------


async def test_the_client_vets_each_new_connection_itself(receiver: WebhookReceiver) -> None:
    # Called directly, with no Deliverer check before it: the client's own guard refuses.
    resolver = FakeResolver({"hook.example": [["127.0.0.1"]]})
    async with webhook_client(resolver=resolver) as client:
        with pytest.raises(RefusedAddress):
            await call(client, f"http://hook.example:{receiver.port}/hook")
    assert resolver.calls == ["hook.example"]
    assert receiver.requests == []


async def test_with_private_addresses_allowed_no_resolver_is_asked(
    receiver: WebhookReceiver,
) -> None:
    resolver = FakeResolver({})  # would fail any lookup
    async with webhook_client(allow_private=True, resolver=resolver) as client:
        got = await call(client, f"http://localhost:{receiver.port}/hook")
    assert got[0] == 200
    assert resolver.calls == []


async def test_a_private_address_written_as_an_ip_is_refused_by_the_client_itself(
    receiver: WebhookReceiver,
) -> None:
    async with webhook_client() as client:
        with pytest.raises(RefusedAddress):
            await call(client, f"http://127.0.0.1:{receiver.port}/hook")
    assert receiver.requests == []
