"""Swagger UI and the OpenAPI document, served with no request leaving the machine."""

from __future__ import annotations

import re

import httpx
from litestar import Litestar
from litestar.routes import HTTPRoute

from scheduler_svc.app import create_app
from scheduler_svc.config import Settings


async def test_swagger_ui_loads_only_local_assets(client: httpx.AsyncClient) -> None:
    response = await client.get("/api")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "SwaggerUIBundle" in html
    assert not re.findall(r"https?://", html), "the page must not reach out to the internet"
    assets = re.findall(r"(?:src|href)=[\"']([^\"']+)", html)
    assert len(assets) >= 3
    for asset in assets:
        assert asset.startswith("/api/assets/"), asset
        fetched = await client.get(asset)
        assert fetched.status_code == 200, asset
        assert len(fetched.content) > 100


def app_operations(app: Litestar) -> set[tuple[str, str]]:
    """Every (method, path) the app routes, but the API docs' own pages, the console's
    (HTML, docs/console.md) and the methods every route answers by itself (OPTIONS,
    HEAD)."""
    docs = app.openapi_config.path if app.openapi_config else "/api"
    return {
        (method, route.path_format)
        for route in app.routes
        if isinstance(route, HTTPRoute)
        and route.path_format != docs
        and not route.path_format.startswith((f"{docs}/", "/ui/"))
        and route.path_format != "/ui"
        for handler in route.route_handlers
        for method in handler.http_methods
        if method not in {"OPTIONS", "HEAD"}
    }


async def test_openapi_document_covers_every_route(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    response = await client.get("/api/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    operations = {
        (method.upper(), path): op
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in {"get", "post", "patch", "delete", "put"}
    }
    # The routes of the app the client talks to (role api), read from the app itself.
    routes = app_operations(create_app(settings))
    assert {
        ("POST", "/jobs"),
        ("POST", "/jobs/{job_id}/trigger"),
        ("GET", "/jobs/{job_id}/runs"),
        ("GET", "/runs/{run_id}"),
    } <= routes
    assert operations.keys() == routes
    assert all(op.get("operationId") for op in operations.values())
    create = operations[("POST", "/jobs")]
    assert "requestBody" in create
    header_names = {p["name"] for p in create.get("parameters", []) if p["in"] == "header"}
    assert "Idempotency-Key" in header_names
