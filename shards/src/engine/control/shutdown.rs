//! Stopping: every data shard is told once, and control waits for room to tell it.

use crate::engine::mesh::Command;

pub async fn stop_shards(shards: &[flume::Sender<Command>]) {
    for s in shards {
        let _ = s.send_async(Command::Shutdown).await;
    }
}
