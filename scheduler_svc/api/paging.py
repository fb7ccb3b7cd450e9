"""Cursor paging, shared by every list route: the opaque cursor of a page's last id and
the Link header to the next page (newest first, by keyset on id)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import urlencode

from litestar import Request

from scheduler_svc.errors import InvalidRequest
from scheduler_svc.models import MAX_ID


class HasId(Protocol):
    """A row of a page: jobs, runs, audit rows, alerts."""

    @property
    def id(self) -> int: ...


def encode_cursor(last_id: int) -> str:
    """The opaque cursor for the page after the row `last_id`."""
    return base64.urlsafe_b64encode(f"j{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The id a cursor continues below; InvalidRequest for anything we did not issue."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if raw[:1] == "j" and raw[1:].isdigit() and 0 < int(raw[1:]) <= MAX_ID:
            return int(raw[1:])
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise InvalidRequest.field("cursor", "is not a cursor from this API's Link header")


def next_link(request: Request[Any, Any, Any], rows: Sequence[HasId], limit: int) -> dict[str, str]:
    """The Link header to the next page, when `rows` (fetched limit + 1) has one."""
    if len(rows) <= limit:
        return {}
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
    query = urlencode([*params, ("cursor", encode_cursor(rows[limit - 1].id))])
    return {"Link": f'<{request.url.with_replacements(query=query)}>; rel="next"'}
