"""The web side: a FastAPI app that starts word counts as Celery tasks and
serves the page that watches them live from the jobwire gateways.

Run it with ``uvicorn wordcount.web:app --port 8000``.

Each browser gets a demo identity (a cookie); a real app uses its own
sign-in. The app mints that user's jobwire tokens with the gateways'
secret: the jobs are created with the user's token (so the user owns them
and may watch them), the page gets a short read-only token, renewed through
``/api/token`` before it expires.
"""

from __future__ import annotations

import secrets
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional

import httpx
from fastapi import Cookie, FastAPI, HTTPException, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel

import jobwire
import jobwire.celery

from .tasks import SETTINGS, count_words, documents, folder_path
from .tokens import mint

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "wordcount_user"

app = FastAPI(title="wordcount")


def user_of(cookie: Optional[str]) -> str:
    if not cookie:
        raise HTTPException(401, "no session: open the page first")
    return cookie


def user_token(user: str, scopes: List[str], ttl: int = 300) -> str:
    return mint(SETTINGS.jwt_secret, user, scopes, ttl)


def jobwire_client(user: str) -> jobwire.Client:
    """A jobwire client acting as ``user`` (every gateway, in turn)."""
    return jobwire.Client(
        SETTINGS.jobwire_urls, token=user_token(user, ["jobs:read", "jobs:write"])
    )


@app.get("/")
def page(wordcount_user: Optional[str] = Cookie(None)) -> FileResponse:
    page = FileResponse(STATIC / "index.html")
    if not wordcount_user:
        page.set_cookie(COOKIE, "user-" + secrets.token_hex(4), httponly=True, samesite="strict")
    return page


@app.get("/page.js")
def page_js() -> FileResponse:
    return FileResponse(STATIC / "page.js", media_type="text/javascript")


_client_js: Dict[str, bytes] = {}
_client_js_lock = threading.Lock()


@app.get("/jobwire.js")
def jobwire_js() -> Response:
    """jobwire's JavaScript client, from the gateways (served from this
    origin: a page may not import a module from another origin that sends
    no Access-Control-Allow-Origin)."""
    with _client_js_lock:
        if "body" not in _client_js:
            for url in SETTINGS.jobwire_urls:
                try:
                    answer = httpx.get(url + "/jobwire.js", timeout=5)
                except httpx.HTTPError:
                    continue
                if answer.status_code == 200:
                    _client_js["body"] = answer.content
                    break
            else:
                raise HTTPException(502, "no jobwire gateway answered")
        body = _client_js["body"]
    return Response(body, media_type="text/javascript")


@app.get("/api/config")
def config() -> Dict[str, Any]:
    root = SETTINGS.docs_root
    subfolders = (p for p in root.iterdir() if p.is_dir() and documents(p))
    folders = [".", *sorted(str(p.relative_to(root)) for p in subfolders)]
    return {"gateways": SETTINGS.jobwire_urls, "folders": folders}


@app.get("/api/token")
def token(wordcount_user: Optional[str] = Cookie(None)) -> Dict[str, str]:
    """The page's token: read-only, five minutes (the page asks again)."""
    user = user_of(wordcount_user)
    return {"token": user_token(user, ["jobs:read"]), "user": user}


class Start(BaseModel):
    folder: str


@app.post("/api/jobs", status_code=201)
def start(body: Start, wordcount_user: Optional[str] = Cookie(None)) -> Dict[str, Any]:
    """Sends the Celery task; its jobwire job is created as the user (the
    create needs the worker scope: this token never leaves the server)."""
    user = user_of(wordcount_user)
    try:
        folder_path(body.folder)
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    result = count_words.apply_async(
        (body.folder,), jobwire_token=user_token(user, ["jobs:write", "worker"], ttl=60)
    )
    return {"job_id": jobwire.celery.job_id(result), "task_id": result.id}


@app.get("/api/jobs")
def jobs(wordcount_user: Optional[str] = Cookie(None)) -> List[Dict[str, Any]]:
    """The user's latest jobs (the page watches the unfinished ones)."""
    user = user_of(wordcount_user)
    with jobwire_client(user) as client:
        return [dict(job) for job in client.list_page(limit=10)["jobs"]]


@app.post("/api/jobs/{job_id}/cancel", status_code=202)
def cancel(job_id: str, wordcount_user: Optional[str] = Cookie(None)) -> Dict[str, Any]:
    """Cancels through jobwire: the task stops at its next report and ends
    as revoked in Celery."""
    user = user_of(wordcount_user)
    with jobwire_client(user) as client:
        try:
            return dict(client.cancel(job_id))
        except jobwire.NotFound:
            raise HTTPException(404, "no such job") from None
