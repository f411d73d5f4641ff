"""The published OpenAPI document (`GET /openapi.json`): the admin routes as FastAPI describes
them, corrected to what the gateway really answers, plus the raw-ASGI OpenAI routes by hand.

Corrections: request validation fails with 400 in OpenAI's error shape (not FastAPI's 422),
and every operation may answer 400/401/403/404 in that shape. The document is what the fuzz
suite (tests/api/test_fuzz.py) generates requests from and checks replies against.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from faregate.wire.json_limits import MAX_JSON_DEPTH

ERROR = {"$ref": "#/components/schemas/OpenAIError"}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"], "additionalProperties": False,
    "description": "Every error, from every route, in OpenAI's shape",
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "additionalProperties": False,
        "properties": {
            "message": {"type": "string", "description": "What went wrong and how to fix it"},
            "type": {"type": "string", "examples": ["invalid_request_error", "auth_error"]},
            "param": {"type": ["string", "null"]},
            "code": {"type": "string"}}}},
}
ERROR_STATUSES = {
    "400": "Invalid request: the message names the field and what it must be",
    "401": "Missing, malformed, unknown, blocked or expired key",
    "403": "A virtual key on a master-key route, or reading another key's data",
    "404": "No such key (or route)",
    "413": "Body larger than general_settings.max_request_body_bytes",
    "429": "Budget exceeded or rate limited",
}
OPENAI_ERROR_STATUSES = ("400", "401", "413", "429", "502", "503")
_MESSAGE = {
    "type": "object", "required": ["role"],
    "properties": {
        "role": {"type": "string", "examples": ["system", "user", "assistant", "tool"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "null"},
                              {"type": "array", "items": {"type": "object"}}]}},
}
_OUTPUT_LIMIT = {"type": ["integer", "null"], "minimum": 0}
_COMMON = {
    "model": {"type": "string", "minLength": 1,
              "description": "A model_name from the config; see GET /v1/models"},
    "stream": {"type": ["boolean", "null"]},
    "stream_options": {"type": ["object", "null"],
                       "properties": {"include_usage": {"type": "boolean"}}},
    "max_tokens": _OUTPUT_LIMIT,
    "max_completion_tokens": _OUTPUT_LIMIT,
    "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 128},
}
_BODY_NOTE = (f"Only the fields listed are read by the gateway; every other field passes "
              f"through to the upstream. Arrays and objects may nest at most "
              f"{MAX_JSON_DEPTH} levels deep.")
OPENAI_BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "type": "object", "required": ["model", "messages"], "description": _BODY_NOTE,
        "properties": {**_COMMON, "messages": {"type": "array", "minItems": 1,
                                               "items": _MESSAGE}}},
    "/v1/completions": {
        "type": "object", "required": ["model", "prompt"], "description": _BODY_NOTE,
        "properties": {**_COMMON, "prompt": {"anyOf": [
            {"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "string"}},
            {"type": "array", "minItems": 1, "items": {"type": "integer"}}]}}},
    "/v1/embeddings": {
        "type": "object", "required": ["model", "input"], "description": _BODY_NOTE,
        "properties": {"model": _COMMON["model"], "input": {"anyOf": [
            {"type": "string"}, {"type": "array", "minItems": 1,
                                 "items": {"type": "string"}}]}}},
}


def publish_openapi(app: FastAPI) -> None:
    """Serve the corrected document (built once, on first request) at the app's openapi_url."""

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_document(app)
        return app.openapi_schema

    app.openapi = document      # type: ignore[method-assign]


def build_document(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes,
                      description="faregate's admin API (LiteLLM-compatible) and its "
                                  "OpenAI-compatible routes")
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["OpenAIError"] = ERROR_SCHEMA
    components["securitySchemes"] = {"bearer": {
        "type": "http", "scheme": "bearer",
        "description": "The master key, or a virtual key (sk-...) from /key/generate"}}
    public = {"/health/liveliness", "/health/liveness", "/health/readiness", "/openapi.json"}
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            if path not in public:
                operation["security"] = [{"bearer": []}]
                for status, description in ERROR_STATUSES.items():
                    responses.setdefault(status, _error_response(description))
    for path, body in OPENAI_BODIES.items():
        doc["paths"][path] = {"post": _openai_operation(path, body)}
    doc["paths"]["/v1/models"] = {"get": {
        "summary": "The models this key may use", "security": [{"bearer": []}],
        "parameters": [{"name": "return_wildcard_routes", "in": "query", "required": False,
                        "description": "true: also list wildcard patterns (openai/*)",
                        "schema": {"type": "boolean"}}],
        "responses": {"200": {"description": "OpenAI's model list", "content": {
            "application/json": {"schema": {"type": "object"}}}},
            "401": _error_response(ERROR_STATUSES["401"])}}}
    return doc


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR}}}


def _openai_operation(path: str, body: dict[str, Any]) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {
        "description": "The upstream's reply (a JSON object, or server-sent events when "
                       "stream is true)",
        "content": {"application/json": {"schema": {"type": "object"}},
                    "text/event-stream": {"schema": {"type": "string"}}}}}
    for status in OPENAI_ERROR_STATUSES:
        responses[status] = _error_response(ERROR_STATUSES.get(status, "The upstream failed"))
    return {"summary": f"OpenAI-compatible {path.removeprefix('/v1/')}",
            "security": [{"bearer": []}],
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": body}}},
            "responses": responses}
