"""Login, rate limiting, the bootstrap admin, the shared secret, user management."""

from __future__ import annotations

import os

import fakeredis
import pytest

from main import create_app
from tests.helpers import ADMIN_PASSWORD, PASSWORD, error_text, ok_data

LOGIN = "/api/user/login"
ROUTE = "/api/node/node/all"


def login(client, username="admin", password=ADMIN_PASSWORD, addr="127.0.0.1"):
    return client.post(
        LOGIN, json={"username": username, "password": password}, environ_base={"REMOTE_ADDR": addr}
    )


def bearer(response) -> dict[str, str]:
    return {"Authorization": f"Bearer {ok_data(response)['token']}"}


# --- login ---


def test_bootstrap_admin_logs_in_with_the_configured_password(client):
    data = ok_data(login(client))
    assert set(data) == {"token", "expires_in", "role"}
    assert data["token"].count(".") == 2  # a JWT, as the seed shows
    assert data["role"] == "admin"
    ok_data(client.get(ROUTE, headers=bearer(login(client))))


def test_seed_login_without_a_password_is_400(client):
    response = client.post(LOGIN, json={"username": "admin"})
    assert error_text(response, 400).startswith("password:")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "admin", "password": ""}, "password"),
        ({"username": "admin", "password": None}, "password"),
        ({"username": "admin", "password": 12345678}, "password"),
        ({"username": "admin", "password": "x" * 1025}, "password"),
        ({"password": ADMIN_PASSWORD}, "username"),
        ({"username": "", "password": ADMIN_PASSWORD}, "username"),
        ({"username": "a:b", "password": ADMIN_PASSWORD}, "username"),
        ({"username": "admin\n", "password": ADMIN_PASSWORD}, "username"),
        ({"username": ["admin"], "password": ADMIN_PASSWORD}, "username"),
        ({"username": "admin", "password": ADMIN_PASSWORD, "role": "admin"}, "role"),
        ([], "body"),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_bad_login_bodies_are_400(client, redis, body, field):
    assert error_text(client.post(LOGIN, json=body), 400).startswith(f"{field}:")
    assert not [k for k in redis.keys("*") if "login_failures" in k]


def test_malformed_login_json_is_400(client):
    response = client.post(LOGIN, data=b"{", content_type="application/json")
    assert error_text(response, 400).startswith("body:")


@pytest.mark.parametrize(
    ("username", "password"),
    [("admin", "wrong-password"), ("admin", ADMIN_PASSWORD.upper()), ("nobody", ADMIN_PASSWORD)],
)
def test_wrong_credentials_are_401_and_say_the_same(client, username, password):
    response = login(client, username, password)
    assert error_text(response, 401) == "wrong username or password"
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_login_does_not_read_the_seed_usernames_as_accounts(client):
    error_text(client.post(LOGIN, json={"username": "user", "password": "user-password"}), 401)


# --- rate limiting ---


def test_failures_per_username_and_address_are_limited(client, token, settings, clock):
    token("user")
    for _ in range(settings.login_max_failures):
        error_text(login(client, password="wrong-password", addr="10.0.0.9"), 401)
    # From that address, even the right password waits, unchecked.
    response = login(client, addr="10.0.0.9")
    assert "too many" in error_text(response, 429)
    assert response.headers["Retry-After"] == "1"
    # Another username from there is not affected, nor the user elsewhere.
    ok_data(login(client, "test-user", PASSWORD, addr="10.0.0.9"))
    ok_data(login(client, addr="10.0.1.1"))
    # A back-off, not a lock: after the wait that address may try again.
    clock.advance(1)
    ok_data(login(client, addr="10.0.0.9"))


def test_the_back_off_doubles_up_to_the_window(client, settings, clock):
    for _ in range(settings.login_max_failures):
        error_text(login(client, password="wrong-password", addr="10.0.0.9"), 401)
    waits = []
    for _ in range(12):
        response = login(client, password="wrong-password", addr="10.0.0.9")
        waits.append(int(response.headers["Retry-After"]))
        clock.advance(waits[-1])
        error_text(login(client, password="wrong-password", addr="10.0.0.9"), 401)
    assert waits == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]


def test_hammering_does_not_lock_the_real_admin_out(client, settings):
    for _ in range(100):
        login(client, password="wrong-password", addr="10.0.0.66")
    ok_data(login(client, addr="10.0.0.67"))


def test_failures_per_address_alone_are_limited_higher(client, token, settings, clock):
    token("user")
    for i in range(settings.login_max_failures * 10):
        error_text(login(client, f"nobody-{i}", "wrong-password", addr="10.0.0.66"), 401)
    response = login(client, "test-user", PASSWORD, addr="10.0.0.66")
    error_text(response, 429)
    assert int(response.headers["Retry-After"]) >= 1
    ok_data(login(client, "test-user", PASSWORD, addr="10.0.0.67"))


