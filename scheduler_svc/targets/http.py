"""How webhook calls go out: one small call over aiohttp's connection pool.

`WebhookClient.call` sends one request and returns its status, its Retry-After and
the first bytes of its body; every way a call can fail without a response is one
`CallFailed`, whose `kind` the Deliverer turns into a run's error. That is all a
webhook needs, and nothing more is built per call: at thousands of calls a second
the CPU per call is what the machine runs out of first. Building httpx's request and
response over the same aiohttp pool parsed and normalised the URL and headers twice
and read the body through another stream, which nearly doubled a delivery's CPU
(bench/README.md has the figures), so the service no longer builds them.

The session never follows redirects, keeps no cookies (one tenant's receiver must
not set a cookie another's call sends) and ignores proxy variables (through a proxy
the address check means nothing). Connections are pooled by host name, port and
TLS settings, so a kept-alive connection only ever carries calls to the host whose
certificate it verified. Unless private addresses are allowed, every new connection
resolves through `netguard.GuardedResolver`, which refuses private addresses and
hands aiohttp the vetted ones to connect to.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from types import TracebackType
from typing import Any, Literal

import aiohttp
import yarl

from scheduler_svc.targets.netguard import (
    GuardedResolver,
    RefusedAddress,
    Resolver,
    host_problem,
)

FailureKind = Literal[
    "connect_timeout",  # no connection within the timeout
    "read_timeout",  # connected, but the response did not come within the timeout
    "connect",  # refused, unreachable, DNS or TLS failure; the cause says which
    "lost",  # the connection broke while sending or before the response
    "protocol",  # what came back is not HTTP/1.1 aiohttp can parse
    "unsendable",  # the request itself cannot be sent (a line break in a header value)
]


class CallFailed(Exception):
    """A webhook call that got no response. The original exception is the cause."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def retryable(self) -> bool:
        """Whether the same call can succeed later; an unsendable request never will."""
        return self.kind != "unsendable"


@dataclass(frozen=True, slots=True)
class Reply:
    """What a webhook call came back with."""

    status: int
    retry_after: str | None  # the Retry-After header, as sent
    head: bytes  # the body's first bytes, up to the call's limit


# A request whose connection closed before any answer is sent again, once, at once, on a
# new connection. A pooled connection the server closed for idleness just as it was reused
# fails that way: uvicorn and Node close idle connections after 5 s, so a job firing
# about that often would lose calls to it (RFC 9112 §9.3.1). aiohttp does this itself,
# for idempotent methods only; every delivery carries an Idempotency-Key, so a POST may be
# sent again too (at least once, as after any failed attempt).
_SENT_AGAIN_ON = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


@lru_cache(maxsize=256)
def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    # The same few timeouts serve every call; one object each, not one per call.
    return aiohttp.ClientTimeout(
        total=None, connect=seconds, sock_connect=seconds, sock_read=seconds
    )


class WebhookClient:
    """Webhook calls over one aiohttp session, made on first use inside the running loop."""

    def __init__(self, connector: aiohttp.BaseConnector, *, guarded: bool = False) -> None:
        self._connector = connector
        # Guarded: the connector resolves names through a GuardedResolver. aiohttp never
        # asks a resolver about an address written in the URL, so those are judged here.
        self._guarded = guarded
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=self._connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def call(
        self,
        method: str,
        url: yarl.URL,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
        *,
        timeout_s: float,
        limit: int,
    ) -> Reply:
        """Send one request; its status, Retry-After and up to `limit` bytes of its body.

        `timeout_s` bounds waiting for a free connection, connecting, and each read.
        Raises CallFailed, or RefusedAddress when the host resolves to a private address.
        """
        if self._guarded and url.raw_host is not None:
            problem = host_problem(url.raw_host)
            if problem is not None:
                raise RefusedAddress(f"{url.raw_host} {problem}")
        with _as_call_failed():
            try:
                response = await self._send(method, url, headers, body, timeout_s)
            except _SENT_AGAIN_ON as exc:
                if isinstance(exc, aiohttp.ClientConnectorError):
                    raise  # no connection was made: nothing to send again on a new one
                response = await self._send(method, url, headers, body, timeout_s)
        try:
            head = await _read_head(response, limit)
        finally:
            # A body read to its end gives the connection back for reuse; otherwise it closes.
            response.release()
        return Reply(response.status, response.headers.get("Retry-After"), head)

    async def _send(
        self,
        method: str,
        url: yarl.URL,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
        timeout_s: float,
    ) -> aiohttp.ClientResponse:
        return await self._open_session().request(
            method,
            url,
            headers=headers,
            data=body,
            allow_redirects=False,
            timeout=_timeout(timeout_s),
        )

    async def aclose(self) -> None:
        """Close every pooled connection."""
        if self._session is not None:
            await self._session.close()
        else:
            await self._connector.close()

    async def __aenter__(self) -> WebhookClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _read_head(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most `limit` bytes of the body; stops reading there.

    A body that breaks off early keeps what arrived: the status already said how the call went.
    """
    head = b""
    try:
        while len(head) < limit:
            chunk = await response.content.read(limit - len(head))
            if not chunk:
                break
            head += chunk
    except (aiohttp.ClientError, OSError):
        pass
    return head


@contextmanager
def _as_call_failed() -> Iterator[None]:
    """aiohttp's exceptions as the CallFailed they are, the original kept as the cause."""
    try:
        yield
    except RefusedAddress:
        raise
    except aiohttp.ConnectionTimeoutError as exc:
        raise CallFailed("connect_timeout", str(exc)) from exc
    except aiohttp.ServerTimeoutError as exc:
        raise CallFailed("read_timeout", str(exc)) from exc
    except aiohttp.ClientConnectorError as exc:
        # Refused, unreachable, DNS and TLS failures; the OSError or SSLError is the cause.
        raise CallFailed("connect", str(exc)) from exc
    except aiohttp.ClientPayloadError as exc:
        raise CallFailed("protocol", str(exc)) from exc
    except aiohttp.ClientResponseError as exc:
        # aiohttp could not parse what came back.
        raise CallFailed("protocol", exc.message) from exc
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
        raise CallFailed("unsendable", str(exc)) from exc
    except (aiohttp.ClientConnectionError, OSError) as exc:
        # The connection broke: while sending, or while waiting for the response.
        raise CallFailed("lost", str(exc) or type(exc).__name__) from exc
    except ValueError as exc:
        # A header aiohttp will not send (a line break in a value).
        raise CallFailed("unsendable", str(exc)) from exc


def webhook_client(
    *,
    allow_private: bool = False,
    max_connections: int = 100,
    verify: ssl.SSLContext | bool = True,
    resolver: Resolver | None = None,
    guard: GuardedResolver | None = None,
) -> WebhookClient:
    """The client webhook calls go through.

    Unless allow_private, new connections resolve through `guard` (a GuardedResolver
    on `resolver` by default), which closes the DNS-rebinding window a check before
    the call leaves open. `verify` is an SSL context to trust, or True for the system's.
    """
    context = verify if isinstance(verify, ssl.SSLContext) else ssl.create_default_context()
    options: dict[str, Any] = {}
    if not allow_private:
        # No DNS cache: each new connection resolves and vets its host again.
        options = {"resolver": guard or GuardedResolver(resolver), "use_dns_cache": False}
    return WebhookClient(
        aiohttp.TCPConnector(limit=max_connections, ssl=context if verify else False, **options),
        guarded=not allow_private,
    )
