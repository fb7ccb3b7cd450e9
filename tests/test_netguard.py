"""The SSRF guard: a webhook host is judged by the address it means, in any spelling."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

from scheduler_svc.targets.netguard import (
    GuardedResolver,
    RefusedAddress,
    host_address,
    normal_host,
    resolve_public,
    url_problem,
)

PUBLIC_V4 = "93.184.215.14"  # a global address; tests never connect to it

# (id, host as written in the URL, the address it means or None for a local name)
PRIVATE_SPELLINGS: list[tuple[str, str, str | None]] = [
    ("dotted", "127.0.0.1", "127.0.0.1"),
    ("decimal", "2130706433", "127.0.0.1"),
    ("octal", "0177.0.0.1", "127.0.0.1"),
    ("octal as one number", "017700000001", "127.0.0.1"),
    ("hex parts", "0x7f.0.0.1", "127.0.0.1"),
    ("hex as one number", "0x7f000001", "127.0.0.1"),
    ("hex upper case", "0X7F.1", "127.0.0.1"),
    ("hex in every part", "0x7f.0x0.0x0.0x1", "127.0.0.1"),
    ("short, two parts", "127.1", "127.0.0.1"),
    ("short, three parts", "127.0.1", "127.0.0.1"),
    ("short octal", "0177.1", "127.0.0.1"),
    ("zero padded", "127.000.000.001", "127.0.0.1"),
    ("trailing dot", "127.0.0.1.", "127.0.0.1"),
    ("two trailing dots", "127.0.0.1..", "127.0.0.1"),
    ("full-width digits", "\uff11\uff12\uff17.\uff10.\uff10.\uff11", "127.0.0.1"),
    ("ideographic full stops", "127\u30020\u30020\u30021", "127.0.0.1"),
    ("percent-encoded digits", "%31%32%37.0.0.1", "127.0.0.1"),
    ("percent-encoded trailing dot", "127.0.0.1%2e", "127.0.0.1"),
    ("percent-encoded full-width", "%EF%BC%91%EF%BC%92%EF%BC%97.0.0.1", "127.0.0.1"),
    ("zero", "0", "0.0.0.0"),
    ("unspecified", "0.0.0.0", "0.0.0.0"),
    ("metadata", "169.254.169.254", "169.254.169.254"),
    ("metadata, decimal", "2852039166", "169.254.169.254"),
    ("metadata, hex", "0xa9fea9fe", "169.254.169.254"),
    ("private, octal", "012.0.0.1", "10.0.0.1"),
    ("private, short", "10.1", "10.0.0.1"),
    ("private, decimal", "3232235777", "192.168.1.1"),
    ("IPv6 loopback", "[::1]", "::1"),
    ("IPv6 unspecified", "[::]", "::"),
    ("IPv6 unique local", "[fd00::1]", "fd00::1"),
    ("IPv6 link-local with zone", "[fe80::1%25eth0]", "fe80::1%eth0"),
    ("IPv6 site-local", "[fec0::1]", "fec0::1"),
    ("IPv4-mapped, dotted", "[::ffff:127.0.0.1]", "::ffff:7f00:1"),
    ("IPv4-mapped, hex", "[::ffff:7f00:1]", "::ffff:7f00:1"),
    ("IPv4-mapped metadata", "[::ffff:a9fe:a9fe]", "::ffff:a9fe:a9fe"),
    ("IPv4-compatible", "[::127.0.0.1]", "::7f00:1"),
    ("NAT64 of loopback", "[64:ff9b::7f00:1]", "64:ff9b::7f00:1"),
    ("NAT64 local-use", "[64:ff9b:1::a00:1]", "64:ff9b:1::a00:1"),
    ("6to4 of loopback", "[2002:7f00:1::]", "2002:7f00:1::"),
    ("localhost", "localhost", None),
    ("localhost, upper case", "LOCALHOST", None),
    ("localhost, mixed case, trailing dot", "LocalHost.", None),
    ("localhost, trailing dot", "localhost.", None),
    ("localhost, circled letter", "\u24dbocalhost", None),
    ("localhost, full-width", "\uff2c\uff2f\uff23\uff21\uff2c\uff28\uff2f\uff33\uff34", None),
    ("localhost, percent-encoded", "loc%61lhost", None),
    ("a .localhost name", "hook.localhost", None),
    ("localhost.localdomain", "LOCALHOST.localdomain", None),
    ("metadata name", "metadata.google.internal.", None),
]


@pytest.mark.parametrize(
    ("host", "meaning"), [pytest.param(h, m, id=i) for i, h, m in PRIVATE_SPELLINGS]
)
def test_a_private_host_is_refused_at_creation_in_every_spelling(
    host: str, meaning: str | None
) -> None:
    problem = url_problem(f"http://{host}:9/hook", allow_private=False)

    assert problem is not None
    assert "refused (SCHEDULER_WEBHOOK_ALLOW_PRIVATE)" in problem
    if meaning is None:
        assert "local address" in problem
        assert host_address(host) is None
    else:
        assert host_address(host) == ipaddress.ip_address(meaning)


@pytest.mark.parametrize(
    ("host", "meaning"), [pytest.param(h, m, id=i) for i, h, m in PRIVATE_SPELLINGS]
)
def test_allow_private_lets_every_spelling_through(host: str, meaning: str | None) -> None:
    assert url_problem(f"http://{host}:9/hook", allow_private=True) is None


def test_credentials_before_a_private_host_are_refused() -> None:
    # The client calls the host after the @, not the name before it.
    problem = url_problem("http://example.com@127.0.0.1/", allow_private=False)

    assert problem == "must not carry credentials; put them in a header instead"
    assert url_problem("http://example.com@127.0.0.1/", allow_private=True) == problem


@pytest.mark.parametrize(
    ("host", "meaning"),
    [
        ("93.184.215.14", "93.184.215.14"),
        ("1572394766", "93.184.215.14"),  # decimal
        ("0x5db8d70e", "93.184.215.14"),
        ("[::ffff:93.184.215.14]", "::ffff:5db8:d70e"),
        ("[2606:2800:21f:cb07:6820:80da:af6b:8b2c]", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"),
        ("[64:ff9b::808:808]", "64:ff9b::808:808"),  # NAT64 of 8.8.8.8
        ("example.com", None),
        ("Example.COM.", None),
        ("localhost.example.com", None),
        ("\u2603.example", None),
        ("08.0.0.1", None),  # not octal, so a name (that no resolver finds)
        ("00x7f.1", None),
    ],
)
def test_public_hosts_and_names_pass_at_creation(host: str, meaning: str | None) -> None:
    assert url_problem(f"https://{host}/hook", allow_private=False) is None
    expected = None if meaning is None else ipaddress.ip_address(meaning)
    assert host_address(host) == expected


def test_creation_does_no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[Any] = []

    def no_dns(*args: Any, **kwargs: Any) -> Any:
        asked.append(args)
        raise AssertionError("DNS at creation")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(socket, "gethostbyname", no_dns)

    assert url_problem("https://hook.example/x", allow_private=False) is None
    assert url_problem("http://2130706433/x", allow_private=False) is not None
    assert asked == []


@pytest.mark.parametrize(
    ("host", "normal"),
    [
        ("LocalHost.", "localhost"),
        ("[::1]", "::1"),
        ("%31%32%37.0.0.1", "127.0.0.1"),
        ("\uff11\uff12\uff17.\uff10.\uff10.\uff11", "127.0.0.1"),
        ("\u24dbocalhost", "localhost"),
        ("b\u00fccher.example", "xn--bcher-kva.example"),
        ("Example.COM..", "example.com"),
    ],
)
def test_normal_host_spells_a_host_as_the_resolver_reads_it(host: str, normal: str) -> None:
    assert normal_host(host) == normal


class Lying:
    """A resolver that answers a public address for every host it is asked about."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        return [PUBLIC_V4]


