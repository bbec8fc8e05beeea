"""Owning an attempt of an external job from a task queue, with the publish
fences alone (scope ``worker``; no ``jobs:read`` needed).

A task-queue message can run more than once: a worker dies and the broker
redelivers it, a visibility timeout expires while it still runs, a retry is
sent while the old message is redelivered. Each run must own an attempt of
the job of its own, so that the events of a run that is gone (or still
going) can never mix with the new run's. :func:`claim` gets one:

1. publish ``job_started`` fenced ``(attempt, 1)``. Applied: this run owns
   ``attempt``; its next event is ``n = 2``.
2. Reported as a *duplicate*: another run already started this attempt (the
   message is a redelivery). Take over: publish ``job_retrying`` fenced
   ``(attempt, TAKEOVER_N)``, which the server applies whatever the other
   run's last ``n`` (``TAKEOVER_N`` is above any), moving the job to
   ``attempt + 1``; every later event of the other run is refused as stale.
   Then back to 1 with ``attempt + 1``.
3. Refused as *stale*: the job is on a later attempt (a retry or a takeover
   happened). Back to 1 with the job's current attempt, read from the
   refusal.
4. Refused as illegal because the job has ended (``completed``, ``failed``,
   ``cancelled``): :class:`JobFinished`, the run has nothing to do.

Each publish is sent again, with the same fence, until it gets a definite
answer (as the reporter does). A ``job_started`` whose first answer was lost
and that is then reported as a duplicate of itself costs one extra attempt,
never a mixed log.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ._client import Client
from ._errors import Conflict, JobwireError, StaleAttempt
from ._reporter import RetryBackoff, classify, retry_wait
from ._types import TERMINAL_STATUSES, PublishResult

#: The ``n`` of a takeover's ``job_retrying``: above any ``n`` a run can have
#: used, so the server applies it however far the attempt it ends had got
#: (JavaScript's largest safe integer, for tools that read the log).
TAKEOVER_N = 2**53 - 1
#: How many times :func:`claim` moves on (stale, duplicate) before it gives up.
MAX_ROUNDS = 20

_CURRENT_ATTEMPT = re.compile(r"is on attempt (\d+)")
_STATUS = re.compile(r"while the job is ([a-z]+)")


class JobFinished(JobwireError):
    """The job has ended already (``status``): the run has nothing to do."""

    default_code = "finished"

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"job {job_id} has already ended ({status})")
        self.job_id = job_id
        self.job_status = status


@dataclass
class Claim:
    """An attempt this run owns: its ``job_started`` is stored as ``n = 1``."""

    attempt: int
    #: Attempts this run took over from runs that had started them.
    took_over: int
    #: The job's cancel was requested (it arrives with a publish's answer).
    cancel_requested: bool


def publish_answered(
    client: Client,
    job_id: str,
    kind: str,
    data: Mapping[str, Any],
    *,
    attempt: Optional[int] = None,
    n: Optional[int] = None,
    timeout: Optional[float] = 300.0,
) -> PublishResult:
    """Publishes one event, sending it again (same fence) while the answer is
    unknown (unreachable, 5xx, 408, 429), for up to ``timeout`` seconds
    (``None``: as long as it takes). Raises the definite error otherwise."""
    backoff = RetryBackoff()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            return client.publish(job_id, kind, data, attempt=attempt, n=n)
        except JobwireError as e:
            if classify(e) != "retry":
                raise
            wait = retry_wait(e, backoff)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                wait = min(wait, left)
            time.sleep(wait)


def current_attempt(error: StaleAttempt) -> Optional[int]:
    """The job's attempt in a ``stale_attempt`` refusal: its ``attempt``
    field, or the message of a server that sends none."""
    attempt = error.details.get("attempt")
    if isinstance(attempt, int):
        return attempt
    match = _CURRENT_ATTEMPT.search(error.message)
    return int(match.group(1)) if match else None


def refused_status(error: Conflict) -> Optional[str]:
    """The job's status in a ``conflict`` refusal (an illegal event): its
    ``status`` field, or the message of a server that sends none."""
    status = error.details.get("status")
    if isinstance(status, str):
        return status
    match = _STATUS.search(error.message)
    return match.group(1) if match else None


def claim(
    client: Client,
    job_id: str,
    attempt: int,
    *,
    started: Mapping[str, Any],
    takeover: Mapping[str, Any],
    timeout: Optional[float] = 300.0,
) -> Claim:
    """Makes this run the owner of an attempt of ``job_id`` (see the module's
    documentation), starting from ``attempt`` (the one the message was sent
    for). ``started`` is the ``job_started`` data, ``takeover`` the
    ``job_retrying`` data of a takeover. Raises :class:`JobFinished` when the
    job has ended, and definite errors (401, 403, 404, ...) as they are."""
    took_over = 0
    for _ in range(MAX_ROUNDS):
        try:
            reply = publish_answered(
                client, job_id, "job_started", started, attempt=attempt, n=1, timeout=timeout
            )
        except StaleAttempt as e:
            attempt = _moved_to(e, client, job_id)
            continue
        except Conflict as e:
            status = refused_status(e)
            if status in TERMINAL_STATUSES:
                raise JobFinished(job_id, str(status)) from None
            if status != "running":
                raise
            # Running, but without a fenced job_started at n = 1 (started by
            # hand): another run may be at work; take over all the same.
            reply = {"id": None, "duplicate": True, "cancel_requested": False}
        if not reply["duplicate"]:
            return Claim(attempt, took_over, bool(reply.get("cancel_requested")))
        try:
            publish_answered(
                client,
                job_id,
                "job_retrying",
                takeover,
                attempt=attempt,
                n=TAKEOVER_N,
                timeout=timeout,
            )
        except StaleAttempt as e:
            attempt = _moved_to(e, client, job_id)
            continue
        except Conflict as e:
            status = refused_status(e)
            if status in TERMINAL_STATUSES:
                raise JobFinished(job_id, str(status)) from None
            raise
        attempt += 1
        took_over += 1
    raise JobwireError(
        f"job {job_id}: could not claim an attempt after {MAX_ROUNDS} tries "
        "(other runs of the task keep taking it over)",
        code="claim",
    )


def _moved_to(error: StaleAttempt, client: Client, job_id: str) -> int:
    """The attempt the job moved on to, from the refusal (or the job)."""
    attempt = current_attempt(error)
    if attempt is not None:
        return attempt
    try:  # an older server's wording: read the job (needs jobs:read)
        return int(client.get_job(job_id)["attempt"])
    except JobwireError:
        raise error from None
