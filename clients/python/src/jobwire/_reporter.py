"""The reporter's logic, shared by the sync and async reporters, without I/O.

A reporter publishes one attempt's events of an external job through
``POST /api/jobs/{id}/events``, exactly once and in order:

* **Fencing.** Every event carries ``(attempt, n)``: ``attempt`` is the job's
  attempt the reporter works for, ``n`` counts its events 1, 2, 3 ... (from
  ``next_n`` when attached mid-attempt). The server applies each ``n`` once
  (a repeated one is counted in ``duplicates``) and refuses a stale
  ``attempt`` with 409 ``stale_attempt``.
* **Buffering.** Report calls only append to a bounded FIFO buffer and
  return; a background sender (a thread, or a task) posts whatever has
  accumulated as one batch, oldest first, and removes events from the buffer
  only once the server has answered for them. A batch whose fate is unknown
  (a timeout, a dropped connection, a 5xx) is sent again with the same
  numbers, so nothing is applied twice and nothing is reordered.
* **Overflow.** When the buffer holds ``buffer_size`` unsent events, a report
  call waits for room up to ``block_timeout`` seconds, then raises
  :class:`~jobwire.BufferFull` (that event is not queued; the buffered ones
  stay). Terminal events (``job_completed``, ``job_failed``,
  ``job_cancelled``) are always accepted, past the bound: nothing is ever
  dropped silently.
* **Cancellation.** Every publish answer says whether the job's cancel was
  requested; from then on non-terminal reports raise
  :class:`~jobwire.Cancelled`.

This module holds that state machine; ``_sync_reporter`` and
``_async_reporter`` add the sender loops and the public methods.
"""

from __future__ import annotations

import random
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, Mapping, Optional, Tuple

from ._errors import (
    BadRequest,
    Cancelled,
    Conflict,
    FenceConflict,
    JobwireError,
    ProtocolError,
    RateLimited,
    ReporterClosed,
    ServerError,
    StaleAttempt,
    Unauthorized,
    Unreachable,
    ValidationError,
)
from ._rest import MAX_PUBLISH_BATCH, dumps
from ._types import TERMINAL_EVENTS, TERMINAL_STATUSES

#: Event types a publisher may use besides the built-in ones: 1-64 of a-z, 0-9, _ and .
CUSTOM_TYPE = re.compile(r"[a-z0-9_.]{1,64}")
#: Names of the live protocol's control messages and frames: never event types.
RESERVED_TYPES = frozenset(
    {
        "current_state",
        "resumed",
        "pong",
        "refreshed",
        "unsubscribed",
        "refused",
        "gone",
        "subscribe",
        "unsubscribe",
        "ping",
        "refresh",
    }
)
#: Built-in types that need a running job; a reporter that has not started
#: its attempt publishes ``job_started`` before the first of them.
NEEDS_RUNNING = frozenset(
    {"file_processing", "file_completed", "error", "progress", "job_completed"}
)

#: Defaults (documented in docs/python.md).
DEFAULT_BUFFER_SIZE = 10_000
DEFAULT_BLOCK_TIMEOUT = 30.0
DEFAULT_CLOSE_TIMEOUT = 300.0
#: The server refuses an event whose ``data`` is larger (its default limit).
DEFAULT_MAX_EVENT_BYTES = 64 * 1024
#: Request bodies stay well under the server's 1 MiB limit.
MAX_BATCH_BYTES = 512 * 1024

#: The terminal event the reporter publishes when a block ends by Cancelled.
CANCEL_REASON = "cancelled on request"


@dataclass
class Pending:
    """One buffered event, serialized once when it was reported."""

    n: int
    kind: str
    body: bytes


