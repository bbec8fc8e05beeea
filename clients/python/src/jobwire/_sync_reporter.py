"""The synchronous reporter: :class:`JobReporter`, with a sender thread.

Report calls queue an event under a lock and return at once (or wait, when
the buffer is full: see ``_reporter``); one daemon thread per reporter posts
the buffer's head as a batch, retries it through outages with the same
``(attempt, n)`` fences, and wakes waiting callers as room frees up.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Optional, Type

from . import _rest
from ._errors import (
    BufferFull,
    Cancelled,
    Conflict,
    JobwireError,
    PublishTimeout,
    ReporterClosed,
)
from ._reporter import (
    CANCEL_REASON,
    DEFAULT_BLOCK_TIMEOUT,
    DEFAULT_BUFFER_SIZE,
    DEFAULT_CLOSE_TIMEOUT,
    ReporterCore,
    RetryBackoff,
    classify,
    failure_data,
    retry_wait,
)
from ._types import Job, JSONObject

if TYPE_CHECKING:
    from ._client import Client

log = logging.getLogger("jobwire")

#: ``close()``'s default: the reporter's ``close_timeout``.
_DEFAULT: Any = object()


class JobReporter:
    """Publishes one attempt of an external job, exactly once and in order.

    Made by :meth:`Client.external_job` or :meth:`Client.attach`. Use it as
    a context manager; report methods may be called from any thread. Each
    returns at once: a background thread sends the events. Reports raise
    :class:`~jobwire.Cancelled` once the job's cancel was requested, and
    the error that stopped the sender if it stopped for good (e.g.
    :class:`~jobwire.StaleAttempt`).
    """

    def __init__(
        self,
        client: Client,
        job_id: str,
        attempt: int,
        *,
        next_n: int = 1,
        started: bool = False,
        job: Optional[Job] = None,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        block_timeout: Optional[float] = DEFAULT_BLOCK_TIMEOUT,
        close_timeout: Optional[float] = DEFAULT_CLOSE_TIMEOUT,
        max_batch: int = _rest.MAX_PUBLISH_BATCH,
    ) -> None:
        self._client = client
        self._core = ReporterCore(
            job_id,
            attempt,
            next_n=next_n,
            started=started,
            buffer_size=buffer_size,
            max_batch=max_batch,
        )
        #: The job as created (``external_job``), else None.
        self.job = job
        self.block_timeout = block_timeout
        self.close_timeout = close_timeout
        self._cond = threading.Condition()
        # Set by close() when it gives up: the sender stops retrying.
        self._abandoned = False
        # Set when the sender thread ends.
        self._stopped = False
        self._thread = threading.Thread(
            target=self._run, name=f"jobwire-reporter-{job_id}", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"<jobwire.JobReporter job={self.id} attempt={self.attempt} n={self.next_n}>"

    @property
    def id(self) -> str:
        """The job's id."""
        return self._core.job_id

    @property
    def attempt(self) -> int:
        return self._core.attempt

    @property
    def next_n(self) -> int:
        """The ``n`` the next event will carry (to hand over to another
        process: ``attach(id, attempt, next_n=..., started=True)`` after a
        :meth:`flush`)."""
        with self._cond:
            return self._core.next_n

    @property
    def cancel_requested(self) -> bool:
        """Whether the server has said the job's cancel was requested."""
        with self._cond:
            return self._core.cancel_requested or self._core.job_cancelled

    @property
    def stats(self) -> JSONObject:
        """Counts: ``published`` (applied), ``duplicates`` (skipped as already
        applied), ``pending`` (not yet confirmed), ``retries`` (requests sent
        again after no definite answer)."""
        with self._cond:
            return self._core.stats()

    # Reports.

    def started(self, total_files: Optional[int] = None, message: Optional[str] = None) -> None:
        """``job_started``: the job runs (queued → running). Optional: the
        first report that needs a running job publishes it."""
        data: JSONObject = {}
        if total_files is not None:
            data["total_files"] = total_files
        if message is not None:
            data["message"] = message
        self._report("job_started", data)

    def file_processing(self, path: str, **data: Any) -> None:
        """``file_processing``: the job's ``current_file`` becomes ``path``."""
        self._report("file_processing", {**data, "file": str(path)})

    def file_completed(self, path: str, **data: Any) -> None:
        """``file_completed``: ``processed_files`` + 1; ``data`` (hashes,
        sizes ...) is stored in the event."""
        self._report("file_completed", {**data, "file": str(path)})

    def error(self, message: str, *, file: Optional[str] = None, **data: Any) -> None:
        """``error``: a non-fatal error (the job goes on). With ``file``,
        ``failed_files`` + 1."""
        payload: JSONObject = {**data, "message": str(message)}
        if file is not None:
            payload["file"] = str(file)
        self._report("error", payload)

    def file_error(self, path: str, message: str, **data: Any) -> None:
        """``error`` for one file: ``failed_files`` + 1; the job goes on."""
        self.error(message, file=path, **data)

    def progress(
        self,
        current: float,
        total: float,
        message: Optional[str] = None,
        **data: Any,
    ) -> None:
        """``progress``: the job's ``progress`` becomes current / total * 100."""
        payload: JSONObject = {**data, "current": current, "total": total}
        if message is not None:
            payload["message"] = message
        self._report("progress", payload)

    def custom(self, type: str, data: Optional[JSONObject] = None) -> None:
        """An application event (``[a-z0-9_.]{1,64}``): changes nothing but
        the job's position; watchers receive it."""
        self._report(type, dict(data or {}))

    def completed(self, result: Any = None, message: Optional[str] = None) -> None:
        """``job_completed``: the job ends ``completed`` with ``result``."""
        data: JSONObject = {}
        if result is not None:
            data["result"] = result
        if message is not None:
            data["message"] = message
        self._report("job_completed", data)

    def failed(self, error: Any, **data: Any) -> None:
        """``job_failed``: the job ends ``failed``; ``error`` is a message
        or an exception."""
        if isinstance(error, BaseException):
            payload = {**data, **failure_data(error)}
        else:
            payload = {**data, "error": str(error)}
        self._report("job_failed", payload)

    def cancelled(self, reason: str = CANCEL_REASON) -> None:
        """``job_cancelled``: the job ends ``cancelled``."""
        self._report("job_cancelled", {"reason": reason})

    def check(self) -> None:
        """Raises :class:`~jobwire.Cancelled` if the job's cancel is known to
        be requested (or the sender's error, if it stopped); for tasks that
        work long between reports."""
        with self._cond:
            self._core.check(None)

    def _report(self, kind: str, data: JSONObject) -> None:
        with self._cond:
            core = self._core
            core.check(kind)
            encoded = core.encode(kind, data)
            count = core.events_for(kind)
            if not core.room_for(kind, count):
                deadline = (
                    None if self.block_timeout is None else time.monotonic() + self.block_timeout
                )
                while not core.room_for(kind, count):
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise BufferFull(
                            f"job {core.job_id}: {len(core.pending)} events are waiting to be "
                            f"published (the server has been unreachable for "
                            f"{self.block_timeout}s); this {kind} event was not queued"
                        )
                    self._cond.wait(left)
                    core.check(kind)
            core.enqueue(kind, encoded)
            self._cond.notify_all()

    # Flushing and closing.

    def flush(self, timeout: Optional[float] = None) -> None:
        """Waits until every reported event is stored. Raises the sender's
        error if it stopped, :class:`~jobwire.PublishTimeout` after
        ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._core.idle and self._core.failure is None and not self._stopped:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise PublishTimeout(
                        f"job {self.id}: {len(self._core.pending)} events still unpublished "
                        f"after {timeout}s"
                    )
                self._cond.wait(left)
            if self._core.failure is not None:
                raise self._core.failure

    def close(self, timeout: Optional[float] = _DEFAULT) -> None:
        """Waits until everything is stored (``timeout`` seconds, default
        ``close_timeout``; ``None`` waits as long as it takes), then stops
        the sender. Publishes no terminal event itself (the ``with`` block
        does). On timeout the unsent events are abandoned and
        :class:`~jobwire.PublishTimeout` is raised."""
        if timeout is _DEFAULT:
            timeout = self.close_timeout
        try:
            self.flush(timeout)
        except PublishTimeout:
            with self._cond:
                self._abandoned = True
                self._cond.notify_all()
            raise
        finally:
            with self._cond:
                self._core.closed = True
                self._cond.notify_all()
        self._thread.join()

    def __enter__(self) -> JobReporter:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        ending = self._ending(exc)
        if exc is None:
            # Errors here (the sender's failure, a timeout) are the block's result.
            if ending is not None:
                self._report(*ending)
            self.close()
            return
        # An exception is on its way out: report it, but never hide it behind
        # a reporting error.
        try:
            if ending is not None:
                self._report(*ending)
            self.close()
        except JobwireError as e:
            log.warning("job %s: could not publish the end of the job: %s", self.id, e)

    def _ending(self, exc: Optional[BaseException]) -> Optional[tuple[str, JSONObject]]:
        """The terminal event a block ending with ``exc`` publishes, if any."""
        with self._cond:
            core = self._core
            if core.terminal is not None or core.failure is not None or core.closed:
                return None
            if core.job_cancelled:
                return None  # the server cancelled it already: nothing more applies
            if isinstance(exc, Cancelled) and core.cancel_requested:
                return ("job_cancelled", {"reason": CANCEL_REASON})
            if exc is not None:
                return ("job_failed", failure_data(exc))
            return ("job_completed", {})

    # The sender thread.

    def _run(self) -> None:
        backoff = RetryBackoff()
        core = self._core
        try:
            while True:
                with self._cond:
                    while core.idle and not core.closed and not self._abandoned:
                        self._cond.wait()
                    if core.idle or self._abandoned or core.failure is not None:
                        return
                    count, body = core.batch()
                try:
                    reply = self._client._request(_rest.publish_raw(core.job_id, body))
                except JobwireError as e:
                    action = classify(e)
                    if action == "retry":
                        wait = retry_wait(e, backoff)
                        log.debug(
                            "job %s: publish failed (%s); retrying in %.2fs", self.id, e, wait
                        )
                        with self._cond:
                            core.uncertain(count)
                            self._cond.wait_for(lambda: self._abandoned, wait)
                        continue
                    if action == "conflict":
                        assert isinstance(e, Conflict)
                        status = self._job_status()
                        with self._cond:
                            core.on_conflict(e, status)
                            self._cond.notify_all()
                        continue
                    with self._cond:
                        core.fail(e)
                        self._cond.notify_all()
                    return
                with self._cond:
                    backoff.reset()
                    try:
                        core.applied(count, reply)
                    except JobwireError as e:  # an answer this client cannot read
                        core.fail(e)
                    self._cond.notify_all()
                    if core.failure is not None:
                        return
        except BaseException as e:  # a bug: never leave callers waiting forever
            with self._cond:
                if core.failure is None:
                    core.fail(
                        e
                        if isinstance(e, JobwireError)
                        else JobwireError(
                            f"the reporter's sender crashed: {type(e).__name__}: {e}",
                            code="internal",
                        )
                    )
            raise
        finally:
            with self._cond:
                self._stopped = True
                if not core.idle and core.failure is None:
                    core.fail(ReporterClosed(f"job {self.id}: the reporter was closed"))
                self._cond.notify_all()

    def _job_status(self) -> Optional[str]:
        """The job's status, when the token may read it (jobs:read)."""
        try:
            return self._client.get_job(self.id)["status"]
        except JobwireError:
            return None
