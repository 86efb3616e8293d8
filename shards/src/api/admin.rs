//! `/admin/*`: add a market now (a targeted Gamma lookup) and recycle a connection, within
//! `lifecycle.recycle_concurrent_max`. Who may call them is decided in `exposure`.

use polybook::ConnId;
use serde_json::json;

use super::query;
use crate::engine::control::send_changes;
use crate::engine::control::state::Control;
use crate::engine::discovery::lookup;
use crate::engine::mesh::Command;
use crate::engine::supervise;
use crate::net::Response;

/// `POST /admin/markets` body: one of the three keys.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminMarket {
    condition_id: Option<String>,
    slug: Option<String>,
    token_id: Option<String>,
}

/// Adds a market now, without waiting for discovery: a targeted Gamma lookup, then the same
/// registry entry and `Track` command discovery would make. Selection does not apply.
pub async fn add_market(control: &Control, a: AdminMarket) -> Response {
    let (key, value) = match (a.condition_id, a.slug, a.token_id) {
        (Some(v), None, None) => ("condition_ids", v),
        (None, Some(v), None) => ("slug", v),
        (None, None, Some(v)) => ("clob_token_ids", v),
        _ => return Response::error(400, "give exactly one of condition_id, slug, token_id"),
    };
    let (url, limits) = (control.gamma_url.clone(), control.gamma_limits.clone());
    let (tx, rx) = flume::bounded(1);
    let spawned = supervise::spawn_thread("gamma-lookup", move || {
        let _ = tx.send(lookup(&url, key, &value, &limits));
    });
    if spawned.is_err() {
        return Response::error(500, "cannot start the lookup thread");
    }
    let found = match rx.recv_async().await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => return Response::error(502, &format!("gamma: {e}")),
        Err(_) => return Response::error(500, "lookup thread ended"),
    };
    if found.is_empty() {
        return Response::error(404, "no open market with an order book matches");
    }
    let now = control.clock.now_ms();
    let (added, changes) = control.registry.borrow_mut().add(found, now);
    send_changes(control, changes).await;
    let added: Vec<serde_json::Value> = added
        .iter()
        .map(|a| {
            json!({
                "condition_id": a.market.as_str(),
                "tokens": a.tokens.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
                "shard": a.shard.index(),
            })
        })
        .collect();
    Response::json(200, &json!({ "added": added }))
}

/// `POST /admin/recycle/{id}`: starts a make-before-break recycle unless
/// `lifecycle.recycle_concurrent_max` recycles (admin's or the policy's) are in flight.
pub async fn recycle(
    control: &Control,
    gate: &glommio::sync::Semaphore,
    max: usize,
    conn: u32,
) -> Response {
    let conn = ConnId::from_raw(conn);
    let Some(tx) = control.shard(conn.shard.index()) else {
        return Response::error(404, "no such connection");
    };
    let Ok(_turn) = gate.acquire_permit(1).await else {
        return Response::error(503, "shutting down");
    };
    match recycles_in_flight(control).await {
        Err(shard) => Response::error(
            503,
            &format!("shard {shard} did not answer: cannot check lifecycle.recycle_concurrent_max"),
        ),
        Ok(n) if n >= max => Response::error(
            429,
            &format!(
                "{n} recycles in flight and lifecycle.recycle_concurrent_max = {max}: retry once \
                 one has finished (connections with \"recycling\": true in /stats)"
            ),
        )
        .with_header("retry-after", "5"),
        Ok(_) => match query(&tx, |reply| Command::Recycle { conn, reply: Some(reply) }).await {
            Some(true) => Response::json(200, &json!({"recycling": conn.raw()})),
            Some(false) => Response::error(
                409,
                "connection unknown, closing, disconnected or already recycling",
            ),
            None => Response::error(503, "owning shard did not answer"),
        },
    }
}

/// Recycles in flight on every shard, asked now: a cached view could be older than the
/// recycle this very request races with. `Err`: the shard that did not answer.
async fn recycles_in_flight(control: &Control) -> Result<usize, usize> {
    let mut n = 0;
    for (i, tx) in control.shards.iter().enumerate() {
        let stats = query(tx, |reply| Command::Stats { reply }).await.ok_or(i)?;
        n += stats.connections.iter().filter(|c| c.recycling).count();
    }
    Ok(n)
}
