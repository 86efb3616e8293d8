//! A data shard: one glommio executor that owns its books (a `BookStore`) and a connection
//! group subscribed to exactly its markets' tokens. Frames are parsed and applied on the task
//! that read them: no internal queue, nothing to drop; backpressure is the TCP socket.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_util::{SinkExt, StreamExt};
use hashbrown::HashMap;
use hdrhistogram::Histogram;
use polybook::book::BookStatus;
use polybook::policy::{judge, Backoff, ConnTable, Placement, Verdict, WatchdogLimits};
use polybook::protocol::encode::{subscribe_frames, SubscribeOp};
use polybook::store::{BookUpdate, FeedId, NoSink, UpdateSink};
use polybook::view::BookView;
use polybook::{BookStore, MarketId, StoreConfig, TokenId};

use super::mesh::{Command, ConnStats, MarketSpec, Report, ShardStats};
use crate::net::{connect_ws_with, ConnectOptions, Message, Shutdown};

/// How a data shard connects and watches its connections.
#[derive(Debug, Clone)]
pub struct DataShardConfig {
    pub shard: usize,
    pub ws_url: String,
    pub connect: ConnectOptions,
    pub tokens_per_conn_target: usize,
    pub ids_per_frame_max: usize,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub data_silence: Duration,
    pub first_book_timeout: Duration,
    pub backoff: Backoff,
    pub dynamic_subscribe: bool,
    pub custom_features: bool,
    pub store: StoreConfig,
}

/// Most redrives of one token before it is left Seeding (the venue omits settled tokens).
const REDRIVES_PER_TOKEN_MAX: u8 = 3;

/// Collects what the hot path must act on after a frame: books whose checks kept failing.
#[derive(Default)]
struct ShardSink {
    resync: Vec<TokenId>,
}

impl UpdateSink for ShardSink {
    fn on_update(&mut self, update: &BookUpdate, book: &polybook::Book) {
        if let BookUpdate::Status { to: BookStatus::Resyncing, .. } = update {
            self.resync.push(book.token().clone());
        }
    }
}

#[derive(Default)]
struct Counters {
    /// Books resynced after repeated failed checks (unsubscribe + subscribe for a fresh book).
    resyncs: u64,
    reconnects: u64,
    connect_failures: u64,
    pong_timeouts: u64,
    silence_timeouts: u64,
    redrives: u64,
    bytes: u64,
}

struct Conn {
    feed: u32,
    state: &'static str,
    out: Option<flume::Sender<Message>>,
    kill: Shutdown,
    closing: bool,
    frames: u64,
    reconnects: u64,
    opened_at: Instant,
    /// Last PONG and last data frame on the current socket (written by the reader).
    last_pong: Instant,
    last_data: Instant,
    /// Tokens subscribed on the current socket that have not had their first `book` yet.
    awaiting: HashMap<TokenId, (Instant, u8)>,
}

struct Shard {
    cfg: DataShardConfig,
    store: BookStore,
    table: ConnTable,
    markets: HashMap<MarketId, Vec<TokenId>>,
    conns: HashMap<u32, Conn>,
    next_feed: u32,
    hist: Option<Histogram<u64>>,
    counters: Counters,
    reports: flume::Sender<Report>,
    /// Reports waiting for room on the bounded channel (never dropped; retried each tick).
    pending_reports: std::collections::VecDeque<Report>,
    rng: u64,
}

type ShardRef = Rc<RefCell<Shard>>;

