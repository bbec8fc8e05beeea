"""The sync client's REST calls and typed errors, against a real gateway."""

from __future__ import annotations

import datetime as dt
from typing import Iterator, List

import pytest

import jobwire
from harness import Redis, Server, free_port, token
from jobwire import _rest


def test_create_get_cancel_delete(client: jobwire.Client, user: str) -> None:
    job = client.create_job(
        "demo",
        {"steps": 3},
        delay="1h",
        timeout=dt.timedelta(seconds=90),
        priority=7,
        max_attempts=4,
        backoff={"base": 2, "max": "1m"},
    )
    assert job["kind"] == "demo"
    assert job["owner"] == user
    assert job["status"] == "scheduled"
    assert job["priority"] == 7
    assert job["timeout_ms"] == 90_000
    assert job["retry"]["max_attempts"] == 4
    assert "run_at" in job

    got = client.get_job(job["id"])
    assert got["id"] == job["id"]
    assert got["epoch"] == job["epoch"]

    result = client.cancel(job["id"])
    assert result["outcome"] == "cancelled"
    assert result["job"]["status"] == "cancelled"
    assert client.cancel(job["id"])["outcome"] == "already_finished"

    client.delete_job(job["id"])
    with pytest.raises(jobwire.NotFound) as e:
        client.get_job(job["id"])
    assert e.value.status == 404
    assert e.value.code == "not_found"
    assert job["id"] in e.value.message


def test_run_at_and_idempotency_key(client: jobwire.Client) -> None:
    at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2)
    first = client.create_job("demo", {"steps": 1}, run_at=at, idempotency_key="k-1")
    again = client.create_job("demo", {"steps": 1}, run_at=at, idempotency_key="k-1")
    assert again["id"] == first["id"]
    with pytest.raises(jobwire.Conflict) as e:
        client.create_job("demo", {"steps": 2}, run_at=at, idempotency_key="k-1")
    assert e.value.code == "conflict"
    assert e.value.status == 409


def test_unique_key_returns_the_existing_job(client: jobwire.Client) -> None:
    first = client.create_job("demo", {"steps": 1}, delay="1h", unique_key="only-one")
    second = client.create_job("demo", {"steps": 1}, delay="1h", unique_key="only-one")
    assert second["id"] == first["id"]
    assert second.get("existing") is True


def test_external_job_is_created_queued(client: jobwire.Client) -> None:
    job = client.create_external_job("py.thing", {"a": [1, 2]}, priority=3)
    assert job["external"] is True
    assert job["status"] == "queued"
    assert job["attempt"] == 1
    assert job["params"] == {"a": [1, 2]}
    assert job["priority"] == 3


def test_list_jobs_follows_the_cursor(client: jobwire.Client) -> None:
    ids = [client.create_external_job("py.list", {"i": i})["id"] for i in range(7)]
    listed = [j["id"] for j in client.list_jobs(page_size=3)]
    assert listed == list(reversed(ids))  # newest first, every page followed

    page = client.list_page(limit=3)
    assert len(page["jobs"]) == 3
    assert page["next_cursor"]
    rest = client.list_page(limit=10, cursor=page["next_cursor"])
    assert [j["id"] for j in page["jobs"] + rest["jobs"]] == list(reversed(ids))
    assert rest["next_cursor"] is None

    client.cancel(ids[0])
    assert [j["id"] for j in client.list_jobs(status="cancelled")] == [ids[0]]
    assert len(list(client.list_jobs(status="queued", page_size=2))) == 6

    # Filters: kind, queue (an external job's is its kind), finish time.
    other = client.create_external_job("py.other")["id"]
    assert [j["id"] for j in client.list_jobs(kind="py.other")] == [other]
    assert len(list(client.list_jobs(queue="py.list", page_size=2))) == 7
    hour_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    assert [j["id"] for j in client.list_jobs(finished_after=hour_ago)] == [ids[0]]
    assert client.list_page(kind="py.list", finished_after="2999-01-01T00:00:00Z")["jobs"] == []
    with pytest.raises(jobwire.ValidationError, match="finished_after"):
        client.list_page(finished_after="2026-13-45T00:00:00Z")


