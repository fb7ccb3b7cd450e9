"""The API's hottest read, `GET /jobs/{id}`, without Litestar's per-request handler work.

For a route handler, Litestar resolves its dependencies, validates its arguments
against a signature model, then turns the Response it returns into an ASGIResponse,
re-encoding headers on the way: together more CPU than the read itself. A
`before_request` hook whose value is not None becomes the response and skips all of
that (Litestar's documented short-cut, as for a cache). `read_job` is that hook on
`get_job` (routes.py), which stays the route's declaration (OpenAPI, the id's bounds)
and answers whatever the hook leaves to it: an id out of bounds (400) and a job that
does not exist (404, a problem document), read again then.

Everything around the handler still runs: the middleware (metrics, principal, rate
limit, scope, Host), the request id and log line, the exception handlers. The answer
is the handler's, byte for byte (tests/test_api_hot.py compares them).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response
from litestar.response.base import ASGIResponse
from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

from scheduler_svc import store
from scheduler_svc.api.views import etag, job_out
from scheduler_svc.models import MAX_ID
from scheduler_svc.security.middleware import tenant_of

_encode = msgspec.json.Encoder().encode


async def read_job(request: Request[Any, Any, Any]) -> Response[Any] | None:
    """`GET /jobs/{id}`'s answer for a job of the caller's tenant; None leaves the
    request to the handler."""
    job_id = request.path_params["job_id"]
    if not 1 <= job_id <= MAX_ID:  # JobId's bounds: the handler refuses the rest
        return None
    row = await store.job_get(request.app.state.pool, tenant_of(request), job_id)
    if row is None:
        return None
    body = _encode(job_out(row))
    return Encoded(
        body,
        [
            (b"etag", etag(row).encode()),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
        ],
    )


class Encoded(Response[Any]):
    """A 200 whose JSON body and headers are encoded already: sent as they are.

    Litestar asks a Response for its ASGIResponse with the route's layers' headers,
    cookies and encoders; this application's layers set none, so there is nothing
    to add, and `to_asgi_response` refuses to drop anything if one ever does.
    """

    __slots__ = ("_sent",)

    def __init__(self, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        # Response.__init__ is skipped on purpose: nothing reads what it would set.
        self._sent = _Sent(body, headers)

    def to_asgi_response(
        self,
        app: Any,
        request: Request[Any, Any, Any],
        *,
        background: Any = None,
        cookies: Any = None,
        encoded_headers: Any = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: Any = None,
        status_code: int | None = None,
        type_encoders: Any = None,
    ) -> ASGIResponse:
        if background or cookies or encoded_headers or headers or is_head_response:
            raise RuntimeError("an Encoded response cannot carry what a layer adds")
        return self._sent


class _Sent(ASGIResponse):
    """ASGIResponse's two messages, made once; its constructor (which would encode
    the headers again) is skipped on purpose."""

    __slots__ = ("_body", "_start")

    def __init__(self, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self._start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": 200,
            "headers": headers,
        }
        self._body: HTTPResponseBodyEvent = {
            "type": "http.response.body",
            "body": body,
            "more_body": False,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(self._start)
        await send(self._body)
