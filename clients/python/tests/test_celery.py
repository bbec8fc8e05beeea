"""jobwire.celery against real processes: `celery worker`s (solo and prefork
pools) on a private Redis broker, a real `jobwire serve`; nothing mocked.

Each test sends to a queue of its own served by a worker of its own, as a
user of its own (the jobs are created with the user's token, the workers
publish with a worker-only token)."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
from celery import Celery
from celery.result import AsyncResult

import jobwire
import jobwire.celery
from celery_harness import Workers
from harness import Server, token, wait_until

pytestmark = pytest.mark.timeout(120)


def queue() -> str:
    return "q-" + uuid.uuid4().hex[:8]


def log_of(client: jobwire.Client, job_id: str) -> List[jobwire.Event]:
    return list(client.history(job_id, page_size=1000))


def kinds(events: List[jobwire.Event]) -> List[str]:
    return [e["type"] for e in events]


def assert_consecutive(events: List[jobwire.Event]) -> None:
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))


def wait_status(client: jobwire.Client, job_id: str, status: str, timeout: float = 60) -> None:
    wait_until(lambda: client.get_job(job_id)["status"] == status, f"job {status}", timeout)


def files_of(events: List[jobwire.Event]) -> List[Tuple[str, str]]:
    return [(e["type"], e["data"]["file"]) for e in events if e["type"].startswith("file_")]


def expected_files(count: int) -> List[Tuple[str, str]]:
    pairs: List[Tuple[str, str]] = []
    for i in range(count):
        pairs += [("file_processing", f"file-{i:03d}.txt"), ("file_completed", f"file-{i:03d}.txt")]
    return pairs


def split_attempts(events: List[jobwire.Event]) -> List[List[jobwire.Event]]:
    """The log cut at each job_retrying (which ends its attempt's part)."""
    parts: List[List[jobwire.Event]] = [[]]
    for e in events:
        parts[-1].append(e)
        if e["type"] == "job_retrying":
            parts.append([])
    return parts


def state_of(result: AsyncResult[Any]) -> str:
    """The task's state (the type stubs know fewer states than Celery)."""
    return str(result.state)


def ended(client: jobwire.Client, job_id: str) -> Callable[[], bool]:
    return lambda: client.get_job(job_id)["status"] in ("completed", "failed", "cancelled")


def revoked(result: AsyncResult[Any]) -> Callable[[], bool]:
    return lambda: state_of(result) == "REVOKED"


class Watcher:
    """Watches a job live in a thread, keeping every item."""

    def __init__(self, client: jobwire.Client, job_id: str) -> None:
        self.items: List[Any] = []
        self.watch = client.watch([job_id])
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for item in self.watch:
            self.items.append(item)

    def events(self, timeout: float = 30) -> Tuple[int, List[jobwire.WatchEvent]]:
        """The id of the first State, and the events after it."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the watch did not end"
        states = [i for i in self.items if isinstance(i, jobwire.State)]
        assert states, self.items
        return states[0].job["last_event_id"], [
            i for i in self.items if isinstance(i, jobwire.WatchEvent)
        ]


def test_a_task_reports_every_event_once_in_order_and_completes(
    celery_app: Celery, workers: Workers, client: jobwire.Client, tok: str
) -> None:
    q = queue()
    workers.start(q)
    from celery_tasks import count_files

    result = count_files.apply_async((12, 0.02), queue=q, jobwire_token=tok)
    job_id = jobwire.celery.job_id(result)
    assert job_id is not None
    watcher = Watcher(client, job_id)
    returned = result.get(timeout=60)
    assert returned == {"files": 12, "pid": returned["pid"]}

    job = client.get_job(job_id)
    assert job["status"] == "completed"
    assert job["kind"] == "celery_tasks.count_files"
    assert job["params"]["args"] == [12, 0.02]
    assert job["params"]["celery_task_id"] == result.id
    assert job["result"] == returned
    assert (job["processed_files"], job["total_files"], job["attempt"]) == (12, 12, 1)
    assert job["message"] == "12 files"

    events = log_of(client, job_id)
    assert_consecutive(events)
    assert kinds(events)[:3] == ["job_queued", "job_started", "progress"]
    assert events[1]["data"]["celery_task_id"] == result.id
    assert files_of(events) == expected_files(12)
    assert kinds(events)[-1] == "job_completed"
    assert len(events) == 3 + 24 + 1

    # Live: the watch saw every event after its first state once, in order.
    first, seen = watcher.events()
    assert [e.id for e in seen] == list(range(first + 1, len(events) + 1))
    assert [e.type for e in seen] == kinds(events)[first:]


def test_a_task_failure_fails_the_job(
    celery_app: Celery, workers: Workers, client: jobwire.Client, tok: str
) -> None:
    q = queue()
    workers.start(q)
    from celery_tasks import failing

    result = failing.apply_async(queue=q, jobwire_token=tok)
    job_id = jobwire.celery.job_id(result)
    assert job_id is not None
    with pytest.raises(ValueError, match="the disk is full"):
        result.get(timeout=60)
    job = client.get_job(job_id)
    assert job["status"] == "failed"
    assert job["error"] == "the disk is full"
    events = log_of(client, job_id)
    assert_consecutive(events)
    assert kinds(events) == ["job_queued", "job_started", "progress", "job_failed"]
    assert events[-1]["data"]["exception"] == "ValueError"


def test_a_celery_retry_is_a_new_attempt_that_fences_the_old_one(
    celery_app: Celery, workers: Workers, client: jobwire.Client, tok: str
) -> None:
    q = queue()
    workers.start(q)
    from celery_tasks import flaky

    result = flaky.apply_async((1, 3), queue=q, jobwire_token=tok)
    job_id = jobwire.celery.job_id(result)
    assert job_id is not None
    assert result.get(timeout=60) == {"retries": 1, "attempt": 2}

    job = client.get_job(job_id)
    assert (job["status"], job["attempt"], job["result"]) == ("completed", 2, result.result)
    events = log_of(client, job_id)
    assert_consecutive(events)
    first, second = split_attempts(events)
    assert kinds(first) == ["job_queued", "job_started", "progress", "progress", "progress",
                            "job_retrying"]  # fmt: skip
    retrying = first[-1]["data"]
    assert retrying["reason"] == "Celery retry: flaky failure 1"
    assert retrying["error"] == "flaky failure 1"
    assert retrying["retries"] == 1
    assert kinds(second) == ["job_started", "progress", "progress", "progress", "job_completed"]
    assert [e["data"]["message"] for e in second[1:4]] == [f"step {i} of run 2" for i in (1, 2, 3)]

    # Attempt 1 is fenced out: its late events are refused.
    with pytest.raises(jobwire.StaleAttempt):
        client.publish(job_id, "progress", {"current": 9, "total": 9}, attempt=1, n=7)
    assert len(log_of(client, job_id)) == len(events)


def test_exhausted_retries_fail_the_job_on_its_last_attempt(
    celery_app: Celery, workers: Workers, client: jobwire.Client, tok: str
) -> None:
    q = queue()
    workers.start(q)
    from celery_tasks import flaky

    result = flaky.apply_async((5, 1), queue=q, jobwire_token=tok)  # max_retries=2
    job_id = jobwire.celery.job_id(result)
    assert job_id is not None
    with pytest.raises(RuntimeError, match="flaky failure 3"):
        result.get(timeout=60)
    job = client.get_job(job_id)
    assert (job["status"], job["attempt"], job["error"]) == ("failed", 3, "flaky failure 3")
    events = log_of(client, job_id)
    assert_consecutive(events)
    assert [kinds(part) for part in split_attempts(events)] == [
        ["job_queued", "job_started", "progress", "job_retrying"],
        ["job_started", "progress", "job_retrying"],
        ["job_started", "progress", "job_failed"],
    ]


def crash_job(client: jobwire.Client, job_id: str, files: int) -> None:
    wait_until(lambda: client.get_job(job_id)["processed_files"] >= files, f"{files} files", 30)


def check_resumed_on_attempt_2(
    client: jobwire.Client, job_id: str, result: AsyncResult[Any], count: int, dead_pid: int
) -> None:
    """The job completed on attempt 2, whose run did every file from the
    start; attempt 1's part stops where its worker died."""
    assert result.get(timeout=60)["attempt"] == 2
    job = client.get_job(job_id)
    assert (job["status"], job["attempt"], job["processed_files"]) == ("completed", 2, count)
    events = log_of(client, job_id)
    assert_consecutive(events)
    first, second = split_attempts(events)
    assert kinds(first)[:3] == ["job_queued", "job_started", "progress"]
    assert first[-1]["type"] == "job_retrying"
    assert "delivered again" in first[-1]["data"]["reason"]
    done = files_of(first[:-1])
    assert len(done) >= 10 and done == expected_files(count)[: len(done)]
    assert {e["data"]["pid"] for e in first if e["type"] == "file_completed"} == {dead_pid}
    assert kinds(second)[:2] == ["job_started", "progress"]
    assert files_of(second) == expected_files(count)
    assert kinds(second)[-1] == "job_completed"
    assert dead_pid not in {e["data"]["pid"] for e in second if e["type"] == "file_completed"}


def test_a_worker_killed_mid_task_resumes_on_a_new_attempt_in_a_new_worker(
    celery_app: Celery, workers: Workers, client: jobwire.Client, tok: str
) -> None:
    """acks_late: the whole worker (main process and all) dies by SIGKILL;
    the broker delivers the message again to a worker started afterwards."""
    q = queue()
    first = workers.start(q)
    from celery_tasks import crashable

    result = crashable.apply_async((30, 0.1), queue=q, jobwire_token=tok)
    job_id = jobwire.celery.job_id(result)
    assert job_id is not None
    crash_job(client, job_id, 5)
    first.kill()
    job = client.get_job(job_id)
    assert (job["status"], job["attempt"]) == ("running", 1)
    dead_pid = first.pid  # the solo pool runs tasks in the main process
    workers.start(q)
    check_resumed_on_attempt_2(client, job_id, result, 30, dead_pid)


def test_a_pool_process_killed_mid_task_is_rerun_on_a_new_attempt(
    celery_app: Celery, workers: Workers, client: jobwire.Client, tok: str
) -> None:
    """acks_late and reject_on_worker_lost: the prefork pool's process
    running the task dies by SIGKILL; the worker requeues the message."""
    q = queue()
    workers.start(q, pool="prefork", concurrency=1)
    from celery_tasks import crashable

    result = crashable.apply_async((30, 0.1), queue=q, jobwire_token=tok)
    job_id = jobwire.celery.job_id(result)
    assert job_id is not None
    crash_job(client, job_id, 5)
    pid = next(e["data"]["pid"] for e in log_of(client, job_id) if e["type"] == "file_completed")
    os.kill(pid, signal.SIGKILL)
    check_resumed_on_attempt_2(client, job_id, result, 30, pid)


def test_a_pool_process_lost_without_redelivery_fails_the_job(
    celery_app: Celery, workers: Workers, client: jobwire.Client, tok: str
) -> None:
    """Without acks_late, Celery records a lost pool process as the task's
    failure (WorkerLostError); the worker's main process fails the job."""
    q = queue()
    workers.start(q, pool="prefork", concurrency=1)
    from celery_tasks import count_files

    result = count_files.apply_async((40, 0.1), queue=q, jobwire_token=tok)
    job_id = jobwire.celery.job_id(result)
    assert job_id is not None
    crash_job(client, job_id, 3)
    pid = next(e["data"]["pid"] for e in log_of(client, job_id) if e["type"] == "file_completed")
    os.kill(pid, signal.SIGKILL)
    wait_status(client, job_id, "failed", 30)
    job = client.get_job(job_id)
    assert job["error"] is not None and "signal 9" in job["error"]
    assert job["attempt"] == 1
    events = log_of(client, job_id)
    assert_consecutive(events)
    assert kinds(events)[-1] == "job_failed"
    assert state_of(result) == "FAILURE"


def test_a_task_killed_at_its_hard_time_limit_fails_the_job(
    celery_app: Celery, workers: Workers, client: jobwire.Client, tok: str
) -> None:
    q = queue()
    workers.start(q, pool="prefork", concurrency=1)
    from celery_tasks import sleepy

    result = sleepy.apply_async((30,), queue=q, time_limit=1, jobwire_token=tok)
    job_id = jobwire.celery.job_id(result)
    assert job_id is not None
    wait_status(client, job_id, "failed", 30)
    job = client.get_job(job_id)
    assert job["error"] == "the task ran past its hard time limit (1s)"
    events = log_of(client, job_id)
    assert_consecutive(events)
    assert kinds(events)[-1] == "job_failed" and "progress" in kinds(events)


def test_a_message_rejected_and_requeued_runs_the_next_attempt(
    celery_app: Celery, workers: Workers, client: jobwire.Client, tok: str
) -> None:
    q = queue()
    workers.start(q)
    from celery_tasks import picky

    result = picky.apply_async(queue=q, jobwire_token=tok)
    job_id = jobwire.celery.job_id(result)
    assert job_id is not None
    assert result.get(timeout=30) == {"attempt": 2}
    events = log_of(client, job_id)
    assert_consecutive(events)
    assert [kinds(part) for part in split_attempts(events)] == [
        ["job_queued", "job_started", "progress", "job_retrying"],
        ["job_started", "progress", "job_completed"],
    ]
    assert "requeued" in events[3]["data"]["reason"]


def test_ignore_reject_expiry_and_an_oversized_result(
    celery_app: Celery, workers: Workers, client: jobwire.Client, tok: str
) -> None:
    q = queue()
    from celery_tasks import count_files, ending

    # Expired before any worker took it.
    expired = count_files.apply_async((1,), queue=q, expires=0.5, jobwire_token=tok)
    time.sleep(1)
    workers.start(q)
    results = {
        how: ending.apply_async((how,), queue=q, jobwire_token=tok)
        for how in ("ignore", "reject", "huge")
    }
    assert len(results["huge"].get(timeout=30)) == 70_000
    ends: Dict[str, jobwire.Event] = {}
    for how, result in [("expired", expired), *results.items()]:
        job_id = jobwire.celery.job_id(result)
        assert job_id is not None
        wait_until(ended(client, job_id), f"{how} ended", 30)
        events = log_of(client, job_id)
        assert_consecutive(events)
        ends[how] = events[-1]
    assert ends["expired"]["type"] == "job_cancelled"
    assert ends["expired"]["data"]["reason"] == "the Celery task was expired"
    assert ends["ignore"]["type"] == "job_cancelled"
    assert "celery.exceptions.Ignore" in ends["ignore"]["data"]["reason"]
    assert ends["reject"]["type"] == "job_failed"
    assert ends["reject"]["data"]["error"] == "bad input"
    assert ends["huge"]["type"] == "job_completed"
    assert "result" not in ends["huge"]["data"]
    assert ends["huge"]["data"]["message"].startswith("the task's result was not stored")


def test_a_jobwire_cancel_stops_the_task_which_ends_revoked(
    celery_app: Celery, workers: Workers, client: jobwire.Client, tok: str
) -> None:
    q = queue()
    workers.start(q)
    from celery_tasks import sleepy

    result = sleepy.apply_async((30,), queue=q, jobwire_token=tok)
    job_id = jobwire.celery.job_id(result)
    assert job_id is not None
    wait_until(lambda: client.get_job(job_id)["progress"] > 0, "progress", 30)
    assert client.cancel(job_id)["outcome"] == "cancel_requested"
    wait_status(client, job_id, "cancelled", 30)
    wait_until(revoked(result), "the task REVOKED", 30)
    events = log_of(client, job_id)
    assert_consecutive(events)
    assert kinds(events)[-1] == "job_cancelled"
    assert events[-1]["data"]["reason"] == "cancelled on request"
    assert set(kinds(events)[2:-1]) == {"progress"}
    # The worker is free again: the next task runs.
    from celery_tasks import count_files

    assert count_files.apply_async((1,), queue=q, jobwire_token=tok).get(timeout=30)["files"] == 1


def test_a_job_cancelled_while_queued_is_not_run(
    celery_app: Celery, workers: Workers, client: jobwire.Client, tok: str
) -> None:
    q = queue()
    from celery_tasks import count_files

    result = count_files.apply_async((3,), queue=q, jobwire_token=tok)
    job_id = jobwire.celery.job_id(result)
    assert job_id is not None
    assert client.cancel(job_id)["outcome"] == "cancelled"
    workers.start(q)
    wait_until(revoked(result), "the task REVOKED", 30)
    assert kinds(log_of(client, job_id)) == ["job_queued", "job_cancelled"]


def test_a_celery_revoke_cancels_the_job(
    celery_app: Celery, workers: Workers, client: jobwire.Client, tok: str
) -> None:
    """A task revoked before it ran, and one terminated while running
    (prefork): both jobs end cancelled."""
    q = queue()
    workers.start(q, pool="prefork", concurrency=1)
    from celery_tasks import sleepy

    running = sleepy.apply_async((30,), queue=q, jobwire_token=tok)
    running_job = jobwire.celery.job_id(running)
    assert running_job is not None
    wait_until(lambda: client.get_job(running_job)["progress"] > 0, "progress", 30)
    waiting = sleepy.apply_async((30,), queue=q, jobwire_token=tok)
    waiting_job = jobwire.celery.job_id(waiting)
    assert waiting_job is not None

    celery_app.control.revoke(waiting.id)
    celery_app.control.revoke(running.id, terminate=True)
    wait_status(client, running_job, "cancelled", 30)
    wait_status(client, waiting_job, "cancelled", 30)
    for result, job_id, started in ((running, running_job, True), (waiting, waiting_job, False)):
        wait_until(revoked(result), "the task REVOKED", 30)
        events = log_of(client, job_id)
        assert_consecutive(events)
        assert events[-1]["type"] == "job_cancelled"
        assert ("job_started" in kinds(events)) == started
    assert log_of(client, running_job)[-1]["data"]["reason"] == "the Celery task was terminated"
    assert log_of(client, waiting_job)[-1]["data"]["reason"] == "the Celery task was revoked"


def test_a_job_id_passed_in_is_used_and_send_task_makes_its_own(
    celery_app: Celery, workers: Workers, client: jobwire.Client, tok: str, server: Server
) -> None:
    q = queue()
    workers.start(q)
    from celery_tasks import count_files

    job = client.create_external_job("my.count", {"n": 2})
    result = count_files.apply_async((2,), queue=q, jobwire_job_id=job["id"])
    assert jobwire.celery.job_id(result) == job["id"]
    result.get(timeout=30)
    state = client.get_job(job["id"])
    assert (state["status"], state["kind"], state["processed_files"]) == (
        "completed",
        "my.count",
        2,
    )

    # Sent by name, without the task's class: the worker creates the job,
    # owned by the worker token's user.
    sent = celery_app.send_task("celery_tasks.count_files", (1,), queue=q)
    sent.get(timeout=30)
    with jobwire.Client(server.url, token=token("celery-worker", ("jobs:read",))) as worker_view:
        made: Optional[Dict[str, Any]] = next(
            (
                dict(j)
                for j in worker_view.list_jobs()
                if j["params"].get("celery_task_id") == sent.id
            ),
            None,
        )
    assert made is not None and made["status"] == "completed" and made["processed_files"] == 1


def test_an_eager_run_reports_and_retries_in_process(
    celery_app: Celery, client: jobwire.Client
) -> None:
    """task.apply() runs the task here, with the job given in the headers;
    its retry runs eagerly too, on the next attempt."""
    from celery_tasks import flaky

    job = client.create_external_job("eager.flaky")
    headers: Dict[str, Any] = {
        jobwire.celery.HEADER_JOB: job["id"],
        jobwire.celery.HEADER_ATTEMPT: 1,
    }
    assert flaky.apply((1, 2), headers=headers).get() == {"retries": 1, "attempt": 2}
    events = log_of(client, job["id"])
    assert_consecutive(events)
    assert [kinds(part) for part in split_attempts(events)] == [
        ["job_queued", "job_started", "progress", "progress", "job_retrying"],
        ["job_started", "progress", "progress", "job_completed"],
    ]


def test_a_task_called_directly_reports_nothing() -> None:
    from celery_tasks import count_files

    assert count_files(2)["files"] == 2


def test_settings_come_from_the_app_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    app = Celery("settings-test")
    monkeypatch.delenv("JOBWIRE_URL", raising=False)
    monkeypatch.delenv("JOBWIRE_TOKEN", raising=False)
    with pytest.raises(jobwire.ConfigError, match="jobwire_url"):
        jobwire.celery.get_client(app)
    monkeypatch.setenv("JOBWIRE_URL", "http://127.0.0.1:1,http://127.0.0.1:2")
    with pytest.raises(jobwire.ConfigError, match="jobwire_token"):
        jobwire.celery.get_client(app)
    app.conf.jobwire_token = lambda: "a-token"
    client = jobwire.celery.get_client(app)
    assert repr(client) == "jobwire.Client(['http://127.0.0.1:1', 'http://127.0.0.1:2'])"
    assert jobwire.celery.get_client(app) is client
    assert jobwire.celery.kind_of("Proj.Tasks.CountWords!") == "proj.tasks.countwords_"
