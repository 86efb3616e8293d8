//! The simulated exchange's state on one executor: the market model, each connection's
//! subscription and outgoing queue, the index from market to subscribed connections, faults in
//! force and counters.
//!
//! It lives in one `RefCell` and is only touched between awaits, so producing an event and
//! queueing its frames, or answering a subscribe with its opening dump, is atomic: a client
//! that applies every frame it receives, in order, stays equal to the model.

use std::collections::{BTreeMap, VecDeque};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use async_tungstenite::tungstenite::Utf8Bytes;
use hashbrown::{HashMap, HashSet};
use polybook::sim::{EventKind, SimExchange, SimFrame};
use polybook::TokenId;
use serde::{Deserialize, Serialize};

use super::fault::{Fault, FaultKind};

/// A WebSocket connection's id, unique for the server's life (ascending in accept order).
pub(crate) type ConnId = u64;

/// Most frames handed to the socket between two flushes.
pub(crate) const BATCH_MAX: usize = 256;

/// The text keepalive reply.
const PONG: Utf8Bytes = Utf8Bytes::from_static("PONG");

/// What the `malformed` fault sends: a `price_change` cut off mid-object, the way a frame
/// truncated by a broken proxy looks.
const MALFORMED: &str = "{\"market\":\"0x5f65177b394277fd294cd75650044e32ba009a95022d88a0c1d5\
                         65897d72f8f1\",\"price_changes\":[{\"asset_id\":\"7182";

/// Per-connection limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub tokens_per_conn_max: usize,
    pub queue_frames_max: usize,
}

/// Why a connection's writer must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kill {
    /// Drop the TCP stream without a close frame (fault).
    Drop,
    /// Close frame 1013 (fault).
    Close1013,
    /// Close frame 1013 because the backlog passed `queue_frames_max`.
    SlowConsumer,
}

/// How a connection ended; counted in `/sim/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The client closed, or its stream ended.
    Client,
    /// No client traffic for `idle_close_ms`.
    Idle,
    /// A read or write failed.
    Error,
    Killed(Kill),
    Shutdown,
}

/// One WebSocket connection as the exchange sees it.
#[derive(Debug, Default)]
pub(crate) struct Conn {
    custom: bool,
    /// Its `type:"market"` frame (or a first subscribe) has been handled.
    opened: bool,
    /// Subscribed tokens within the limit, with their market (None: unknown to the venue).
    tokens: HashMap<TokenId, Option<u32>>,
    /// Tokens accepted beyond `tokens_per_conn_max`: no opening book, no updates.
    ignored: HashSet<TokenId>,
    queue: VecDeque<Utf8Bytes>,
    /// Frames taken by the writer and not yet flushed.
    in_flight: usize,
    waker: Option<Waker>,
    kill: Option<Kill>,
    silence_until: Option<Instant>,
    duplicate_left: u32,
    skip_left: u32,
    frames_sent: u64,
    frames_silenced: u64,
    client_frames: u64,
    client_frames_ignored: u64,
}

impl Conn {
    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn register(&mut self, cx: &Context<'_>) {
        match &self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
    }

    /// Nothing left to write (a connection being killed counts as drained: its queue is
    /// discarded).
    fn is_drained(&self) -> bool {
        self.kill.is_some() || (self.queue.is_empty() && self.in_flight == 0)
    }
}

/// Events generated, by kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EventCounts {
    pub order: u64,
    pub trade: u64,
    pub tick_size_change: u64,
    pub new_market: u64,
    pub resolution: u64,
    pub idle: u64,
}

/// Faults injected, by kind (a fault on every connection counts once per connection).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultCounts {
    pub drop: u64,
    pub close_1013: u64,
    pub silence: u64,
    pub duplicate: u64,
    pub skip: u64,
    pub malformed: u64,
    pub gamma_429: u64,
    pub gamma_500: u64,
    pub gamma_empty: u64,
    pub gamma_truncated: u64,
}

