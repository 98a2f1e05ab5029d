"""Tokens: HS256 JWTs carrying sub, role, ver (the user's token version), iat,
exp and jti (the token's own id, to revoke it alone)."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import jwt

from dao.user import UserStore
from model.errors import StorageUnavailable, Unauthorized
from model.user import JTI, MAX_TOKEN_TTL, Role, User
from service.periodic import start_periodic

ALGORITHM = "HS256"
MAX_VERIFIED = 10_000  # tokens whose signature was checked, kept per process
CLOCK_SKEW = 5  # seconds another instance's clock may run ahead of ours
MAX_CHECKED = 10_000  # (user, jti) checks kept per process

log = logging.getLogger("nvllm.token")


@dataclass(frozen=True)
class Claims:
    username: str
    role: Role
    jti: str | None = None


def validate_jti(value: object) -> str:
    return JTI.check("jti", value)


@dataclass
class Checked:
    """What Redis said of a (user, jti) pair, when, and when it was last needed."""

    at: float
    user: User | None
    revoked: bool
    used: float


class TokenService:
    """Issues and verifies tokens. A token is only as good as its user: a user
    removed, or whose password or role changed (token_version bumped), or a
    token revoked by its jti, stops working once the cached check is older
    than `cache_seconds`.

    With the background refresher running (`start()`), the checks of tokens
    used in the last `max_stale` seconds are renewed every half
    `cache_seconds`, so a request never waits on Redis for a token this
    instance has seen lately. While the refresher cannot reach Redis (or a
    round is taking long: a hung store), those checks are trusted until they
    are `max_stale` seconds old, and no request waits for Redis meanwhile;
    past that the 503 stands."""

    def __init__(
        self,
        users: UserStore,
        secret: Callable[[], str],
        *,
        cache_seconds: float = 2.0,
        max_stale: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._users = users
        self._secret = secret
        self._cache_seconds = cache_seconds
        self._max_stale = max_stale
        self._clock = clock
        self._cache: dict[tuple[str, str | None], Checked] = {}
        self._verified: dict[str, dict] = {}
        # The refresher's state: a round under way or failed last means Redis
        # is slow or gone, and a request must not wait on it.
        self._round_running = False
        self._round_failed = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def issue(self, user: User, ttl: int) -> str:
        return self.mint(user, ttl)[0]

    def mint(self, user: User, ttl: int) -> tuple[str, str]:
        """A token and its jti. Raises ValueError for a lifetime beyond MAX_TOKEN_TTL."""
        if not 0 < ttl <= MAX_TOKEN_TTL:
            raise ValueError(f"a token lives at most {MAX_TOKEN_TTL} s")
        now = int(self._clock())
        jti = secrets.token_urlsafe(16)
        claims = {
            "sub": user.username,
            "role": user.role.value,
            "ver": user.token_version,
            "iat": now,
            "exp": now + ttl,
            "jti": jti,
        }
        return jwt.encode(claims, self._secret(), algorithm=ALGORITHM), jti

    def revoke(self, jti: str) -> None:
        """Revoke one token by its id; the user's other tokens keep working.
        Remembered for as long as any token can live."""
        self._users.revoke_token(validate_jti(jti), MAX_TOKEN_TTL + CLOCK_SKEW)

    def verify(self, token: str) -> Claims:
        """Raises Unauthorized for a bad, expired or revoked token."""
        claims = self._verified.get(token)
        if claims is None:
            claims = self._decode(token)
        now = self._clock()
        if claims["exp"] <= now:
            raise Unauthorized("token expired")
        if claims["iat"] > now + CLOCK_SKEW or claims["exp"] > now + MAX_TOKEN_TTL + CLOCK_SKEW:
            raise Unauthorized("invalid token")
        jti = claims.get("jti")
        user, revoked = self._user(str(claims["sub"]), jti)
        if user is None or revoked or user.token_version != claims["ver"]:
            raise Unauthorized("token revoked")
        return Claims(user.username, user.role, jti)

    def _decode(self, token: str) -> dict:
        """Check the signature and claims' shape once per token: a client sends
        the same token with every request, and the check is the costliest part
        of authenticating one. Times and revocation are checked every time."""
        try:
            claims = jwt.decode(
                token,
                self._secret(),
                algorithms=[ALGORITHM],  # pinned: 'none' and RS/HS confusion are refused
                # Times are checked below against our clock, not PyJWT's wall clock.
                options={
                    "require": ["sub", "role", "iat", "exp", "ver"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidTokenError:
            raise Unauthorized("invalid token") from None
        if not _well_formed(claims):
            raise Unauthorized("invalid token")
        if len(self._verified) >= MAX_VERIFIED:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    def _user(self, username: str, jti: str | None) -> tuple[User | None, bool]:
        now = self._clock()
        cached = self._cache.get((username, jti))
        if cached:
            cached.used = now
            age = now - cached.at
            if age < self._cache_seconds or (age <= self._max_stale and self.storage_behind):
                return cached.user, cached.revoked
        try:
            user, revoked = self._users.load_for_token(username, jti)
        except StorageUnavailable:
            # Redis is briefly down: trust what we knew a short while ago rather
            # than lock every client out; with nothing recent known, the 503 stands.
            if cached and now - cached.at <= self._max_stale:
                return cached.user, cached.revoked
            raise
        if len(self._cache) >= MAX_CHECKED:
            self._cache.clear()
        self._cache[(username, jti)] = Checked(now, user, revoked, now)
        return user, revoked

    @property
    def storage_behind(self) -> bool:
        """The refresher is waiting on Redis, or could not reach it last time."""
        return self._round_running or self._round_failed

    # --- the background refresher ---

    def refresh_checks(self) -> None:
        """One round: renew, in one pipeline, the checks of tokens used in the
        last `max_stale` seconds that are older than half `cache_seconds`;
        forget the others once they are too old to be trusted."""
        now = self._clock()
        due = []
        for key, checked in list(self._cache.items()):
            if now - checked.used > self._max_stale:
                if now - checked.at > self._max_stale:
                    self._cache.pop(key, None)
            elif now - checked.at >= self._cache_seconds / 2:
                due.append(key)
        if not due:
            self._round_failed = False
            return
        self._round_running = True
        try:
            answers = self._users.load_many_for_tokens(due)
        except StorageUnavailable:
            if not self._round_failed:
                log.warning("token checks: storage unavailable; trusting checks up to %.0fs old", self._max_stale)
            self._round_failed = True
            return
        finally:
            self._round_running = False
        if self._round_failed:
            log.info("token checks: storage recovered")
        self._round_failed = False
        for key, (user, revoked) in zip(due, answers, strict=True):
            checked = self._cache.get(key)
            if checked is not None:
                # `now` is when the round began: the answer is at least that fresh.
                checked.at, checked.user, checked.revoked = now, user, revoked

    def start(self) -> None:
        """Start the background refresher (idempotent)."""
        if self._thread is not None:
            return
        self._thread = start_periodic(self, "refresh_checks", self._cache_seconds / 2, self._stop,
                                      name="nvllm-tokens", log=log, what="token check refresh")

    def close(self) -> None:
        self._stop.set()


def _is_int(value: object) -> bool:
    """JSON gives floats for 1e308, NaN and Infinity, and bools are ints in Python."""
    return isinstance(value, int) and not isinstance(value, bool)


def _well_formed(claims: dict) -> bool:
    """Integer times with exp within the longest lifetime nvllm mints after iat,
    an integer version, a string subject, and a jti of our shape when present
    (tokens from before jti existed have none)."""
    iat, exp, ver, jti = claims["iat"], claims["exp"], claims["ver"], claims.get("jti")
    if not (_is_int(iat) and _is_int(exp) and _is_int(ver) and isinstance(claims["sub"], str)):
        return False
    if not iat < exp <= iat + MAX_TOKEN_TTL:
        return False
    return jti is None or JTI.accepts(jti)
