//! Conformance cases of the live feed.

use super::*;

/// One tail sees every event of every job, across partitions, each job's in order.
pub async fn live_tail_sees_every_event_in_order(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let mut tail = b.tail(TailFrom::Now).await?;
    let mut jobs = Vec::new();
    for _ in 0..20 {
        jobs.push(started(b, "alice").await?.id);
    }
    let partitions: HashSet<u16> = jobs.iter().map(|j| j.partition(4)).collect();
    ensure!(partitions.len() > 1, "test jobs all fell in one partition");
    for round in 1..=10 {
        for job in &jobs {
            b.publish(job, &[progress(round)]).await?;
        }
    }
    let expected = jobs.len() * 12;
    let mut seen: BTreeMap<JobId, Vec<u64>> = BTreeMap::new();
    let mut count = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while count < expected {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "tail saw {count} of {expected} events"
        );
        match tail.next().await? {
            LiveBatch::Events(events) => {
                for e in events {
                    count += 1;
                    seen.entry(e.job_id.clone()).or_default().push(e.id.0);
                }
            }
            LiveBatch::Gap => bail!("unexpected gap"),
            LiveBatch::Deleted(jobs) => bail!("unexpected deletions {jobs:?}"),
        }
    }
    for job in &jobs {
        let ids = seen
            .get(job)
            .ok_or_else(|| anyhow!("no events for {job}"))?;
        ensure!(
            *ids == (1..=12).collect::<Vec<_>>(),
            "job {job} seen as {ids:?}"
        );
    }
    // A second tail opened at the first one's position continues seamlessly.
    let position = tail.position();
    b.publish(&jobs[0], &[progress(99)]).await?;
    let mut resumed = b.tail(TailFrom::After(position)).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "resumed tail saw nothing"
        );
        if let LiveBatch::Events(events) = resumed.next().await? {
            if let Some(e) = events.first() {
                ensure!(
                    e.job_id == jobs[0] && e.id == EventId(13),
                    "resumed at {e:?}"
                );
                break;
            }
        }
    }
    Ok(())
}
