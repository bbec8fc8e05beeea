"""The asyncio client: :class:`AsyncClient`.

The same API as :class:`jobwire.Client` with coroutines and async
iterators, over httpx's ``AsyncClient`` and ``websockets.asyncio``. Token
providers may be sync or async callables.
"""

from __future__ import annotations

from typing import (
    Any,
    AsyncIterator,
    Iterable,
    Mapping,
    Optional,
    Sequence,
    Union,
    cast,
)

import httpx

from . import _rest
from ._async_reporter import AsyncJobReporter
from ._async_watch import AsyncWatch
from ._auth import AsyncTokenProvider, AsyncTokens
from ._client import DEFAULT_TIMEOUT, describe
from ._errors import JobwireError, Unreachable
from ._reporter import DEFAULT_BLOCK_TIMEOUT, DEFAULT_BUFFER_SIZE, DEFAULT_CLOSE_TIMEOUT
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


class AsyncClient:
    """An asyncio client of one jobwire deployment; see :class:`jobwire.Client`
    for the arguments. ``token`` may be a JWT or a callable (sync or async)
    returning one. Use ``async with``, or ``await client.aclose()``."""

    def __init__(
        self,
        base_url: Union[str, Sequence[str]],
        token: Union[str, AsyncTokenProvider, None] = None,
        *,
        verify: Verify = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._endpoints = _rest.Endpoints(base_url)
        self._tokens = AsyncTokens(token)
        self._ssl = ssl_context(verify)
        self._timeout = timeout
        self._http = httpx.AsyncClient(verify=self._ssl, timeout=timeout, follow_redirects=False)

    def __repr__(self) -> str:
        return f"jobwire.AsyncClient({self._endpoints.urls!r})"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the client's connections."""
        await self._http.aclose()

    # Sending: see Client._send and Client._request for the rules.

    async def _send(self, call: _rest.Call, token: str) -> httpx.Response:
        if self._http.is_closed:
            raise JobwireError("the jobwire client is closed", code="closed")
        failures = []
        for index, base in self._endpoints.in_order():
            try:
                response = await self._http.request(
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

    async def _request(self, call: _rest.Call) -> Any:
        token = await self._tokens.current()
        response = await self._send(call, token)
        if response.status_code == 401 and self._tokens.refreshable:
            token = await self._tokens.fresh(refused=token)
            response = await self._send(call, token)
        return _rest.decode(response.status_code, response.content, response.headers)

    # Jobs.

    async def create_job(
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
        """Creates a job; see :meth:`jobwire.Client.create_job`."""
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
        return cast(Job, await self._request(call))

    async def create_external_job(
        self,
        kind: str,
        params: Optional[Mapping[str, Any]] = None,
        *,
        priority: Optional[int] = None,
        unique_key: Optional[str] = None,
        idempotency_key: Optional[str] = None,
    ) -> Job:
        """Creates an external job (scope ``worker``)."""
        return await self.create_job(
            kind,
            params,
            external=True,
            priority=priority,
            unique_key=unique_key,
            idempotency_key=idempotency_key,
        )

    async def get_job(self, job_id: str) -> Job:
        return cast(Job, await self._request(_rest.get_job(job_id)))

    async def list_page(
        self,
        *,
        status: Optional[str] = None,
        kind: Optional[str] = None,
        queue: Optional[str] = None,
        finished_after: Optional[_rest.Instant] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> JobsPage:
        """One page of the caller's jobs; see :meth:`Client.list_page`."""
        which = _rest.JobFilter(status, kind, queue, finished_after)
        return cast(JobsPage, await self._request(_rest.list_jobs(which, limit, cursor)))

    async def list_jobs(
        self,
        *,
        status: Optional[str] = None,
        kind: Optional[str] = None,
        queue: Optional[str] = None,
        finished_after: Optional[_rest.Instant] = None,
        page_size: Optional[int] = None,
    ) -> AsyncIterator[Job]:
        """Every job the filters pick, newest first, a page at a time."""
        which = _rest.JobFilter(status, kind, queue, finished_after)
        cursor: Optional[str] = None
        while True:
            page = cast(JobsPage, await self._request(_rest.list_jobs(which, page_size, cursor)))
            for job in page["jobs"]:
                yield job
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def cancel(self, job_id: str) -> CancelResult:
        return cast(CancelResult, await self._request(_rest.cancel(job_id)))

    async def delete_job(self, job_id: str) -> None:
        await self._request(_rest.delete_job(job_id))

    async def history_page(
        self, job_id: str, *, since: int = 0, epoch: Optional[str] = None, limit: int = 100
    ) -> EventsPage:
        return cast(EventsPage, await self._request(_rest.history(job_id, since, epoch, limit)))

    async def history(
        self,
        job_id: str,
        *,
        since: int = 0,
        epoch: Optional[str] = None,
        page_size: int = 100,
    ) -> AsyncIterator[Event]:
        """The job's events after ``since``, a page at a time (epoch pinned)."""
        while True:
            page = await self.history_page(job_id, since=since, epoch=epoch, limit=page_size)
            epoch = page["epoch"]
            events = page["events"]
            for event in events:
                yield event
            if len(events) < page_size:
                return
            since = events[-1]["id"]

    # Publishing.

    async def publish(
        self,
        job_id: str,
        type: str,
        data: Optional[Mapping[str, Any]] = None,
        *,
        attempt: Optional[int] = None,
        n: Optional[int] = None,
    ) -> PublishResult:
        event = _rest.new_event(type, data, attempt, n)
        return cast(PublishResult, await self._request(_rest.publish_one(job_id, event)))

    async def publish_batch(
        self, job_id: str, events: Iterable[Union[NewEvent, Mapping[str, Any]]]
    ) -> BatchPublishResult:
        call = _rest.publish_batch(job_id, cast(Iterable[NewEvent], events))
        return cast(BatchPublishResult, await self._request(call))

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
    ) -> AsyncJobReporter:
        """A reporter for a new external job, created when the block is
        entered::

            async with client.external_job("resize", {"path": p}) as job:
                await job.progress(1, 10)
        """
        options = {} if priority is None else {"priority": priority}
        return AsyncJobReporter(
            self,
            None,
            None,
            create=(kind, dict(params or {}), options),
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
    ) -> AsyncJobReporter:
        """A reporter for an existing external job; see
        :meth:`jobwire.Client.attach`. Use ``async with``."""
        return AsyncJobReporter(
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
    ) -> AsyncWatch:
        """Follows jobs live; ``async for item in client.watch(ids)``. See
        :class:`AsyncWatch`."""
        ids = [job_ids] if isinstance(job_ids, str) else list(job_ids)
        return AsyncWatch(
            self._endpoints, self._tokens, self._ssl, ids, cursors or {}, self._timeout
        )
