"""The blocking watch: :class:`Watch`, over ``websockets.sync``.

The same loop as ``_async_watch`` with threads' primitives: it connects,
(re)subscribes from the cursors, feeds frames to the shared
:class:`~jobwire._watch.WatchCore`, yields its items, and reconnects with
backoff across the base URLs when the connection ends.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from types import TracebackType
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Type

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from ._auth import SyncTokens, refresh_delay
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


class Watch:
    """Live items of the watched jobs; ``for item in watch``.

    The items are those of :class:`~jobwire.AsyncWatch`. The iteration ends
    when every job has finished or was refused, or after :meth:`close`
    (which may be called from another thread); it raises
    :class:`~jobwire.Unauthorized` when the token is refused for good.
    """

    def __init__(
        self,
        endpoints: Endpoints,
        tokens: SyncTokens,
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
        self._lock = threading.Lock()
        self._ws: Optional[ClientConnection] = None
        self._closed = threading.Event()
        self._iterator: Optional[Iterator[WatchItem]] = None
        self._outbox: List[str] = []
        self._handshake_refused = False

    def __repr__(self) -> str:
        return f"<jobwire.Watch jobs={list(self._core.jobs)}>"

    # Control.

    def cursor(self, job_id: str) -> Optional[Cursor]:
        """Where the watch is in the job's log (to resume it elsewhere)."""
        with self._lock:
            return self._core.cursor(job_id)

    @property
    def cursors(self) -> Dict[str, Cursor]:
        with self._lock:
            return {i: w.cursor for i, w in self._core.jobs.items() if w.cursor is not None}

    def add(self, job_id: str, cursor: Optional[Cursor] = None) -> None:
        """Watches one more job (from ``cursor`` when given)."""
        with self._lock:
            if self._core.add(job_id, cursor):
                self._outbox.append(WatchCore.subscribe_frame(job_id, cursor))

    def remove(self, job_id: str) -> None:
        """Stops watching a job."""
        with self._lock:
            if self._core.remove(job_id):
                self._outbox.append(json.dumps({"type": "unsubscribe", "job_id": job_id}))

    def close(self) -> None:
        """Stops the watch (from any thread) and closes its connection."""
        self._closed.set()
        ws = self._ws
        if ws is not None:
            ws.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()
        if self._iterator is not None:
            close = getattr(self._iterator, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[WatchItem]:
        if self._iterator is None:
            self._iterator = self._run()
        return self._iterator

    def __next__(self) -> WatchItem:
        return next(iter(self))

    # The loop.

    def _open(self, token: str) -> Iterator[WatchItem]:
        """Tries each base URL once; leaves ``self._ws`` open on success."""
        for index, base in self._endpoints.in_order():
            yield Status("connecting", url=base)
            url = ws_url(base, "/ws/jobs")
            try:
                ws = connect(
                    url,
                    additional_headers={"Authorization": f"Bearer {token}"},
                    user_agent_header=USER_AGENT,
                    ssl=self._ssl if url.startswith("wss:") else None,
                    open_timeout=self._open_timeout,
                    ping_interval=PING_INTERVAL,
                    ping_timeout=PING_TIMEOUT,
                    max_size=MAX_FRAME,
                    max_queue=256,
                )
            except InvalidStatus as e:
                if e.response.status_code == 401:
                    self._handshake_refused = True
                    return
                continue
            except (OSError, TimeoutError, WebSocketException):
                continue
            # Entering the connection as a context manager is how websockets
            # >= 17.1 is told that it is not used in its deprecated style;
            # leaving it is close(), which this watch calls itself.
            ws.__enter__()
            self._ws = ws
            if self._closed.is_set():  # closed while connecting
                ws.close()
                return
            self._endpoints.worked(index)
            yield Status("connected", url=base)
            return

    def _run(self) -> Iterator[WatchItem]:
        core = self._core
        try:
            while not self._closed.is_set() and not core.all_done:
                token = self._tokens.current()
                self._handshake_refused = False
                self._ws = None
                yield from self._open(token)
                ws = self._ws
                if ws is None or self._closed.is_set():
                    if self._closed.is_set():
                        return
                    if self._handshake_refused:
                        self._refused("401 on the WebSocket handshake")
                        reason = "the token was refused"
                    else:
                        reason = "no server reachable"
                    wait = self._backoff.next()
                    yield Status("disconnected", reason=reason, retry_in=wait)
                    self._closed.wait(wait)
                    continue
                opened = time.monotonic()
                reason, code = "", None
                try:
                    with self._lock:
                        frames = core.subscribe_frames()
                        self._outbox.clear()
                    for frame in frames:
                        ws.send(frame)
                    refresh_at = self._refresh_at(token)
                    while True:
                        self._send_outbox(ws)
                        timeout = (
                            None if refresh_at is None else max(0.0, refresh_at - time.monotonic())
                        )
                        # Wake up now and then to send frames that add() or
                        # remove() queued from another thread.
                        timeout = 0.5 if timeout is None else min(timeout, 0.5)
                        try:
                            text = ws.recv(timeout=timeout)
                        except TimeoutError:
                            if refresh_at is not None and time.monotonic() >= refresh_at:
                                token = self._refresh(ws, token)
                                refresh_at = self._refresh_at(token)
                            continue
                        with self._lock:
                            core.refused_once = False
                            items, ok = core.on_text(text)
                        yield from items
                        if core.all_done or self._closed.is_set():
                            return
                        if not ok:
                            reason = "out of order; resuming"
                            break
                except ConnectionClosed as e:
                    if self._closed.is_set():
                        return
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
                    ws.close()
                self._backoff.connection_lasted(time.monotonic() - opened)
                if code == CLOSE_UNAUTHORIZED:
                    self._refused(reason)
                wait = self._backoff.next(slow_down=code == CLOSE_POLICY)
                yield Status("disconnected", reason=reason, retry_in=wait)
                self._closed.wait(wait)
        finally:
            ws = self._ws
            self._ws = None
            if ws is not None:
                ws.close()

    def _send_outbox(self, ws: ClientConnection) -> None:
        with self._lock:
            frames, self._outbox = self._outbox, []
        for frame in frames:
            ws.send(frame)

    def _refresh_at(self, token: str) -> Optional[float]:
        if not self._tokens.refreshable:
            return None
        delay = refresh_delay(token)
        return None if delay is None else time.monotonic() + max(delay, 1.0)

    def _refresh(self, ws: ClientConnection, token: str) -> str:
        """Sends a fresh token over the open socket before this one expires."""
        try:
            fresh = self._tokens.fresh(refused=token)
        except JobwireError:
            return token  # the socket ends at expiry; the reconnect asks again
        ws.send(json.dumps({"type": "refresh", "token": fresh}))
        return fresh

    def _refused(self, reason: str) -> None:
        if self._tokens.refreshable and not self._core.refused_once:
            self._core.refused_once = True
            self._tokens.fresh()
            return
        raise unauthorized(reason)
