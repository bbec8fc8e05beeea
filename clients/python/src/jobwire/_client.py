"""The synchronous client: :class:`Client`.

REST calls over one pooled httpx connection set, a reporter for external jobs
(:meth:`Client.external_job`, :meth:`Client.attach`) and live watching
(:meth:`Client.watch`). Safe to share between threads.
"""

from __future__ import annotations

from typing import (
    Any,
    Iterable,
    Iterator,
    Mapping,
    Optional,
    Sequence,
    Union,
    cast,
)

import httpx

from . import _rest
from ._auth import SyncTokens, TokenProvider
from ._errors import JobwireError, Unreachable
from ._reporter import DEFAULT_BLOCK_TIMEOUT, DEFAULT_BUFFER_SIZE, DEFAULT_CLOSE_TIMEOUT
from ._sync_reporter import JobReporter
from ._sync_watch import Watch
from ._tls import Verify, ssl_context
from ._types import (
    BatchPublishResult,
    CancelResult,
    Cursor,
    Event,
    EventsPage,
    Job,
    JobsPage,
    NewEvent,
    PublishResult,
)

#: Seconds a REST call may take (connect, each read, each write).
DEFAULT_TIMEOUT = 10.0


def describe(error: BaseException) -> str:
    """An exception's text for a message (its type when it has none)."""
    return str(error) or type(error).__name__