/// Runs a data shard on the current executor until it receives `Command::Shutdown` (or the
/// command channel closes).
pub async fn run(
    cfg: DataShardConfig,
    commands: flume::Receiver<Command>,
    reports: flume::Sender<Report>,
) {
    let shard_id = cfg.shard;
    // 1 ns .. 60 s at 3 significant digits: valid bounds, so this is always Some.
    let hist = Histogram::new_with_bounds(1, 60_000_000_000, 3).ok();
    let shard = Rc::new(RefCell::new(Shard {
        table: ConnTable::new(cfg.tokens_per_conn_target, (shard_id as u32) << 24 | 1),
        store: BookStore::new(cfg.store.clone()),
        markets: HashMap::new(),
        conns: HashMap::new(),
        next_feed: (shard_id as u32) << 24 | 1,
        hist,
        counters: Counters::default(),
        reports,
        pending_reports: std::collections::VecDeque::new(),
        rng: 0x9E37_79B9_7F4A_7C15 ^ shard_id as u64,
        cfg,
    }));
    while let Ok(cmd) = commands.recv_async().await {
        match cmd {
            Command::Track(specs) => track(&shard, specs),
            Command::Untrack(markets) => untrack(&shard, &markets),
            Command::GetBook { token, depth, reply } => {
                let s = shard.borrow();
                let json = s.store.get(token.as_str()).map(|b| book_json(b, depth));
                let _ = reply.send(json);
            }
            Command::Stats { reply } => {
                let _ = reply.send(stats(&shard.borrow()));
            }
            Command::Shutdown => break,
        }
    }
    let mut s = shard.borrow_mut();
    for conn in s.conns.values_mut() {
        conn.closing = true;
        conn.out = None;
        conn.kill.trigger();
    }
    tracing::info!(shard = shard_id, "data shard stopped");
}

/// The BOOK JSON shape plus the parameters the API adds.
pub fn book_json(book: &polybook::Book, depth: Option<usize>) -> String {
    let view = BookView { book, depth };
    let mut v = serde_json::to_value(&view).unwrap_or(serde_json::Value::Null);
    if let Some(obj) = v.as_object_mut() {
        let meta = book.meta();
        obj.insert("min_order_size".into(), serde_json::json!(meta.min_order_size));
        obj.insert("neg_risk".into(), serde_json::json!(meta.neg_risk));
        obj.insert("updated_at_ms".into(), serde_json::json!(book.timestamp_ms()));
    }
    v.to_string()
}

fn track(shard: &ShardRef, specs: Vec<MarketSpec>) {
    let mut new_conns = Vec::new();
    {
        let mut s = shard.borrow_mut();
        let mut per_conn: HashMap<u32, Vec<TokenId>> = HashMap::new();
        for spec in specs {
            if s.markets.contains_key(spec.market.as_str()) {
                for t in &spec.tokens {
                    s.store.track(t.clone(), spec.market.clone(), spec.meta);
                }
                continue;
            }
            for t in &spec.tokens {
                s.store.track(t.clone(), spec.market.clone(), spec.meta);
            }
            let placement = s.table.place(spec.market.clone(), spec.tokens.len());
            s.markets.insert(spec.market.clone(), spec.tokens.clone());
            match placement {
                Placement::New(id) => new_conns.push(id),
                Placement::Existing(id) => per_conn.entry(id).or_default().extend(spec.tokens),
            }
        }
        // Markets added to open connections: dynamic subscribe; the new feed's snapshot
        // seeds each book. Connections still connecting pick them up when they open.
        for (id, tokens) in per_conn {
            if new_conns.contains(&id) {
                continue;
            }
            subscribe_on(&mut s, id, &tokens);
        }
        for &id in &new_conns {
            s.conns.insert(
                id,
                Conn {
                    feed: 0,
                    state: "connecting",
                    out: None,
                    kill: Shutdown::new(),
                    closing: false,
                    frames: 0,
                    reconnects: 0,
                    opened_at: Instant::now(),
                    last_pong: Instant::now(),
                    last_data: Instant::now(),
                    awaiting: HashMap::new(),
                },
            );
        }
    }
    for id in new_conns {
        glommio::spawn_local(conn_task(Rc::clone(shard), id)).detach();
    }
}