class RetryBackoff:
    """The sender's wait between tries: full jitter over a ceiling doubling
    from ``first`` to ``cap`` seconds, reset by a success."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self.ceiling = first

    def next(self, at_least: float = 0.0) -> float:
        wait = random.uniform(self.ceiling / 2, self.ceiling)
        self.ceiling = min(self.ceiling * 2, self.cap)
        return max(wait, at_least)

    def reset(self) -> None:
        self.ceiling = self.first


def check_type(kind: str) -> None:
    """Refuses, before anything is queued, a type the server would refuse."""
    if not isinstance(kind, str):
        raise TypeError(f"an event type is a string, not {type(kind).__name__}")
    if kind == "job_queued":
        raise ValidationError("job_queued is written by jobwire itself")
    if kind in RESERVED_TYPES:
        raise ValidationError(f"{kind!r} is a control message of the live protocol")
    if not CUSTOM_TYPE.fullmatch(kind):
        raise ValidationError(
            f"invalid event type {kind!r}: expected 1-64 characters of a-z, 0-9, '_' or '.'"
        )


class ReporterCore:
    """Fencing, buffering and batching of one attempt's events.

    Not thread-safe: the sync reporter holds its lock around every call, the
    async one runs on one event loop.
    """

    def __init__(
        self,
        job_id: str,
        attempt: int,
        *,
        next_n: int = 1,
        started: bool = False,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        max_event_bytes: Optional[int] = DEFAULT_MAX_EVENT_BYTES,
        max_batch: int = MAX_PUBLISH_BATCH,
    ) -> None:
        if not isinstance(attempt, int) or attempt < 1:
            raise ValueError("attempt is the job's attempt number (1 or more)")
        if not isinstance(next_n, int) or next_n < 1:
            raise ValueError("next_n is 1 or more")
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        if not 1 <= max_batch <= MAX_PUBLISH_BATCH:
            raise ValueError(f"max_batch is 1 to {MAX_PUBLISH_BATCH}")
        self.job_id = job_id
        self.attempt = attempt
        self.next_n = next_n
        self.started = started
        self.buffer_size = buffer_size
        self.max_event_bytes = max_event_bytes
        self.max_batch = max_batch
        self.pending: Deque[Pending] = deque()
        #: How many events at the buffer's head were in a request that got
        #: no definite answer: the server may have applied them, so seeing
        #: them as duplicates later is expected; more duplicates are not.
        self.maybe_applied = 0
        #: The highest ``n`` the server has confirmed (applied or duplicate).
        self.stored_n = next_n - 1
        self.cancel_requested = False
        #: The job is known to be cancelled already (no job_cancelled needed).
        self.job_cancelled = False
        #: The terminal event queued, if any: reports after it are refused.
        self.terminal: Optional[str] = None
        #: Why the sender stopped for good; raised by the next report.
        self.failure: Optional[JobwireError] = None
        #: Set by close(): no more reports.
        self.closed = False
        self.published = 0
        self.duplicates = 0
        self.retries = 0

    # The caller's side.

    def check(self, kind: Optional[str] = None) -> None:
        """Raises what a report of type ``kind`` must raise now (``None``:
        any non-terminal report)."""
        if self.failure is not None:
            raise self.failure
        if self.closed:
            raise ReporterClosed(f"the reporter of job {self.job_id} is closed")
        if self.terminal is not None:
            raise ReporterClosed(f"job {self.job_id} already ended ({self.terminal})")
        terminal = kind in TERMINAL_EVENTS
        if (self.cancel_requested or self.job_cancelled) and not terminal:
            raise Cancelled(f"job {self.job_id} was cancelled", job_id=self.job_id)

    def encode(self, kind: str, data: Optional[Mapping[str, Any]]) -> bytes:
        """The event's ``data`` as JSON, checked (raises TypeError/ValueError
        for what is not JSON, ValidationError for what the server refuses)."""
        check_type(kind)
        if data is not None and not isinstance(data, Mapping):
            raise TypeError(f"event data must be a mapping, not {type(data).__name__}")
        encoded = dumps(dict(data or {}))
        if self.max_event_bytes is not None and len(encoded) > self.max_event_bytes:
            raise ValidationError(
                f"the {kind} event's data is {len(encoded)} bytes; "
                f"the server accepts at most {self.max_event_bytes}"
            )
        return encoded

    def room_for(self, kind: str, count: int) -> bool:
        """Whether ``count`` events fit the buffer now. A terminal event
        always fits: the last word on a job is never refused for space."""
        return kind in TERMINAL_EVENTS or len(self.pending) + count <= self.buffer_size

    def events_for(self, kind: str) -> int:
        """How many events a report of ``kind`` queues (with job_started)."""
        return 2 if self.needs_start(kind) else 1

    def needs_start(self, kind: str) -> bool:
        return not self.started and kind in NEEDS_RUNNING

    def enqueue(self, kind: str, data: bytes) -> int:
        """Queues an (encoded) event, after job_started when the attempt has
        not started yet; returns the event's ``n``."""
        if self.needs_start(kind):
            self._append("job_started", b"{}")
            self.started = True
        if kind == "job_started":
            self.started = True
        if kind in TERMINAL_EVENTS:
            self.terminal = kind
        return self._append(kind, data)

    def _append(self, kind: str, data: bytes) -> int:
        n = self.next_n
        self.next_n += 1
        head = dumps({"type": kind, "attempt": self.attempt, "n": n})
        # {"type":..,"attempt":..,"n":..,"data":{...}} without re-serializing data.
        body = head[:-1] + b',"data":' + data + b"}"
        self.pending.append(Pending(n, kind, body))
        return n

    # The sender's side.

    def batch(self) -> Tuple[int, bytes]:
        """The next request: the oldest unsent events (at most ``max_batch``
        and about MAX_BATCH_BYTES), as a JSON array; and how many they are."""
        count = 0
        size = 2
        parts: List[bytes] = []
        for event in self.pending:
            if count == self.max_batch or (count and size + len(event.body) > MAX_BATCH_BYTES):
                break
            parts.append(event.body)
            size += len(event.body) + 1
            count += 1
        return count, b"[" + b",".join(parts) + b"]"

    def uncertain(self, count: int) -> None:
        """The request for the first ``count`` events got no definite answer."""
        self.maybe_applied = max(self.maybe_applied, count)
        self.retries += 1

    def stats(self) -> Dict[str, int]:
        return {
            "published": self.published,
            "duplicates": self.duplicates,
            "pending": len(self.pending),
            "retries": self.retries,
        }

    def applied(self, count: int, reply: Any) -> None:
        """The server answered 200/201 for the first ``count`` events."""
        if not isinstance(reply, dict) or not isinstance(reply.get("ids"), list):
            raise ProtocolError(f"unexpected publish answer: {reply!r:.200}")
        duplicates = reply.get("duplicates", 0)
        if not isinstance(duplicates, int) or len(reply["ids"]) + duplicates != count:
            raise ProtocolError(f"the publish answer does not cover {count} events")
        if duplicates > min(self.maybe_applied, count):
            first = self.pending[0].n
            self.fail(
                FenceConflict(
                    f"job {self.job_id}: the server already had {duplicates} of events "
                    f"n={first}..{first + count - 1} of attempt {self.attempt} from another "
                    "publisher; they were skipped. Attach with the right next_n, or start "
                    "a new attempt (job_retrying)",
                    status=200,
                )
            )
            return
        self.maybe_applied = max(0, self.maybe_applied - count)
        for _ in range(count):
            event = self.pending.popleft()
            self.stored_n = event.n
        self.published += len(reply["ids"])
        self.duplicates += duplicates
        if reply.get("cancel_requested") is True:
            self.cancel_requested = True

    def fail(self, error: JobwireError) -> None:
        """The sender stops for good: buffered events cannot be delivered."""
        if self.failure is None:
            if self.pending:
                n = len(self.pending)
                error.message += f" ({n} event{'' if n == 1 else 's'} not published)"
            self.failure = error
        self.pending.clear()
        self.maybe_applied = 0

    def refused_as_cancelled(self) -> None:
        """The job is already cancelled: nothing buffered can be applied (it
        would all be 409), and no job_cancelled is needed."""
        self.job_cancelled = True
        self.pending.clear()
        self.maybe_applied = 0

    def on_conflict(self, error: Conflict, status: Optional[str]) -> None:
        """A 409 ``conflict``: the batch is illegal in the job's status.
        ``status`` is the job's status when it could be read."""
        if status is None:
            # The worker's token may lack jobs:read: the refusal names the
            # status (a field; older servers only in the message).
            field = error.details.get("status")
            if isinstance(field, str):
                status = field
            else:
                match = re.search(r"while the job is ([a-z]+)", error.message)
                status = match.group(1) if match else None
        if status == "cancelled":
            self.refused_as_cancelled()
            return
        if status in TERMINAL_STATUSES:
            self.fail(Conflict(f"job {self.job_id} already ended ({status})", status=409))
            return
        self.fail(error)

    @property
    def idle(self) -> bool:
        """Nothing left to send."""
        return not self.pending


