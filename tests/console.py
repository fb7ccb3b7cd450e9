"""Test helpers for the console (/ui) without a browser: its CSRF token, form posts, what
a page's HTML says, and the events of its live stream."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from typing import Any

import httpx

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def csrf_token(http: httpx.AsyncClient, page: str = "/ui/jobs") -> str:
    """The CSRF token of `page`'s forms (the client keeps the cookie it is bound to)."""
    response = await http.get(page)
    assert response.status_code == 200, response.text
    found = _CSRF.search(response.text)
    assert found is not None, f"{page} has no form with a CSRF token"
    return found.group(1)


async def post_form(
    http: httpx.AsyncClient, url: str, fields: dict[str, Any] | None = None, *, csrf: str | None
) -> httpx.Response:
    """Post a console form (urlencoded), with `csrf` as its token when given."""
    data = {k: str(v) for k, v in (fields or {}).items()}
    if csrf is not None:
        data["csrf"] = csrf
    return await http.post(url, data=data)


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.buttons: list[str] = []
        self.links: list[tuple[str, str]] = []
        self.srcs: list[str] = []
        self._in: str | None = None
        self._href = ""
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name in ("src", "href", "action", "hx-get"):
            if found.get(name):
                self.srcs.append(str(found[name]))
        if tag in ("button", "a"):
            self._in, self._href, self._text = tag, str(found.get("href") or ""), []

    def handle_data(self, data: str) -> None:
        if self._in is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            text = " ".join("".join(self._text).split())
            if tag == "button":
                self.buttons.append(text)
            else:
                self.links.append((text, self._href))
            self._in = None


def page_of(html: str) -> _Page:
    """The buttons, links and referenced URLs of an HTML page."""
    parsed = _Page()
    parsed.feed(html)
    return parsed


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """The events of a server-sent-event response, each as its fields (a comment's text
    under the name "")."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if fields:
                yield fields
            fields = {}
            continue
        name, _, value = line.partition(":")
        fields[name] = value.removeprefix(" ")
