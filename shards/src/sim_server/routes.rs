//! The exchange's HTTP routes on one port: Gamma (`/markets/keyset`, `/markets`), CLOB REST
//! (`/book`, `/books`), the market channel upgrade (`/ws/market`) and the truth and control
//! endpoints under `/sim/`.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use polybook::sim::gamma::{keyset_page, offset_page, GammaFilter};
use serde::{Deserialize, Serialize};

use super::fault::{Fault, FaultKind, FaultRequest, FAULT_DURATION_MS_DEFAULT};
use super::state::State;
use super::wall_ms;
use super::ws::serve_conn;
use crate::net::{percent_decode, ws_task, Handler, Request, Response, Shutdown, WsTask};

/// The venue's 404 body for a token without a book (protocol doc §7).
pub const NO_ORDERBOOK: &str = "{\"error\":\"No orderbook exists for the requested token id\"}";

/// Most events one `POST /sim/step` may ask for.
pub const STEP_N_MAX: u64 = 1_000_000;

/// Legacy `/markets` refuses offsets beyond this (protocol doc §6.1).
const OFFSET_MAX: usize = 10_000;

/// Gamma's page size when `limit` is absent.
const PAGE_LIMIT_DEFAULT: usize = 20;

/// Routes requests to the shared state.
pub(crate) struct Routes {
    pub state: Rc<RefCell<State>>,
    pub idle: Duration,
    pub shutdown: Shutdown,
}

#[derive(Deserialize)]
struct BooksItem {
    token_id: String,
}

/// One entry of `GET /sim/markets`.
#[derive(Serialize)]
struct MarketOut<'a> {
    condition_id: &'a str,
    tokens: [&'a str; 2],
    active: bool,
    tick_size: &'a str,
    min_order_size: &'a str,
    neg_risk: bool,
}

impl Handler for Routes {
    fn handle(&self, req: &Request) -> Response {
        self.note_agent(req);
        let path = req.path.as_str();
        let get = req.method == "GET" || req.method == "HEAD";
        let post = req.method == "POST";
        match path {
            "/markets/keyset" | "/markets" if get => self.gamma(req),
            "/book" if get => self.book(req),
            "/books" if post => self.books(req),
            "/ws/market" => Response::error(426, "websocket upgrade required"),
            "/sim/markets" if get => self.markets(),
            "/sim/status" if get => self.status(),
            "/sim/pause" | "/sim/resume" if post => self.pause(path == "/sim/pause"),
            "/sim/step" if post => self.step(req),
            "/sim/fault" if post => self.fault(req),
            "/sim/tick_size_change" if post => self.tick_size_change(req),
            "/sim/faults/random/on" | "/sim/faults/random/off" if post => {
                let on = path.ends_with("/on");
                self.state.borrow_mut().random_faults_on = on;
                Response::json(200, &serde_json::json!({ "random_faults": on }))
            }
            p if p.starts_with("/sim/book/") && get => self.truth(p),
            "/markets/keyset" | "/markets" | "/book" | "/sim/markets" | "/sim/status" => {
                Response::method_not_allowed("GET")
            }
            "/books"
            | "/sim/pause"
            | "/sim/resume"
            | "/sim/step"
            | "/sim/fault"
            | "/sim/tick_size_change" => Response::method_not_allowed("POST"),
            _ => Response::not_found(),
        }
    }

    fn upgrade(&self, req: &Request) -> Option<WsTask> {
        if req.path != "/ws/market" {
            return None;
        }
        self.note_agent(req);
        let (state, idle, shutdown) = (Rc::clone(&self.state), self.idle, self.shutdown.clone());
        Some(ws_task(move |ws| serve_conn(state, ws, idle, shutdown)))
    }
}

/// `condition_ids`, `slug` and `clob_token_ids`, each repeatable (and comma-separated).
fn gamma_filter(req: &Request, closed: Option<bool>) -> GammaFilter {
    let list = |name: &str| -> Vec<String> {
        req.query_params(name)
            .flat_map(|v| v.split(','))
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect()
    };
    GammaFilter {
        closed,
        condition_ids: list("condition_ids"),
        slugs: list("slug"),
        clob_token_ids: list("clob_token_ids"),
    }
}

impl Routes {
    fn note_agent(&self, req: &Request) {
        let mut st = self.state.borrow_mut();
        let seen = &mut st.counters.user_agents;
        let seen = match req.path.as_str() {
            "/markets/keyset" | "/markets" => &mut seen.gamma,
            "/book" | "/books" => &mut seen.clob,
            "/ws/market" => &mut seen.ws,
            _ => return,
        };
        seen.note(req.header("user-agent"));
    }

