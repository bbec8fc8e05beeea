//! The Lua scripts, compiled into the binary from `lua/*.lua` and run with
//! EVALSHA (redis-rs falls back to loading the script on NOSCRIPT, e.g. after
//! a Redis restart).

use std::sync::LazyLock;

use redis::Script;

/// Immutable compiled-in code, not configuration or clients: a static is fine.
pub(crate) static CREATE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/create.lua")));
pub(crate) static PUBLISH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/publish.lua")));
pub(crate) static EVENTS_AFTER: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/events_after.lua")));
pub(crate) static CANCEL: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/cancel.lua")));
pub(crate) static DELETE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/delete.lua")));
pub(crate) static RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/renew.lua")));
pub(crate) static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/release.lua")));
pub(crate) static CLAIM: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/claim.lua")));
pub(crate) static PRUNE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/prune.lua")));
pub(crate) static LIMIT_TAKE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/limit_take.lua")));
pub(crate) static LIMIT_SLOT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/limit_slot.lua")));
pub(crate) static PUT_SCHEDULE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/put_schedule.lua")));
pub(crate) static PROMOTE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/promote.lua")));
pub(crate) static DROP_DUE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/drop_due.lua")));
/// Run by hash in pipelines (`RedisBackend::due`), which do not load
/// scripts by themselves: its code goes with EVAL when a server lacks it.
pub(crate) const DUE_CODE: &str = include_str!("lua/due.lua");
pub(crate) static DUE: LazyLock<Script> = LazyLock::new(|| Script::new(DUE_CODE));
pub(crate) static ENSURE_GROUPS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/ensure_groups.lua")));
pub(crate) static LANE_FIGURES: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/lane_figures.lua")));