/// Sends subscribe frames for `tokens` on an open connection and hands the books to its feed.
fn subscribe_on(s: &mut Shard, conn_id: u32, tokens: &[TokenId]) {
    let custom = s.cfg.custom_features;
    let chunk = s.cfg.ids_per_frame_max;
    let dynamic = s.cfg.dynamic_subscribe;
    let Some(conn) = s.conns.get_mut(&conn_id) else { return };
    let Some(out) = conn.out.clone() else { return };
    if !dynamic {
        // Without dynamic subscribe a connection only ever holds what it opened with: reopen
        // it so the new tokens are in its opening frame.
        conn.kill.trigger();
        return;
    }
    let feed = conn.feed;
    let now = Instant::now();
    for t in tokens {
        conn.awaiting.insert(t.clone(), (now, 0));
    }
    let ids: Vec<&str> = tokens.iter().map(TokenId::as_str).collect();
    for part in ids.chunks(chunk) {
        for f in subscribe_frames(SubscribeOp::Subscribe, part, custom) {
            let _ = out.send(Message::text(f));
        }
    }
    for t in tokens {
        s.store.assign_feed(t.as_str(), FeedId(feed));
    }
}

fn untrack(shard: &ShardRef, markets: &[MarketId]) {
    let mut s = shard.borrow_mut();
    let dynamic = s.cfg.dynamic_subscribe;
    for m in markets {
        let Some(tokens) = s.markets.remove(m.as_str()) else { continue };
        for t in &tokens {
            s.store.untrack(t.as_str());
        }
        let Some(conn_id) = s.table.remove(m.as_str()) else { continue };
        let empty = s.table.close_if_empty(conn_id);
        if let Some(conn) = s.conns.get_mut(&conn_id) {
            for t in &tokens {
                conn.awaiting.remove(t);
            }
            if empty {
                conn.closing = true;
                conn.kill.trigger();
            } else if dynamic {
                if let Some(out) = &conn.out {
                    let ids: Vec<&str> = tokens.iter().map(TokenId::as_str).collect();
                    for f in subscribe_frames(SubscribeOp::Unsubscribe, &ids, false) {
                        let _ = out.send(Message::text(f));
                    }
                }
            }
        }
    }
}

fn tokens_of(s: &Shard, conn_id: u32) -> Vec<TokenId> {
    s.table
        .markets_of(conn_id)
        .iter()
        .filter_map(|m| s.markets.get(m.as_str()))
        .flatten()
        .cloned()
        .collect()
}

fn next_random(s: &mut Shard) -> u64 {
    s.rng ^= s.rng << 13;
    s.rng ^= s.rng >> 7;
    s.rng ^= s.rng << 17;
    s.rng
}

/// One logical connection: connect, subscribe, read and apply until the socket ends or the
/// watchdog gives up, then reconnect with backoff. Each socket gets a fresh feed id, and its
/// books are marked Resyncing until its snapshots arrive.
async fn conn_task(shard: ShardRef, conn_id: u32) {
    let mut attempt: u32 = 0;
    loop {
        let (url, opts, kill) = {
            let s = shard.borrow();
            let Some(conn) = s.conns.get(&conn_id) else { return };
            if conn.closing {
                break;
            }
            (s.cfg.ws_url.clone(), s.cfg.connect.clone(), conn.kill.clone())
        };
        let ws = match connect_ws_with(&url, &opts).await {
            Ok(ws) => ws,
            Err(e) => {
                let delay = {
                    let mut s = shard.borrow_mut();
                    s.counters.connect_failures += 1;
                    let r = next_random(&mut s);
                    s.cfg.backoff.delay_ms(attempt, r)
                };
                tracing::warn!(conn = conn_id, error = %e, delay_ms = delay, "connect failed");
                attempt = attempt.saturating_add(1);
                sleep_or_kill(Duration::from_millis(delay), &kill).await;
                continue;
            }
        };
        let ended_healthy = run_socket(&shard, conn_id, ws).await;
        let (closing, delay) = {
            let mut s = shard.borrow_mut();
            let closing = s.conns.get(&conn_id).is_none_or(|c| c.closing);
            if !closing {
                s.counters.reconnects += 1;
                if let Some(c) = s.conns.get_mut(&conn_id) {
                    c.reconnects += 1;
                    c.state = "backoff";
                    // A fresh kill signal for the next socket.
                    c.kill = Shutdown::new();
                }
            }
            if ended_healthy {
                attempt = 0;
            }
            let r = next_random(&mut s);
            (closing, s.cfg.backoff.delay_ms(attempt, r))
        };
        if closing {
            break;
        }
        attempt = attempt.saturating_add(1);
        let kill = shard.borrow().conns.get(&conn_id).map(|c| c.kill.clone());
        if let Some(kill) = kill {
            sleep_or_kill(Duration::from_millis(delay), &kill).await;
        }
    }
    shard.borrow_mut().conns.remove(&conn_id);
}

