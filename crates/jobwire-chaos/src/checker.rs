//! The checker: what every client received against the contract and
//! against the final logs (docs/reliability.md lists the rules).
//!
//! Per (client, job) — a [`WatchLog`]:
//! - after each start (`current_state`, `resumed`, resync) ids are
//!   consecutive (`gap`, `out_of_order`); no (epoch, id) twice
//!   (`duplicate`); a `resumed` is where the client asked (`bad_resume`);
//!   a resume is answered with `resumed` or a resync, never a plain
//!   `current_state` (`resume_not_honoured`); an SSE message's `id:` names
//!   the stream's epoch (`wrong_epoch`);
//! - nothing of an epoch after its terminal event (`ran_after_terminal`);
//! - the watcher ends, within [`Bounds::watcher`] of the job's end
//!   (`watcher_never_ended`; `watcher_late`, except for the slow clients,
//!   which lag on purpose), and was not told "gone" of a
//!   job that exists (`false_gone`).
//!
//! Across clients: one content per (job, epoch, id)
//! (`conflicting_content`). Against the final log: an event received under
//! the job's final epoch is the log's event of that id (`content_mismatch`),
//! or, beyond the log's end, was lost before anything else was written to
//! the job and the watcher was resynced after it (`not_in_log`); events of earlier epochs were written in a history that
//! may since have been rolled back: the cross-client rule applies to
//! them, and those still in the final log must be a prefix of those
//! received (`loss_not_a_suffix`: lost writes came back). Per job: the
//! log's ids are 1, 2, 3 … (`log_gap`), nothing follows a terminal event
//! (`ran_after_terminal`), and the job ended (`not_terminal`,
//! `unreadable`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use jobwire_core::{Epoch, Event, EventId, JobId};
use serde::Serialize;

use crate::load::Final;
use crate::record::{ClientKind, Obs, StartKind, WatchLog};

/// One breach of the contract.
#[derive(Clone, Debug, Serialize)]
pub struct Violation {
    pub kind: &'static str,
    pub job: String,
    pub client: Option<String>,
    pub detail: String,
}

/// How long a watcher may take to end after its job did.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub watcher: Duration,
}

/// Checks everything; returns every violation found.
pub fn check(
    logs: &[WatchLog],
    finals: &HashMap<JobId, Final>,
    ends: &HashMap<JobId, Option<Duration>>,
    bounds: Bounds,
) -> Vec<Violation> {
    let mut out = Vec::new();
    for log in logs {
        check_watch(log, finals, ends, bounds, &mut out);
    }
    check_across(logs, finals, &mut out);
    let mut jobs: Vec<&JobId> = finals.keys().collect();
    jobs.sort();
    for job in jobs {
        check_final(job, &finals[job], &mut out);
    }
    out
}

fn violation(kind: &'static str, log: &WatchLog, detail: String) -> Violation {
    Violation {
        kind,
        job: log.job.to_string(),
        client: Some(log.client.clone()),
        detail,
    }
}

