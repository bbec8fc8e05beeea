"""The watch's state machine on frames the tests write: the cases a real server
does not produce on demand (holes, out-of-order frames, unknown message types,
``refused`` with ``unavailable``), and the backoff's bounds."""

from __future__ import annotations

import json
from typing import Any, Dict, List

import jobwire
from jobwire._watch import BACKOFF_MAX, Backoff, WatchCore


def state(job_id: str, last: int, status: str = "running", **extra: Any) -> Dict[str, Any]:
    return {
        "type": "current_state",
        "job_id": job_id,
        "id": last,
        "epoch": "e1",
        "data": {"id": job_id, "status": status, "last_event_id": last},
        **extra,
    }


def event(job_id: str, n: int, kind: str = "progress") -> Dict[str, Any]:
    return {"type": kind, "job_id": job_id, "id": n, "timestamp": "t", "data": {"n": n}}


def test_ids_are_consecutive_duplicates_dropped_holes_resumed() -> None:
    core = WatchCore(["j"], {})
    items, ok = core.on_message(event("j", 1))
    assert (items, ok) == ([], False)  # an event before the job's state

    items, ok = core.on_message(state("j", 3))
    assert ok and isinstance(items[0], jobwire.State) and not items[0].resync
    assert core.cursor("j") == jobwire.Cursor("e1", 3)

    assert core.on_message(event("j", 2)) == ([], True)  # at or below the cursor: dropped
    assert core.on_message(event("j", 3)) == ([], True)
    items, ok = core.on_message(event("j", 4))
    assert ok and isinstance(items[0], jobwire.WatchEvent) and items[0].id == 4
    assert core.cursor("j") == jobwire.Cursor("e1", 4)  # advanced before it is handed out

    assert core.on_message(event("j", 6)) == ([], False)  # a hole: drop and resume
    assert core.cursor("j") == jobwire.Cursor("e1", 4)
    assert json.loads(core.subscribe_frames()[0]) == {
        "type": "subscribe",
        "job_id": "j",
        "since": 4,
        "epoch": "e1",
    }


def test_resumed_must_match_the_cursor() -> None:
    core = WatchCore(["j"], {"j": jobwire.Cursor("e1", 7)})
    assert core.on_message({"type": "resumed", "job_id": "j", "id": 6, "epoch": "e1"}) == (
        [],
        False,
    )
    items, ok = core.on_message({"type": "resumed", "job_id": "j", "id": 7, "epoch": "e1"})
    assert ok and items == [jobwire.Resumed("j", 7)]


def test_resync_is_a_state_of_its_own_type() -> None:
    core = WatchCore(["j"], {"j": jobwire.Cursor("old", 9)})
    items, ok = core.on_message(state("j", 2, resync=True))
    assert ok and isinstance(items[0], jobwire.Resync) and isinstance(items[0], jobwire.State)
    assert core.cursor("j") == jobwire.Cursor("e1", 2)


def test_custom_and_error_events_are_events_and_terminal_ones_end() -> None:
    core = WatchCore(["j"], {})
    core.on_message(state("j", 1))
    items, _ = core.on_message(event("j", 2, "my.custom"))
    assert isinstance(items[0], jobwire.WatchEvent) and items[0].type == "my.custom"
    items, _ = core.on_message(event("j", 3, "error"))
    assert isinstance(items[0], jobwire.WatchEvent) and not core.all_done
    items, _ = core.on_message(event("j", 4, "job_failed"))
    assert items[0].is_terminal and core.all_done  # type: ignore[union-attr]
    assert core.subscribe_frames() == []


def test_unknown_server_messages_pass_through() -> None:
    core = WatchCore(["j"], {})
    msg = {"type": "maintenance", "message": "at noon"}
    items, ok = core.on_message(msg)
    assert ok and items == [jobwire.Message("maintenance", msg)]
    for known in (
        {"type": "pong"},
        {"type": "refreshed", "expires_at": 1},
        {"type": "unsubscribed", "job_id": "j"},
    ):
        assert core.on_message(known) == ([], True)
    # Not JSON, or not an object: the connection is dropped and resumed.
    assert core.on_text("not json") == ([], False)
    assert core.on_text("[1]") == ([], False)
    assert core.on_text(b"binary") == ([], False)


def test_refusals() -> None:
    core = WatchCore(["a", "b", "c"], {})
    # The store could not be read: not an answer about the job.
    assert core.on_message(
        {"type": "refused", "job_id": "a", "code": "unavailable", "message": "later"}
    ) == ([], False)
    assert not core.jobs["a"].done
    items, ok = core.on_message(
        {"type": "refused", "job_id": "a", "code": "forbidden", "message": "not yours"}
    )
    assert ok and items == [jobwire.Refused("a", "forbidden", "not yours")]
    items, _ = core.on_message({"type": "gone", "job_id": "b", "message": "deleted"})
    assert items == [jobwire.Refused("b", "gone", "deleted")]
    # A refused frame of no job's (a malformed frame) is passed on as a message.
    items, ok = core.on_message({"type": "refused", "code": "bad_frame", "message": "?"})
    assert ok and isinstance(items[0], jobwire.Message)
    assert not core.all_done
    core.on_message(state("c", 5, status="completed"))
    assert core.all_done


def test_events_of_unwatched_jobs_are_ignored() -> None:
    core = WatchCore(["j"], {})
    assert core.on_message(state("other", 1)) == ([], True)
    assert core.on_message(event("other", 2)) == ([], True)
    core.remove("j")
    assert core.on_message(event("j", 2)) == ([], True)


def test_backoff_is_full_jitter_doubling_to_ten_seconds() -> None:
    top: List[float] = []
    b = Backoff(rng=lambda: 1.0)
    for _ in range(10):
        top.append(b.next())
    assert top[:4] == [0.2, 0.4, 0.8, 1.6]
    assert max(top) == BACKOFF_MAX
    assert Backoff(rng=lambda: 0.0).next() == 0.0
    assert Backoff(rng=lambda: 1.0).next(slow_down=True) == 5.0  # 1008: at least 5 s
    b.connection_lasted(2.0)
    assert b.delay == BACKOFF_MAX
    b.connection_lasted(6.0)  # worked for more than 5 s: start over
    assert b.delay == 0.2
