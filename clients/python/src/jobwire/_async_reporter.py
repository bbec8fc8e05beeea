"""The asyncio reporter: :class:`AsyncJobReporter`, with a sender task.

The async twin of ``_sync_reporter``: report coroutines queue an event and
return at once (or wait while the buffer is full); one task per reporter
posts the buffer's head as a batch and retries it through outages with the
same ``(attempt, n)`` fences. All of it runs on one event loop, so the
shared :class:`~jobwire._reporter.ReporterCore` needs no lock.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Tuple, Type

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
    from ._async_client import AsyncClient

log = logging.getLogger("jobwire")

#: ``close()``'s default: the reporter's ``close_timeout``.
_DEFAULT: Any = object()


class AsyncJobReporter:
    """Publishes one attempt of an external job, exactly once and in order.

    Made by :meth:`AsyncClient.external_job` (which creates the job when the
    ``async with`` block is entered) or :meth:`AsyncClient.attach`. Report
    methods are coroutines that return as soon as the event is queued; a
    background task sends. They raise :class:`~jobwire.Cancelled` once the
    job's cancel was requested, and the error that stopped the sender if it
    stopped for good.
    """

    def __init__(
        self,
        client: AsyncClient,
        job_id: Optional[str],
        attempt: Optional[int],
        *,
        next_n: int = 1,
        started: bool = False,
        create: Optional[Tuple[str, Mapping[str, Any], Dict[str, Any]]] = None,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        block_timeout: Optional[float] = DEFAULT_BLOCK_TIMEOUT,
        close_timeout: Optional[float] = DEFAULT_CLOSE_TIMEOUT,
        max_batch: int = _rest.MAX_PUBLISH_BATCH,
    ) -> None:
        self._client = client
        self._options: Dict[str, Any] = {
            "next_n": next_n,
            "started": started,
            "buffer_size": buffer_size,
            "max_batch": max_batch,
        }
        self._create = create
        self._core: Optional[ReporterCore] = None
        if job_id is not None and attempt is not None:
            self._core = ReporterCore(job_id, attempt, **self._options)
        #: The job as created (``external_job``), else None.
        self.job: Optional[Job] = None
        self.block_timeout = block_timeout
        self.close_timeout = close_timeout
        self._cond: Optional[asyncio.Condition] = None
        self._task: Optional[asyncio.Task[None]] = None
        self._abandoned = False
        self._stopped = False

    def __repr__(self) -> str:
        if self._core is None:
            return "<jobwire.AsyncJobReporter (job not created yet)>"
        core = self._core
        return (
            f"<jobwire.AsyncJobReporter job={core.job_id} attempt={core.attempt} n={core.next_n}>"
        )

    async def open(self) -> AsyncJobReporter:
        """Creates the job (for ``external_job``) and starts the sender task.
        ``async with`` calls it; idempotent."""
        if self._core is None:
            assert self._create is not None
            kind, params, options = self._create
            job = await self._client.create_external_job(kind, params, **options)
            self.job = job
            self._core = ReporterCore(job["id"], job["attempt"], **self._options)
        if self._task is None:
            self._cond = asyncio.Condition()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"jobwire-reporter-{self._core.job_id}"
            )
        return self

    def _ready(self) -> Tuple[ReporterCore, asyncio.Condition]:
        if self._core is None or self._cond is None:
            raise ReporterClosed(
                "the reporter is not open: use `async with` or `await reporter.open()`"
            )
        return self._core, self._cond

    @property
    def id(self) -> str:
        """The job's id."""
        return self._ready()[0].job_id

    @property
    def attempt(self) -> int:
        return self._ready()[0].attempt

    @property
    def next_n(self) -> int:
        """The ``n`` the next event will carry."""
        return self._ready()[0].next_n

    @property
    def cancel_requested(self) -> bool:
        core = self._ready()[0]
        return core.cancel_requested or core.job_cancelled

    @property
    def stats(self) -> JSONObject:
        return self._ready()[0].stats()

    # Reports.

    async def started(
        self, total_files: Optional[int] = None, message: Optional[str] = None
    ) -> None:
        """``job_started``. Optional: the first report that needs a running
        job publishes it."""
        data: JSONObject = {}
        if total_files is not None:
            data["total_files"] = total_files
        if message is not None:
            data["message"] = message
        await self._report("job_started", data)

    async def file_processing(self, path: str, **data: Any) -> None:
        await self._report("file_processing", {**data, "file": str(path)})

    async def file_completed(self, path: str, **data: Any) -> None:
        await self._report("file_completed", {**data, "file": str(path)})

    async def error(self, message: str, *, file: Optional[str] = None, **data: Any) -> None:
        payload: JSONObject = {**data, "message": str(message)}
        if file is not None:
            payload["file"] = str(file)
        await self._report("error", payload)

    async def file_error(self, path: str, message: str, **data: Any) -> None:
        await self.error(message, file=path, **data)

    async def progress(
        self,
        current: float,
        total: float,
        message: Optional[str] = None,
        **data: Any,
    ) -> None:
        payload: JSONObject = {**data, "current": current, "total": total}
        if message is not None:
            payload["message"] = message
        await self._report("progress", payload)

    async def custom(self, type: str, data: Optional[JSONObject] = None) -> None:
        await self._report(type, dict(data or {}))

    async def completed(self, result: Any = None, message: Optional[str] = None) -> None:
        data: JSONObject = {}
        if result is not None:
            data["result"] = result
        if message is not None:
            data["message"] = message
        await self._report("job_completed", data)

    async def failed(self, error: Any, **data: Any) -> None:
        if isinstance(error, BaseException):
            payload = {**data, **failure_data(error)}
        else:
            payload = {**data, "error": str(error)}
        await self._report("job_failed", payload)

    async def cancelled(self, reason: str = CANCEL_REASON) -> None:
        await self._report("job_cancelled", {"reason": reason})

    def check(self) -> None:
        """Raises :class:`~jobwire.Cancelled` if the job's cancel is known to
        be requested (or the sender's error, if it stopped)."""
        self._ready()[0].check(None)

    async def _report(self, kind: str, data: JSONObject) -> None:
        core, cond = self._ready()
        core.check(kind)
        encoded = core.encode(kind, data)
        count = core.events_for(kind)
        async with cond:
            if not core.room_for(kind, count):
                try:
                    await asyncio.wait_for(
                        cond.wait_for(
                            lambda: core.room_for(kind, count) or core.failure is not None
                        ),
                        self.block_timeout,
                    )
                except asyncio.TimeoutError:
                    raise BufferFull(
                        f"job {core.job_id}: {len(core.pending)} events are waiting to be "
                        f"published (the server has been unreachable for "
                        f"{self.block_timeout}s); this {kind} event was not queued"
                    ) from None
                core.check(kind)
            core.enqueue(kind, encoded)
            cond.notify_all()

    # Flushing and closing.

    async def flush(self, timeout: Optional[float] = None) -> None:
        """Waits until every reported event is stored."""
        core, cond = self._ready()
        async with cond:
            try:
                await asyncio.wait_for(
                    cond.wait_for(lambda: core.idle or core.failure is not None or self._stopped),
                    timeout,
                )
            except asyncio.TimeoutError:
                raise PublishTimeout(
                    f"job {core.job_id}: {len(core.pending)} events still unpublished "
                    f"after {timeout}s"
                ) from None
        if core.failure is not None:
            raise core.failure

    async def aclose(self, timeout: Optional[float] = _DEFAULT) -> None:
        """Waits until everything is stored (``timeout``, default
        ``close_timeout``; ``None``: as long as it takes), then stops the
        sender task. On timeout the unsent events are abandoned and
        :class:`~jobwire.PublishTimeout` is raised."""
        if self._core is None or self._task is None:
            return
        core, cond = self._ready()
        if timeout is _DEFAULT:
            timeout = self.close_timeout
        try:
            await self.flush(timeout)
        except PublishTimeout:
            self._abandoned = True
            raise
        finally:
            async with cond:
                core.closed = True
                cond.notify_all()
            if self._abandoned:
                self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                if not self._abandoned:
                    raise

    async def __aenter__(self) -> AsyncJobReporter:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self._core is None:
            return
        ending = self._ending(exc)
        if exc is None:
            if ending is not None:
                await self._report(*ending)
            await self.aclose()
            return
        try:
            if ending is not None:
                await self._report(*ending)
            await self.aclose()
        except JobwireError as e:
            log.warning("job %s: could not publish the end of the job: %s", self.id, e)

    def _ending(self, exc: Optional[BaseException]) -> Optional[Tuple[str, JSONObject]]:
        core = self._ready()[0]
        if core.terminal is not None or core.failure is not None or core.closed:
            return None
        if core.job_cancelled:
            return None
        if isinstance(exc, Cancelled) and core.cancel_requested:
            return ("job_cancelled", {"reason": CANCEL_REASON})
        if isinstance(exc, asyncio.CancelledError):
            # The task running the block was cancelled (a timeout, a
            # shutdown): the job cannot go on.
            return (
                "job_failed",
                {"error": "the task was cancelled", "exception": "asyncio.CancelledError"},
            )
        if exc is not None:
            return ("job_failed", failure_data(exc))
        return ("job_completed", {})

    # The sender task.

    async def _run(self) -> None:
        core, cond = self._ready()
        backoff = RetryBackoff()
        try:
            while True:
                async with cond:
                    await cond.wait_for(lambda: not core.idle or core.closed)
                    if core.idle or core.failure is not None:
                        return
                    count, body = core.batch()
                try:
                    reply = await self._client._request(_rest.publish_raw(core.job_id, body))
                except JobwireError as e:
                    action = classify(e)
                    if action == "retry":
                        wait = retry_wait(e, backoff)
                        log.debug(
                            "job %s: publish failed (%s); retrying in %.2fs", core.job_id, e, wait
                        )
                        core.uncertain(count)
                        await asyncio.sleep(wait)
                        continue
                    async with cond:
                        if action == "conflict":
                            assert isinstance(e, Conflict)
                            core.on_conflict(e, await self._job_status(core.job_id))
                        else:
                            core.fail(e)
                        cond.notify_all()
                    if core.failure is not None:
                        return
                    continue
                async with cond:
                    backoff.reset()
                    try:
                        core.applied(count, reply)
                    except JobwireError as e:
                        core.fail(e)
                    cond.notify_all()
                    if core.failure is not None:
                        return
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug: never leave callers waiting forever
            core.fail(
                e
                if isinstance(e, JobwireError)
                else JobwireError(
                    f"the reporter's sender crashed: {type(e).__name__}: {e}", code="internal"
                )
            )
            raise
        finally:
            self._stopped = True
            if not core.idle and core.failure is None:
                core.fail(ReporterClosed(f"job {core.job_id}: the reporter was closed"))
            # Wake flush() and blocked reports: they re-check and see why.
            async with cond:
                cond.notify_all()

    async def _job_status(self, job_id: str) -> Optional[str]:
        try:
            job = await self._client.get_job(job_id)
        except JobwireError:
            return None
        return job["status"]