fn check_watch(
    log: &WatchLog,
    finals: &HashMap<JobId, Final>,
    ends: &HashMap<JobId, Option<Duration>>,
    bounds: Bounds,
    out: &mut Vec<Violation>,
) {
    let mut held: Option<(Epoch, EventId)> = None;
    let mut seen: HashSet<(Epoch, EventId)> = HashSet::new();
    let mut finished: HashSet<Epoch> = HashSet::new();
    let mut told_gone = false;
    for obs in &log.obs {
        match obs {
            Obs::Start {
                kind,
                epoch,
                id,
                asked,
                ..
            } => {
                match kind {
                    StartKind::StateOnResume => out.push(violation(
                        "resume_not_honoured",
                        log,
                        format!("asked to resume after {asked:?}, got a current_state at {epoch}:{id} without resync"),
                    )),
                    StartKind::Resumed if asked.as_ref() != Some(&(epoch.clone(), *id)) => out.push(violation(
                        "bad_resume",
                        log,
                        format!("asked to resume after {asked:?}, resumed at {epoch}:{id}"),
                    )),
                    _ => {}
                }
                held = Some((epoch.clone(), *id));
            }
            Obs::Event {
                epoch,
                event,
                labelled,
                ..
            } => {
                let Some((held_epoch, last)) = &mut held else {
                    out.push(violation(
                        "event_before_start",
                        log,
                        format!("event {} before any state", event.id),
                    ));
                    continue;
                };
                if let Some(l) = labelled.as_ref().filter(|l| *l != epoch) {
                    out.push(violation(
                        "wrong_epoch",
                        log,
                        format!(
                            "event {} labelled {l} on a stream of epoch {epoch}",
                            event.id
                        ),
                    ));
                }
                if finished.contains(epoch) {
                    out.push(violation(
                        "ran_after_terminal",
                        log,
                        format!(
                            "event {} ({}) after a terminal event of epoch {epoch}",
                            event.id, event.kind
                        ),
                    ));
                }
                if !seen.insert((epoch.clone(), event.id)) {
                    out.push(violation(
                        "duplicate",
                        log,
                        format!("event {epoch}:{} received twice", event.id),
                    ));
                } else if event.id <= *last {
                    out.push(violation(
                        "out_of_order",
                        log,
                        format!("event {} after {}", event.id, last),
                    ));
                } else if event.id != last.next() {
                    out.push(violation(
                        "gap",
                        log,
                        format!("event {} after {} (epoch {held_epoch})", event.id, last),
                    ));
                }
                if event.id > *last {
                    *last = event.id;
                }
                if event.kind.is_terminal() {
                    finished.insert(epoch.clone());
                }
            }
            Obs::Gone { .. } => told_gone = true,
            Obs::Anomaly { what, .. } => {
                out.push(violation("client_anomaly", log, what.clone()));
            }
            Obs::Reconnect { .. } | Obs::Connected { .. } => {}
        }
    }
    let final_state = finals.get(&log.job);
    if told_gone && matches!(final_state, Some(Final::Present { .. })) {
        out.push(violation(
            "false_gone",
            log,
            "told the job is gone, but it exists at the end".to_owned(),
        ));
    }
    let end = ends.get(&log.job).copied().flatten();
    match (log.ended, end) {
        (None, _) => out.push(violation(
            "watcher_never_ended",
            log,
            format!(
                "still waiting at the end of the run (job ended at {:?}; last seen: {:?})",
                end,
                log.obs.last()
            ),
        )),
        // Slow clients read a message a second while a fault lasts: lagging
        // is what they do (they must still end).
        (Some(ended), Some(end))
            if ended > end + bounds.watcher && log.kind != ClientKind::Slow =>
        {
            out.push(violation(
                "watcher_late",
                log,
                format!("ended at {ended:?}, {:?} after the job did", ended - end),
            ));
        }
        _ => {}
    }
}

