//! Conformance cases of creating a job at most once: `Idempotency-Key` and
//! unique keys.

use super::*;
use crate::backend::{Created, Idempotency};

fn once(key: &str, fingerprint: &str, window: Duration) -> Idempotency {
    Idempotency {
        key: format!("alice\n{key}"),
        fingerprint: fingerprint.to_owned(),
        window,
    }
}

fn demo() -> NewJob {
    NewJob::new("demo", json!({}), "alice")
}

/// The same key and request get the first job back; the same key with
/// another request is told so; another key makes another job; a key whose
/// job was deleted is free again.
pub async fn an_idempotency_key_makes_one_job(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let day = Duration::from_secs(86_400);
    let Created::New(first) = b
        .create_job_once(demo(), Some(&once("k1", "a", day)))
        .await?
    else {
        bail!("the first create under a key found a job");
    };
    match b
        .create_job_once(demo(), Some(&once("k1", "a", day)))
        .await?
    {
        Created::Existing { job, same_request } => {
            ensure!(job.id == first.id && same_request, "{job:?} {same_request}")
        }
        other => bail!("a second create under the same key: {other:?}"),
    }
    match b
        .create_job_once(demo(), Some(&once("k1", "b", day)))
        .await?
    {
        Created::Existing { job, same_request } => {
            ensure!(
                job.id == first.id && !same_request,
                "another request passed as the same"
            )
        }
        other => bail!("another request under the key: {other:?}"),
    }
    let Created::New(other) = b
        .create_job_once(demo(), Some(&once("k2", "a", day)))
        .await?
    else {
        bail!("another key found a job");
    };
    ensure!(other.id != first.id);
    b.delete(&first.id).await?;
    let Created::New(again) = b
        .create_job_once(demo(), Some(&once("k1", "a", day)))
        .await?
    else {
        bail!("a key whose job was deleted still named it");
    };
    ensure!(again.id != first.id);
    ensure!(
        b.queue_stats().await?.waiting == 3,
        "queued {:?}",
        b.queue_stats().await?
    );
    Ok(())
}

/// Twenty creates under one key at once make one job; the others get it.
pub async fn concurrent_creates_under_one_key_make_one_job(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = Arc::clone(&t.backend);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let b = Arc::clone(&b);
            tokio::spawn(async move {
                b.create_job_once(demo(), Some(&once("race", "a", Duration::from_secs(60))))
                    .await
            })
        })
        .collect();
    let mut new = Vec::new();
    let mut existing = HashSet::new();
    for task in tasks {
        match task.await?? {
            Created::New(job) => new.push(job.id),
            Created::Existing { job, same_request } => {
                ensure!(same_request);
                existing.insert(job.id);
            }
            Created::Unique(job) => bail!("no unique key was given: {job:?}"),
        }
    }
    ensure!(new.len() == 1, "{} jobs made under one key", new.len());
    ensure!(
        existing.iter().all(|id| *id == new[0]),
        "others got {existing:?}"
    );
    ensure!(b.queue_stats().await?.waiting == 1);
    Ok(())
}

/// A key counts for its window only.
pub async fn an_idempotency_key_expires_after_its_window(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let window = Duration::from_millis(200);
    let Created::New(first) = b
        .create_job_once(demo(), Some(&once("k", "a", window)))
        .await?
    else {
        bail!("the first create found a job");
    };
    tokio::time::sleep(window * 2).await;
    match b
        .create_job_once(demo(), Some(&once("k", "a", window)))
        .await?
    {
        Created::New(job) => ensure!(job.id != first.id),
        other => bail!("the key outlived its window: {other:?}"),
    }
    Ok(())
}

/// A unique key: while a job of the kind holding it is unfinished, another
/// create returns that job; once it has ended, the key is free again. The
/// same key in another kind is another key.
pub async fn a_unique_key_keeps_one_unfinished_job(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let unique = || demo().unique("report-7");
    let Created::New(first) = b.create_job_once(unique(), None).await? else {
        bail!("the first create under a unique key found a job");
    };
    match b.create_job_once(unique(), None).await? {
        Created::Unique(job) => ensure!(job.id == first.id, "{job:?}"),
        other => bail!("a second unfinished job under the unique key: {other:?}"),
    }
    let other_kind = NewJob::new("scan", json!({}), "alice").unique("report-7");
    ensure!(matches!(
        b.create_job_once(other_kind, None).await?,
        Created::New(_)
    ));
    b.publish(
        &first.id,
        &[NewEvent::new(EventType::JobStarted, json!({}))],
    )
    .await?;
    ensure!(matches!(
        b.create_job_once(unique(), None).await?,
        Created::Unique(_)
    ));
    b.publish(
        &first.id,
        &[NewEvent::new(EventType::JobCompleted, json!({}))],
    )
    .await?;
    let Created::New(second) = b.create_job_once(unique(), None).await? else {
        bail!("a finished job still held its unique key");
    };
    ensure!(second.id != first.id);
    // A deleted unfinished job frees its key too.
    b.delete(&second.id).await?;
    ensure!(matches!(
        b.create_job_once(unique(), None).await?,
        Created::New(_)
    ));
    // An idempotency key and a unique key together are refused.
    let both = b
        .create_job_once(unique(), Some(&once("k", "a", Duration::from_secs(60))))
        .await;
    ensure!(matches!(both, Err(BackendError::Invalid(_))), "{both:?}");
    Ok(())
}

/// Twenty concurrent creates under one unique key: one job.
pub async fn concurrent_creates_under_one_unique_key_make_one_job(
    f: &dyn BackendFactory,
) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = Arc::clone(&t.backend);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let b = Arc::clone(&b);
            tokio::spawn(async move { b.create_job_once(demo().unique("only"), None).await })
        })
        .collect();
    let mut new = Vec::new();
    let mut held = HashSet::new();
    for task in tasks {
        match task.await?? {
            Created::New(job) => new.push(job.id),
            Created::Unique(job) => {
                held.insert(job.id);
            }
            other => bail!("{other:?}"),
        }
    }
    ensure!(new.len() == 1, "{} jobs under one unique key", new.len());
    ensure!(held.iter().all(|id| *id == new[0]), "{held:?}");
    Ok(())
}
