"""Login, and user management for admins."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from api import json_body, ok
from middleware.auth import require_role
from middleware.client import request_client_address
from middleware.services import services
from model.user import DEFAULT_MINTED_TTL, TOKEN_REQUEST, validate_username
from service import user as users

bp = Blueprint("user", __name__, url_prefix="/api/user")


def _settings():
    return current_app.config["NVLLM"]


@bp.post("/login")
def login() -> Response:
    settings = _settings()
    stores = services()
    user = users.login(
        stores.users,
        json_body(),
        client_addr=request_client_address(),
        max_failures=settings.login_max_failures,
        window=settings.login_window,
        hash_n=settings.password_hash_n,
        clock=stores.clock,
    )
    token = stores.tokens.issue(user, settings.token_ttl)
    return ok({"token": token, "expires_in": settings.token_ttl, "role": user.role.value})


@bp.get("/all")
@require_role("admin")
def all_users() -> Response:
    return ok([u.to_dict() for u in users.list_users(services().users)])


@bp.post("/register")
@require_role("admin")
def register() -> Response:
    stores = services()
    user = users.create_user(
        stores.users, json_body(), now=stores.clock(), hash_n=_settings().password_hash_n
    )
    return ok(user.to_dict())


@bp.put("/update/<username>")
@require_role("admin")
def update(username: str) -> Response:
    user = users.update_user(
        services().users, username, json_body(), hash_n=_settings().password_hash_n
    )
    return ok(user.to_dict())


@bp.delete("/delete/<username>")
@require_role("admin")
def delete(username: str) -> Response:
    users.delete_user(services().users, username)
    return ok({"username": username, "deleted": True})


@bp.post("/token/<username>")
@require_role("admin")
def mint_token(username: str) -> Response:
    """A long-lived token for a worker's agent: {"ttl": seconds}, default 1 year.
    Its `jti` is what revokes it alone (DELETE token/<jti>)."""
    ttl = TOKEN_REQUEST.check(None, json_body()).get("ttl", DEFAULT_MINTED_TTL)
    stores = services()
    user = users.get_user(stores.users, validate_username(username))
    token, jti = stores.tokens.mint(user, ttl)
    return ok({"token": token, "expires_in": ttl, "role": user.role.value, "jti": jti})


@bp.delete("/token/<jti>")
@require_role("admin")
def revoke_token(jti: str) -> Response:
    """Revoke one token by its jti; the user's other tokens keep working."""
    services().tokens.revoke(jti)
    return ok({"jti": jti, "revoked": True})
