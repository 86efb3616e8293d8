//! The route table: what each path names, the methods and query parameters it takes, and
//! the order of checks every request meets before its handler runs.

use std::rc::Rc;

use futures_lite::future;
use futures_util::future::LocalBoxFuture;

use super::exposure::is_json;
use super::params::{check_params, parse_param};
use super::{admin, health, markets, metrics, stats, Api};
use crate::net::{Request, Response};

const WEB_INDEX: &str = include_str!("web/index.html");
const WEB_JS: &str = include_str!("web/app.js");
const WEB_CSS: &str = include_str!("web/app.css");

/// What a path names. The method is checked against [`Route::allow`] afterwards, so a known
/// path with the wrong method is 405, never 404.
enum Route {
    Page(&'static str, &'static str),
    Health,
    Ready,
    Stats,
    Metrics,
    Markets,
    Market(String),
    Book(String),
    Ws,
    AdminMarkets,
    AdminRecycle(String),
}

impl Route {
    fn of(path: &str) -> Option<Route> {
        Some(match path {
            // The page is embedded in the binary: no separate server, no Node.js at run time.
            "/" | "/index.html" => Route::Page(WEB_INDEX, "text/html; charset=utf-8"),
            "/app.js" => Route::Page(WEB_JS, "text/javascript; charset=utf-8"),
            "/app.css" => Route::Page(WEB_CSS, "text/css; charset=utf-8"),
            "/health" => Route::Health,
            "/ready" => Route::Ready,
            "/stats" => Route::Stats,
            "/metrics" => Route::Metrics,
            "/markets" => Route::Markets,
            "/ws" => Route::Ws,
            "/admin/markets" => Route::AdminMarkets,
            p => {
                if let Some(id) = p.strip_prefix("/markets/") {
                    Route::Market(id.to_owned())
                } else if let Some(token) = p.strip_prefix("/books/") {
                    Route::Book(token.to_owned())
                } else if let Some(conn) = p.strip_prefix("/admin/recycle/") {
                    Route::AdminRecycle(conn.to_owned())
                } else {
                    return None;
                }
            }
        })
    }

    /// The methods the path takes, as the `Allow` header lists them.
    fn allow(&self) -> &'static str {
        match self {
            Route::AdminMarkets | Route::AdminRecycle(_) => "POST",
            _ => "GET, HEAD",
        }
    }

    /// The query parameters the route reads; `None`: any (the page ignores its query, so a
    /// cache-busting `?v=2` stays harmless).
    fn params(&self) -> Option<&'static [&'static str]> {
        match self {
            Route::Page(..) => None,
            Route::Markets => Some(&["status", "shard", "q", "offset", "limit"]),
            Route::Book(_) => Some(&["depth"]),
            _ => Some(&[]),
        }
    }
}

pub type Answer = LocalBoxFuture<'static, Response>;

impl Api {
    /// Every check a request passes, in the order a hostile client meets them: rate, Host and
    /// Origin (403), admin credentials (401/403), path (404), method (405), content type
    /// (415), query (400). `Err` is the refusal.
    pub(super) fn answer(&self, req: &Request) -> Result<Answer, Response> {
        if !self.limiter.borrow_mut().allow(req.peer.map(|p| p.ip())) {
            return Err(Response::error(429, "too many requests").with_header("retry-after", "1"));
        }
        if let Some(refused) = self.refusal(req) {
            return Err(refused);
        }
        if req.path == "/admin" || req.path.starts_with("/admin/") {
            self.admin_check(req)?;
        }
        let route = Route::of(&req.path).ok_or_else(Response::not_found)?;
        if !route.allow().split(", ").any(|m| m == req.method) {
            return Err(Response::method_not_allowed(route.allow()));
        }
        if req.method == "POST" && !is_json(req) {
            // A page on another site can POST text/plain or a form without asking first; a
            // JSON POST needs a CORS preflight, which this API never grants.
            return Err(Response::error(415, "POST needs Content-Type: application/json"));
        }
        check_params(req, route.params())?;
        let control = Rc::clone(&self.control);
        let answer: Answer = match route {
            Route::Page(body, kind) => {
                let mut resp = Response::text(200, body);
                resp.content_type = std::borrow::Cow::Borrowed(kind);
                Box::pin(future::ready(resp))
            }
            Route::Health => Box::pin(future::ready(health::health(&control))),
            Route::Ready => {
                let pct_min = self.cfg.ready_books_live_pct_min;
                let needs_nats = self.cfg.ready_needs_nats;
                Box::pin(future::ready(health::ready(&control, pct_min, needs_nats)))
            }
            Route::Stats => Box::pin(future::ready(stats::stats(&control, &self.live))),
            Route::Metrics => {
                let refused = self.limiter.borrow().refused;
                Box::pin(future::ready(metrics::metrics(&control, &self.live, refused)))
            }
            Route::Markets => {
                let q = markets::MarketQuery::parse(req, control.shards.len().max(1))?;
                Box::pin(future::ready(markets::list(&control, &q)))
            }
            Route::Market(id) => Box::pin(async move { markets::get(&control, &id).await }),
            Route::Book(token) => {
                let depth = parse_param(req, "depth", "a whole number of levels per side")?;
                Box::pin(async move { markets::book(&control, &token, depth).await })
            }
            Route::Ws => {
                return Err(Response::error(426, "/ws takes WebSocket upgrade requests only")
                    .with_header("upgrade", "websocket"))
            }
            Route::AdminMarkets => {
                let body: admin::AdminMarket = req.body_json().map_err(|e| {
                    Response::error(
                        400,
                        &format!("expected {{\"condition_id\"|\"slug\"|\"token_id\": ...}}: {e}"),
                    )
                })?;
                Box::pin(async move { admin::add_market(&control, body).await })
            }
            Route::AdminRecycle(conn) => {
                let conn = conn.parse::<u32>().map_err(|_| {
                    Response::error(400, "connection id must be a number (see /stats)")
                })?;
                let (gate, max) = (Rc::clone(&self.recycle_gate), self.cfg.recycles_max);
                Box::pin(async move { admin::recycle(&control, &gate, max, conn).await })
            }
        };
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_has_one_route_and_its_methods() {
        assert!(matches!(Route::of("/"), Some(Route::Page(..))));
        assert!(matches!(Route::of("/markets/0xabc"), Some(Route::Market(id)) if id == "0xabc"));
        assert!(matches!(Route::of("/books/123"), Some(Route::Book(t)) if t == "123"));
        assert!(matches!(Route::of("/admin/recycle/7"), Some(Route::AdminRecycle(c)) if c == "7"));
        assert!(Route::of("/nope").is_none() && Route::of("/admin").is_none());
        assert_eq!(Route::of("/admin/markets").map(|r| r.allow()), Some("POST"));
        assert_eq!(Route::of("/stats").map(|r| r.allow()), Some("GET, HEAD"));
        assert_eq!(Route::of("/app.js").and_then(|r| r.params()), None);
        assert_eq!(Route::of("/health").and_then(|r| r.params()), Some(&[][..]));
    }
}
