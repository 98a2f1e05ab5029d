"""Bearer tokens and roles: every protected route, every way a token is bad."""

from __future__ import annotations

import base64
import json

import jwt
import pytest

from service.routes import is_forwarded
from tests.helpers import ADMIN_PASSWORD, PASSWORD, app_routes, error_text, is_public, ok_data

PROTECTED = [r for r in app_routes() if not is_public(r[1])]


def test_the_route_table_was_read():
    assert ("POST", "/api/node/node/register") in PROTECTED
    assert ("GET", "/api/user/all") in PROTECTED
    assert ("POST", "/api/user/login") not in PROTECTED


def assert_401(response) -> None:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.headers["WWW-Authenticate"] == "Bearer"
    if not is_forwarded(response.request.path):  # the model routes answer in OpenAI's shape
        error_text(response, 401)


@pytest.mark.parametrize(("method", "path"), PROTECTED, ids=lambda v: v)
def test_no_token_is_401_on_every_protected_route(client, redis, method, path):
    before = sorted(redis.keys("*"))
    response = client.open(path, method=method, json={})
    assert_401(response)
    assert sorted(redis.keys("*")) == before


@pytest.mark.parametrize(("method", "path"), PROTECTED, ids=lambda v: v)
def test_garbage_token_is_401_on_every_protected_route(client, method, path):
    assert_401(client.open(path, method=method, json={}, headers={"Authorization": "Bearer garbage"}))


# --- bad tokens, on one route ---

ROUTE = "/api/node/node/all"


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.fixture
def secret(client, token, redis) -> str:
    token("user")  # the generated secret exists once a token was issued
    return redis.get("nvllm:secret:jwt")


@pytest.fixture
def claims(clock, secret, stores) -> dict:
    """What a token for test-user carries."""
    now = int(clock())
    version = stores.users.load("test-user").token_version
    return {"sub": "test-user", "role": "user", "ver": version, "iat": now, "exp": now + 3600}


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer",
        "Bearer ",
        "Bearer garbage",
        "Bearer a.b.c",
        "Basic YWRtaW46YWRtaW4=",
        "Token abc",
    ],
)
def test_malformed_authorization_is_401(client, token, header):
    token("user")
    assert_401(client.get(ROUTE, headers={"Authorization": header}))


def test_a_good_token_is_accepted_with_any_scheme_case(client, token):
    ok_data(client.get(ROUTE, headers={"Authorization": f"bearer {token('user')}"}))


def test_tampered_signature_is_401(client, token):
    head, body, _ = token("user").split(".")
    forged = jwt.encode({"sub": "test-user"}, "x" * 32, algorithm="HS256").split(".")[2]
    assert_401(client.get(ROUTE, headers={"Authorization": f"Bearer {head}.{body}.{forged}"}))


def test_tampered_claims_are_401(client, token):
    head, _, signature = token("user").split(".")
    body = b64({"sub": "test-admin", "role": "admin", "iat": 0, "exp": 2**40})
    assert_401(client.get(ROUTE, headers={"Authorization": f"Bearer {head}.{body}.{signature}"}))


def test_alg_none_is_401(client, claims, secret):
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."
    assert_401(client.get(ROUTE, headers={"Authorization": f"Bearer {unsigned}"}))


def test_another_secret_is_401(client, claims, secret):
    other = jwt.encode(claims, "another-secret-of-enough-length-000", algorithm="HS256")
    assert_401(client.get(ROUTE, headers={"Authorization": f"Bearer {other}"}))


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_other_algorithms_with_the_right_secret_are_401(client, claims, secret, algorithm):
    other = jwt.encode(claims, secret, algorithm=algorithm)
    assert_401(client.get(ROUTE, headers={"Authorization": f"Bearer {other}"}))


def test_the_right_secret_and_claims_are_accepted(client, claims, secret):
    good = jwt.encode(claims, secret, algorithm="HS256")
    ok_data(client.get(ROUTE, headers={"Authorization": f"Bearer {good}"}))


@pytest.mark.parametrize("missing", ["sub", "role", "iat", "exp", "ver"])
def test_missing_claims_are_401(client, claims, secret, missing):
    del claims[missing]
    forged = jwt.encode(claims, secret, algorithm="HS256")
    assert_401(client.get(ROUTE, headers={"Authorization": f"Bearer {forged}"}))


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": "never"},
        {"exp": True},
        {"iat": "yesterday"},
        {"sub": "nobody"},
        {"ver": 0},
        {"ver": None},
        {"exp": float("nan")},
        {"exp": float("inf")},
        {"exp": 1e308},
        {"exp": 2**40},
        {"iat": 2**40 - 60, "exp": 2**40},
        {"jti": "not a jti"},
    ],
    ids=lambda v: repr(v),
)
def test_wrong_claims_with_the_right_secret_are_401(client, claims, secret, changes):
    forged = jwt.encode({**claims, **changes}, secret, algorithm="HS256")
    assert_401(client.get(ROUTE, headers={"Authorization": f"Bearer {forged}"}))


def test_a_token_issued_in_the_future_is_401(client, claims, secret, clock):
    now = int(clock())
    forged = jwt.encode({**claims, "iat": now + 3600, "exp": now + 7200}, secret, algorithm="HS256")
    assert_401(client.get(ROUTE, headers={"Authorization": f"Bearer {forged}"}))


