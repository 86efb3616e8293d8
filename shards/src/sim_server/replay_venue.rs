//! `polybook sim --replay RECORDING`: a recording served as a venue. Gamma lists the recorded
//! markets; `/ws/market` plays the recorded frames, paced by their receive times (`--speed`).
//!
//! The recording holds what the engine received on every socket, so an event can be there
//! twice (two sockets during a recycle) or from a socket that no longer fed the book. The
//! recording is therefore replayed once at start-up, exactly as `polybook replay` does, and
//! only frames that changed a book from its feed are played, each to the connections
//! subscribed to a token it changed. A connection that subscribes a token gets, at once, the
//! played frames since that token's last snapshot (its catch-up), then the rest as it plays,
//! so a client that joins late still builds the recorded books. One executor owns the state
//! (`Rc<RefCell<_>>`), so a catch-up and the play never interleave.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Utf8Bytes;
use futures_lite::future::{or, poll_fn};
use futures_util::{SinkExt, StreamExt};
use glommio::{LocalExecutorBuilder, Placement};
use polybook::book::Book;
use polybook::store::{BookUpdate, UpdateSink};

use super::SimServerError;
use crate::net::{ws_task, Handler, Message, Request, Response, Server, ServerConfig, Shutdown};
use crate::replay::ReplayVisitor;

/// How fast to play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speed {
    /// This many times real time (1: as recorded).
    Times(u32),
    /// As fast as the connections take it.
    Max,
}

impl std::str::FromStr for Speed {
    type Err = String;
    fn from_str(s: &str) -> Result<Speed, String> {
        match s {
            "max" => Ok(Speed::Max),
            n => n
                .parse::<u32>()
                .ok()
                .filter(|&n| n > 0)
                .map(Speed::Times)
                .ok_or_else(|| format!("bad speed {s:?}: a whole number > 0, or max")),
        }
    }
}

/// A market as the recording knows it.
#[derive(Debug, Clone, Default)]
struct RecordedMarket {
    tokens: BTreeSet<String>,
    tick: Option<String>,
    min_size: Option<String>,
    neg_risk: bool,
}

/// What a replay of the recording leaves to play.
#[derive(Default)]
pub struct Played {
    /// (receive ns, text, tokens it changed, tokens it snapshotted), in receive order.
    frames: Vec<(u64, Utf8Bytes, Vec<String>, Vec<String>)>,
    markets: BTreeMap<String, RecordedMarket>,
}

impl Played {
    pub fn frames(&self) -> usize {
        self.frames.len()
    }
    pub fn markets(&self) -> usize {
        self.markets.len()
    }
}

/// Collects, per frame, the tokens it changed.
#[derive(Default)]
struct Collect {
    changed: Vec<String>,
    snapshots: Vec<String>,
    out: Vec<(u64, Utf8Bytes, Vec<String>, Vec<String>)>,
    markets: BTreeMap<String, RecordedMarket>,
}

impl UpdateSink for Collect {
    fn on_update(&mut self, update: &BookUpdate, book: &Book) {
        let token = book.token().as_str();
        if !self.changed.iter().any(|t| t == token) {
            self.changed.push(token.to_owned());
        }
        if matches!(update, BookUpdate::Snapshot) {
            self.snapshots.push(token.to_owned());
        }
        let m = self.markets.entry(book.market().as_str().to_owned()).or_default();
        m.tokens.insert(token.to_owned());
        let meta = book.meta();
        m.tick = meta.tick_size.map(|t| t.to_string()).or(m.tick.take());
        m.min_size = meta.min_order_size.map(|t| t.to_string()).or(m.min_size.take());
        m.neg_risk = meta.neg_risk.unwrap_or(m.neg_risk);
    }
}

impl ReplayVisitor for Collect {
    fn after_frame(&mut self, recv_ns: u64, text: &str) {
        if self.changed.is_empty() {
            return;
        }
        let changed = std::mem::take(&mut self.changed);
        let snaps = std::mem::take(&mut self.snapshots);
        self.out.push((recv_ns, Utf8Bytes::from(text.to_owned()), changed, snaps));
    }
}