async fn sleep_or_kill(d: Duration, kill: &Shutdown) {
    future::or(glommio::timer::sleep(d), kill.wait()).await;
}

/// Serves one socket; returns true if it was up long enough to count as healthy.
async fn run_socket(shard: &ShardRef, conn_id: u32, ws: crate::net::ClientWs) -> bool {
    let opened = Instant::now();
    let (mut sink, mut stream) = ws.split();
    let (out_tx, out_rx) = flume::unbounded::<Message>();
    let (feed, kill, frames) = {
        let mut s = shard.borrow_mut();
        let feed = s.next_feed;
        s.next_feed = s.next_feed.wrapping_add(1);
        let tokens = tokens_of(&s, conn_id);
        for t in &tokens {
            s.store.assign_feed(t.as_str(), FeedId(feed));
        }
        let ids: Vec<&str> = tokens.iter().map(TokenId::as_str).collect();
        let custom = s.cfg.custom_features;
        let mut frames: Vec<String> = Vec::new();
        for (i, part) in ids.chunks(s.cfg.ids_per_frame_max).enumerate() {
            let op = if i == 0 { SubscribeOp::Open } else { SubscribeOp::Subscribe };
            frames.extend(subscribe_frames(op, part, custom));
        }
        if frames.is_empty() {
            frames.extend(subscribe_frames(SubscribeOp::Open, &[], custom));
        }
        let Some(conn) = s.conns.get_mut(&conn_id) else { return false };
        conn.feed = feed;
        conn.state = "open";
        conn.out = Some(out_tx.clone());
        conn.opened_at = opened;
        conn.last_pong = opened;
        conn.last_data = opened;
        conn.awaiting = tokens.iter().map(|t| (t.clone(), (opened, 0))).collect();
        (feed, conn.kill.clone(), frames)
    };
    for f in frames {
        let _ = out_tx.send(Message::text(f));
    }
    let writer = glommio::spawn_local(async move {
        while let Ok(msg) = out_rx.recv_async().await {
            if sink.feed(msg).await.is_err() {
                return;
            }
            // Drain what is queued before one flush: subscribe bursts go out in one write.
            while let Ok(more) = out_rx.try_recv() {
                if sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close(None).await;
    })
    .detach();
    let watchdog =
        glommio::spawn_local(watchdog(Rc::clone(shard), conn_id, out_tx.clone(), kill.clone()))
            .detach();
    let mut kill_wait = kill.wait();
    loop {
        let next = future::or(async { Some(stream.next().await) }, async {
            (&mut kill_wait).await;
            None
        })
        .await;
        let msg = match next {
            None => break,
            Some(None) => break,
            Some(Some(Err(e))) => {
                tracing::info!(conn = conn_id, error = %e, "socket error");
                break;
            }
            Some(Some(Ok(m))) => m,
        };
        let recv = Instant::now();
        match msg {
            Message::Text(text) => {
                let text = text.as_str();
                let mut s = shard.borrow_mut();
                let s = &mut *s;
                s.counters.bytes += text.len() as u64;
                let pong = text == "PONG";
                if let Some(conn) = s.conns.get_mut(&conn_id) {
                    conn.frames += 1;
                    if pong {
                        conn.last_pong = recv;
                    } else {
                        conn.last_data = recv;
                    }
                }
                if pong {
                    continue;
                }
                let mut sink = ShardSink::default();
                let report = s.store.apply_frame_from(FeedId(feed), text, &mut sink);
                if !report.errors.is_empty() {
                    tracing::debug!(conn = conn_id, errors = ?report.errors, "frame errors");
                }
                if !sink.resync.is_empty() {
                    resync(s, conn_id, &sink.resync);
                }
                let ns = recv.elapsed().as_nanos() as u64;
                if let Some(h) = &mut s.hist {
                    h.saturating_record(ns.max(1));
                }
            }
            Message::Close(frame) => {
                tracing::info!(conn = conn_id, ?frame, "venue closed the connection");
                break;
            }
            _ => {}
        }
    }
    drop(watchdog);
    drop(writer);
    kill.trigger();
    let mut s = shard.borrow_mut();
    let tokens = tokens_of(&s, conn_id);
    for t in &tokens {
        s.store.feed_lost(t.as_str(), FeedId(feed), &mut NoSink);
    }
    if let Some(conn) = s.conns.get_mut(&conn_id) {
        conn.out = None;
        conn.feed = 0;
        conn.state = "closed";
    }
    hints_and_resolutions(&mut s);
    opened.elapsed() > Duration::from_secs(30)
}

/// Sends PING on schedule and ends the socket on PONG timeout, data silence, or closing; also
/// redrives tokens whose first `book` is late and forwards hints to control.
async fn watchdog(shard: ShardRef, conn_id: u32, out: flume::Sender<Message>, kill: Shutdown) {
    let start = Instant::now();
    let (ping, limits, first_book) = {
        let s = shard.borrow();
        (
            s.cfg.ping_interval,
            WatchdogLimits {
                pong_timeout_ms: s.cfg.pong_timeout.as_millis() as u64,
                data_silence_ms: s.cfg.data_silence.as_millis() as u64,
            },
            s.cfg.first_book_timeout,
        )
    };
    let tick = ping.min(Duration::from_millis(500));
    let mut next_ping = start;
    while !kill.is_triggered() {
        let now = Instant::now();
        if now >= next_ping {
            let _ = out.send(Message::text("PING"));
            next_ping = now + ping;
        }
        let Some((last_pong, last_data)) =
            shard.borrow().conns.get(&conn_id).map(|c| (c.last_pong, c.last_data))
        else {
            return;
        };
        // Data proves the socket alive too: under load the venue queues PONG behind data.
        let alive = last_pong.max(last_data);
        let ms = |t: Instant| t.saturating_duration_since(start).as_millis() as u64;
        match judge(ms(now), ms(alive), ms(last_data), limits) {
            Verdict::Healthy => {}
            verdict => {
                let mut s = shard.borrow_mut();
                match verdict {
                    Verdict::PongTimeout => s.counters.pong_timeouts += 1,
                    _ => s.counters.silence_timeouts += 1,
                }
                tracing::warn!(conn = conn_id, ?verdict, "watchdog ends the connection");
                kill.trigger();
                return;
            }
        }
        {
            let mut s = shard.borrow_mut();
            redrive_late_tokens(&mut s, conn_id, now, first_book);
            hints_and_resolutions(&mut s);
        }
        future::or(glommio::timer::sleep(tick), kill.wait()).await;
    }
}

fn redrive_late_tokens(s: &mut Shard, conn_id: u32, now: Instant, timeout: Duration) {
    let custom = s.cfg.custom_features;
    let dynamic = s.cfg.dynamic_subscribe;
    let Some(conn) = s.conns.get_mut(&conn_id) else { return };
    let feed = conn.feed;
    let store = &s.store;
    conn.awaiting.retain(|t, _| store.get(t.as_str()).is_some_and(|b| b.feed() != feed));
    let late: Vec<TokenId> = conn
        .awaiting
        .iter()
        .filter(|(_, (at, n))| now.duration_since(*at) > timeout && *n < REDRIVES_PER_TOKEN_MAX)
        .map(|(t, _)| t.clone())
        .collect();
    if late.is_empty() || !dynamic {
        return;
    }
    let Some(out) = conn.out.clone() else { return };
    for t in &late {
        if let Some(entry) = conn.awaiting.get_mut(t) {
            *entry = (now, entry.1 + 1);
        }
    }
    let ids: Vec<&str> = late.iter().map(TokenId::as_str).collect();
    for f in subscribe_frames(SubscribeOp::Unsubscribe, &ids, custom) {
        let _ = out.send(Message::text(f));
    }
    for f in subscribe_frames(SubscribeOp::Subscribe, &ids, custom) {
        let _ = out.send(Message::text(f));
    }
    s.counters.redrives += late.len() as u64;
}

/// Asks the venue for fresh snapshots of books whose integrity checks kept failing: an
/// unsubscribe and a subscribe on the same connection (the venue replays nothing, but a new
/// subscription starts with a `book`).
fn resync(s: &mut Shard, conn_id: u32, tokens: &[TokenId]) {
    let custom = s.cfg.custom_features;
    let Some(out) = s.conns.get(&conn_id).and_then(|c| c.out.clone()) else { return };
    s.counters.resyncs += tokens.len() as u64;
    tracing::warn!(conn = conn_id, tokens = tokens.len(), "resyncing books after failed checks");
    let ids: Vec<&str> = tokens.iter().map(TokenId::as_str).collect();
    for f in subscribe_frames(SubscribeOp::Unsubscribe, &ids, custom) {
        let _ = out.send(Message::text(f));
    }
    for f in subscribe_frames(SubscribeOp::Subscribe, &ids, custom) {
        let _ = out.send(Message::text(f));
    }
}

fn hints_and_resolutions(s: &mut Shard) {
    let hints = s.store.drain_new_market_hints();
    if !hints.is_empty() {
        s.pending_reports.push_back(Report::NewMarkets { shard: s.cfg.shard, hints });
    }
    for m in s.store.drain_resolved_markets() {
        s.pending_reports.push_back(Report::Resolved { shard: s.cfg.shard, market: m });
    }
    while let Some(r) = s.pending_reports.pop_front() {
        match s.reports.try_send(r) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(r)) => {
                s.pending_reports.push_front(r);
                break;
            }
            Err(flume::TrySendError::Disconnected(_)) => {
                s.pending_reports.clear();
                break;
            }
        }
    }
}