def classify(error: JobwireError) -> str:
    """What the sender does after a failed publish:

    * ``"retry"``: no definite answer (unreachable, timeout, 5xx, 408) or
      throttled (429): send the same events again, later;
    * ``"conflict"``: 409 ``conflict``: find out whether the job was cancelled;
    * ``"fatal"``: anything else (401 after a refresh, 403, 404, stale
      attempt, 422): the reporter stops and the next report raises it.
    """
    if isinstance(error, (Unreachable, ServerError, RateLimited)):
        return "retry"
    if isinstance(error, BadRequest) and error.status == 408:
        return "retry"
    if isinstance(error, (StaleAttempt, Unauthorized)):
        return "fatal"
    if isinstance(error, Conflict) and error.code == "conflict":
        return "conflict"
    return "fatal"


def retry_wait(error: JobwireError, backoff: RetryBackoff) -> float:
    """How long the sender waits before sending again (at least what a 429's
    Retry-After asked)."""
    at_least = 0.0
    if isinstance(error, RateLimited) and error.retry_after is not None:
        at_least = error.retry_after
    return backoff.next(at_least)


def failure_data(exc: BaseException) -> dict[str, Any]:
    """The data of the job_failed that an exception leaving a reporter's
    block publishes: its message (its type's name when it has none), and
    its type."""
    text = str(exc).strip()
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    return {"error": text or kind.__name__, "exception": name}
