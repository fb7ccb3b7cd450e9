"""Targets: the log line, webhook calls against a real local receiver, the SSRF guard, handlers."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.abc import ResolveResult

from scheduler_svc.targets import (
    USER_AGENT,
    Deliverer,
    Delivery,
    HandlerContext,
    Outcome,
    load_handlers,
    parse_retry_after,
    registered_handlers,
)
from scheduler_svc.targets.http import WebhookClient, webhook_client
from scheduler_svc.targets.netguard import GuardedResolver, RefusedAddress, resolve_public
from tests.helpers import FakeResolver, free_port
from tests.webhook_receiver import Reply, WebhookReceiver, serve_receiver

pytestmark = pytest.mark.timeout(20)

TICK = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
PUBLIC_V4 = "93.184.215.14"  # a global address; tests never really connect to it
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


def make_delivery(target: dict[str, Any] | None = None, **changes: Any) -> Delivery:
    delivery = Delivery(
        run_id=7,
        job_id=3,
        job_name="nightly report",
        tenant="acme",
        scheduled_for=TICK,
        trigger="schedule",
        attempt=1,
        attributes={"region": "eu", "n": 2},
        target=target or {"type": "log"},
        timeout_s=5.0,
        backoff_max_s=60.0,
    )
    return replace(delivery, **changes)


def http_target(url: str, **fields: Any) -> dict[str, Any]:
    return {"type": "http", "url": url, "method": "POST", "headers": {}, "body": None, **fields}


class ToLoopback(GuardedResolver):
    """Records the addresses the guard vetted for a new connection, and sends that
    connection to 127.0.0.1 instead."""

    def __init__(self, resolver: FakeResolver) -> None:
        super().__init__(resolver)
        self.calls: list[tuple[str, int]] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        vetted = await super().resolve(host, port, family)
        self.calls += [(answer["host"], answer["port"]) for answer in vetted]
        return [{**answer, "host": "127.0.0.1", "family": socket.AF_INET} for answer in vetted]


@pytest.fixture
def deliverer(http: WebhookClient) -> Deliverer:
    return Deliverer(http, allow_private=True)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for hook.example and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=hook.example", "-addext", "subjectAltName=DNS:hook.example"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


# log


async def test_log_target_writes_one_event_with_the_job_and_succeeds(deliverer: Deliverer) -> None:
    with structlog.testing.capture_logs() as logs:
        outcome = await deliverer.deliver(make_delivery(attempt=2))

    assert outcome == Outcome(ok=True)
    [event] = [e for e in logs if e["event"] == "job_executed"]
    assert event["log_level"] == "info"
    assert event["job_id"] == 3
    assert event["job_name"] == "nightly report"
    assert event["run_id"] == 7
    assert event["tick"] == TICK.isoformat()
    assert event["attempt"] == 2
    assert event["attributes"] == {"region": "eu", "n": 2}


# http: what is sent


async def test_webhook_gets_the_envelope_and_scheduler_headers(
    deliverer: Deliverer, receiver: WebhookReceiver
) -> None:
    receiver.default = Reply(200, body="thanks")
    target = http_target(receiver.url("/hook?x=1"), headers={"X-Custom": "yes"})

    outcome = await deliverer.deliver(make_delivery(target))

    assert outcome == Outcome(ok=True, output={"status_code": 200, "body": "thanks"})
    [request] = await receiver.wait_for(1)
    assert (request.method, request.path, request.query) == ("POST", "/hook", "x=1")
    assert request.json() == {
        "job_id": 3,
        "job_name": "nightly report",
        "run_id": 7,
        "scheduled_for": "2024-05-01T12:30:00Z",
        "attempt": 1,
        "attributes": {"region": "eu", "n": 2},
    }
    assert request.headers["content-type"] == "application/json"
    assert request.headers["idempotency-key"] == "run-7"
    assert request.headers["x-scheduler-job-id"] == "3"
    assert request.headers["x-scheduler-run-id"] == "7"
    assert request.headers["x-scheduler-attempt"] == "1"
    assert request.headers["user-agent"] == USER_AGENT
    assert USER_AGENT.startswith("scheduler-svc/")
    assert request.headers["x-custom"] == "yes"
    assert "x-scheduler-signature" not in request.headers


async def test_our_headers_win_over_user_headers_and_framing_headers_are_dropped(
    deliverer: Deliverer, receiver: WebhookReceiver
) -> None:
    headers = {
        "idempotency-key": "mine",
        "User-Agent": "curl/8",
        "X-Scheduler-Run-Id": "999",
        "Host": "internal.example",
        "Content-Length": "1",
        "Accept": "application/json",
    }
    await deliverer.deliver(make_delivery(http_target(receiver.url(), headers=headers)))

    [request] = await receiver.wait_for(1)
    assert request.headers.get_list("idempotency-key") == ["run-7"]
    assert request.headers.get_list("user-agent") == [USER_AGENT]
    assert request.headers.get_list("x-scheduler-run-id") == ["7"]
    assert request.headers["host"] == f"127.0.0.1:{receiver.port}"
    assert int(request.headers["content-length"]) == len(request.body) > 1
    assert request.headers["accept"] == "application/json"  # a default the user may change


async def test_idempotency_key_is_the_same_for_every_attempt_of_a_run(
    deliverer: Deliverer, receiver: WebhookReceiver
) -> None:
    target = http_target(receiver.url())
    for attempt in (1, 2):
        await deliverer.deliver(make_delivery(target, attempt=attempt))

    first, second = await receiver.wait_for(2)
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"] == "run-7"
    assert (first.json()["attempt"], second.json()["attempt"]) == (1, 2)
    assert make_delivery(run_id=8).idempotency_key == "run-8"


async def test_string_body_is_sent_as_is_as_text(
    deliverer: Deliverer, receiver: WebhookReceiver
) -> None:
    await deliverer.deliver(make_delivery(http_target(receiver.url(), body="héllo {not json")))

    [request] = await receiver.wait_for(1)
    assert request.body == "héllo {not json".encode()
    assert request.headers["content-type"] == "text/plain; charset=utf-8"


async def test_json_body_is_encoded_and_the_users_content_type_kept(
    deliverer: Deliverer, receiver: WebhookReceiver
) -> None:
    body = {"text": "ping", "items": [1, 2.5, None, True]}
    plain = http_target(receiver.url(), method="PUT", body=body)
    custom = http_target(
        receiver.url(), body=body, headers={"content-type": "application/cloudevents+json"}
    )
    await deliverer.deliver(make_delivery(plain))
    await deliverer.deliver(make_delivery(custom))

    first, second = await receiver.wait_for(2)
    assert first.method == "PUT"
    assert first.json() == second.json() == body
    assert first.headers["content-type"] == "application/json"
    assert second.headers.get_list("content-type") == ["application/cloudevents+json"]


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_get_and_delete_without_a_body_send_none(
    http: WebhookClient, receiver: WebhookReceiver, method: str
) -> None:
    deliverer = Deliverer(http, allow_private=True, webhook_secret="whsec_test")
    await deliverer.deliver(make_delivery(http_target(receiver.url(), method=method)))

    [request] = await receiver.wait_for(1)
    assert request.method == method
    assert request.body == b""
    assert "content-type" not in request.headers
    assert request.headers.get("content-length", "0") == "0"
    assert verify_signature(request.headers["x-scheduler-signature"], b"", "whsec_test")


def verify_signature(header: str, body: bytes, secret: str) -> bool:
    """How a receiver checks X-Scheduler-Signature."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256)
    fresh = abs(time.time() - int(fields["t"])) < 300
    return fresh and hmac.compare_digest(expected.hexdigest(), fields["v1"])


