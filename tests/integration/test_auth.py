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

    assert service.client.delete(f"/keys/{made['read']['id']}").json()["revoked_at"]
    assert reader.get("/models").status_code == 401
    for client in (anonymous, reader, writer):
        client.close()
