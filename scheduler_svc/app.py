"""The Litestar application: routes, problem details, OpenAPI, and the lifespan owning the pool."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import structlog
from litestar import Litestar, Request, Response, get
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.plugins.problem_details import (
    ProblemDetailsConfig,
    ProblemDetailsPlugin,
)
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

from scheduler_svc import console, logs, metrics, store, tracing
from scheduler_svc.api import hot, jobs, problems
from scheduler_svc.api.alerts import list_alerts
from scheduler_svc.api.audit import list_audit, list_job_audit, provide_audit, search_runs
from scheduler_svc.api.bodies import JsonRequest
from scheduler_svc.api.by_key import JobsByKeyController
from scheduler_svc.api.openapi import ProblemDocsPlugin, StrictStructSchemaPlugin
from scheduler_svc.api.reads import ReadYourWrites, provide_reads
from scheduler_svc.api.routes import JobsController, PoolDep, TenantDep, get_run, preview_schedule
from scheduler_svc.api.runs import cancel_run
from scheduler_svc.config import Settings
from scheduler_svc.console.live import LiveHub
from scheduler_svc.engine.alerts import AlertSender
from scheduler_svc.engine.rollup import RunStats
from scheduler_svc.engine.worker import Worker
from scheduler_svc.models import Status
from scheduler_svc.security import auth, crosssite, middleware
from scheduler_svc.security.ratelimit import RateBudgets, rate_limit_middleware
from scheduler_svc.store import db, migrate
from scheduler_svc.store.db import Pool
from scheduler_svc.store.replica import ReadRouter
from scheduler_svc.targets import Deliverer, Handler, registered_handlers
from scheduler_svc.targets.http import WebhookClient, webhook_client

log = structlog.get_logger("scheduler_svc.app")

SWAGGER_ASSETS = "/api/assets"


@get("/", operation_id="root", tags=["health"], summary="Liveness (the old service's check)")
async def root() -> Status:
    return Status(status="ok")


@get("/healthz", operation_id="healthz", tags=["health"], summary="The process is alive")
async def healthz() -> Status:
    return Status(status="ok")


@get(
    "/readyz",
    operation_id="readyz",
    tags=["health"],
    summary="The database answers and its schema is current",
)
async def readyz(request: Request[Any, Any, Any], pool: PoolDep) -> Response[Status]:
    # The read replica is reported, never a reason to be unready: without it history
    # reads go to the primary, which alone decides.
    replica = _read_replica(request.app)
    try:
        schema_version = await store.schema_version_get(pool)
    except db.DATABASE_ERRORS as exc:
        log.warning("not_ready", error=str(exc))
        return Response(Status(status="database unavailable", **replica), status_code=503)
    if schema_version < migrate.SCHEMA_VERSION:
        return Response(Status("schema behind", schema_version, **replica), status_code=503)
    return Response(Status("ready", schema_version, **replica))


def _read_replica(app: Litestar) -> dict[str, Any]:
    """The read replica's fields of /readyz: none without one."""
    router: ReadRouter | None = getattr(app.state, "reads", None)
    status = router.status if router is not None else None
    if status is None:
        return {}
    return {"read_replica": status.state, "read_replica_lag_s": status.lag_s}


def _swagger_assets() -> Path:
    import swagger_ui

    return Path(swagger_ui.__file__).parent / "static"


def _stop_process_if_failed(app: Litestar, task: asyncio.Task[None]) -> None:
    """A replica whose worker died must not live on half alive: stop it, exit non-zero."""
    if task.cancelled() or task.exception() is None:
        return
    log.error("worker_failed", exc_info=task.exception())
    app.state.worker_failed = True
    os.kill(os.getpid(), signal.SIGTERM)