class Client:
    """A client of one jobwire deployment.

    ``base_url`` is the server's URL, or a list of several instances' URLs
    (tried in turn, starting with the one that last answered). ``token`` is
    a JWT, or a callable returning one (called again when the token is about
    to expire and when the server refuses it). ``verify``: ``True`` (system
    roots), a CA file or directory path, an :class:`ssl.SSLContext`, or
    ``False`` (tests only). ``timeout``: seconds per REST call.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        base_url: Union[str, Sequence[str]],
        token: Union[str, TokenProvider, None] = None,
        *,
        verify: Verify = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._endpoints = _rest.Endpoints(base_url)
        self._tokens = SyncTokens(token)
        self._ssl = ssl_context(verify)
        self._timeout = timeout
        self._http = httpx.Client(verify=self._ssl, timeout=timeout, follow_redirects=False)

    def __repr__(self) -> str:
        # Never the token.
        return f"jobwire.Client({self._endpoints.urls!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the client's connections (reporters using it stop working)."""
        self._http.close()

    # Sending.

    def _send(self, call: _rest.Call, token: str) -> httpx.Response:
        """Sends ``call`` to the first instance that accepts a connection.

        Only a failure to *connect* moves on to the next URL: once a request
        may have reached a server, sending it elsewhere could apply it twice
        (a create without an Idempotency-Key), so that raises instead.
        """
        if self._http.is_closed:
            raise JobwireError("the jobwire client is closed", code="closed")
        failures = []
        for index, base in self._endpoints.in_order():
            try:
                response = self._http.request(
                    call.method,
                    base + call.path,
                    params=call.params or None,
                    content=call.body,
                    headers=_rest.headers(token, call),
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                failures.append(f"{base}: {describe(e)}")
                continue
            except httpx.TransportError as e:
                raise Unreachable(
                    f"{call.method} {base}{call.path} failed after it was sent "
                    f"({describe(e)}); the server may have applied it"
                ) from e
            self._endpoints.worked(index)
            return response
        raise Unreachable("cannot reach jobwire: " + "; ".join(failures))

    def _request(self, call: _rest.Call) -> Any:
        """Sends ``call`` and decodes the answer; a 401 with a token provider
        is retried once with a fresh token."""
        token = self._tokens.current()
        response = self._send(call, token)
        if response.status_code == 401 and self._tokens.refreshable:
            token = self._tokens.fresh(refused=token)
            response = self._send(call, token)
        return _rest.decode(response.status_code, response.content, response.headers)

    # Jobs.

    def create_job(
        self,
        kind: str,
        params: Optional[Mapping[str, Any]] = None,
        *,
        external: bool = False,
        queue: Optional[str] = None,
        priority: Optional[int] = None,
        run_at: Optional[_rest.Instant] = None,
        delay: Optional[_rest.Duration] = None,
        timeout: Optional[_rest.Duration] = None,
        max_attempts: Optional[int] = None,
        backoff: Optional[Mapping[str, Any]] = None,
        unique_key: Optional[str] = None,
        idempotency_key: Optional[str] = None,
    ) -> Job:
        """Creates a job (``POST /api/jobs``, scope ``jobs:write``; external
        jobs also need ``worker``). Durations are "30s"-style strings,
        seconds or timedeltas. With ``unique_key`` or ``idempotency_key``
        the answer may be an existing job (``job.get("existing")`` for a
        unique key)."""
        call = _rest.create_job(
            kind,
            params,
            external=external,
            queue=queue,
            priority=priority,
            run_at=run_at,
            delay=delay,
            timeout=timeout,
            max_attempts=max_attempts,
            backoff=backoff,
            unique_key=unique_key,
            idempotency_key=idempotency_key,
        )
        return cast(Job, self._request(call))

    def create_external_job(
        self,
        kind: str,
        params: Optional[Mapping[str, Any]] = None,
        *,
        priority: Optional[int] = None,
        unique_key: Optional[str] = None,
        idempotency_key: Optional[str] = None,
    ) -> Job:
        """Creates an external job: not queued for jobwire's workers; your
        program publishes its events (see :meth:`attach`). Scope ``worker``."""
        return self.create_job(
            kind,
            params,
            external=True,
            priority=priority,
            unique_key=unique_key,
            idempotency_key=idempotency_key,
        )

    def get_job(self, job_id: str) -> Job:
        """The job's current state (scope ``jobs:read``)."""
        return cast(Job, self._request(_rest.get_job(job_id)))

    def list_page(
        self,
        *,
        status: Optional[str] = None,
        kind: Optional[str] = None,
        queue: Optional[str] = None,
        finished_after: Optional[_rest.Instant] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> JobsPage:
        """One page of the caller's jobs (an admin's: everyone's), newest
        first (``limit`` 1-200), of the given status, kind and queue, that
        finished at or after ``finished_after`` (RFC 3339 or a datetime)."""
        which = _rest.JobFilter(status, kind, queue, finished_after)
        return cast(JobsPage, self._request(_rest.list_jobs(which, limit, cursor)))

    def list_jobs(
        self,
        *,
        status: Optional[str] = None,
        kind: Optional[str] = None,
        queue: Optional[str] = None,
        finished_after: Optional[_rest.Instant] = None,
        page_size: Optional[int] = None,
    ) -> Iterator[Job]:
        """Every job :meth:`list_page`'s filters pick, newest first, fetched a
        page at a time as the iteration goes (following ``next_cursor``)."""
        which = _rest.JobFilter(status, kind, queue, finished_after)
        cursor: Optional[str] = None
        while True:
            page = cast(JobsPage, self._request(_rest.list_jobs(which, page_size, cursor)))
            yield from page["jobs"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def cancel(self, job_id: str) -> CancelResult:
        """Cancels a job: a queued one at once (``outcome: "cancelled"``), a
        running one at its publisher's next report (``"cancel_requested"``)."""
        return cast(CancelResult, self._request(_rest.cancel(job_id)))

    def delete_job(self, job_id: str) -> None:
        """Deletes a job and its events."""
        self._request(_rest.delete_job(job_id))

    def history_page(
        self, job_id: str, *, since: int = 0, epoch: Optional[str] = None, limit: int = 100
    ) -> EventsPage:
        """Events after ``since`` (``limit`` 1-1000). Raises
        :class:`~jobwire.ResyncRequired` when they were trimmed, ``epoch``
        is not the job's, or ``since`` is beyond the end."""
        return cast(EventsPage, self._request(_rest.history(job_id, since, epoch, limit)))

    def history(
        self,
        job_id: str,
        *,
        since: int = 0,
        epoch: Optional[str] = None,
        page_size: int = 100,
    ) -> Iterator[Event]:
        """The job's events after ``since``, oldest first, fetched a page at
        a time. The epoch of the first page is pinned for the next ones: if
        the job's log is rebuilt meanwhile, iteration raises
        :class:`~jobwire.ResyncRequired` instead of mixing two histories."""
        while True:
            page = self.history_page(job_id, since=since, epoch=epoch, limit=page_size)
            epoch = page["epoch"]
            events = page["events"]
            yield from events
            if len(events) < page_size:
                return
            since = events[-1]["id"]

    # Publishing.

    def publish(
        self,
        job_id: str,
        type: str,
        data: Optional[Mapping[str, Any]] = None,
        *,
        attempt: Optional[int] = None,
        n: Optional[int] = None,
    ) -> PublishResult:
        """Publishes one event (scope ``worker``). With ``attempt`` and ``n``
        (together) the event is fenced: a repeated ``n`` is not applied again
        (``duplicate`` is true) and a stale attempt raises
        :class:`~jobwire.StaleAttempt`. For whole tasks, prefer
        :meth:`external_job`/:meth:`attach`, which number and retry for you."""
        event = _rest.new_event(type, data, attempt, n)
        return cast(PublishResult, self._request(_rest.publish_one(job_id, event)))

    def publish_batch(
        self, job_id: str, events: Iterable[Union[NewEvent, Mapping[str, Any]]]
    ) -> BatchPublishResult:
        """Publishes up to 1000 events atomically, in order (all or none)."""
        call = _rest.publish_batch(job_id, cast(Iterable[NewEvent], events))
        return cast(BatchPublishResult, self._request(call))

    # Reporting.

    def external_job(
        self,
        kind: str,
        params: Optional[Mapping[str, Any]] = None,
        *,
        priority: Optional[int] = None,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        block_timeout: Optional[float] = DEFAULT_BLOCK_TIMEOUT,
        close_timeout: Optional[float] = DEFAULT_CLOSE_TIMEOUT,
    ) -> JobReporter:
        """Creates an external job and returns its reporter::

            with client.external_job("resize", {"path": p}) as job:
                job.progress(1, 10, "resized one")

        Leaving the block completes the job (unless a terminal event was
        reported); an exception fails it with the exception's message;
        :class:`~jobwire.Cancelled` ends it ``cancelled``."""
        job = self.create_external_job(kind, params, priority=priority)
        return JobReporter(
            self,
            job["id"],
            job["attempt"],
            job=job,
            buffer_size=buffer_size,
            block_timeout=block_timeout,
            close_timeout=close_timeout,
        )

    def attach(
        self,
        job_id: str,
        attempt: int,
        *,
        next_n: int = 1,
        started: bool = False,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        block_timeout: Optional[float] = DEFAULT_BLOCK_TIMEOUT,
        close_timeout: Optional[float] = DEFAULT_CLOSE_TIMEOUT,
    ) -> JobReporter:
        """A reporter for an existing external job, e.g. one created by a
        web request and run by a task queue. ``attempt`` is the job's
        ``attempt`` (from the create's answer). ``next_n`` is the first
        event number to use (1 for a fresh attempt). ``started``: the
        attempt already published ``job_started`` (otherwise the reporter
        publishes it before the first event that needs a running job)."""
        return JobReporter(
            self,
            job_id,
            attempt,
            next_n=next_n,
            started=started,
            buffer_size=buffer_size,
            block_timeout=block_timeout,
            close_timeout=close_timeout,
        )

    # Watching.

    def watch(
        self,
        job_ids: Union[str, Iterable[str]],
        *,
        cursors: Optional[Mapping[str, Cursor]] = None,
    ) -> Watch:
        """Follows jobs live over one WebSocket, resuming exactly across
        reconnects and instances; iterating it gives :data:`~jobwire.WatchItem` items.
        The iteration ends when every job has finished or was refused.
        ``cursors`` resumes jobs from positions a previous watch reached."""
        ids = [job_ids] if isinstance(job_ids, str) else list(job_ids)
        return Watch(self._endpoints, self._tokens, self._ssl, ids, cursors or {}, self._timeout)