def test_a_success_clears_the_count(client, settings):
    n = settings.login_max_failures
    for _ in range(n - 1):
        error_text(login(client, password="wrong-password", addr="10.0.0.1"), 401)
    ok_data(login(client, addr="10.0.0.1"))
    for _ in range(n - 1):
        error_text(login(client, password="wrong-password", addr="10.0.0.1"), 401)
    ok_data(login(client, addr="10.0.0.1"))


def test_the_limit_is_configurable(settings, redis, clock):
    app = create_app(settings.replace(login_max_failures=1), redis_client=redis, clock=clock)
    client = app.test_client()
    error_text(login(client, password="wrong-password"), 401)
    error_text(login(client), 429)


def test_failure_counters_expire_with_the_window(client, redis, settings):
    login(client, password="wrong-password", addr="10.0.0.5")
    counters = [k for k in redis.keys("*") if "login_failures" in k]
    assert len(counters) == 3  # per (username, address), per username, per address
    for key in counters:
        assert 0 < redis.ttl(key) <= settings.login_window


# --- the client address behind a reverse proxy ---


def test_x_forwarded_for_is_ignored_by_default(client, settings):
    for i in range(settings.login_max_failures):
        headers = {"X-Forwarded-For": f"203.0.113.{i}"}
        response = client.post(LOGIN, json={"username": "admin", "password": "wrong-password"},
                               headers=headers, environ_base={"REMOTE_ADDR": "10.0.0.9"})
        error_text(response, 401)
    # A forged header does not get a fresh count: the peer is what counts.
    response = client.post(LOGIN, json={"username": "admin", "password": ADMIN_PASSWORD},
                           headers={"X-Forwarded-For": "203.0.113.99"}, environ_base={"REMOTE_ADDR": "10.0.0.9"})
    error_text(response, 429)


def test_a_trusted_proxy_gives_each_client_its_own_count(settings, redis, clock):
    import ipaddress

    trusted = settings.replace(trusted_proxies=(ipaddress.ip_network("10.0.0.0/24"),))
    client = create_app(trusted, redis_client=redis, clock=clock).test_client()

    def via_proxy(password, forwarded):
        return client.post(LOGIN, json={"username": "admin", "password": password},
                           headers={"X-Forwarded-For": forwarded}, environ_base={"REMOTE_ADDR": "10.0.0.2"})

    for _ in range(settings.login_max_failures):
        error_text(via_proxy("wrong-password", "198.51.100.7"), 401)
    error_text(via_proxy(ADMIN_PASSWORD, "198.51.100.7"), 429)
    # Another client behind the same proxy is not locked out, and a client
    # cannot pick its own address by prepending one.
    ok_data(via_proxy(ADMIN_PASSWORD, "198.51.100.8"))
    error_text(via_proxy(ADMIN_PASSWORD, "192.0.2.1, 198.51.100.7"), 429)


# --- bootstrap admin ---


def test_no_admin_password_writes_one_to_a_private_file(settings, server, clock, capsys, caplog, tmp_path):
    data_dir = tmp_path / "data"
    settings = settings.replace(admin_password=None, data_dir=str(data_dir))
    client = fakeredis.FakeRedis(server=server, decode_responses=True)
    app = create_app(settings, redis_client=client, clock=clock)
    path = data_dir / "admin-password"
    password = path.read_text().strip()
    assert len(password) >= 16
    assert path.stat().st_mode & 0o777 == 0o600
    out = capsys.readouterr().out
    assert str(path) in out
    assert password not in out and password not in caplog.text  # neither console nor log
    ok_data(login(app.test_client(), password=password))

    again = create_app(settings, redis_client=client, clock=clock)
    assert capsys.readouterr().out == ""
    assert path.read_text().strip() == password
    ok_data(login(again.test_client(), password=password))


def test_a_password_file_left_readable_is_narrowed(settings, redis, clock, tmp_path):
    path = tmp_path / "admin-password"
    path.write_text("old")
    path.chmod(0o644)
    create_app(settings.replace(admin_password=None, data_dir=str(tmp_path)), redis_client=redis, clock=clock)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text().strip() != "old"


def test_with_an_admin_password_nothing_is_printed(settings, redis, clock, capsys):
    create_app(settings, redis_client=redis, clock=clock)
    assert ADMIN_PASSWORD not in capsys.readouterr().out


