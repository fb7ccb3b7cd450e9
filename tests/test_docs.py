"""Swagger UI and the OpenAPI document, served with no request leaving the machine."""

from __future__ import annotations

import re

import httpx


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


async def test_openapi_document_covers_every_route(client: httpx.AsyncClient) -> None:
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
    expected = {
        ("GET", "/"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("POST", "/jobs"),
        ("GET", "/jobs"),
        ("GET", "/jobs/{job_id}"),
        ("PATCH", "/jobs/{job_id}"),
        ("DELETE", "/jobs/{job_id}"),
        ("POST", "/jobs/{job_id}/pause"),
        ("POST", "/jobs/{job_id}/resume"),
        ("GET", "/schedules/preview"),
    }
    assert expected <= operations.keys()
    assert all(op.get("operationId") for op in operations.values())
    create = operations[("POST", "/jobs")]
    assert "requestBody" in create
    header_names = {p["name"] for p in create.get("parameters", []) if p["in"] == "header"}
    assert "Idempotency-Key" in header_names
