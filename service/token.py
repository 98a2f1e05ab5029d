"""Tokens: HS256 JWTs carrying sub, role, ver (the user's token version), iat, exp."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import jwt

from dao.user import UserStore
from model.errors import StorageUnavailable, Unauthorized
from model.user import Role, User

ALGORITHM = "HS256"
MAX_VERIFIED = 10_000  # tokens whose signature was checked, kept per process


@dataclass(frozen=True)
class Claims:
    username: str
    role: Role


class TokenService:
    """Issues and verifies tokens. A token is only as good as its user: a user
    removed, or whose password or role changed (token_version bumped), loses
    its tokens once the cached record is older than `cache_seconds`."""

    def __init__(
        self,
        users: UserStore,
        secret: Callable[[], str],
        *,
        cache_seconds: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._users = users
        self._secret = secret
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, User | None]] = {}
        self._verified: dict[str, dict] = {}

    def issue(self, user: User, ttl: int) -> str:
        now = int(self._clock())
        claims = {
            "sub": user.username,
            "role": user.role.value,
            "ver": user.token_version,
            "iat": now,
            "exp": now + ttl,
        }
        return jwt.encode(claims, self._secret(), algorithm=ALGORITHM)

    def verify(self, token: str) -> Claims:
        """Raises Unauthorized for a bad, expired or revoked token."""
        claims = self._verified.get(token)
        if claims is None:
            claims = self._decode(token)
        if claims["exp"] <= self._clock():
            raise Unauthorized("token expired")
        user = self._user(str(claims["sub"]))
        if user is None or user.token_version != claims.get("ver", 0):
            raise Unauthorized("token revoked")
        return Claims(user.username, user.role)

    def _decode(self, token: str) -> dict:
        """Check the signature and claims' shape once per token: a client sends
        the same token with every request, and the check is the costliest part
        of authenticating one. Expiry and revocation are checked every time."""
        try:
            claims = jwt.decode(
                token,
                self._secret(),
                algorithms=[ALGORITHM],  # pinned: 'none' and RS/HS confusion are refused
                # Times are checked below against our clock, not PyJWT's wall clock.
                options={
                    "require": ["sub", "role", "iat", "exp"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidTokenError:
            raise Unauthorized("invalid token") from None
        if any(isinstance(t, bool) or not isinstance(t, (int, float)) for t in (claims["exp"], claims["iat"])):
            raise Unauthorized("invalid token")
        if len(self._verified) >= MAX_VERIFIED:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    def _user(self, username: str) -> User | None:
        now = self._clock()
        cached = self._cache.get(username)
        if cached and now - cached[0] < self._cache_seconds:
            return cached[1]
        try:
            user = self._users.load(username)
        except StorageUnavailable:
            # Redis is briefly down: trust what we knew rather than lock every
            # client out; with nothing known, the 503 stands.
            if cached:
                return cached[1]
            raise
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[username] = (now, user)
        return user
