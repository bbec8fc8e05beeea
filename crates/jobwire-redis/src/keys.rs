//! Every Redis key name jobwire uses, built in one place.
//!
//! All keys of one job share the hash tag `{p}` of its partition
//! (`p = fnv1a(job_id) % partitions`), so the Lua scripts that touch a job's
//! state, log and live stream stay in one slot and work on Redis Cluster.
//!
//! ```text
//! <prefix>:meta                    hash    layout version and partition count
//! <prefix>:{p}:job:<id>            hash    state JSON, seq, last_n, cancel, epoch, status
//! <prefix>:{p}:events:<id>         stream  the job's event log, ids <seq>-0
//! <prefix>:{p}:live                stream  every event of partition p (delivery only)
//! <prefix>:{p}:stats               hash    jobs of partition p by status
//! <prefix>:{p}:unfinished          hash    owner -> unfinished jobs of partition p
//! <prefix>:queue                   stream  the job queue, consumer group `workers`
//! <prefix>:jobs                    zset    every job id (lexicographic = by creation)
//! <prefix>:user:<sub>:jobs         zset    one user's job ids
//! ```

use jobwire_core::JobId;

/// Version of the layout above; bumped on any incompatible change and checked
/// against `<prefix>:meta` at start-up.
pub(crate) const LAYOUT_VERSION: u32 = 1;

/// The queue's consumer group.
pub(crate) const WORKERS_GROUP: &str = "workers";

/// Builds key names for one deployment (a prefix and a partition count).
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
    partitions: u16,
}

impl Keys {
    pub(crate) fn new(prefix: &str, partitions: u16) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            partitions: partitions.max(1),
        }
    }

    pub(crate) fn partitions(&self) -> u16 {
        self.partitions
    }

    pub(crate) fn meta(&self) -> String {
        format!("{}:meta", self.prefix)
    }

    pub(crate) fn job(&self, id: &JobId) -> String {
        format!(
            "{}:{{{}}}:job:{id}",
            self.prefix,
            id.partition(self.partitions)
        )
    }

    pub(crate) fn events(&self, id: &JobId) -> String {
        format!(
            "{}:{{{}}}:events:{id}",
            self.prefix,
            id.partition(self.partitions)
        )
    }

    /// Which publisher goes first on a contended job (publish.lua).
    pub(crate) fn priority(&self, id: &JobId) -> String {
        format!(
            "{}:{{{}}}:priority:{id}",
            self.prefix,
            id.partition(self.partitions)
        )
    }

    pub(crate) fn live_of(&self, id: &JobId) -> String {
        self.live(id.partition(self.partitions))
    }

    pub(crate) fn live(&self, partition: u16) -> String {
        format!("{}:{{{partition}}}:live", self.prefix)
    }

    pub(crate) fn stats_of(&self, id: &JobId) -> String {
        self.stats(id.partition(self.partitions))
    }

    pub(crate) fn stats(&self, partition: u16) -> String {
        format!("{}:{{{partition}}}:stats", self.prefix)
    }

    pub(crate) fn unfinished_of(&self, id: &JobId) -> String {
        self.unfinished(id.partition(self.partitions))
    }

    pub(crate) fn unfinished(&self, partition: u16) -> String {
        format!("{}:{{{partition}}}:unfinished", self.prefix)
    }

    pub(crate) fn queue(&self) -> String {
        format!("{}:queue", self.prefix)
    }

    pub(crate) fn all_jobs(&self) -> String {
        format!("{}:jobs", self.prefix)
    }

    pub(crate) fn user_jobs(&self, owner: &str) -> String {
        format!("{}:user:{owner}:jobs", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_keys_share_its_partition_tag() {
        let keys = Keys::new("jobwire", 16);
        let id: JobId = "01JDX000000000000000000000".parse().expect("valid id");
        let tag = format!("{{{}}}", id.partition(16));
        for key in [
            keys.job(&id),
            keys.events(&id),
            keys.live_of(&id),
            keys.stats_of(&id),
            keys.unfinished_of(&id),
        ] {
            assert!(key.contains(&tag), "{key} lacks {tag}");
        }
    }
}