async def test_signature_is_an_hmac_of_timestamp_and_exact_body(
    http: WebhookClient, receiver: WebhookReceiver
) -> None:
    deliverer = Deliverer(http, allow_private=True, webhook_secret="whsec_test")
    await deliverer.deliver(make_delivery(http_target(receiver.url())))
    await deliverer.deliver(make_delivery(http_target(receiver.url(), body="raw text")))

    for request in await receiver.wait_for(2):
        signature = request.headers["x-scheduler-signature"]
        assert signature.startswith("t=")
        assert verify_signature(signature, request.body, "whsec_test")
        assert not verify_signature(signature, request.body + b" ", "whsec_test")
        assert not verify_signature(signature, request.body, "another secret")


# http: what the answer means


@pytest.mark.parametrize(
    ("status", "ok", "retryable"),
    [
        (200, True, True),
        (201, True, True),
        (204, True, True),
        (301, False, False),
        (302, False, False),
        (307, False, False),
        (400, False, False),
        (401, False, False),
        (404, False, False),
        (410, False, False),
        (422, False, False),
        (408, False, True),
        (429, False, True),
        (500, False, True),
        (502, False, True),
        (503, False, True),
        (504, False, True),
    ],
)
async def test_status_codes_decide_success_and_retry(
    deliverer: Deliverer, receiver: WebhookReceiver, status: int, ok: bool, retryable: bool
) -> None:
    body = "" if status == 204 else f"answer {status}"
    receiver.default = Reply(status, body=body, headers={"Location": receiver.url("/elsewhere")})

    outcome = await deliverer.deliver(make_delivery(http_target(receiver.url())))

    assert outcome.ok is ok
    assert outcome.output == {"status_code": status, "body": body}
    if not ok:
        assert outcome.retryable is retryable
        assert outcome.error is not None
        assert outcome.error.startswith(f"HTTP {status} from 127.0.0.1")
    if 300 <= status < 400:
        assert outcome.error == f"HTTP {status} from 127.0.0.1: redirects are not followed"
    assert [r.path for r in receiver.requests] == ["/hook"]  # a redirect is never followed


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("7", 7.0), ("0", 0.0), ("100000", 60.0), ("soon", None)],
)
async def test_retry_after_seconds_are_honoured_up_to_backoff_max(
    deliverer: Deliverer, receiver: WebhookReceiver, retry_after: str, expected: float | None
) -> None:
    receiver.default = Reply(429, headers={"Retry-After": retry_after})

    outcome = await deliverer.deliver(make_delivery(http_target(receiver.url())))

    assert (outcome.ok, outcome.retryable) == (False, True)
    assert outcome.retry_after_s == expected


