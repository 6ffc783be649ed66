"""API keys: nothing but /health and the docs is open; scopes nest read < write < admin; revocation is immediate."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import Service


def _client(service: Service, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=service.url, timeout=30, headers=headers)


@pytest.mark.integration
def test_keys_scopes_and_revocation(service: Service) -> None:
    anonymous = _client(service, None)
    assert anonymous.get("/health").status_code == 200
    assert anonymous.get("/openapi.json").status_code == 200
    for method, path in [("get", "/datasets"), ("get", "/models"), ("post", "/jobs"), ("post", "/search"),
                         ("get", "/keys"), ("post", "/indexes"), ("get", "/jobs/x/metrics")]:  # fmt: skip
        response = anonymous.request(method, path)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers.get("www-authenticate") == "Bearer"
    assert _client(service, "rt_wrong").get("/models").status_code == 401

    made = {}
    for scope in ("read", "write"):
        response = service.client.post("/keys", json={"name": f"{scope}-key", "scope": scope})
        assert response.status_code == 201, response.text
        made[scope] = response.json()
        assert made[scope]["key"].startswith("rt_") and made[scope]["prefix"] == made[scope]["key"][:10]
    listed = service.client.get("/keys").json()
    assert {k["id"] for k in listed} >= {made["read"]["id"], made["write"]["id"]}
    assert all("key" not in k for k in listed), "a stored key is never shown again"

    reader, writer = _client(service, made["read"]["key"]), _client(service, made["write"]["key"])
    assert reader.get("/models").status_code == 200
    forbidden = reader.post("/datasets", files={"file": ("x.jsonl", b"")})
    assert forbidden.status_code == 403 and "write" in forbidden.json()["detail"]
    assert reader.post("/keys", json={"name": "x", "scope": "admin"}).status_code == 403
    # A write key reaches the handler (here: a validation error), but cannot manage keys.
    assert writer.post("/datasets", files={"file": ("x.jsonl", b"")}).status_code == 422
    assert writer.get("/keys").status_code == 403
    assert reader.post("/jobs/nope/retry").status_code == 403  # retrying a job takes the write scope
    assert writer.post("/jobs/nope/retry").status_code == 404

    assert service.client.delete(f"/keys/{made['read']['id']}").json()["revoked_at"]
    assert reader.get("/models").status_code == 401
    for client in (anonymous, reader, writer):
        client.close()


@pytest.mark.integration
def test_first_start_without_bootstrap_key_prints_one_admin_key_once(tmp_path) -> None:
    import os
    import re

    from tests.integration.conftest import start_service, stop_service

    env = {"RETUNE_BOOTSTRAP_KEY": "", "RETUNE_QUEUE": "first-key-test"}
    os.environ.pop("RETUNE_BOOTSTRAP_KEY", None)
    proc, service = start_service("embedded", tmp_path, env)
    try:
        printed = re.findall(r"admin API key \(shown once, store it\): (rt_\S+)", service.log_path.read_text())
        assert len(printed) == 1, service.log_tail()
        assert _client(service, printed[0]).get("/keys").status_code == 200
        assert _client(service, None).get("/models").status_code == 401
    finally:
        stop_service(proc)
    port = service.url.rsplit(":", 1)[1]
    proc, again = start_service("embedded", tmp_path, env | {"RETUNE_PORT": port})
    try:
        assert "shown once" not in again.log_path.read_text(), "a second start must not make another key"
        assert _client(again, printed[0]).get("/models").status_code == 200
    finally:
        stop_service(proc)
