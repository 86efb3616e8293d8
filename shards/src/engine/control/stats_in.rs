//! The data shards' stats snapshots (every `data::STATS_EVERY`): control keeps the latest of
//! each, and `/health`, `/ready`, `/stats`, `/metrics` and the policies read that copy.

use std::time::{Duration, Instant};

use futures_lite::future;

use super::{recv_or_stop, ControlRef};
use crate::engine::mesh::ShardStats;
use crate::net::Shutdown;

/// How long start-up waits for every data shard's first snapshot.
const FIRST_SNAPSHOT_WAIT: Duration = Duration::from_secs(5);

pub type Snapshots = Vec<Option<(ShardStats, Instant)>>;

/// Waits until every data shard has answered once (or the wait ends): the API never reports
/// a shard down only because its first snapshot is still on its way.
pub async fn first_snapshots(stats_in: &flume::Receiver<ShardStats>, shards: usize) -> Snapshots {
    let mut first: Snapshots = vec![None; shards];
    let deadline = Instant::now() + FIRST_SNAPSHOT_WAIT;
    while first.iter().any(Option::is_none) && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = future::or(async { stats_in.recv_async().await.ok() }, async {
            glommio::timer::sleep(left).await;
            None
        })
        .await;
        let Some(st) = got else { break };
        let shard = st.shard;
        if let Some(slot) = first.get_mut(shard) {
            *slot = Some((st, Instant::now()));
        }
    }
    first
}

pub async fn stats_in_loop(
    control: ControlRef,
    stats_in: flume::Receiver<ShardStats>,
    stopping: Shutdown,
) {
    while let Some(st) = recv_or_stop(&stats_in, &stopping).await {
        let shard = st.shard;
        if let Some(slot) = control.snapshots.borrow_mut().get_mut(shard) {
            *slot = Some((st, Instant::now()));
        }
    }
}
