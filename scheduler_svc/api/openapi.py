"""How the OpenAPI document describes errors, authentication and strict bodies.

Authentication, rate limiting, validation and body limits answer on every route with
the same problem documents; a Litestar plugin declares them on each route as it is
registered (routes added later included), so the document never lags the behaviour.
"""

from __future__ import annotations

from http import HTTPStatus
from re import compile as re_compile
from typing import Any

from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.config.app import AppConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins import InitPlugin, ReceiveRoutePlugin
from litestar.routes import BaseRoute, HTTPRoute
from litestar.typing import FieldDefinition

from scheduler_svc.errors import Problem
from scheduler_svc.security.crosssite import BODY_METHODS
from scheduler_svc.security.middleware import EXEMPT_PATHS

PROBLEM_MEDIA_TYPE = "application/problem+json"
SECURITY_SCHEME = "BearerAuth"
_EXEMPT = re_compile(EXEMPT_PATHS)


def problem_responses(*status_codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI responses of problem documents for `status_codes`, for a route's `responses=`."""
    return {
        code: ResponseSpec(
            data_container=Problem,
            media_type=PROBLEM_MEDIA_TYPE,
            description=HTTPStatus(code).phrase,
            generate_examples=False,
        )
        for code in status_codes
    }


class ProblemDocsPlugin(InitPlugin, ReceiveRoutePlugin):
    """Declares the bearer scheme, and on each route the problems every route can answer:
    400 (parameters, body), 404 (ids in the path), 413 (body), 415 (a body that is not
    JSON, on every method that may carry one), and 401, 403, 421 (open mode, a foreign
    Host) and 429 for routes that need a principal. A route's own `responses=` win."""

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        if app_config.openapi_config is not None:
            components = app_config.openapi_config.components
            if isinstance(components, Components):
                components.security_schemes = {
                    **(components.security_schemes or {}),
                    SECURITY_SCHEME: SecurityScheme(
                        type="http",
                        scheme="bearer",
                        description="An API key (scheduler-svc keys create) or a JWT.",
                    ),
                }
        return app_config

    def receive_route(self, route: BaseRoute) -> None:
        if not isinstance(route, HTTPRoute):
            return
        for handler in route.route_handlers:
            codes: list[int] = []
            if route.path_parameters:
                codes += [400, 404]
            body = "data" in handler.parsed_fn_signature.parameters
            if body:
                codes += [400, 413]
            if handler.http_methods & BODY_METHODS:
                codes += [415]
            if _EXEMPT.match(route.path_format or "/") is None:
                codes += [400, 401, 403, 421, 429]
                handler.security = [*(handler.security or []), {SECURITY_SCHEME: []}]
            # Litestar documents its validation errors as its own JSON; ours are problems.
            handler.responses = {
                **problem_responses(*sorted(set(codes))),
                **(handler.responses or {}),
            }


class StrictStructSchemaPlugin(StructSchemaPlugin):
    """Litestar's msgspec Struct schemas, plus `additionalProperties: false` where the
    Struct refuses unknown fields, as every request body here does: clients (and the
    fuzzer) then know an unknown field is a 400, not something ignored."""

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Any:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        if field_definition.type_.__struct_config__.forbid_unknown_fields:
            schema.additional_properties = False
        return schema
