"""The shapes of what the API returns, and of what a watch yields.

REST answers are returned as plain dicts (JSON as the server sent it, so a
newer server's extra fields are never lost); the ``TypedDict``s below name
their documented fields for type checkers. Watch items are small frozen
dataclasses, told apart with ``isinstance``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, TypedDict, Union

#: Any JSON object.
JSONObject = Dict[str, Any]


class _JobOptional(TypedDict, total=False):
    # Fields present only on some jobs. (Two classes rather than
    # ``NotRequired``, which Python 3.9's typing module lacks.)
    run_at: str
    timeout_ms: int
    retry: JSONObject
    waiting: str
    #: Only on a create answered with an existing job (``unique_key``).
    existing: bool


class Job(_JobOptional):
    """A job's state (``GET /api/jobs/{id}``); see docs/protocol.md."""

    id: str
    kind: str
    params: JSONObject
    owner: str
    status: str
    epoch: str
    last_event_id: int
    attempt: int
    total_files: int
    processed_files: int
    failed_files: int
    current_file: Optional[str]
    progress: float
    message: Optional[str]
    error: Optional[str]
    created_at: str
    started_at: Optional[str]
    finished_at: Optional[str]
    expires_at: Optional[str]
    result: Any
    external: bool
    queue: str
    priority: int
    cancel_requested: bool


class Event(TypedDict):
    """One event of a job's log, as in the history API and on the wire."""

    id: int
    job_id: str
    type: str
    timestamp: str
    data: JSONObject


class JobsPage(TypedDict):
    """One page of ``GET /api/jobs``."""

    jobs: List[Job]
    next_cursor: Optional[str]


class EventsPage(TypedDict):
    """One page of ``GET /api/jobs/{id}/events``."""

    job_id: str
    epoch: str
    events: List[Event]


class CancelResult(TypedDict):
    """The answer of ``POST /api/jobs/{id}/cancel``."""

    outcome: str  # "cancelled" | "cancel_requested" | "already_finished"
    job: Job


class PublishResult(TypedDict):
    """The answer to one published event."""

    id: Optional[int]  # None when ``duplicate``
    duplicate: bool
    cancel_requested: bool


class BatchPublishResult(TypedDict):
    """The answer to a published array of events."""

    ids: List[int]
    duplicates: int
    cancel_requested: bool


class NewEvent(TypedDict, total=False):
    """An event to publish: ``type`` is required; ``attempt`` and ``n`` go
    together (the fence: a repeated ``n`` is applied once)."""

    type: str
    data: JSONObject
    attempt: int
    n: int


@dataclass(frozen=True)
class Cursor:
    """Where a watch is in a job's log: its epoch and the last event id
    handed out. With both, a watch resumes exactly (``watch(..., cursors=)``)."""

    epoch: str
    id: int


# Watch items.


@dataclass(frozen=True)
class State:
    """The job's state as of event ``job["last_event_id"]``: the first item
    of a job's watch; every event after it follows."""

    job_id: str
    job: Job
    #: True on :class:`Resync` only.
    resync: bool = False


@dataclass(frozen=True)
class Resync(State):
    """A state that *replaces* what the watch had: its resume point could not
    be honoured (events trimmed, or the job's log rebuilt under a new epoch).
    Some events were skipped; redraw from ``job``."""

    resync: bool = True


@dataclass(frozen=True)
class WatchEvent:
    """One event of a watched job. Per job, ids are consecutive."""

    id: int
    job_id: str
    type: str
    timestamp: str
    data: JSONObject
    #: The message as the server sent it (extra fields included).
    raw: JSONObject = field(repr=False, compare=False)

    @property
    def is_terminal(self) -> bool:
        """``job_completed``, ``job_failed`` or ``job_cancelled``."""
        return self.type in TERMINAL_EVENTS


@dataclass(frozen=True)
class Resumed:
    """The server resumed the job exactly after ``id`` (after a reconnect)."""

    job_id: str
    id: int


@dataclass(frozen=True)
class Refused:
    """The server ended the job's subscription: ``not_found``, ``forbidden``,
    ``too_many_subscriptions``, or ``gone`` (deleted, expired, its data
    lost). The job is not watched any more."""

    job_id: str
    code: str
    message: str


@dataclass(frozen=True)
class Status:
    """The connection's state: ``connecting``, ``connected`` or
    ``disconnected`` (then ``retry_in`` seconds until the next try)."""

    state: str
    url: Optional[str] = None
    reason: Optional[str] = None
    retry_in: Optional[float] = None


@dataclass(frozen=True)
class Message:
    """A server message this client does not know (a newer server's): passed
    through untouched, as the protocol asks."""

    type: str
    raw: JSONObject


WatchItem = Union[State, WatchEvent, Resumed, Refused, Status, Message]

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
TERMINAL_EVENTS = frozenset({"job_completed", "job_failed", "job_cancelled"})
