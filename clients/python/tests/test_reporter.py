"""The reporter for external jobs: exactly once, in order, through gateway and
Redis restarts and lost answers; cancellation; fencing; the buffer's bound."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any, Callable, List

import pytest

import jobwire
from harness import Proxy, Redis, Server, token, wait_until


def log_of(client: jobwire.Client, job_id: str) -> List[jobwire.Event]:
    return list(client.history(job_id, page_size=1000))


def assert_exact(events: List[jobwire.Event], expected: List[Any]) -> None:
    """The log holds exactly ``expected`` (type or (type, key, value)) after
    job_queued, once each, in order, with ids 1, 2, 3 ..."""
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "job_queued"
    seen: List[Any] = []
    for e in events[1:]:
        if e["type"] == "progress":
            seen.append(("progress", e["data"]["current"]))
        else:
            seen.append(e["type"])
    assert seen == expected


def test_a_block_publishes_everything_and_completes(client: jobwire.Client) -> None:
    with client.external_job("py.files", {"dir": "x"}) as job:
        assert job.job is not None and job.job["status"] == "queued"
        job.started(total_files=3, message="3 files")
        for name in ("a", "b"):
            job.file_processing(name)
            job.file_completed(name, lines=10)
        job.file_processing("c")
        job.file_error("c", "unreadable")
        job.error("a warning")
        job.progress(2, 4, "halfway")
        job.custom("py.note", {"hello": "world"})
    events = log_of(client, job.id)
    assert [e["type"] for e in events] == [
        "job_queued",
        "job_started",
        "file_processing",
        "file_completed",
        "file_processing",
        "file_completed",
        "file_processing",
        "error",
        "error",
        "progress",
        "py.note",
        "job_completed",
    ]
    assert events[3]["data"]["lines"] == 10
    assert events[7]["data"]["failed_files"] == 1
    state = client.get_job(job.id)
    assert state["status"] == "completed"
    assert (state["processed_files"], state["failed_files"], state["total_files"]) == (2, 1, 3)
    assert job.stats == {"published": 11, "duplicates": 0, "pending": 0, "retries": 0}


def test_started_is_implied_and_the_result_stored(client: jobwire.Client) -> None:
    with client.external_job("py.implied") as job:
        job.progress(1, 2)
        job.completed({"answer": 42}, message="done")
    assert [e["type"] for e in log_of(client, job.id)] == [
        "job_queued",
        "job_started",
        "progress",
        "job_completed",
    ]
    state = client.get_job(job.id)
    assert state["result"] == {"answer": 42}
    assert state["message"] == "done"


def test_an_exception_fails_the_job_with_its_message(client: jobwire.Client) -> None:
    with pytest.raises(KeyError):
        with client.external_job("py.fails") as job:
            job.file_processing("a")
            raise KeyError("the missing key")
    state = client.get_job(job.id)
    assert state["status"] == "failed"
    assert state["error"] == "'the missing key'"
    last = log_of(client, job.id)[-1]
    assert last["type"] == "job_failed"
    assert last["data"]["exception"] == "KeyError"


def test_reports_are_checked_before_they_are_queued(client: jobwire.Client) -> None:
    with client.external_job("py.checks") as job:
        with pytest.raises(jobwire.ValidationError):
            job.custom("Not A Type")
        with pytest.raises(jobwire.ValidationError):
            job.custom("current_state")
        with pytest.raises(TypeError):
            job.file_completed("a", handle=object())
        with pytest.raises(ValueError):
            job.progress(math.nan, 1)
        with pytest.raises(jobwire.ValidationError):
            job.custom("py.big", {"blob": "x" * 70_000})
        job.completed()
        with pytest.raises(jobwire.ReporterClosed):
            job.progress(1, 1)
    assert client.get_job(job.id)["status"] == "completed"


def test_cancel_makes_the_next_report_raise(client: jobwire.Client) -> None:
    reported = 0
    with pytest.raises(jobwire.Cancelled) as e:
        with client.external_job("py.cancel") as job:
            for i in range(1, 10_000):
                job.progress(i, 10_000)
                reported += 1
                if i == 5:
                    job.flush()
                    assert client.cancel(job.id)["outcome"] == "cancel_requested"
                time.sleep(0.002)
    assert e.value.job_id == job.id
    assert e.value.code == "cancelled"
    assert job.cancel_requested
    events = log_of(client, job.id)
    assert_exact(
        events,
        ["job_started"] + [("progress", i) for i in range(1, reported + 1)] + ["job_cancelled"],
    )
    assert client.get_job(job.id)["status"] == "cancelled"
    assert reported < 1000  # it stopped at once, not at the end


def test_a_job_cancelled_before_it_started(client: jobwire.Client) -> None:
    job = client.create_external_job("py.cancel_early")
    assert client.cancel(job["id"])["outcome"] == "cancelled"
    with pytest.raises(jobwire.Cancelled):
        with client.attach(job["id"], job["attempt"]) as reporter:
            reporter.started()
            wait_until(lambda: reporter.cancel_requested, "the refusal to be seen")
            reporter.progress(1, 2)
    # Nothing more was published: it was cancelled already.
    assert [e["type"] for e in log_of(client, job["id"])] == ["job_queued", "job_cancelled"]


def test_a_stale_attempt_stops_the_reporter(client: jobwire.Client) -> None:
    job = client.create_external_job("py.stale")
    with pytest.raises(jobwire.StaleAttempt):
        with client.attach(job["id"], attempt=2) as reporter:
            reporter.started()
            reporter.flush()
    assert client.get_job(job["id"])["status"] == "queued"


def test_attach_continues_with_next_n(client: jobwire.Client) -> None:
    job = client.create_external_job("py.handover")
    first = client.attach(job["id"], job["attempt"])
    first.progress(1, 4)
    first.progress(2, 4)
    first.close()  # no terminal event: the job goes on elsewhere
    second = client.attach(job["id"], job["attempt"], next_n=first.next_n, started=True)
    with second:
        second.progress(3, 4)
        second.progress(4, 4)
    assert_exact(
        log_of(client, job["id"]),
        ["job_started"] + [("progress", i) for i in range(1, 5)] + ["job_completed"],
    )


def test_numbers_used_by_another_publisher_are_a_fence_conflict(client: jobwire.Client) -> None:
    job = client.create_external_job("py.collide")
    with client.attach(job["id"], job["attempt"]) as first:
        first.progress(1, 2)
        first.flush()
        # Attached again from n=1: its events would be skipped as duplicates.
        with pytest.raises(jobwire.FenceConflict):
            with client.attach(job["id"], job["attempt"], started=True) as second:
                second.progress(2, 2)
                second.flush()
        first.completed()


def dropped(proxy: Proxy, count: int) -> Callable[[], bool]:
    return lambda: proxy.dropped >= count


def test_lost_answers_are_resent_and_applied_once(server: Server, user: str) -> None:
    proxy = Proxy(server.port)
    try:
        with jobwire.Client(proxy.url, token=token(user)) as c:
            with c.external_job("py.lossy") as job:
                for i in range(1, 301):
                    job.progress(i, 300)
                    if i % 60 == 0:
                        # The next requests are applied, but their answers lost.
                        proxy.drop_answers = True
                        wait_until(dropped(proxy, proxy.dropped + 2), "dropped answers")
                        proxy.drop_answers = False
                        job.flush()
            assert proxy.dropped >= 10
            assert job.stats["duplicates"] > 0  # resent with the same numbers ...
            assert_exact(
                log_of(c, job.id),  # ... and applied once
                ["job_started"] + [("progress", i) for i in range(1, 301)] + ["job_completed"],
            )
    finally:
        proxy.close()


def feed_through(restart: Callable[[], None], client: jobwire.Client, total: int) -> str:
    """Reports ``total`` progress events, one every few ms, while ``restart``
    runs in another thread from a quarter of the way: reports go on during
    the outage, and the sender must retry them."""
    outage = threading.Thread(target=restart)
    with client.external_job("py.outage") as job:
        for i in range(1, total + 1):
            job.progress(i, total)
            if i == total // 4:
                job.flush()
                outage.start()
            time.sleep(0.004)
        outage.join()
    assert job.stats["retries"] > 0, "the outage did not happen while reporting"
    assert job.stats["pending"] == 0
    return job.id


def test_through_a_gateway_restart(gateways: Callable[[], Server], user: str) -> None:
    gateway = gateways()
    total = 400

    def restart() -> None:
        gateway.kill()
        time.sleep(0.5)  # the gateway stays down for a while on purpose
        gateway.start()

    with jobwire.Client(gateway.url, token=token(user)) as c:
        job_id = feed_through(restart, c, total)
        assert_exact(
            log_of(c, job_id),
            ["job_started"] + [("progress", i) for i in range(1, total + 1)] + ["job_completed"],
        )


def test_through_a_redis_restart(
    private_redis: Redis, gateways: Callable[[], Server], user: str
) -> None:
    gateway = gateways()
    total = 400

    def restart() -> None:
        private_redis.kill()
        time.sleep(1.0)  # Redis stays down for a while on purpose
        private_redis.start()

    with jobwire.Client(gateway.url, token=token(user)) as c:
        job_id = feed_through(restart, c, total)
        assert_exact(
            log_of(c, job_id),
            ["job_started"] + [("progress", i) for i in range(1, total + 1)] + ["job_completed"],
        )


def test_a_full_buffer_blocks_then_raises(gateways: Callable[[], Server], user: str) -> None:
    gateway = gateways()
    with jobwire.Client(gateway.url, token=token(user)) as c:
        job = c.create_external_job("py.buffer")
        gateway.kill()
        reporter = c.attach(job["id"], job["attempt"], buffer_size=5, block_timeout=0.3)
        reporter.started()
        for i in range(1, 5):
            reporter.progress(i, 10)
        began = time.monotonic()
        with pytest.raises(jobwire.BufferFull):
            reporter.progress(5, 10)
        assert time.monotonic() - began >= 0.3
        reporter.failed("gave up")  # a terminal event is accepted past the bound
        gateway.start()
        reporter.close()
        assert_exact(
            log_of(c, job["id"]),
            ["job_started"] + [("progress", i) for i in range(1, 5)] + ["job_failed"],
        )


def test_close_gives_up_after_its_timeout(gateways: Callable[[], Server], user: str) -> None:
    gateway = gateways()
    with jobwire.Client(gateway.url, token=token(user)) as c:
        job = c.create_external_job("py.giveup")
        gateway.kill()
        reporter = c.attach(job["id"], job["attempt"], close_timeout=0.3)
        reporter.progress(1, 2)
        with pytest.raises(jobwire.PublishTimeout):
            reporter.close()
        with pytest.raises(jobwire.ReporterClosed):
            reporter.progress(2, 2)


def test_reports_from_several_threads_keep_each_threads_order(client: jobwire.Client) -> None:
    with client.external_job("py.threads") as job:
        job.started()

        def work(t: int) -> None:
            for i in range(100):
                job.custom("py.step", {"thread": t, "i": i})

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    steps = [e["data"] for e in log_of(client, job.id) if e["type"] == "py.step"]
    assert len(steps) == 400
    for t in range(4):
        assert [s["i"] for s in steps if s["thread"] == t] == list(range(100))


# The async reporter.


async def test_async_block_publishes_and_completes(aclient: jobwire.AsyncClient) -> None:
    async with aclient.external_job("py.async", {"n": 3}) as job:
        assert job.job is not None
        await job.started(total_files=2)
        await job.file_processing("a")
        await job.file_completed("a", size=1)
        await job.file_error("b", "gone")
        await job.progress(2, 2, "done")
    events = [e async for e in aclient.history(job.id)]
    assert [e["type"] for e in events] == [
        "job_queued",
        "job_started",
        "file_processing",
        "file_completed",
        "error",
        "progress",
        "job_completed",
    ]
    assert (await aclient.get_job(job.id))["status"] == "completed"


async def test_async_exception_and_cancel(aclient: jobwire.AsyncClient) -> None:
    with pytest.raises(RuntimeError):
        async with aclient.external_job("py.async_fail") as failing:
            await failing.progress(1, 2)
            raise RuntimeError("boom")
    state = await aclient.get_job(failing.id)
    assert (state["status"], state["error"]) == ("failed", "boom")

    with pytest.raises(jobwire.Cancelled):
        async with aclient.external_job("py.async_cancel") as job:
            await job.progress(1, 100)
            await job.flush()
            await aclient.cancel(job.id)
            for i in range(2, 100):
                await job.progress(i, 100)
                await job.flush()
    assert (await aclient.get_job(job.id))["status"] == "cancelled"


async def test_async_through_a_gateway_restart(gateways: Callable[[], Server], user: str) -> None:
    gateway = gateways()
    total = 300

    def restart() -> None:
        gateway.kill()
        time.sleep(0.5)  # down for a while on purpose, while reports go on
        gateway.start()

    async with jobwire.AsyncClient(gateway.url, token=token(user)) as c:
        async with c.external_job("py.async_outage") as job:
            outage = None
            for i in range(1, total + 1):
                await job.progress(i, total)
                if i == total // 4:
                    await job.flush()
                    outage = asyncio.ensure_future(asyncio.to_thread(restart))
                await asyncio.sleep(0.004)
            assert outage is not None
            await outage
        assert job.stats["retries"] > 0
        events = [e async for e in c.history(job.id, page_size=1000)]
    assert_exact(
        events, ["job_started"] + [("progress", i) for i in range(1, total + 1)] + ["job_completed"]
    )


async def test_async_attach_and_stale_attempt(aclient: jobwire.AsyncClient) -> None:
    job = await aclient.create_external_job("py.async_attach")
    async with aclient.attach(job["id"], job["attempt"]) as reporter:
        await reporter.progress(1, 1)
    assert (await aclient.get_job(job["id"]))["status"] == "completed"

    other = await aclient.create_external_job("py.async_stale")
    with pytest.raises(jobwire.StaleAttempt):
        async with aclient.attach(other["id"], 5) as stale:
            await stale.started()
            await stale.flush()


async def test_async_full_buffer_and_close_timeout(
    gateways: Callable[[], Server], user: str
) -> None:
    gateway = gateways()
    async with jobwire.AsyncClient(gateway.url, token=token(user)) as c:
        job = await c.create_external_job("py.async_buffer")
        await asyncio.to_thread(gateway.kill)
        reporter = c.attach(job["id"], job["attempt"], buffer_size=3, block_timeout=0.2)
        await reporter.open()
        await reporter.progress(1, 3)  # job_started and progress
        await reporter.custom("py.note")
        with pytest.raises(jobwire.BufferFull):
            await reporter.progress(2, 3)
        await reporter.failed("gave up")  # terminal: accepted past the bound
        with pytest.raises(jobwire.PublishTimeout):
            await reporter.aclose(timeout=0.2)
        with pytest.raises(jobwire.ReporterClosed):
            await reporter.progress(3, 3)
        # Nothing was published: the gateway never came back for it.
        await asyncio.to_thread(gateway.start)
        assert (await c.get_job(job["id"]))["last_event_id"] == 1
