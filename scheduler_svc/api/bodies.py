"""Request bodies: how deep their JSON may nest, checked on the raw bytes before anything
recursive (msgspec, the jsonb encoder, the idempotency hash, the log redactor) sees them.

A field's value is level 1 and each array or object within it one more: 32 levels are
accepted, 33 refused, as a 400 naming the field. The check scans bytes, never
recursing, and costs an ordinary body two `bytes.count` calls.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from typing import Any

import msgspec
from litestar import Request

from scheduler_svc.errors import FieldError, InvalidRequest

MAX_DEPTH = 32
TOO_DEEP = f"nests arrays and objects more than {MAX_DEPTH} levels deep"

# The body's own object (or array) is one bracket deeper than its fields' values.
_MAX_BRACKETS = MAX_DEPTH + 1
# Brackets and quotes only, "[" and "{" both as "{", "]" and "}" both as "}".
_BRACES = bytes.maketrans(b"[]", b"{}")
_NOT_MARKS = bytes(sorted(set(range(256)) - set(b'[]{}"')))
# +1 for an opening bracket, -1 (as a signed byte) for a closing one, 0 for the rest.
_SIGNS = bytes(1 if c in b"[{" else 255 if c in b"]}" else 0 for c in range(256))


def nesting_error(body: bytes) -> FieldError | None:
    """The field whose value nests deeper than MAX_DEPTH in a JSON body, or None.

    Malformed JSON is read up to where a parser gives up (a closing bracket with nothing
    open); a backslash outside a string, which no parser reads past, may be refused.
    """
    # Each level opens with a bracket: few brackets, no deep nesting (nearly every body).
    if body.count(b"[") + body.count(b"{") <= _MAX_BRACKETS:
        return None
    # The brackets outside strings, all in C: escapes go, then the strings with no
    # bracket in them (each now a bare ""), then whatever strings are left.
    escaped = b"\\" in body
    text = body.replace(b"\\\\", b"").replace(b'\\"', b"") if escaped else body
    marks = text.translate(_BRACES, _NOT_MARKS).replace(b'""', b"")
    if b'"' in marks:
        marks = b"".join(marks.split(b'"')[::2])
    # A pass removes the innermost pairs, so a few passes clear an ordinary body; on a
    # deep one each pass removes little, and the depth is counted instead.
    left = marks
    for _ in range(_MAX_BRACKETS):
        shorter = left.replace(b"{}", b"")
        if not shorter:
            return None
        if len(shorter) > len(left) - len(left) // 8:
            break
        left = shorter
    if _too_deep(memoryview(marks.translate(_SIGNS)).cast("b")) is None:
        return None
    return _locate(body)


def _too_deep(signs: memoryview) -> int | None:
    """The index of the first bracket too deep, unless the brackets stop pairing before."""
    try:
        index = operator.indexOf(itertools.accumulate(signs), _MAX_BRACKETS + 1)
    except ValueError:
        return None
    if -1 in itertools.islice(itertools.accumulate(signs), index):
        return None  # a closing bracket with nothing open: a parser stops there
    return index


def _locate(body: bytes) -> FieldError | None:
    """Where a body with brackets left unpaired nests too deep, if it does."""
    # Escapes blanked at the same length, so every quote left delimits a string and
    # offsets still point into `body`; the even parts are what lies outside strings.
    parts = body.replace(b"\\\\", b"__").replace(b'\\"', b"__").split(b'"')
    signs = memoryview(b"".join(parts[::2]).translate(_SIGNS)).cast("b")
    too_deep = _too_deep(signs)
    if too_deep is None:
        return None
    # Back from there: the depth falls to 1 (2) just before the bracket that opens the
    # field's value (the value within that).
    path: list[str] = []
    for depth in (1, 2):
        back = itertools.accumulate(signs[too_deep::-1])
        opens = too_deep - operator.indexOf(back, _MAX_BRACKETS + 1 - depth)
        key = _key_before(body, parts, opens)
        if key is None:
            break
        path.append(key)
    return FieldError(".".join(path) or "body", TOO_DEEP)


def _key_before(body: bytes, parts: list[bytes], at: int) -> str | None:
    """The key whose value opens at `at` (an offset outside strings), if it has one."""
    outside_ends = list(itertools.accumulate(map(len, parts[::2])))
    even = bisect.bisect_right(outside_ends, at)
    within = at - (outside_ends[even - 1] if even else 0)
    if even == 0 or parts[2 * even][:within].strip() != b":":
        return None  # an array's element, or the body itself
    end = sum(map(len, parts[: 2 * even])) + 2 * even - 1  # the key's closing quote
    quoted = body[end - len(parts[2 * even - 1]) - 1 : end + 1]
    try:
        return msgspec.json.decode(quoted, type=str)
    except msgspec.DecodeError:
        return quoted[1:-1].decode("utf-8", "replace")


def check_nesting(body: bytes) -> None:
    """Raise InvalidRequest naming the field if `body` nests deeper than MAX_DEPTH."""
    error = nesting_error(body)
    if error is not None:
        raise InvalidRequest([error])


class JsonRequest(Request[Any, Any, Any]):
    """Litestar's Request, whose JSON body is checked for depth before it is decoded.

    Every body route's `data` is decoded here first (api.strict_body decodes the same,
    cached, bytes again afterwards), so this is the one place the limit needs.
    """

    __slots__ = ()

    async def json(self) -> Any:
        check_nesting(await self.body())
        return await super().json()
