//! Every Redis key name jobwire uses, built in one place.
//!
//! All keys of one job share the hash tag of its partition
//! (`p = fnv1a(job_id) % partitions`), and so does everything a job's
//! creation writes: its listing entries and its queue entry. Every Lua
//! script and every atomic pipeline therefore touches one slot, and works on
//! Redis Cluster.
//!
//! ```text
//! <prefix>:meta                        hash    layout version and partition count
//! <prefix>:{t}:job:<id>                hash    state JSON, seq, last_n, cancel, epoch, status
//! <prefix>:{t}:events:<id>             stream  the job's event log, ids <seq>-0
//! <prefix>:{t}:priority:<id>           string  which publisher goes first (publish.lua)
//! <prefix>:{t}:live                    stream  every event of the partition (delivery only)
//! <prefix>:{t}:stats                   hash    the partition's jobs by status
//! <prefix>:{t}:unfinished              hash    owner -> the partition's unfinished jobs
//! <prefix>:{t}:queue:<lane>            stream  a queue lane's entries in the partition, group `workers`
//!                                              (lane: `<queue>` for priority 5, `<queue>#<p>` for the others)
//! <prefix>:{t}:queues                  set     the lane names used in the partition
//! <prefix>:{t}:ready                   set     the partition's lanes that may hold undelivered entries
//! <prefix>:{t}:scheduled               zset    scheduled job ids by when they become runnable (Unix ms)
//! <prefix>:{t}:promoting               string  the promoter holding the partition's promotion lease
//! <prefix>:{t}:jobs                    zset    the partition's job ids (lexicographic = by creation)
//! <prefix>:{t}:user:<sub>:jobs         zset    one user's job ids in the partition
//! <prefix>:{t}:idem:<sub>\n<key>        string  "<job id> <request digest>": an idempotency key, for its window
//! <prefix>:{t}:unique:<kind>\n<key>    string  the unfinished job holding a unique key
//! <prefix>:wake                        stream  "a job was queued in partition p" (Cluster only)
//! <prefix>:workers                     hash    worker name -> its last heartbeat (JSON): the worker registry
//! <prefix>:paused                      set     paused queues (claims pass them by)
//! ```
//!
//! `t` is the partition's tag (see [`partition_tag`]): chosen so that the
//! partitions' slots sit evenly across the slot space, which spreads them
//! evenly over the masters of a cluster however many there are.

use jobwire_core::JobId;

/// Version of the layout above; bumped on any incompatible change and checked
/// against `<prefix>:meta` at start-up. Layout 1 kept one queue stream and
/// the listing indexes outside the partitions' slots.
pub(crate) const LAYOUT_VERSION: u32 = 2;

/// The queue's consumer group.
pub(crate) const WORKERS_GROUP: &str = "workers";

/// Redis Cluster's number of hash slots.
const SLOTS: u32 = 16_384;

/// The hash slot of a key (CRC16/XMODEM of its hash tag, as Redis Cluster
/// computes it).
pub fn slot_of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(bytes)) % SLOTS as u16
}

/// The hash tag of partition `p` of `partitions`: `p` itself when its slot
/// falls near the middle of the partition's share of the slot space (the
/// `p`-th of `partitions` equal ranges), else the first `p.k` that does.
///
/// Why: `redis-cli --cluster create` gives each master one contiguous range
/// of slots, equal in size. With each partition's slot at the centre of its
/// own share, any number of masters holds `⌊P/M⌋` or `⌈P/M⌉` partitions.
/// Plain `{0}`…`{15}` land where CRC16 puts them (three of them on one of
/// four masters, say), and that master carries their whole load.
pub fn partition_tag(p: u16, partitions: u16) -> String {
    let partitions = u32::from(partitions.max(1));
    let share = SLOTS / partitions;
    let centre = (2 * u32::from(p) + 1) * SLOTS / (2 * partitions);
    // Near the centre: an eighth of the share each side (a whole slot at
    // least). About one candidate in 4 · 16384 / share fits.
    let reach = (share / 8).max(1);
    let fits = |tag: &str| u32::from(slot_of(&format!("{{{tag}}}"))).abs_diff(centre) <= reach;
    let plain = p.to_string();
    if fits(&plain) {
        return plain;
    }
    (1u32..)
        .map(|k| format!("{p}.{k}"))
        .find(|tag| fits(tag))
        .unwrap_or(plain)
}

/// Builds key names for one deployment (a prefix and a partition count).
/// The names a publish uses (ten of them) are joined with `concat`, one
/// allocation of the right size: `format!` cost ~700 instructions each.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
    /// `<prefix>:{tag}` of each partition.
    partitions: Vec<String>,
}

