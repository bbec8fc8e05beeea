"""The exceptions jobwire raises.

Every failure is a :class:`JobwireError` carrying ``code`` (the API's error
code, e.g. ``"not_found"``, or a client-side one such as ``"unreachable"``),
``status`` (the HTTP status, 0 when there was no answer) and ``message``.
HTTP error answers map onto subclasses by status and code, so callers can
catch exactly what they handle (``except jobwire.NotFound``) or everything
(``except jobwire.JobwireError``).
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional


class JobwireError(Exception):
    """Base class of every error this package raises."""

    #: The code used when the server gave none.
    default_code = "error"

    def __init__(self, message: str, *, code: Optional[str] = None, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.status = status
        #: The error object's other fields, for the caller to act on (a
        #: refused publish's job ``status`` and current ``attempt``).
        self.details: dict[str, Any] = {}

    def __str__(self) -> str:
        if self.status:
            return f"{self.message} ({self.code}, HTTP {self.status})"
        return f"{self.message} ({self.code})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r}, status={self.status})"


# Client-side failures (no HTTP answer, or one that is not jobwire's).


class ConfigError(JobwireError, ValueError):
    """The client was configured wrongly (a bad URL, no token, ...)."""

    default_code = "config"


class Unreachable(JobwireError):
    """No server answered: connection refused, DNS, TLS failure or timeout."""

    default_code = "unreachable"


class ProtocolError(JobwireError):
    """The server answered something this client cannot understand."""

    default_code = "protocol"


class TokenError(JobwireError):
    """The token provider failed (raised, or returned something not a string)."""

    default_code = "token"


# HTTP error answers, by status.


class BadRequest(JobwireError):
    """A request the server refused as malformed (400, 405, 413, 415 ...)."""

    default_code = "bad_request"


class ValidationError(BadRequest):
    """422 ``invalid``: a parameter or body the server would not accept."""

    default_code = "invalid"


class PayloadTooLarge(BadRequest):
    """413 ``too_large``: the request body is over the server's limit."""

    default_code = "too_large"


class Unauthorized(JobwireError):
    """401: no token, a bad one, or an expired one."""

    default_code = "unauthorized"


class Forbidden(JobwireError):
    """403: the token lacks a scope this call needs."""

    default_code = "forbidden"


class NotFound(JobwireError):
    """404: no such job (or not the caller's: other users' jobs are hidden)."""

    default_code = "not_found"


class Conflict(JobwireError):
    """409: the request conflicts with the job's state (``conflict``,
    ``already_exists``, or ``stale_attempt`` as :class:`StaleAttempt`)."""

    default_code = "conflict"


class StaleAttempt(Conflict):
    """409 ``stale_attempt``: the job moved on to another attempt; this
    publisher is fenced off and must stop."""

    default_code = "stale_attempt"


class FenceConflict(Conflict):
    """Another publisher already used these ``(attempt, n)`` numbers: events
    were skipped as duplicates although this reporter never sent them.
    Attach with the right ``next_n``, or start a new attempt."""

    default_code = "fence_conflict"


class ResyncRequired(JobwireError):
    """410 ``resync_required``: the history cannot continue from ``since``
    (trimmed, another epoch, or beyond the end): read the job afresh."""

    default_code = "resync_required"


class RateLimited(JobwireError):
    """429 ``rate_limited`` / ``too_many_jobs``; ``retry_after`` is in seconds
    when the server said."""

    default_code = "rate_limited"

    def __init__(
        self,
        message: str,
        *,
        code: Optional[str] = None,
        status: int = 429,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.retry_after = retry_after


class ServerError(JobwireError):
    """5xx: the server (or a proxy in front of it) failed."""

    default_code = "internal"


class Unavailable(ServerError):
    """503 ``unavailable``: the job store is unreachable just now; retry."""

    default_code = "unavailable"


# The reporter's own conditions.


class Cancelled(JobwireError):
    """The job was cancelled: stop working on it.

    Raised by a reporter's next report after the server said the job's
    cancel was requested (or that the job is already cancelled). Leaving an
    ``external_job`` block with it publishes ``job_cancelled``.
    """

    default_code = "cancelled"

    def __init__(self, message: str = "the job was cancelled", *, job_id: str = "") -> None:
        super().__init__(message)
        self.job_id = job_id


class ReporterClosed(JobwireError):
    """A report after the job's terminal event, or after ``close()``."""

    default_code = "closed"


class BufferFull(JobwireError):
    """The reporter's buffer stayed full for ``block_timeout`` seconds (the
    server has been unreachable that long): the event was not queued."""

    default_code = "buffer_full"


class PublishTimeout(JobwireError):
    """``flush``/``close`` gave up waiting: events are still unsent (the
    reporter keeps trying until it is closed)."""

    default_code = "timeout"


_BY_STATUS: dict[int, type[JobwireError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: ResyncRequired,
    413: PayloadTooLarge,
    422: ValidationError,
    429: RateLimited,
    503: Unavailable,
}

_BY_CODE: dict[str, type[JobwireError]] = {
    "stale_attempt": StaleAttempt,
    "resync_required": ResyncRequired,
    "unavailable": Unavailable,
}


def error_from_response(
    status: int, body: bytes, headers: Optional[Mapping[str, str]] = None
) -> JobwireError:
    """The exception for an HTTP error answer.

    jobwire answers ``{"error": {"code", "message"}}``; anything else (a
    proxy's HTML page) keeps the status and the start of its text.
    """
    code: Optional[str] = None
    message = ""
    details: dict[str, Any] = {}
    try:
        parsed: Any = json.loads(body)
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict):
            raw_code, raw_message = error.get("code"), error.get("message")
            code = raw_code if isinstance(raw_code, str) else None
            message = raw_message if isinstance(raw_message, str) else ""
            details = {k: v for k, v in error.items() if k not in ("code", "message")}
    except ValueError:
        pass
    if not message:
        text = body[:200].decode("utf-8", "replace").strip()
        message = text or f"HTTP {status}"
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else BadRequest
    if cls is RateLimited:
        retry_after: Optional[float] = None
        raw = (headers or {}).get("retry-after")
        if raw is not None:
            try:
                retry_after = float(raw)
            except ValueError:
                retry_after = None
        limited = RateLimited(message, code=code, status=status, retry_after=retry_after)
        limited.details = details
        return limited
    failure = cls(message, code=code, status=status)
    failure.details = details
    return failure