fn check_across(logs: &[WatchLog], finals: &HashMap<JobId, Final>, out: &mut Vec<Violation>) {
    let mut first: HashMap<(JobId, Epoch, EventId), (&Event, &str)> = HashMap::new();
    // Per (job, earlier epoch): for each id received, whether it is the
    // final log's event of that id (it survived) or not (it was lost).
    let mut survived: BTreeMap<(JobId, String), BTreeMap<EventId, bool>> = BTreeMap::new();
    for log in logs {
        let final_log = match finals.get(&log.job) {
            Some(Final::Present { epoch, events, .. }) => Some((epoch, events)),
            _ => None,
        };
        // A watcher told to start over (a resync) after an event no longer
        // holds it: that event may have been lost since.
        let last_resync = log.obs.iter().rposition(|o| {
            matches!(
                o,
                Obs::Start {
                    kind: StartKind::Resync | StartKind::Fresh,
                    ..
                }
            )
        });
        for (at, obs) in log.obs.iter().enumerate() {
            let Obs::Event { epoch, event, .. } = obs else {
                continue;
            };
            let key = (log.job.clone(), epoch.clone(), event.id);
            match first.get(&key) {
                Some((other, who)) if *other != event => out.push(violation(
                    "conflicting_content",
                    log,
                    format!(
                        "{epoch}:{} differs from what {who} got: {} vs {}",
                        event.id,
                        event.to_json(),
                        other.to_json()
                    ),
                )),
                Some(_) => {}
                None => {
                    first.insert(key, (event, &log.client));
                }
            }
            let Some((final_epoch, events)) = final_log else {
                continue;
            };
            if epoch != final_epoch {
                let same = usize::try_from(event.id.0)
                    .ok()
                    .and_then(|at| at.checked_sub(1))
                    .and_then(|i| events.get(i))
                    .is_some_and(|logged| logged == event);
                survived
                    .entry((log.job.clone(), epoch.to_string()))
                    .or_default()
                    .insert(event.id, same);
                continue;
            }
            let obs_at = at;
            let at = usize::try_from(event.id.0).unwrap_or(usize::MAX);
            match at.checked_sub(1).and_then(|i| events.get(i)) {
                // Lost with the end of the log, before anything else was
                // written to the job (the next write starts a new epoch),
                // and the watcher was resynced since: not a breach.
                None if last_resync.is_some_and(|r| r > obs_at) => {}
                None => out.push(violation(
                    "not_in_log",
                    log,
                    format!(
                        "{epoch}:{} was received but the final log (same epoch) has {} events",
                        event.id,
                        events.len()
                    ),
                )),
                Some(logged) if logged != event => out.push(violation(
                    "content_mismatch",
                    log,
                    format!(
                        "{epoch}:{} received {} but the log has {}",
                        event.id,
                        event.to_json(),
                        logged.to_json()
                    ),
                )),
                Some(_) => {}
            }
        }
    }
    // Redis loses a suffix of its writes, and nothing is appended to the
    // history it lost them from (docs/design.md): of an earlier epoch's
    // events, those still in the final log are a prefix. One that survived
    // above one that was lost means lost writes came back.
    for ((job, epoch), ids) in survived {
        let lost = ids.iter().find(|(_, same)| !**same).map(|(id, _)| *id);
        let back = lost.and_then(|l| ids.range(l..).find(|(_, same)| **same).map(|(id, _)| *id));
        if let (Some(lost), Some(back)) = (lost, back) {
            out.push(Violation {
                kind: "loss_not_a_suffix",
                job: job.to_string(),
                client: None,
                detail: format!(
                    "of epoch {epoch}, event {lost} is not in the final log but {back} is"
                ),
            });
        }
    }
}

fn check_final(job: &JobId, f: &Final, out: &mut Vec<Violation>) {
    let v = |kind, detail: String| Violation {
        kind,
        job: job.to_string(),
        client: None,
        detail,
    };
    match f {
        Final::Gone => {}
        Final::Unreadable(e) => out.push(v(
            "unreadable",
            format!("cannot read the job at the end: {e}"),
        )),
        Final::Present { state, events, .. } => {
            if !state.status.is_terminal() {
                out.push(v(
                    "not_terminal",
                    format!(
                        "{} at the end (attempt {}, event {})",
                        state.status.as_str(),
                        state.attempt,
                        state.last_event_id
                    ),
                ));
            }
            for (i, e) in events.iter().enumerate() {
                if e.id.0 != i as u64 + 1 {
                    out.push(v(
                        "log_gap",
                        format!("event {} at position {}", e.id, i + 1),
                    ));
                    break;
                }
            }
            if let Some(t) = events.iter().position(|e| e.kind.is_terminal()) {
                if let Some(after) = events.get(t + 1) {
                    out.push(v(
                        "ran_after_terminal",
                        format!(
                            "the log has {} ({}) after the terminal {} ({})",
                            after.id, after.kind, events[t].id, events[t].kind
                        ),
                    ));
                }
            }
        }
    }
}

/// Violations by kind: how many, and the first as an example.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub count: usize,
    pub example: Violation,
}

pub fn summarize(violations: &[Violation]) -> BTreeMap<String, Summary> {
    let mut out: BTreeMap<String, Summary> = BTreeMap::new();
    for v in violations {
        out.entry(v.kind.to_owned())
            .and_modify(|s| s.count += 1)
            .or_insert_with(|| Summary {
                count: 1,
                example: v.clone(),
            });
    }
    out
}

