//! `/metrics`: Prometheus text exposition. Every metric is a row of [`METRICS`] (name, type,
//! help, and where its values come from) and [`render`] is the one writer, so adding a metric
//! is adding a row. Values come from the shards' stats snapshots (counters live with the
//! shard that owns them; no shared atomics on the hot path) and control's own state.

use std::collections::BTreeMap;
use std::fmt::Write;

use polybook::checks::CheckCounts;
use polybook::registry::Lifecycle;

use super::hub::Streams;
use super::process::ProcessStats;
use crate::engine::control::state::Control;
use crate::engine::mesh::{LatencyBuckets, ShardStats, APPLY_LATENCY_BOUNDS_NS};
use crate::net::Response;

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Labels and values of one metric family.
type Labeled<T> = fn(&T) -> Vec<(&'static str, u64)>;

/// Where a family's samples come from.
#[derive(Clone, Copy)]
enum Source {
    /// One sample per answering shard, labelled `shard`.
    Shard(fn(&ShardStats) -> u64),
    /// Like `Shard`, a value in ms written as seconds with three decimals.
    ShardMillisAsSeconds(fn(&ShardStats) -> u64),
    /// Per answering shard, one sample per label value.
    ShardLabeled(&'static str, Labeled<ShardStats>),
    /// 1 or 0 per configured shard: whether it answered.
    ShardUp,
    /// One sample per label value, no shard.
    Labeled(&'static str, Labeled<Scrape>),
    /// One sample; `None` leaves the family out.
    Global(fn(&Scrape) -> Option<u64>),
    /// Like `Global`, a value in seconds.
    GlobalSeconds(fn(&Scrape) -> Option<f64>),
    /// Per answering shard, a histogram of nanoseconds written in seconds.
    ShardLatency(fn(&ShardStats) -> &LatencyBuckets),
}

struct Metric {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    source: Source,
}

/// What one scrape reads, gathered once so no borrow is held while writing.
struct Scrape {
    shards: Vec<Option<ShardStats>>,
    markets: [(Lifecycle, usize); 4],
    discovery: [u64; 4],
    discovery_last_ok: Option<f64>,
    /// The `/ws` hub: clients, clients dropped slow, messages sent.
    hub: [u64; 3],
    rate_limited: u64,
    process: ProcessStats,
    /// `[publish.nats]`'s publisher (None: off, and its families are left out).
    nats: Option<NatsScrape>,
}

#[derive(Clone, Copy)]
struct NatsScrape {
    connected: bool,
    published: u64,
    dropped_disconnected: u64,
    publish_errors: u64,
    reconnects: u64,
    republished: u64,
}

const fn m(name: &'static str, kind: Kind, help: &'static str, source: Source) -> Metric {
    Metric { name, kind, help, source }
}

use Kind::{Counter, Gauge, Histogram};
use Source::{
    Global, GlobalSeconds, Labeled as L, Shard, ShardLabeled, ShardLatency, ShardMillisAsSeconds,
    ShardUp,
};

/// Every family, in exposition order.
const METRICS: &[Metric] = &[
    m(
        "polybook_frames_total",
        Counter,
        "WebSocket text frames received",
        Shard(|s| s.store.frames),
    ),
    m("polybook_bytes_total", Counter, "Bytes of text frames received", Shard(|s| s.bytes)),
    m(
        "polybook_frames_pong_total",
        Counter,
        "PONG frames received",
        Shard(|s| s.store.frames_pong),
    ),
    m(
        "polybook_price_change_entries_total",
        Counter,
        "price_change entries seen",
        Shard(|s| s.store.price_change_entries),
    ),
    m(
        "polybook_hash_checks_total",
        Counter,
        "Venue book hashes recomputed",
        Shard(|s| s.store.hash_checks),
    ),
    m(
        "polybook_hash_mismatches_total",
        Counter,
        "Recomputed hashes that differed",
        Shard(|s| s.store.hash_mismatches),
    ),
    m(
        "polybook_hash_ltp_learned_total",
        Counter,
        "Mismatches explained by an unannounced trade price",
        Shard(|s| s.store.hash_ltp_learned),
    ),
    m(
        "polybook_bbo_mismatches_total",
        Counter,
        "Entries whose best bid/ask differed from the book",
        Shard(|s| s.store.bbo_mismatches),
    ),
    m(
        "polybook_untracked_total",
        Counter,
        "Events for tokens the shard does not own",
        Shard(|s| s.store.untracked),
    ),
    m(
        "polybook_overlap_frames_ignored_total",
        Counter,
        "Events from a socket that is not the book's feed",
        Shard(|s| s.store.not_feed),
    ),
    m(
        "polybook_resyncs_total",
        Counter,
        "Books resubscribed after repeated failed checks",
        Shard(|s| s.resyncs),
    ),
    m(
        "polybook_redrives_total",
        Counter,
        "Tokens resubscribed after no first book",
        Shard(|s| s.redrives),
    ),
    m(
        "polybook_reconnects_total",
        Counter,
        "Connections reopened after they ended",
        Shard(|s| s.reconnects),
    ),
    m(
        "polybook_connect_failures_total",
        Counter,
        "Failed connection attempts",
        Shard(|s| s.connect_failures),
    ),
    m(
        "polybook_pong_timeouts_total",
        Counter,
        "Connections ended for lack of PONG",
        Shard(|s| s.pong_timeouts),
    ),
    m(
        "polybook_silence_timeouts_total",
        Counter,
        "Connections ended for data silence",
        Shard(|s| s.silence_timeouts),
    ),
    m(
        "polybook_tokens_migrated_total",
        Counter,
        "Books handed to a new socket by recycles",
        Shard(|s| s.tokens_migrated),
    ),
    m(
        "polybook_handoff_timeouts_total",
        Counter,
        "Books not handed over before a recycle gave up",
        Shard(|s| s.handoff_timeouts),
    ),
    m(
        "polybook_shard_cpu_seconds_total",
        Counter,
        "CPU time of the data shard's thread (ms/1000)",
        ShardMillisAsSeconds(|s| s.cpu_ms),
    ),
    m("polybook_shard_markets", Gauge, "Markets owned by the shard", Shard(|s| s.markets as u64)),
    m(
        "polybook_hash_verdicts_total",
        Counter,
        "Hash claims judged, by verdict",
        ShardLabeled("verdict", |s| verdict_labels(&s.store.hash)),
    ),
    m(
        "polybook_bbo_verdicts_total",
        Counter,
        "Best bid/ask claims judged, by verdict",
        ShardLabeled("verdict", |s| verdict_labels(&s.store.bbo)),
    ),
    m(
        "polybook_events_total",
        Counter,
        "Events applied or counted, by type",
        ShardLabeled("type", |s| {
            let c = &s.store;
            vec![
                ("book", c.events_book),
                ("price_change", c.events_price_change),
                ("tick_size_change", c.events_tick_size_change),
                ("last_trade_price", c.events_last_trade_price),
                ("best_bid_ask", c.events_best_bid_ask),
                ("new_market", c.events_new_market),
                ("market_resolved", c.events_market_resolved),
                ("unknown", c.events_unknown_type),
            ]
        }),
    ),
    m(
        "polybook_decode_errors_total",
        Counter,
        "Frames or events that did not decode, by kind",
        ShardLabeled("kind", |s| s.store.errors.by_kind().to_vec()),
    ),
    m(
        "polybook_books",
        Gauge,
        "Books by status",
        ShardLabeled("status", |s| {
            vec![
                ("seeding", s.books_seeding as u64),
                ("live", s.books_live as u64),
                ("suspect", s.books_suspect as u64),
                ("resyncing", s.books_resyncing as u64),
                ("resolved", s.books_resolved as u64),
                ("stale", s.books_stale as u64),
            ]
        }),
    ),
    m(
        "polybook_recycles_started_total",
        Counter,
        "Connection recycles started",
        Shard(|s| s.recycles_started),
    ),
    m(
        "polybook_recycles_finished_total",
        Counter,
        "Connection recycles finished, by outcome",
        ShardLabeled("outcome", |s| {
            vec![("completed", s.recycles_completed), ("failed", s.recycles_failed)]
        }),
    ),
    m(
        "polybook_apply_latency_seconds",
        Histogram,
        "Frame received to applied, since start",
        ShardLatency(|s| &s.apply_latency),
    ),
    m(
        "polybook_books_suspect_seconds_total",
        Counter,
        "Time books spent suspect, summed over books",
        ShardMillisAsSeconds(|s| s.suspect_ms_total),
    ),
    m(
        "polybook_books_resyncing_seconds_total",
        Counter,
        "Time books spent resyncing, summed over books",
        ShardMillisAsSeconds(|s| s.resyncing_ms_total),
    ),
    m(
        "polybook_resyncs_connection_lost_total",
        Counter,
        "Books resubscribed because their socket ended",
        Shard(|s| s.resyncs_connection_lost),
    ),
    m(
        "polybook_resyncs_after_silence_total",
        Counter,
        "Books resubscribed after a data silence",
        Shard(|s| s.resyncs_after_silence),
    ),
    m(
        "polybook_stream_messages_dropped_total",
        Counter,
        "Stream messages lost to a full hub channel (the client gets a snapshot)",
        Shard(|s| s.stream_dropped),
    ),
    m(
        "polybook_recording_lines_dropped_total",
        Counter,
        "Recording lines lost to a full writer queue (the file says #gap; 0 when not recording)",
        Shard(|s| s.recording.map_or(0, |r| r.lines_dropped)),
    ),
    m(
        "polybook_recording_lines_written_total",
        Counter,
        "Recording lines written (0 when not recording)",
        Shard(|s| s.recording.map_or(0, |r| r.lines_written)),
    ),
    m(
        "polybook_connections",
        Gauge,
        "Connection slots by state",
        ShardLabeled("state", |s| {
            let mut by: BTreeMap<&'static str, u64> = BTreeMap::new();
            for c in &s.connections {
                *by.entry(c.state).or_default() += 1;
            }
            by.into_iter().collect()
        }),
    ),
    m("polybook_shard_up", Gauge, "1 if the shard answered this scrape", ShardUp),
    m(
        "polybook_markets",
        Gauge,
        "Registry markets by lifecycle state",
        L("state", |s| s.markets.iter().map(|(l, n)| (l.name(), *n as u64)).collect()),
    ),
    m("polybook_discovery_runs_total", Counter, "Discovery runs", Global(|s| Some(s.discovery[0]))),
    m(
        "polybook_discovery_failures_total",
        Counter,
        "Discovery runs that failed",
        Global(|s| Some(s.discovery[1])),
    ),
    m(
        "polybook_discovery_requests_total",
        Counter,
        "Gamma requests made",
        Global(|s| Some(s.discovery[2])),
    ),
    m(
        "polybook_discovery_retries_total",
        Counter,
        "Gamma requests retried after 429/5xx",
        Global(|s| Some(s.discovery[3])),
    ),
    m(
        "polybook_discovery_last_success_timestamp_seconds",
        Gauge,
        "Unix time of the last successful discovery run (absent before the first)",
        GlobalSeconds(|s| s.discovery_last_ok),
    ),
    m("polybook_stream_clients", Gauge, "/ws clients connected", Global(|s| Some(s.hub[0]))),
    m(
        "polybook_stream_clients_dropped_slow_total",
        Counter,
        "/ws clients dropped for falling behind",
        Global(|s| Some(s.hub[1])),
    ),
    m(
        "polybook_stream_messages_sent_total",
        Counter,
        "Messages queued to /ws clients",
        Global(|s| Some(s.hub[2])),
    ),
    m(
        "polybook_http_rate_limited_total",
        Counter,
        "HTTP requests and /ws upgrades refused with 429 by the per-address rate limit",
        Global(|s| Some(s.rate_limited)),
    ),
    m(
        "polybook_build_info",
        Gauge,
        "Always 1; the version is a label",
        L("version", |_| vec![(env!("CARGO_PKG_VERSION"), 1)]),
    ),
    m(
        "process_cpu_seconds_total",
        Counter,
        "Total user and system CPU time spent in seconds",
        GlobalSeconds(|s| s.process.cpu_seconds),
    ),
    m(
        "process_resident_memory_bytes",
        Gauge,
        "Resident memory size in bytes",
        Global(|s| s.process.resident_memory_bytes),
    ),
    m(
        "process_start_time_seconds",
        Gauge,
        "Start time of the process since unix epoch in seconds",
        GlobalSeconds(|s| s.process.start_time_seconds),
    ),
    m("process_open_fds", Gauge, "Number of open file descriptors", Global(|s| s.process.open_fds)),
    m(
        "process_max_fds",
        Gauge,
        "Maximum number of open file descriptors",
        Global(|s| s.process.max_fds),
    ),
    m(
        "polybook_nats_queued_messages_total",
        Counter,
        "Messages a shard handed the NATS publisher",
        Shard(|s| s.nats.map_or(0, |n| n.sent)),
    ),
    m(
        "polybook_nats_channel_dropped_messages_total",
        Counter,
        "Messages lost to a full NATS publisher channel (repaired by a snapshot)",
        Shard(|s| s.nats.map_or(0, |n| n.dropped)),
    ),
    m(
        "polybook_nats_connected",
        Gauge,
        "1 while the NATS publisher is connected",
        Global(|s| s.nats.map(|n| u64::from(n.connected))),
    ),
    m(
        "polybook_nats_published_messages_total",
        Counter,
        "Messages published to NATS",
        Global(|s| s.nats.map(|n| n.published)),
    ),
    m(
        "polybook_nats_disconnected_dropped_messages_total",
        Counter,
        "Messages not published because NATS was down (snapshots are republished)",
        Global(|s| s.nats.map(|n| n.dropped_disconnected)),
    ),
    m(
        "polybook_nats_publish_errors_total",
        Counter,
        "NATS publishes refused or timed out",
        Global(|s| s.nats.map(|n| n.publish_errors)),
    ),
    m(
        "polybook_nats_reconnects_total",
        Counter,
        "NATS connections made after the first",
        Global(|s| s.nats.map(|n| n.reconnects)),
    ),
    m(
        "polybook_nats_republished_snapshots_total",
        Counter,
        "Snapshots republished after a NATS connect",
        Global(|s| s.nats.map(|n| n.republished)),
    ),
];

/// `GET /metrics`; `rate_limited` is the API's count of 429s.
pub fn metrics(control: &Control, live: &Streams, rate_limited: u64) -> Response {
    let scrape = {
        let d = control.discovery.borrow();
        let hub = live.hub.borrow();
        Scrape {
            shards: control.fresh_stats(),
            markets: control.registry.borrow().by_state(),
            discovery: [d.runs, d.failures, d.requests, d.retries],
            // The wall time now minus the success's age: an Instant has no wall time.
            discovery_last_ok: d
                .last_ok
                .map(|t| crate::engine::clock::wall_ns() as f64 / 1e9 - t.elapsed().as_secs_f64()),
            hub: [hub.clients() as u64, hub.clients_dropped_slow, hub.messages_sent],
            rate_limited,
            process: ProcessStats::read(),
            nats: control.nats.as_ref().map(|n| {
                use std::sync::atomic::Ordering::Relaxed;
                NatsScrape {
                    connected: n.connected.load(Relaxed),
                    published: n.published.load(Relaxed),
                    dropped_disconnected: n.dropped_disconnected.load(Relaxed),
                    publish_errors: n.publish_errors.load(Relaxed),
                    reconnects: n.reconnects(),
                    republished: n.republished.load(Relaxed),
                }
            }),
        }
    };
    let mut resp = Response::text(200, render(METRICS, &scrape));
    resp.content_type = std::borrow::Cow::Borrowed("text/plain; version=0.0.4; charset=utf-8");
    resp
}

/// Writes every family of `table` with its `# HELP`/`# TYPE` header and samples.
fn render(table: &[Metric], s: &Scrape) -> String {
    let mut out = String::with_capacity(16 << 10);
    for metric in table {
        let name = metric.name;
        let absent = match metric.source {
            Global(get) => get(s).is_none(),
            GlobalSeconds(get) => get(s).is_none(),
            _ => false,
        };
        if absent {
            continue;
        }
        let kind = match metric.kind {
            Counter => "counter",
            Gauge => "gauge",
            Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", metric.help);
        let answering = s.shards.iter().flatten();
        match metric.source {
            Shard(get) => {
                for st in answering {
                    let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", st.shard, get(st));
                }
            }
            ShardMillisAsSeconds(get) => {
                for st in answering {
                    let v = get(st);
                    let (secs, ms) = (v / 1000, v % 1000);
                    let _ = writeln!(out, "{name}{{shard=\"{}\"}} {secs}.{ms:03}", st.shard);
                }
            }
            ShardLabeled(label, get) => {
                for st in answering {
                    for (k, v) in get(st) {
                        let shard = st.shard;
                        let _ = writeln!(out, "{name}{{shard=\"{shard}\",{label}=\"{k}\"}} {v}");
                    }
                }
            }
            ShardUp => {
                for (i, st) in s.shards.iter().enumerate() {
                    let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", u8::from(st.is_some()));
                }
            }
            L(label, get) => {
                for (k, v) in get(s) {
                    let _ = writeln!(out, "{name}{{{label}=\"{k}\"}} {v}");
                }
            }
            Global(get) => {
                if let Some(v) = get(s) {
                    let _ = writeln!(out, "{name} {v}");
                }
            }
            GlobalSeconds(get) => {
                if let Some(v) = get(s) {
                    let _ = writeln!(out, "{name} {v:.3}");
                }
            }
            ShardLatency(get) => {
                for st in answering {
                    write_histogram(&mut out, name, st.shard, get(st));
                }
            }
        }
    }
    out
}

/// A claim counter's samples by verdict (`/metrics` labels, `/stats` key suffixes).
pub fn verdict_labels(c: &CheckCounts) -> Vec<(&'static str, u64)> {
    vec![
        ("matched_now", c.matched_now),
        ("matched_after_run", c.matched_after_run),
        ("matched_later", c.matched_later),
        ("divergent", c.divergent),
        ("superseded", c.superseded),
        ("unverifiable", c.unverifiable),
    ]
}

/// One shard's histogram: cumulative `_bucket`s at the fixed bounds and `+Inf`, `_sum` and
/// `_count`, all in seconds.
fn write_histogram(out: &mut String, name: &str, shard: usize, h: &LatencyBuckets) {
    for (bound, n) in APPLY_LATENCY_BOUNDS_NS.iter().zip(h.cumulative) {
        let le = *bound as f64 / 1e9;
        let _ = writeln!(out, "{name}_bucket{{shard=\"{shard}\",le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{shard=\"{shard}\",le=\"+Inf\"}} {}", h.count);
    let sum = h.sum_ns as f64 / 1e9;
    let _ = writeln!(out, "{name}_sum{{shard=\"{shard}\"}} {sum}");
    let _ = writeln!(out, "{name}_count{{shard=\"{shard}\"}} {}", h.count);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape() -> Scrape {
        let mut a = ShardStats { shard: 0, cpu_ms: 1_234, ..ShardStats::default() };
        a.store.frames = 7;
        a.recycles_started = 4;
        a.recycles_completed = 3;
        a.apply_latency.cumulative = [1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3];
        a.apply_latency.count = 4;
        a.apply_latency.sum_ns = 2_500_000_000;
        Scrape {
            shards: vec![Some(a), None],
            markets: Lifecycle::ALL.map(|l| (l, usize::from(l == Lifecycle::Active) * 3)),
            discovery: [5, 1, 9, 2],
            discovery_last_ok: None,
            hub: [2, 1, 50],
            rate_limited: 6,
            process: ProcessStats { open_fds: Some(12), ..ProcessStats::default() },
            nats: Some(NatsScrape {
                connected: true,
                published: 11,
                dropped_disconnected: 0,
                publish_errors: 0,
                reconnects: 2,
                republished: 0,
            }),
        }
    }

    /// Families whose source had nothing in `scrape()`: left out, header and all.
    const ABSENT: &[&str] = &[
        "polybook_discovery_last_success_timestamp_seconds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_max_fds",
    ];

    #[test]
    fn the_table_renders_every_family_once_with_its_samples() {
        let text = render(METRICS, &scrape());
        for metric in METRICS {
            let header = format!("# TYPE {} ", metric.name);
            let n = text.matches(&header).count();
            let want = usize::from(!ABSENT.contains(&metric.name));
            assert_eq!(n, want, "{}", metric.name);
        }
        for line in [
            "polybook_frames_total{shard=\"0\"} 7",
            "polybook_shard_cpu_seconds_total{shard=\"0\"} 1.234",
            "polybook_shard_up{shard=\"0\"} 1",
            "polybook_shard_up{shard=\"1\"} 0",
            "polybook_markets{state=\"active\"} 3",
            "polybook_markets{state=\"expired\"} 0",
            "polybook_discovery_requests_total 9",
            "polybook_recycles_started_total{shard=\"0\"} 4",
            "polybook_recycles_finished_total{shard=\"0\",outcome=\"completed\"} 3",
            "polybook_recycles_finished_total{shard=\"0\",outcome=\"failed\"} 0",
            "polybook_stream_clients 2",
            "polybook_http_rate_limited_total 6",
            "process_open_fds 12",
            "# TYPE polybook_apply_latency_seconds histogram",
            "polybook_apply_latency_seconds_bucket{shard=\"0\",le=\"0.00001\"} 1",
            "polybook_apply_latency_seconds_bucket{shard=\"0\",le=\"0.000025\"} 2",
            "polybook_apply_latency_seconds_bucket{shard=\"0\",le=\"1\"} 3",
            "polybook_apply_latency_seconds_bucket{shard=\"0\",le=\"+Inf\"} 4",
            "polybook_apply_latency_seconds_sum{shard=\"0\"} 2.5",
            "polybook_apply_latency_seconds_count{shard=\"0\"} 4",
            "polybook_nats_connected 1",
            "polybook_nats_reconnects_total 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        let build = format!("polybook_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        assert!(text.lines().any(|l| l == build), "{text}");
        let silent = text.lines().filter(|l| l.contains("shard=\"1\"")).count();
        assert_eq!(silent, 1, "a silent shard has only its shard_up sample");
    }

    #[test]
    fn no_quantile_labels_and_no_abbreviated_units() {
        let text = render(METRICS, &scrape());
        assert!(!text.contains("quantile="), "quantiles belong to summaries");
        for metric in METRICS {
            for unit in ["_ns", "_ms", "_us"] {
                assert!(!metric.name.contains(unit), "{}: base units only", metric.name);
            }
            let counter = matches!(metric.kind, Counter);
            assert_eq!(metric.name.ends_with("_total"), counter, "{}", metric.name);
        }
    }

    #[test]
    fn metric_names_are_unique() {
        let mut names: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
    }
}
