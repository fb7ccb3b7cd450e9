"""Signing in to the console with an API key (or a JWT), and signing out."""

from __future__ import annotations

import time
from typing import Annotated, Any

import jwt
from litestar import Request, get, post
from litestar.params import QueryParameter
from litestar.response import Redirect, Template

from scheduler_svc.api.routes import PoolDep
from scheduler_svc.console.access import (
    CSRF_FIELD,
    CSRF_STATE,
    SESSION_COOKIE,
    SESSION_TTL_S,
    VIEWER_STATE,
    SessionKeys,
    csrf_matches,
    is_https,
    session_claims,
    session_cookie,
)
from scheduler_svc.security.auth import Authenticator
from scheduler_svc.security.principals import Principal


def _next(value: str | None) -> str:
    """Where to go after signing in: a console page, never another site."""
    if value and value.startswith("/ui") and not value.startswith("/ui/login"):
        return value
    return "/ui"


def _form(request: Request[Any, Any, Any], **context: Any) -> Template:
    viewer = request.scope.get("state", {}).get(VIEWER_STATE)
    return Template(
        template_name="login.html",
        context={
            "viewer": viewer,
            "nav": "login",
            "csrf": request.scope.get("state", {}).get(CSRF_STATE) or "",
            **context,
        },
    )


@get("/login", name="console-login-form")
async def login_form(
    request: Request[Any, Any, Any],
    next: Annotated[str | None, QueryParameter(max_length=2000)] = None,
) -> Template | Redirect:
    """The sign-in form; someone already signed in (or open mode) goes on."""
    if isinstance(request.scope.get("user"), Principal):
        return Redirect(_next(next), status_code=303)
    return _form(request, next=_next(next), error=None)


@post("/login", name="console-login")
async def login(request: Request[Any, Any, Any], pool: PoolDep) -> Template | Redirect:
    """Exchange an API key (or a JWT) for a session cookie."""
    form = await request.form()
    key = str(form.get("key") or "").strip()
    target = _next(str(form.get("next") or ""))
    if not csrf_matches(request.scope, str(form.get(CSRF_FIELD) or "")):
        page = _form(request, next=target, error="This form has expired: please try again.")
        page.status_code = 403
        return page
    authenticator: Authenticator = request.app.state.authenticator
    client = request.client.host if request.client else "-"
    outcome = await authenticator.authenticate(pool, f"Bearer {key}", client) if key else None
    if not isinstance(outcome, Principal) or outcome.kind == "open":
        page = _form(request, next=target, error="That key is not valid, or has been revoked.")
        page.status_code = 401
        return page
    expires_at = time.time() + SESSION_TTL_S
    if outcome.kind == "jwt":  # verified above: its exp is only read here
        claims = jwt.decode(key, options={"verify_signature": False})
        expires_at = min(expires_at, float(claims["exp"]))
    keys: SessionKeys = request.app.state.console_keys
    value = await keys.sign(pool, session_claims(outcome, expires_at))
    response = Redirect(target, status_code=303)
    response.set_cookie(session_cookie(value, secure=is_https(request.scope)))
    return response


@post("/logout", name="console-logout")
async def logout(request: Request[Any, Any, Any]) -> Redirect:
    """End this browser's session (the cookie is dropped; the key stays valid)."""
    form = await request.form()
    response = Redirect("/ui/login", status_code=303)
    if csrf_matches(request.scope, str(form.get(CSRF_FIELD) or "")):
        response.delete_cookie(SESSION_COOKIE, path="/ui")
    return response