def test_bootstrap_runs_only_with_no_users(app, settings, redis, clock):
    # A later start with another password does not reset the admin's.
    other = create_app(settings.replace(admin_password="another-password"), redis_client=redis, clock=clock)
    error_text(login(other.test_client(), password="another-password"), 401)
    ok_data(login(other.test_client()))


def test_bootstrap_with_redis_down_starts_and_skips(settings, server, clock, capsys, tmp_path):
    server.connected = False
    client = fakeredis.FakeRedis(server=server, decode_responses=True)
    settings = settings.replace(admin_password=None, data_dir=str(tmp_path))
    app = create_app(settings, redis_client=client, clock=clock)
    assert capsys.readouterr().out == ""
    error_text(login(app.test_client()), 503)


# --- the token secret ---


def test_a_generated_secret_is_shared_by_apps_on_one_redis(settings, server, clock):
    first = create_app(settings, redis_client=fakeredis.FakeRedis(server=server, decode_responses=True), clock=clock)
    second = create_app(settings, redis_client=fakeredis.FakeRedis(server=server, decode_responses=True), clock=clock)
    a, b = first.test_client(), second.test_client()
    ok_data(b.get(ROUTE, headers=bearer(login(a))))
    ok_data(a.get(ROUTE, headers=bearer(login(b))))


def test_a_generated_secret_is_random_per_redis(settings, clock):
    clients = [fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True) for _ in range(2)]
    apps = [create_app(settings, redis_client=client, clock=clock) for client in clients]
    a, b = (app.test_client() for app in apps)
    error_text(b.get(ROUTE, headers=bearer(login(a))), 401)
    secrets = [app.extensions["nvllm"].redis.get("nvllm:secret:jwt") for app in apps]
    assert secrets[0] != secrets[1] and min(map(len, secrets)) >= 32


def test_a_configured_secret_overrides_the_generated_one(settings, server, clock, monkeypatch):
    monkeypatch.setenv("NVLLM_JWT_SECRET", "a-configured-secret-that-is-long-enough")
    from config import Settings

    configured = Settings.from_env(os.environ, admin_password=ADMIN_PASSWORD, password_hash_n=2**4)
    assert configured.jwt_secret == "a-configured-secret-that-is-long-enough"

    def make(s):
        return create_app(s, redis_client=fakeredis.FakeRedis(server=server, decode_responses=True), clock=clock)

    generated, one, two = make(settings), make(configured), make(configured)
    ok_data(two.test_client().get(ROUTE, headers=bearer(login(one.test_client()))))
    error_text(generated.test_client().get(ROUTE, headers=bearer(login(one.test_client()))), 401)
    error_text(one.test_client().get(ROUTE, headers=bearer(login(generated.test_client()))), 401)


# --- user management ---


def test_admin_creates_lists_and_deletes_users(client, auth_headers, stores):
    admin = auth_headers("admin")
    body = {"username": "ops-1", "password": PASSWORD, "role": "worker"}
    data = ok_data(client.post("/api/user/register", json=body, headers=admin))
    assert data == {"username": "ops-1", "role": "worker", "create_time": "2024-01-01T00:00:00"}
    listed = ok_data(client.get("/api/user/all", headers=admin))
    assert [u["username"] for u in listed] == ["admin", "ops-1", "test-admin"]
    assert all(set(u) == {"username", "role", "create_time"} for u in listed)
    ok_data(login(client, "ops-1", PASSWORD))
    ok_data(client.delete("/api/user/delete/ops-1", headers=admin))
    error_text(login(client, "ops-1", PASSWORD), 401)
    error_text(client.delete("/api/user/delete/ops-1", headers=admin), 404)


def test_passwords_are_stored_hashed(client, auth_headers, redis):
    body = {"username": "ops-1", "password": PASSWORD, "role": "worker"}
    ok_data(client.post("/api/user/register", json=body, headers=auth_headers("admin")))
    stored = redis.hgetall("nvllm:user:ops-1")
    assert PASSWORD not in str(stored)
    assert stored["password_hash"].startswith("scrypt$")


def test_a_taken_username_is_409(client, auth_headers):
    body = {"username": "admin", "password": PASSWORD}
    error_text(client.post("/api/user/register", json=body, headers=auth_headers("admin")), 409)
    ok_data(login(client))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "ops-1", "password": "short"}, "password"),
        ({"username": "ops-1", "password": "eleven-char"}, "password"),
        ({"username": "ops-1", "password": "password1234"}, "password"),
        ({"username": "ops-1", "password": PASSWORD, "role": "root"}, "role"),
        ({"username": "ops:1", "password": PASSWORD}, "username"),
        ({"username": "ops-1", "password": PASSWORD, "extra": 1}, "extra"),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_bad_user_bodies_are_400(client, auth_headers, stores, body, field):
    response = client.post("/api/user/register", json=body, headers=auth_headers("admin"))
    assert error_text(response, 400).startswith(f"{field}:")
    assert "ops-1" not in [u.username for u in stores.users.load_all()]


