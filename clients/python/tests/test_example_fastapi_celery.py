"""examples/fastapi-celery end to end: Redis, two jobwire gateways, a Celery
worker, the FastAPI app under uvicorn, and headless Chromium on its page.
A gateway is killed mid-job; the page must show the job completed with
every document, having seen every event once, in order."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

import jobwire
from celery_harness import Worker
from harness import REPO, SECRET, Redis, Server, free_port, token, wait_until

EXAMPLE = REPO / "examples" / "fastapi-celery"
CHROMIUM = os.environ.get("JOBWIRE_CHROMIUM", "/usr/bin/chromium")
DOCUMENTS = 24
WORD = re.compile(r"[a-z0-9']+")

pytestmark = pytest.mark.timeout(180)


def write_documents(root: Path) -> int:
    """``DOCUMENTS`` documents in root/reports; returns their word count."""
    folder = root / "reports"
    folder.mkdir(parents=True)
    words = 0
    for i in range(DOCUMENTS):
        text = f"Report {i}: the quick brown fox jumps over the lazy dog {i} times.\n" * (i + 1)
        (folder / f"report-{i:02d}.md").write_text(text)
        words += len(WORD.findall(text.lower()))
    (folder / "image.png").write_bytes(b"\x89PNG not a document")
    return words


class App:
    """uvicorn serving wordcount.web:app on ``port``."""

    def __init__(self, port: int, env: Dict[str, str]) -> None:
        self.port = port
        self.log = tempfile.NamedTemporaryFile(prefix="jobwire-py-uvicorn-", suffix=".log")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "wordcount.web:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=str(EXAMPLE),
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "PYTHONPATH": str(EXAMPLE),
                **env,
            },
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self.ready, "uvicorn", 30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(Path(self.log.name).read_text())
        with urllib.request.urlopen(self.url + "/api/config", timeout=1) as r:
            return bool(r.status == 200)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def docs() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="jobwire-py-docs-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cleanup() -> Iterator[List[Callable[[], None]]]:
    """Stops what a test started, last first."""
    stops: List[Callable[[], None]] = []
    yield stops
    for stop in reversed(stops):
        stop()


def test_the_page_shows_a_job_to_the_end_while_a_gateway_dies(
    private_redis: Redis, docs: Path, cleanup: List[Callable[[], None]]
) -> None:
    # scripts/test installs Chromium: missing, it is a failure, not a skip.
    assert os.access(CHROMIUM, os.X_OK), f"no Chromium at {CHROMIUM} (set JOBWIRE_CHROMIUM)"
    expected_words = write_documents(docs)
    app_port = free_port()
    # The page's origin may open sockets to the gateways.
    gateway_env = {"JOBWIRE_ALLOWED_ORIGINS": f"http://127.0.0.1:{app_port}"}
    first = Server(private_redis, env=gateway_env)
    cleanup.append(first.kill)
    second = Server(private_redis, env=gateway_env)
    cleanup.append(second.kill)
    env = {
        "JOBWIRE_JWT_SECRET": SECRET,
        "JOBWIRE_URLS": f"{first.url},{second.url}",
        "WORDCOUNT_BROKER": private_redis.url + "/1",
        "WORDCOUNT_DOCS": str(docs),
        "WORDCOUNT_FILE_DELAY": "0.2",
    }
    worker = Worker("wordcount", env, cwd=EXAMPLE, app="wordcount.tasks")
    cleanup.append(worker.close)
    app = App(app_port, env)
    cleanup.append(app.close)

    job_id, seen = run_the_page(app, first, second, expected_words)

    # What the page saw is the job's log after its first state.
    with jobwire.Client(second.url, token=token("ops", ("jobs:read", "admin"))) as client:
        job = client.get_job(job_id)
        events = list(client.history(job_id, page_size=1000))
    assert (job["status"], job["attempt"], job["processed_files"]) == ("completed", 1, DOCUMENTS)
    assert job["result"]["words"] == expected_words
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert seen["ids"] == [e["id"] for e in events][seen["firstId"] :]
    completed = [e["data"]["file"] for e in events if e["type"] == "file_completed"]
    assert completed == [f"report-{i:02d}.md" for i in range(DOCUMENTS)]


def screenshot(page: Any, name: str) -> None:
    """With JOBWIRE_TEST_SCREENSHOTS=DIR, saves the page as DIR/NAME.png."""
    folder = os.environ.get("JOBWIRE_TEST_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def run_the_page(
    app: App, first: Server, second: Server, expected_words: int
) -> Tuple[str, Dict[str, Any]]:
    """Starts a count on the page, kills ``first`` mid-job, and checks what
    the page shows at the end; returns the job's id and what the page saw."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            errors: List[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(app.url + "/")
            page.wait_for_selector("#folder option[value='reports']", state="attached")
            page.select_option("#folder", "reports")
            page.click("#start button")
            card = page.locator(".job").first
            card.wait_for()
            job_id = card.get_attribute("data-job-id")
            assert job_id

            # Mid-job (a few documents done, most to go), the gateway the
            # page and the worker are on dies.
            page.wait_for_function(
                "id => Number(document.querySelector(`#job-${id} .processed`).textContent) >= 4",
                arg=job_id,
                timeout=30_000,
            )
            assert int(card.locator(".processed").inner_text()) < DOCUMENTS - 6
            screenshot(page, "running")
            first.kill()

            page.wait_for_function(
                "id => document.getElementById(`job-${id}`).dataset.status === 'completed'",
                arg=job_id,
                timeout=60_000,
            )
            assert card.locator(".status").inner_text().lower() == "completed"
            assert card.locator(".processed").inner_text() == str(DOCUMENTS)
            assert card.locator(".total").inner_text() == str(DOCUMENTS)
            assert card.locator("progress").evaluate("p => p.value") == 100
            assert card.locator(".words").inner_text() == str(expected_words)
            assert "live from " + second.url in card.locator(".connection").inner_text()

            seen: Dict[str, Any] = page.evaluate("id => window.wordcount.jobs[id]", job_id)
            assert (seen["holes"], seen["resyncs"]) == (0, 0)
            first_id, ids = seen["firstId"], seen["ids"]
            assert ids == list(range(first_id + 1, first_id + 1 + len(ids)))
            assert seen["gateways"][0] == first.url and seen["gateways"][-1] == second.url
            assert errors == []
            screenshot(page, "completed")
            return job_id, seen
        finally:
            browser.close()