def create_app(
    settings: Settings,
    pool: Pool | None = None,
    http: WebhookClient | None = None,
    handlers: Mapping[str, Handler] | None = None,
) -> Litestar:
    """The application for `settings.role`. Pass `pool` and `http` to share them (tests);
    otherwise the lifespan opens its own. `handlers` add to the registered ones."""
    # Every role loads them: the API refuses a job naming another, the worker calls them.
    registry = registered_handlers(handlers)
    # Before anything that traces is built: each decides once whether to (tracing.py).
    tracing.start(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.worker_failed = False
        async with AsyncExitStack() as stack:

            async def open_pool(**options: Any) -> Pool:
                # The CLI has resolved the database and applied the schema before us.
                assert settings.database_url, "create_app needs a database_url or a pool"
                opened = await db.create_pool(
                    settings.database_url, worker_id=settings.worker_id, **options
                )
                stack.push_async_callback(opened.close)
                return opened

            app.state.pool = pool or await open_pool()
            # History reads go to the read replica, if any, while it keeps up; a worker
            # serves none.
            reads = ReadRouter(
                app.state.pool,
                settings.database_read_url if settings.role != "worker" else None,
                worker_id=settings.worker_id,
                max_lag_s=settings.read_max_lag_s,
                on_read=metrics.history_read,
                on_check=metrics.replica_checked,
            )
            await reads.start()
            stack.push_async_callback(reads.close)
            app.state.reads = reads
            # The console's counts of runs, this process's worker's and cancels alike:
            # flushed a last time after the worker has stopped (the stack unwinds first).
            app.state.run_stats = run_stats = RunStats(app.state.pool, settings.worker_id)
            run_stats.start()
            stack.push_async_callback(run_stats.stop)
            # The console's live updates: its LISTEN connection opens with the first stream.
            app.state.console_hub = None
            if settings.role != "worker" and settings.database_url is not None:
                hub = LiveHub(settings.database_url, worker_id=settings.worker_id)
                stack.push_async_callback(hub.close)
                app.state.console_hub = hub
            if settings.role != "api":
                client = http
                if client is None:
                    client = webhook_client(
                        allow_private=settings.webhook_allow_private,
                        max_connections=max(64, settings.concurrency),
                    )
                    stack.push_async_callback(client.aclose)
                # Scheduler lanes (3), the executor, maintenance, the alert sender, signing
                # secrets' look-ups and a spare.
                worker_pool = pool or await open_pool(max_size=8, durable=False)
                # Each tenant's signing secrets, cached for a few seconds (store/secrets.py).
                secrets = store.TenantSecrets(worker_pool, settings.webhook_secret)
                deliverer = Deliverer(
                    client,
                    webhook_secret=settings.webhook_secret,
                    allow_private=settings.webhook_allow_private,
                    handlers=registry,
                    secrets=secrets,
                )
                alerts = AlertSender(
                    worker_pool,
                    client,
                    secrets=secrets,
                    worker_id=settings.worker_id,
                    operator_url=settings.alert_url,
                    allow_private=settings.webhook_allow_private,
                    tenants=settings.tenants,
                    lease_margin_s=settings.lease_margin_s,
                )
                worker = Worker(settings, worker_pool, deliverer, alerts=alerts, stats=run_stats)
                worker.start().add_done_callback(partial(_stop_process_if_failed, app))
                stack.push_async_callback(worker.stop)
                # The CLI stops it at the signal, before the HTTP connections drain.
                app.state.worker = worker
            yield

    rules = jobs.Rules(
        min_interval_s=settings.min_interval_s,
        allow_private_webhooks=settings.webhook_allow_private,
        handler_names=frozenset(registry),
    )

    def provide_pool(request: Request[Any, Any, Any]) -> Pool:
        pool_: Pool = request.app.state.pool
        return pool_

    # tenant is resolved after pool, and rules after tenant, on purpose: Litestar resolves
    # dependencies that depend on nothing together, in an anyio task group with a task
    # each, which costs more per request than the three lookups themselves.
    def provide_tenant(request: Request[Any, Any, Any], pool: PoolDep) -> str:
        # The principal's tenant (auth.py); every store query is scoped by it.
        return middleware.tenant_of(request)

    def provide_rules(tenant: TenantDep) -> jobs.Rules:
        return rules

    # Read-your-writes with a read replica: write responses carry their WAL position.
    serves_reads = settings.database_read_url is not None and settings.role != "worker"

    favicon = f"<link rel='icon' type='image/png' href='{SWAGGER_ASSETS}/favicon-32x32.png'>"
    authenticator = auth.Authenticator(settings)
    budgets = RateBudgets(settings.rate_limit)  # one for every route (ratelimit.py)
    routes: list[ControllerRouterHandler] = [root, healthz, readyz, metrics.MetricsController]
    if settings.role != "worker":  # a worker serves nothing but its health and metrics
        routes += [
            JobsController,
            JobsByKeyController,
            get_run,
            list_audit,
            list_job_audit,
            search_runs,
            cancel_run,
            preview_schedule,
            list_alerts,
            console.router(),
            create_static_files_router(
                path=SWAGGER_ASSETS,
                directories=[_swagger_assets()],
                include_in_schema=False,
                name="swagger-assets",
            ),
        ]
    app = Litestar(
        route_handlers=routes,
        dependencies={
            "pool": Provide(provide_pool, sync_to_thread=False),
            "tenant": Provide(provide_tenant, sync_to_thread=False),
            "rules": Provide(provide_rules, sync_to_thread=False),
            "reads": Provide(provide_reads, sync_to_thread=False),
            "audit": Provide(provide_audit, sync_to_thread=False),
        },
        lifespan=[lifespan],
        # Outermost first: measure every request (401 and 429 included), resolve its
        # principal, count it against the rate limit, refuse it without the scope, then
        # (open mode) for a foreign Host and (any mode) for a body that is not JSON; with
        # a read replica, innermost, stamp writes with their WAL position. api/hot.py's
        # lane makes the same calls in this order for `GET /jobs/{id}`: keep them in step.
        middleware=[
            metrics.HTTP.middleware,
            DefineMiddleware(middleware.AuthMiddleware, authenticator=authenticator),
            rate_limit_middleware(budgets),
            middleware.ScopeGuard,
            DefineMiddleware(crosssite.CrossSiteGuard, allowed_hosts=settings.allowed_hosts),
            *([ReadYourWrites] if serves_reads else []),
            # With traces on, a span per request (Litestar runs it outermost); else nothing.
            *tracing.request_middleware(),
        ],
        plugins=[
            ProblemDocsPlugin(),
            StrictStructSchemaPlugin(),
            ProblemDetailsPlugin(
                ProblemDetailsConfig(
                    enable_for_all_http_exceptions=True,
                    exception_to_problem_detail_map=problems.PROBLEM_DETAIL_MAP,
                )
            ),
        ],
        exception_handlers={Exception: problems.internal_error},
        # The console's pages (console/templates).
        template_config=console.template_config(),
        request_max_body_size=settings.max_body_bytes,
        # JSON bodies are checked for depth before Litestar decodes them (bodies.py).
        request_class=JsonRequest,
        openapi_config=OpenAPIConfig(
            title="scheduler-svc",
            version=version("scheduler-svc"),
            description="Cron, interval and one-off jobs on PostgreSQL, run once per tick. "
            "The operator console is at [/ui](/ui).",
            path="/api",
            render_plugins=[
                SwaggerRenderPlugin(
                    path="/",
                    js_url=f"{SWAGGER_ASSETS}/swagger-ui-bundle.js",
                    css_url=f"{SWAGGER_ASSETS}/swagger-ui.css",
                    standalone_preset_js_url=f"{SWAGGER_ASSETS}/swagger-ui-standalone-preset.js",
                    favicon=favicon,
                )
            ],
        ),
        debug=False,
        # logs.configure owns logging; Litestar's default would install its own handler.
        logging_config=None,
    )
    # Around Litestar's own exception handling, not in the route's middleware: every
    # request gets its line and its id, 404s and failures of the middleware included.
    # `GET /jobs/{id}` is answered in front of the router (api/hot.py), unless traced:
    # its spans come from the route's middleware.
    handler = app.asgi_handler
    if not tracing.enabled():
        handler = hot.lane(app, handler, authenticator, budgets, settings.allowed_hosts)
    app.asgi_handler = logs.request_logging(handler)
    console.attach(app, authenticator, settings.allowed_hosts)
    return app
