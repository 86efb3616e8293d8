//! `/health` (liveness: every shard answers) and `/ready` (the books can be trusted as a
//! whole), both from the stats snapshots.

use serde_json::json;

use crate::engine::control::state::Control;
use crate::net::Response;

/// 200 while every data shard's snapshot is fresh.
pub fn health(control: &Control) -> Response {
    let stats = control.fresh_stats();
    let down: Vec<usize> =
        stats.iter().enumerate().filter(|(_, s)| s.is_none()).map(|(i, _)| i).collect();
    if down.is_empty() {
        Response::json(200, &json!({"status": "ok", "shards": stats.len()}))
    } else {
        Response::json(503, &json!({"status": "unavailable", "shards_not_answering": down}))
    }
}

/// 200 only when discovery is recent, every shard answers, a connection is up and at least
/// `pct_min` % of tracked books are live (and, if `needs_nats`, NATS is connected with its
/// snapshot stream). Each failing check is named; the NATS state is always in the body.
pub fn ready(control: &Control, pct_min: u8, needs_nats: bool) -> Response {
    let stats = control.fresh_stats();
    let mut failing = Vec::new();
    let limit = control.discovery_interval.saturating_mul(3);
    {
        let d = control.discovery.borrow();
        match d.last_ok {
            Some(at) if at.elapsed() <= limit => {}
            Some(at) => failing.push(json!({
                "check": "discovery",
                "detail": format!(
                    "last success {} ms ago (limit {} ms)",
                    at.elapsed().as_millis(),
                    limit.as_millis()
                ),
                "last_error": d.last_error,
            })),
            None => failing.push(json!({
                "check": "discovery",
                "detail": "no successful discovery run yet",
                "last_error": d.last_error,
            })),
        }
    }
    let down: Vec<usize> =
        stats.iter().enumerate().filter(|(_, s)| s.is_none()).map(|(i, _)| i).collect();
    if !down.is_empty() {
        failing.push(json!({"check": "shards", "shards_not_answering": down}));
    }
    let (mut books, mut live, mut resolved, mut up) = (0usize, 0usize, 0usize, 0usize);
    for s in stats.iter().flatten() {
        books += s.books;
        live += s.books_live;
        resolved += s.books_resolved;
        up += s.connections.iter().filter(|k| k.sockets > 0).count();
    }
    // Resolved books are final and exact: they count as good, not as missing.
    let tracked = books.saturating_sub(resolved);
    if tracked > 0 && up == 0 {
        failing.push(json!({"check": "connections", "detail": "no connection is up"}));
    }
    let pct_min = usize::from(pct_min);
    if tracked > 0 && live * 100 < pct_min * tracked {
        failing.push(json!({
            "check": "books_live",
            "detail": format!("{live} of {tracked} tracked books live (minimum {pct_min} %)"),
        }));
    }
    let nats = control.nats.as_ref().map(|n| {
        let connected = n.connected.load(std::sync::atomic::Ordering::Relaxed);
        let stream = n.stream_ready.load(std::sync::atomic::Ordering::Relaxed);
        (connected, stream)
    });
    if let (true, Some((connected, stream))) = (needs_nats, nats) {
        if !(connected && stream) {
            failing.push(json!({
                "check": "nats",
                "detail": if connected { "snapshot stream not ready" } else { "not connected" },
            }));
        }
    }
    let body = json!({
        "ready": failing.is_empty(),
        "nats_connected": nats.map(|(c, _)| c),
        "failing": failing,
        "books": tracked,
        "books_live": live,
        "connections_up": up,
    });
    Response::json(if failing.is_empty() { 200 } else { 503 }, &body)
}
