"""Settings, from the environment (the same for the web app and the worker)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List

#: The repository's docs/ folder: what the example counts by default.
DEFAULT_DOCS = Path(__file__).resolve().parents[3] / "docs"


@dataclass(frozen=True)
class Settings:
    #: Celery's broker (a Redis database of its own; jobwire may use the same server).
    broker_url: str
    #: The jobwire gateways, tried in turn (by the worker, the app and the page).
    jobwire_urls: List[str]
    #: The gateways' JOBWIRE_JWT_SECRET: the app mints its users' tokens with it.
    jwt_secret: str
    #: The folder whose subfolders users may count.
    docs_root: Path
    #: Seconds the task waits after each document, so that people can watch.
    file_delay: float


def settings() -> Settings:
    secret = os.environ.get("JOBWIRE_JWT_SECRET", "")
    if len(secret) < 16:
        raise SystemExit("wordcount: set JOBWIRE_JWT_SECRET (the gateways' secret, 16+ bytes)")
    urls = os.environ.get("JOBWIRE_URLS", "http://127.0.0.1:8081,http://127.0.0.1:8082")
    return Settings(
        broker_url=os.environ.get("WORDCOUNT_BROKER", "redis://127.0.0.1:6379/1"),
        jobwire_urls=[u.strip().rstrip("/") for u in urls.split(",") if u.strip()],
        jwt_secret=secret,
        docs_root=Path(os.environ.get("WORDCOUNT_DOCS", str(DEFAULT_DOCS))).resolve(),
        file_delay=float(os.environ.get("WORDCOUNT_FILE_DELAY", "0.2")),
    )
