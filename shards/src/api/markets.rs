//! `/markets` (the registry, filtered and paged), `/markets/{id}` (one market with the top of
//! its books) and `/books/{token}` (a book, asked of its owning shard).

use polybook::registry::{Entry, Lifecycle};
use polybook::TokenId;
use serde_json::{json, Value};

use super::params::{bad_param, parse_param};
use super::query;
use crate::engine::control::state::Control;
use crate::engine::mesh::Command;
use crate::net::{Request, Response};

/// Most markets one `/markets` page holds.
const PAGE_MAX: usize = 1000;

/// `GET /markets` filters: `status`, `shard`, `q` (text in question or slug, or a condition
/// id), `offset`, `limit` (at most [`PAGE_MAX`]).
pub struct MarketQuery {
    status: Option<Lifecycle>,
    shard: Option<usize>,
    q: Option<String>,
    offset: usize,
    limit: usize,
}

impl MarketQuery {
    /// The filters of a `/markets` request; a value out of its domain is 400, never a
    /// silent default.
    pub fn parse(req: &Request, shards: usize) -> Result<MarketQuery, Response> {
        let status = match req.query_param("status") {
            None => None,
            Some(s) => Some(Lifecycle::from_name(s).ok_or_else(|| {
                bad_param("status", s, "one of active, resolved, closed, expired")
            })?),
        };
        let shard_takes = format!("a shard number from 0 to {}", shards - 1);
        let shard = parse_param::<usize>(req, "shard", &shard_takes)?;
        if let Some(s) = shard.filter(|&s| s >= shards) {
            return Err(bad_param("shard", &s.to_string(), &shard_takes));
        }
        let limit_takes = "a whole number from 0 to 1000";
        let limit = parse_param::<usize>(req, "limit", limit_takes)?.unwrap_or(100);
        if limit > PAGE_MAX {
            return Err(bad_param("limit", &limit.to_string(), limit_takes));
        }
        Ok(MarketQuery {
            status,
            shard,
            q: req.query_param("q").map(str::to_lowercase).filter(|q| !q.is_empty()),
            offset: parse_param(req, "offset", "a whole number (0 or more)")?.unwrap_or(0),
            limit,
        })
    }

    fn matches(&self, e: &Entry) -> bool {
        self.status.is_none_or(|s| s == e.state)
            && self.shard.is_none_or(|s| s == e.shard.index())
            && self.q.as_deref().is_none_or(|t| {
                e.market.question.to_lowercase().contains(t)
                    || e.market.slug.to_lowercase().contains(t)
                    || e.market.condition_id.as_str() == t
            })
    }
}

fn market_json(e: &Entry, now_ms: u64) -> Value {
    let m = &e.market;
    json!({
        "condition_id": m.condition_id.as_str(),
        "id": m.id,
        "question": m.question,
        "slug": m.slug,
        "tokens": m.tokens.iter().map(TokenId::as_str).collect::<Vec<_>>(),
        "outcomes": m.outcomes,
        "state": e.state.name(),
        "state_for_ms": now_ms.saturating_sub(e.since_ms),
        "shard": e.shard.index(),
        "end_date": m.end_date,
        "tick_size": m.tick_size,
        "min_order_size": m.min_order_size,
        "neg_risk": m.neg_risk,
    })
}

pub fn list(control: &Control, q: &MarketQuery) -> Response {
    let now = control.clock.now_ms();
    let registry = control.registry.borrow();
    let mut hits: Vec<&Entry> = registry.entries().filter(|e| q.matches(e)).collect();
    // A stable order for paging.
    hits.sort_by(|a, b| a.market.condition_id.cmp(&b.market.condition_id));
    let total = hits.len();
    let page: Vec<Value> =
        hits.into_iter().skip(q.offset).take(q.limit).map(|e| market_json(e, now)).collect();
    Response::json(200, &json!({ "total": total, "offset": q.offset, "markets": page }))
}

pub async fn get(control: &Control, id: &str) -> Response {
    let found = {
        let registry = control.registry.borrow();
        registry.get(id).map(|e| {
            let body = market_json(e, control.clock.now_ms());
            (body, e.market.tokens.clone(), control.shard(e.shard.index()))
        })
    };
    let Some((mut body, tokens, tx)) = found else {
        return Response::error(404, "unknown market");
    };
    let mut books = Vec::new();
    if let Some(tx) = tx {
        for token in tokens {
            let reply = query(&tx, |reply| Command::GetBook { token, depth: Some(1), reply }).await;
            let book = reply
                .flatten()
                .and_then(|j| serde_json::from_str::<Value>(&j).ok())
                .unwrap_or(Value::Null);
            books.push(book);
        }
    }
    if let Some(obj) = body.as_object_mut() {
        obj.insert("books".into(), Value::Array(books));
    }
    Response::json(200, &body)
}

pub async fn book(control: &Control, token: &str, depth: Option<usize>) -> Response {
    let owner = {
        let registry = control.registry.borrow();
        registry.token(token).map(|(_, e)| e.shard.index())
    };
    let Some(tx) = owner.and_then(|i| control.shard(i)) else {
        return Response::error(404, "unknown token");
    };
    let token = TokenId::new(token);
    match query(&tx, |reply| Command::GetBook { token, depth, reply }).await {
        Some(Some(json)) => Response::json_raw(200, json),
        Some(None) => Response::error(404, "token not tracked on its shard"),
        None => Response::error(503, "owning shard did not answer"),
    }
}
