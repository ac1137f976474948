"""The API's one error body, its exception handlers, and how each route documents its errors.

Every error answers ``{"error": <short code>, "message": <what went wrong, what to do>}``;
the code follows the status (``CODES``). Validation errors answer 400, not FastAPI's 422, so
the OpenAPI spec is post-processed (``drop_422``) to say so.
"""
from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

MAX_BODY_BYTES = 64 * 1024

CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
         405: "method_not_allowed", 413: "too_large", 429: "too_many_requests", 503: "unavailable",
         504: "timeout"}


class ORJSONResponse(JSONResponse):
    """JSON responses of the API (numpy arrays serialise too)."""

    def render(self, content) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class Error(BaseModel):
    """The body of every error response."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"error": "not_found", "message": "unknown tenant 'nope'"}]})

    error: str = Field(..., description="Short code of the status: " + ", ".join(
        f"{code} ({status})" for status, code in CODES.items()) + ".")
    message: str = Field(..., description="What went wrong and what to do, for a human.")


# status -> (description, example message)
_DOCS: dict[int, tuple[str, str]] = {
    400: ("Invalid request: a parameter or the body breaks the schema or a rule; the message names it.",
          "user_ids: List should have at least 1 item after validation, not 0"),
    401: ("No key was sent: the tenant's key goes in X-API-Key, the admin key in X-Admin-Key.",
          "missing API key: send the tenant's key in X-API-Key"),
    403: ("The key sent is not allowed here.", "this key is not allowed to read tenant 'homefeed_ranking'"),
    404: ("The resource named in the request does not exist.", "unknown tenant 'nope'"),
    413: (f"The request body is over {MAX_BODY_BYTES} bytes (or its Content-Length is not a number).",
          f"request body over {MAX_BODY_BYTES} bytes"),
    429: ("Over the tenant's request rate (then Retry-After says when to retry) or its requests in flight.",
          "tenant 'homefeed_ranking' is over its rate of 100 requests/s; retry in 0.01s"),
    503: ("The KV layer is unavailable.", "KV layer unavailable: ConnectionError"),
    504: ("The request took over the tenant's timeout.",
          "tenant 'homefeed_ranking' request took over its 100 ms timeout"),
}

_RETRY_AFTER = {"Retry-After": {
    "description": "Seconds to wait before retrying; sent when the tenant's request rate is the limit.",
    "schema": {"type": "integer", "minimum": 1}}}


def error_responses(*statuses: int, notes: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses=`` entries for the errors it can answer, each with the ``Error``
    schema, a description (``notes`` replaces the generic one) and an example."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, message = _DOCS[status]
        if notes and status in notes:
            description = notes[status]
        entry: dict[str, Any] = {
            "model": Error, "description": description,
            "content": {"application/json": {"example": {"error": CODES[status], "message": message}}}}
        if status == 429:
            entry["headers"] = _RETRY_AFTER
        out[status] = entry
    return out


def error_body(status: int, message: str) -> dict:
    return {"error": CODES.get(status, "error"), "message": message}


async def validation_error(request: Request, exc: RequestValidationError) -> ORJSONResponse:
    if "json" not in request.headers.get("content-type", "") and request.method in ("POST", "PUT"):
        return ORJSONResponse(error_body(400, "send a JSON body with Content-Type: application/json"),
                              status_code=400)
    return ORJSONResponse(error_body(400, validation_message(exc.errors())), status_code=400)


def validation_message(problems) -> str:
    """One line naming each invalid field and what is wrong with it (pydantic's errors)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'] if p not in ('query', 'path', 'body'))}: {e['msg']}"
        for e in problems
    ) or "invalid request"


async def http_error(_request: Request, exc: HTTPException) -> ORJSONResponse:
    """Every HTTPException: the routes' and the framework's own (a body that does not parse,
    an unknown path, a method the path does not have: Allow says which)."""
    return ORJSONResponse(error_body(exc.status_code, exc.detail), status_code=exc.status_code,
                          headers=getattr(exc, "headers", None))


def install(app) -> None:
    """The handlers that turn validation errors and HTTPExceptions (Starlette's, of which
    FastAPI's is a subclass) into the one error body."""
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)


def drop_422(spec: dict) -> dict:
    """FastAPI documents a 422 for every route with parameters; this API answers those with 400
    (``validation_error``), documented by each route. Remove the 422s and their schemas."""
    for path in spec.get("paths", {}).values():
        for operation in path.values():
            if isinstance(operation, dict):
                operation.get("responses", {}).pop("422", None)
    schemas = spec.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return spec
