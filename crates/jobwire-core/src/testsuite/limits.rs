//! Conformance cases of fleet operations: fleet-wide queue limits (a
//! concurrency cap held across claimers, slots freed by ack, release and a
//! lapsed lease (a dead worker), take-overs counted, a sliding-window rate
//! limit), and the overview's scheduled and failed counts per queue.

use crate::backend::{QueueLimits, RateLimit};

use super::*;

fn capped(n: u32) -> QueueLimits {
    QueueLimits {
        concurrency: Some(n),
        rate: None,
    }
}

/// How many entries `consumer` gets now, asking for up to 10.
async fn grab(b: &dyn Backend, consumer: &str, lease: Duration) -> Result<Vec<Claim>> {
    Ok(
        b.claim_for(consumer, &demo_queues(), 10, Duration::ZERO, lease)
            .await?,
    )
}

/// Limits are stored per queue, shown in the overview, and cleared.
pub async fn queue_limits_are_kept_and_shown(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let limits = QueueLimits {
        concurrency: Some(2),
        rate: Some(RateLimit {
            max: 10,
            per: Duration::from_secs(60),
        }),
    };
    b.set_limits("scan", &limits).await?;
    ensure!(b.limits().await?.get("scan") == Some(&limits));
    let overview = b.queue_overview().await?;
    let scan = overview
        .iter()
        .find(|q| q.name == "scan")
        .context("scan listed")?;
    ensure!(scan.limits == limits, "{scan:?}");
    b.set_limits("scan", &QueueLimits::default()).await?;
    ensure!(b.limits().await?.is_empty());
    Ok(())
}

/// A cap of 2 holds across two claimers; an ack and a release each free
/// a slot; a renewed slot stays held; a slot whose lease lapsed (its
/// worker died) is free again, and taking over the dead worker's entry
/// takes a slot like any start.
pub async fn a_concurrency_cap_holds_across_claimers(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    b.set_limits("demo", &capped(2)).await?;
    for _ in 0..8 {
        demo_job(b).await?;
    }
    let long = Duration::from_secs(60);
    let first = grab(b, "w1", long).await?;
    ensure!(first.len() == 2, "claimed {} under a cap of 2", first.len());
    ensure!(
        grab(b, "w2", long).await?.is_empty(),
        "a second claimer passed the cap"
    );
    let held = b.held_back().get("demo").copied().unwrap_or(0);
    ensure!(held >= 1, "the rejection was not counted ({held})");

    b.ack(&first[0].entry).await?;
    let second = grab(b, "w2", long).await?;
    ensure!(second.len() == 1, "an ack freed {} slots", second.len());
    ensure!(b.release("w1", &first[1].entry).await?);
    let third = grab(b, "w2", long).await?;
    ensure!(third.len() == 1, "a release freed {} slots", third.len());
    ensure!(grab(b, "w3", long).await?.is_empty());
    b.ack(&second[0].entry).await?;
    b.ack(&third[0].entry).await?;

    // A short lease, renewed: held past its first end. Not renewed: lapsed.
    // The check comes 0.3 s after the first lease would have ended and 1.2 s
    // before the renewed one ends, so a loaded host cannot make it early.
    let short = Duration::from_secs(3);
    let held = grab(b, "w4", short).await?;
    ensure!(held.len() == 2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for claim in &held {
        ensure!(b.renew("w4", &claim.entry).await?);
    }
    tokio::time::sleep(Duration::from_millis(1800)).await;
    ensure!(
        grab(b, "w5", long).await?.is_empty(),
        "a renewed slot was lost"
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    // w4 "died": its slots lapsed. Taking over its entries is a start.
    let taken = b
        .take_over_idle("w6", &demo_queues(), Duration::from_millis(500), 10)
        .await?;
    ensure!(
        taken.len() == 2,
        "took over {} of the dead worker's 2",
        taken.len()
    );
    ensure!(
        grab(b, "w7", long).await?.is_empty(),
        "the take-overs took no slots"
    );
    for claim in &taken {
        b.ack(&claim.entry).await?;
    }
    ensure!(grab(b, "w7", long).await?.len() == 2);
    Ok(())
}

/// At most 3 starts in any 3 s: grants a claim does not use are given
/// back, and the window slides. (A window of 3 s, not 1, so that the
/// first claims all fall in it on a loaded host.)
pub async fn a_rate_limit_spaces_the_starts(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    b.set_limits(
        "demo",
        &QueueLimits {
            concurrency: None,
            rate: Some(RateLimit {
                max: 3,
                per: Duration::from_secs(3),
            }),
        },
    )
    .await?;
    let long = Duration::from_secs(60);
    demo_job(b).await?;
    ensure!(grab(b, "w1", long).await?.len() == 1);
    for _ in 0..6 {
        demo_job(b).await?;
    }
    let more = grab(b, "w1", long).await?;
    ensure!(
        more.len() == 2,
        "{} more within the window (3 in all)",
        more.len()
    );
    ensure!(
        grab(b, "w2", long).await?.is_empty(),
        "a fourth start within the window"
    );
    tokio::time::sleep(Duration::from_millis(3100)).await;
    ensure!(
        grab(b, "w2", long).await?.len() == 3,
        "the window did not slide"
    );
    Ok(())
}

/// The overview counts each queue's scheduled jobs (moved on and off the
/// schedule, deleted) and its failures of the last hour; the finished
/// counts leave out the current, partial minute.
pub async fn the_queue_overview_counts_scheduled_and_failed_jobs(
    f: &dyn BackendFactory,
) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let later = crate::Timestamp::now().plus(Duration::from_secs(3600));
    let mut scheduled = Vec::new();
    for _ in 0..3 {
        let new = NewJob::new("demo", json!({}), "alice")
            .in_queue("nightly")
            .not_before(later);
        scheduled.push(b.create_job(new).await?);
    }
    b.delete(&scheduled[0].id).await?;
    b.cancel(&scheduled[1].id).await?;
    let failing = b
        .create_job(NewJob::new("demo", json!({}), "alice").in_queue("mail"))
        .await?;
    b.publish(
        &failing.id,
        &[
            NewEvent::new(EventType::JobStarted, json!({})),
            NewEvent::new(EventType::JobFailed, json!({"error": "no"})),
        ],
    )
    .await?;
    let overview = b.queue_overview().await?;
    let queue = |name: &str| overview.iter().find(|q| q.name == name).cloned();
    let nightly = queue("nightly").context("nightly listed")?;
    ensure!(nightly.scheduled == 1, "{nightly:?}");
    let mail = queue("mail").context("mail listed")?;
    ensure!(
        mail.failed_1h == 1 && mail.finished_1m == 0 && mail.scheduled == 0,
        "{mail:?}"
    );
    Ok(())
}
