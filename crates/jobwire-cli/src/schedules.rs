//! `jobwire schedule add|ls|rm|pause|resume`: the cron schedules, over the
//! operations API (admin token).

use jobwire_client::{NewSchedule, Schedule};
use serde_json::Value;

use crate::config::{ScheduleAddArgs, ScheduleArgs, ScheduleCommand};
use crate::jobs::{client, failed, parse_params, truncate};
use crate::Failure;

pub(crate) async fn schedule(args: ScheduleArgs) -> Result<(), Failure> {
    match args.action {
        ScheduleCommand::Add(add) => add_schedule(add).await,
        ScheduleCommand::Ls(ls) => {
            let schedules = client(&ls.client)?.schedules().await.map_err(failed)?;
            if ls.json {
                println!("{}", serde_json::to_string(&schedules).unwrap_or_default());
            } else {
                print_table(&schedules);
            }
            Ok(())
        }
        ScheduleCommand::Rm(rm) => {
            client(&rm.client)?
                .delete_schedule(&rm.name)
                .await
                .map_err(failed)?;
            println!("schedule {}: deleted (the jobs it made stay)", rm.name);
            Ok(())
        }
        ScheduleCommand::Pause(it) => {
            let s = client(&it.client)?
                .set_schedule_paused(&it.name, true)
                .await
                .map_err(failed)?;
            println!("schedule {}: paused", s.name);
            Ok(())
        }
        ScheduleCommand::Resume(it) => {
            let s = client(&it.client)?
                .set_schedule_paused(&it.name, false)
                .await
                .map_err(failed)?;
            println!("schedule {}: resumed; next tick {}", s.name, s.next_fire);
            Ok(())
        }
    }
}

async fn add_schedule(args: ScheduleAddArgs) -> Result<(), Failure> {
    let client = client(&args.client)?;
    let params = parse_params(&args.params)?;
    let stored = client
        .put_schedule(&NewSchedule {
            name: args.name,
            cron: args.cron,
            tz: args.tz,
            kind: args.kind,
            params: Value::Object(params),
            queue: args.queue,
            priority: args.priority,
            missed: args.missed,
        })
        .await
        .map_err(failed)?;
    println!(
        "schedule {}: {} {} ({}); next tick {}",
        stored.name,
        stored.kind,
        stored.cron,
        stored.tz.as_deref().unwrap_or("UTC"),
        stored.next_fire
    );
    Ok(())
}

fn print_table(schedules: &[Schedule]) {
    if schedules.is_empty() {
        println!("no schedules yet (jobwire schedule add NAME --cron EXPR KIND)");
        return;
    }
    println!(
        "{:<20}  {:<16}  {:<14}  {:<12}  {:<7}  {:<24}  LAST",
        "NAME", "CRON", "TZ", "KIND", "STATE", "NEXT"
    );
    for s in schedules {
        println!(
            "{:<20}  {:<16}  {:<14}  {:<12}  {:<7}  {:<24}  {}",
            truncate(&s.name, 20),
            truncate(&s.cron, 16),
            truncate(s.tz.as_deref().unwrap_or("UTC"), 14),
            truncate(&s.kind, 12),
            if s.paused { "paused" } else { "active" },
            if s.paused {
                "–".to_owned()
            } else {
                s.next_fire.to_string()
            },
            match (&s.last_fire, &s.last_job) {
                (Some(at), Some(job)) => format!("{at} → {job}"),
                _ => "never".to_owned(),
            }
        );
    }
}
