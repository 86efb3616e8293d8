//! The control shard: a few small loops around the core's `Registry`. It never touches a
//! book: it sends commands to the data shard that owns each market and reads their reports.
//!
//! - [`discover`]: Gamma discovery on a blocking thread, backoff, confirm-by-id, sweeps.
//! - [`reports`]: data shards' reports (resolved markets, `new_market` hints).
//! - [`stats_in`]: the data shards' stats snapshots, which every read of the API answers from.
//! - [`recycle`]: the recycling policy.
//! - [`progress`]: the periodic progress log line.
//! - [`shutdown`]: telling every data shard to stop.
//! - [`state`]: what the loops and the API (`crate::api`) share.

mod discover;
mod progress;
mod recycle;
mod reports;
mod shutdown;
pub mod state;
mod stats_in;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use polybook::policy::RecycleLimits;
use polybook::registry::{Change, Changes, Registry, RegistryConfig};

use super::discovery::DiscoveryLimits;
use super::mesh::{Command, Report, ShardStats};
use super::stream::StreamMsg;
use crate::api::{self, ApiConfig};
use crate::net::Shutdown;
use state::{Clock, Control, DiscoveryStats};

/// What the control shard's loops need to know (the API's part is [`ApiConfig`]).
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub gamma_url: String,
    /// Selection, listing sanity, grace and expiry; `shards` is set from the senders.
    pub registry: RegistryConfig,
    /// Gamma tag ids, passed to the listing as `tag_id` (one request series per tag).
    pub tag_ids: Vec<u64>,
    pub discovery: DiscoveryLimits,
    pub discovery_interval: Duration,
    pub recycle: RecycleLimits,
    pub recycle_check: Duration,
    /// How often a progress line is logged (markets, books live, frames/s); zero: never.
    pub progress_interval: Duration,
    /// The NATS publisher's state, when `[publish.nats]` is on.
    pub nats: Option<std::sync::Arc<crate::engine::nats::NatsStatus>>,
}

/// Shared by the control shard's tasks.
pub type ControlRef = Rc<Control>;

/// Runs the control shard until `stop` receives a message. Sends the API's bound address (or
/// the bind error) on `bound` first.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    cfg: ControlConfig,
    api_cfg: ApiConfig,
    shards: Vec<flume::Sender<Command>>,
    reports: flume::Receiver<Report>,
    streams: flume::Receiver<StreamMsg>,
    stats_in: flume::Receiver<ShardStats>,
    stop: flume::Receiver<()>,
    bound: std::sync::mpsc::Sender<Result<SocketAddr, String>>,
) {
    let (server, origins) = match api::bind(&api_cfg) {
        Ok(bound) => bound,
        Err(e) => {
            let _ = bound.send(Err(e));
            shutdown::stop_shards(&shards).await;
            return;
        }
    };
    let first = stats_in::first_snapshots(&stats_in, shards.len()).await;
    let _ = bound.send(Ok(server.local_addr()));
    let registry = RegistryConfig { shards: shards.len().max(1), ..cfg.registry.clone() };
    let control = Rc::new(Control {
        shards,
        registry: RefCell::new(Registry::new(registry)),
        discovery: RefCell::new(DiscoveryStats::default()),
        snapshots: RefCell::new(first),
        wake_discovery: RefCell::new(Shutdown::new()),
        gamma_url: cfg.gamma_url.clone(),
        gamma_limits: cfg.discovery.clone(),
        discovery_interval: cfg.discovery_interval,
        clock: Clock::start(),
        nats: cfg.nats.clone(),
    });
    let stopping = Shutdown::new();
    let api = api::start(server, origins, api_cfg, Rc::clone(&control), streams, &stopping);
    let loops = [
        glommio::spawn_local(discover::discovery_loop(
            Rc::clone(&control),
            cfg.tag_ids.clone(),
            stopping.clone(),
        ))
        .detach(),
        glommio::spawn_local(reports::report_loop(Rc::clone(&control), reports, stopping.clone()))
            .detach(),
        glommio::spawn_local(stats_in::stats_in_loop(
            Rc::clone(&control),
            stats_in,
            stopping.clone(),
        ))
        .detach(),
        glommio::spawn_local(progress::progress_loop(
            Rc::clone(&control),
            cfg.progress_interval,
            stopping.clone(),
        ))
        .detach(),
        glommio::spawn_local(recycle::recycle_loop(
            Rc::clone(&control),
            cfg.recycle_check,
            cfg.recycle,
            stopping.clone(),
        ))
        .detach(),
    ];
    let _ = stop.recv_async().await;
    tracing::info!("stopping");
    stopping.trigger();
    api.stop();
    shutdown::stop_shards(&control.shards).await;
    api.join().await;
    drop(loops);
}

/// Sends the registry's changes to their shards, in order.
pub async fn send_changes(control: &Control, changes: Changes) {
    for (shard, change) in changes {
        let Some(tx) = control.shard(shard.index()) else { continue };
        let cmd = match change {
            Change::Track(specs) => Command::Track(specs),
            Change::Untrack(ids) => Command::Untrack(ids),
        };
        // Bounded: wait for room, never drop a command.
        let _ = tx.send_async(cmd).await;
    }
}

/// The next message, or None once `stopping` fires or every sender is gone.
pub async fn recv_or_stop<T>(rx: &flume::Receiver<T>, stopping: &Shutdown) -> Option<T> {
    future::or(async { rx.recv_async().await.ok() }, async {
        stopping.wait().await;
        None
    })
    .await
}
