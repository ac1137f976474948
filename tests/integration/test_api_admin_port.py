"""``python -m serving`` with USERSIGNALS_API_ADMIN_PORT, started by the stack (one worker and two):
the admin routes answer on the admin port only (404 on the API's port, which a production Service
exposes), the public routes on the API's port only, and a change made on the admin port is served
on the API's port."""
import uuid

import httpx
import pytest

from infra.stack import Stack, private_settings
from infra.stack.probes import free_port

from .conftest import wait_until

pytestmark = pytest.mark.integration

ADMIN = {"X-Admin-Key": f"adm-{uuid.uuid4().hex}"}
TENANT_KEY = f"tnt-{uuid.uuid4().hex}"
# The routes only the admin key may call, with a request each would accept.
ADMIN_ROUTES = [("PUT", "/v1/tenants/split_check", {"json": {"sequences": {"clicks": 5}, "api_key": TENANT_KEY}}),
                ("GET", "/v1/tenants/homefeed_ranking/versions", {}),
                ("DELETE", "/v1/admin/users/u1", {}),
                ("POST", "/v1/admin/reload", {})]


@pytest.fixture(scope="module", params=[1, 2], ids=["1-worker", "2-workers"])
def api(request, tmp_path_factory):
    settings = private_settings(tmp_path_factory.mktemp("admin-port"), api_workers=request.param,
                                api_admin_port=free_port())
    stack = Stack(settings, components=("kv", "api"), env={"api": {"USERSIGNALS_ADMIN_KEY": ADMIN["X-Admin-Key"]}})
    stack.start()
    yield stack
    stack.stop()


def urls(stack) -> tuple[str, str]:
    s = stack.settings
    return f"http://{s.host}:{s.api_port}", f"http://{s.host}:{s.api_admin_port}"


def test_admin_routes_answer_on_the_admin_port_only(api):
    public, admin = urls(api)
    for method, path, kw in ADMIN_ROUTES:
        r = httpx.request(method, public + path, headers=ADMIN, timeout=10, **kw)
        assert r.status_code == 404, (method, path, r.text)
    for method, path, kw in ADMIN_ROUTES:
        r = httpx.request(method, admin + path, headers=ADMIN, timeout=10, **kw)
        assert r.status_code in (200, 202), (method, path, r.text)
    templates = {"/v1/tenants/{name}", "/v1/tenants/{name}/versions", "/v1/admin/users/{user_id}", "/v1/admin/reload"}
    assert set(httpx.get(f"{public}/openapi.json").json()["paths"]).isdisjoint(templates)
    assert templates <= set(httpx.get(f"{admin}/openapi.json").json()["paths"])


def test_public_routes_answer_on_the_api_port_only(api):
    public, admin = urls(api)
    body = {"tenant": "homefeed_ranking", "user_ids": ["u1"]}
    assert httpx.post(f"{public}/v1/features", json=body, headers={"X-API-Key": "homefeed-dev-key"}).status_code == 200
    assert httpx.post(f"{admin}/v1/features", json=body, headers={"X-API-Key": "homefeed-dev-key"}).status_code == 404
    events = "/v1/users/u1/events?type=click"
    assert httpx.get(public + events, headers=ADMIN).status_code == 200
    assert httpx.get(admin + events, headers=ADMIN).status_code == 404
    for base in (public, admin):  # probes and scrapes reach either port
        assert httpx.get(f"{base}/readyz").json()["status"] == "ready"


def test_a_tenant_put_on_the_admin_port_is_served_on_the_api_port(api):
    public, admin = urls(api)
    r = httpx.put(f"{admin}/v1/tenants/split_served", headers=ADMIN, timeout=10,
                  json={"sequences": {"clicks": 3}, "api_key": TENANT_KEY + "-2"})
    assert r.status_code == 200, r.text

    def served():
        r = httpx.post(f"{public}/v1/features", headers={"X-API-Key": TENANT_KEY + "-2"}, timeout=10,
                       json={"tenant": "split_served", "user_ids": ["u1"]})
        return r.status_code == 200

    wait_until(served, 10, 0.2, "the new tenant served on the API's port")  # every worker: within a sync
