"""Redaction: what counts as a credential, and masking it wherever it would show.

One set of rules for the three places a secret could leak: API responses (a target's
credential headers are shown as MASK), log lines (Redactor, a structlog processor) and
webhook output and errors (scrub: the signing secret and the target's own credential
header values). The form of our API keys (API_KEY) is defined here too, once.

Imports nothing from the package: `models`, `logs`, `security` and `targets` use it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

MASK = "***"
# Header values shown as MASK in every response: stored, never echoed.
SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key", "x-auth-token"}
)
# Words that make any header name a credential's, for scrubbing webhook output.
SECRET_WORDS = ("auth", "token", "secret", "key", "password", "cookie", "signature")
_SCRUB_MIN = 4  # shorter values are left alone in output: replacing "1" everywhere helps no one

# API keys look like sch_k3x9p2am_<43 characters>: the visible prefix (group 1) names the
# key in lists and logs; the rest is 32 random bytes (256 bits), base64url.
API_KEY = re.compile(r"\b(sch_[a-z0-9]{8})_[A-Za-z0-9_-]{43}")
KEY_PREFIX = re.compile(r"^sch_[a-z0-9]{8}$")

# Keys whose values are credentials wherever they appear in a log event (header names too).
_SENSITIVE_KEY = re.compile(r"authorization|cookie|api[-_]?key|secret|password|token", re.I)
# Credentials inside free text: an Authorization value, or one of our API keys.
_SCHEME_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
# The password of a URL such as a DATABASE_URL: scheme://user:password@host.
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


@functools.lru_cache(maxsize=4096)
def _sensitive(key: str) -> bool:
    return _SENSITIVE_KEY.search(key) is not None


# Fields the service itself fills with ids, numbers, times and fixed words: nothing a
# client sent can be in them, so the redactor (which runs on every line, two per run)
# skips them. Anything else is examined: user data, errors, and `event`, which for
# other libraries' records is their message text.
OWN_FIELDS = frozenset(
    {
        "level", "logger", "timestamp", "job_id", "run_id", "tick", "attempt", "worker",
        "status", "duration_ms", "retry_in_s", "request_id", "method", "client",
    }
)  # fmt: skip


class Redactor:
    """structlog processor: masks credentials in every value of an event, nested ones and
    exception text included, and any occurrence of the configured secrets.

    It runs on every line, so a clean string costs one search of one pattern and key
    names are judged once.
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        # Masking a value of a few characters would mangle ordinary words instead.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)
        suspects = [r"(?i:bearer|basic)\s", r"sch_[a-z0-9]{8}_", r"://[^:/@\s]+:[^@\s]+@"]
        self._suspect = re.compile("|".join(suspects + [re.escape(s) for s in self.secrets]))

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event_dict.items():
            if key not in OWN_FIELDS:
                event_dict[key] = self.value(key, value)
        return event_dict

    def value(self, key: Any, value: Any) -> Any:
        """`value` with credentials masked (all of it when `key` names a credential)."""
        if isinstance(key, str) and value and _sensitive(key):
            return MASK
        if isinstance(value, str):
            return value if self._suspect.search(value) is None else self._text(value)
        if isinstance(value, dict):
            return {k: self.value(k, v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(None, v) for v in value]
        return value

    def _text(self, text: str) -> str:
        text = _SCHEME_CREDENTIAL.sub(rf"\1 {MASK}", text)
        text = API_KEY.sub(rf"\1_{MASK}", text)
        text = _URL_PASSWORD.sub(rf"\1{MASK}@", text)
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text


def scrub(text: str, headers: Mapping[str, str], secret: str | None) -> str:
    """`text` with the signing secret and credential-like header values masked."""
    if not text:
        return text  # most replies have no body: nothing to look for
    values: set[str] = {secret} if secret else set()
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in SENSITIVE_HEADERS or any(word in lowered for word in SECRET_WORDS):
            values.add(value)
            values.update(part for part in value.split() if len(part) >= 8)
    for value in sorted((v for v in values if len(v) >= _SCRUB_MIN), key=len, reverse=True):
        text = text.replace(value, MASK)
    return text
