"""A small Python client for recommenders.

    from serving.client import UserSignalsClient
    c = UserSignalsClient("http://127.0.0.1:8000", tenant="homefeed_ranking", api_key="homefeed-dev-key")
    users = c.features(["u1", "u2"])                      # json: list of per-user dicts
    table = c.features_arrow(["u1", "u2"])                # model-ready: a pyarrow.Table, a row per user
    meta, arrays = c.features_arrays(["u1", "u2"])        # the same as numpy arrays [B, L] / [B, L, D]
    clicks = c.user_events("u1", "click", limit=10)       # one user's raw events, newest first (the same key)
"""
from __future__ import annotations

from urllib.parse import quote

import httpx

from serving.featurize import ARROW_CONTENT_TYPE, decode_arrow


class UserSignalsError(RuntimeError):
    def __init__(self, status: int, error: str, message: str):
        super().__init__(f"{status} {error}: {message}")
        self.status, self.error, self.message = status, error, message


class UserSignalsClient:
    def __init__(self, base_url: str, tenant: str, api_key: str, timeout_s: float = 1.0,
                 transport: httpx.BaseTransport | None = None):
        self.tenant = tenant
        self.http = httpx.Client(base_url=base_url, timeout=timeout_s, transport=transport,
                                 headers={"X-API-Key": api_key})

    def _post(self, body: dict, accept: str = "application/json") -> httpx.Response:
        return self._checked(self.http.post("/v1/features", json=body, headers={"Accept": accept}))

    @staticmethod
    def _checked(r: httpx.Response) -> httpx.Response:
        if r.status_code != 200:
            try:
                err = r.json()
            except ValueError:
                err = {"error": "error", "message": r.text[:200]}
            raise UserSignalsError(r.status_code, err.get("error", "error"), err.get("message", ""))
        return r

    def user_events(self, user_id: str, event_type: str, limit: int = 20) -> list[dict]:
        """A user's latest events of one type as stored, newest first (GET /v1/users/{id}/events,
        which any registered tenant's key may read)."""
        r = self.http.get(f"/v1/users/{quote(user_id, safe='')}/events", params={"type": event_type, "limit": limit})
        return self._checked(r).json()["events"]

    def features(self, user_ids: list[str], exclude_items: list[str] | None = None) -> list[dict]:
        body = {"tenant": self.tenant, "user_ids": user_ids, "format": "json", "exclude_items": exclude_items or []}
        return self._post(body).json()["users"]

    def _arrow(self, user_ids: list[str], exclude_items: list[str] | None) -> bytes:
        body = {"tenant": self.tenant, "user_ids": user_ids, "format": "arrow", "exclude_items": exclude_items or []}
        return self._post(body, accept=ARROW_CONTENT_TYPE).content

    def features_arrow(self, user_ids: list[str], exclude_items: list[str] | None = None):
        """The model-ready batch as a ``pyarrow.Table`` (layout in ``serving.featurize``)."""
        import pyarrow as pa

        return pa.ipc.open_stream(self._arrow(user_ids, exclude_items)).read_all()

    def features_arrays(self, user_ids: list[str], exclude_items: list[str] | None = None):
        """(metadata, {column: numpy array}): [B, L] per dataset field, [B, L, D] embeddings."""
        return decode_arrow(self._arrow(user_ids, exclude_items))

    def close(self) -> None:
        self.http.close()
