"""The API's routes, one router a concern: ``features`` (POST /v1/features), ``users`` (raw
events, datasets), ``tenants`` (tenant admin, reload), ``ops`` (health, readiness, metrics).

Routes take what they need from ``request.app.state`` (set by ``serving.app.create_app``)
and from the dependencies in ``serving.auth``.
"""
from __future__ import annotations

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field

from usersignals.events import DEFAULT_LIMITS

MAX_ID_CHARS = DEFAULT_LIMITS.max_id_chars
USER_ID_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}


def check_user_id(user_id: str, what: str) -> None:
    if not user_id or len(user_id) > MAX_ID_CHARS:
        raise HTTPException(400, f"{what} must be 1..{MAX_ID_CHARS} characters")


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
