"""JWT decorator: require_role(minimum) checks the Bearer token and the role."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import g, request

from middleware.services import services
from model.errors import Forbidden, Unauthorized
from model.user import Role

F = TypeVar("F", bound=Callable[..., Any])

# Each role may do what the roles after it may.
RANK = {Role.ADMIN: 3, Role.WORKER: 2, Role.USER: 1}


def bearer_token(api_key_header: bool = False) -> str:
    """The token of `Authorization: Bearer`, or, with `api_key_header` and no
    Authorization, of `x-api-key`: where the Anthropic SDK sends its key."""
    header = request.headers.get("Authorization", "")
    if api_key_header and not header:
        token = request.headers.get("x-api-key", "").strip()
        if token:
            return token
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token")
    return token.strip()


def authenticate(minimum: Role, api_key_header: bool = False) -> None:
    """Verify the request's token and put its claims on g.
    Raises Unauthorized (no, bad, expired, revoked) or Forbidden (role)."""
    claims = services().tokens.verify(bearer_token(api_key_header))
    g.user = claims
    if RANK[claims.role] < RANK[minimum]:
        raise Forbidden(f"role {claims.role.value!r} may not do this; needs {minimum.value!r}")


def require_role(minimum: str, *, api_key_header: bool = False) -> Callable[[F], F]:
    """`api_key_header`: the token may also come in x-api-key (the model routes)."""
    role = Role(minimum)

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            authenticate(role, api_key_header)
            return view(*args, **kwargs)

        # Read by the OpenAPI description (api/openapi.py): the role it states
        # is the one enforced here.
        wrapped.nvllm_role = role  # type: ignore[attr-defined]
        return wrapped  # type: ignore[return-value]

    return decorator
