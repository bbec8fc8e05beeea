"""The REST API's requests and answers, independent of any I/O.

:class:`jobwire.Client` and :class:`jobwire.AsyncClient` differ only in how
they send; what they send (routes, bodies, headers) and how answers are read
(status codes, the error shape) lives here once, so the two cannot drift
apart. The routes are docs/protocol.md's and docs/openapi.json's.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import quote, urlsplit

from ._errors import ConfigError, ProtocolError, error_from_response
from ._types import JSONObject, NewEvent
from ._version import __version__

USER_AGENT = f"jobwire-python/{__version__}"

#: ``timeout``/``delay`` accept "30s"-style strings, seconds, or a timedelta.
Duration = Union[str, int, float, _dt.timedelta]
#: ``run_at`` accepts an RFC 3339 string or a datetime (naive means UTC).
Instant = Union[str, _dt.datetime]

#: Most events one ``POST /api/jobs/{id}/events`` takes.
MAX_PUBLISH_BATCH = 1000


def dumps(value: Any) -> bytes:
    """Compact JSON; NaN and infinities are refused here (they are not JSON,
    and the server would refuse the whole request)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


class Endpoints:
    """The base URLs of one or more jobwire instances, tried in turn starting
    with the one that answered last."""

    def __init__(self, base_url: Union[str, Sequence[str]]) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ConfigError("no server URL given")
        self.urls: List[str] = [self._check(u) for u in urls]
        self.current = 0

    @staticmethod
    def _check(url: object) -> str:
        if not isinstance(url, str):
            raise ConfigError(f"a base URL must be a string, not {type(url).__name__}")
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"not an http:// or https:// URL: {url!r}")
        if parts.query or parts.fragment:
            raise ConfigError(f"a base URL has no query or fragment: {url!r}")
        return url.strip().rstrip("/")

    def in_order(self) -> List[Tuple[int, str]]:
        n = len(self.urls)
        start = self.current
        return [((start + i) % n, self.urls[(start + i) % n]) for i in range(n)]

    def worked(self, index: int) -> None:
        self.current = index


def ws_url(base: str, path: str) -> str:
    """``http(s)://host/prefix`` + ``path`` as a ``ws(s)://`` URL."""
    return "ws" + base[len("http") :] + path


@dataclass
class Call:
    """One REST request, before it is sent."""

    method: str
    path: str
    params: Dict[str, str] = field(default_factory=dict)
    body: Optional[bytes] = None
    headers: Dict[str, str] = field(default_factory=dict)


def job_path(job_id: str, suffix: str = "") -> str:
    if not isinstance(job_id, str) or not job_id:
        raise ValueError("a job id is a non-empty string")
    return f"/api/jobs/{quote(job_id, safe='')}{suffix}"


def duration(value: Duration) -> str:
    """A duration as the server reads it ("1500ms")."""
    if isinstance(value, str):
        return value
    seconds = value.total_seconds() if isinstance(value, _dt.timedelta) else float(value)
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return f"{round(seconds * 1000)}ms"


def instant(value: Instant) -> str:
    """An RFC 3339 time; a naive datetime is taken as UTC."""
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.timezone.utc)
    return value.isoformat()


