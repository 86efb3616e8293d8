//! The shard's counters for control: pushed every [`STATS_EVERY`], so no API request ever
//! makes a data shard scan anything.

use std::time::Duration;

use futures_lite::future;
use polybook::book::BookStatus;

use super::{Shell, ShellRef};
use crate::engine::mesh::ShardStats;
use crate::net::Shutdown;

/// How often a data shard hands control its stats.
pub const STATS_EVERY: Duration = Duration::from_millis(250);

pub(super) async fn stats_loop(shell: ShellRef, out: flume::Sender<ShardStats>, stop: Shutdown) {
    while !stop.is_triggered() {
        let st = {
            let mut sh = shell.borrow_mut();
            repair_stream_gaps(&mut sh);
            super::flush_reports(&mut sh);
            stats(&sh)
        };
        // A full channel means control is behind; it gets the next one.
        if let Err(flume::TrySendError::Disconnected(_)) = out.try_send(st) {
            return;
        }
        future::or(glommio::timer::sleep(STATS_EVERY), stop.wait()).await;
    }
}

/// Streamed tokens that lost a message and had no update since get their snapshot now.
fn repair_stream_gaps(sh: &mut Shell) {
    let Shell { group, outputs, .. } = sh;
    for t in outputs.tap.gaps() {
        match group.store().get(t.as_str()) {
            Some(book) => outputs.tap.repair(book),
            None => outputs.tap.untracked(&t),
        }
    }
}

/// CPU time of the calling thread from /proc/thread-self/stat (utime + stime, in clock ticks
/// of 10 ms on Linux's usual USER_HZ = 100).
fn thread_cpu_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) * 10)
}

pub(super) fn stats(sh: &Shell) -> ShardStats {
    let g = &sh.group;
    let c = g.counters();
    let tally = g.tally();
    let hist = sh.hist.as_ref();
    let tap = &sh.outputs.tap;
    let st = ShardStats {
        shard: sh.shard,
        markets: g.markets(),
        books: g.store().len(),
        reconnects: c.reconnects,
        connect_failures: c.connect_failures,
        pong_timeouts: c.pong_timeouts,
        silence_timeouts: c.silence_timeouts,
        redrives: c.redrives,
        resyncs: c.resyncs,
        resyncs_connection_lost: c.resyncs_connection_lost,
        resyncs_after_silence: c.resyncs_after_silence,
        suspect_ms_total: tally.suspect_ms,
        resyncing_ms_total: tally.resyncing_ms,
        bytes: c.bytes,
        recycles_started: c.recycles_started,
        recycles_completed: c.recycles_completed,
        recycles_failed: c.recycles_failed,
        tokens_migrated: c.tokens_migrated,
        handoff_timeouts: c.handoff_timeouts,
        cpu_ms: thread_cpu_ms().unwrap_or(0),
        stream_dropped: tap.dropped,
        stream_gap_snapshots: tap.gap_snapshots,
        streamed_tokens: tap.len(),
        nats: tap.nats_counters().map(|n| crate::engine::mesh::NatsShardStats {
            sent: n.sent,
            dropped: n.dropped,
            snapshots: n.snapshots,
        }),
        apply_ns_p50: hist.map_or(0, |h| h.value_at_quantile(0.5)),
        apply_ns_p99: hist.map_or(0, |h| h.value_at_quantile(0.99)),
        apply_ns_p999: hist.map_or(0, |h| h.value_at_quantile(0.999)),
        apply_ns_max: hist.map_or(0, |h| h.max()),
        store: g.store().counters().clone(),
        books_seeding: tally.get(BookStatus::Seeding),
        books_live: tally.get(BookStatus::Live),
        books_suspect: tally.get(BookStatus::Suspect),
        books_resyncing: tally.get(BookStatus::Resyncing),
        books_resolved: tally.get(BookStatus::Resolved),
        books_stale: tally.get(BookStatus::Stale),
        connections: g.snapshots(sh.clock.now_ms()),
    };
    debug_assert_eq!(tally.total(), g.store().len(), "status counts drifted");
    st
}
