"""The watch's state machine, shared by the sync and async watches, without I/O.

It is the JavaScript client's (clients/js/jobwire.js, ``Watch.onMessage``)
and follows docs/clients.md's rules:

1. one multiplexed socket (``/ws/jobs``), jobs subscribed by frames;
2. per job a cursor ``(epoch, id)``, advanced *before* the item is handed
   out, so whatever the consumer does, a reconnect neither replays nor skips;
3. after a disconnect every unfinished job is subscribed again with
   ``since``/``epoch``; the server answers ``resumed`` or a fresh state with
   ``resync``, surfaced as :class:`~jobwire.Resync`;
4. an event at or below the cursor is a duplicate and dropped; one past
   cursor + 1 (a hole) drops the connection, and the resume fills it;
5. reconnects wait a random time up to a delay doubling from 0.2 s to 10 s,
   reset once a connection worked for 5 s; a close with 1008 waits at
   least 5 s (:class:`Backoff`);
6. several base URLs are tried in turn, starting with the last that worked;
7. tokens are refreshed over the open socket before they expire, and a
   refused one is replaced once;
8. a finished job, or one the server ended (``refused``, ``gone``), is not
   subscribed again; ``refused`` with ``unavailable`` is not an end.

The sync and async watches (``_sync_watch``, ``_async_watch``) only move
frames between a socket and this object.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from ._errors import Forbidden, JobwireError, Unauthorized
from ._types import (
    TERMINAL_EVENTS,
    TERMINAL_STATUSES,
    Cursor,
    Job,
    Message,
    Refused,
    Resumed,
    Resync,
    State,
    WatchEvent,
    WatchItem,
)

BACKOFF_FIRST = 0.2
BACKOFF_MAX = 10.0
#: A connection that lasted this long resets the backoff.
BACKOFF_RESET_AFTER = 5.0
#: A close with 1008 (limits) waits at least this long.
SLOW_DOWN = 5.0
#: The websockets library's own keepalive: a ping every 20 s, and a
#: connection whose pong does not come within 20 s counts as lost (the
#: server pings every 25 s too; 75 s of silence is its limit).
PING_INTERVAL = 20.0
PING_TIMEOUT = 20.0
#: Largest frame accepted from the server (a job's state with a big result).
MAX_FRAME = 16 * 1024 * 1024

# Close codes (docs/protocol.md).
CLOSE_POLICY = 1008
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403


class Backoff:
    """Reconnect delays: full jitter over a ceiling doubling from 0.2 s to
    10 s, so that thousands of clients of a restarted instance do not come
    back at once."""

    def __init__(self, rng: Callable[[], float] = random.random) -> None:
        self.delay = BACKOFF_FIRST
        self._rng = rng

    def next(self, slow_down: bool = False) -> float:
        ceiling = max(self.delay, SLOW_DOWN) if slow_down else self.delay
        wait = self._rng() * ceiling
        self.delay = min(self.delay * 2, BACKOFF_MAX)
        return wait

    def connection_lasted(self, seconds: float) -> None:
        if seconds > BACKOFF_RESET_AFTER:
            self.delay = BACKOFF_FIRST


@dataclass
class JobWatch:
    cursor: Optional[Cursor] = None
    done: bool = False


class WatchCore:
    """The watched jobs, their cursors, and what each server message means."""

    def __init__(self, job_ids: Iterable[str], cursors: Mapping[str, Cursor]) -> None:
        self.jobs: Dict[str, JobWatch] = {}
        for job_id in job_ids:
            self.add(job_id, cursors.get(job_id))
        #: A refused token is replaced once; reset once a connection with a
        #: token has delivered a message.
        self.refused_once = False

    def add(self, job_id: str, cursor: Optional[Cursor] = None) -> bool:
        """Starts watching a job; False if it was watched already."""
        if not isinstance(job_id, str) or not job_id:
            raise ValueError("a job id is a non-empty string")
        if job_id in self.jobs:
            return False
        self.jobs[job_id] = JobWatch(cursor)
        return True

    def remove(self, job_id: str) -> bool:
        return self.jobs.pop(job_id, None) is not None

    def cursor(self, job_id: str) -> Optional[Cursor]:
        watch = self.jobs.get(job_id)
        return watch.cursor if watch else None

    @property
    def all_done(self) -> bool:
        return all(w.done for w in self.jobs.values())

    @staticmethod
    def subscribe_frame(job_id: str, cursor: Optional[Cursor]) -> str:
        frame: Dict[str, Any] = {"type": "subscribe", "job_id": job_id}
        if cursor is not None:
            frame["since"] = cursor.id
            frame["epoch"] = cursor.epoch
        return json.dumps(frame)

    def subscribe_frames(self) -> List[str]:
        """The frames that (re)subscribe every unfinished job from its cursor."""
        return [self.subscribe_frame(i, w.cursor) for i, w in self.jobs.items() if not w.done]

    def on_text(self, text: Any) -> Tuple[List[WatchItem], bool]:
        """Handles one frame: the items to hand out, and False when the
        connection must be dropped (and resumed)."""
        if not isinstance(text, str):
            return [], False
        try:
            message = json.loads(text)
        except ValueError:
            return [], False
        if not isinstance(message, dict):
            return [], False
        return self.on_message(message)

    def on_message(self, msg: Dict[str, Any]) -> Tuple[List[WatchItem], bool]:
        kind = msg.get("type")
        job_id = msg.get("job_id")
        watch = self.jobs.get(job_id) if isinstance(job_id, str) else None
        if kind == "current_state":
            if watch is None:
                return [], True
            data, epoch, last = msg.get("data"), msg.get("epoch"), msg.get("id")
            if not isinstance(data, dict) or not isinstance(epoch, str) or not _is_id(last):
                return [], False
            assert isinstance(last, int)
            assert isinstance(job_id, str)
            watch.cursor = Cursor(epoch, last)
            watch.done = data.get("status") in TERMINAL_STATUSES
            job: Job = data  # type: ignore[assignment]
            state = Resync(job_id, job) if msg.get("resync") is True else State(job_id, job)
            return [state], True
        if kind == "resumed":
            if watch is None:
                return [], True
            assert isinstance(job_id, str)
            if watch.cursor is None or watch.cursor.id != msg.get("id"):
                return [], False
            return [Resumed(job_id, watch.cursor.id)], True
        if kind in ("refused", "gone"):
            if watch is None:
                # A refused frame of no job's (bad_frame, a refused refresh):
                # informational.
                return [Message(str(kind), msg)], True
            assert isinstance(job_id, str)
            code = msg.get("code")
            if kind == "refused" and code == "unavailable":
                # The server could not read the job just now: not an answer
                # about the job. Reconnect and subscribe again from the cursor.
                return [], False
            watch.done = True
            code = code if isinstance(code, str) else ("gone" if kind == "gone" else "not_found")
            message = msg.get("message")
            return [Refused(job_id, code, message if isinstance(message, str) else "")], True
        if kind in ("pong", "refreshed", "unsubscribed"):
            return [], True
        # An event (any type: built-in or an application's), or a server
        # message of a type this client does not know.
        event_id = msg.get("id")
        if watch is None or not _is_id(event_id) or not isinstance(kind, str):
            if watch is None and isinstance(job_id, str) and _is_id(event_id):
                return [], True  # an event of a job no longer watched
            return [Message(str(kind), msg)], True
        assert isinstance(job_id, str) and isinstance(event_id, int)
        if watch.cursor is None:
            return [], False  # an event before its job's state
        if event_id <= watch.cursor.id:
            return [], True  # a duplicate
        if event_id != watch.cursor.id + 1:
            return [], False  # a hole: resume from the cursor
        watch.cursor = Cursor(watch.cursor.epoch, event_id)
        if kind in TERMINAL_EVENTS:
            watch.done = True
        data = msg.get("data")
        timestamp = msg.get("timestamp")
        item = WatchEvent(
            id=event_id,
            job_id=job_id,
            type=kind,
            timestamp=timestamp if isinstance(timestamp, str) else "",
            data=data if isinstance(data, dict) else {},
            raw=msg,
        )
        return [item], True


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def close_error(code: Optional[int], reason: str) -> Optional[JobwireError]:
    """The error that ends a watch for a close code, if it ends it (4401 is
    handled by the token logic)."""
    if code == CLOSE_FORBIDDEN:
        return Forbidden(f"the server refused the watch: {reason or 'forbidden'}", status=403)
    return None


def unauthorized(reason: str) -> Unauthorized:
    return Unauthorized(f"the token was refused: {reason}", status=401)
