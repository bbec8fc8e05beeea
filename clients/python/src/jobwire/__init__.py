"""jobwire: the Python client of jobwire.

jobwire runs background jobs and streams their progress live, resuming
exactly after any disconnect. This package gives Python programs:

* :class:`Client` / :class:`AsyncClient`: the REST API (create, get, list,
  cancel, delete, history, publish);
* reporters for *external* jobs, driven by your own code (a Celery task, a
  script): ``with client.external_job(kind, params) as job: job.progress(...)``,
  publishing each event exactly once, in order, through outages;
* watching: ``for item in client.watch(job_ids)`` (or ``async for``), with
  the exact-resume rules of jobwire's Rust and JavaScript clients.

See docs/python.md in the jobwire repository.
"""

from ._async_client import AsyncClient
from ._async_reporter import AsyncJobReporter
from ._async_watch import AsyncWatch
from ._auth import token_expiry
from ._client import Client
from ._errors import (
    BadRequest,
    BufferFull,
    Cancelled,
    ConfigError,
    Conflict,
    FenceConflict,
    Forbidden,
    JobwireError,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    PublishTimeout,
    RateLimited,
    ReporterClosed,
    ResyncRequired,
    ServerError,
    StaleAttempt,
    TokenError,
    Unauthorized,
    Unavailable,
    Unreachable,
    ValidationError,
)
from ._sync_reporter import JobReporter
from ._sync_watch import Watch
from ._types import (
    BatchPublishResult,
    CancelResult,
    Cursor,
    Event,
    EventsPage,
    Job,
    JobsPage,
    Message,
    NewEvent,
    PublishResult,
    Refused,
    Resumed,
    Resync,
    State,
    Status,
    WatchEvent,
    WatchItem,
)
from ._version import __version__

__all__ = [
    "AsyncClient",
    "AsyncJobReporter",
    "AsyncWatch",
    "BadRequest",
    "BatchPublishResult",
    "BufferFull",
    "CancelResult",
    "Cancelled",
    "Client",
    "ConfigError",
    "Conflict",
    "Cursor",
    "Event",
    "EventsPage",
    "FenceConflict",
    "Forbidden",
    "Job",
    "JobReporter",
    "JobsPage",
    "JobwireError",
    "Message",
    "NewEvent",
    "NotFound",
    "PayloadTooLarge",
    "ProtocolError",
    "PublishResult",
    "PublishTimeout",
    "RateLimited",
    "Refused",
    "ReporterClosed",
    "Resumed",
    "Resync",
    "ResyncRequired",
    "ServerError",
    "StaleAttempt",
    "State",
    "Status",
    "TokenError",
    "Unauthorized",
    "Unavailable",
    "Unreachable",
    "ValidationError",
    "Watch",
    "WatchEvent",
    "WatchItem",
    "__version__",
    "token_expiry",
]
