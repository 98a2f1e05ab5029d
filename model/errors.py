"""The error tree. Every error a client may see is one of these.

    NvllmError                      500, generic text
    ├── BadRequest                  400
    │   └── ValidationError         400, names the field
    ├── Unauthorized                401, WWW-Authenticate: Bearer
    ├── Forbidden                   403
    │   ├── NodeForbidden           another account's node
    │   └── AddressNotAllowed       node_address outside the allowed networks
    ├── NotFound                    404
    │   ├── NodeNotFound
    │   ├── UserNotFound
    │   └── ResponseNotFound        a stored response whose node is gone
    ├── MethodNotAllowed            405, Allow
    ├── Conflict                    409
    │   └── NodeLimitReached        NVLLM_MAX_NODES(_PER_ACCOUNT) reached
    ├── PayloadTooLarge             413
    ├── TooManyRequests             429, Retry-After
    ├── UpstreamFailed              502, every node tried failed
    └── Unavailable                 503, Retry-After
        ├── StorageUnavailable      Redis unreachable
        └── NoRoutableNode          no node can take the request

Each carries its HTTP `code`, a message safe to show a client, and the extra
headers that go with it. `api/errors.py` is the one place that turns them into
responses.
"""

from __future__ import annotations


class NvllmError(Exception):
    code = 500
    message = "internal server error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message

    @property
    def headers(self) -> dict[str, str]:
        return {}


class BadRequest(NvllmError):
    code = 400
    message = "bad request"


class ValidationError(BadRequest):
    """A field of the request is missing, of the wrong type or out of range."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class Unauthorized(NvllmError):
    code = 401
    message = "missing or invalid token"

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(NvllmError):
    code = 403
    message = "your role may not do this"


class NodeForbidden(Forbidden):
    def __init__(self, node_id: str) -> None:
        super().__init__(f"node {node_id!r} belongs to another account")


class AddressNotAllowed(Forbidden):
    def __init__(self, reason: str) -> None:
        super().__init__(f"node_address: {reason}")


class NotFound(NvllmError):
    code = 404
    message = "not found"


class NodeNotFound(NotFound):
    def __init__(self, node_id: str) -> None:
        super().__init__(f"node {node_id!r} not found")
        self.node_id = node_id


class UserNotFound(NotFound):
    def __init__(self, username: str) -> None:
        super().__init__(f"user {username!r} not found")


class ResponseNotFound(NotFound):
    def __init__(self, response_id: str, why: str) -> None:
        super().__init__(f"response {response_id!r} cannot be reached: {why}")
        self.response_id = response_id


class MethodNotAllowed(NvllmError):
    code = 405

    def __init__(self, method: str, allowed: frozenset[str] | set[str]) -> None:
        super().__init__(f"method {method} not allowed")
        self.allowed = sorted(allowed)

    @property
    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class Conflict(NvllmError):
    code = 409
    message = "conflict"


class NodeLimitReached(Conflict):
    pass


class PayloadTooLarge(NvllmError):
    code = 413
    message = "request body too large"


class UpstreamFailed(NvllmError):
    code = 502

    def __init__(self, attempts: int, cause: str) -> None:
        # Which node, and how its connection failed, stay in the log: the text
        # must not tell a client an open port from a closed one.
        super().__init__(f"no node could serve the request ({attempts} attempt(s) failed)")
        self.cause = cause


class _RetryLater(NvllmError):
    def __init__(self, message: str | None = None, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class TooManyRequests(_RetryLater):
    code = 429
    message = "too many failed logins; try again later"


class Unavailable(_RetryLater):
    code = 503
    message = "service unavailable"


class StorageUnavailable(Unavailable):
    message = "storage unavailable; try again shortly"


class NoRoutableNode(Unavailable):
    def __init__(self, model: str | None = None, retry_after: int = 1) -> None:
        what = f"for model {model!r}" if model else "at all"
        super().__init__(f"no routable node {what}", retry_after)
        self.model = model
