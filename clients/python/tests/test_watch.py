"""Watching over WebSocket against real gateways: exact resume across a killed
instance, resync, refusals, token refresh and expiry."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import pytest

import jobwire
from harness import Server, quick_token, token


class _AnyMessage(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str)

    def __hash__(self) -> int:
        return 0


def any_text() -> str:
    """Equal to any message text."""
    return _AnyMessage()


class Feeder:
    """Publishes ``total`` progress events to a new external job, one every
    ``every`` seconds, then completes it (in a thread, through ``url``).

    It starts publishing only once ``go()`` is called: tests call it when the
    watch has the job's state, so the events they act on (a kill at event
    60, say) are still ahead however slowly the watch connected."""

    def __init__(self, url: str, user: str, total: int, every: float = 0.004) -> None:
        self.client = jobwire.Client(url, token=token(user))
        self.reporter = self.client.external_job("py.feed")
        self.id = self.reporter.id
        self.total = total
        self.every = every
        self.error: Optional[BaseException] = None
        self._go = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def go(self, item: Optional[jobwire.WatchItem] = None) -> None:
        """Starts the feed; given a watch item, only if it is the job's state."""
        if item is None or isinstance(item, jobwire.State):
            self._go.set()

    def _run(self) -> None:
        try:
            if not self._go.wait(60):
                raise RuntimeError("the feed was never started")
            with self.reporter as job:
                for i in range(1, self.total + 1):
                    job.progress(i, self.total)
                    time.sleep(self.every)
        except BaseException as e:
            self.error = e

    def join(self) -> None:
        self.thread.join(60)
        self.client.close()
        assert self.error is None, repr(self.error)


def check_exact(items: List[jobwire.WatchItem], job_id: str, total: int) -> Tuple[int, int]:
    """The items of ``job_id``: one state first, then consecutive events
    (no duplicate, no hole) up to job_completed. Returns (states, resumed)."""
    states = [i for i in items if isinstance(i, jobwire.State) and i.job_id == job_id]
    events = [i for i in items if isinstance(i, jobwire.WatchEvent) and i.job_id == job_id]
    assert states, "no state"
    assert not any(isinstance(s, jobwire.Resync) for s in states), "unexpected resync"
    first = states[0].job["last_event_id"]
    assert [e.id for e in events] == list(range(first + 1, first + 1 + len(events)))
    assert events[-1].type == "job_completed"
    # The job's log: job_queued, job_started, total progress events, job_completed.
    assert events[-1].id == total + 3
    resumed = [i for i in items if isinstance(i, jobwire.Resumed) and i.job_id == job_id]
    return len(states), len(resumed)


def test_watch_follows_a_job_to_its_end(server: Server, client: jobwire.Client, user: str) -> None:
    feeder = Feeder(server.url, user, total=150)
    items: List[jobwire.WatchItem] = []
    with client.watch(feeder.id) as watch:
        for item in watch:  # ends by itself once the job has finished
            items.append(item)
            feeder.go(item)
    feeder.join()
    check_exact(items, feeder.id, 150)
    assert isinstance(items[0], jobwire.Status) and items[0].state == "connecting"
    assert watch.cursor(feeder.id) == jobwire.Cursor(client.get_job(feeder.id)["epoch"], 153)


async def test_async_watch_survives_a_killed_gateway(
    gateways: Callable[[], Server], user: str
) -> None:
    a, b = gateways(), gateways()
    total = 400
    feeder = Feeder(b.url, user, total=total)
    items: List[jobwire.WatchItem] = []
    killed = False
    async with jobwire.AsyncClient([a.url, b.url], token=token(user)) as c:
        async with c.watch([feeder.id]) as watch:
            async for item in watch:
                items.append(item)
                feeder.go(item)
                if isinstance(item, jobwire.WatchEvent) and item.id == 60 and not killed:
                    killed = True
                    await asyncio.to_thread(a.kill)  # SIGKILL the instance we are on
    await asyncio.to_thread(feeder.join)
    assert killed
    states, resumed = check_exact(items, feeder.id, total)
    assert resumed == 1 and states == 1  # resumed exactly on the other instance
    connected = [i.url for i in items if isinstance(i, jobwire.Status) and i.state == "connected"]
    assert connected == [a.url, b.url]


def test_sync_watch_survives_a_killed_gateway(gateways: Callable[[], Server], user: str) -> None:
    a, b = gateways(), gateways()
    total = 400
    feeder = Feeder(a.url, user, total=total)
    items: List[jobwire.WatchItem] = []
    with jobwire.Client([b.url, a.url], token=token(user)) as c, c.watch(feeder.id) as watch:
        for item in watch:
            items.append(item)
            feeder.go(item)
            if isinstance(item, jobwire.WatchEvent) and item.id == 100:
                b.kill()
    feeder.join()
    states, resumed = check_exact(items, feeder.id, total)
    assert (states, resumed) == (1, 1)
    reasons = [
        i.reason for i in items if isinstance(i, jobwire.Status) and i.state == "disconnected"
    ]
    assert len(reasons) == 1


