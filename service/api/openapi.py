"""The OpenAPI document, completed so that every error a route can answer is documented.

Every operation documents its errors as application/problem+json (`Problem`): the statuses its
route lists, 422 for parameters or bodies (FastAPI's own 422 is a JSON `HTTPValidationError`,
which is not what goes out), 400 for a body that cannot be parsed, 401/403 where a key is
needed, and 503 wherever the database is used.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from flipwatch.service.api.problems import PROBLEM_MEDIA_TYPE
from flipwatch.service.api.schemas import Problem

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
DESCRIPTIONS = {
    "400": "Malformed request body",
    "401": "Missing or invalid API key",
    "403": "The key's role may not do this",
    "404": "Not found",
    "409": "Conflict",
    "413": "Request too large",
    "422": "Invalid request",
    "431": "Request headers too large",
    "503": "A dependency (database, broker) is unavailable; see Retry-After",
}
NO_DATABASE = {"/healthz"}


def complete_openapi(app: FastAPI) -> dict[str, Any]:
    """`app.openapi` replacement: FastAPI's document, every error as problem+json."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            _complete(path, operation)
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    app.openapi_schema = schema
    return schema


def _complete(path: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    codes = {code for code in responses if code[0] in "45"}
    if operation.get("parameters") or operation.get("requestBody"):
        codes.add("422")
    if operation.get("requestBody"):
        codes.add("400")
    if operation.get("security"):
        codes |= {"401", "403"}
    if path not in NO_DATABASE:
        codes.add("503")
    for code in sorted(codes):
        entry = responses.setdefault(code, {})
        entry["description"] = entry.get("description") or DESCRIPTIONS.get(code, "Problem")
        if entry["description"] == "Validation Error":
            entry["description"] = DESCRIPTIONS["422"]
        entry["content"] = {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_REF}}
        if code == "503":
            entry["headers"] = {
                "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
            }