/// Replays `recording` (a `--record` directory or file), one store per shard, and keeps the
/// frames to play.
pub fn load(recording: &Path) -> std::io::Result<Played> {
    let files = crate::replay::recording_files(recording)?;
    let mut groups: Vec<(String, Vec<PathBuf>)> = Vec::new();
    for f in files {
        let shard = crate::replay::shard_of(&f);
        match groups.last_mut() {
            Some((s, g)) if *s == shard => g.push(f),
            _ => groups.push((shard, vec![f])),
        }
    }
    let mut collect = Collect::default();
    for (_, group) in groups {
        let options = crate::replay::ReplayOptions::default();
        let mut errors = std::io::sink();
        crate::replay::replay_recording_with(&group, &mut errors, options, &mut collect)?;
    }
    let mut frames = collect.out;
    frames.sort_by_key(|f| f.0);
    Ok(Played { frames, markets: collect.markets })
}

/// One connection as the replay venue sees it.
#[derive(Default)]
struct Conn {
    tokens: HashSet<String>,
    queue: VecDeque<Utf8Bytes>,
    waker: Option<Waker>,
}

struct State {
    played: Played,
    /// Frames played so far.
    next: usize,
    /// token -> indices of played frames since (and including) its last snapshot.
    backlog: HashMap<String, Vec<usize>>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
}

impl State {
    fn play_one(&mut self) {
        let i = self.next;
        let Some((_, text, changed, snaps)) = self.played.frames.get(i) else { return };
        for t in snaps {
            self.backlog.insert(t.clone(), Vec::new());
        }
        for t in changed {
            self.backlog.entry(t.clone()).or_default().push(i);
        }
        for conn in self.conns.values_mut() {
            if changed.iter().any(|t| conn.tokens.contains(t)) {
                conn.queue.push_back(text.clone());
                if let Some(w) = conn.waker.take() {
                    w.wake();
                }
            }
        }
        self.next += 1;
    }