fn stats(s: &Shard) -> ShardStats {
    let mut st = ShardStats {
        shard: s.cfg.shard,
        markets: s.markets.len(),
        books: s.store.len(),
        reconnects: s.counters.reconnects,
        connect_failures: s.counters.connect_failures,
        pong_timeouts: s.counters.pong_timeouts,
        silence_timeouts: s.counters.silence_timeouts,
        redrives: s.counters.redrives,
        resyncs: s.counters.resyncs,
        bytes: s.counters.bytes,
        apply_ns_p50: s.hist.as_ref().map_or(0, |h| h.value_at_quantile(0.5)),
        apply_ns_p99: s.hist.as_ref().map_or(0, |h| h.value_at_quantile(0.99)),
        apply_ns_p999: s.hist.as_ref().map_or(0, |h| h.value_at_quantile(0.999)),
        apply_ns_max: s.hist.as_ref().map_or(0, |h| h.max()),
        store: s.store.counters().clone(),
        ..ShardStats::default()
    };
    for b in s.store.books() {
        match b.status() {
            BookStatus::Seeding => st.books_seeding += 1,
            BookStatus::Live => st.books_live += 1,
            BookStatus::Suspect => st.books_suspect += 1,
            BookStatus::Resyncing => st.books_resyncing += 1,
            BookStatus::Resolved => st.books_resolved += 1,
        }
    }
    let loads: HashMap<u32, usize> = s.table.loads().iter().copied().collect();
    for (&id, c) in &s.conns {
        st.connections.push(ConnStats {
            id,
            feed: c.feed,
            state: c.state,
            tokens: loads.get(&id).copied().unwrap_or(0),
            frames: c.frames,
            reconnects: c.reconnects,
            age_ms: c.opened_at.elapsed().as_millis() as u64,
        });
    }
    st.connections.sort_by_key(|c| c.id);
    st
}