# What aiohttp hands the connection's resolver: yarl's raw host, IDNA-encoded.
CALL_TIME_SPELLINGS = [
    "2130706433",
    "0x7f.0.0.1",
    "0177.0.0.1",
    "127.1",
    "2852039166",
    "localhost.",
]


@pytest.mark.parametrize("host", CALL_TIME_SPELLINGS)
async def test_resolve_public_judges_the_spelling_before_any_resolver(host: str) -> None:
    resolver = Lying()

    with pytest.raises(RefusedAddress, match="refused"):
        await resolve_public(host, 80, resolver=resolver)

    assert resolver.calls == []


@pytest.mark.parametrize("host", CALL_TIME_SPELLINGS)
async def test_the_connection_guard_refuses_every_spelling(host: str) -> None:
    resolver = Lying()

    with pytest.raises(RefusedAddress):
        await GuardedResolver(resolver).resolve(host, 80)

    assert resolver.calls == []


async def test_a_public_address_in_another_spelling_is_connected_to_as_meant() -> None:
    resolver = Lying()

    answers = await GuardedResolver(resolver).resolve("0x5db8d70e", 443)

    assert [(a["hostname"], a["host"], a["port"]) for a in answers] == [
        ("0x5db8d70e", PUBLIC_V4, 443)
    ]
    assert resolver.calls == []
