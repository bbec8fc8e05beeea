"""The Celery side: one task, counting the words of the documents of a
folder, reporting each document through jobwire (``self.jobwire``).

Run a worker with ``celery -A wordcount.tasks worker --loglevel INFO``.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

from celery import Celery

from jobwire.celery import JobwireTask

from .config import settings
from .tokens import mint

SETTINGS = settings()
#: The documents counted: text files, by suffix.
TEXT_SUFFIXES = {".md", ".txt", ".rst"}
WORD = re.compile(r"[a-z0-9']+")

app = Celery("wordcount", broker=SETTINGS.broker_url)
app.conf.update(
    task_default_queue="wordcount",
    # jobwire holds the tasks' progress and results: no result backend.
    task_ignore_result=True,
    # One document at a time per process; a task taken by a worker that dies
    # is delivered again (a new jobwire attempt) instead of being lost.
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # Redis hands an unacknowledged task to another worker after this long:
    # keep it above the longest task (a run still going then is taken over).
    broker_transport_options={"visibility_timeout": 60},
    broker_connection_retry_on_startup=True,
    # The gateways, tried in turn, and the worker's token: minted here, for
    # 10 minutes at a time (a callable is asked again before it expires).
    # Publishing needs only the worker scope.
    jobwire_url=SETTINGS.jobwire_urls,
    jobwire_token=lambda: mint(SETTINGS.jwt_secret, "wordcount-worker", ["worker"], 600),
)
# httpx logs every request at INFO.
logging.getLogger("httpx").setLevel(logging.WARNING)


def documents(folder: Path) -> List[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)


def folder_path(name: str) -> Path:
    """A folder under the documents' root (``.`` is the root itself)."""
    root = SETTINGS.docs_root
    path = (root / name).resolve()
    if path != root and root not in path.parents:
        raise ValueError(f"{name!r} is not inside the documents' folder")
    if not path.is_dir():
        raise ValueError(f"no folder {name!r}")
    return path


@app.task(base=JobwireTask, bind=True, name="wordcount.count_words")
def count_words(self: JobwireTask, folder: str) -> Dict[str, Any]:
    """Counts the words of every document under ``folder``; the result (the
    job's, in jobwire) has the totals and the ten most frequent words."""
    root = folder_path(folder)
    paths = documents(root)
    self.jobwire.started(total_files=len(paths), message=f"{len(paths)} documents in {folder}")
    counts: Counter[str] = Counter()
    total = 0
    for path in paths:
        name = str(path.relative_to(root))
        self.jobwire.file_processing(name)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            self.jobwire.file_error(name, str(e))  # the job goes on
            continue
        words = WORD.findall(text.lower())
        counts.update(words)
        total += len(words)
        time.sleep(SETTINGS.file_delay)
        self.jobwire.file_completed(name, words=len(words))
    return {
        "folder": folder,
        "documents": len(paths),
        "words": total,
        "top": [[word, n] for word, n in counts.most_common(10)],
    }