impl FaultCounts {
    fn bump(&mut self, kind: FaultKind) {
        let c = match kind {
            FaultKind::Drop => &mut self.drop,
            FaultKind::Close1013 => &mut self.close_1013,
            FaultKind::Silence => &mut self.silence,
            FaultKind::Duplicate => &mut self.duplicate,
            FaultKind::Skip => &mut self.skip,
            FaultKind::Malformed => &mut self.malformed,
            FaultKind::Gamma429 => &mut self.gamma_429,
            FaultKind::Gamma500 => &mut self.gamma_500,
            FaultKind::GammaEmpty => &mut self.gamma_empty,
            FaultKind::GammaTruncated => &mut self.gamma_truncated,
        };
        *c += 1;
    }
}

/// Connections ended, by cause.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CloseCounts {
    pub client: u64,
    pub idle: u64,
    pub slow_consumer: u64,
    pub fault_drop: u64,
    pub fault_close_1013: u64,
    pub error: u64,
    pub shutdown: u64,
}

/// The `User-Agent` of one kind of request, as the exchange saw it. The venue sits behind
/// Cloudflare, so tests check that every request of the engine names itself.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentSeen {
    pub requests: u64,
    /// Requests without a `User-Agent` header (or with an empty one).
    pub missing: u64,
    /// The last one seen (cut to 256 characters).
    pub last: Option<String>,
}

impl AgentSeen {
    pub(crate) fn note(&mut self, agent: Option<&str>) {
        self.requests += 1;
        match agent.map(str::trim).filter(|a| !a.is_empty()) {
            None => self.missing += 1,
            Some(a) if self.last.as_deref() == Some(a) => {}
            Some(a) => self.last = Some(a.chars().take(256).collect()),
        }
    }
}

/// `User-Agent`s by endpoint kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UserAgents {
    /// `/markets/keyset`, `/markets`.
    pub gamma: AgentSeen,
    /// CLOB REST: `/book`, `/books`.
    pub clob: AgentSeen,
    /// `/ws/market` upgrade requests.
    pub ws: AgentSeen,
}

/// The exchange's counters, as `/sim/status` shows them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SimCounters {
    pub events: u64,
    pub events_by_kind: EventCounts,
    pub frames_generated: u64,
    /// Frames put on connection queues (a frame for three connections counts three times).
    pub frames_queued: u64,
    /// Frames written and flushed to sockets.
    pub frames_sent: u64,
    /// Data frames lost to the `silence` fault.
    pub frames_silenced: u64,
    pub connections_opened: u64,
    pub closes: CloseCounts,
    pub faults: FaultCounts,
    pub client_frames: u64,
    /// Client frames that were not `PING` or a subscription the venue understands.
    pub client_frames_ignored: u64,
    /// A second `type:"market"` frame on an open connection (ignored, like the venue does).
    pub repeated_open_ignored: u64,
    pub pings: u64,
    pub user_agents: UserAgents,
}

/// A client frame on the market channel (the venue tolerates extra keys).
#[derive(Debug, Deserialize)]
struct ClientMsg {
    #[serde(default)]
    assets_ids: Option<Vec<String>>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    operation: Option<String>,
    #[serde(default)]
    initial_dump: Option<bool>,
    #[serde(default)]
    custom_feature_enabled: Option<bool>,
}

/// What the writer should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Work {
    /// Frames were moved into the batch.
    Batch,
    Kill(Kill),
}

/// A `POST /sim/fault` that named a connection that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no connection {0}")]
pub(crate) struct UnknownConn(pub ConnId);

/// See the module docs.
pub(crate) struct State {
    pub ex: SimExchange,
    pub limits: Limits,
    pub paused: bool,
    /// Seeded random faults fire only while this is on (and generation is not paused).
    pub random_faults_on: bool,
    /// Generation target, only for display.
    pub rate: f64,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: ConnId,
    /// Market index -> connections with at least one subscribed token of it (and how many).
    routes: Vec<Vec<(ConnId, u8)>>,
    pub counters: SimCounters,
    gamma_fault: Option<(u16, Instant)>,
    /// Listings still to spoil, oldest first (`gamma_empty`, `gamma_truncated`).
    listing_faults: std::collections::VecDeque<FaultKind>,
    frame_buf: Vec<SimFrame>,
}

