//! What the scenarios measure, shared by all of them: end-to-end latency
//! (an HDR histogram, sharded so that readers on several threads do not
//! contend), delivered / out-of-order counts, the CPU and RSS of the
//! processes under test, and the paced publishing loop.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use hdrhistogram::Histogram;

/// Microseconds since the Unix epoch: the publish stamp carried by events.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

const SHARDS: usize = 16;

/// What every subscriber adds to: deliveries, duplicates, ids out of
/// order, latency.
pub(crate) struct Recorder {
    delivered: AtomicU64,
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
    shards: Vec<Mutex<Histogram<u64>>>,
}

/// The recorder's counts at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counts {
    /// Events seen for the first time (duplicates not included).
    pub(crate) delivered: u64,
    /// Events whose id was not above the previous one's.
    pub(crate) duplicates: u64,
    /// Events whose id skipped ahead (an event missing before them).
    pub(crate) out_of_order: u64,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, before: Counts) -> Counts {
        Counts {
            delivered: self.delivered - before.delivered,
            duplicates: self.duplicates - before.duplicates,
            out_of_order: self.out_of_order - before.out_of_order,
        }
    }
}

impl Recorder {
    pub(crate) fn new() -> Result<Arc<Recorder>> {
        let shards = (0..SHARDS)
            .map(|_| Ok(Mutex::new(histogram()?)))
            .collect::<Result<_>>()?;
        Ok(Arc::new(Recorder {
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            shards,
        }))
    }

    /// Event `id` received by subscriber `who`, whose previous event was
    /// `previous`; `stamp` is its publish time in µs.
    pub(crate) fn event(&self, who: usize, id: u64, previous: u64, stamp: Option<u64>) {
        if id <= previous {
            // Not a delivery: counting it would let a duplicate hide a loss.
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if id > previous + 1 {
            self.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(stamp) = stamp {
            let latency = now_us().saturating_sub(stamp).max(1);
            if let Ok(mut h) = self.shards[who % SHARDS].lock() {
                let _ = h.record(latency);
            }
        }
    }

    pub(crate) fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub(crate) fn counts(&self) -> Counts {
        Counts {
            delivered: self.delivered(),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            out_of_order: self.out_of_order.load(Ordering::Relaxed),
        }
    }

    /// The latencies recorded since the last call, merged; the shards start
    /// empty again.
    pub(crate) fn take(&self) -> Result<Histogram<u64>> {
        let mut all = histogram()?;
        for shard in &self.shards {
            if let Ok(mut h) = shard.lock() {
                all.add(&*h)?;
                h.reset();
            }
        }
        Ok(all)
    }

    /// Waits until `expected` deliveries in all arrived, or `patience`
    /// passed; returns how long it waited.
    pub(crate) async fn drain(&self, expected: u64, patience: Duration) -> Duration {
        let started = Instant::now();
        while self.delivered() < expected && started.elapsed() < patience {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        started.elapsed()
    }
}

/// 1 µs to 60 s at 3 significant digits.
fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Percentiles {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
}

impl Percentiles {
    pub(crate) fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            self.p50, self.p90, self.p99, self.p999, self.max
        )
    }
}

/// CPU and memory of one process under test, read from `/proc`.
pub(crate) struct Meter {
    pub(crate) name: String,
    pid: u32,
    ticks: u64,
    at: Instant,
}

/// One process's share of a measurement.
#[derive(Clone, Debug)]
pub(crate) struct Usage {
    pub(crate) name: String,
    /// Percent of one core over the interval.
    pub(crate) cpu: f64,
    pub(crate) rss_kib: u64,
}

impl Meter {
    pub(crate) fn new(name: impl Into<String>, pid: u32) -> Meter {
        Meter {
            name: name.into(),
            pid,
            ticks: cpu_ticks(pid),
            at: Instant::now(),
        }
    }