async def test_retry_after_http_date_is_honoured_up_to_backoff_max(
    deliverer: Deliverer, receiver: WebhookReceiver
) -> None:
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=40), usegmt=True)
    late = format_datetime(datetime.now(UTC) + timedelta(hours=5), usegmt=True)
    receiver.reply_with(
        Reply(503, headers={"Retry-After": soon}), Reply(503, headers={"Retry-After": late})
    )
    target = http_target(receiver.url())

    first = await deliverer.deliver(make_delivery(target))
    second = await deliverer.deliver(make_delivery(target))

    assert first.retry_after_s is not None
    assert 35 <= first.retry_after_s <= 41
    assert second.retry_after_s == 60.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("120", 120.0),
        (" 5 ", 5.0),
        ("-5", None),
        ("1.5", None),
        ("٣", None),  # a digit, but not an ASCII one
        ("Wed, 01 May 2024 12:01:40 GMT", 100.0),
        ("Wed, 01 May 2024 11:00:00 GMT", 0.0),  # already past
        ("Wed, 01 May 2024 18:00:00 GMT", 3600.0),  # capped
        ("Wednesday, 01-May-24 12:01:40 GMT", 100.0),  # RFC 850 form
        ("not a date", None),
        ("", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after(value, cap_s=3600, now=now) == expected


async def test_only_the_first_4_KiB_of_a_huge_response_are_read(
    deliverer: Deliverer, receiver: WebhookReceiver
) -> None:
    size = 10 * 1024 * 1024
    # After 256 KiB the receiver stops until released: reading the whole body would hang here.
    receiver.default = Reply(200, body=b"a" * size, chunk_size=64 * 1024, hold_after=256 * 1024)

    outcome = await asyncio.wait_for(
        deliverer.deliver(make_delivery(http_target(receiver.url()))), 5
    )

    assert outcome.ok
    assert outcome.output == {"status_code": 200, "body": "a" * 4096}
    assert receiver.bytes_sent[0] <= 256 * 1024 < size


async def test_the_4_KiB_cut_drops_a_split_character_and_replaces_bad_bytes(
    deliverer: Deliverer, receiver: WebhookReceiver
) -> None:
    receiver.reply_with(Reply(200, body="x" + "é" * 3000), Reply(500, body=b"\xffok"))
    target = http_target(receiver.url())

    cut = await deliverer.deliver(make_delivery(target))
    bad = await deliverer.deliver(make_delivery(target))

    assert cut.output == {"status_code": 200, "body": "x" + "é" * 2047}
    assert bad.output == {"status_code": 500, "body": "\ufffdok"}


async def test_connection_refused_is_a_retryable_failure(deliverer: Deliverer) -> None:
    port = free_port()

    outcome = await deliverer.deliver(make_delivery(http_target(f"http://127.0.0.1:{port}/x")))

    assert outcome == Outcome(ok=False, error=f"connection refused: 127.0.0.1:{port}")


async def test_a_receiver_too_slow_to_answer_is_a_retryable_read_timeout(
    deliverer: Deliverer, receiver: WebhookReceiver
) -> None:
    receiver.default = Reply(200, hold=True)

    outcome = await deliverer.deliver(make_delivery(http_target(receiver.url()), timeout_s=0.2))

    assert outcome == Outcome(ok=False, error=f"read timeout: 127.0.0.1:{receiver.port}")


# the SSRF guard


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/hook",
        "http://localhost:{port}/hook",
        "http://[::1]:{port}/hook",
        "http://2130706433:{port}/hook",  # 127.0.0.1 as one decimal number
        "http://0x7f.1:{port}/hook",
        "http://hook.localhost:{port}/hook",
    ],
)
async def test_loopback_is_refused_without_allow_private(
    http: WebhookClient, receiver: WebhookReceiver, url: str
) -> None:
    deliverer = Deliverer(http, allow_private=False)

    outcome = await deliverer.deliver(make_delivery(http_target(url.format(port=receiver.port))))

    assert (outcome.ok, outcome.retryable) == (False, False)
    assert outcome.error is not None
    assert "refused" in outcome.error
    assert receiver.requests == []