#[cfg(test)]
mod tests {
    //! The checker catches each breach it names: a checker that cannot
    //! fail would make the suite's green runs meaningless.

    use jobwire_core::{EventType, JobState, JobStatus, NewJob, Timestamp};
    use serde_json::json;

    use super::*;

    fn job() -> JobId {
        "01JDXAAAAAAAAAAAAAAAAAAAAA".parse().expect("job id")
    }

    fn epoch(s: &str) -> Epoch {
        s.parse().expect("epoch")
    }

    fn event(id: u64, kind: EventType, step: u64) -> Event {
        let data = json!({"step": step});
        Event {
            id: EventId(id),
            job_id: job(),
            kind,
            timestamp: Timestamp::from_unix_millis(1_000 + id as i64),
            data: data.as_object().cloned().unwrap_or_default(),
        }
    }

    /// A five-event log: queued, started, two progress, completed.
    fn log_events() -> Vec<Event> {
        vec![
            event(1, EventType::JobQueued, 0),
            event(2, EventType::JobStarted, 0),
            event(3, EventType::Progress, 1),
            event(4, EventType::Progress, 2),
            event(5, EventType::JobCompleted, 2),
        ]
    }

    fn finals(status: JobStatus, events: Vec<Event>) -> HashMap<JobId, Final> {
        let mut state = JobState::new(
            &NewJob::new("demo", json!({}), "chaos"),
            epoch("e1"),
            Timestamp::from_unix_millis(0),
        );
        state.id = job();
        state.status = status;
        state.last_event_id = EventId(events.len() as u64);
        HashMap::from([(
            job(),
            Final::Present {
                state: Box::new(state),
                epoch: epoch("e1"),
                events,
            },
        )])
    }

    fn start(kind: StartKind, e: &str, id: u64, asked: Option<(&str, u64)>) -> Obs {
        Obs::Start {
            at: Duration::ZERO,
            kind,
            epoch: epoch(e),
            id: EventId(id),
            status: None,
            asked: asked.map(|(e, id)| (epoch(e), EventId(id))),
        }
    }

    fn got(e: &str, event: Event) -> Obs {
        Obs::Event {
            at: Duration::ZERO,
            epoch: epoch(e),
            event,
            labelled: None,
        }
    }

    fn watch(client: &str, obs: Vec<Obs>) -> WatchLog {
        WatchLog {
            client: client.to_owned(),
            kind: ClientKind::Single,
            job: job(),
            obs,
            ended: Some(Duration::from_secs(1)),
        }
    }

    /// A fresh subscribe at 1, events 2..=5: the clean case.
    fn clean(client: &str) -> WatchLog {
        let mut obs = vec![start(StartKind::Fresh, "e1", 1, None)];
        obs.extend(log_events().into_iter().skip(1).map(|e| got("e1", e)));
        watch(client, obs)
    }

