"""The asyncio watch: :class:`AsyncWatch`, over ``websockets.asyncio``.

It connects, (re)subscribes from the cursors, feeds frames to the shared
:class:`~jobwire._watch.WatchCore`, yields its items, and reconnects with
backoff across the base URLs when the connection ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from types import TracebackType
from typing import AsyncIterator, Dict, Iterable, Mapping, Optional, Set, Type

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from ._auth import AsyncTokens, refresh_delay
from ._errors import JobwireError
from ._rest import USER_AGENT, Endpoints, ws_url
from ._types import Cursor, Status, WatchItem
from ._watch import (
    CLOSE_POLICY,
    CLOSE_UNAUTHORIZED,
    MAX_FRAME,
    PING_INTERVAL,
    PING_TIMEOUT,
    Backoff,
    WatchCore,
    close_error,
    unauthorized,
)


class AsyncWatch:
    """Live items of the watched jobs; ``async for item in watch``.

    Items: :class:`~jobwire.State` (or :class:`~jobwire.Resync`) first for
    each job, then its events (:class:`~jobwire.WatchEvent`) with consecutive ids,
    :class:`~jobwire.Resumed` after a reconnect, :class:`~jobwire.Refused`
    when the server ends a job's subscription, :class:`~jobwire.Status` for
    the connection, and :class:`~jobwire.Message` for server messages this
    client does not know. The iteration ends when every job has finished or
    was refused, or after :meth:`aclose`; it raises
    :class:`~jobwire.Unauthorized` when the token is refused for good.
    """

    def __init__(
        self,
        endpoints: Endpoints,
        tokens: AsyncTokens,
        ssl_context: ssl.SSLContext,
        job_ids: Iterable[str],
        cursors: Mapping[str, Cursor],
        open_timeout: float,
    ) -> None:
        self._endpoints = endpoints
        self._tokens = tokens
        self._ssl = ssl_context
        self._open_timeout = open_timeout
        self._core = WatchCore(job_ids, cursors)
        self._backoff = Backoff()
        self._ws: Optional[ClientConnection] = None
        self._closed = False
        self._iterator: Optional[AsyncIterator[WatchItem]] = None
        # Sends started by add()/remove() (kept so they are not collected).
        self._sends: Set[asyncio.Task[None]] = set()
        # The last handshake was answered 401.
        self._handshake_refused = False

    def __repr__(self) -> str:
        return f"<jobwire.AsyncWatch jobs={list(self._core.jobs)}>"

    # Control.

    def cursor(self, job_id: str) -> Optional[Cursor]:
        """Where the watch is in the job's log (to resume it elsewhere)."""
        return self._core.cursor(job_id)

    @property
    def cursors(self) -> Dict[str, Cursor]:
        return {i: w.cursor for i, w in self._core.jobs.items() if w.cursor is not None}

    def add(self, job_id: str, cursor: Optional[Cursor] = None) -> None:
        """Watches one more job (from ``cursor`` when given). Call it from
        the watch's event loop."""
        if self._core.add(job_id, cursor):
            self._send_soon(WatchCore.subscribe_frame(job_id, cursor))

    def remove(self, job_id: str) -> None:
        """Stops watching a job."""
        if self._core.remove(job_id):
            self._send_soon(json.dumps({"type": "unsubscribe", "job_id": job_id}))

    def _send_soon(self, frame: str) -> None:
        # Without a connection there is nothing to do: the next one
        # subscribes every watched job from the cursors.
        ws = self._ws
        if ws is None:
            return
        task = asyncio.get_running_loop().create_task(self._send_quietly(ws, frame))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    @staticmethod
    async def _send_quietly(ws: ClientConnection, frame: str) -> None:
        # On a closed connection the reconnect resubscribes from the cursors.
        with contextlib.suppress(ConnectionClosed):
            await ws.send(frame)

    async def aclose(self) -> None:
        """Stops the watch and closes its connection."""
        self._closed = True
        if self._iterator is not None:
            closer = getattr(self._iterator, "aclose", None)
            if closer is not None:
                await closer()
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def __aenter__(self) -> AsyncWatch:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[WatchItem]:
        if self._iterator is None:
            self._iterator = self._run()
        return self._iterator

    async def __anext__(self) -> WatchItem:
        return await self.__aiter__().__anext__()

    # The loop.

    async def _open(self, token: str) -> AsyncIterator[WatchItem]:
        """Tries each base URL once; leaves ``self._ws`` open on success."""
        for index, base in self._endpoints.in_order():
            yield Status("connecting", url=base)
            url = ws_url(base, "/ws/jobs")
            try:
                self._ws = await connect(
                    url,
                    additional_headers={"Authorization": f"Bearer {token}"},
                    user_agent_header=USER_AGENT,
                    ssl=self._ssl if url.startswith("wss:") else None,
                    open_timeout=self._open_timeout,
                    ping_interval=PING_INTERVAL,
                    ping_timeout=PING_TIMEOUT,
                    max_size=MAX_FRAME,
                    # A watch reads as fast as its consumer: let frames queue
                    # in the library rather than stall the socket early.
                    max_queue=256,
                )
            except InvalidStatus as e:
                if e.response.status_code == 401:
                    self._handshake_refused = True
                    return
                continue
            except (OSError, asyncio.TimeoutError, WebSocketException):
                continue
            self._endpoints.worked(index)
            yield Status("connected", url=base)
            return

    async def _run(self) -> AsyncIterator[WatchItem]:
        core = self._core
        try:
            while not self._closed and not core.all_done:
                token = await self._tokens.current()
                self._handshake_refused = False
                async for status in self._open(token):
                    yield status
                ws = self._ws
                if ws is None:
                    if self._handshake_refused:
                        await self._refused("401 on the WebSocket handshake")
                        wait = self._backoff.next()
                        yield Status("disconnected", reason="the token was refused", retry_in=wait)
                    else:
                        wait = self._backoff.next()
                        yield Status("disconnected", reason="no server reachable", retry_in=wait)
                    await asyncio.sleep(wait)
                    continue
                opened = time.monotonic()
                reason, code = "", None
                try:
                    for frame in core.subscribe_frames():
                        await ws.send(frame)
                    refresh_at = self._refresh_at(token)
                    while True:
                        timeout = (
                            None if refresh_at is None else max(0.0, refresh_at - time.monotonic())
                        )
                        try:
                            text = await asyncio.wait_for(ws.recv(), timeout)
                        except asyncio.TimeoutError:
                            token = await self._refresh(ws, token)
                            refresh_at = self._refresh_at(token)
                            continue
                        core.refused_once = False
                        items, ok = core.on_text(text)
                        for item in items:
                            yield item
                        if core.all_done or self._closed:
                            return
                        if not ok:
                            reason = "out of order; resuming"
                            break
                except ConnectionClosed as e:
                    code = e.rcvd.code if e.rcvd is not None else None
                    why = e.rcvd.reason if e.rcvd is not None else ""
                    reason = (
                        f"closed by the server: {code} {why}".strip() if code else "connection lost"
                    )
                    error = close_error(code, why)
                    if error is not None:
                        raise error from None
                finally:
                    self._ws = None
                    await ws.close()
                self._backoff.connection_lasted(time.monotonic() - opened)
                if code == CLOSE_UNAUTHORIZED:
                    await self._refused(reason)
                wait = self._backoff.next(slow_down=code == CLOSE_POLICY)
                yield Status("disconnected", reason=reason, retry_in=wait)
                await asyncio.sleep(wait)
        finally:
            if self._ws is not None:
                await self._ws.close()
                self._ws = None

    def _refresh_at(self, token: str) -> Optional[float]:
        if not self._tokens.refreshable:
            return None
        delay = refresh_delay(token)
        # At least a second apart, even when the provider keeps returning a
        # token that is about to expire.
        return None if delay is None else time.monotonic() + max(delay, 1.0)

    async def _refresh(self, ws: ClientConnection, token: str) -> str:
        """Sends a fresh token over the open socket before this one expires.
        If the provider fails, the socket ends at the token's expiry and the
        reconnect asks again."""
        try:
            fresh = await self._tokens.fresh(refused=token)
        except JobwireError:
            return token
        await ws.send(json.dumps({"type": "refresh", "token": fresh}))
        return fresh

    async def _refused(self, reason: str) -> None:
        """The server refused the token: with a provider, try one fresh
        token; otherwise (or again) the watch ends with Unauthorized."""
        if self._tokens.refreshable and not self._core.refused_once:
            self._core.refused_once = True
            await self._tokens.fresh()
            return
        raise unauthorized(reason)
