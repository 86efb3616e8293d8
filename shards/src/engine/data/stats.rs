//! The shard's counters for control: pushed every [`STATS_EVERY`], so no API request ever
//! makes a data shard scan anything.

use std::time::Duration;

use futures_lite::future;
use polybook::book::BookStatus;

use super::{Shell, ShellRef};
use hdrhistogram::Histogram;

use crate::engine::mesh::{LatencyBuckets, ShardStats, APPLY_LATENCY_BOUNDS_NS};
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

/// CPU time of the calling thread (user + system), from the kernel's per-thread clock:
/// nanosecond-exact, where /proc's utime/stime come in 10 ms ticks.
fn thread_cpu_ms() -> Option<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).ok()?;
    let ms = u64::try_from(t.tv_sec()).ok()? * 1000 + u64::try_from(t.tv_nsec()).ok()? / 1_000_000;
    Some(ms)
}

/// The hdrhistogram as fixed Prometheus buckets, in one pass over its recorded values. A value
/// counts in the first bucket whose bound is at least the lowest value hdrhistogram keeps
/// together with it (3 significant digits: a value on a bound counts at that bound, one up to
/// 0.1% above it may too).
fn latency_buckets(hist: Option<&Histogram<u64>>, sum_ns: u64) -> LatencyBuckets {
    let mut out = LatencyBuckets { sum_ns, ..LatencyBuckets::default() };
    let Some(h) = hist else { return out };
    let mut per_bucket = [0u64; APPLY_LATENCY_BOUNDS_NS.len()];
    for v in h.iter_recorded() {
        let value = h.lowest_equivalent(v.value_iterated_to());
        if let Some(i) = APPLY_LATENCY_BOUNDS_NS.iter().position(|&b| value <= b) {
            per_bucket[i] += v.count_at_value();
        }
    }
    let mut running = 0;
    for (cum, n) in out.cumulative.iter_mut().zip(per_bucket) {
        running += n;
        *cum = running;
    }
    out.count = h.len();
    out
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
        recording: sh.record_counters.as_deref().map(|r| {
            use std::sync::atomic::Ordering::Relaxed;
            crate::engine::mesh::RecordingStats {
                lines_queued: r.lines_queued.load(Relaxed),
                lines_dropped: r.lines_dropped.load(Relaxed),
                lines_written: r.lines_written.load(Relaxed),
                bytes_in: r.bytes_in.load(Relaxed),
                files: r.files.load(Relaxed),
                failed: r.failed.load(Relaxed),
            }
        }),
        apply_ns_p50: hist.map_or(0, |h| h.value_at_quantile(0.5)),
        apply_ns_p99: hist.map_or(0, |h| h.value_at_quantile(0.99)),
        apply_ns_p999: hist.map_or(0, |h| h.value_at_quantile(0.999)),
        apply_ns_max: hist.map_or(0, |h| h.max()),
        apply_latency: latency_buckets(hist, sh.hist_sum_ns),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_cumulative_and_end_at_the_count() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
            .unwrap_or_else(|e| panic!("{e}"));
        // 5 us, 10 us (on a bound), 30 us, 2 ms, and 5 s (above every bound: only +Inf).
        for ns in [5_000, 10_000, 30_000, 2_000_000, 5_000_000_000] {
            h.record(ns).unwrap_or_else(|e| panic!("{e}"));
        }
        let b = latency_buckets(Some(&h), 123);
        let at = |bound: u64| {
            let i = APPLY_LATENCY_BOUNDS_NS.iter().position(|&x| x == bound);
            let i = i.unwrap_or_else(|| panic!("{bound} is no bound"));
            b.cumulative[i]
        };
        assert_eq!(at(10_000), 2);
        assert_eq!(at(25_000), 2);
        assert_eq!(at(50_000), 3);
        assert_eq!(at(1_000_000), 3);
        assert_eq!(at(2_500_000), 4);
        assert_eq!(at(1_000_000_000), 4);
        assert_eq!(b.count, 5);
        assert_eq!(b.sum_ns, 123);
        assert!(b.cumulative.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn no_histogram_is_empty_buckets() {
        assert_eq!(latency_buckets(None, 0), LatencyBuckets::default());
    }

    #[test]
    fn thread_cpu_time_reads() {
        assert!(thread_cpu_ms().is_some());
    }
}