impl State {
    pub(crate) fn new(ex: SimExchange, limits: Limits, paused: bool, rate: f64) -> State {
        State {
            ex,
            limits,
            paused,
            random_faults_on: true,
            rate,
            conns: BTreeMap::new(),
            next_conn: 1,
            routes: Vec::new(),
            counters: SimCounters::default(),
            gamma_fault: None,
            listing_faults: std::collections::VecDeque::new(),
            frame_buf: Vec::with_capacity(64),
        }
    }

    pub(crate) fn open_conn(&mut self) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(id, Conn::default());
        self.counters.connections_opened += 1;
        id
    }

    pub(crate) fn close_conn(&mut self, id: ConnId, end: End) {
        let Some(conn) = self.conns.remove(&id) else { return };
        for m in conn.tokens.values().flatten() {
            remove_route(&mut self.routes, *m, id);
        }
        let c = &mut self.counters.closes;
        let counter = match end {
            End::Client => &mut c.client,
            End::Idle => &mut c.idle,
            End::Error => &mut c.error,
            End::Shutdown => &mut c.shutdown,
            End::Killed(Kill::Drop) => &mut c.fault_drop,
            End::Killed(Kill::Close1013) => &mut c.fault_close_1013,
            End::Killed(Kill::SlowConsumer) => &mut c.slow_consumer,
        };
        *counter += 1;
    }

    pub(crate) fn conn_ids(&self) -> Vec<ConnId> {
        self.conns.keys().copied().collect()
    }

    /// Runs `n` model events at `now_ms` and queues their frames; returns the frames made.
    pub(crate) fn step_n(&mut self, n: u64, now_ms: u64) -> u64 {
        let now = Instant::now();
        let before = self.counters.frames_generated;
        let mut buf = std::mem::take(&mut self.frame_buf);
        for _ in 0..n {
            let kind = self.ex.step(now_ms, &mut buf);
            self.count_event(kind);
            for frame in buf.drain(..) {
                self.dispatch(frame, now);
            }
        }
        self.frame_buf = buf;
        self.counters.frames_generated - before
    }

    /// Changes a market's tick now if the model allows it there (a 0.01 tick near an edge),
    /// queueing its frames like a generated event's; tests force tick changes this way, which
    /// the generator makes too rarely to check a handful of subscribed markets.
    pub(crate) fn tick_size_change(&mut self, idx: u32) -> bool {
        let now = Instant::now();
        let mut buf = std::mem::take(&mut self.frame_buf);
        let changed = self.ex.tick_size_change(idx, &mut buf);
        if changed {
            self.count_event(EventKind::TickSizeChange);
        }
        for frame in buf.drain(..) {
            self.dispatch(frame, now);
        }
        self.frame_buf = buf;
        changed
    }

    fn count_event(&mut self, kind: EventKind) {
        self.counters.events += 1;
        let k = &mut self.counters.events_by_kind;
        let c = match kind {
            EventKind::Order => &mut k.order,
            EventKind::Trade => &mut k.trade,
            EventKind::TickSizeChange => &mut k.tick_size_change,
            EventKind::NewMarket => &mut k.new_market,
            EventKind::Resolution => &mut k.resolution,
            EventKind::Idle => &mut k.idle,
        };
        *c += 1;
    }

    /// Queues a frame for every connection it concerns. The whole frame goes out even if the
    /// connection subscribed only one of the market's tokens, as on the venue; a frame of one
    /// token (trade events) only to that token's subscribers.
    fn dispatch(&mut self, frame: SimFrame, now: Instant) {
        self.counters.frames_generated += 1;
        let State { conns, routes, counters, limits, ex, .. } = self;
        // Shared by every queue it lands in: one allocation, reference-counted.
        let text = Utf8Bytes::from(frame.text);
        let only = frame.token.and_then(|o| ex.market(frame.market)?.tokens.get(usize::from(o)));
        if frame.broadcast {
            for conn in conns.values_mut().filter(|c| c.custom) {
                push_data(conn, &text, now, limits.queue_frames_max, counters);
            }
            return;
        }
        let Some(subs) = routes.get(frame.market as usize) else { return };
        for (id, _) in subs {
            let Some(conn) = conns.get_mut(id) else { continue };
            if (frame.custom && !conn.custom) || only.is_some_and(|t| !conn.tokens.contains_key(t))
            {
                continue;
            }
            push_data(conn, &text, now, limits.queue_frames_max, counters);
        }
    }

    /// Handles one client text frame: `PING`, a subscription, or something to ignore.
    pub(crate) fn client_text(&mut self, id: ConnId, text: &str) {
        let now = Instant::now();
        let max = self.limits.queue_frames_max;
        let Some(conn) = self.conns.get_mut(&id) else { return };
        self.counters.client_frames += 1;
        conn.client_frames += 1;
        if text == "PING" {
            self.counters.pings += 1;
            // Queued behind data, as on the venue: a PONG means every earlier frame is out.
            push(conn, PONG, max, &mut self.counters);
            return;
        }
        let Ok(msg) = serde_json::from_str::<ClientMsg>(text) else {
            self.ignore(id);
            return;
        };
        let ids = msg.assets_ids.unwrap_or_default();
        let dump = msg.initial_dump.unwrap_or(true);
        match (msg.operation.as_deref(), msg.kind.as_deref()) {
            (Some(op), _) if op.eq_ignore_ascii_case("subscribe") => {
                if let Some(custom) = msg.custom_feature_enabled {
                    conn.custom = custom;
                }
                conn.opened = true;
                self.subscribe(id, &ids, dump, now);
            }
            (Some(op), _) if op.eq_ignore_ascii_case("unsubscribe") => self.unsubscribe(id, &ids),
            (None, Some(kind)) if kind.eq_ignore_ascii_case("market") => {
                if conn.opened {
                    self.counters.repeated_open_ignored += 1;
                    return;
                }
                conn.opened = true;
                conn.custom = msg.custom_feature_enabled.unwrap_or(false);
                self.subscribe(id, &ids, dump, now);
            }
            _ => self.ignore(id),
        }
    }

    /// A non-text client frame (binary) or one the venue would not understand.
    pub(crate) fn ignore(&mut self, id: ConnId) {
        self.counters.client_frames_ignored += 1;
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.client_frames_ignored += 1;
        }
    }

    /// Adds tokens (those over the limit are remembered but dead) and queues one opening dump
    /// frame for the newly added ones.
    fn subscribe(&mut self, id: ConnId, ids: &[String], dump: bool, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let mut fresh: Vec<TokenId> = Vec::new();
        for t in ids {
            let t = t.as_str();
            if conn.tokens.contains_key(t) || conn.ignored.contains(t) {
                continue;
            }
            if conn.tokens.len() >= self.limits.tokens_per_conn_max {
                conn.ignored.insert(TokenId::new(t));
                continue;
            }
            let found = self.ex.market_of_token(t);
            // Reuse the model's id: one allocation per token however many subscribe it.
            let token = found
                .and_then(|(m, o)| self.ex.market(m)?.tokens.get(usize::from(o)).cloned())
                .unwrap_or_else(|| TokenId::new(t));
            let market = found.map(|(m, _)| m);
            conn.tokens.insert(token.clone(), market);
            if let Some(m) = market {
                add_route(&mut self.routes, m, id);
            }
            fresh.push(token);
        }
        if dump {
            let text = self.ex.opening_dump(fresh.iter().map(TokenId::as_str));
            let max = self.limits.queue_frames_max;
            push_data(conn, &Utf8Bytes::from(text), now, max, &mut self.counters);
        }
    }

    fn unsubscribe(&mut self, id: ConnId, ids: &[String]) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        for t in ids {
            if let Some(Some(m)) = conn.tokens.remove(t.as_str()) {
                remove_route(&mut self.routes, m, id);
            }
            conn.ignored.remove(t.as_str());
        }
    }

    /// Applies a fault to one connection, or to all when `target` is None; returns the
    /// connections hit.
    pub(crate) fn inject(
        &mut self,
        fault: Fault,
        target: Option<ConnId>,
    ) -> Result<Vec<ConnId>, UnknownConn> {
        let now = Instant::now();
        if matches!(fault.kind, FaultKind::GammaEmpty | FaultKind::GammaTruncated) {
            for _ in 0..fault.count.clamp(1, 1000) {
                self.listing_faults.push_back(fault.kind);
            }
            self.counters.faults.bump(fault.kind);
            return Ok(Vec::new());
        }
        if !fault.kind.is_per_connection() {
            let status = if fault.kind == FaultKind::Gamma429 { 429 } else { 500 };
            self.gamma_fault = Some((status, now + fault.duration));
            self.counters.faults.bump(fault.kind);
            return Ok(Vec::new());
        }
        let ids = match target {
            Some(id) if self.conns.contains_key(&id) => vec![id],
            Some(id) => return Err(UnknownConn(id)),
            None => self.conn_ids(),
        };
        let max = self.limits.queue_frames_max;
        for id in &ids {
            let Some(conn) = self.conns.get_mut(id) else { continue };
            match fault.kind {
                FaultKind::Drop | FaultKind::Close1013 => {
                    let kill =
                        if fault.kind == FaultKind::Drop { Kill::Drop } else { Kill::Close1013 };
                    conn.kill.get_or_insert(kill);
                    conn.queue.clear();
                    conn.wake();
                }
                FaultKind::Silence => conn.silence_until = Some(now + fault.duration),
                FaultKind::Duplicate => {
                    conn.duplicate_left = conn.duplicate_left.saturating_add(fault.count)
                }
                FaultKind::Skip => conn.skip_left = conn.skip_left.saturating_add(fault.count),
                FaultKind::Malformed => {
                    push(conn, Utf8Bytes::from_static(MALFORMED), max, &mut self.counters)
                }
                FaultKind::Gamma429
                | FaultKind::Gamma500
                | FaultKind::GammaEmpty
                | FaultKind::GammaTruncated => {}
            }
            self.counters.faults.bump(fault.kind);
        }
        Ok(ids)
    }

    /// The status Gamma must answer with while a Gamma fault lasts.
    pub(crate) fn gamma_fault(&mut self) -> Option<u16> {
        let (status, until) = self.gamma_fault?;
        if Instant::now() < until {
            return Some(status);
        }
        self.gamma_fault = None;
        None
    }

    /// The spoiling of the listing that starts now, if one is pending.
    pub(crate) fn take_listing_fault(&mut self) -> Option<FaultKind> {
        self.listing_faults.pop_front()
    }

    /// The writer's wait: a kill, or frames moved into `batch`, or Pending.
    pub(crate) fn poll_work(
        &mut self,
        id: ConnId,
        batch: &mut Vec<Utf8Bytes>,
        cx: &Context<'_>,
    ) -> Poll<Work> {
        let Some(conn) = self.conns.get_mut(&id) else {
            return Poll::Ready(Work::Kill(Kill::Drop));
        };
        if let Some(kill) = conn.kill {
            return Poll::Ready(Work::Kill(kill));
        }
        if conn.queue.is_empty() {
            conn.register(cx);
            return Poll::Pending;
        }
        let n = conn.queue.len().min(BATCH_MAX);
        batch.clear();
        batch.extend(conn.queue.drain(..n));
        conn.in_flight = n;
        Poll::Ready(Work::Batch)
    }

    /// Ready once the connection must stop (raced against a batch write).
    pub(crate) fn poll_kill(&mut self, id: ConnId, cx: &Context<'_>) -> Poll<()> {
        match self.conns.get_mut(&id) {
            Some(conn) if conn.kill.is_none() => {
                conn.register(cx);
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }

    /// The writer flushed `n` frames.
    pub(crate) fn flushed(&mut self, id: ConnId, n: usize) {
        self.counters.frames_sent += n as u64;
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.in_flight = 0;
            conn.frames_sent += n as u64;
        }
    }

    /// Whether every connection has written everything queued for it.
    pub(crate) fn queues_empty(&self) -> bool {
        self.conns.values().all(Conn::is_drained)
    }

    /// `GET /sim/status`.
    pub(crate) fn status(&self) -> Status<'_> {
        let now = Instant::now();
        let queues_empty = self.queues_empty();
        let connections = self
            .conns
            .iter()
            .map(|(id, c)| ConnStatus {
                id: *id,
                tokens: c.tokens.len(),
                tokens_ignored: c.ignored.len(),
                custom: c.custom,
                frames_sent: c.frames_sent,
                queue_depth: c.queue.len(),
                in_flight: c.in_flight,
                silenced: c.silence_until.is_some_and(|u| now < u),
                silenced_frames: c.frames_silenced,
                duplicate_pending: c.duplicate_left,
                closing: c.kill.is_some(),
                client_frames: c.client_frames,
                client_frames_ignored: c.client_frames_ignored,
            })
            .collect();
        let gamma_fault =
            self.gamma_fault.filter(|(_, until)| now < *until).map(|(s, until)| GammaFaultStatus {
                status: s,
                remaining_ms: u64::try_from(until.saturating_duration_since(now).as_millis())
                    .unwrap_or(u64::MAX),
            });
        Status {
            paused: self.paused,
            at_rest: self.paused && queues_empty,
            queues_empty,
            rate: self.rate,
            now_ms: self.ex.now_ms(),
            markets: self.ex.markets().len(),
            markets_active: self.ex.active_count(),
            counters: &self.counters,
            gamma_fault,
            connections,
        }
    }
}

