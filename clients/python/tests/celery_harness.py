"""Real `celery worker` processes for the tests (Celery from the test
virtualenv, the app in celery_tasks.py), each in a process group of its own
so that a test can kill a whole worker (the main process and its pool) with
one SIGKILL, as a machine crash would."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional

TESTS = Path(__file__).resolve().parent


class Worker:
    """``celery -A celery_tasks worker`` serving ``queue``."""

    def __init__(
        self,
        queue: str,
        env: Dict[str, str],
        *,
        pool: str = "solo",
        concurrency: int = 1,
        cwd: Path = TESTS,
        app: str = "celery_tasks",
    ) -> None:
        self.queue = queue
        self.name = f"w-{uuid.uuid4().hex[:8]}@%h"
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (kept open for the worker's life)
            prefix="jobwire-py-celery-", suffix=".log"
        )
        args = [
            sys.executable, "-m", "celery", "-A", app, "worker",
            "--pool", pool, "--concurrency", str(concurrency), "-Q", queue, "-n", self.name,
            "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        self.proc: Optional[subprocess.Popen[bytes]] = subprocess.Popen(
            args,
            cwd=str(cwd),
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "PYTHONPATH": str(cwd),
                "PYTHONUNBUFFERED": "1",
                **env,
            },
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self.wait_for_log(" ready.", 30)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"the celery worker exited:\n{self.output()[-4000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"no {text!r} from the celery worker:\n{self.output()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL to the whole worker (main process and pool): a crash."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def close(self) -> None:
        """Ends the worker at a test's end: a kill (a warm shutdown would
        only add a second per test)."""
        self.kill()
        keep = os.environ.get("JOBWIRE_TEST_KEEP_LOGS")
        if keep:  # a folder to copy the worker's log to, for debugging
            Path(keep).mkdir(parents=True, exist_ok=True)
            (Path(keep) / f"celery-{self.queue}-{self.pid}.log").write_text(self.output())
        self.log.close()


class Workers:
    """The workers a test started; all are stopped at its end."""

    def __init__(self, env: Dict[str, str]) -> None:
        self.env = env
        self.started: List[Worker] = []

    def start(self, queue: str, *, pool: str = "solo", concurrency: int = 1) -> Worker:
        worker = Worker(queue, self.env, pool=pool, concurrency=concurrency)
        self.started.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.started:
            worker.close()
