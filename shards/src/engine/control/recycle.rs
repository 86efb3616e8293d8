//! Control's recycling policy: every `recycle_check`, recycle polluted or old connections
//! (`policy::recycle_candidates`, judged on the latest stats snapshots).

use std::time::Duration;

use futures_lite::future;
use polybook::policy::{recycle_candidates, ConnView, RecycleLimits};
use polybook::ConnId;

use super::ControlRef;
use crate::engine::mesh::Command;
use crate::net::Shutdown;

pub async fn recycle_loop(
    control: ControlRef,
    every: Duration,
    limits: RecycleLimits,
    stopping: Shutdown,
) {
    while !stopping.is_triggered() {
        future::or(glommio::timer::sleep(every), stopping.wait()).await;
        if stopping.is_triggered() {
            return;
        }
        let views: Vec<ConnView> = control
            .fresh_stats()
            .iter()
            .flatten()
            .flat_map(|s| s.connections.iter())
            .map(|c| ConnView {
                id: c.id.raw(),
                age_ms: c.age_ms,
                pollution_pct: c.pollution_pct,
                recycling: c.recycling,
            })
            .collect();
        for conn in recycle_candidates(&views, limits) {
            let conn = ConnId::from_raw(conn);
            tracing::info!(conn = %conn, "recycling (policy)");
            let Some(tx) = control.shard(conn.shard.index()) else { continue };
            let _ = tx.send_async(Command::Recycle { conn, reply: None }).await;
        }
    }
}
