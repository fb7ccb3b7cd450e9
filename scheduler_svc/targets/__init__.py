"""Targets: where a run goes, and everything between a run and its target.

- `delivery`: one attempt as its target sees it (Delivery), what came of it (Outcome),
  and the log target, which the scheduler may run in its own pass (RUN_IN_PASS);
- `dispatch`: the Deliverer, which carries out an attempt by its target's kind;
- `handlers`: registered Python handlers (the `scheduler_svc.handlers` entry points);
- `webhook`: the webhook request, its signature, and what a reply comes to;
- `http`: the small aiohttp client webhook calls go out through;
- `netguard`: which addresses a webhook may reach, at creation and at call time.

May import `config`, `errors`, `logs`, `models`, `redact` and `tracing` (the webhook's
traceparent); only the engine, the API (URL and handler-name checks), `app` and `cli`
import it.
"""

from scheduler_svc.targets.delivery import RUN_IN_PASS, Delivery, Outcome, log_line
from scheduler_svc.targets.dispatch import Deliverer
from scheduler_svc.targets.handlers import (
    HANDLER_GROUP,
    Handler,
    HandlerContext,
    load_handlers,
    registered_handlers,
)
from scheduler_svc.targets.webhook import (
    OUTPUT_LIMIT,
    USER_AGENT,
    envelope,
    parse_retry_after,
    sign,
)

__all__ = [
    "HANDLER_GROUP",
    "OUTPUT_LIMIT",
    "RUN_IN_PASS",
    "USER_AGENT",
    "Deliverer",
    "Delivery",
    "Handler",
    "HandlerContext",
    "Outcome",
    "envelope",
    "load_handlers",
    "log_line",
    "parse_retry_after",
    "registered_handlers",
    "sign",
]