    fn gamma(&self, req: &Request) -> Response {
        let mut st = self.state.borrow_mut();
        if let Some(status) = st.gamma_fault() {
            let resp = Response::error(
                status,
                if status == 429 { "too many requests" } else { "internal server error" },
            );
            return if status == 429 { resp.with_header("retry-after", "1") } else { resp };
        }
        let limit = match req.query_param("limit").map(str::parse::<usize>) {
            None => PAGE_LIMIT_DEFAULT,
            Some(Ok(n)) => n,
            Some(Err(_)) => return Response::error(400, "invalid limit"),
        };
        let closed = match req.query_param("closed") {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(_) => return Response::error(400, "invalid closed"),
        };
        if req.path == "/markets/keyset" {
            if req.query_param("offset").is_some() {
                return Response::error(422, "offset is not supported; use after_cursor");
            }
            let filter = gamma_filter(req, closed);
            let cursor = req.query_param("after_cursor");
            // A listing is an unfiltered enumeration; its first page is where faults strike.
            let listing = cursor.is_none()
                && filter.condition_ids.is_empty()
                && filter.slugs.is_empty()
                && filter.clob_token_ids.is_empty();
            let spoil = if listing { st.take_listing_fault() } else { None };
            if spoil == Some(FaultKind::GammaEmpty) {
                return Response::json_raw(200, "{\"markets\":[]}".to_owned());
            }
            let mut body = keyset_page(&st.ex, cursor, limit, &filter);
            if spoil == Some(FaultKind::GammaTruncated) {
                if let Some(at) = body.rfind(",\"next_cursor\":") {
                    body.truncate(at);
                    body.push('}');
                }
            }
            return Response::json_raw(200, body);
        }
        let offset = match req.query_param("offset").map(str::parse::<usize>) {
            None => 0,
            Some(Ok(n)) if n <= OFFSET_MAX => n,
            Some(Ok(_)) => return Response::error(422, "offset too large, use /markets/keyset"),
            Some(Err(_)) => return Response::error(400, "invalid offset"),
        };
        // Legacy listing: `closed` defaults to false, and the venue flags it as deprecated.
        let filter = gamma_filter(req, closed.or(Some(false)));
        Response::json_raw(200, offset_page(&st.ex, offset, limit, &filter))
            .with_header("deprecation", "true")
            .with_header("sunset", "2026-05-01")
    }

    fn book(&self, req: &Request) -> Response {
        let Some(token) = req.query_param("token_id").filter(|t| !t.is_empty()) else {
            return Response::error(400, "Invalid token id");
        };
        match self.state.borrow_mut().ex.rest_book(token) {
            Some(body) => Response::json_raw(200, body),
            None => Response::json_raw(404, NO_ORDERBOOK),
        }
    }

    fn books(&self, req: &Request) -> Response {
        let Ok(items) = req.body_json::<Vec<BooksItem>>() else {
            return Response::error(400, "Invalid payload");
        };
        let mut st = self.state.borrow_mut();
        let mut out = String::from("[");
        for item in &items {
            if let Some(body) = st.ex.rest_book(&item.token_id) {
                if out.len() > 1 {
                    out.push(',');
                }
                out.push_str(&body);
            }
        }
        out.push(']');
        Response::json_raw(200, out)
    }

    fn truth(&self, path: &str) -> Response {
        let token = percent_decode(path.trim_start_matches("/sim/book/"));
        let st = self.state.borrow();
        // The independent truth, in its own writer: the engine's `Book` and `BookView` must
        // not stand between the simulator and what the tests compare the engine with.
        match st.ex.truth_book(&token) {
            Some(t) => Response::json_raw(200, t.view_json()),
            None => Response::error(404, "unknown token"),
        }
    }

    fn markets(&self) -> Response {
        let st = self.state.borrow();
        let out: Vec<MarketOut<'_>> = st
            .ex
            .markets()
            .iter()
            .map(|m| MarketOut {
                condition_id: m.condition_id.as_str(),
                tokens: [m.tokens[0].as_str(), m.tokens[1].as_str()],
                active: m.is_active(),
                tick_size: m.tick_text(),
                min_order_size: &m.truth(0).min_order_size,
                neg_risk: m.neg_risk,
            })
            .collect();
        Response::json(200, &out)
    }

    fn status(&self) -> Response {
        Response::json(200, &self.state.borrow().status())
    }

    fn pause(&self, paused: bool) -> Response {
        self.state.borrow_mut().paused = paused;
        Response::json(200, &serde_json::json!({ "paused": paused }))
    }

    fn step(&self, req: &Request) -> Response {
        let n = match req.query_param("n").map(str::parse::<u64>) {
            None => 1,
            Some(Ok(n)) if n <= STEP_N_MAX => n,
            Some(_) => return Response::error(400, "n must be an integer up to 1000000"),
        };
        // A caller-chosen clock makes a run reproducible byte for byte.
        let now_ms = match req.query_param("now_ms").map(str::parse::<u64>) {
            None => wall_ms(),
            Some(Ok(t)) => t,
            Some(Err(_)) => return Response::error(400, "invalid now_ms"),
        };
        let mut st = self.state.borrow_mut();
        let frames = st.step_n(n, now_ms);
        let body = serde_json::json!({ "events": n, "frames": frames, "now_ms": st.ex.now_ms() });
        Response::json(200, &body)
    }

    /// `POST /sim/tick_size_change?market=CONDITION_ID`: `{"changed":bool}` (false unless the
    /// market is active with a 0.01 tick and a best price beyond 0.04/0.96).
    fn tick_size_change(&self, req: &Request) -> Response {
        let mut st = self.state.borrow_mut();
        let idx = req.query_param("market").and_then(|m| st.ex.market_index(m));
        let Some(idx) = idx.filter(|&i| st.ex.market(i).is_some_and(|m| m.is_active())) else {
            return Response::error(404, "no such active market");
        };
        let changed = st.tick_size_change(idx);
        Response::json(200, &serde_json::json!({ "changed": changed }))
    }

    fn fault(&self, req: &Request) -> Response {
        let r = match req.body_json::<FaultRequest>() {
            Ok(r) => r,
            Err(e) => return Response::error(400, &format!("bad fault request: {e}")),
        };
        let Some(kind) = FaultKind::parse(&r.kind) else {
            return Response::error(400, &format!("unknown fault kind {:?}", r.kind));
        };
        let fault = Fault {
            kind,
            duration: Duration::from_millis(r.duration_ms.unwrap_or(FAULT_DURATION_MS_DEFAULT)),
            count: r.count.unwrap_or(1),
        };
        match self.state.borrow_mut().inject(fault, r.conn) {
            Ok(conns) => {
                Response::json(200, &serde_json::json!({ "kind": kind.as_str(), "conns": conns }))
            }
            Err(e) => Response::error(404, &e.to_string()),
        }
    }
}
