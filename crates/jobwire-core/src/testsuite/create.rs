//! Conformance cases of creating a job at most once (`Idempotency-Key`).

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
    let Created::New(first) = b.create_job_once(demo(), &once("k1", "a", day)).await? else {
        bail!("the first create under a key found a job");
    };
    match b.create_job_once(demo(), &once("k1", "a", day)).await? {
        Created::Existing { job, same_request } => {
            ensure!(job.id == first.id && same_request, "{job:?} {same_request}")
        }
        Created::New(job) => bail!("a second job {} under the same key", job.id),
    }
    match b.create_job_once(demo(), &once("k1", "b", day)).await? {
        Created::Existing { job, same_request } => {
            ensure!(
                job.id == first.id && !same_request,
                "another request passed as the same"
            )
        }
        Created::New(job) => bail!("another request under the key made job {}", job.id),
    }
    let Created::New(other) = b.create_job_once(demo(), &once("k2", "a", day)).await? else {
        bail!("another key found a job");
    };
    ensure!(other.id != first.id);
    b.delete(&first.id).await?;
    let Created::New(again) = b.create_job_once(demo(), &once("k1", "a", day)).await? else {
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
                b.create_job_once(demo(), &once("race", "a", Duration::from_secs(60)))
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
    let Created::New(first) = b.create_job_once(demo(), &once("k", "a", window)).await? else {
        bail!("the first create found a job");
    };
    tokio::time::sleep(window * 2).await;
    match b.create_job_once(demo(), &once("k", "a", window)).await? {
        Created::New(job) => ensure!(job.id != first.id),
        Created::Existing { .. } => bail!("the key outlived its window"),
    }
    Ok(())
}