@pytest.mark.parametrize(
    "host", ["2130706433", "0x7f.0.0.1", "0177.0.0.1", "127.1", "%31%32%37.0.0.1", "LocalHost."]
)
async def test_a_loopback_spelling_is_refused_at_call_time_whatever_dns_answers(
    http: WebhookClient, receiver: WebhookReceiver, host: str
) -> None:
    # The resolver calls every host public: only the address the spelling means can refuse it.
    resolver = FakeResolver({host: [[PUBLIC_V4]], host.lower(): [[PUBLIC_V4]]})
    deliverer = Deliverer(http, allow_private=False, resolver=resolver)

    outcome = await deliverer.deliver(
        make_delivery(http_target(f"http://{host}:{receiver.port}/hook"))
    )

    assert (outcome.ok, outcome.retryable) == (False, False)
    assert outcome.error is not None
    assert outcome.error.startswith("url points at a ")
    assert resolver.calls == []
    assert receiver.requests == []


async def test_a_name_resolving_to_a_private_address_is_refused_before_calling(
    http: WebhookClient,
) -> None:
    resolver = FakeResolver({"hook.example": [[PUBLIC_V4, "10.1.2.3"]]})
    deliverer = Deliverer(http, allow_private=False, resolver=resolver)

    outcome = await deliverer.deliver(make_delivery(http_target("https://hook.example/x")))

    assert outcome == Outcome(
        ok=False,
        error="refused: hook.example resolves to a private, loopback or link-local address, "
        "which is refused (SCHEDULER_WEBHOOK_ALLOW_PRIVATE)",
        retryable=False,
    )
    assert "10.1.2.3" not in (outcome.error or "")


async def test_a_failed_dns_lookup_is_a_retryable_failure(http: WebhookClient) -> None:
    resolver = FakeResolver({})
    deliverer = Deliverer(http, allow_private=False, resolver=resolver)

    outcome = await deliverer.deliver(make_delivery(http_target("https://nowhere.example/x")))

    assert (outcome.ok, outcome.retryable) == (False, True)
    assert outcome.error is not None
    assert outcome.error.startswith("DNS lookup failed for nowhere.example")


