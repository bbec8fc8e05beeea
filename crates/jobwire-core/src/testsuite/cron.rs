//! Conformance cases of cron schedules: storage (compare-and-set), and each
//! tick firing exactly once however many processes race, through a lost
//! advance, and after an outage.

use crate::schedule::{fire_due, Fired, Missed, Schedule, ScheduleTick};
use crate::Timestamp;

use super::*;

/// A schedule of `demo` jobs every second, whose next tick is `next`.
fn every_second(name: &str, next: Timestamp) -> Schedule {
    Schedule {
        name: name.to_owned(),
        cron: "* * * * * *".to_owned(),
        tz: None,
        kind: "demo".to_owned(),
        params: json!({"steps": 1}),
        queue: None,
        priority: 7,
        missed: Missed::Once,
        owner: "ops".to_owned(),
        paused: false,
        next_fire: next,
        last_fire: None,
        last_job: None,
        created_at: next,
    }
}

async fn stored(b: &dyn Backend, name: &str) -> Result<Schedule> {
    b.schedules()
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .with_context(|| format!("schedule {name} is gone"))
}

async fn jobs_of(b: &dyn Backend, owner: &str) -> Result<Vec<JobState>> {
    let page = b
        .list_jobs(&ListQuery {
            owner: Some(owner.to_owned()),
            limit: 1000,
            ..Default::default()
        })
        .await?;
    Ok(page.jobs)
}

/// Schedules are stored whole; a compare-and-set writes only over the
/// record it names; delete says whether there was one.
pub async fn schedules_are_stored_and_compared_whole(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    ensure!(b.schedules().await?.is_empty());
    let first = every_second("nightly", Timestamp::now());
    ensure!(b.put_schedule(&first, None).await?);
    ensure!(stored(b, "nightly").await? == first);

    let mut paused = first.clone();
    paused.paused = true;
    ensure!(
        b.put_schedule(&paused, Some(&first)).await?,
        "the CAS on the stored record"
    );
    let mut other = first.clone();
    other.priority = 1;
    ensure!(
        !b.put_schedule(&other, Some(&first)).await?,
        "a CAS on a record that changed must not write"
    );
    ensure!(stored(b, "nightly").await? == paused);

    let second = every_second("hourly", Timestamp::now());
    b.put_schedule(&second, None).await?;
    let names: Vec<String> = b.schedules().await?.into_iter().map(|s| s.name).collect();
    ensure!(names == ["hourly", "nightly"], "{names:?}");
    ensure!(b.delete_schedule("nightly").await?);
    ensure!(!b.delete_schedule("nightly").await?);
    ensure!(b.schedules().await?.len() == 1);
    Ok(())
}

/// Eight processes fire the same due tick at once: one job, made for that
/// tick, and the schedule moves on past now.
pub async fn a_cron_tick_fires_once_across_racing_processes(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let tick = Timestamp::now();
    b.put_schedule(&every_second("race", tick), None).await?;
    let now = tick.plus(Duration::from_millis(5));
    let rounds = futures_util::future::join_all((0..8).map(|_| fire_due(b, b, now))).await;
    let created: usize = rounds
        .into_iter()
        .map(|r| r.map(|f| f.created))
        .sum::<std::result::Result<usize, _>>()?;
    let jobs = jobs_of(b, "ops").await?;
    ensure!(
        jobs.len() == 1 && created == 1,
        "{} jobs, {created} reported created",
        jobs.len()
    );
    let job = &jobs[0];
    ensure!(
        job.schedule
            == Some(ScheduleTick {
                name: "race".into(),
                tick
            }),
        "{:?}",
        job.schedule
    );
    ensure!(job.kind == "demo" && job.priority == 7 && job.params == json!({"steps": 1}));
    let first = all_events(b, &job.id).await?;
    ensure!(
        first[0].data["schedule"] == json!({"name": "race", "tick": tick.to_string()}),
        "{:?}",
        first[0].data
    );
    let moved = stored(b, "race").await?;
    ensure!(
        moved.next_fire > now
            && moved.last_fire == Some(tick)
            && moved.last_job == Some(job.id.clone()),
        "{moved:?}"
    );
    // Nothing more is due until the next tick.
    ensure!(fire_due(b, b, now).await? == Fired::default());
    ensure!(jobs_of(b, "ops").await?.len() == 1);
    Ok(())
}

/// A process that made the tick's job and died before moving the schedule
/// on: the next one to look gets the same job back, and moves it on.
pub async fn a_lost_advance_makes_no_second_job(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let tick = Timestamp::now();
    let before = every_second("crash", tick);
    b.put_schedule(&before, None).await?;
    let now = tick.plus(Duration::from_millis(5));
    ensure!(fire_due(b, b, now).await?.created == 1);
    // The advance is undone, as if it never happened.
    b.put_schedule(&before, None).await?;
    ensure!(fire_due(b, b, now).await?.created == 0);
    ensure!(jobs_of(b, "ops").await?.len() == 1);
    ensure!(stored(b, "crash").await?.next_fire > now);
    Ok(())
}

/// Ticks missed while nothing ran fire once (`missed: once`), or not at
/// all (`missed: skip`); either way the schedule resumes at the first
/// tick after now. A paused schedule does not fire.
pub async fn missed_ticks_fire_once_or_not_at_all(f: &dyn BackendFactory) -> Result<()> {
    let t = f.create(small_config()).await?;
    let b = t.backend.as_ref();
    let now = Timestamp::now();
    let hour_ago = Timestamp::from_unix_millis(now.unix_millis() - 3_600_000);
    b.put_schedule(&every_second("once", hour_ago), None)
        .await?;
    let mut skip = every_second("skip", hour_ago);
    skip.missed = Missed::Skip;
    skip.owner = "skipper".into();
    b.put_schedule(&skip, None).await?;
    let mut paused = every_second("paused", hour_ago);
    paused.paused = true;
    paused.owner = "sleeper".into();
    b.put_schedule(&paused, None).await?;

    let fired = fire_due(b, b, now).await?;
    ensure!(
        fired
            == Fired {
                created: 1,
                skipped: 1
            },
        "{fired:?}"
    );
    ensure!(
        jobs_of(b, "ops").await?.len() == 1,
        "3,600 missed ticks make one job"
    );
    ensure!(jobs_of(b, "skipper").await?.is_empty());
    ensure!(jobs_of(b, "sleeper").await?.is_empty());
    for name in ["once", "skip"] {
        let s = stored(b, name).await?;
        ensure!(s.next_fire > now, "{name} resumes after now: {s:?}");
    }
    ensure!(stored(b, "paused").await?.next_fire == hour_ago);
    Ok(())
}
