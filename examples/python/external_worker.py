#!/usr/bin/env python3
"""A worker in another language, publishing through jobwire's HTTP API.

A program that is not a jobwire worker (a Celery task, a cron script) can
still stream exact, resumable progress: it creates an *external* job and
publishes the job's events itself with POST /api/jobs/{id}/events, through
the same atomic path as jobwire's own workers. Browsers watching the job over
WebSocket or SSE see them live.

This script counts the lines of every file in a directory. It uses only the
Python standard library. Run it against `jobwire dev` or `jobwire serve`:

    export JOBWIRE_TOKEN=$(jobwire token --sub me --scope worker --scope jobs:read --scope jobs:write)
    python3 examples/python/external_worker.py --url http://127.0.0.1:8080 DIR

Exactly once: every event carries the attempt and a number n counting this
worker's events. When a request fails after the server may have applied it
(a timeout, a dropped connection), the script sends the same events with
the same numbers again, and the server applies each number once. Pass
--resend-every K to resend every K-th request on purpose and see the
duplicates skipped.

It prints one JSON line at the end: {"job_id": ..., "status": ...,
"duplicates": ...}.
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request


class Stopped(Exception):
    """The job was cancelled: stop working on it."""


class JobReporter:
    """Publishes one attempt's events, in order, each exactly once.

    The counterpart of the Rust worker's Reporter (and of the original
    CeleryTaskWithUpdates): file_processing / file_completed / file_error /
    progress, then one terminal event.
    """

    def __init__(self, url, token, job_id, attempt=1, resend_every=0):
        self.url = url.rstrip("/")
        self.token = token
        self.job_id = job_id
        self.attempt = attempt
        self.n = 0
        self.requests = 0
        self.resend_every = resend_every
        self.duplicates = 0
        self.cancel_requested = False

    def _post(self, path, body):
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Authorization": "Bearer " + self.token,
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def publish(self, events):
        """Sends events (type, data) in order; retries until they are stored."""
        batch = []
        for kind, data in events:
            self.n += 1
            batch.append({"type": kind, "data": data, "attempt": self.attempt, "n": self.n})
        delay = 0.1
        while True:
            try:
                reply = self._post("/api/jobs/%s/events" % self.job_id, batch)
                self.requests += 1
                if self.resend_every and self.requests % self.resend_every == 0:
                    # As if the reply had been lost: send the same events again.
                    again = self._post("/api/jobs/%s/events" % self.job_id, batch)
                    self.duplicates += again["duplicates"]
                break
            except urllib.error.HTTPError as e:
                if e.code == 409:
                    # A newer attempt owns the job: this one must stop.
                    raise Stopped("fenced: " + e.read().decode()) from e
                if e.code < 500:
                    raise RuntimeError("publish refused: %s %s" % (e.code, e.read().decode())) from e
            except (urllib.error.URLError, OSError):
                pass  # unreachable or timed out: retry with the same numbers
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        self.cancel_requested = reply["cancel_requested"]

    def report(self, kind, data):
        self.publish([(kind, data)])
        if self.cancel_requested and not kind.startswith("job_"):
            raise Stopped("cancelled")

    def file_processing(self, name):
        self.report("file_processing", {"file": name})

    def file_completed(self, name, **details):
        self.report("file_completed", dict(details, file=name))

    def file_error(self, name, message):
        self.report("error", {"file": name, "message": message})


def create_external_job(url, token, kind, params):
    request = urllib.request.Request(
        url.rstrip("/") + "/api/jobs",
        data=json.dumps({"kind": kind, "params": params, "external": True}).encode(),
        method="POST",
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def count_lines(directory, reporter):
    names = sorted(
        name for name in os.listdir(directory) if os.path.isfile(os.path.join(directory, name))
    )
    reporter.report("job_started", {"total_files": len(names)})
    total = 0
    try:
        for name in names:
            reporter.file_processing(name)
            try:
                with open(os.path.join(directory, name), "rb") as f:
                    lines = sum(1 for _ in f)
            except OSError as e:
                reporter.file_error(name, str(e))
                continue
            total += lines
            reporter.file_completed(name, lines=lines)
    except Stopped:
        reporter.report("job_cancelled", {"reason": "cancelled on request"})
        return "cancelled"
    except Exception as e:  # the job fails with the error's message
        reporter.report("job_failed", {"error": str(e)})
        return "failed"
    reporter.report("job_completed", {"result": {"files": len(names), "lines": total}})
    return "completed"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--url", default=os.environ.get("JOBWIRE_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--token", default=os.environ.get("JOBWIRE_TOKEN"))
    parser.add_argument("--kind", default="python.line_count")
    parser.add_argument("--resend-every", type=int, default=0)
    args = parser.parse_args()
    if not args.token:
        parser.error("a token with the worker scope is needed: --token or JOBWIRE_TOKEN")

    job = create_external_job(args.url, args.token, args.kind, {"path": args.directory})
    reporter = JobReporter(args.url, args.token, job["id"], job["attempt"], args.resend_every)
    status = count_lines(args.directory, reporter)
    print(json.dumps({"job_id": job["id"], "status": status, "duplicates": reporter.duplicates}))
    return 0 if status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