def test_publish_single_and_batch_with_fences(client: jobwire.Client) -> None:
    job = client.create_external_job("py.publish")
    first = client.publish(job["id"], "job_started", {"total_files": 2}, attempt=1, n=1)
    assert first == {"id": 2, "duplicate": False, "cancel_requested": False}
    again = client.publish(job["id"], "job_started", {"total_files": 2}, attempt=1, n=1)
    assert again["duplicate"] is True
    assert again["id"] is None

    batch = client.publish_batch(
        job["id"],
        [
            {"type": "file_completed", "data": {"file": "a"}, "attempt": 1, "n": 1},  # a repeat
            {"type": "file_completed", "data": {"file": "a"}, "attempt": 1, "n": 2},
            {"type": "my.custom", "data": {"x": 1}, "attempt": 1, "n": 3},
        ],
    )
    assert batch == {"ids": [3, 4], "duplicates": 1, "cancel_requested": False}

    with pytest.raises(jobwire.StaleAttempt) as e:
        client.publish(job["id"], "progress", {"current": 1, "total": 2}, attempt=2, n=4)
    assert e.value.code == "stale_attempt"
    assert e.value.details == {"attempt": 1}
    assert isinstance(e.value, jobwire.Conflict)

    unfenced = client.publish(job["id"], "job_completed", {"result": {"ok": True}})
    assert unfenced["id"] == 5
    done = client.get_job(job["id"])
    assert done["status"] == "completed"
    assert done["result"] == {"ok": True}
    assert done["processed_files"] == 1

    with pytest.raises(ValueError):
        client.publish(job["id"], "progress", attempt=1)  # n missing
    with pytest.raises(ValueError):
        client.publish_batch(job["id"], [])


def test_history_pages_through_the_log(client: jobwire.Client) -> None:
    job = client.create_external_job("py.history")
    events: List[jobwire.NewEvent] = [{"type": "job_started", "data": {}}]
    events += [{"type": "progress", "data": {"current": i, "total": 240}} for i in range(1, 241)]
    for i in range(0, len(events), 100):
        client.publish_batch(job["id"], events[i : i + 100])

    history = list(client.history(job["id"], page_size=50))
    assert [e["id"] for e in history] == list(range(1, 243))  # job_queued, then ours
    assert history[0]["type"] == "job_queued"
    assert history[1]["type"] == "job_started"
    assert history[-1]["data"]["current"] == 240
    assert all(e["job_id"] == job["id"] for e in history)

    after = list(client.history(job["id"], since=200, page_size=1000))
    assert [e["id"] for e in after] == list(range(201, 243))

    page = client.history_page(job["id"], since=240, limit=5)
    assert page["epoch"] == job["epoch"]
    assert [e["id"] for e in page["events"]] == [241, 242]

    with pytest.raises(jobwire.ResyncRequired) as e:
        client.history_page(job["id"], since=999)
    assert e.value.status == 410
    with pytest.raises(jobwire.ResyncRequired):
        list(client.history(job["id"], epoch="0123abcd"))


def test_typed_errors(server: Server, client: jobwire.Client, user: str) -> None:
    with pytest.raises(jobwire.ValidationError) as invalid:
        client.create_job("no-such-kind", {})
    assert (invalid.value.status, invalid.value.code) == (422, "invalid")
    assert isinstance(invalid.value, jobwire.BadRequest)

    with pytest.raises(jobwire.ValidationError):
        client.list_page(limit=0)

    with pytest.raises(jobwire.BadRequest) as bad:
        client._request(_rest.Call("GET", "/api/jobs", params={"limit": "many"}))
    assert (bad.value.status, bad.value.code) == (400, "bad_request")

    job = client.create_external_job("py.errors")
    with pytest.raises(jobwire.Conflict) as conflict:
        client.publish(job["id"], "progress", {"current": 1, "total": 2})  # not started
    assert conflict.value.code == "conflict"
    assert "queued" in conflict.value.message
    assert conflict.value.details == {"status": "queued"}

    reader = jobwire.Client(server.url, token=token(user, scopes=["jobs:read"]))
    with pytest.raises(jobwire.Forbidden) as forbidden:
        reader.create_job("demo", {})
    assert (forbidden.value.status, forbidden.value.code) == (403, "forbidden")
    reader.close()

    writer = jobwire.Client(server.url, token=token(user, scopes=["jobs:read", "jobs:write"]))
    with pytest.raises(jobwire.Forbidden):
        writer.create_external_job("py.x")  # needs the worker scope
    writer.close()

    with jobwire.Client(server.url, token="not.a.jwt") as bad_token:
        with pytest.raises(jobwire.Unauthorized) as unauthorized:
            bad_token.get_job(job["id"])
    assert (unauthorized.value.status, unauthorized.value.code) == (401, "unauthorized")

    other = jobwire.Client(server.url, token=token("someone-else"))
    with pytest.raises(jobwire.NotFound):
        other.get_job(job["id"])  # another user's job is hidden
    other.close()

    with jobwire.Client(f"http://127.0.0.1:{free_port()}", token="t") as nobody:
        with pytest.raises(jobwire.Unreachable) as unreachable:
            nobody.get_job("x")
    assert unreachable.value.status == 0
    assert unreachable.value.code == "unreachable"

    with pytest.raises(jobwire.NotFound) as no_route:
        client._request(_rest.Call("GET", "/api/nothing-here"))
    assert no_route.value.code == "no_route"


