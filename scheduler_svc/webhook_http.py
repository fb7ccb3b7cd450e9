"""How webhook calls go out: httpx's request and response types over aiohttp's connections.

httpx is the HTTP interface of the service (requests are built, responses read and
errors told apart as httpx's), but its own connection pool, httpcore, spends about
0.5 ms of CPU per call: at thousands of webhooks a second that is what the machine
runs out of first. aiohttp's pool does the same call for about a third of that (same
receiver, 32 calls in flight, bench notes in the README), so `AiohttpTransport` puts
it under httpx's transport interface. The Deliverer calls the transport directly:
an httpx client would add redirects, cookies and auth, which a webhook call must not
do anyway, at the cost of another 0.1 ms.

Connections are pooled by host name, port and TLS settings, so a kept-alive
connection only ever carries calls to the host whose certificate it verified. Unless
private addresses are allowed, every new connection resolves through
`netguard.GuardedResolver`, which refuses private addresses and hands aiohttp the
vetted ones to connect to.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx

from scheduler_svc.netguard import GuardedResolver, RefusedAddress, Resolver

# Header names aiohttp sets itself from the body it frames.
_FRAMING = frozenset({"content-length", "transfer-encoding"})
CHUNK_BYTES = 16 * 1024


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx's async transport interface over one aiohttp session."""

    def __init__(self, connector: aiohttp.BaseConnector) -> None:
        self._connector = connector
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        # Made on first use, inside the event loop that will run the calls.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=self._connector,
                # No cookies: one tenant's receiver must not set a cookie another's call sends.
                cookie_jar=aiohttp.DummyCookieJar(),
                # Proxy variables are ignored: through a proxy the address check means nothing.
                trust_env=False,
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` and return the response with its body still to be read."""
        timeout = request.extensions.get("timeout", {})
        headers = [
            (name, value)
            for name, value in request.headers.multi_items()
            if name.lower() not in _FRAMING
        ]
        with _as_httpx_errors(request):
            response = await self._open_session().request(
                request.method,
                str(request.url),
                headers=headers,
                data=request.content or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            )
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseBody(response, request),
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
            },
        )

    async def aclose(self) -> None:
        """Close every pooled connection."""
        if self._session is not None:
            await self._session.close()
        else:
            await self._connector.close()


class _ResponseBody(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors(self._request, reading=True):
            async for chunk in self._response.content.iter_chunked(CHUNK_BYTES):
                yield chunk

    async def aclose(self) -> None:
        # A body read to its end gives the connection back for reuse; otherwise it closes.
        self._response.release()


@contextmanager
def _as_httpx_errors(request: httpx.Request, *, reading: bool = False) -> Iterator[None]:
    """aiohttp's exceptions as the httpx ones they are, the original kept as the cause."""
    try:
        yield
    except RefusedAddress:
        raise
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc), request=request) from exc
    except aiohttp.ServerTimeoutError as exc:
        raise httpx.ReadTimeout(str(exc), request=request) from exc
    except aiohttp.ClientConnectorError as exc:
        # Refused, unreachable, DNS and TLS failures; the OSError or SSLError is the cause.
        raise httpx.ConnectError(str(exc), request=request) from exc
    except aiohttp.ClientPayloadError as exc:
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    except aiohttp.ClientResponseError as exc:
        # aiohttp could not parse what came back.
        raise httpx.RemoteProtocolError(exc.message, request=request) from exc
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
        raise httpx.UnsupportedProtocol(str(exc), request=request) from exc
    except (aiohttp.ClientConnectionError, OSError) as exc:
        # The connection broke: while sending, or while reading the response.
        error = httpx.ReadError if reading else httpx.WriteError
        raise error(str(exc) or type(exc).__name__, request=request) from exc
    except ValueError as exc:
        # A header aiohttp will not send (a line break in a value).
        raise httpx.LocalProtocolError(str(exc), request=request) from exc


def webhook_transport(
    *,
    allow_private: bool = False,
    max_connections: int = 100,
    verify: ssl.SSLContext | bool = True,
    resolver: Resolver | None = None,
    guard: GuardedResolver | None = None,
) -> AiohttpTransport:
    """The transport webhook calls go through.

    Unless allow_private, new connections resolve through `guard` (a GuardedResolver
    on `resolver` by default), which closes the DNS-rebinding window a check before
    the call leaves open. `verify` is an SSL context to trust, or True for the system's.
    """
    context = verify if isinstance(verify, ssl.SSLContext) else ssl.create_default_context()
    options: dict[str, Any] = {}
    if not allow_private:
        # No DNS cache: each new connection resolves and vets its host again.
        options = {"resolver": guard or GuardedResolver(resolver), "use_dns_cache": False}
    return AiohttpTransport(
        aiohttp.TCPConnector(limit=max_connections, ssl=context if verify else False, **options)
    )
