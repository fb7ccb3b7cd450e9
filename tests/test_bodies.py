"""The JSON nesting limit on request bodies: where it draws the line, what it names, and
that it agrees with a parser's own reading on any bytes at all."""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler_svc.api.bodies import MAX_DEPTH, TOO_DEEP, nesting_error

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def arrays(levels: int, leaf: str = "1") -> str:
    return "[" * levels + leaf + "]" * levels


def objects(levels: int, key: str = "k") -> str:
    return f'{{"{key}":' * levels + "1" + "}" * levels


def job(**fields: str) -> bytes:
    return ("{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}").encode()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (job(attributes=objects(MAX_DEPTH)), None),
        (job(attributes=objects(MAX_DEPTH + 1)), "attributes.k"),
        (job(attributes='{"a":' + arrays(MAX_DEPTH - 1) + "}"), None),
        (job(attributes='{"a":' + arrays(MAX_DEPTH) + "}"), "attributes.a"),
        (job(attributes=arrays(MAX_DEPTH)), None),
        (job(attributes=arrays(MAX_DEPTH + 1)), "attributes"),
        (job(attributes=arrays(10_000)), "attributes"),
        (job(attributes="[" * 10_000), "attributes"),  # never closed: still too deep
        (job(target='{"type":"http","body":' + arrays(40) + "}"), "target.body"),
        (job(name='"x"', attributes='{"a":1,"b":{"c":2},"d":' + arrays(40) + "}"), "attributes.d"),
        (job(attributes='{"a\\"b\\\\":' + arrays(40) + "}"), 'attributes.a"b\\'),
        (job(attributes='{"\\u00e9t\\u00e9":' + arrays(40) + "}"), "attributes.été"),
        (arrays(MAX_DEPTH + 1).encode(), None),  # the body's own array is level 0
        (arrays(MAX_DEPTH + 2).encode(), "body"),
        (f'[1,{{"a":{arrays(40)}}}]'.encode(), "body"),
        # Brackets inside strings are text, whatever they hold.
        (job(name=json.dumps("[" * 100), attributes=json.dumps("]" * 100)), None),
        (job(name=json.dumps("]" * 100), attributes=arrays(MAX_DEPTH + 1)), "attributes"),
        (job(name=json.dumps('\\"[' * 50), attributes=json.dumps('"}' * 50)), None),
        # Malformed: a parser stops at the first stray closing bracket, so nothing after
        # it is read, however deep.
        (b"]" + arrays(40).encode(), None),
        (b'{"a":1}}' + arrays(40).encode(), None),
        (b'{"a":"' + b"[" * 100, None),  # an unterminated string
        (b'{"a":"\\' + b"[" * 100, None),
        (b"[" * 40 + b'"' + b"[" * 100, "body"),
    ],
)
def test_nesting_limit(body: bytes, field: str | None) -> None:
    error = nesting_error(body)
    assert (error.field if error else None) == field
    if error is not None:
        assert error.message == TOO_DEEP


def depth(value: Any) -> int:
    """Levels of arrays and objects within `value` (a scalar is 0)."""
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


def deepest(value: Any, fuel: int) -> Any:
    """`value` wrapped so that its nesting is exactly `fuel` more."""
    for index in range(fuel):
        value = [value] if index % 2 else {"w": value}
    return value


KEYS = st.text(alphabet='ab"\\[]{}:,é ', max_size=4)
SCALARS = st.none() | st.booleans() | st.integers() | st.text(alphabet='x"\\[]{}\n', max_size=6)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=12,
)


@given(VALUES, st.integers(0, 40), KEYS.filter(bool))
@PROPERTY
def test_only_values_past_the_limit_are_refused(value: Any, extra: int, key: str) -> None:
    field_value = deepest(value, extra)
    body = json.dumps({"name": "n", key: field_value}).encode()
    error = nesting_error(body)
    if depth(field_value) <= MAX_DEPTH:
        assert error is None
    else:
        assert error is not None
        assert error.field == key or error.field.startswith(f"{key}.")


def reader_depth(body: bytes) -> int:
    """How deep a JSON parser can nest before it finishes or gives up: a byte-by-byte
    reading of strings and brackets, stopping where a parser surely would (a closing
    bracket with nothing open, a backslash outside a string); at least a parser's depth."""
    level = deepest_level = 0
    in_string = escaped = False
    for byte in body:
        char = chr(byte)
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "\\":
            break
        elif char in "[{":
            level += 1
            deepest_level = max(deepest_level, level)
        elif char in "]}":
            if level == 0:
                break
            level -= 1
    return deepest_level


@given(st.binary(max_size=40) | st.text(alphabet='[]{}"\\:,a ', max_size=120).map(str.encode))
@PROPERTY
def test_any_bytes_are_judged_as_a_reader_would(prefix: bytes) -> None:
    for body in (prefix, prefix + b"[" * 40, b"[" * 20 + prefix + b"[" * 20):
        refused = nesting_error(body) is not None
        if reader_depth(body) > MAX_DEPTH + 1:
            assert refused, body
        elif b"\\" not in body:  # an escape outside a string: refusing is harmless
            assert not refused, body


@given(VALUES)
@PROPERTY
def test_what_passes_decodes_without_recursing_deeply(value: Any) -> None:
    body = json.dumps(deepest(value, 30)).encode()
    if nesting_error(body) is None:
        assert depth(msgspec.json.decode(body)) <= MAX_DEPTH + 1


def test_hostile_bodies_cost_milliseconds_not_seconds() -> None:
    size = 64 * 1024
    bodies = [
        b'{"a":' + b"[]" * (size // 2 - 40) + b"[" * 40,  # too deep at the very end
        b'{"a":"' + b'\\"' * (size // 2 - 40) + b'"' + b"[" * 40,
        b'"' * (size - 40) + b"[" * 40,
        b'{"a":' + b'"x":' * (size // 4 - 20) + b"[" * 40,
        b"[" * size,
        b"[]" * (size // 2),
    ]
    for body in bodies:
        started = time.perf_counter()
        nesting_error(body)
        assert time.perf_counter() - started < 0.25, body[:40]