@pytest.mark.parametrize(
    "addresses",
    [
        ["127.0.0.1"],
        ["10.0.0.1"],
        ["192.168.1.1"],
        ["172.16.0.1"],
        ["169.254.169.254"],  # cloud metadata
        ["100.100.100.200"],  # shared address space (Alibaba metadata)
        ["0.0.0.0"],
        ["224.0.0.1"],
        ["::1"],
        ["fd00:ec2::254"],  # AWS metadata over IPv6
        ["fe80::1%1"],
        ["::ffff:127.0.0.1"],
        ["64:ff9b::a9fe:a9fe"],  # NAT64 of 169.254.169.254
        ["2002:a00:1::"],  # 6to4 of 10.0.0.1
        [PUBLIC_V4, "192.168.0.10"],  # one private answer is enough
        ["not-an-address"],
    ],
)
async def test_resolve_public_refuses_any_private_answer(addresses: list[str]) -> None:
    with pytest.raises(RefusedAddress, match=r"hook\.example"):
        await resolve_public(
            "hook.example", 443, resolver=FakeResolver({"hook.example": [addresses]})
        )


async def test_resolve_public_returns_public_answers() -> None:
    resolver = FakeResolver({"hook.example": [[PUBLIC_V4, PUBLIC_V6, "64:ff9b::808:808"]]})

    assert await resolve_public("hook.example", 443, resolver=resolver) == [
        PUBLIC_V4,
        PUBLIC_V6,
        "64:ff9b::808:808",
    ]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "::1", "2130706433"])
async def test_resolve_public_refuses_loopback_from_the_system_resolver(host: str) -> None:
    with pytest.raises(RefusedAddress):
        await resolve_public(host, 80)


async def test_resolve_public_raises_oserror_for_a_name_without_addresses() -> None:
    with pytest.raises(OSError, match="no addresses"):
        await resolve_public("hook.example", 80, resolver=FakeResolver({"hook.example": [[]]}))


async def test_a_public_name_is_called_on_the_address_that_was_vetted(
    receiver: WebhookReceiver,
) -> None:
    resolver = FakeResolver({"hook.example": [[PUBLIC_V4]]})
    connector = ToLoopback(resolver)
    async with webhook_client(guard=connector) as client:
        deliverer = Deliverer(client, allow_private=False, resolver=resolver)
        target = http_target(f"http://hook.example:{receiver.port}/hook")

        outcomes = [await deliverer.deliver(make_delivery(target)) for _ in range(2)]

    assert all(outcome.ok for outcome in outcomes)
    first, _ = await receiver.wait_for(2)
    assert first.headers["host"] == f"hook.example:{receiver.port}"
    # One connection, to the vetted address, kept alive for the second call.
    assert connector.calls == [(PUBLIC_V4, receiver.port)]


async def test_a_name_rebound_to_loopback_after_the_check_is_refused_at_connect(
    receiver: WebhookReceiver,
) -> None:
    # The Deliverer's check sees a public address; the connection's own lookup gets loopback.
    resolver = FakeResolver({"hook.example": [[PUBLIC_V4], ["127.0.0.1"]]})
    connector = ToLoopback(resolver)
    async with webhook_client(guard=connector) as client:
        deliverer = Deliverer(client, allow_private=False, resolver=resolver)
        target = http_target(f"http://hook.example:{receiver.port}/hook")

        outcome = await deliverer.deliver(make_delivery(target))

    assert (outcome.ok, outcome.retryable) == (False, False)
    assert outcome.error is not None
    assert outcome.error.startswith("refused: hook.example resolves to a private")
    assert resolver.calls == ["hook.example", "hook.example"]
    assert connector.calls == []
    assert receiver.requests == []


