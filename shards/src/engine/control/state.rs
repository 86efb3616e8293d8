//! What the control shard's loops and the API share: the registry, discovery's health, the
//! data shards' latest stats snapshots and the senders to the shards.
//!
//! Each part has its own `RefCell`, borrowed for one expression at a time and never across an
//! `.await`, so no loop can find another's borrow still open.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use polybook::registry::Registry;

use crate::engine::discovery::DiscoveryLimits;
use crate::engine::mesh::{Command, ShardStats};
use crate::net::Shutdown;

/// A shard whose last snapshot is older than this does not answer (for `/health`, `/ready`).
pub const STATS_STALE_AFTER: Duration = Duration::from_secs(2);

pub struct Control {
    pub shards: Vec<flume::Sender<Command>>,
    pub registry: RefCell<Registry>,
    pub discovery: RefCell<DiscoveryStats>,
    /// Each data shard's latest stats snapshot and when it arrived.
    pub snapshots: RefCell<Vec<Option<(ShardStats, Instant)>>>,
    /// Fired to run discovery now (a `new_market` hint); replaced after each run.
    pub wake_discovery: RefCell<Shutdown>,
    pub gamma_url: String,
    pub gamma_limits: DiscoveryLimits,
    pub discovery_interval: Duration,
    pub clock: Clock,
    /// The NATS publisher's state (written by its thread), when `[publish.nats]` is on.
    pub nats: Option<std::sync::Arc<crate::engine::nats::NatsStatus>>,
}

impl Control {
    /// Each data shard's latest snapshot (None: none fresh). Costs the data shards nothing:
    /// they push snapshots every `data::STATS_EVERY` whatever the request rate.
    pub fn fresh_stats(&self) -> Vec<Option<ShardStats>> {
        self.snapshots
            .borrow()
            .iter()
            .map(|s| {
                s.as_ref()
                    .filter(|(_, at)| at.elapsed() <= STATS_STALE_AFTER)
                    .map(|(st, _)| st.clone())
            })
            .collect()
    }

    /// The sender to a data shard, cloned so no borrow outlives the call.
    pub fn shard(&self, index: usize) -> Option<flume::Sender<Command>> {
        self.shards.get(index).cloned()
    }
}

/// Discovery's health as `/stats`, `/ready` and `/metrics` show it (the registry's listing
/// counters are added from `Registry::counters`).
#[derive(Default, serde::Serialize)]
pub struct DiscoveryStats {
    pub runs: u64,
    pub failures: u64,
    pub requests: u64,
    pub retries: u64,
    pub last_markets: usize,
    pub last_rejected: usize,
    /// Failed runs since the last good one (0: discovery is healthy).
    pub consecutive_failures: u64,
    /// The last failure or refusal, kept after recovery (with its age) for operators.
    pub last_error: Option<String>,
    pub last_error_ms_ago: Option<u64>,
    #[serde(skip)]
    pub last_error_at: Option<Instant>,
    pub last_ok_ms_ago: Option<u64>,
    #[serde(skip)]
    pub last_ok: Option<Instant>,
}

pub use crate::engine::clock::Clock;
