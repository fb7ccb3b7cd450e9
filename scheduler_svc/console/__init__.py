"""The operator console at /ui (SPEC §9): server-rendered pages of the API's own data and
controls, live through server-sent events, every asset served by the service.

- `access`: who is looking (open mode, session cookies, CSRF, security headers).
- `pages`: overview, jobs, job, run; `actions`: the form posts; `signin`: sign in/out.
- `forms`: the job form ↔ the API's bodies; `views`: what pages share.
- `describe`: schedules in plain English; `charts`: inline SVG; `render`: Jinja.
- `live`: one LISTEN connection per replica, batched, fanned out to the streams.

May import `api` (its write functions and rules: the console is another face of the
API), `audit`, `config`, `errors`, `models`, `schedule`, `security` and `store`; never
the engine.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog
from litestar import Litestar, Request, Response, Router, get
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.plugins.problem_details import ProblemDetailsException
from litestar.response import ServerSentEvent
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from scheduler_svc.console import actions, pages, signin
from scheduler_svc.console.access import ConsoleGuard, SessionKeys
from scheduler_svc.console.live import LiveHub, stream
from scheduler_svc.console.render import ENVIRONMENT, STATIC, error_page
from scheduler_svc.console.views import SharedRenders, ViewerDep, provide_viewer
from scheduler_svc.errors import SchedulerError
from scheduler_svc.security.auth import Authenticator

PATH = "/ui"
log = structlog.get_logger("scheduler_svc.console")


@get("/events", name="console-events")
async def events(request: Request[Any, Any, Any], viewer: ViewerDep) -> ServerSentEvent:
    """The live stream of this viewer's tenant: an event per batch of changes."""
    hub: LiveHub = request.app.state.console_hub
    return ServerSentEvent(stream(hub, viewer.tenant), headers={"X-Accel-Buffering": "no"})


def _error(request: Request[Any, Any, Any], exc: Exception) -> Response[str]:
    """Errors of console routes as HTML pages, never problem documents."""
    status = getattr(exc, "status_code", 500)
    if isinstance(exc, SchedulerError | HTTPException):
        detail = str(exc.detail)
    elif isinstance(exc, asyncpg.DataError):  # text the database cannot store (a NUL)
        status, detail = 400, "The form holds text the database cannot store, such as NUL."
    else:
        status, detail = 500, "The console failed to render this page; it has been logged."
        log.error("console_error", path=request.url.path, exc_info=exc)
    body = error_page(status, request.scope, detail)
    return Response(body, status_code=status, media_type="text/html")


def router() -> Router:
    """The /ui router: pages, form posts, the stream and the static assets."""
    return Router(
        path=PATH,
        route_handlers=[
            pages.overview,
            pages.jobs_list,
            pages.job_new,
            pages.job_page,
            pages.run_page,
            actions.create_job,
            actions.edit_job_form,
            actions.update_job,
            actions.trigger_job,
            actions.pause_job,
            actions.resume_job,
            actions.delete_job,
            actions.bulk,
            actions.cancel_run,
            actions.run_again,
            signin.login_form,
            signin.login,
            signin.logout,
            events,
            create_static_files_router(
                path="/static", directories=[STATIC], name="console-static", include_in_schema=False
            ),
        ],
        dependencies={"viewer": Provide(provide_viewer, sync_to_thread=False)},
        middleware=[ConsoleGuard],
        # Every kind the application answers with a problem document, and the rest.
        exception_handlers=dict.fromkeys(
            (
                HTTPException,
                ProblemDetailsException,
                ValidationException,
                SchedulerError,
                asyncpg.CharacterNotInRepertoireError,
                asyncpg.UntranslatableCharacterError,
                Exception,
            ),
            _error,
        ),
        include_in_schema=False,
    )


def attach(app: Litestar, authenticator: Authenticator, allowed_hosts: tuple[str, ...]) -> None:
    """What the console's guard, sign-in and live fragments keep in the app's state."""
    app.state.authenticator = authenticator  # sign-in checks keys as the API does
    app.state.console_keys = SessionKeys()  # the cookie signing key, read once
    app.state.allowed_hosts = allowed_hosts  # open mode's Host names
    app.state.console_renders = SharedRenders()  # live fragments, shared by streams


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """The console's templates, for the application's template_config."""
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(ENVIRONMENT))