async def test_pinned_https_still_checks_the_certificate_against_the_host_name(
    certificate: tuple[Path, Path],
) -> None:
    import ssl

    cert, key = certificate
    trust = ssl.create_default_context(cafile=str(cert))
    resolver = FakeResolver({"hook.example": [[PUBLIC_V4]], "other.example": [[PUBLIC_V4]]})
    connector = ToLoopback(resolver)
    async with (
        serve_receiver(certfile=cert, keyfile=key) as receiver,
        webhook_client(verify=trust, guard=connector) as client,
    ):
        deliverer = Deliverer(client, allow_private=False, resolver=resolver)

        good = await deliverer.deliver(
            make_delivery(http_target(f"https://hook.example:{receiver.port}/hook"))
        )
        # Same address, same pool, but a name the certificate does not cover.
        wrong = await deliverer.deliver(
            make_delivery(http_target(f"https://other.example:{receiver.port}/hook"))
        )

    assert good.ok
    assert receiver.requests[0].headers["host"] == f"hook.example:{receiver.port}"
    assert (wrong.ok, wrong.retryable) == (False, True)
    assert wrong.error is not None
    assert wrong.error.startswith(f"TLS handshake with other.example:{receiver.port} failed")
    assert "mismatch" in wrong.error.lower()
    assert len(receiver.requests) == 1
    assert connector.calls == [(PUBLIC_V4, receiver.port)] * 2


# secrets


