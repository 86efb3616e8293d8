//! The simulated exchange's state on one executor: the market model, each connection's
//! subscription and outgoing queue, the index from market to subscribed connections, faults in
//! force and counters.
//!
//! It lives in one `RefCell` and is only touched between awaits, so producing an event and
//! queueing its frames, or answering a subscribe with its opening dump, is atomic: a client
//! that applies every frame it receives, in order, stays equal to the model.
//!
//! `conns` is the connection side (subscriptions, routing, queues), `faults` injection,
//! `status` the `/sim/status` view and `counters` what it counts.

use std::collections::{BTreeMap, VecDeque};
use std::task::{Context, Waker};
use std::time::Instant;

use async_tungstenite::tungstenite::Utf8Bytes;
use hashbrown::{HashMap, HashSet};
use polybook::sim::{SimExchange, SimFrame};
use polybook::TokenId;

use super::fault::FaultKind;

mod conns;
mod counters;
mod faults;
mod status;

pub use counters::{AgentSeen, CloseCounts, EventCounts, FaultCounts, SimCounters, UserAgents};

/// A WebSocket connection's id, unique for the server's life (ascending in accept order).
pub(crate) type ConnId = u64;

/// Most frames handed to the socket between two flushes.
pub(crate) const BATCH_MAX: usize = 256;

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
