"""The Python client of the HTTP API: `Client` (blocking) and `AsyncClient` (asyncio).

Both speak the service's own wire types (`models.JobCreate`, `JobPatch`, `JobOut`,
`RunOut`), iterate the cursor pages of lists for you, retry what is safe to repeat
(RetryPolicy), and raise ProblemError, carrying the RFC 9457 document, for every error
answer and Unreachable when there is no answer. `core` holds what the two share.
Owns the `scheduler-svc jobs|runs` commands' HTTP side (the commands are `cli_api`);
may import `models` and `errors`, and nothing else of the package, so it runs without
the service's own dependencies being set up (no database, no settings).
"""

from scheduler_svc.client.aio import AsyncClient
from scheduler_svc.client.core import (
    API_KEY_ENV,
    DEFAULT_URL,
    NO_RETRIES,
    URL_ENV,
    ClientError,
    ProblemError,
    PutPlan,
    RetryPolicy,
    Unreachable,
)
from scheduler_svc.client.sync import Client

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_URL",
    "NO_RETRIES",
    "URL_ENV",
    "AsyncClient",
    "Client",
    "ClientError",
    "ProblemError",
    "PutPlan",
    "RetryPolicy",
    "Unreachable",
]
