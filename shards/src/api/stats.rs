//! `/stats`: the registry by state, totals over the shards' snapshots, discovery's health,
//! the `/ws` hub, and every shard's snapshot as is.

use serde_json::{json, Map, Value};

use super::hub::Streams;
use super::metrics::verdict_labels;
use crate::engine::control::state::Control;
use crate::engine::mesh::ShardStats;
use crate::net::Response;

/// How one total reads a shard's snapshot.
type Read = fn(&ShardStats) -> u64;

/// The totals summed over shards, by key (verdicts are added per kind).
const TOTALS: &[(&str, Read)] = &[
    ("books", |s| s.books as u64),
    ("books_seeding", |s| s.books_seeding as u64),
    ("books_live", |s| s.books_live as u64),
    ("books_suspect", |s| s.books_suspect as u64),
    ("books_resyncing", |s| s.books_resyncing as u64),
    ("books_resolved", |s| s.books_resolved as u64),
    ("books_stale", |s| s.books_stale as u64),
    ("connections", |s| s.connections.len() as u64),
    ("reconnects", |s| s.reconnects),
    ("frames", |s| s.store.frames),
    ("events_price_change", |s| s.store.events_price_change),
    ("events_book", |s| s.store.events_book),
    ("decode_errors", |s| s.store.errors.total()),
    ("hash_checks", |s| s.store.hash_checks),
    ("hash_mismatches", |s| s.store.hash_mismatches),
    ("untracked", |s| s.store.untracked),
    ("resyncs", |s| s.resyncs),
    ("resyncs_connection_lost", |s| s.resyncs_connection_lost),
    ("resyncs_after_silence", |s| s.resyncs_after_silence),
    ("suspect_ms_total", |s| s.suspect_ms_total),
    ("resyncing_ms_total", |s| s.resyncing_ms_total),
    ("redrives", |s| s.redrives),
    ("recycles_started", |s| s.recycles_started),
    ("recycles_completed", |s| s.recycles_completed),
    ("recycles_failed", |s| s.recycles_failed),
    ("tokens_migrated", |s| s.tokens_migrated),
    ("handoff_timeouts", |s| s.handoff_timeouts),
    ("overlap_frames_ignored", |s| s.store.not_feed),
    ("feed_handoffs", |s| s.store.feed_handoffs),
    ("pong_timeouts", |s| s.pong_timeouts),
    ("silence_timeouts", |s| s.silence_timeouts),
    ("books_marked_suspect", |s| s.store.books_marked_suspect),
    ("books_marked_resyncing", |s| s.store.books_marked_resyncing),
    ("hash_ltp_learned", |s| s.store.hash_ltp_learned),
];

pub fn stats(control: &Control, live: &Streams) -> Response {
    let shards = control.fresh_stats();
    let mut totals = Map::new();
    let mut add = |k: &str, v: u64| {
        let cur = totals.get(k).and_then(Value::as_u64).unwrap_or(0);
        totals.insert(k.to_owned(), json!(cur + v));
    };
    for s in shards.iter().flatten() {
        for &(k, get) in TOTALS {
            add(k, get(s));
        }
        for (k, v) in verdict_labels(&s.store.hash) {
            add(&format!("hash_{k}"), v);
        }
        for (k, v) in verdict_labels(&s.store.bbo) {
            add(&format!("bbo_{k}"), v);
        }
    }
    let registry = control.registry.borrow();
    let markets: Map<String, Value> = registry
        .by_state()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(l, n)| (l.name().to_owned(), json!(n)))
        .collect();
    let hub = live.hub.borrow();
    Response::json(
        200,
        &json!({
            "uptime_ms": control.clock.uptime().as_millis() as u64,
            "markets": markets,
            "markets_total": registry.len(),
            "totals": totals,
            "discovery": discovery_json(control),
            "streams": {
                "clients": hub.clients(),
                "clients_dropped_slow": hub.clients_dropped_slow,
                "messages_sent": hub.messages_sent,
            },
            "nats": nats_json(control, &shards),
            "shards": shards,
        }),
    )
}

/// `[publish.nats]`: the publisher's connection and counters, with what the shards could not
/// hand it (`dropped` counts both: every one is a gap a consumer sees). Null when off.
fn nats_json(control: &Control, shards: &[Option<ShardStats>]) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(n) = control.nats.as_ref() else { return Value::Null };
    let (mut sent, mut at_shards, mut snapshots) = (0u64, 0u64, 0u64);
    for s in shards.iter().flatten().filter_map(|s| s.nats.as_ref()) {
        sent += s.sent;
        at_shards += s.dropped;
        snapshots += s.snapshots;
    }
    let disconnected = n.dropped_disconnected.load(Relaxed);
    json!({
        "connected": n.connected.load(Relaxed),
        "stream_ready": n.stream_ready.load(Relaxed),
        "published": n.published.load(Relaxed),
        "dropped": at_shards + disconnected,
        "dropped_at_shards": at_shards,
        "dropped_disconnected": disconnected,
        "publish_errors": n.publish_errors.load(Relaxed),
        "invalid_subjects": n.invalid_subjects.load(Relaxed),
        "queued_by_shards": sent,
        "snapshots_rendered": snapshots,
        "snapshots_kept": n.snapshots_kept.load(Relaxed),
        "republished": n.republished.load(Relaxed),
        "backlog": n.backlog.load(Relaxed),
        "connects": n.connects.load(Relaxed),
        "reconnects": n.reconnects(),
        "disconnects": n.disconnects.load(Relaxed),
        "last_error": n.last_error(),
    })
}

/// Discovery's stats with the registry's listing counters and the ages of its last success
/// and error.
fn discovery_json(control: &Control) -> Value {
    let d = control.discovery.borrow();
    let mut v = serde_json::to_value(&*d).unwrap_or_default();
    let counters = serde_json::to_value(control.registry.borrow().counters()).unwrap_or_default();
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), counters.as_object()) {
        obj.extend(extra.clone());
        for (key, at) in [("last_ok_ms_ago", d.last_ok), ("last_error_ms_ago", d.last_error_at)] {
            if let Some(t) = at {
                obj.insert(key.into(), json!(t.elapsed().as_millis() as u64));
            }
        }
    }
    v
}