def test_the_last_admin_cannot_be_deleted_or_demoted(client):
    admin = bearer(login(client))
    error_text(client.delete("/api/user/delete/admin", headers=admin), 409)
    error_text(client.put("/api/user/update/admin", json={"role": "worker"}, headers=admin), 409)
    ok_data(client.get("/api/user/all", headers=admin))
    # With a second admin, the first may go.
    body = {"username": "admin-2", "password": PASSWORD, "role": "admin"}
    ok_data(client.post("/api/user/register", json=body, headers=admin))
    ok_data(client.put("/api/user/update/admin", json={"role": "worker"}, headers=admin))
    second = bearer(login(client, "admin-2", PASSWORD))
    error_text(client.delete("/api/user/delete/admin-2", headers=second), 409)


def test_minted_tokens_last_as_asked(client, auth_headers, token, clock):
    admin = auth_headers("admin")
    token("worker")
    data = ok_data(client.post("/api/user/token/test-worker", json={"ttl": 30 * 86400}, headers=admin))
    assert data["expires_in"] == 30 * 86400 and data["role"] == "worker"
    assert len(data["jti"]) >= 16
    headers = {"Authorization": f"Bearer {data['token']}"}
    clock.advance(29 * 86400)
    ok_data(client.post("/api/node/node/register", json={}, headers=headers))
    clock.advance(86400)
    error_text(client.get(ROUTE, headers=headers), 401)


@pytest.mark.parametrize("body", [{"ttl": 59}, {"ttl": "3600"}, {"ttl": True}, {"other": 1}, []])
def test_bad_mint_bodies_are_400(client, auth_headers, token, body):
    token("worker")
    response = client.post("/api/user/token/test-worker", json=body, headers=auth_headers("admin"))
    error_text(response, 400)


def test_an_admin_revokes_one_token_and_the_others_keep_working(client, auth_headers, token, clock):
    admin = auth_headers("admin")
    token("worker")
    minted = [ok_data(client.post("/api/user/token/test-worker", json={}, headers=admin)) for _ in range(2)]
    first, second = ({"Authorization": f"Bearer {m['token']}"} for m in minted)
    ok_data(client.get(ROUTE, headers=first))
    data = ok_data(client.delete(f"/api/user/token/{minted[0]['jti']}", headers=admin))
    assert data == {"jti": minted[0]["jti"], "revoked": True}
    clock.advance(2.1)  # past the per-instance cache
    assert "revoked" in error_text(client.get(ROUTE, headers=first), 401)
    ok_data(client.get(ROUTE, headers=second))
    ok_data(client.get(ROUTE, headers=auth_headers("worker")))  # its login token too


@pytest.mark.parametrize("role", ["worker", "user"])
def test_only_an_admin_revokes_tokens(client, auth_headers, role):
    error_text(client.delete("/api/user/token/a-jti-of-the-right-shape", headers=auth_headers(role)), 403)


def test_a_malformed_jti_is_400(client, auth_headers):
    assert error_text(client.delete("/api/user/token/short", headers=auth_headers("admin")), 400).startswith("jti:")


def test_minting_for_an_unknown_user_is_404(client, auth_headers):
    error_text(client.post("/api/user/token/nobody", json={}, headers=auth_headers("admin")), 404)


def test_an_unknown_username_costs_the_same_hashing_as_a_wrong_password(client, monkeypatch, settings):
    """No timing oracle for which usernames exist: both paths run scrypt with
    the configured work factor."""
    import hashlib

    real = hashlib.scrypt
    costs: list[int] = []

    def recording(*args, **kwargs):
        costs.append(kwargs["n"])
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", recording)
    error_text(login(client, "admin", "wrong-password"), 401)
    error_text(login(client, "nobody", "wrong-password", addr="10.0.0.2"), 401)
    assert costs == [settings.password_hash_n] * 2


@pytest.mark.parametrize(
    ("text", "seconds"), [("60", 60), ("90m", 5400), ("365d", 365 * 86400), ("3650d", 3650 * 86400)]
)
def test_the_command_lines_token_lifetimes(text, seconds):
    from main import parse_duration

    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["59", "3651d", "forever", "", "1e9"])
def test_the_command_line_mints_no_longer_than_nvllm_accepts(text):
    from config import SettingsError
    from main import parse_duration

    with pytest.raises(SettingsError, match="--ttl"):
        parse_duration(text)