def test_a_restarted_gateway_is_resumed_on(gateways: Callable[[], Server], user: str) -> None:
    only = gateways()
    total = 300
    feeder = Feeder(only.url, user, total=total, every=0.006)
    items: List[jobwire.WatchItem] = []
    restarted = threading.Thread(target=only.restart)
    with jobwire.Client(only.url, token=token(user)) as c, c.watch(feeder.id) as watch:
        for item in watch:
            items.append(item)
            feeder.go(item)
            if isinstance(item, jobwire.WatchEvent) and item.id == 50:
                restarted.start()
    restarted.join()
    feeder.join()
    states, resumed = check_exact(items, feeder.id, total)
    assert states == 1 and resumed >= 1


async def test_resync_when_the_cursor_cannot_be_resumed(aclient: jobwire.AsyncClient) -> None:
    job = await aclient.create_external_job("py.resync")
    async with aclient.watch(job["id"], cursors={job["id"]: jobwire.Cursor("0123abcd", 1)}) as w:
        async for item in w:
            if isinstance(item, jobwire.State):
                break
    assert isinstance(item, jobwire.Resync)
    assert item.resync and item.job["epoch"] == job["epoch"]
    assert w.cursor(job["id"]) == jobwire.Cursor(job["epoch"], 1)

    # A cursor that can be honoured resumes instead.
    async with aclient.watch(job["id"], cursors={job["id"]: jobwire.Cursor(job["epoch"], 1)}) as w:
        async for item in w:
            if not isinstance(item, jobwire.Status):
                break
    assert item == jobwire.Resumed(job["id"], 1)


async def test_refused_jobs_end_their_watch(aclient: jobwire.AsyncClient, server: Server) -> None:
    deleted = await aclient.create_external_job("py.deleted")
    await aclient.delete_job(deleted["id"])
    other = jobwire.Client(server.url, token=token("someone-else"))
    foreign = other.create_external_job("py.foreign")
    other.close()
    items: List[jobwire.WatchItem] = []
    async with aclient.watch([deleted["id"], "01NOSUCHJOB0000000000000000", foreign["id"]]) as w:
        async for item in w:
            items.append(item)
    # The iteration ended by itself: every job was refused.
    refused: Dict[str, jobwire.Refused] = {
        i.job_id: i for i in items if isinstance(i, jobwire.Refused)
    }
    assert refused[deleted["id"]].code == "not_found"
    assert refused["01NOSUCHJOB0000000000000000"].code == "not_found"
    assert refused[foreign["id"]].code == "forbidden"


async def test_a_job_deleted_while_watched_is_gone(aclient: jobwire.AsyncClient) -> None:
    job = await aclient.create_external_job("py.gone")
    items: List[jobwire.WatchItem] = []

    async def watch() -> None:
        async with aclient.watch(job["id"]) as w:
            async for item in w:
                items.append(item)
                if isinstance(item, jobwire.State):
                    await aclient.delete_job(job["id"])

    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(watch(), 5)
    assert jobwire.Refused(job["id"], "gone", any_text()) in items


async def test_add_and_remove_jobs_on_a_live_watch(aclient: jobwire.AsyncClient) -> None:
    first = await aclient.create_external_job("py.first")
    second = await aclient.create_external_job("py.second")
    third = await aclient.create_external_job("py.third")
    seen: List[str] = []
    async with aclient.watch(first["id"]) as w:
        async for item in w:
            if isinstance(item, jobwire.State):
                seen.append(item.job_id)
                if item.job_id == first["id"]:
                    w.add(second["id"])
                    w.add(third["id"])
                    w.remove(first["id"])
                if item.job_id == third["id"]:
                    await aclient.cancel(second["id"])
                    await aclient.cancel(third["id"])
    assert sorted(seen) == sorted([first["id"], second["id"], third["id"]])


def test_short_lived_tokens_are_refreshed_on_the_socket(server: Server, user: str) -> None:
    minted: List[str] = []

    def provider() -> str:
        minted.append(quick_token(user, 3))
        return minted[-1]

    feeder = Feeder(server.url, user, total=1200, every=0.005)  # about 7 s
    items: List[jobwire.WatchItem] = []
    with jobwire.Client(server.url, token=provider) as c, c.watch(feeder.id) as watch:
        for item in watch:
            items.append(item)
            feeder.go(item)
    feeder.join()
    check_exact(items, feeder.id, 1200)
    assert len(minted) >= 3  # refreshed before each expiry, without a new connection
    assert [i.state for i in items if isinstance(i, jobwire.Status)] == ["connecting", "connected"]


async def test_a_fixed_token_that_expires_ends_the_watch(
    aclient: jobwire.AsyncClient, server: Server, user: str
) -> None:
    job = await aclient.create_external_job("py.expiry")
    short = token(user, ttl="1s")
    began = time.monotonic()
    async with jobwire.AsyncClient(server.url, token=short) as c:
        with pytest.raises(jobwire.Unauthorized) as e:
            async with c.watch(job["id"]) as w:
                async for _ in w:
                    pass
    assert e.value.status == 401
    assert short not in str(e.value)
    assert time.monotonic() - began < 30


async def test_async_token_provider(server: Server, user: str) -> None:
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return token(user) if calls > 1 else "not.a.jwt"

    async with jobwire.AsyncClient(server.url, token=provider) as c:
        job = await c.create_external_job("py.async_provider")  # refused, then refreshed
        assert calls == 2
        await c.cancel(job["id"])
        async with c.watch(job["id"]) as w:
            items = [i async for i in w]
    assert isinstance(items[-1], jobwire.State) and items[-1].job["status"] == "cancelled"
