//! Behaviours only the Redis backend has: key expiry, the stored layout check,
//! several processes sharing jobs, and Redis going away under load.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use jobwire_core::{
    BackendConfig, BackendError, EventId, EventType, EventsAfter, JobQueue, JobStore, LiveBatch,
    LiveFeed, NewEvent, NewJob, TailFrom,
};
use jobwire_redis::{ConnectError, RedisBackend, RedisConfig, TlsFiles};
use jobwire_testkit::{Persistence, RedisServer};
use serde_json::json;

fn config(server: &RedisServer) -> RedisConfig {
    RedisConfig {
        command_timeout: Duration::from_secs(2),
        backend: BackendConfig {
            partitions: 4,
            ..BackendConfig::default()
        },
        ..RedisConfig::new(server.url())
    }
}

/// A job of alice's that has started.
async fn started_job(b: &RedisBackend) -> Result<jobwire_core::JobState> {
    let job = b
        .create_job(NewJob::new("demo", json!({}), "alice"))
        .await?;
    b.publish(&job.id, &[NewEvent::new(EventType::JobStarted, json!({}))])
        .await?;
    Ok(job)
}

async fn redis_cmd<T: redis::FromRedisValue>(server: &RedisServer, cmd: &redis::Cmd) -> Result<T> {
    let client = redis::Client::open(server.url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    Ok(cmd.query_async(&mut conn).await?)
}

fn progress(i: u64) -> NewEvent {
    NewEvent::new(EventType::Progress, json!({"current": i, "total": 1000}))
}

#[tokio::test]
async fn finished_jobs_get_a_ttl_on_state_and_log() -> Result<()> {
    let server = RedisServer::start_private(Persistence::None)?;
    let mut cfg = config(&server);
    cfg.backend.retention = Duration::from_secs(3600);
    let b = RedisBackend::connect(cfg).await?;
    let job = b
        .create_job(NewJob::new("demo", json!({}), "alice"))
        .await?;
    let tag = jobwire_redis::partition_tag(job.id.partition(4), 4);
    let state_key = format!("jobwire:{{{tag}}}:job:{}", job.id);
    let log_key = format!("jobwire:{{{tag}}}:events:{}", job.id);
    let ttl = |key: String| redis::cmd("PTTL").arg(key).clone();
    ensure!(
        redis_cmd::<i64>(&server, &ttl(state_key.clone())).await? == -1,
        "a queued job expires"
    );
    b.publish(&job.id, &[NewEvent::new(EventType::JobStarted, json!({}))])
        .await?;
    b.publish(
        &job.id,
        &[NewEvent::new(EventType::JobCompleted, json!({}))],
    )
    .await?;
    for key in [state_key, log_key] {
        let pttl: i64 = redis_cmd(&server, &ttl(key.clone())).await?;
        ensure!(
            pttl > 3_500_000 && pttl <= 3_600_000,
            "{key} has PTTL {pttl}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn health_reports_memory_and_the_live_feed() -> Result<()> {
    let server = RedisServer::start_private(Persistence::None)?;
    let b = RedisBackend::connect(config(&server)).await?;
    let empty = b.health().await?;
    ensure!(empty.used_memory_bytes.is_some_and(|m| m > 0), "{empty:?}");
    ensure!(empty.live_entries == 0, "{empty:?}");
    started_job(&b).await?;
    ensure!(
        b.health().await?.live_entries == 2,
        "one live entry per create and per publish"
    );
    Ok(())
}

#[tokio::test]
async fn a_different_partition_count_is_refused_at_start() -> Result<()> {
    let server = RedisServer::start_private(Persistence::None)?;
    RedisBackend::connect(config(&server)).await?;
    let mut other = config(&server);
    other.backend.partitions = 8;
    match RedisBackend::connect(other).await {
        Err(ConnectError::Layout(msg)) => ensure!(msg.contains("8 partitions"), "{msg}"),
        other => bail!("mismatched layout accepted: {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn bad_url_and_unreachable_redis_are_clear_errors() -> Result<()> {
    match RedisBackend::connect(RedisConfig::new("http://nope")).await {
        Err(ConnectError::Url { .. }) => {}
        other => bail!("bad URL accepted: {other:?}"),
    }
    let port = jobwire_testkit::free_port()?;
    match RedisBackend::connect(RedisConfig::new(format!("redis://127.0.0.1:{port}"))).await {
        Err(e @ ConnectError::Unreachable { .. }) => {
            ensure!(e.to_string().contains(&port.to_string()))
        }
        other => bail!("unreachable Redis accepted: {other:?}"),
    }
    Ok(())
}

/// Two processes publishing to the same jobs: each one's cached head goes
/// stale whenever the other publishes. Nothing may be lost, duplicated or
/// wrongly refused because of a stale cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_jobs_through_stale_caches() -> Result<()> {
    let server = RedisServer::start_private(Persistence::None)?;
    let a = RedisBackend::connect(config(&server)).await?;
    let b = RedisBackend::connect(config(&server)).await?;
    let job = a
        .create_job(NewJob::new("demo", json!({}), "alice"))
        .await?;
    // b learns the job while it is queued ...
    b.publish(&job.id, &[]).await?;
    // ... then a starts it: b's cached head says "queued", where progress
    // would be illegal. b must notice and succeed.
    a.publish(&job.id, &[NewEvent::new(EventType::JobStarted, json!({}))])
        .await?;
    b.publish(&job.id, &[progress(1)]).await?;
    let (ta, tb) = (a.clone(), b.clone());
    let id = job.id.clone();
    let id2 = job.id.clone();
    let wa = tokio::spawn(async move {
        for i in 0..300 {
            ta.publish(&id, &[progress(i)]).await?;
        }
        Ok::<_, BackendError>(())
    });
    let wb = tokio::spawn(async move {
        for i in 0..300 {
            tb.publish(&id2, &[progress(i), progress(i)]).await?;
        }
        Ok::<_, BackendError>(())
    });
    wa.await??;
    wb.await??;
    let events = match a.events_after(&job.id, EventId::ZERO, None, 10_000).await? {
        EventsAfter::Events(events) => events,
        other => bail!("{other:?}"),
    };
    ensure!(events.len() == 3 + 300 + 600, "{} events", events.len());
    for (i, e) in events.iter().enumerate() {
        ensure!(
            e.id == EventId(i as u64 + 1),
            "hole or reorder at {i}: {}",
            e.id
        );
    }
    ensure!(b.job(&job.id).await?.last_event_id == EventId(903));
    Ok(())
}

/// Redis restarts (AOF on) while a tail is open and a publisher keeps going:
/// the publisher sees retryable errors during the outage, then continues; the
/// tail reconnects by itself; the log and the tail both end up with every
/// event exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_loses_nothing_and_starts_a_new_history() -> Result<()> {
    let mut server = RedisServer::start_private(Persistence::Aof)?;
    let b = RedisBackend::connect(config(&server)).await?;
    let job = started_job(&b).await?;
    let mut tail = b.tail(TailFrom::Now).await?;

    let publish_until_ok = |i: u64| {
        let b = b.clone();
        let id = job.id.clone();
        async move {
            // An outage may fail a publish after Redis applied it, so the
            // retry is fenced: a repeated n is applied once.
            let event = progress(i).fenced(1, i);
            for _ in 0..200 {
                match b.publish(&id, std::slice::from_ref(&event)).await {
                    Ok(_) => return Ok(()),
                    Err(e) if e.is_retryable() => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Err(e) => return Err(anyhow::Error::from(e)),
                }
            }
            bail!("publish {i} never succeeded")
        }
    };
    for i in 1..=50 {
        publish_until_ok(i).await?;
    }
    server.kill()?;
    let failed = b.publish(&job.id, &[progress(0)]).await;
    ensure!(
        matches!(&failed, Err(e) if e.is_retryable()),
        "publish with Redis down: {failed:?}"
    );
    ensure!(tail.next().await.is_err(), "tail did not notice the outage");
    server.restart()?;
    for i in 51..=100 {
        publish_until_ok(i).await?;
    }

    // The restart gave Redis a new replication id. Nothing was lost (AOF,
    // fsync always), but jobwire cannot tell a clean restart from one that
    // lost writes: the tail reports a gap (its readers re-read the logs),
    // and the job went on under a new epoch, ids continuing.
    let mut gaps = 0;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut published = false;
    while !seen.contains(&103) {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "tail saw {seen:?}, {gaps} gaps"
        );
        match tail.next().await {
            Ok(LiveBatch::Events(events)) => seen.extend(events.into_iter().map(|e| e.id.0)),
            Ok(LiveBatch::Gap) => gaps += 1,
            Ok(LiveBatch::Deleted(jobs)) => bail!("unexpected deletions {jobs:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
        // After the gap, the tail reads on from the streams' ends.
        if gaps > 0 && !published {
            publish_until_ok(101).await?;
            published = true;
        }
    }
    ensure!(gaps == 1, "{gaps} gaps after one restart: {seen:?}");
    let after = b.job(&job.id).await?;
    ensure!(after.epoch != job.epoch, "the epoch survived a restart");
    let events = match b.events_after(&job.id, EventId::ZERO, None, 1000).await? {
        EventsAfter::Events(events) => events,
        other => bail!("{other:?}"),
    };
    let ids: Vec<u64> = events.iter().map(|e| e.id.0).collect();
    ensure!(ids == (1..=103).collect::<Vec<_>>(), "log ids {ids:?}");
    let order: Vec<u64> = events[2..]
        .iter()
        .map(|e| e.parse()?.data["current"].as_u64().context("current"))
        .collect::<Result<_>>()?;
    ensure!(
        order == (1..=101).collect::<Vec<_>>(),
        "payload order {order:?}"
    );
    Ok(())
}

/// A tail resumed after its partition stream was trimmed past its position
/// reports a gap instead of silently skipping.
#[tokio::test]
async fn a_trimmed_live_position_is_reported_as_a_gap() -> Result<()> {
    let server = RedisServer::start_private(Persistence::None)?;
    let mut cfg = config(&server);
    cfg.backend.live_maxlen = 10;
    cfg.backend.partitions = 1;
    let b = RedisBackend::connect(cfg).await?;
    let job = started_job(&b).await?;
    let position = b.tail(TailFrom::Now).await?.position();
    for chunk in 0..10 {
        b.publish(
            &job.id,
            &(0..50)
                .map(|i| progress(chunk * 50 + i))
                .collect::<Vec<_>>(),
        )
        .await?;
    }
    let mut resumed = b.tail(TailFrom::After(position)).await?;
    ensure!(
        resumed.next().await? == LiveBatch::Gap,
        "trimmed position not reported"
    );
    Ok(())
}

/// Every worker process joins the queue's group under a fresh name, so the
/// reaper deletes consumers that hold nothing and were not seen for 20
/// visibility timeouts (at least 5 s). One holding an entry stays, and so
/// does the caller.
#[tokio::test]
async fn the_reaper_prunes_consumers_of_departed_workers() -> Result<()> {
    let server = RedisServer::start_private(Persistence::None)?;
    let b = RedisBackend::connect(config(&server)).await?;
    let visibility = Duration::from_millis(100);
    for _ in 0..2 {
        b.create_job(NewJob::new("demo", json!({}), "alice"))
            .await?;
    }
    // "departed" took a job and finished it; "crashed" took one and died.
    let done = b
        .claim(
            "departed",
            &["demo".to_owned()],
            1,
            Duration::from_millis(100),
        )
        .await?;
    ensure!(done.len() == 1, "departed claimed {}", done.len());
    b.ack(&done[0].entry).await?;
    let held = b
        .claim(
            "crashed",
            &["demo".to_owned()],
            1,
            Duration::from_millis(100),
        )
        .await?;
    ensure!(held.len() == 1, "crashed claimed {}", held.len());

    // The consumers of every partition's queue group.
    let names = || async {
        let mut names = std::collections::BTreeSet::new();
        for p in 0..4 {
            let queue = format!(
                "jobwire:{{{}}}:queue:demo",
                jobwire_redis::partition_tag(p, 4)
            );
            // A partition's stream exists once a job was queued in it or a
            // claim read it.
            let Ok(reply) = redis_cmd::<Vec<std::collections::HashMap<String, redis::Value>>>(
                &server,
                redis::cmd("XINFO")
                    .arg("CONSUMERS")
                    .arg(queue)
                    .arg("workers"),
            )
            .await
            else {
                continue;
            };
            names.extend(reply.iter().filter_map(|c| match c.get("name") {
                Some(redis::Value::BulkString(n)) => Some(String::from_utf8_lossy(n).into_owned()),
                _ => None,
            }));
        }
        anyhow::Ok(names.into_iter().collect::<Vec<_>>())
    };
    // Seen recently: nothing is pruned yet.
    b.take_over_idle(
        "reaper",
        &["demo".to_owned()],
        Duration::from_secs(3600),
        10,
    )
    .await?;
    ensure!(
        names().await? == ["crashed", "departed"],
        "{:?}",
        names().await?
    );

    tokio::time::sleep(Duration::from_millis(5300)).await;
    b.take_over_idle(
        "reaper",
        &["demo".to_owned()],
        Duration::from_secs(3600),
        10,
    )
    .await?;
    ensure!(
        names().await? == ["crashed", "departed"],
        "pruned under an hour-long timeout: {:?}",
        names().await?
    );
    // With a 100 ms visibility timeout both are long overdue. "crashed"
    // still holds an entry: the reaper takes it over first, and then
    // "crashed" holds nothing either. The reaper itself is kept.
    let reclaimed = b
        .take_over_idle("reaper", &["demo".to_owned()], visibility, 10)
        .await?;
    ensure!(reclaimed.len() == 1, "reclaimed {}", reclaimed.len());
    ensure!(names().await? == ["reaper"], "left: {:?}", names().await?);
    Ok(())
}

/// `rediss://` with a private CA and a client certificate: jobs, events and
/// the live feed work over TLS; a missing client certificate, an untrusted
/// server and certificates on a plain URL are clear errors.
#[tokio::test]
async fn tls_with_a_private_ca_and_a_client_certificate() -> Result<()> {
    let server = RedisServer::start_tls()?;
    let url = server.tls_url().context("no TLS port")?;
    let certs = server.test_certs().context("no test certificates")?;
    let tls_config = |tls: TlsFiles| RedisConfig {
        url: url.clone(),
        tls,
        ..config(&server)
    };
    let full = TlsFiles {
        ca_cert: Some(certs.ca_cert.clone()),
        client_cert: Some(certs.client_cert.clone()),
        client_key: Some(certs.client_key.clone()),
    };

    let b = RedisBackend::connect(tls_config(full.clone())).await?;
    let mut tail = b.tail(TailFrom::Now).await?;
    let job = b
        .create_job(NewJob::new("demo", json!({}), "alice"))
        .await?;
    b.publish(
        &job.id,
        &[NewEvent::new(EventType::JobStarted, json!({})), progress(1)],
    )
    .await?;
    match b.events_after(&job.id, EventId(0), None, 10).await? {
        EventsAfter::Events(events) => ensure!(events.len() == 3, "{events:?}"),
        other => bail!("{other:?}"),
    }
    // The live feed, read over TLS on its own connection, carries them too.
    let mut live = Vec::new();
    while !live
        .iter()
        .any(|e: &jobwire_core::EventRecord| e.id == EventId(3))
    {
        match tokio::time::timeout(Duration::from_secs(5), tail.next()).await?? {
            LiveBatch::Events(events) => live.extend(events),
            LiveBatch::Gap => bail!("gap on a fresh tail"),
            LiveBatch::Deleted(jobs) => bail!("unexpected deletions {jobs:?}"),
        }
    }

    let without_client_cert = TlsFiles {
        client_cert: None,
        client_key: None,
        ..full.clone()
    };
    match RedisBackend::connect(tls_config(without_client_cert)).await {
        Err(ConnectError::Unreachable { .. }) => {}
        other => bail!("a client without a certificate was let in: {other:?}"),
    }
    let untrusted = TlsFiles {
        ca_cert: None,
        ..full.clone()
    };
    match RedisBackend::connect(tls_config(untrusted)).await {
        Err(e @ ConnectError::Unreachable { .. }) => {
            ensure!(e.to_string().to_lowercase().contains("certificate"), "{e}")
        }
        other => bail!("a server signed by an unknown CA was trusted: {other:?}"),
    }
    match RedisBackend::connect(RedisConfig {
        tls: full,
        ..config(&server)
    })
    .await
    {
        Err(ConnectError::Tls(message)) => ensure!(message.contains("rediss://"), "{message}"),
        other => bail!("certificates on a redis:// URL were accepted: {other:?}"),
    }
    Ok(())
}

/// Publishes `progress(i)` fenced with `(1, i)`, retrying while Redis is
/// unreachable (a retried `n` is applied once).
async fn publish_fenced(b: &RedisBackend, job: &jobwire_core::JobId, i: u64) -> Result<EventId> {
    for _ in 0..200 {
        match b.publish(job, &[progress(i).fenced(1, i)]).await {
            Ok(outcome) => return Ok(outcome.last_event_id),
            Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("publish {i} never went through")
}

/// Redis loses acknowledged writes (events 13..=22 of a job) and comes back
/// under a new replication id. The worker that had published them goes on
/// from where Redis is (id 13 again) — under a new epoch, so no
/// `(epoch, id)` is ever written twice; readers holding the old epoch get a
/// resync, and a second publisher does not start yet another history.
#[tokio::test]
async fn lost_writes_start_a_new_history_never_reuse_an_id() -> Result<()> {
    let mut server = RedisServer::start_private(Persistence::Aof)?;
    let b = RedisBackend::connect(config(&server)).await?;
    let job = started_job(&b).await?;
    for i in 1..=10 {
        publish_fenced(&b, &job.id, i).await?;
    }
    let snapshot = jobwire_testkit::lost_writes::Snapshot::take(&server).await?;
    for i in 11..=20 {
        publish_fenced(&b, &job.id, i).await?;
    }
    let old = b.job(&job.id).await?;
    ensure!(old.last_event_id == EventId(22) && old.epoch == job.epoch);

    snapshot.lose_writes_since(&mut server).await?;

    // Nothing written yet: a reader at 22 of the old epoch is ahead.
    match b
        .events_after(&job.id, EventId(22), Some(&old.epoch), 10)
        .await
    {
        Ok(EventsAfter::Resync(jobwire_core::ResyncReason::Ahead { last })) => {
            ensure!(last == EventId(12), "{last}")
        }
        Err(e) if e.is_retryable() => {}
        other => bail!("a reader ahead of the rolled-back log: {other:?}"),
    }
    // The worker goes on (its next event, n = 21), from event 12.
    let id = publish_fenced(&b, &job.id, 21).await?;
    ensure!(id == EventId(13), "published as {id}");
    let now = b.job(&job.id).await?;
    ensure!(
        now.epoch != old.epoch,
        "event 13 written again under the same epoch"
    );
    for since in [EventId(12), EventId(22)] {
        match b.events_after(&job.id, since, Some(&old.epoch), 10).await? {
            EventsAfter::Resync(jobwire_core::ResyncReason::EpochChanged { current }) => {
                ensure!(current == now.epoch)
            }
            other => bail!("a reader of the old epoch at {since}: {other:?}"),
        }
    }
    let EventsAfter::Events(events) = b
        .events_after(&job.id, EventId(12), Some(&now.epoch), 10)
        .await?
    else {
        bail!("the new epoch cannot be read");
    };
    ensure!(events.len() == 1 && events[0].epoch == now.epoch);
    ensure!(events[0].parse()?.data["current"] == 21);

    // Another process (no cached head) publishes next: same new history.
    let other = RedisBackend::connect(config(&server)).await?;
    let id = publish_fenced(&other, &job.id, 22).await?;
    ensure!(id == EventId(14));
    ensure!(
        other.job(&job.id).await?.epoch == now.epoch,
        "a second new epoch"
    );
    Ok(())
}

/// A job whose creation itself was lost is gone: publishing to it says so.
#[tokio::test]
async fn a_job_lost_with_its_creation_is_not_found() -> Result<()> {
    let mut server = RedisServer::start_private(Persistence::Aof)?;
    let b = RedisBackend::connect(config(&server)).await?;
    let snapshot = jobwire_testkit::lost_writes::Snapshot::take(&server).await?;
    let job = b
        .create_job(NewJob::new("demo", json!({}), "alice"))
        .await?;
    snapshot.lose_writes_since(&mut server).await?;
    let mut outcome = b.publish(&job.id, &[progress(1)]).await;
    for _ in 0..100 {
        match &outcome {
            Err(e) if e.is_retryable() => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                outcome = b.publish(&job.id, &[progress(1)]).await;
            }
            _ => break,
        }
    }
    ensure!(
        matches!(outcome, Err(BackendError::NotFound(_))),
        "{outcome:?}"
    );
    Ok(())
}

/// A deletion reaches every tail, in its partition's feed order: the
/// events published before it first, then the deleted job, then what
/// follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_reaches_the_live_tail_in_order() -> Result<()> {
    let server = RedisServer::start()?;
    let b = RedisBackend::connect(config(&server)).await?;
    let mut tail = b.tail(TailFrom::Now).await?;
    // Both in partition 0 (of 4): one live stream, one order.
    let in_p0 = || NewJob {
        id: jobwire_core::JobId::generate_in(0, 4),
        ..NewJob::new("demo", json!({}), "alice")
    };
    let doomed = b.create_job(in_p0()).await?;
    let other = b.create_job(in_p0()).await?;
    b.delete(&doomed.id).await?;
    b.publish(
        &other.id,
        &[NewEvent::new(EventType::JobStarted, json!({}))],
    )
    .await?;
    let (d, o) = (doomed.id.to_string(), other.id.to_string());
    let mut seen: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < 4 {
        ensure!(tokio::time::Instant::now() < deadline, "tail saw {seen:?}");
        match tail.next().await? {
            LiveBatch::Events(events) => {
                seen.extend(events.iter().map(|e| format!("{}:{}", e.job_id, e.id)));
            }
            LiveBatch::Deleted(jobs) => seen.extend(jobs.iter().map(|j| format!("deleted {j}"))),
            LiveBatch::Gap => bail!("unexpected gap"),
        }
    }
    ensure!(
        seen == [
            format!("{d}:1"),
            format!("{o}:1"),
            format!("deleted {d}"),
            format!("{o}:2")
        ],
        "{seen:?}"
    );
    Ok(())
}

/// Scheduled jobs whose last write was before a Redis restart are promoted
/// under a new epoch (Redis cannot tell a clean restart from one that lost
/// writes), each once, and reach the queue; the batch promotion hands them
/// to the one-by-one publish, which starts the new history.
#[tokio::test]
async fn promotions_after_a_restart_start_a_new_history() -> Result<()> {
    use jobwire_core::settle::promote_due;
    use jobwire_core::{JobStatus, Timestamp};

    let mut server = RedisServer::start_private(Persistence::Aof)?;
    let b = RedisBackend::connect(config(&server)).await?;
    let at = Timestamp::now().plus(Duration::from_secs(3600));
    let mut jobs = Vec::new();
    for _ in 0..12 {
        let new = NewJob::new("demo", json!({}), "alice").not_before(at);
        jobs.push(b.create_job(new).await?);
    }
    server.kill()?;
    server.restart()?;
    let later = at.plus(Duration::from_secs(1));
    let mut promoted = 0;
    for _ in 0..100 {
        match promote_due(&b, &b, later, 100).await {
            Ok(n) => promoted += n,
            Err(e) if e.is_retryable() => {}
            Err(e) => return Err(e.into()),
        }
        if promoted == jobs.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(promoted == jobs.len(), "{promoted} promotions of 12 jobs");
    for job in &jobs {
        let now = b.job(&job.id).await?;
        ensure!(now.status == JobStatus::Queued, "{now:?}");
        ensure!(now.epoch != job.epoch, "promoted under the old epoch");
        let EventsAfter::Events(events) = b.events_after(&job.id, EventId::ZERO, None, 10).await?
        else {
            bail!("job {} cannot be read", job.id);
        };
        let ids: Vec<u64> = events.iter().map(|e| e.id.0).collect();
        ensure!(ids == [1, 2], "job {}: {ids:?}", job.id);
    }
    let claims = b
        .claim("w", &["demo".to_owned()], 100, Duration::from_millis(200))
        .await?;
    ensure!(claims.len() == jobs.len(), "{} claims", claims.len());
    Ok(())
}

/// A partition with more due jobs than one promotion script call takes
/// (200) is promoted in several calls, each job once.
#[tokio::test]
async fn a_large_due_batch_is_promoted_in_chunks_each_job_once() -> Result<()> {
    use jobwire_core::settle::promote_due;
    use jobwire_core::{JobStatus, Timestamp};

    let server = RedisServer::start_private(Persistence::None)?;
    let b = RedisBackend::connect(config(&server)).await?;
    let at = Timestamp::now().plus(Duration::from_secs(3600));
    let mut jobs = Vec::new();
    for _ in 0..1200 {
        let new = NewJob::new("demo", json!({}), "alice").not_before(at);
        jobs.push(b.create_job(new).await?.id);
    }
    let later = at.plus(Duration::from_secs(1));
    // 4 partitions of about 300 due jobs each, all in one round.
    ensure!(promote_due(&b, &b, later, 2000).await? == 1200);
    ensure!(promote_due(&b, &b, later, 2000).await? == 0);
    for job in &jobs {
        ensure!(b.job(job).await?.status == JobStatus::Queued);
        let EventsAfter::Events(events) = b.events_after(job, EventId::ZERO, None, 10).await?
        else {
            bail!("job {job} cannot be read");
        };
        ensure!(events.len() == 2, "job {job} has {} events", events.len());
    }
    ensure!(b.queue_stats().await?.scheduled == 0);
    Ok(())
}

/// A Redis that wants a user and password, with jobwire's data in database
/// 3: every connection signs in and selects it, the live tail's own one
/// included (it reads what a publish wrote, over an ACL user).
#[tokio::test]
async fn an_acl_user_and_a_database_number_reach_every_connection() -> Result<()> {
    let server = RedisServer::start_private(Persistence::None)?;
    let setuser = redis::cmd("ACL")
        .arg(&["SETUSER", "tail", "on", ">s3cret pass", "~*", "&*", "+@all"])
        .clone();
    redis_cmd::<()>(&server, &setuser).await?;
    let url = format!("redis://tail:s3cret%20pass@127.0.0.1:{}/3", server.port());
    let b = RedisBackend::connect(RedisConfig {
        url: url.clone(),
        ..config(&server)
    })
    .await?;
    // The default user may no longer do anything: only `tail` gets in.
    redis_cmd::<()>(
        &server,
        redis::cmd("ACL").arg(&["SETUSER", "default", "off"]),
    )
    .await?;
    let mut tail = b.tail(TailFrom::Now).await?;
    let job = started_job(&b).await?;
    // (A read that times out answers no events: the deadline is overall.)
    let live = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tail.next().await? {
                LiveBatch::Events(events) if !events.is_empty() => return Ok(events),
                LiveBatch::Events(_) => {}
                other => bail!("{other:?}"),
            }
        }
    })
    .await
    .context("the tail read nothing")??;
    ensure!(live[0].job_id == job.id, "{live:?}");
    // Written to database 3, as the URL says.
    let client = redis::Client::open(url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("jobwire:*")
        .query_async(&mut conn)
        .await?;
    ensure!(!keys.is_empty(), "nothing in database 3");

    let wrong = format!("redis://tail:nope@127.0.0.1:{}/3", server.port());
    match RedisBackend::connect(RedisConfig {
        url: wrong,
        ..config(&server)
    })
    .await
    {
        Err(_) => {}
        Ok(b) => match b.tail(TailFrom::Now).await {
            Err(_) => {}
            Ok(mut tail) => ensure!(tail.next().await.is_err(), "a wrong password read the feed"),
        },
    }
    Ok(())
}

/// The promoter asks each partition by script hash (`EVALSHA`), not with
/// the script's text every round; a server that lost its scripts (`SCRIPT
/// FLUSH`, as after a restart) is given it again and promotion goes on.
#[tokio::test]
async fn due_jobs_are_found_by_script_hash_and_after_a_script_flush() -> Result<()> {
    use jobwire_core::settle::promote_due;
    use jobwire_core::Timestamp;

    let server = RedisServer::start_private(Persistence::None)?;
    let b = RedisBackend::connect(config(&server)).await?;
    let stats = || async {
        let info: String = redis_cmd(&server, redis::cmd("INFO").arg("commandstats")).await?;
        let calls = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
                .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok::<_, anyhow::Error>((calls("eval"), calls("evalsha")))
    };
    let at = Timestamp::now().plus(Duration::from_secs(3600));
    let later = at.plus(Duration::from_secs(1));
    let new = || NewJob::new("demo", json!({}), "alice").not_before(at);
    b.create_job(new()).await?;
    ensure!(promote_due(&b, &b, later, 100).await? == 1);
    let (eval_before, by_hash_before) = stats().await?;
    for _ in 0..5 {
        promote_due(&b, &b, later, 100).await?;
    }
    let (eval, by_hash) = stats().await?;
    ensure!(
        eval == eval_before,
        "EVAL ran {} more times",
        eval - eval_before
    );
    // One master: each round is one call for every partition.
    ensure!(
        by_hash == by_hash_before + 5,
        "EVALSHA ran {} times in 5 rounds",
        by_hash - by_hash_before
    );

    redis_cmd::<()>(&server, redis::cmd("SCRIPT").arg("FLUSH")).await?;
    b.create_job(new()).await?;
    ensure!(
        promote_due(&b, &b, later, 100).await? == 1,
        "not promoted after SCRIPT FLUSH"
    );
    Ok(())
}
