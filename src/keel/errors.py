"""Domain error kinds. Services raise these; the HTTP edge maps each kind to a status (keel.http.errors)."""

from __future__ import annotations


class KeelError(Exception):
    """Base of every error a client may see. `code` is stable; clients branch on it."""

    code: str = "keel.error"
    title: str = "Error"

    def __init__(self, detail: str | None = None, *, code: str | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if code is not None:
            self.code = code


class BadRequest(KeelError):
    """A request the server will not interpret, such as one with two sets of credentials."""

    code = "bad_request"
    title = "Bad request"


class NotFound(KeelError):
    code = "not_found"
    title = "Not found"


class Conflict(KeelError):
    code = "conflict"
    title = "Conflict"


class Unauthorized(KeelError):
    code = "unauthorized"
    title = "Unauthorized"
    # RFC 6750: `Bearer` when no credentials came, with error="invalid_token" when a bad one did
    www_authenticate = "Bearer"


class Forbidden(KeelError):
    code = "forbidden"
    title = "Forbidden"


class Invalid(KeelError):
    """Input that breaks a rule no schema states (a cursor this API never issued); `loc` names the field, as a 422's
    `errors` do (`("query", "cursor")`), or is empty when the request as a whole is at fault."""

    code = "invalid"
    title = "Invalid input"

    def __init__(self, detail: str | None = None, *, code: str | None = None, loc: tuple[str | int, ...] = ()) -> None:
        super().__init__(detail, code=code)
        self.loc = loc


class RetryLater(KeelError):
    """An error the client may retry after `retry_after` whole seconds (at least 1)."""

    def __init__(self, detail: str | None = None, *, retry_after: int = 1, code: str | None = None) -> None:
        super().__init__(detail, code=code)
        self.retry_after = max(1, retry_after)


class RateLimited(RetryLater):
    code = "rate_limited"
    title = "Too many requests"


class Unavailable(RetryLater):
    """A dependency (database, Redis, the password pool) cannot serve now."""

    code = "unavailable"
    title = "Service unavailable"
