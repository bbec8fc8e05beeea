"""Celery tasks that stream their progress through jobwire.

::

    from celery import Celery
    import jobwire.celery
    from jobwire.celery import JobwireTask

    app = Celery("proj", broker="redis://127.0.0.1:6379/1")
    app.conf.jobwire_url = "http://127.0.0.1:8080"     # or env JOBWIRE_URL
    app.conf.jobwire_token = worker_token               # a JWT or a callable; or env JOBWIRE_TOKEN

    @app.task(base=JobwireTask, bind=True)
    def resize(self, folder):
        paths = list_images(folder)
        self.jobwire.started(total_files=len(paths))
        for path in paths:
            self.jobwire.file_processing(path)
            resize_one(path)
            self.jobwire.file_completed(path)
        return {"resized": len(paths)}                  # the job's result

    result = resize.delay("inbox")                      # creates the jobwire job
    jobwire.celery.job_id(result)                       # its id, for the browser to watch

Each task message gets an *external* jobwire job, created when the task is
sent (or passed in with ``jobwire_job_id=``); its id travels in the
message's headers. Each run of the message owns an attempt of the job (see
``jobwire._takeover``): a Celery retry, a redelivery after a lost worker, a
``Reject(requeue=True)`` each start a new attempt, which fences the old
one. Success completes the job with the return value as its result; an
exception fails it; a jobwire cancel stops the task at its next report and
ends it as revoked; a Celery revoke cancels the job. docs/python.md, section
"Celery", has the whole mapping.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    Union,
)

from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery import Celery, Task, signals
from celery.app.task import Context
from celery.exceptions import Ignore, Reject, Retry
from celery.result import AsyncResult

from ._auth import TokenProvider
from ._client import Client
from ._errors import (
    Cancelled,
    ConfigError,
    Conflict,
    FenceConflict,
    JobwireError,
    StaleAttempt,
    ValidationError,
)
from ._reporter import CUSTOM_TYPE, RetryBackoff, classify, retry_wait
from ._sync_reporter import JobReporter
from ._takeover import TAKEOVER_N, JobFinished, claim, current_attempt, publish_answered
from ._tls import Verify
from ._types import Job, JSONObject

__all__ = [
    "HEADER_ATTEMPT",
    "HEADER_JOB",
    "JobFinished",
    "JobwireTask",
    "Reporter",
    "get_client",
    "job_id",
]

log = logging.getLogger("jobwire.celery")

#: The message header carrying the task's jobwire job id.
HEADER_JOB = "jobwire_job_id"
#: The message header carrying the attempt the message was sent for.
HEADER_ATTEMPT = "jobwire_attempt"

#: Default of ``jobwire_close_timeout``: how long a run waits at its end for
#: its events to be stored (and a claim for an answer) through an outage.
DEFAULT_CLOSE_TIMEOUT = 300.0
#: How long a run interrupted by the process going away (SystemExit,
#: KeyboardInterrupt) waits for its events before it lets go.
EXIT_TIMEOUT = 5.0
#: Task arguments larger than this (as JSON) are not copied into the job's
#: params; their repr (truncated) is.
MAX_PARAMS_BYTES = 8 * 1024

if TYPE_CHECKING:
    _TaskBase = Task[..., Any]
else:
    _TaskBase = Task


class Reporter(Protocol):
    """What ``self.jobwire`` offers a task: a :class:`jobwire.JobReporter`
    for the run's attempt (or, when the task function is called directly,
    not as a Celery task, one that checks nothing and sends nothing)."""

    @property
    def id(self) -> Optional[str]: ...
    @property
    def attempt(self) -> int: ...
    @property
    def cancel_requested(self) -> bool: ...
    def started(self, total_files: Optional[int] = None, message: Optional[str] = None) -> None: ...
    def file_processing(self, path: str, **data: Any) -> None: ...
    def file_completed(self, path: str, **data: Any) -> None: ...
    def error(self, message: str, *, file: Optional[str] = None, **data: Any) -> None: ...
    def file_error(self, path: str, message: str, **data: Any) -> None: ...
    def progress(
        self, current: float, total: float, message: Optional[str] = None, **data: Any
    ) -> None: ...
    def custom(self, type: str, data: Optional[JSONObject] = None) -> None: ...
    def completed(self, result: Any = None, message: Optional[str] = None) -> None: ...
    def failed(self, error: Any, **data: Any) -> None: ...
    def check(self) -> None: ...
    def flush(self, timeout: Optional[float] = None) -> None: ...


# Settings and clients.


def _setting(app: Celery, name: str) -> Any:
    return app.conf.get(name)


def _urls(app: Celery) -> Union[str, Sequence[str]]:
    value = _setting(app, "jobwire_url")
    if value is None:
        value = os.environ.get("JOBWIRE_URL")
    if not value:
        raise ConfigError(
            "jobwire.celery: no jobwire URL: set app.conf.jobwire_url (one URL or a list) "
            "or JOBWIRE_URL"
        )
    if isinstance(value, str):
        urls = [u.strip() for u in value.split(",") if u.strip()]
        return urls if len(urls) > 1 else urls[0]
    return list(value)


def _token(app: Celery) -> Union[str, TokenProvider]:
    value = _setting(app, "jobwire_token")
    if value is None:
        value = os.environ.get("JOBWIRE_TOKEN")
    if not value:
        raise ConfigError(
            "jobwire.celery: no token: set app.conf.jobwire_token (a JWT with the worker "
            "scope, or a callable returning one) or JOBWIRE_TOKEN"
        )
    if not (isinstance(value, str) or callable(value)):
        raise ConfigError("jobwire_token is a JWT string or a callable returning one")
    return value  # type: ignore[no-any-return]


def _verify(app: Celery) -> Verify:
    value = _setting(app, "jobwire_verify")
    if value is None:
        value = os.environ.get("JOBWIRE_CA_CERT") or True
    return value  # type: ignore[no-any-return]


def _close_timeout(app: Celery) -> Optional[float]:
    value = _setting(app, "jobwire_close_timeout")
    return DEFAULT_CLOSE_TIMEOUT if value is None else float(value)


_clients_lock = threading.Lock()
_clients: Dict[Tuple[int, int], Client] = {}


def get_client(app: Celery) -> Client:
    """The :class:`jobwire.Client` configured by ``app``'s settings
    (``jobwire_url``, ``jobwire_token``, ``jobwire_verify``; env
    ``JOBWIRE_URL``, ``JOBWIRE_TOKEN``, ``JOBWIRE_CA_CERT``): one per app and
    process (a forked pool child makes its own)."""
    key = (id(app), os.getpid())
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = Client(_urls(app), token=_token(app), verify=_verify(app))
            _clients[key] = client
        return client


def job_id(result: AsyncResult[Any]) -> Optional[str]:
    """The jobwire job id of a task sent by :meth:`JobwireTask.apply_async`
    (``delay``), or None."""
    value = getattr(result, "jobwire_job_id", None)
    return value if isinstance(value, str) else None


def kind_of(task_name: str) -> str:
    """The default job kind of a task: its name, lowercased, with characters
    that kinds cannot hold replaced by ``_`` (at most 64)."""
    kind = "".join(c if CUSTOM_TYPE.fullmatch(c) else "_" for c in task_name.lower())[:64]
    return kind or "celery"


def _job_of(request: Any) -> Tuple[Optional[str], Optional[int]]:
    """The job id and attempt a task message carries (its headers, which a
    worker's request has both in ``headers`` and as attributes)."""
    found: Dict[str, Any] = {}
    headers = request.get("headers") if isinstance(request, Mapping) else None
    if headers is None:
        headers = getattr(request, "headers", None)
    if isinstance(headers, Mapping):
        found.update((k, headers[k]) for k in (HEADER_JOB, HEADER_ATTEMPT) if k in headers)
    for key in (HEADER_JOB, HEADER_ATTEMPT):
        if key not in found:
            if isinstance(request, Mapping):
                value = request.get(key)
            else:
                value = getattr(request, key, None)
            if value is not None:
                found[key] = value
    job = found.get(HEADER_JOB)
    attempt = found.get(HEADER_ATTEMPT)
    if isinstance(attempt, str) and attempt.isdigit():
        attempt = int(attempt)  # headers that went through a broker as strings
    return (
        job if isinstance(job, str) and job else None,
        attempt if isinstance(attempt, int) and attempt >= 1 else None,
    )


def _idempotency_key(task_id: str) -> str:
    key = f"celery:{task_id}"
    if len(key) <= 200:
        return key
    return "celery-sha256:" + hashlib.sha256(task_id.encode()).hexdigest()


def _create_answered(client: Client, kind: str, params: JSONObject, key: str) -> Job:
    """Creates the external job, again after an unknown answer (the
    Idempotency-Key makes a repeat return the same job), for up to 10 s."""
    backoff = RetryBackoff()
    deadline = time.monotonic() + 10.0
    while True:
        try:
            return client.create_external_job(kind, params, idempotency_key=key)
        except JobwireError as e:
            if classify(e) != "retry" or time.monotonic() >= deadline:
                raise
            time.sleep(min(retry_wait(e, backoff), max(0.0, deadline - time.monotonic())))


# The reporters.


class _TaskReporter(JobReporter):
    """The reporter of one run: its attempt is started (``job_started`` is
    the run's claim), so :meth:`started` only adds what it was given."""

    def started(self, total_files: Optional[int] = None, message: Optional[str] = None) -> None:
        """Sets the job's ``total_files`` and ``message`` (the attempt was
        started when the task began, so this is a ``progress`` event)."""
        data: JSONObject = {}
        if total_files is not None:
            data["total_files"] = total_files
        if message is not None:
            data["message"] = message
        if data:
            self._report("progress", data)
        else:
            self.check()

    @property
    def ended(self) -> bool:
        """A terminal event was reported (or the job is known cancelled)."""
        with self._cond:
            return self._core.terminal is not None or self._core.job_cancelled

    def stopped_by(self, error: BaseException) -> bool:
        """Whether ``error`` is what stopped this reporter's sender."""
        with self._cond:
            return self._core.failure is error

    def mark_cancel_requested(self) -> None:
        with self._cond:
            self._core.cancel_requested = True

    def hand_over(self, data: JSONObject, timeout: Optional[float]) -> None:
        """Ends the attempt with ``job_retrying`` (fenced by this attempt) and
        waits until it is stored: the job is then on the next attempt."""
        with self._cond:
            core = self._core
            core.check("job_retrying")
            core.enqueue("job_retrying", core.encode("job_retrying", data))
            # Nothing more may be reported for this attempt.
            core.terminal = "job_retrying"
            self._cond.notify_all()
        self.close(timeout)


class _Unreported:
    """``self.jobwire`` of a task function called directly (no message, no
    job): takes every report and sends nothing."""

    id: Optional[str] = None
    attempt = 0
    cancel_requested = False

    def started(self, total_files: Optional[int] = None, message: Optional[str] = None) -> None:
        pass

    def file_processing(self, path: str, **data: Any) -> None:
        pass

    def file_completed(self, path: str, **data: Any) -> None:
        pass

    def error(self, message: str, *, file: Optional[str] = None, **data: Any) -> None:
        pass

    def file_error(self, path: str, message: str, **data: Any) -> None:
        pass

    def progress(
        self, current: float, total: float, message: Optional[str] = None, **data: Any
    ) -> None:
        pass

    def custom(self, type: str, data: Optional[JSONObject] = None) -> None:
        pass

    def completed(self, result: Any = None, message: Optional[str] = None) -> None:
        pass

    def failed(self, error: Any, **data: Any) -> None:
        pass

    def check(self) -> None:
        pass

    def flush(self, timeout: Optional[float] = None) -> None:
        pass


_UNREPORTED = _Unreported()
#: The attribute of a request (Celery's Context) holding its run.
_RUN_ATTR = "_jobwire_run"


# One run of a task message.


class _Run:
    """A task message's run: claims an attempt, reports, ends the job."""

    def __init__(self, task: JobwireTask, request: Context) -> None:
        self.task = task
        self.request = request
        self.client = get_client(task.app)
        self.close_timeout = _close_timeout(task.app)
        self.job_id: Optional[str] = None
        self.reporter: Optional[_TaskReporter] = None
        #: The attempt was handed to the next message (Celery retry, requeue).
        self.handed_over = False

    def begin(self) -> None:
        request = self.request
        job, attempt = _job_of(request)
        if job is None:
            # Sent without JobwireTask.apply_async (send_task by name, a
            # beat entry of a process without the task): the run makes it.
            task_id = str(request.id)
            created = _create_answered(
                self.client,
                self.task.jobwire_kind or kind_of(self.task.name),
                self.task._jobwire_params_for(request.args, request.kwargs, task_id),
                _idempotency_key(task_id),
            )
            job, attempt = created["id"], created["attempt"]
        self.job_id = job
        delivery = request.delivery_info or {}
        redelivered = bool(delivery.get("redelivered"))
        celery_info: JSONObject = {"celery_task_id": request.id, "celery_task": self.task.name}
        if request.hostname:
            celery_info["worker"] = request.hostname
        started: JSONObject = {**celery_info, "retries": request.retries}
        takeover: JSONObject = {
            **celery_info,
            "reason": "an earlier run of this Celery task message stopped without ending "
            "the job (its worker was lost); the message was delivered again",
            "redelivered": redelivered,
        }
        owned = claim(
            self.client,
            job,
            attempt or 1,
            started=started,
            takeover=takeover,
            timeout=self.close_timeout,
        )
        if owned.took_over:
            log.info(
                "job %s: took over from an earlier run of task %s; now attempt %d",
                job,
                request.id,
                owned.attempt,
            )
        self.reporter = _TaskReporter(
            self.client,
            job,
            owned.attempt,
            next_n=2,
            started=True,
            close_timeout=self.close_timeout,
        )
        if owned.cancel_requested:
            self.reporter.mark_cancel_requested()

    # Endings.

    def completed(self, result: Any) -> None:
        reporter = self.reporter
        assert reporter is not None
        try:
            if not self.handed_over and not reporter.ended:
                try:
                    reporter.completed(result)
                except (TypeError, ValueError, ValidationError) as e:
                    log.warning("job %s: the task's result is not stored: %s", reporter.id, e)
                    reporter.completed(None, message=f"the task's result was not stored: {e}")
            reporter.close()
        except (StaleAttempt, FenceConflict) as e:
            # A later run took the job over; it ends the job.
            log.warning("job %s: superseded by another run of the task: %s", reporter.id, e)

    def failed(self, error: BaseException) -> None:
        reporter = self.reporter
        assert reporter is not None
        if self.handed_over:
            self._close_quietly()
            return
        reporter.__exit__(type(error), error, error.__traceback__)

    def cancelled(self, error: Cancelled) -> None:
        reporter = self.reporter
        assert reporter is not None
        # Publishes job_cancelled (unless the job is cancelled already).
        reporter.__exit__(Cancelled, error, error.__traceback__)

    def ended_by(self, kind: str, data: JSONObject) -> None:
        """Ends the attempt with ``kind`` (unless something ended it)."""
        reporter = self.reporter
        assert reporter is not None
        try:
            if not self.handed_over and not reporter.ended:
                try:
                    if kind == "job_retrying":
                        reporter.hand_over(data, self.close_timeout)
                        self.handed_over = True
                        return
                    reporter.custom(kind, data)
                except Cancelled:
                    # The job's cancel was requested: it ends cancelled
                    # instead (a requeued message then finds it so).
                    reporter.cancelled()
            reporter.close()
        except JobwireError as e:
            log.warning("job %s: could not publish the end of the attempt: %s", reporter.id, e)
            self._close_quietly()

    def hand_over(self, data: JSONObject) -> int:
        """Ends the attempt with ``job_retrying``; returns the next attempt."""
        reporter = self.reporter
        assert reporter is not None
        reporter.hand_over(data, self.close_timeout)
        self.handed_over = True
        return reporter.attempt + 1

    def abandon(self) -> None:
        """The process is going away: store what was reported, briefly; the
        job stays running for a redelivery to take over."""
        reporter = self.reporter
        if reporter is None:
            return
        try:
            reporter.close(EXIT_TIMEOUT)
        except JobwireError as e:
            log.warning("job %s: events not stored before exit: %s", reporter.id, e)

    def _close_quietly(self) -> None:
        reporter = self.reporter
        if reporter is None:
            return
        try:
            reporter.close()
        except JobwireError as e:
            log.warning("job %s: %s", reporter.id, e)


def _current_run(request: Any) -> Optional[_Run]:
    run = getattr(request, _RUN_ATTR, None)
    return run if isinstance(run, _Run) else None


def _mark_revoked(task: JobwireTask, reason: str) -> None:
    """Records the task as REVOKED in the result backend (when there is
    one), as a Celery revoke would."""
    request = task.request
    if task.ignore_result or request.id is None:
        return
    try:
        task.backend.mark_as_revoked(request.id, reason, request=request)
    except Exception as e:  # a backend outage must not turn this into a failure
        log.warning("task %s: could not record REVOKED: %s", request.id, e)


def _exception_text(error: Optional[BaseException]) -> Optional[str]:
    if error is None:
        return None
    return str(error).strip() or type(error).__name__


class JobwireTask(_TaskBase):
    """A Celery task base class whose runs report through jobwire::

        @app.task(base=JobwireTask, bind=True)
        def count(self, folder):
            self.jobwire.file_processing(path)
            ...

    Sending the task (``delay``, ``apply_async``, a signature, a retry)
    creates an external jobwire job, unless one is given
    (``apply_async(..., jobwire_job_id=ID)``, or the ``jobwire_job_id``
    header). :func:`job_id` reads it back from the AsyncResult. In a worker,
    ``self.jobwire`` is the run's reporter (:class:`Reporter`)."""

    #: The kind of the jobs this task creates (default: from the task's name).
    jobwire_kind: Optional[str] = None

    @property
    def jobwire(self) -> Reporter:
        """The reporter of the current run."""
        run = _current_run(self.request)
        if run is None or run.reporter is None:
            return _UNREPORTED
        return run.reporter

    def jobwire_params(
        self, args: Optional[Sequence[Any]], kwargs: Optional[Mapping[str, Any]]
    ) -> JSONObject:
        """The params of the job a message creates: by default the task's
        name, and its arguments when they are JSON and small (their repr
        otherwise). Override to choose."""
        params: JSONObject = {"task": self.name}
        arguments = {"args": list(args or ()), "kwargs": dict(kwargs or {})}
        try:
            encoded = json.dumps(arguments)
        except (TypeError, ValueError):
            encoded = None
        if encoded is not None and len(encoded) <= MAX_PARAMS_BYTES:
            params.update(arguments)
        else:
            params["argsrepr"] = repr(tuple(args or ()))[:1024]
            params["kwargsrepr"] = repr(dict(kwargs or {}))[:1024]
        return params

    def _jobwire_params_for(
        self, args: Optional[Sequence[Any]], kwargs: Optional[Mapping[str, Any]], task_id: str
    ) -> JSONObject:
        return {**self.jobwire_params(args, kwargs), "celery_task_id": task_id}

    # Sending.

    def apply_async(
        self,
        args: Optional[Tuple[Any, ...]] = None,
        kwargs: Optional[Dict[str, Any]] = None,
        task_id: Optional[str] = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: Optional[str] = None,
        *,
        jobwire_job_id: Optional[str] = None,
        jobwire_attempt: Optional[int] = None,
        jobwire_token: Union[str, TokenProvider, None] = None,
        jobwire_params: Optional[Mapping[str, Any]] = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Sends the task, with its jobwire job.

        ``jobwire_job_id``/``jobwire_attempt``: an external job made by the
        caller (attempt: its ``attempt``, 1 for a new job). Otherwise one is
        created, with ``jobwire_params`` (default :meth:`jobwire_params`)
        and ``jobwire_token`` (default the app's token): the token's ``sub``
        owns the job, so pass the end user's token (with the ``worker``
        scope) for a job that user watches. The AsyncResult carries the id
        (:func:`job_id`)."""
        headers: Dict[str, Any] = dict(options.pop("headers", None) or {})
        job = jobwire_job_id or headers.get(HEADER_JOB)
        attempt = jobwire_attempt or headers.get(HEADER_ATTEMPT)
        created: Optional[Job] = None
        client: Optional[Client] = None
        if not job:
            task_id = task_id or _new_task_id()
            client = (
                get_client(self.app)
                if jobwire_token is None
                else Client(_urls(self.app), token=jobwire_token, verify=_verify(self.app))
            )
            params = (
                dict(jobwire_params)
                if jobwire_params is not None
                else self._jobwire_params_for(args, kwargs, task_id)
            )
            try:
                created = _create_answered(
                    client,
                    self.jobwire_kind or kind_of(self.name),
                    params,
                    _idempotency_key(task_id),
                )
            except BaseException:
                if jobwire_token is not None:
                    client.close()
                raise
            job, attempt = created["id"], created["attempt"]
        headers[HEADER_JOB] = job
        if attempt:
            headers[HEADER_ATTEMPT] = attempt
        try:
            result = super().apply_async(
                args,
                kwargs,
                task_id,
                producer,
                link,
                link_error,
                shadow,
                headers=headers,
                **options,
            )
        except BaseException as e:
            if created is not None and client is not None:
                # The job would wait forever for a message that was not sent.
                _fail_unsent(client, created, e)
            raise
        finally:
            if jobwire_token is not None and client is not None:
                client.close()
        setattr(result, "jobwire_job_id", job)  # noqa: B010 (AsyncResult declares no such field)
        return result

    # Running.

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly:
            # A plain function call: no message, no job.
            return super().__call__(*args, **kwargs)
        run = _Run(self, request)
        setattr(request, _RUN_ATTR, run)
        try:
            run.begin()
        except JobFinished as e:
            log.info("task %s: %s; not running it", request.id, e)
            if e.job_status == "cancelled":
                _mark_revoked(self, "the jobwire job was cancelled")
            raise Ignore(str(e)) from None
        reporter = run.reporter
        assert reporter is not None
        try:
            result = self.run(*args, **kwargs)
        except Retry as e:
            if not run.handed_over:
                # A Retry raised without self.retry(): end the attempt all the same.
                run.ended_by("job_retrying", self._retry_data(e.exc, e.when))
            raise
        except Cancelled as e:
            if not reporter.cancel_requested:
                run.failed(e)
                raise
            run.cancelled(e)
            _mark_revoked(self, "cancelled through jobwire")
            raise Ignore(f"job {run.job_id} was cancelled") from None
        except (StaleAttempt, FenceConflict) as e:
            if not reporter.stopped_by(e):
                run.failed(e)
                raise
            log.warning(
                "job %s: superseded by another run of task %s: %s", run.job_id, request.id, e
            )
            raise Ignore(str(e)) from None
        except Ignore as e:
            run.ended_by(
                "job_cancelled",
                {"reason": f"the task ignored its message (celery.exceptions.Ignore): {e}"},
            )
            raise
        except Reject as e:
            why = getattr(e, "reason", None)
            if getattr(e, "requeue", False):
                run.ended_by(
                    "job_retrying",
                    {"reason": f"the task rejected its message, requeued: {why}"},
                )
            else:
                text = _exception_text(why) if isinstance(why, BaseException) else None
                run.ended_by(
                    "job_failed", {"error": text or f"the task rejected its message: {why}"}
                )
            raise
        except Exception as e:
            run.failed(e)
            raise
        except BaseException:
            run.abandon()
            raise
        run.completed(result)
        return result

    def retry(
        self,
        args: Optional[Tuple[Any, ...]] = None,
        kwargs: Optional[Dict[str, Any]] = None,
        exc: Optional[Exception] = None,
        throw: bool = True,
        eta: Any = None,
        countdown: Optional[float] = None,
        max_retries: Optional[int] = None,
        **options: Any,
    ) -> Retry:
        """Celery's retry; the jobwire attempt ends with ``job_retrying``
        and the retried message runs the next attempt. When the retries are
        exhausted nothing is published here: the exception Celery raises
        then fails the job."""
        request = self.request
        run = _current_run(request)
        limit = self.max_retries if max_retries is None else max_retries
        exhausted = limit is not None and request.retries + 1 > limit
        if run is not None and run.reporter is not None and not run.handed_over and not exhausted:
            # Raises Cancelled when the job's cancel was requested (the task
            # then ends cancelled instead of retrying), StaleAttempt when
            # another run took the job over.
            when = eta if eta is not None else countdown
            next_attempt = run.hand_over(self._retry_data(exc, when, retries=request.retries + 1))
            headers = {
                **dict(request.headers or {}),
                **dict(options.pop("headers", None) or {}),
                HEADER_JOB: run.job_id,
                HEADER_ATTEMPT: next_attempt,
            }
            options["headers"] = headers
        return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)

    def _retry_data(
        self, exc: Optional[BaseException], when: Any, retries: Optional[int] = None
    ) -> JSONObject:
        text = _exception_text(exc)
        data: JSONObject = {
            "reason": "Celery retry" + (f": {text}" if text else ""),
            "celery_task_id": self.request.id,
        }
        if text:
            data["error"] = text
        if retries is not None:
            data["retries"] = retries
        if isinstance(when, (int, float)):
            data["countdown"] = when
        elif when is not None and hasattr(when, "isoformat"):
            data["eta"] = when.isoformat()
        return data


def _new_task_id() -> str:
    from celery.utils import uuid

    return str(uuid())


def _fail_unsent(client: Client, job: Job, error: BaseException) -> None:
    try:
        publish_answered(
            client,
            job["id"],
            "job_failed",
            {"error": f"the Celery task could not be sent: {_exception_text(error)}"},
            attempt=job["attempt"],
            n=1,
            timeout=10.0,
        )
    except JobwireError as e:
        log.warning("job %s: could not be marked failed: %s", job["id"], e)


# Signals of the worker's main process.


def _on_task_revoked(
    sender: Any = None,
    request: Any = None,
    terminated: bool = False,
    expired: bool = False,
    **_: Any,
) -> None:
    """A revoked task (before it ran, or terminated while running; also an
    expired one) cancels its job."""
    if not isinstance(sender, JobwireTask):
        return
    job, _attempt = _job_of(request)
    if job is None:
        return
    how = "expired" if expired else "terminated" if terminated else "revoked"
    try:
        publish_answered(
            get_client(sender.app),
            job,
            "job_cancelled",
            {"reason": f"the Celery task was {how}"},
            timeout=30.0,
        )
    except Conflict:
        pass  # the job had ended already
    except JobwireError as e:
        log.warning("job %s: could not be cancelled after the task was %s: %s", job, how, e)


#: In a worker's main process: the jobs of the task messages it received
#: lately (task id -> job id, attempt), for the failures Celery reports
#: there without the message's request (a hard time limit).
_received: OrderedDict[str, Tuple[Optional[str], Optional[int]]] = OrderedDict()
_received_lock = threading.Lock()
_RECEIVED_KEPT = 10_000


def _on_task_received(request: Any = None, **_: Any) -> None:
    if not isinstance(getattr(request, "task", None), JobwireTask):
        return
    task_id = getattr(request, "id", None)
    found = _job_of(getattr(request, "request_dict", None) or {})
    if task_id is None or found[0] is None:
        return
    with _received_lock:
        _received[task_id] = found
        _received.move_to_end(task_id)
        while len(_received) > _RECEIVED_KEPT:
            _received.popitem(last=False)


def _on_task_failure(
    sender: Any = None, task_id: Optional[str] = None, exception: Any = None, **_: Any
) -> None:
    """A run that died without ending its job (its pool process was lost,
    or killed at the hard time limit), when Celery does not run the message
    again: the job fails."""
    if not isinstance(sender, JobwireTask):
        return
    if isinstance(exception, WorkerLostError):
        text = _exception_text(exception) or "the task's pool process was lost"
    elif isinstance(exception, TimeLimitExceeded):
        limit = exception.args[0] if exception.args else "?"
        text = f"the task ran past its hard time limit ({limit}s)"
    else:
        return  # the run reported its own failure
    job, attempt = _job_of(sender.request)
    if job is None and task_id is not None:
        with _received_lock:
            job, attempt = _received.get(task_id, (None, None))
    if job is None:
        return
    client = get_client(sender.app)
    data = {"error": text}
    attempt = attempt or 1
    for _round in range(3):
        try:
            # Fenced past any n the lost run used: the job's attempt ends.
            publish_answered(
                client, job, "job_failed", data, attempt=attempt, n=TAKEOVER_N, timeout=30.0
            )
            return
        except StaleAttempt as e:
            moved = current_attempt(e)
            if moved is None:
                break
            attempt = moved
        except Conflict:
            return  # ended already
        except JobwireError as e:
            log.warning("job %s: could not be marked failed: %s", job, e)
            return


signals.task_received.connect(_on_task_received, weak=False)
signals.task_revoked.connect(_on_task_revoked, weak=False)
signals.task_failure.connect(_on_task_failure, weak=False)
