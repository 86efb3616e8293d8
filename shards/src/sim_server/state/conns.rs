//! Connections: subscriptions, the market-to-connection routes, queues and the writer's side.

use std::task::{Context, Poll};
use std::time::Instant;

use async_tungstenite::tungstenite::Utf8Bytes;
use polybook::sim::{EventKind, SimFrame};
use polybook::TokenId;
use serde::Deserialize;

use super::{Conn, ConnId, End, Kill, SimCounters, State, Work, BATCH_MAX};

/// The text keepalive reply.
const PONG: Utf8Bytes = Utf8Bytes::from_static("PONG");

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

impl State {
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
pub(super) fn push(conn: &mut Conn, text: Utf8Bytes, max: usize, counters: &mut SimCounters) {
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
