"""The API's routes, one router a concern: ``features`` (POST /v1/features), ``users`` (raw
events, datasets), ``tenants`` (tenant admin, reload), ``ops`` (health, readiness, metrics).

Routes take what they need from ``request.app.state`` (set by ``serving.app.create_app``)
and from the dependencies in ``serving.auth``.
"""
from __future__ import annotations

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field

from usersignals import ids
from usersignals.events import DEFAULT_LIMITS

MAX_ID_CHARS = DEFAULT_LIMITS.max_id_chars
# The identifier rule (usersignals.ids) as JSON Schema: what the spec calls valid, the API accepts.
ID_RULE = (f"1 to {MAX_ID_CHARS} characters, none of {' '.join(ids.SPECIAL)}, whitespace, control or "
           "invisible characters.")
USER_ID_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS, "pattern": ids.ID_PATTERN}
ITEM_ID_SCHEMA = USER_ID_SCHEMA
TENANT_SCHEMA = {"type": "string", "minLength": 1, "maxLength": ids.MAX_NAME_CHARS, "pattern": ids.NAME_PATTERN}


def check_user_id(user_id: str, what: str) -> None:
    """400 naming the bad id and the rule, unless ``user_id`` is a valid id (``usersignals.ids``)."""
    problem = ids.id_problem(user_id, what, MAX_ID_CHARS)
    if problem is not None:
        raise HTTPException(400, problem)


def check_ids(values: list[str], what: str) -> None:
    """``check_user_id`` of a request's list of ids (user ids, item ids), in one scan when all are valid."""
    problem = ids.first_invalid_id(values, what, MAX_ID_CHARS)
    if problem is not None:
        raise HTTPException(400, problem)


class Event(BaseModel):
    """One stored event, as the indexing job wrote it (optional fields only when known)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [
        {"event_id": "e-981", "item_id": "i42", "ts": 1767225600000, "surface": "home", "dwell_ms": 5200,
         "features": {"category": "c1"}}]})

    event_id: str
    item_id: str
    ts: int = Field(..., description="Event time, epoch milliseconds.")
    surface: str | None = None
    query: str | None = None
    dwell_ms: int | None = None
    features: dict | None = Field(None, description="Item features stored or joined with the event.")
