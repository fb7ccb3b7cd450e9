"""The Deliverer: one attempt of a run, carried out by its target's kind."""

from __future__ import annotations

from collections.abc import Mapping

from scheduler_svc.targets.delivery import Delivery, Outcome, log_line, one_line
from scheduler_svc.targets.handlers import Handler, call_handler, registered_handlers
from scheduler_svc.targets.http import WebhookClient
from scheduler_svc.targets.netguard import Resolver
from scheduler_svc.targets.webhook import SigningSecrets, Webhook


class Deliverer:
    """Carries out attempts: a log line, a webhook call, or a registered handler.

    `deliver` turns every target-side failure into an Outcome; only bugs and
    cancellation escape it. The caller enforces the attempt's overall timeout.
    `handlers` are those a run may call by name (default: `registered_handlers()`).
    Webhooks are signed with `secrets` (their run's tenant's), or else `webhook_secret`.
    """

    def __init__(
        self,
        http: WebhookClient,
        *,
        webhook_secret: str | None = None,
        allow_private: bool = False,
        handlers: Mapping[str, Handler] | None = None,
        resolver: Resolver | None = None,
        secrets: SigningSecrets | None = None,
    ) -> None:
        self._webhook = Webhook(
            http,
            secret=webhook_secret or None,
            allow_private=allow_private,
            resolver=resolver,
            secrets=secrets,
        )
        self._handlers = dict(registered_handlers() if handlers is None else handlers)

    @property
    def handler_names(self) -> frozenset[str]:
        """The names a handler target may use."""
        return frozenset(self._handlers)

    async def deliver(self, delivery: Delivery) -> Outcome:
        """Carry out one attempt and say how it went."""
        kind = delivery.target.get("type")
        if kind == "log":
            return self._log(delivery)
        if kind == "http":
            return await self._webhook.call(delivery)
        if kind == "handler":
            return await call_handler(self._handlers, delivery)
        return Outcome(ok=False, error=one_line(f"unknown target type {kind!r}"), retryable=False)

    # log

    def _log(self, d: Delivery) -> Outcome:
        log_line(
            d.job_id,
            d.job_name,
            d.run_id,
            d.scheduled_for,
            d.attempt,
            d.trigger,
            d.tenant,
            d.attributes,
        )
        return Outcome(ok=True)