def create_job(
    kind: str,
    params: Optional[Mapping[str, Any]],
    *,
    external: bool = False,
    queue: Optional[str] = None,
    priority: Optional[int] = None,
    run_at: Optional[Instant] = None,
    delay: Optional[Duration] = None,
    timeout: Optional[Duration] = None,
    max_attempts: Optional[int] = None,
    backoff: Optional[Mapping[str, Any]] = None,
    unique_key: Optional[str] = None,
    idempotency_key: Optional[str] = None,
) -> Call:
    body: JSONObject = {"kind": kind, "params": dict(params or {})}
    if external:
        body["external"] = True
    if queue is not None:
        body["queue"] = queue
    if priority is not None:
        body["priority"] = priority
    if run_at is not None:
        body["run_at"] = instant(run_at)
    if delay is not None:
        body["delay"] = duration(delay)
    if timeout is not None:
        body["timeout"] = duration(timeout)
    if max_attempts is not None:
        body["max_attempts"] = max_attempts
    if backoff is not None:
        body["backoff"] = {
            k: duration(v) if k in ("base", "max") and not isinstance(v, str) else v
            for k, v in backoff.items()
        }
    if unique_key is not None:
        body["unique_key"] = unique_key
    headers = {}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return Call("POST", "/api/jobs", body=dumps(body), headers=headers)


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a listing holds besides the caller's own (an admin's:
    everyone's): ``finished_after`` keeps jobs that finished then or later
    (unfinished ones never match)."""

    status: Optional[str] = None
    kind: Optional[str] = None
    queue: Optional[str] = None
    finished_after: Optional[Instant] = None

    def params(self) -> Dict[str, str]:
        params: Dict[str, str] = {}
        for name in ("status", "kind", "queue"):
            value = getattr(self, name)
            if value is not None:
                params[name] = value
        if self.finished_after is not None:
            params["finished_after"] = instant(self.finished_after)
        return params


def list_jobs(which: JobFilter, limit: Optional[int], cursor: Optional[str]) -> Call:
    params = which.params()
    if limit is not None:
        params["limit"] = str(limit)
    if cursor is not None:
        params["cursor"] = cursor
    return Call("GET", "/api/jobs", params=params)


def get_job(job_id: str) -> Call:
    return Call("GET", job_path(job_id))


def cancel(job_id: str) -> Call:
    return Call("POST", job_path(job_id, "/cancel"))


def delete_job(job_id: str) -> Call:
    return Call("DELETE", job_path(job_id))


def history(job_id: str, since: int, epoch: Optional[str], limit: int) -> Call:
    params = {"since": str(since), "limit": str(limit)}
    if epoch is not None:
        params["epoch"] = epoch
    return Call("GET", job_path(job_id, "/events"), params=params)


def new_event(
    type: str,
    data: Optional[Mapping[str, Any]] = None,
    attempt: Optional[int] = None,
    n: Optional[int] = None,
) -> NewEvent:
    if (attempt is None) != (n is None):
        raise ValueError("attempt and n go together")
    event: NewEvent = {"type": type, "data": dict(data or {})}
    if attempt is not None and n is not None:
        event["attempt"] = attempt
        event["n"] = n
    return event


def publish_one(job_id: str, event: NewEvent) -> Call:
    return Call("POST", job_path(job_id, "/events"), body=dumps(event))


def publish_batch(job_id: str, events: Iterable[NewEvent]) -> Call:
    batch = list(events)
    if not 1 <= len(batch) <= MAX_PUBLISH_BATCH:
        raise ValueError(f"publish 1 to {MAX_PUBLISH_BATCH} events at once, not {len(batch)}")
    return Call("POST", job_path(job_id, "/events"), body=dumps(batch))


def publish_raw(job_id: str, body: bytes) -> Call:
    """A publish whose JSON array body is already serialized (the reporter)."""
    return Call("POST", job_path(job_id, "/events"), body=body)


def headers(token: str, call: Call) -> Dict[str, str]:
    out = {"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT}
    if call.body is not None:
        out["Content-Type"] = "application/json"
    out.update(call.headers)
    return out


def decode(status: int, content: bytes, response_headers: Mapping[str, str]) -> Any:
    """The JSON of a successful answer, or the matching exception."""
    if status >= 400:
        raise error_from_response(status, content, response_headers)
    if status == 204 or not content:
        return None
    try:
        return json.loads(content)
    except ValueError as e:
        snippet = content[:120].decode("utf-8", "replace")
        raise ProtocolError(
            f"the server answered HTTP {status} with something that is not JSON: {snippet!r}",
            status=status,
        ) from e
