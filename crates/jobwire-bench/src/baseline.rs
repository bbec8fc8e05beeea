//! Baseline: the physical floor for fan-out on this machine. The same
//! subscribers, jobs and rate as the fan-out scenario, with no jobwire at
//! all: publishers `XADD` one event per job stream, and every subscriber
//! has its own Redis connection blocked in `XREAD` on its job's stream, so
//! Redis itself does the fan-out. The events carry the same JSON a gateway
//! sends (same size, same `id` and `data.t_us`), and subscribers parse them
//! the same way, so the two scenarios differ only in the path between.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};
use tokio_util::sync::CancellationToken;

use crate::measure::{self, now_us, paced, Percentiles, PublishFn, Recorder};
use crate::subscriber::Probe;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Subscribers, each with its own Redis connection.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Jobs (streams); subscriber i reads stream i % jobs.
    #[arg(long, default_value_t = 100)]
    jobs: usize,
    /// Events published per second, in total.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
}

/// A jobwire event as a gateway sends it, with the same fields and size.
fn event_json(job: usize, id: u64) -> String {
    format!(
        r#"{{"id":{id},"job_id":"01JBENCH{job:018}","type":"bench.tick","timestamp":"2026-11-28T18:00:00.000000Z","attempt":1,"n":{id},"data":{{"t_us":{}}}}}"#,
        now_us()
    )
}

pub(crate) async fn run(args: Args) -> Result<()> {
    let (_server, url) = crate::redis(None)?;
    let redis_pid = _server.as_ref().and_then(|s| s.pid());
    let client = redis::Client::open(url.as_str())?;
    let jobs = args.jobs.max(1);
    let key = |j: usize| format!("baseline:{j}");

    let recorder = Recorder::new()?;
    let stop = CancellationToken::new();
    let mut readers = Vec::new();
    for who in 0..args.subscribers {
        let config =
            AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .with_context(|| format!("subscriber {who}'s connection"))?;
        readers.push(tokio::spawn(read(
            conn,
            key(who % jobs),
            who,
            recorder.clone(),
            stop.clone(),
        )));
    }
    println!(
        "{} subscribers, each blocked in XREAD on one of {jobs} streams",
        args.subscribers
    );

    let mut publishers = Vec::new();
    for _ in 0..4 {
        publishers.push(client.get_multiplexed_async_connection().await?);
    }
    let publishers = Arc::new(publishers);
    let sequences: Arc<Vec<AtomicU64>> = Arc::new((0..jobs).map(|_| AtomicU64::new(0)).collect());
    let keys: Arc<Vec<String>> = Arc::new((0..jobs).map(key).collect());
    let publish: PublishFn = Arc::new(move |j| {
        let mut conn = publishers[j % publishers.len()].clone();
        let id = sequences[j].fetch_add(1, Ordering::Relaxed) + 1;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&keys[j])
            .arg("MAXLEN")
            .arg("~")
            .arg(1000)
            .arg("*")
            .arg("e")
            .arg(event_json(j, id));
        Box::pin(async move {
            let _: String = cmd.query_async(&mut conn).await?;
            Ok(())
        })
    });

    let mut meters = measure::meters(redis_pid.map(|pid| ("redis-server".to_owned(), pid)));
    let counts = paced(
        publish,
        jobs,
        args.rate,
        Duration::from_secs_f64(args.seconds),
    )
    .await?;
    let expected: u64 = (0..args.subscribers).map(|i| counts[i % jobs]).sum();
    let drain = recorder.drain(expected, Duration::from_secs(30)).await;
    let usage: Vec<_> = meters.iter_mut().map(|m| m.read()).collect();
    stop.cancel();
    for reader in readers {
        reader.await??;
    }
    let published: u64 = counts.iter().sum();
    let seen = recorder.counts();
    let delivered = seen.delivered;
    println!(
        "rate {:.0}/s asked: published {published} ({:.0}/s); expected {expected}, delivered {delivered}, lost {}, duplicated {}, out of order {}",
        args.rate,
        published as f64 / args.seconds,
        expected.saturating_sub(delivered),
        seen.duplicates,
        seen.out_of_order,
    );
    println!(
        "  delivered messages/s: {:.0} (the last arrived {:.2} s after publishing ended)",
        delivered as f64 / (args.seconds + drain.as_secs_f64()),
        drain.as_secs_f64()
    );
    println!("  latency ms: {}", Percentiles::of(&recorder.take()?));
    print!("  ");
    measure::print_usage(&usage);
    Ok(())
}

/// One subscriber: `XREAD BLOCK` on its stream from the start, until
/// `stop`.
async fn read(
    mut conn: MultiplexedConnection,
    key: String,
    who: usize,
    recorder: Arc<Recorder>,
    stop: CancellationToken,
) -> Result<()> {
    let mut position = "0-0".to_owned();
    let mut last = 0u64;
    loop {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(&key)
            .arg(&position);
        let reply: Value = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            reply = cmd.query_async(&mut conn) => reply?,
        };
        for (id, event) in entries(&reply) {
            position = id;
            let Ok(probe) = serde_json::from_slice::<Probe>(event) else {
                continue;
            };
            recorder.event(who, probe.id, last, probe.data.t_us);
            last = last.max(probe.id);
        }
    }
}

/// The (entry id, `e` field) pairs of an `XREAD` reply for one stream:
/// `[[key, [[id, [field, value, …]], …]]]`, or nil on timeout.
fn entries(reply: &Value) -> Vec<(String, &[u8])> {
    let mut out = Vec::new();
    let Value::Array(streams) = reply else {
        return out;
    };
    for stream in streams {
        let Value::Array(parts) = stream else {
            continue;
        };
        let Some(Value::Array(items)) = parts.get(1) else {
            continue;
        };
        for item in items {
            let Value::Array(pair) = item else { continue };
            let (Some(Value::BulkString(id)), Some(Value::Array(fields))) =
                (pair.first(), pair.get(1))
            else {
                continue;
            };
            if let Some(Value::BulkString(event)) = fields.get(1) {
                out.push((String::from_utf8_lossy(id).into_owned(), event.as_slice()));
            }
        }
    }
    out
}