/// `GET /sim/status` body.
#[derive(Debug, Serialize)]
pub(crate) struct Status<'a> {
    pub paused: bool,
    /// Paused and every queue flushed: a client that applied every frame holds the truth.
    pub at_rest: bool,
    pub queues_empty: bool,
    pub rate: f64,
    pub now_ms: u64,
    pub markets: usize,
    pub markets_active: usize,
    #[serde(flatten)]
    pub counters: &'a SimCounters,
    pub gamma_fault: Option<GammaFaultStatus>,
    pub connections: Vec<ConnStatus>,
}

#[derive(Debug, Serialize)]
pub(crate) struct GammaFaultStatus {
    pub status: u16,
    pub remaining_ms: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct ConnStatus {
    pub id: ConnId,
    pub tokens: usize,
    pub tokens_ignored: usize,
    pub custom: bool,
    pub frames_sent: u64,
    pub queue_depth: usize,
    pub in_flight: usize,
    pub silenced: bool,
    pub silenced_frames: u64,
    pub duplicate_pending: u32,
    pub closing: bool,
    pub client_frames: u64,
    pub client_frames_ignored: u64,
}

/// Queues a data frame, unless the connection is closing or silenced; doubles it while a
/// `duplicate` fault lasts.
fn push_data(
    conn: &mut Conn,
    text: &Utf8Bytes,
    now: Instant,
    max: usize,
    counters: &mut SimCounters,
) {
    if conn.kill.is_some() {
        return;
    }
    if let Some(until) = conn.silence_until {
        if now < until {
            conn.frames_silenced += 1;
            counters.frames_silenced += 1;
            return;
        }
        conn.silence_until = None;
    }
    if conn.skip_left > 0 {
        conn.skip_left -= 1;
        conn.frames_silenced += 1;
        counters.frames_silenced += 1;
        return;
    }
    push(conn, text.clone(), max, counters);
    if conn.duplicate_left > 0 {
        conn.duplicate_left -= 1;
        push(conn, text.clone(), max, counters);
    }
}

/// Queues any frame. A backlog over `max` is what the venue calls a slow consumer: the queue
/// is discarded and the connection closed with 1013.
fn push(conn: &mut Conn, text: Utf8Bytes, max: usize, counters: &mut SimCounters) {
    if conn.kill.is_some() {
        return;
    }
    conn.queue.push_back(text);
    counters.frames_queued += 1;
    if conn.queue.len() > max {
        conn.kill = Some(Kill::SlowConsumer);
        conn.queue.clear();
    }
    conn.wake();
}

fn add_route(routes: &mut Vec<Vec<(ConnId, u8)>>, market: u32, id: ConnId) {
    let m = market as usize;
    if routes.len() <= m {
        routes.resize_with(m + 1, Vec::new);
    }
    let Some(subs) = routes.get_mut(m) else { return };
    match subs.iter_mut().find(|(c, _)| *c == id) {
        Some((_, n)) => *n = n.saturating_add(1),
        None => subs.push((id, 1)),
    }
}

fn remove_route(routes: &mut [Vec<(ConnId, u8)>], market: u32, id: ConnId) {
    let Some(subs) = routes.get_mut(market as usize) else { return };
    if let Some(pos) = subs.iter().position(|(c, _)| *c == id) {
        let n = &mut subs[pos].1;
        *n = n.saturating_sub(1);
        if *n == 0 {
            subs.swap_remove(pos);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polybook::sim::SimConfig;

    fn state(limit: usize, queue_max: usize) -> State {
        let ex = SimExchange::new(SimConfig { seed: 5, markets: 6, ..SimConfig::default() });
        let limits = Limits { tokens_per_conn_max: limit, queue_frames_max: queue_max };
        State::new(ex, limits, true, 0.0)
    }

    fn tokens(st: &State, markets: std::ops::Range<usize>) -> Vec<String> {
        st.ex.markets()[markets]
            .iter()
            .flat_map(|m| m.tokens.iter().map(|t| t.to_string()))
            .collect()
    }

    fn sub_frame(ids: &[String], op: &str) -> String {
        let ids = serde_json::to_string(ids).unwrap_or_default();
        format!("{{\"assets_ids\": {ids}, {op}}}")
    }

    #[test]
    fn subscribe_limit_routes_and_unsubscribe() {
        let mut st = state(3, 1000);
        let id = st.open_conn();
        let ids = tokens(&st, 0..2);
        st.client_text(id, &sub_frame(&ids, "\"type\": \"market\", \"extra\": 1"));
        let conn = &st.conns[&id];
        assert_eq!((conn.tokens.len(), conn.ignored.len(), conn.queue.len()), (3, 1, 1));
        assert_eq!(conn.queue[0].matches("\"event_type\":\"book\"").count(), 3);
        // A repeated opening frame adds nothing.
        st.client_text(id, &sub_frame(&tokens(&st, 2..3), "\"type\":\"market\""));
        assert_eq!(st.counters.repeated_open_ignored, 1);
        assert_eq!(st.conns[&id].tokens.len(), 3);
        assert_eq!(st.routes[0], vec![(id, 2)]);
        assert_eq!(st.routes[1], vec![(id, 1)]);
        st.client_text(id, &sub_frame(&ids[..2], "\"operation\":\"unsubscribe\""));
        assert!(st.routes[0].is_empty());
        st.client_text(id, "{not json");
        st.client_text(id, "PING");
        assert_eq!(st.counters.client_frames_ignored, 1);
        assert_eq!(st.conns[&id].queue.back().map(|t| t.as_str()), Some("PONG"));
        st.close_conn(id, End::Client);
        assert!(st.routes[1].is_empty());
    }

    #[test]
    fn backlog_over_the_limit_is_a_slow_consumer() {
        let mut st = state(100, 5);
        let id = st.open_conn();
        st.client_text(id, &sub_frame(&tokens(&st, 0..6), "\"type\":\"market\""));
        st.step_n(200, st.ex.now_ms());
        assert_eq!(st.conns[&id].kill, Some(Kill::SlowConsumer));
        assert!(st.queues_empty());
    }
}