impl Keys {
    pub(crate) fn new(prefix: &str, partitions: u16) -> Keys {
        let count = partitions.max(1);
        Keys {
            prefix: prefix.to_owned(),
            partitions: (0..count)
                .map(|p| format!("{prefix}:{{{}}}", partition_tag(p, count)))
                .collect(),
        }
    }

    pub(crate) fn partitions(&self) -> u16 {
        self.partitions.len() as u16
    }

    pub(crate) fn partition_of(&self, id: &JobId) -> u16 {
        id.partition(self.partitions())
    }

    /// `<prefix>:{tag}` of partition `p`.
    pub(crate) fn base(&self, p: u16) -> &str {
        &self.partitions[usize::from(p) % self.partitions.len()]
    }

    fn base_of(&self, id: &JobId) -> &str {
        self.base(self.partition_of(id))
    }

    pub(crate) fn meta(&self) -> String {
        format!("{}:meta", self.prefix)
    }

    pub(crate) fn job(&self, id: &JobId) -> String {
        [self.base_of(id), ":job:", id.as_str()].concat()
    }

    /// What a job's hash key starts with in partition `p` (scripts that
    /// find a job by an id they read).
    pub(crate) fn job_prefix(&self, p: u16) -> String {
        [self.base(p), ":job:"].concat()
    }

    /// The record of a unique key (`<kind>\n<key>`; its partition is the
    /// scope's).
    pub(crate) fn unique(&self, p: u16, scope: &str) -> String {
        [self.base(p), ":unique:", scope].concat()
    }

    /// The record of an idempotency key (its partition is the key's:
    /// `jobwire_core::ids::partition_of`).
    pub(crate) fn idempotency(&self, p: u16, key: &str) -> String {
        [self.base(p), ":idem:", key].concat()
    }

    pub(crate) fn events(&self, id: &JobId) -> String {
        [self.base_of(id), ":events:", id.as_str()].concat()
    }

    /// Which publisher goes first on a contended job (publish.lua).
    pub(crate) fn priority(&self, id: &JobId) -> String {
        [self.base_of(id), ":priority:", id.as_str()].concat()
    }

    pub(crate) fn live_of(&self, id: &JobId) -> String {
        self.live(self.partition_of(id))
    }

    pub(crate) fn live(&self, p: u16) -> String {
        [self.base(p), ":live"].concat()
    }

    pub(crate) fn stats_of(&self, id: &JobId) -> String {
        self.stats(self.partition_of(id))
    }

    pub(crate) fn stats(&self, p: u16) -> String {
        [self.base(p), ":stats"].concat()
    }

    /// Jobs started and finished per minute in partition `p`, one hash per
    /// hour (`lua/publish.lua` writes them; built there from `stats`).
    pub(crate) fn throughput(&self, p: u16, hour: i64) -> String {
        format!("{}:throughput:{hour}", self.base(p))
    }

    pub(crate) fn unfinished_of(&self, id: &JobId) -> String {
        self.unfinished(self.partition_of(id))
    }

    pub(crate) fn unfinished(&self, p: u16) -> String {
        [self.base(p), ":unfinished"].concat()
    }

    /// The stream of a queue lane (`jobwire_core::job::lane`: a queue and
    /// a priority) in partition `p`.
    pub(crate) fn queue(&self, p: u16, lane: &str) -> String {
        [self.base(p), ":queue:", lane].concat()
    }

    /// Partition `p`'s schedule: job ids by the time (Unix ms) they become
    /// runnable.
    pub(crate) fn scheduled(&self, p: u16) -> String {
        [self.base(p), ":scheduled"].concat()
    }

    /// The lanes of partition `p` that may have entries not yet delivered
    /// (`lua/claim.lua`).
    pub(crate) fn ready(&self, p: u16) -> String {
        [self.base(p), ":ready"].concat()
    }

    /// Which promoter queues partition `p`'s due jobs now (`lua/due.lua`).
    pub(crate) fn promoting(&self, p: u16) -> String {
        [self.base(p), ":promoting"].concat()
    }

    /// The names of the queue lanes used in partition `p`.
    pub(crate) fn queues(&self, p: u16) -> String {
        [self.base(p), ":queues"].concat()
    }

    /// Every job of partition `p` (`owner: None`) or one user's.
    pub(crate) fn listing(&self, p: u16, owner: Option<&str>) -> String {
        match owner {
            None => format!("{}:jobs", self.base(p)),
            Some(owner) => format!("{}:user:{owner}:jobs", self.base(p)),
        }
    }

    /// The worker registry: name → the worker's last heartbeat (JSON).
    pub(crate) fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// The cron schedules (a hash: name → JSON). One key for all, in a slot
    /// of its own: a schedule belongs to no job's partition, and every
    /// process reads them all each round.
    pub(crate) fn schedules(&self) -> String {
        format!("{}:schedules", self.prefix)
    }

