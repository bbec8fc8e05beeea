"""The Celery app of the tests: real tasks on JobwireTask, run by real
`celery worker` processes that the fixtures start (celery_harness.py).

The worker processes configure it from the environment (broker, result
backend; jobwire's URL and token through JOBWIRE_URL and JOBWIRE_TOKEN, as
jobwire.celery reads them); the test process updates ``app.conf`` in a
fixture. Each test sends to a queue of its own, served by its own worker.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict

from celery import Celery
from celery.exceptions import Ignore, Reject

from jobwire.celery import JobwireTask

app = Celery("celery_tasks")
app.conf.update(
    broker_url=os.environ.get("JOBWIRE_TEST_BROKER", "redis://127.0.0.1:9/0"),
    result_backend=os.environ.get("JOBWIRE_TEST_BACKEND", "redis://127.0.0.1:9/1"),
    # A message a lost worker had taken comes back after 10 s (checked every
    # second); the tasks that acknowledge late run for well less than that
    # (crashable(30, 0.1): 3 s asleep plus 60 publishes), so that even on a
    # loaded host a rerun is not delivered a third time.
    broker_transport_options={
        "visibility_timeout": 10,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    task_track_started=True,
    result_expires=600,
)


@app.task(base=JobwireTask, bind=True)
def count_files(self: JobwireTask, count: int, delay: float = 0.0) -> Dict[str, Any]:
    """Reports ``count`` files, ``delay`` seconds each."""
    self.jobwire.started(total_files=count, message=f"{count} files")
    for i in range(count):
        path = f"file-{i:03d}.txt"
        self.jobwire.file_processing(path)
        time.sleep(delay)
        self.jobwire.file_completed(path, index=i, pid=os.getpid())
    return {"files": count, "pid": os.getpid()}


@app.task(base=JobwireTask, bind=True, acks_late=True, reject_on_worker_lost=True, name="crashable")
def crashable(self: JobwireTask, count: int, delay: float) -> Dict[str, Any]:
    """count_files, acknowledged only when it ends: a run whose worker dies
    is delivered again."""
    self.jobwire.started(total_files=count)
    for i in range(count):
        path = f"file-{i:03d}.txt"
        self.jobwire.file_processing(path)
        time.sleep(delay)
        self.jobwire.file_completed(path, index=i, pid=os.getpid())
    return {"files": count, "pid": os.getpid(), "attempt": self.jobwire.attempt}


@app.task(base=JobwireTask, bind=True, max_retries=2)
def flaky(self: JobwireTask, failures: int, steps: int) -> Dict[str, Any]:
    """Reports ``steps`` steps, then fails its first ``failures`` runs with a
    Celery retry."""
    for i in range(steps):
        self.jobwire.progress(i + 1, steps, f"step {i + 1} of run {self.request.retries + 1}")
    if self.request.retries < failures:
        raise self.retry(countdown=0, exc=RuntimeError(f"flaky failure {self.request.retries + 1}"))
    return {"retries": self.request.retries, "attempt": self.jobwire.attempt}


@app.task(base=JobwireTask, bind=True)
def failing(self: JobwireTask) -> None:
    self.jobwire.progress(1, 2, "half way")
    raise ValueError("the disk is full")


@app.task(base=JobwireTask, bind=True)
def sleepy(self: JobwireTask, seconds: float) -> str:
    """Reports progress every 50 ms for ``seconds``."""
    started = time.monotonic()
    step = 0
    while time.monotonic() - started < seconds:
        step += 1
        self.jobwire.progress(time.monotonic() - started, seconds, f"step {step}")
        time.sleep(0.05)
    return "slept"


@app.task(base=JobwireTask, bind=True, acks_late=True)
def picky(self: JobwireTask) -> Dict[str, Any]:
    """Rejects its message (requeued) on the job's first attempt."""
    self.jobwire.progress(1, 2, f"attempt {self.jobwire.attempt}")
    if self.jobwire.attempt == 1:
        raise Reject("not on the first attempt", requeue=True)
    return {"attempt": self.jobwire.attempt}


@app.task(base=JobwireTask, bind=True, acks_late=True)
def ending(self: JobwireTask, how: str) -> Any:
    """Ends its run as ``how`` says: Celery's Ignore, a Reject without
    requeue, or a result too large to store on the job."""
    self.jobwire.progress(1, 2)
    if how == "ignore":
        raise Ignore()
    if how == "reject":
        raise Reject(ValueError("bad input"), requeue=False)
    return "x" * 70_000