    fn kinds(logs: &[WatchLog], finals: &HashMap<JobId, Final>) -> Vec<&'static str> {
        let ends = HashMap::from([(job(), Some(Duration::from_secs(1)))]);
        check(
            logs,
            finals,
            &ends,
            Bounds {
                watcher: Duration::from_secs(30),
            },
        )
        .into_iter()
        .map(|v| v.kind)
        .collect()
    }

    #[test]
    fn a_clean_run_has_no_violation() {
        let logs = [clean("a"), clean("b")];
        assert_eq!(
            kinds(&logs, &finals(JobStatus::Completed, log_events())),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn holes_duplicates_and_bad_resumes_are_caught() {
        let e = log_events();
        let gap = watch(
            "gap",
            vec![
                start(StartKind::Fresh, "e1", 1, None),
                got("e1", e[2].clone()),
            ],
        );
        let dup = watch(
            "dup",
            vec![
                start(StartKind::Fresh, "e1", 1, None),
                got("e1", e[1].clone()),
                start(StartKind::Resumed, "e1", 1, Some(("e1", 2))),
                got("e1", e[1].clone()),
            ],
        );
        let plain = watch(
            "plain",
            vec![
                start(StartKind::Fresh, "e1", 1, None),
                start(StartKind::StateOnResume, "e1", 4, Some(("e1", 1))),
            ],
        );
        let found = kinds(&[gap, dup, plain], &finals(JobStatus::Completed, e));
        for kind in ["gap", "duplicate", "bad_resume", "resume_not_honoured"] {
            assert!(found.contains(&kind), "{kind} not caught: {found:?}");
        }
    }

    #[test]
    fn other_content_under_the_same_epoch_and_id_is_caught() {
        let mut other = log_events();
        other[2] = event(3, EventType::Progress, 99);
        let liar = watch(
            "liar",
            vec![
                start(StartKind::Fresh, "e1", 2, None),
                got("e1", other[2].clone()),
            ],
        );
        let found = kinds(
            &[clean("a"), liar],
            &finals(JobStatus::Completed, log_events()),
        );
        assert!(found.contains(&"conflicting_content"), "{found:?}");
        assert!(found.contains(&"content_mismatch"), "{found:?}");
        // Under an epoch that was rolled back only the clients are compared.
        let old = watch(
            "old",
            vec![
                start(StartKind::Fresh, "e0", 2, None),
                got("e0", other[2].clone()),
            ],
        );
        assert_eq!(
            kinds(&[old], &finals(JobStatus::Completed, log_events())),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn a_lost_event_below_a_surviving_one_is_caught() {
        let e = log_events();
        let mut lost = e[2].clone();
        lost.data.insert("step".into(), json!(42));
        // Under an earlier epoch: 3 was lost (the log has other content)
        // but 4 survived.
        let old = watch(
            "old",
            vec![
                start(StartKind::Fresh, "e0", 2, None),
                got("e0", lost),
                got("e0", e[3].clone()),
            ],
        );
        let found = kinds(&[old], &finals(JobStatus::Completed, e.clone()));
        assert!(found.contains(&"loss_not_a_suffix"), "{found:?}");
        // A lost suffix is fine.
        let mut lost4 = e[3].clone();
        lost4.data.insert("step".into(), json!(42));
        let suffix = watch(
            "suffix",
            vec![
                start(StartKind::Fresh, "e0", 2, None),
                got("e0", e[2].clone()),
                got("e0", lost4),
            ],
        );
        let mut w = suffix;
        w.ended = Some(Duration::from_secs(1));
        assert_eq!(
            kinds(&[w], &finals(JobStatus::Completed, e)),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn an_event_lost_off_the_end_is_fine_once_the_watcher_is_resynced() {
        // The log kept 1..=4; event 5 was delivered, then lost.
        let kept: Vec<Event> = log_events().into_iter().take(4).collect();
        let beyond = event(5, EventType::Progress, 3);
        let told = watch(
            "told",
            vec![
                start(StartKind::Fresh, "e1", 3, None),
                got("e1", kept[3].clone()),
                got("e1", beyond.clone()),
                start(StartKind::Resync, "e1", 4, None),
            ],
        );
        let finals = finals(JobStatus::Completed, kept.clone());
        assert_eq!(kinds(&[told], &finals), Vec::<&str>::new());
        let untold = watch(
            "untold",
            vec![
                start(StartKind::Fresh, "e1", 3, None),
                got("e1", kept[3].clone()),
                got("e1", beyond),
            ],
        );
        assert_eq!(kinds(&[untold], &finals), ["not_in_log"]);
    }

    #[test]
    fn a_run_after_the_end_and_a_waiting_watcher_are_caught() {
        let mut events = log_events();
        events.push(event(6, EventType::Progress, 3));
        let mut stuck = clean("stuck");
        stuck.ended = None;
        let mut after = clean("after");
        after.obs.push(got("e1", events[5].clone()));
        let found = kinds(&[stuck, after], &finals(JobStatus::Running, events));
        for kind in ["ran_after_terminal", "watcher_never_ended", "not_terminal"] {
            assert!(found.contains(&kind), "{kind} not caught: {found:?}");
        }
    }

    #[test]
    fn gone_for_a_job_that_exists_is_caught() {
        let told = watch("told", vec![Obs::Gone { at: Duration::ZERO }]);
        let found = kinds(&[told], &finals(JobStatus::Completed, log_events()));
        assert_eq!(found, ["false_gone"]);
    }
}
