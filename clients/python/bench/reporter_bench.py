"""How many events per second the reporter publishes through one gateway.

Measures, for the sync reporter (a sender thread) and the async one (a
sender task):

* single:  one event per request (``max_batch=1``), i.e. the round trip bound;
* batched: the default, each request carries whatever accumulated meanwhile
  (up to 1000 events).

The time runs from the first report to the moment every event is stored
(``flush()``), and each run's log is checked: every event once, in order.

By default it starts its own redis-server and ``jobwire serve`` on free ports
(the binary from $JOBWIRE_BIN, else target/debug/jobwire; use a release
build for figures worth quoting). Or point it at a running gateway:

    python bench/reporter_bench.py --events 20000
    python bench/reporter_bench.py --url http://127.0.0.1:8080 --token "$JOBWIRE_TOKEN"
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import jobwire

SECRET = "reporter-bench-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


class Stack:
    """A private redis-server and one gateway."""

    def __init__(self, binary: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="jobwire-bench-")
        redis_port, port = free_port(), free_port()
        self.redis = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
        )
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "JOBWIRE_BIND": f"127.0.0.1:{port}",
            "JOBWIRE_JWT_SECRET": SECRET,
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}",
            "RUST_LOG": "warn",
        }
        self.url = f"http://127.0.0.1:{port}"

        def redis_up() -> bool:
            socket.create_connection(("127.0.0.1", redis_port)).close()
            return True

        wait_for(redis_up, "redis-server")
        self.gateway = subprocess.Popen([binary, "serve"], env=env)

        def ready() -> bool:
            with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                return bool(r.status == 200)

        wait_for(ready, "jobwire serve")
        self.token = subprocess.run(
            [
                binary,
                "token",
                "--sub",
                "bench",
                "--ttl",
                "1h",
                "--scope",
                "jobs:read",
                "--scope",
                "jobs:write",
                "--scope",
                "worker",
            ],
            env={"JOBWIRE_JWT_SECRET": SECRET},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    def stop(self) -> None:
        for proc in (self.gateway, self.redis):
            proc.kill()
            proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def check_log(client: jobwire.Client, job_id: str, events: int) -> None:
    """Every event was applied once: job_queued, job_started, the progress
    events and job_completed, nothing missing and nothing twice (the log
    itself may be trimmed to JOBWIRE_STREAM_MAXLEN)."""
    job = client.get_job(job_id)
    if job["status"] != "completed" or job["last_event_id"] != events + 3:
        raise SystemExit(f"job {job_id}: {job['last_event_id']} events, not {events + 3}")


def run_sync(client: jobwire.Client, events: int, max_batch: int) -> float:
    job = client.create_external_job("bench.reporter")
    reporter = jobwire.JobReporter(
        client, job["id"], job["attempt"], max_batch=max_batch, buffer_size=max(events, 10) + 10
    )
    began = time.perf_counter()
    reporter.started()
    for i in range(events):
        reporter.progress(i + 1, events)
    reporter.flush()
    elapsed = time.perf_counter() - began
    reporter.completed()
    reporter.close()
    check_log(client, job["id"], events)
    return elapsed


async def run_async(
    url: str, token: str, events: int, max_batch: int, check: jobwire.Client
) -> float:
    async with jobwire.AsyncClient(url, token=token) as client:
        job = await client.create_external_job("bench.reporter")
        reporter = jobwire.AsyncJobReporter(
            client, job["id"], job["attempt"], max_batch=max_batch, buffer_size=max(events, 10) + 10
        )
        await reporter.open()
        began = time.perf_counter()
        await reporter.started()
        for i in range(events):
            await reporter.progress(i + 1, events)
        await reporter.flush()
        elapsed = time.perf_counter() - began
        await reporter.completed()
        await reporter.aclose()
    check_log(check, job["id"], events)
    return elapsed


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="the jobwire reporter's events/s")
    parser.add_argument("--url", help="a running gateway (default: start one)")
    parser.add_argument(
        "--token",
        default=os.environ.get("JOBWIRE_TOKEN"),
        help="with --url: a token with the worker and jobs:read scopes",
    )
    parser.add_argument(
        "--bin",
        default=os.environ.get("JOBWIRE_BIN")
        or str(Path(__file__).resolve().parents[3] / "target" / "debug" / "jobwire"),
    )
    parser.add_argument("--events", type=int, default=5000, help="events per batched run")
    parser.add_argument(
        "--single-events", type=int, default=1000, help="events per single-event run"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per mode (the best counts)")
    args = parser.parse_args(argv)

    stack = None
    if args.url:
        if not args.token:
            parser.error("--url needs --token (or JOBWIRE_TOKEN)")
        url, token = args.url, args.token
    else:
        stack = Stack(args.bin)
        url, token = stack.url, stack.token
    try:
        with jobwire.Client(url, token=token) as client:
            modes: List[Tuple[str, int, int]] = [
                ("single", 1, args.single_events),
                ("batched", 1000, args.events),
            ]
            print(f"gateway {url}; best of {args.runs} runs; Python {sys.version.split()[0]}")
            print(f"{'reporter':<8} {'mode':<8} {'events':>7} {'seconds':>8} {'events/s':>9}")
            for kind in ("sync", "async"):
                for mode, max_batch, events in modes:
                    times = []
                    for _ in range(args.runs):
                        if kind == "sync":
                            times.append(run_sync(client, events, max_batch))
                        else:
                            times.append(
                                asyncio.run(run_async(url, token, events, max_batch, client))
                            )
                    best = min(times)
                    print(f"{kind:<8} {mode:<8} {events:>7} {best:>8.3f} {events / best:>9.0f}")
    finally:
        if stack is not None:
            stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