    /// Every queue's fleet-wide limits (a hash: queue → JSON).
    pub(crate) fn limits(&self) -> String {
        format!("{}:limits", self.prefix)
    }

    /// A limited queue's running slots and recent starts (sorted sets),
    /// in the queue's own slot: the limit is fleet-wide, so it belongs to
    /// no partition.
    pub(crate) fn limit_sets(&self, queue: &str) -> (String, String) {
        (
            format!("{}:limit:{{{queue}}}:running", self.prefix),
            format!("{}:limit:{{{queue}}}:starts", self.prefix),
        )
    }

    /// The paused queues (a set).
    pub(crate) fn paused(&self) -> String {
        format!("{}:paused", self.prefix)
    }

    /// The wake-up stream of Cluster workers (see `queue.rs`).
    pub(crate) fn wake(&self) -> String {
        format!("{}:wake", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_keys_share_its_partition_slot() {
        let keys = Keys::new("jobwire", 16);
        let id: JobId = "01JDX000000000000000000000".parse().expect("valid id");
        let slot = slot_of(&keys.job(&id));
        for key in [
            keys.events(&id),
            keys.priority(&id),
            keys.live_of(&id),
            keys.stats_of(&id),
            keys.unfinished_of(&id),
            keys.queue(keys.partition_of(&id), "demo"),
            keys.queues(keys.partition_of(&id)),
            keys.queue(keys.partition_of(&id), "demo#9"),
            keys.scheduled(keys.partition_of(&id)),
            keys.promoting(keys.partition_of(&id)),
            keys.ready(keys.partition_of(&id)),
            keys.listing(keys.partition_of(&id), None),
            keys.listing(keys.partition_of(&id), Some("alice")),
        ] {
            assert_eq!(slot_of(&key), slot, "{key} is in another slot");
        }
    }

    #[test]
    fn slots_match_redis_cluster() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
        // The CRC16/XMODEM check value.
        assert_eq!(slot_of("123456789"), 0x31c3);
        // An empty tag hashes the whole key.
        assert_eq!(slot_of("a{}b"), slot_of("a{}b"));
        assert_ne!(slot_of("a{}b"), slot_of(""));
    }

    /// The masters' slot ranges as `redis-cli --cluster create` assigns them
    /// (equal shares, rounded).
    fn ranges(masters: u32) -> Vec<(u32, u32)> {
        let per = f64::from(SLOTS) / f64::from(masters);
        let mut cursor = 0.0;
        let mut first = 0;
        (0..masters)
            .map(|i| {
                let mut last = (cursor + per - 1.0).round() as u32;
                if last > SLOTS - 1 || i == masters - 1 {
                    last = SLOTS - 1;
                }
                let range = (first, last.max(first));
                first = range.1 + 1;
                cursor += per;
                range
            })
            .collect()
    }

    #[test]
    fn partitions_spread_evenly_over_any_number_of_masters() {
        for partitions in [16u16, 32, 64] {
            let slots: Vec<u32> = (0..partitions)
                .map(|p| u32::from(slot_of(&format!("{{{}}}", partition_tag(p, partitions)))))
                .collect();
            for masters in [3u32, 4, 6, 8] {
                let counts: Vec<usize> = ranges(masters)
                    .iter()
                    .map(|&(a, b)| slots.iter().filter(|&&s| (a..=b).contains(&s)).count())
                    .collect();
                let (min, max) = (counts.iter().min(), counts.iter().max());
                assert!(
                    max.zip(min).is_some_and(|(max, min)| max - min <= 1),
                    "{partitions} partitions over {masters} masters: {counts:?}"
                );
            }
        }
    }

    #[test]
    fn the_naive_tags_would_not_spread_evenly() {
        // Why `partition_tag` exists: over 8 masters {0}…{15} leave four
        // masters without a partition and put four on each of the others
        // (over 6 they give 4, 2, 2, 4, 1, 3).
        let counts: Vec<usize> = ranges(8)
            .iter()
            .map(|&(a, b)| {
                (0..16)
                    .filter(|p| (a..=b).contains(&u32::from(slot_of(&format!("{{{p}}}")))))
                    .count()
            })
            .collect();
        assert_eq!(counts, [4, 0, 4, 0, 4, 0, 4, 0]);
    }

    #[test]
    fn tags_are_stable() {
        // A change here moves every job's keys: bump LAYOUT_VERSION with it.
        let tags: Vec<String> = (0..16).map(|p| partition_tag(p, 16)).collect();
        assert_eq!(tags.len(), 16);
        assert_eq!(tags, STABLE_TAGS);
    }

    const STABLE_TAGS: [&str; 16] = [
        "0.13", "1.18", "2.20", "3.8", "4.67", "5.229", "6.43", "7.48", "8.24", "9.38", "10.48",
        "11.43", "12.1", "13.6", "14.278", "15.20",
    ];
}