def test_the_role_comes_from_the_user_not_the_token(client, claims, secret):
    forged = jwt.encode({**claims, "role": "admin"}, secret, algorithm="HS256")
    error_text(client.get("/api/user/all", headers={"Authorization": f"Bearer {forged}"}), 403)


def test_an_expired_token_is_401(client, token, clock, settings):
    headers = {"Authorization": f"Bearer {token('user')}"}
    clock.advance(settings.token_ttl - 1)
    ok_data(client.get(ROUTE, headers=headers))
    clock.advance(1)
    assert_401(client.get(ROUTE, headers=headers))
    assert "expired" in client.get(ROUTE, headers=headers).get_json()["error"]


def test_login_reports_the_token_lifetime(client, settings):
    data = ok_data(client.post("/api/user/login", json={"username": "admin", "password": ADMIN_PASSWORD}))
    assert data["expires_in"] == settings.token_ttl
    assert data["role"] == "admin"
    claims = jwt.decode(data["token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == settings.token_ttl
    assert claims["sub"] == "admin"


# --- roles ---

NODE = "/api/node/node"
NODE_BODY = {"node_id": "node-001", "node_status": "online"}


def node_calls(client, headers):
    """Each node route once, in an order where each call can succeed."""
    return [
        client.post(f"{NODE}/register", json=NODE_BODY, headers=headers),
        client.put(f"{NODE}/update/node-001", json={}, headers=headers),
        client.get(f"{NODE}/get_node/node-001", headers=headers),
        client.get(f"{NODE}/status/node-001", headers=headers),
        client.get(f"{NODE}/all", headers=headers),
        client.delete(f"{NODE}/delete/node-001", headers=headers),
    ]


def user_calls(client, headers):
    body = {"username": "someone", "password": PASSWORD, "role": "user"}
    return [
        client.post("/api/user/register", json=body, headers=headers),
        client.get("/api/user/all", headers=headers),
        client.put("/api/user/update/someone", json={"role": "worker"}, headers=headers),
        client.post("/api/user/token/someone", json={"ttl": 3600}, headers=headers),
        client.delete("/api/user/delete/someone", headers=headers),
    ]


@pytest.mark.parametrize("role", ["admin", "worker"])
def test_admin_and_worker_may_do_everything_with_nodes(client, auth_headers, role):
    for response in node_calls(client, auth_headers(role)):
        ok_data(response)


def test_user_may_only_read_nodes(client, auth_headers, token):
    ok_data(client.post(f"{NODE}/register", json=NODE_BODY, headers=auth_headers("worker")))
    user = auth_headers("user")
    for response in node_calls(client, user):
        if response.request.method == "GET":
            ok_data(response)
        else:
            assert "user" in error_text(response, 403)
            assert "WWW-Authenticate" not in response.headers
    # Nothing the user tried changed the node.
    data = ok_data(client.get(f"{NODE}/get_node/node-001", headers=user))
    assert data["update_time"] == data["create_time"]


def test_admin_may_manage_users(client, auth_headers):
    for response in user_calls(client, auth_headers("admin")):
        ok_data(response)


@pytest.mark.parametrize("role", ["worker", "user"])
def test_others_may_not_manage_users(client, auth_headers, stores, role):
    for response in user_calls(client, auth_headers(role)):
        error_text(response, 403)
    assert [u.username for u in stores.users.load_all()] == ["admin", f"test-{role}"]


# --- revocation ---


def test_removing_a_user_revokes_its_tokens_within_seconds(client, auth_headers, clock):
    worker = auth_headers("worker")
    ok_data(client.get(ROUTE, headers=worker))
    ok_data(client.delete("/api/user/delete/test-worker", headers=auth_headers("admin")))
    clock.advance(2.1)  # past the per-instance cache of user records
    assert_401(client.get(ROUTE, headers=worker))


def test_a_new_password_revokes_old_tokens(client, auth_headers, clock):
    worker = auth_headers("worker")
    ok_data(client.get(ROUTE, headers=worker))
    body = {"password": "a-brand-new-password"}
    ok_data(client.put("/api/user/update/test-worker", json=body, headers=auth_headers("admin")))
    clock.advance(2.1)
    assert_401(client.get(ROUTE, headers=worker))
    error_text(client.post("/api/user/login", json={"username": "test-worker", "password": PASSWORD}), 401)
    login = client.post("/api/user/login", json={"username": "test-worker", **body})
    ok_data(client.get(ROUTE, headers={"Authorization": f"Bearer {ok_data(login)['token']}"}))


def test_a_new_role_revokes_old_tokens(client, auth_headers, clock):
    worker = auth_headers("worker")
    ok_data(client.put("/api/user/update/test-worker", json={"role": "user"}, headers=auth_headers("admin")))
    clock.advance(2.1)
    assert_401(client.get(ROUTE, headers=worker))


def test_a_recreated_user_does_not_revive_old_tokens(client, auth_headers, clock):
    worker = auth_headers("worker")
    admin = auth_headers("admin")
    ok_data(client.delete("/api/user/delete/test-worker", headers=admin))
    body = {"username": "test-worker", "password": "another-password", "role": "worker"}
    ok_data(client.post("/api/user/register", json=body, headers=admin))  # within the same second
    clock.advance(2.1)
    assert_401(client.get(ROUTE, headers=worker))
    login = client.post("/api/user/login", json={"username": "test-worker", "password": "another-password"})
    ok_data(client.get(ROUTE, headers={"Authorization": f"Bearer {ok_data(login)['token']}"}))