    /// A client's text: `PING`, or a subscribe / unsubscribe with `assets_ids`.
    fn client_text(&mut self, id: u64, text: &str) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if text == "PING" {
            conn.queue.push_back(Utf8Bytes::from_static("PONG"));
            if let Some(w) = conn.waker.take() {
                w.wake();
            }
            return;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else { return };
        let ids: Vec<String> = v["assets_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect();
        if v["operation"] == "unsubscribe" {
            for t in &ids {
                conn.tokens.remove(t);
            }
            return;
        }
        let fresh: Vec<String> =
            ids.into_iter().filter(|t| conn.tokens.insert(t.clone())).collect();
        // The catch-up: every played frame since each new token's last snapshot, in order.
        let mut idx: Vec<usize> =
            fresh.iter().filter_map(|t| self.backlog.get(t)).flatten().copied().collect();
        idx.sort_unstable();
        idx.dedup();
        for i in idx {
            if let Some(f) = self.played.frames.get(i) {
                conn.queue.push_back(f.1.clone());
            }
        }
        if let Some(w) = conn.waker.take() {
            w.wake();
        }
    }

    fn poll_batch(&mut self, id: u64, batch: &mut Vec<Utf8Bytes>, cx: &Context<'_>) -> Poll<()> {
        let Some(conn) = self.conns.get_mut(&id) else { return Poll::Ready(()) };
        if conn.queue.is_empty() {
            conn.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        batch.extend(conn.queue.drain(..conn.queue.len().min(256)));
        Poll::Ready(())
    }

    fn gamma_page(&self, req: &Request) -> Response {
        if req.query_param("closed") == Some("true") {
            return Response::json_raw(200, "{\"markets\":[]}".to_owned());
        }
        let limit: usize =
            req.query_param("limit").and_then(|l| l.parse().ok()).unwrap_or(20).clamp(1, 100);
        let after: usize =
            req.query_param("after_cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
        let page: Vec<serde_json::Value> = self
            .played
            .markets
            .iter()
            .enumerate()
            .skip(after)
            .take(limit)
            .map(|(i, (cid, m))| gamma_market(i, cid, m))
            .collect();
        let mut body = serde_json::json!({ "markets": page });
        if after + limit < self.played.markets.len() {
            body["next_cursor"] = serde_json::Value::String((after + limit).to_string());
        }
        Response::json(200, &body)
    }

    fn status(&self) -> Response {
        Response::json(
            200,
            &serde_json::json!({
                "replay": true,
                "frames_total": self.played.frames.len(),
                "frames_played": self.next,
                "done": self.next >= self.played.frames.len(),
                "markets": self.played.markets.len(),
                "connections": self.conns.len(),
            }),
        )
    }
}

/// A Gamma market object for a recorded market, in the shape discovery reads.
fn gamma_market(i: usize, cid: &str, m: &RecordedMarket) -> serde_json::Value {
    let tokens: Vec<&String> = m.tokens.iter().collect();
    let outcomes: Vec<String> = (0..tokens.len()).map(|k| format!("Outcome {k}")).collect();
    let num = |v: &Option<String>| {
        v.as_deref()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    serde_json::json!({
        "id": (i + 1).to_string(),
        "question": format!("Recorded market {cid}"),
        "conditionId": cid,
        "slug": format!("recorded-{i}"),
        "outcomes": serde_json::to_string(&outcomes).unwrap_or_default(),
        "clobTokenIds": serde_json::to_string(&tokens).unwrap_or_default(),
        "active": true,
        "closed": false,
        "archived": false,
        "enableOrderBook": true,
        "acceptingOrders": true,
        "negRisk": m.neg_risk,
        "orderPriceMinTickSize": num(&m.tick),
        "orderMinSize": num(&m.min_size),
    })
}

struct Routes {
    state: Rc<RefCell<State>>,
    shutdown: Shutdown,
}

impl Handler for Routes {
    fn handle(&self, req: &Request) -> Response {
        match req.path.as_str() {
            "/markets/keyset" => self.state.borrow().gamma_page(req),
            "/sim/status" => self.state.borrow().status(),
            "/ws/market" => Response::error(426, "websocket upgrade required"),
            _ => Response::not_found(),
        }
    }

    fn upgrade(&self, req: &Request) -> Option<WsTask> {
        if req.path != "/ws/market" {
            return None;
        }
        let (state, shutdown) = (Rc::clone(&self.state), self.shutdown.clone());
        Some(ws_task(move |ws| serve_conn(state, ws, shutdown)))
    }
}

use crate::net::{ServerWs, WsTask};

async fn serve_conn(state: Rc<RefCell<State>>, ws: ServerWs, shutdown: Shutdown) {
    let id = {
        let mut st = state.borrow_mut();
        st.next_conn += 1;
        let id = st.next_conn;
        st.conns.insert(id, Conn::default());
        id
    };
    let (mut tx, mut rx) = ws.split();
    let read = async {
        while let Some(Ok(m)) = rx.next().await {
            match m {
                Message::Text(t) => state.borrow_mut().client_text(id, t.as_str()),
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    let write = async {
        let mut batch = Vec::with_capacity(256);
        loop {
            poll_fn(|cx| state.borrow_mut().poll_batch(id, &mut batch, cx)).await;
            for text in batch.drain(..) {
                if tx.feed(Message::Text(text)).await.is_err() {
                    return;
                }
            }
            if tx.flush().await.is_err() {
                return;
            }
        }
    };
    or(or(read, write), shutdown.wait()).await;
    state.borrow_mut().conns.remove(&id);
}

/// Plays the frames at `speed`, from the first frame's receive time.
async fn play(state: Rc<RefCell<State>>, speed: Speed, shutdown: Shutdown) {
    let start = Instant::now();
    let first_ns = state.borrow().played.frames.first().map_or(0, |f| f.0);
    loop {
        if shutdown.is_triggered() {
            return;
        }
        let wait = {
            let mut st = state.borrow_mut();
            let mut n_played = 0;
            loop {
                let Some(f) = st.played.frames.get(st.next) else { return };
                if let Speed::Times(n) = speed {
                    let due = Duration::from_nanos(f.0.saturating_sub(first_ns) / u64::from(n));
                    let now = start.elapsed();
                    if due > now {
                        break Some((due - now).min(Duration::from_millis(50)));
                    }
                }
                st.play_one();
                n_played += 1;
                // A slice at a time, so connections get their turns.
                if n_played >= 64 {
                    break None;
                }
            }
        };
        match wait {
            Some(w) => {
                if super::ws::timeout(w, shutdown.wait()).await.is_some() {
                    return;
                }
            }
            None => futures_lite::future::yield_now().await,
        }
    }
}

/// A running replay venue on its own thread and executor.
pub struct ReplayVenueHandle {
    addr: SocketAddr,
    stop: Option<flume::Sender<()>>,
    join: Option<glommio::ExecutorJoinHandle<()>>,
}

impl ReplayVenueHandle {
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws/market", self.addr)
    }
    pub fn stop(mut self) {
        self.shutdown();
    }
    fn shutdown(&mut self) {
        self.stop.take();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for ReplayVenueHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Loads `recording` and serves it on `listen` (see the module docs).
pub fn serve_recording(
    recording: &Path,
    listen: &str,
    speed: Speed,
) -> Result<(ReplayVenueHandle, usize, usize), SimServerError> {
    let played = load(recording)
        .map_err(|e| SimServerError::Config(format!("cannot read {}: {e}", recording.display())))?;
    let (frames, markets) = (played.frames(), played.markets());
    Ok((spawn_replay_venue(played, listen, speed)?, frames, markets))
}

/// Starts serving `played` on `listen`; returns once it listens.
pub fn spawn_replay_venue(
    played: Played,
    listen: &str,
    speed: Speed,
) -> Result<ReplayVenueHandle, SimServerError> {
    let listen = listen.to_owned();
    let (addr_tx, addr_rx) = flume::bounded::<Result<SocketAddr, SimServerError>>(1);
    let (stop_tx, stop_rx) = flume::bounded::<()>(1);
    let builder =
        LocalExecutorBuilder::new(Placement::Unbound).name("replay-venue").io_memory(128 << 10);
    let join = builder
        .spawn(move || async move {
            let server = match Server::bind(listen.as_str(), ServerConfig::default()) {
                Ok(s) => s,
                Err(source) => {
                    let _ = addr_tx.send(Err(SimServerError::Bind { addr: listen, source }));
                    return;
                }
            };
            let _ = addr_tx.send(Ok(server.local_addr()));
            let shutdown = Shutdown::new();
            let trigger = shutdown.clone();
            glommio::spawn_local(async move {
                let _ = stop_rx.recv_async().await;
                trigger.trigger();
            })
            .detach();
            let state = Rc::new(RefCell::new(State {
                played,
                next: 0,
                backlog: HashMap::new(),
                conns: BTreeMap::new(),
                next_conn: 0,
            }));
            let player = glommio::spawn_local(play(Rc::clone(&state), speed, shutdown.clone()));
            let routes = Routes { state, shutdown: shutdown.clone() };
            server.serve(Rc::new(routes), shutdown).await;
            player.await;
        })
        .map_err(|e| SimServerError::Executor(e.to_string()))?;
    let mut handle = ReplayVenueHandle {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        stop: Some(stop_tx),
        join: Some(join),
    };
    match addr_rx.recv() {
        Ok(Ok(addr)) => {
            handle.addr = addr;
            Ok(handle)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(SimServerError::Executor("did not start".into())),
    }
}