async def test_secrets_stay_out_of_errors_logs_and_output(
    http: WebhookClient, receiver: WebhookReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    token = "tok_abcdef1234567890"
    secrets = [token, "key-99999999", "whsec_topsecret"]
    headers = {"Authorization": f"Bearer {token}", "X-Api-Key": "key-99999999"}
    open_deliverer = Deliverer(http, allow_private=True, webhook_secret="whsec_topsecret")
    guarded = Deliverer(http, allow_private=False, webhook_secret="whsec_topsecret")
    echo = f"you sent Bearer {token} and key-99999999 signed with whsec_topsecret"
    receiver.reply_with(Reply(500, body=echo), Reply(404, body=echo), Reply(200, body=echo))
    url = receiver.url("/hook?token=" + token)
    cases = [
        (open_deliverer, http_target(url, headers=headers)),
        (open_deliverer, http_target(url, headers=headers)),
        (open_deliverer, http_target(url, headers=headers)),
        (open_deliverer, http_target(f"http://127.0.0.1:{free_port()}/", headers=headers)),
        (open_deliverer, http_target(url, headers={**headers, "X-Api-Key": "é" + token})),
        (guarded, http_target(url, headers=headers)),
    ]

    with structlog.testing.capture_logs() as logs:
        outcomes = [await deliverer.deliver(make_delivery(target)) for deliverer, target in cases]

    assert [o.ok for o in outcomes] == [False, False, True, False, False, False]
    assert outcomes[0].output == {
        "status_code": 500,
        "body": "you sent *** and *** signed with ***",
    }
    texts = [repr(o) for o in outcomes] + [repr(logs)] + list(capsys.readouterr())
    for text in texts:
        for secret in secrets:
            assert secret not in text
    assert "/hook" not in repr([o.error for o in outcomes])  # the URL may carry a token too


# handlers


async def test_a_registered_handler_gets_the_context_and_its_result_is_the_output(
    http: WebhookClient,
) -> None:
    seen: list[HandlerContext] = []

    async def report(context: HandlerContext) -> Any:
        seen.append(context)
        return {"rows": 12, "at": context.scheduled_for, "tags": ("a", "b")}

    deliverer = Deliverer(http, handlers={"report": report})
    delivery = make_delivery({"type": "handler", "name": "report"}, trigger="manual", attempt=2)

    outcome = await deliverer.deliver(delivery)

    assert outcome == Outcome(
        ok=True, output={"rows": 12, "at": "2024-05-01T12:30:00Z", "tags": ["a", "b"]}
    )
    assert seen == [
        HandlerContext(
            job_id=3,
            job_name="nightly report",
            run_id=7,
            tenant="acme",
            scheduled_for=TICK,
            trigger="manual",
            attempt=2,
            attributes={"region": "eu", "n": 2},
            idempotency_key="run-7",
        )
    ]


async def test_an_unknown_handler_fails_without_retry(http: WebhookClient) -> None:
    deliverer = Deliverer(http)

    outcome = await deliverer.deliver(make_delivery({"type": "handler", "name": "nope"}))

    assert outcome == Outcome(ok=False, error="no handler registered as 'nope'", retryable=False)


async def test_a_handler_returning_something_not_json_fails_without_retry(
    http: WebhookClient,
) -> None:
    async def odd(context: HandlerContext) -> Any:
        return {"thing": object()}

    deliverer = Deliverer(http, handlers={"odd": odd})

    outcome = await deliverer.deliver(make_delivery({"type": "handler", "name": "odd"}))

    assert (outcome.ok, outcome.retryable) == (False, False)
    assert outcome.error is not None
    assert outcome.error.startswith("handler 'odd' returned a value that is not JSON")


async def test_a_handler_that_raises_is_a_retryable_failure_on_one_line(
    http: WebhookClient,
) -> None:
    async def flaky(context: HandlerContext) -> Any:
        raise ConnectionError("upstream\nwent away")

    async def verbose(context: HandlerContext) -> Any:
        raise ValueError("x" * 5000)

    deliverer = Deliverer(http, handlers={"flaky": flaky, "verbose": verbose})

    with structlog.testing.capture_logs() as logs:
        flaky_outcome = await deliverer.deliver(make_delivery({"type": "handler", "name": "flaky"}))
        verbose_outcome = await deliverer.deliver(
            make_delivery({"type": "handler", "name": "verbose"})
        )

    assert flaky_outcome == Outcome(ok=False, error="ConnectionError: upstream went away")
    assert verbose_outcome.retryable
    assert verbose_outcome.error is not None
    assert verbose_outcome.error.startswith("ValueError: xxx")
    assert len(verbose_outcome.error) <= 1000
    assert [e["handler"] for e in logs if e["event"] == "handler_raised"] == ["flaky", "verbose"]


async def test_a_handler_that_is_not_async_fails_without_retry(
    http: WebhookClient,
) -> None:
    def blocking(context: HandlerContext) -> Any:
        return 1

    deliverer = Deliverer(http, handlers={"blocking": blocking})

    outcome = await deliverer.deliver(make_delivery({"type": "handler", "name": "blocking"}))

    assert outcome == Outcome(
        ok=False, error="handler 'blocking' is not an async function", retryable=False
    )


async def test_cancelling_a_delivery_cancels_the_handler(http: WebhookClient) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def forever(context: HandlerContext) -> Any:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    deliverer = Deliverer(http, handlers={"forever": forever})
    task = asyncio.create_task(
        deliverer.deliver(make_delivery({"type": "handler", "name": "forever"}))
    )
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()


async def test_an_unknown_target_type_fails_without_retry(deliverer: Deliverer) -> None:
    outcome = await deliverer.deliver(make_delivery({"type": "carrier-pigeon"}))

    assert outcome == Outcome(
        ok=False, error="unknown target type 'carrier-pigeon'", retryable=False
    )


@pytest.fixture
def handler_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An installed distribution (dist-info on sys.path) registering scheduler_svc.handlers."""
    module = f"scheduler_test_plugin_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(
        "async def greet(context):\n"
        "    return {'hello': context.job_name, 'attempt': context.attempt}\n"
        "NOT_A_FUNCTION = 42\n"
    )
    dist_info = tmp_path / "scheduler_test_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: scheduler-test-plugin\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "[scheduler_svc.handlers]\n"
        f"greet = {module}:greet\n"
        f"broken = {module}_missing:greet\n"
        f"constant = {module}:NOT_A_FUNCTION\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield module
    sys.modules.pop(module, None)


async def test_handlers_registered_as_entry_points_are_loaded_and_called(
    handler_plugin: str, http: WebhookClient
) -> None:
    with structlog.testing.capture_logs() as logs:
        handlers = load_handlers()
        deliverer = Deliverer(http)

    assert "greet" in handlers
    assert "broken" not in handlers
    assert "constant" not in handlers
    assert {"broken", "constant"} <= {e["handler"] for e in logs if e["log_level"] == "warning"}
    assert "greet" in deliverer.handler_names

    outcome = await deliverer.deliver(make_delivery({"type": "handler", "name": "greet"}))

    assert outcome == Outcome(ok=True, output={"hello": "nightly report", "attempt": 1})


async def test_handlers_given_in_config_take_precedence_over_entry_points(
    handler_plugin: str, http: WebhookClient
) -> None:
    async def greet(context: HandlerContext) -> Any:
        return "from config"

    handlers = registered_handlers({"greet": greet})
    deliverer = Deliverer(http, handlers=handlers)

    outcome = await deliverer.deliver(make_delivery({"type": "handler", "name": "greet"}))

    assert outcome == Outcome(ok=True, output="from config")