def test_rate_limited(redis: Redis, user: str) -> None:
    limited = Server(redis, env={"JOBWIRE_CREATE_RATE": "1"})  # bursts of 5
    try:
        with jobwire.Client(limited.url, token=token(user)) as c:
            with pytest.raises(jobwire.RateLimited) as e:
                for _ in range(50):
                    c.create_external_job("py.rate")
            assert (e.value.status, e.value.code) == (429, "rate_limited")
            assert e.value.retry_after is not None and e.value.retry_after > 0
    finally:
        limited.kill()


def test_unavailable_when_redis_is_down(private_redis: Redis, user: str) -> None:
    gateway = Server(private_redis)
    try:
        with jobwire.Client(gateway.url, token=token(user)) as c:
            job = c.create_external_job("py.down")
            private_redis.kill()
            with pytest.raises(jobwire.Unavailable) as e:
                c.get_job(job["id"])
            assert (e.value.status, e.value.code) == (503, "unavailable")
            assert isinstance(e.value, jobwire.ServerError)
            private_redis.start()
    finally:
        gateway.kill()


def test_token_provider_is_asked_again_on_401(server: Server, user: str) -> None:
    handed: List[str] = []
    tokens: Iterator[str] = iter(["not.a.jwt", token(user), token(user)])

    def provider() -> str:
        handed.append(next(tokens))
        return handed[-1]

    with jobwire.Client(server.url, token=provider) as c:
        job = c.create_external_job("py.refresh")  # 401 with the first, then a fresh one
        assert len(handed) == 2
        assert c.get_job(job["id"])["id"] == job["id"]
        assert len(handed) == 2  # a good token is kept


def test_a_provider_that_fails_raises_token_error(server: Server) -> None:
    def broken() -> str:
        raise RuntimeError("vault sealed")

    with jobwire.Client(server.url, token=broken) as c:
        with pytest.raises(jobwire.TokenError) as e:
            c.get_job("x")
    assert "vault sealed" in str(e.value)


def test_tokens_never_show(server: Server, tok: str) -> None:
    with jobwire.Client(server.url, token=tok) as c:
        assert tok not in repr(c)
        with pytest.raises(jobwire.NotFound) as e:
            c.get_job("01NOSUCHJOB")
        assert tok not in str(e.value) and tok not in repr(e.value)
    with jobwire.Client(f"http://127.0.0.1:{free_port()}", token=tok) as c:
        with pytest.raises(jobwire.Unreachable) as down:
            c.get_job("x")
        assert tok not in str(down.value)


def test_several_base_urls(server: Server, client: jobwire.Client, tok: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with jobwire.Client([dead, server.url], token=tok) as c:
        job = c.create_external_job("py.urls")
        assert c.get_job(job["id"])["id"] == job["id"]
        assert c._endpoints.current == 1  # the one that answered goes first now


def test_a_closed_client_says_so(server: Server, tok: str) -> None:
    c = jobwire.Client(server.url, token=tok)
    c.close()
    with pytest.raises(jobwire.JobwireError) as e:
        c.get_job("x")
    assert e.value.code == "closed"


def test_config_errors() -> None:
    with pytest.raises(jobwire.ConfigError):
        jobwire.Client("ftp://example.com", token="t")
    with pytest.raises(jobwire.ConfigError):
        jobwire.Client("http://127.0.0.1:1/?x=1", token="t")
    with pytest.raises(jobwire.ConfigError):
        jobwire.Client("http://127.0.0.1:1")
    with pytest.raises(jobwire.ConfigError):
        jobwire.Client([], token="t")
    with pytest.raises(jobwire.ConfigError):
        jobwire.Client("http://127.0.0.1:1", token="t", verify="/no/such/ca.pem")
    assert isinstance(jobwire.ConfigError("x"), ValueError)


def test_token_expiry_reads_exp(user: str) -> None:
    import time

    exp = jobwire.token_expiry(token(user, ttl="1h"))
    assert exp is not None and 3500 < exp - time.time() < 3700
    assert jobwire.token_expiry("nonsense") is None
