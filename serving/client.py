"""A small Python client for recommenders.

    from serving.client import UserSignalsClient
    c = UserSignalsClient("http://127.0.0.1:8000", tenant="homefeed_ranking", api_key="homefeed-dev-key")
    users = c.features(["u1", "u2"])                      # json: list of per-user dicts
    header, arrays = c.features_ufr(["u1", "u2"])         # model-ready numpy arrays [B, L, ...]
"""
from __future__ import annotations

import httpx

from serving.featurize import UFR_CONTENT_TYPE, decode_ufr


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
        r = self.http.post("/v1/features", json=body, headers={"Accept": accept})
        if r.status_code != 200:
            try:
                err = r.json()
            except ValueError:
                err = {"error": "error", "message": r.text[:200]}
            raise UserSignalsError(r.status_code, err.get("error", "error"), err.get("message", ""))
        return r

    def features(self, user_ids: list[str], exclude_items: list[str] | None = None) -> list[dict]:
        body = {"tenant": self.tenant, "user_ids": user_ids, "format": "json", "exclude_items": exclude_items or []}
        return self._post(body).json()["users"]

    def features_ufr(self, user_ids: list[str], exclude_items: list[str] | None = None):
        """(header, {name: numpy array}) in the layout documented in ``serving.featurize``."""
        body = {"tenant": self.tenant, "user_ids": user_ids, "format": "ufr", "exclude_items": exclude_items or []}
        return decode_ufr(self._post(body, accept=UFR_CONTENT_TYPE).content)

    def close(self) -> None:
        self.http.close()
