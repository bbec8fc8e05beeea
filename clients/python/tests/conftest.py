"""Fixtures: a shared Redis and gateway for the plain tests, private ones for
the tests that kill and restart them, and a client per test acting as a user
of its own (so tests never see each other's jobs or rate limits)."""

from __future__ import annotations

import os
import shutil
import uuid
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List

import pytest

import jobwire
from celery_harness import Workers
from harness import BIN, Redis, Server, token


def pytest_configure(config: pytest.Config) -> None:
    # Missing prerequisites fail the run loudly: a test run that silently
    # skips everything would pass while testing nothing.
    if not os.access(BIN, os.X_OK):
        raise pytest.UsageError(
            f"no jobwire binary at {BIN}: run `cargo build -p jobwire-cli` or set JOBWIRE_BIN"
        )
    if shutil.which("redis-server") is None:
        raise pytest.UsageError("redis-server is not installed")


@pytest.fixture(scope="session")
def redis() -> Iterator[Redis]:
    r = Redis()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def server(redis: Redis) -> Iterator[Server]:
    s = Server(redis)
    yield s
    Server.kill_all()


@pytest.fixture
def user() -> str:
    return "u-" + uuid.uuid4().hex[:12]


@pytest.fixture
def tok(user: str) -> str:
    return token(user)


@pytest.fixture
def client(server: Server, tok: str) -> Iterator[jobwire.Client]:
    with jobwire.Client(server.url, token=tok) as c:
        yield c


@pytest.fixture
async def aclient(server: Server, tok: str) -> AsyncIterator[jobwire.AsyncClient]:
    async with jobwire.AsyncClient(server.url, token=tok) as c:
        yield c


@pytest.fixture
def private_redis() -> Iterator[Redis]:
    """A Redis of the test's own, to kill and restart."""
    r = Redis()
    yield r
    r.stop()


@pytest.fixture
def gateways(private_redis: Redis) -> Iterator[Callable[[], Server]]:
    """Starts gateways on the private Redis; all are killed at the end."""
    started: List[Server] = []

    def start() -> Server:
        s = Server(private_redis)
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


# Celery (test_celery.py): a broker Redis of its own, the test process's
# Celery app pointed at it, and real `celery worker` processes.


@pytest.fixture(scope="session")
def broker() -> Iterator[Redis]:
    r = Redis()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def worker_token() -> str:
    """The Celery workers' token: no jobs:read (reporting needs only the
    worker scope; jobs:write lets a worker create the job of a task sent
    without JobwireTask.apply_async)."""
    return token("celery-worker", scopes=("worker", "jobs:write"), ttl="1h")


@pytest.fixture(scope="session")
def celery_env(broker: Redis, server: Server, worker_token: str) -> Dict[str, str]:
    """The environment of the worker processes."""
    return {
        "JOBWIRE_TEST_BROKER": broker.url + "/0",
        "JOBWIRE_TEST_BACKEND": broker.url + "/1",
        "JOBWIRE_URL": server.url,
        "JOBWIRE_TOKEN": worker_token,
    }


@pytest.fixture(scope="session")
def celery_app(celery_env: Dict[str, str]) -> Iterator[Any]:
    """celery_tasks.app, configured in this process for sending tasks and
    reading their results."""
    import celery_tasks

    app = celery_tasks.app
    app.conf.update(
        broker_url=celery_env["JOBWIRE_TEST_BROKER"],
        result_backend=celery_env["JOBWIRE_TEST_BACKEND"],
        jobwire_url=celery_env["JOBWIRE_URL"],
        jobwire_token=celery_env["JOBWIRE_TOKEN"],
    )
    yield app
    app.close()


@pytest.fixture
def workers(celery_env: Dict[str, str]) -> Iterator[Workers]:
    """Starts celery workers (celery_harness.Worker); all stop at the end."""
    w = Workers(celery_env)
    yield w
    w.close()