    /// Usage since the last reading (or creation); starts a new interval.
    pub(crate) fn read(&mut self) -> Usage {
        let ticks = cpu_ticks(self.pid);
        let seconds = self.at.elapsed().as_secs_f64().max(1e-3);
        // Linux reports CPU time in ticks of 1/100 s (USER_HZ).
        let cpu = ticks.saturating_sub(self.ticks) as f64 / 100.0 / seconds * 100.0;
        self.ticks = ticks;
        self.at = Instant::now();
        Usage {
            name: self.name.clone(),
            cpu,
            rss_kib: rss_kib(self.pid),
        }
    }
}

/// Meters for this process and the processes under test.
pub(crate) fn meters(servers: impl IntoIterator<Item = (String, u32)>) -> Vec<Meter> {
    let mut meters = vec![Meter::new("load generator", std::process::id())];
    meters.extend(servers.into_iter().map(|(name, pid)| Meter::new(name, pid)));
    meters
}

pub(crate) fn print_usage(usage: &[Usage]) {
    let parts: Vec<String> = usage
        .iter()
        .map(|u| format!("{} {:.0}% CPU, {} MiB", u.name, u.cpu, u.rss_kib / 1024))
        .collect();
    println!("processes: {}", parts.join("; "));
}

pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU seconds (user and system) `pids` have used so far, together.
pub(crate) fn cpu_seconds(pids: &[u32]) -> f64 {
    // Linux reports CPU time in ticks of 1/100 s (USER_HZ).
    pids.iter().map(|&pid| cpu_ticks(pid)).sum::<u64>() as f64 / 100.0
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// Publishes one event of job `j` (stamping it just before sending).
pub(crate) type PublishFn =
    Arc<dyn Fn(usize) -> Pin<Box<dyn Future<Output = Result<()>> + Send>> + Send + Sync>;

/// Publishes `rate` events/s in total over `jobs` jobs for `duration`: one
/// task per job, as one worker per job would, their ticks spread over one
/// period. A job whose publishes fall behind catches up in a burst, so the
/// achieved rate is reported, not assumed. Returns events sent per job.
pub(crate) async fn paced(
    publish: PublishFn,
    jobs: usize,
    rate: f64,
    duration: Duration,
) -> Result<Vec<u64>> {
    let per_job = rate.max(1.0) / jobs.max(1) as f64;
    let period = Duration::from_secs_f64(1.0 / per_job);
    let mut tasks = tokio::task::JoinSet::new();
    for j in 0..jobs {
        let publish = Arc::clone(&publish);
        tasks.spawn(async move {
            tokio::time::sleep(period.mul_f64(j as f64 / jobs as f64)).await;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let end = Instant::now() + duration;
            let mut sent = 0u64;
            while Instant::now() < end {
                tick.tick().await;
                publish(j).await?;
                sent += 1;
            }
            anyhow::Ok((j, sent))
        });
    }
    let mut counts = vec![0; jobs];
    while let Some(done) = tasks.join_next().await {
        let (j, sent) = done??;
        counts[j] = sent;
    }
    Ok(counts)
}

/// `XREAD COUNT 1000 BLOCK 1000 STREAMS <streams…> <positions…>` (the
/// connection's response timeout must exceed the block).
pub(crate) fn xread<S: redis::ToRedisArgs>(streams: &[S], positions: &[String]) -> redis::Cmd {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT")
        .arg(1000)
        .arg("BLOCK")
        .arg(1000)
        .arg("STREAMS")
        .arg(streams)
        .arg(positions);
    cmd
}

/// One entry of an `XREAD` reply.
pub(crate) struct XEntry<'a> {
    pub(crate) stream: &'a [u8],
    pub(crate) id: String,
    /// `[field, value, …]` as stored.
    pub(crate) fields: &'a [redis::Value],
}

/// The entries of an `XREAD` reply, `[[key, [[id, [field, value, …]], …]],
/// …]` (nil on timeout: none), in order; malformed parts are skipped.
pub(crate) fn xread_entries(reply: &redis::Value) -> Vec<XEntry<'_>> {
    use redis::Value;
    let mut out = Vec::new();
    let Value::Array(streams) = reply else {
        return out;
    };
    for stream in streams {
        let Value::Array(parts) = stream else {
            continue;
        };
        let (Some(Value::BulkString(key)), Some(Value::Array(items))) =
            (parts.first(), parts.get(1))
        else {
            continue;
        };
        for item in items {
            let Value::Array(pair) = item else { continue };
            if let (Some(Value::BulkString(id)), Some(Value::Array(fields))) =
                (pair.first(), pair.get(1))
            {
                out.push(XEntry {
                    stream: key,
                    id: String::from_utf8_lossy(id).into_owned(),
                    fields,
                });
            }
        }
    }
    out
}
