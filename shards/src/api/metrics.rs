//! `/metrics`: Prometheus text exposition. Every metric is a row of [`METRICS`] (name, type,
//! help, and where its values come from) and [`render`] is the one writer, so adding a metric
//! is adding a row. Values come from the shards' stats snapshots (counters live with the
//! shard that owns them; no shared atomics on the hot path) and control's own state.

use std::collections::BTreeMap;
use std::fmt::Write;

use polybook::checks::CheckCounts;
use polybook::registry::Lifecycle;

use crate::engine::control::state::Control;
use crate::engine::mesh::ShardStats;
use crate::net::Response;

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
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
    rss: Option<u64>,
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

use Kind::{Counter, Gauge};
use Source::{Global, Labeled as L, Shard, ShardLabeled, ShardMillisAsSeconds, ShardUp};

/// Every family, in exposition order.
const METRICS: &[Metric] = &[
    m("frames_total", Counter, "WebSocket text frames received", Shard(|s| s.store.frames)),
    m("bytes_total", Counter, "Bytes of text frames received", Shard(|s| s.bytes)),
    m("frames_pong_total", Counter, "PONG frames received", Shard(|s| s.store.frames_pong)),
    m(
        "price_change_entries_total",
        Counter,
        "price_change entries seen",
        Shard(|s| s.store.price_change_entries),
    ),
    m("hash_checks_total", Counter, "Venue book hashes recomputed", Shard(|s| s.store.hash_checks)),
    m(
        "hash_mismatches_total",
        Counter,
        "Recomputed hashes that differed",
        Shard(|s| s.store.hash_mismatches),
    ),
    m(
        "hash_ltp_learned_total",
        Counter,
        "Mismatches explained by an unannounced trade price",
        Shard(|s| s.store.hash_ltp_learned),
    ),
    m(
        "bbo_mismatches_total",
        Counter,
        "Entries whose best bid/ask differed from the book",
        Shard(|s| s.store.bbo_mismatches),
    ),
    m(
        "untracked_total",
        Counter,
        "Events for tokens the shard does not own",
        Shard(|s| s.store.untracked),
    ),
    m(
        "overlap_frames_ignored_total",
        Counter,
        "Events from a socket that is not the book's feed",
        Shard(|s| s.store.not_feed),
    ),
    m(
        "resyncs_total",
        Counter,
        "Books resubscribed after repeated failed checks",
        Shard(|s| s.resyncs),
    ),
    m("redrives_total", Counter, "Tokens resubscribed after no first book", Shard(|s| s.redrives)),
    m(
        "reconnects_total",
        Counter,
        "Connections reopened after they ended",
        Shard(|s| s.reconnects),
    ),
    m(
        "connect_failures_total",
        Counter,
        "Failed connection attempts",
        Shard(|s| s.connect_failures),
    ),
    m(
        "pong_timeouts_total",
        Counter,
        "Connections ended for lack of PONG",
        Shard(|s| s.pong_timeouts),
    ),
    m(
        "silence_timeouts_total",
        Counter,
        "Connections ended for data silence",
        Shard(|s| s.silence_timeouts),
    ),
    m(
        "tokens_migrated_total",
        Counter,
        "Books handed to a new socket by recycles",
        Shard(|s| s.tokens_migrated),
    ),
    m(
        "handoff_timeouts_total",
        Counter,
        "Books not handed over before a recycle gave up",
        Shard(|s| s.handoff_timeouts),
    ),
    m(
        "shard_cpu_seconds_total",
        Counter,
        "CPU time of the data shard's thread (ms/1000)",
        ShardMillisAsSeconds(|s| s.cpu_ms),
    ),
    m("shard_markets", Gauge, "Markets owned by the shard", Shard(|s| s.markets as u64)),
    m(
        "hash_verdicts_total",
        Counter,
        "Hash claims judged, by verdict",
        ShardLabeled("verdict", |s| verdict_labels(&s.store.hash)),
    ),
    m(
        "bbo_verdicts_total",
        Counter,
        "Best bid/ask claims judged, by verdict",
        ShardLabeled("verdict", |s| verdict_labels(&s.store.bbo)),
    ),
    m(
        "events_total",
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
        "decode_errors_total",
        Counter,
        "Frames or events that did not decode, by kind",
        ShardLabeled("kind", |s| s.store.errors.by_kind().to_vec()),
    ),
    m(
        "books",
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
        "recycles_total",
        Counter,
        "Connection recycles by outcome",
        ShardLabeled("outcome", |s| {
            vec![
                ("started", s.recycles_started),
                ("completed", s.recycles_completed),
                ("failed", s.recycles_failed),
            ]
        }),
    ),
    m(
        "apply_latency_ns",
        Gauge,
        "Frame received to applied, quantiles since start",
        ShardLabeled("quantile", |s| {
            vec![
                ("0.5", s.apply_ns_p50),
                ("0.99", s.apply_ns_p99),
                ("0.999", s.apply_ns_p999),
                ("1", s.apply_ns_max),
            ]
        }),
    ),
    m(
        "connections",
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
    m("shard_up", Gauge, "1 if the shard answered this scrape", ShardUp),
    m(
        "markets",
        Gauge,
        "Registry markets by lifecycle state",
        L("state", |s| s.markets.iter().map(|(l, n)| (l.name(), *n as u64)).collect()),
    ),
    m("discovery_runs_total", Counter, "Discovery runs", Global(|s| Some(s.discovery[0]))),
    m(
        "discovery_failures_total",
        Counter,
        "Discovery runs that failed",
        Global(|s| Some(s.discovery[1])),
    ),
    m("discovery_requests_total", Counter, "Gamma requests made", Global(|s| Some(s.discovery[2]))),
    m(
        "discovery_retries_total",
        Counter,
        "Gamma requests retried after 429/5xx",
        Global(|s| Some(s.discovery[3])),
    ),
    m("process_resident_memory_bytes", Gauge, "Resident set size", Global(|s| s.rss)),
    m(
        "nats_queued_messages_total",
        Counter,
        "Messages a shard handed the NATS publisher",
        Shard(|s| s.nats.map_or(0, |n| n.sent)),
    ),
    m(
        "nats_channel_dropped_messages_total",
        Counter,
        "Messages lost to a full NATS publisher channel (repaired by a snapshot)",
        Shard(|s| s.nats.map_or(0, |n| n.dropped)),
    ),
    m(
        "nats_connected",
        Gauge,
        "1 while the NATS publisher is connected",
        Global(|s| s.nats.map(|n| u64::from(n.connected))),
    ),
    m(
        "nats_published_messages_total",
        Counter,
        "Messages published to NATS",
        Global(|s| s.nats.map(|n| n.published)),
    ),
    m(
        "nats_disconnected_dropped_messages_total",
        Counter,
        "Messages not published because NATS was down (snapshots are republished)",
        Global(|s| s.nats.map(|n| n.dropped_disconnected)),
    ),
    m(
        "nats_publish_errors_total",
        Counter,
        "NATS publishes refused or timed out",
        Global(|s| s.nats.map(|n| n.publish_errors)),
    ),
    m(
        "nats_reconnects_total",
        Counter,
        "NATS connections made after the first",
        Global(|s| s.nats.map(|n| n.reconnects)),
    ),
    m(
        "nats_republished_snapshots_total",
        Counter,
        "Snapshots republished after a NATS connect",
        Global(|s| s.nats.map(|n| n.republished)),
    ),
];

/// `GET /metrics`.
pub fn metrics(control: &Control) -> Response {
    let scrape = {
        let d = control.discovery.borrow();
        Scrape {
            shards: control.fresh_stats(),
            markets: control.registry.borrow().by_state(),
            discovery: [d.runs, d.failures, d.requests, d.retries],
            rss: process_rss_bytes(),
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
        if let Global(get) = metric.source {
            if get(s).is_none() {
                continue;
            }
        }
        let kind = match metric.kind {
            Counter => "counter",
            Gauge => "gauge",
        };
        let _ =
            writeln!(out, "# HELP polybook_{name} {}\n# TYPE polybook_{name} {kind}", metric.help);
        let answering = s.shards.iter().flatten();
        match metric.source {
            Shard(get) => {
                for st in answering {
                    let _ = writeln!(out, "polybook_{name}{{shard=\"{}\"}} {}", st.shard, get(st));
                }
            }
            ShardMillisAsSeconds(get) => {
                for st in answering {
                    let v = get(st);
                    let (secs, ms) = (v / 1000, v % 1000);
                    let _ =
                        writeln!(out, "polybook_{name}{{shard=\"{}\"}} {secs}.{ms:03}", st.shard);
                }
            }
            ShardLabeled(label, get) => {
                for st in answering {
                    for (k, v) in get(st) {
                        let shard = st.shard;
                        let _ = writeln!(
                            out,
                            "polybook_{name}{{shard=\"{shard}\",{label}=\"{k}\"}} {v}"
                        );
                    }
                }
            }
            ShardUp => {
                for (i, st) in s.shards.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "polybook_{name}{{shard=\"{i}\"}} {}",
                        u8::from(st.is_some())
                    );
                }
            }
            L(label, get) => {
                for (k, v) in get(s) {
                    let _ = writeln!(out, "polybook_{name}{{{label}=\"{k}\"}} {v}");
                }
            }
            Global(get) => {
                if let Some(v) = get(s) {
                    let _ = writeln!(out, "polybook_{name} {v}");
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

/// VmRSS from /proc (Linux only, like the engine itself).
fn process_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape() -> Scrape {
        let mut a = ShardStats { shard: 0, cpu_ms: 1_234, ..ShardStats::default() };
        a.store.frames = 7;
        Scrape {
            shards: vec![Some(a), None],
            markets: Lifecycle::ALL.map(|l| (l, usize::from(l == Lifecycle::Active) * 3)),
            discovery: [5, 1, 9, 2],
            rss: None,
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

    #[test]
    fn the_table_renders_every_family_once_with_its_samples() {
        let text = render(METRICS, &scrape());
        for metric in METRICS {
            let header = format!("# TYPE polybook_{} ", metric.name);
            let n = text.matches(&header).count();
            let want = usize::from(metric.name != "process_resident_memory_bytes");
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
            "polybook_recycles_total{shard=\"0\",outcome=\"started\"} 0",
            "polybook_nats_connected 1",
            "polybook_nats_reconnects_total 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        let silent = text.lines().filter(|l| l.contains("shard=\"1\"")).count();
        assert_eq!(silent, 1, "a silent shard has only its shard_up sample");
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
