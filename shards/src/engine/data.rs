//! A data shard: one glommio executor that owns its books (a `BookStore`) and a connection
//! group subscribed to exactly its markets' tokens. Frames are parsed and applied on the task
//! that read them: no internal queue, nothing to drop; backpressure is the TCP socket.
//!
//! A connection *slot* (one `ConnTable` entry) usually has one socket. A recycle opens a
//! second socket for the same tokens (make-before-break); each book moves to the new socket
//! when that socket's `book` for it arrives (the store's feed handoff), and the old socket is
//! closed once every book has moved. Until then the old socket keeps feeding: nothing is lost.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_util::{SinkExt, StreamExt};
use hashbrown::{HashMap, HashSet};
use hdrhistogram::Histogram;
use polybook::book::BookStatus;
use polybook::policy::{judge, Backoff, ConnTable, Placement, Verdict, WatchdogLimits};
use polybook::protocol::encode::{subscribe_frames, SubscribeOp};
use polybook::store::{BookUpdate, FeedId, UpdateSink};
use polybook::view::BookView;
use polybook::{BookStore, MarketId, StoreConfig, TokenId};

use super::mesh::{Command, ConnStats, MarketSpec, Report, ShardStats};
use super::record::{now_ns, Recorder};
use super::stream::{StreamMsg, StreamTap};
use crate::net::{connect_ws_with, ClientWs, ConnectOptions, Message, Shutdown};

/// How a data shard connects and watches its connections.
#[derive(Clone)]
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
    /// Longest a recycle waits for the new socket to take every book over.
    pub handoff_timeout: Duration,
    pub store: StoreConfig,
    pub handler: Option<HandlerFactory>,
    /// Record every raw frame and feed decision here (`--record DIR`).
    pub record_dir: Option<std::path::PathBuf>,
    /// A socket with no data frame for this long marks its Live books Stale.
    pub stale_after: Duration,
}

impl std::fmt::Debug for dyn BookHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BookHandler")
    }
}

/// `/ws` subscribe snapshots serialised before the shard lets its sockets run again.
const STREAM_SNAPSHOTS_PER_SLICE: usize = 64;

/// Most redrives of one token before it is left Seeding (the venue omits settled tokens).
const REDRIVES_PER_TOKEN_MAX: u8 = 3;

/// A user callback run on the data shard that owns the book, right after each change is
/// applied, with the book itself (no copy, no lock). Keep it short: it runs on the hot path.
pub trait BookHandler {
    fn on_update(&mut self, update: &BookUpdate, book: &polybook::Book);
}

/// Makes one handler per data shard, on that shard's thread (handlers need not be `Send`).
pub type HandlerFactory = std::sync::Arc<dyn Fn(usize) -> Box<dyn BookHandler> + Send + Sync>;

/// Collects what the hot path must act on after a frame (books whose checks kept failing)
/// and calls the user's handler.
struct ShardSink<'h> {
    resync: Vec<TokenId>,
    handler: Option<&'h mut (dyn BookHandler + 'static)>,
    tap: &'h mut StreamTap,
    clock: &'h mut StatusClock,
}

/// Time books spend Suspect or Resyncing, summed over all books (ms), from the moment a book
/// enters the state until it leaves it.
#[derive(Default)]
struct StatusClock {
    since: HashMap<TokenId, (BookStatus, Instant)>,
    suspect_ms: u64,
    resyncing_ms: u64,
    /// Books by status, kept as they change (so stats never scan the books).
    counts: StatusCounts,
}

/// Books by status, indexed by [`status_index`].
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct StatusCounts([usize; 6]);

fn status_index(s: BookStatus) -> usize {
    match s {
        BookStatus::Seeding => 0,
        BookStatus::Live => 1,
        BookStatus::Suspect => 2,
        BookStatus::Resyncing => 3,
        BookStatus::Resolved => 4,
        BookStatus::Stale => 5,
    }
}

impl StatusCounts {
    fn add(&mut self, s: BookStatus) {
        self.0[status_index(s)] += 1;
    }
    fn remove(&mut self, s: BookStatus) {
        let c = &mut self.0[status_index(s)];
        *c = c.saturating_sub(1);
    }
    fn get(&self, s: BookStatus) -> usize {
        self.0[status_index(s)]
    }
}

impl StatusClock {
    fn transition(&mut self, token: &TokenId, to: BookStatus) {
        if let Some((state, at)) = self.since.remove(token.as_str()) {
            let ms = at.elapsed().as_millis() as u64;
            match state {
                BookStatus::Suspect => self.suspect_ms += ms,
                BookStatus::Resyncing => self.resyncing_ms += ms,
                _ => {}
            }
        }
        if matches!(to, BookStatus::Suspect | BookStatus::Resyncing) {
            self.since.insert(token.clone(), (to, Instant::now()));
        }
    }
}

impl UpdateSink for ShardSink<'_> {
    fn on_update(&mut self, update: &BookUpdate, book: &polybook::Book) {
        if let BookUpdate::Status { from, to } = *update {
            self.clock.counts.remove(from);
            self.clock.counts.add(to);
            self.clock.transition(book.token(), to);
            if to == BookStatus::Resyncing {
                self.resync.push(book.token().clone());
            }
        }
        if let Some(h) = self.handler.as_mut() {
            h.on_update(update, book);
        }
        if !self.tap.is_empty() {
            self.tap.on_update(update, book);
        }
    }
}

#[derive(Default)]
struct Counters {
    /// Books resynced after repeated failed checks (unsubscribe + subscribe for a fresh book).
    resyncs: u64,
    /// Books marked Resyncing because their socket ended.
    resyncs_connection_lost: u64,
    /// Stale books resynced when their socket's data resumed.
    resyncs_after_silence: u64,
    reconnects: u64,
    connect_failures: u64,
    pong_timeouts: u64,
    silence_timeouts: u64,
    redrives: u64,
    bytes: u64,
    recycles_started: u64,
    recycles_completed: u64,
    recycles_failed: u64,
    /// Books handed from an old socket to its replacement during recycles.
    tokens_migrated: u64,
    /// Books still on the old socket when a recycle gave up waiting (they resync).
    handoff_timeouts: u64,
}

/// One open socket of a slot.
struct Sock {
    feed: u32,
    out: flume::Sender<Message>,
    kill: Shutdown,
    opened_at: Instant,
    last_pong: Instant,
    last_data: Instant,
    /// Silent for `stale_after`: its Live books were marked Stale.
    stale: bool,
    frames: u64,
    /// Tokens this socket is subscribed to (more than the slot's when unsubscribe is off:
    /// the difference is pollution).
    subscribed: HashSet<TokenId>,
    /// Subscribed tokens that have not had their first `book` from this socket yet.
    awaiting: HashMap<TokenId, (Instant, u8)>,
}

/// A connection slot.
struct Conn {
    /// Oldest first; new subscriptions go to the last (newest) one.
    sockets: Vec<Sock>,
    state: &'static str,
    closing: bool,
    recycling: bool,
    /// Without dynamic subscribe: tokens were added while a recycle was already running, so
    /// another one must follow to subscribe them.
    resubscribe_pending: bool,
    /// Ends the slot's backoff sleeps when it is closed.
    slot_kill: Shutdown,
    reconnects: u64,
    created_at: Instant,
}

impl Conn {
    fn newest(&self) -> Option<&Sock> {
        self.sockets.last()
    }
    fn newest_mut(&mut self) -> Option<&mut Sock> {
        self.sockets.last_mut()
    }
    fn sock_mut(&mut self, feed: u32) -> Option<&mut Sock> {
        self.sockets.iter_mut().find(|s| s.feed == feed)
    }
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
    handler: Option<Box<dyn BookHandler>>,
    tap: StreamTap,
    clock: StatusClock,
    recorder: Option<Recorder>,
    reports: flume::Sender<Report>,
    /// Reports waiting for room on the bounded channel (never dropped; retried each tick).
    pending_reports: std::collections::VecDeque<Report>,
    rng: u64,
}

type ShardRef = Rc<RefCell<Shard>>;

impl Shard {
    /// The store and a sink over the rest of the shard (handler, stream tap, status clock),
    /// borrowed apart so every store call that changes books reports to all of them.
    fn store_and_sink(&mut self) -> (&mut BookStore, ShardSink<'_>) {
        let sink = ShardSink {
            resync: Vec::new(),
            handler: self.handler.as_deref_mut(),
            tap: &mut self.tap,
            clock: &mut self.clock,
        };
        (&mut self.store, sink)
    }
}

/// Runs a data shard on the current executor until it receives `Command::Shutdown` (or the
/// command channel closes).
pub async fn run(
    cfg: DataShardConfig,
    commands: flume::Receiver<Command>,
    reports: flume::Sender<Report>,
    streams: flume::Sender<StreamMsg>,
    stats_out: flume::Sender<ShardStats>,
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
        handler: cfg.handler.as_ref().map(|make| make(shard_id)),
        tap: StreamTap::new(streams),
        clock: StatusClock::default(),
        recorder: cfg.record_dir.as_deref().and_then(|dir| {
            let settings = polybook::capture::RecordingSettings::of(&cfg.store);
            match Recorder::open(dir, shard_id, &settings) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!(shard = shard_id, error = %e, "cannot record; continuing without");
                    None
                }
            }
        }),
        reports,
        pending_reports: std::collections::VecDeque::new(),
        rng: 0x9E37_79B9_7F4A_7C15 ^ shard_id as u64,
        cfg,
    }));
    let settling = Shutdown::new();
    glommio::spawn_local(settle_loop(Rc::clone(&shard), settling.clone())).detach();
    glommio::spawn_local(stats_loop(Rc::clone(&shard), stats_out, settling.clone())).detach();
    while let Ok(cmd) = commands.recv_async().await {
        match cmd {
            Command::Track(specs) => track(&shard, specs),
            Command::Untrack(markets) => untrack(&shard, &markets),
            Command::Recycle { conn, reply } => {
                let started = start_recycle(&shard, conn);
                if let Some(reply) = reply {
                    let _ = reply.send(started);
                }
            }
            Command::GetBook { token, depth, reply } => {
                let s = shard.borrow();
                let json = s.store.get(token.as_str()).map(|b| {
                    let fresh = Freshness {
                        now_ms: wall_ms(),
                        feed_silent_ms: feed_silent_ms(&s, b.feed()),
                    };
                    book_json(b, depth, fresh)
                });
                let _ = reply.send(json);
            }
            Command::Stats { reply } => {
                let _ = reply.send(stats(&shard.borrow()));
            }
            Command::Stream { client, tokens, depth, on } => {
                // Snapshots are serialised a slice at a time so that a client subscribing to
                // thousands of books does not hold the feed up.
                for part in tokens.chunks(STREAM_SNAPSHOTS_PER_SLICE) {
                    {
                        let mut s = shard.borrow_mut();
                        let s = &mut *s;
                        for t in part {
                            if !on {
                                s.tap.unsubscribe(t.as_str());
                            } else if let Some(book) = s.store.get(t.as_str()) {
                                s.tap.subscribe(book, client, depth);
                            }
                        }
                    }
                    glommio::yield_if_needed().await;
                }
            }
            Command::Shutdown => break,
        }
    }
    settling.trigger();
    let mut s = shard.borrow_mut();
    // The recording ends with the books as they are now: sockets closing below are shutdown,
    // not venue events, and must not mark the replayed books Resyncing.
    if let Some(mut r) = s.recorder.take() {
        r.flush();
    }
    for conn in s.conns.values_mut() {
        conn.closing = true;
        conn.slot_kill.trigger();
        for sock in &conn.sockets {
            sock.kill.trigger();
        }
    }
    tracing::info!(shard = shard_id, "data shard stopped");
}

/// How fresh a book is, from the data shard's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct Freshness {
    pub now_ms: u64,
    /// Time since the book's connection last delivered a data frame (None: no connection).
    pub feed_silent_ms: Option<u64>,
}

/// How often a data shard hands control its stats: the API answers from that copy, so no
/// request ever makes a data shard scan anything.
pub const STATS_EVERY: Duration = Duration::from_millis(250);

async fn stats_loop(shard: ShardRef, out: flume::Sender<ShardStats>, stop: Shutdown) {
    while !stop.is_triggered() {
        repair_stream_gaps(&mut shard.borrow_mut());
        let st = stats(&shard.borrow());
        // A full channel means control is behind; it gets the next one.
        if let Err(flume::TrySendError::Disconnected(_)) = out.try_send(st) {
            return;
        }
        future::or(glommio::timer::sleep(STATS_EVERY), stop.wait()).await;
    }
}

/// Streamed tokens that lost a message and had no update since get their snapshot now.
fn repair_stream_gaps(s: &mut Shard) {
    let gapped: Vec<TokenId> = s.tap.gaps().cloned().collect();
    for t in gapped {
        match s.store.get(t.as_str()) {
            Some(book) => s.tap.repair(book),
            None => s.tap.untracked(&t),
        }
    }
}

/// How often the store's open integrity claims are judged against the passing time.
const SETTLE_EVERY: Duration = Duration::from_millis(100);

/// Lets the store's clock pass: runs that went quiet end, windows that passed judge their
/// claims. Books that turn Resyncing are resubscribed on the socket that feeds them.
async fn settle_loop(shard: ShardRef, stop: Shutdown) {
    while !stop.is_triggered() {
        future::or(glommio::timer::sleep(SETTLE_EVERY), stop.wait()).await;
        let mut s = shard.borrow_mut();
        let s = &mut *s;
        let now = wall_ms();
        if let Some(r) = s.recorder.as_mut() {
            r.settle(now);
        }
        let (store, mut sink) = s.store_and_sink();
        store.settle(now, &mut sink);
        let tokens = sink.resync;
        if tokens.is_empty() {
            continue;
        }
        s.counters.resyncs += tokens.len() as u64;
        let mut by_feed: HashMap<u32, Vec<TokenId>> = HashMap::new();
        for t in tokens {
            if let Some(feed) = s.store.get(t.as_str()).map(polybook::Book::feed) {
                by_feed.entry(feed).or_default().push(t);
            }
        }
        for (feed, tokens) in by_feed {
            let conn = s
                .conns
                .iter()
                .find(|(_, c)| c.sockets.iter().any(|k| k.feed == feed))
                .map(|(&id, _)| id);
            if let Some(conn) = conn {
                resync(s, conn, feed, &tokens);
            }
        }
    }
}

/// The BOOK JSON shape plus the parameters and freshness the API adds.
pub fn book_json(book: &polybook::Book, depth: Option<usize>, fresh: Freshness) -> String {
    let view = BookView { book, depth };
    let mut v = serde_json::to_value(&view).unwrap_or(serde_json::Value::Null);
    if let Some(obj) = v.as_object_mut() {
        let meta = book.meta();
        obj.insert("min_order_size".into(), serde_json::json!(meta.min_order_size));
        obj.insert("neg_risk".into(), serde_json::json!(meta.neg_risk));
        obj.insert("updated_at_ms".into(), serde_json::json!(book.timestamp_ms()));
        let received = book.received_ms();
        obj.insert("received_at_ms".into(), serde_json::json!(received));
        let age = (received > 0).then(|| fresh.now_ms.saturating_sub(received));
        obj.insert("age_ms".into(), serde_json::json!(age));
        obj.insert("feed_silent_ms".into(), serde_json::json!(fresh.feed_silent_ms));
    }
    v.to_string()
}

/// Unix ms from the wall clock: the stamp the store puts on the books it changes.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How long the socket `feed` has been without a data frame.
fn feed_silent_ms(s: &Shard, feed: u32) -> Option<u64> {
    s.conns
        .values()
        .flat_map(|c| c.sockets.iter())
        .find(|k| k.feed == feed)
        .map(|k| k.last_data.elapsed().as_millis() as u64)
}

fn track(shard: &ShardRef, specs: Vec<MarketSpec>) {
    let mut new_conns = Vec::new();
    let mut to_recycle = Vec::new();
    {
        let mut s = shard.borrow_mut();
        let mut per_conn: HashMap<u32, Vec<TokenId>> = HashMap::new();
        for spec in specs {
            if let Some(r) = s.recorder.as_mut() {
                let ids: Vec<&str> = spec.tokens.iter().map(TokenId::as_str).collect();
                r.track(spec.market.as_str(), &spec.meta, &ids);
            }
            for t in &spec.tokens {
                if s.store.get(t.as_str()).is_none() {
                    s.clock.counts.add(BookStatus::Seeding);
                }
                s.store.track(t.clone(), spec.market.clone(), spec.meta);
            }
            if s.markets.contains_key(spec.market.as_str()) {
                continue;
            }
            let placement = s.table.place(spec.market.clone(), spec.tokens.len());
            s.markets.insert(spec.market.clone(), spec.tokens.clone());
            match placement {
                Placement::New(id) => new_conns.push(id),
                Placement::Existing(id) => per_conn.entry(id).or_default().extend(spec.tokens),
            }
        }
        // Markets added to open slots: dynamic subscribe on the newest socket (its snapshot
        // seeds each book). Without dynamic subscribe the slot is recycled so that its new
        // socket opens with every token. Slots still connecting pick them up when they open.
        for (id, tokens) in per_conn {
            if new_conns.contains(&id) {
                continue;
            }
            if s.cfg.dynamic_subscribe {
                subscribe_on(&mut s, id, &tokens);
            } else {
                to_recycle.push(id);
            }
        }
        for &id in &new_conns {
            s.conns.insert(
                id,
                Conn {
                    sockets: Vec::new(),
                    state: "connecting",
                    closing: false,
                    recycling: false,
                    resubscribe_pending: false,
                    slot_kill: Shutdown::new(),
                    reconnects: 0,
                    created_at: Instant::now(),
                },
            );
        }
    }
    for id in new_conns {
        glommio::spawn_local(slot_task(Rc::clone(shard), id, None)).detach();
    }
    for id in to_recycle {
        if !start_recycle(shard, id) {
            if let Some(c) = shard.borrow_mut().conns.get_mut(&id) {
                c.resubscribe_pending = !c.sockets.is_empty();
            }
        }
    }
}

/// Sends subscribe frames for `tokens` on a slot's newest socket and hands the books to it.
fn subscribe_on(s: &mut Shard, conn_id: u32, tokens: &[TokenId]) {
    let custom = s.cfg.custom_features;
    let chunk = s.cfg.ids_per_frame_max;
    let Some(sock) = s.conns.get_mut(&conn_id).and_then(Conn::newest_mut) else { return };
    let now = Instant::now();
    for t in tokens {
        sock.awaiting.insert(t.clone(), (now, 0));
        sock.subscribed.insert(t.clone());
    }
    let ids: Vec<&str> = tokens.iter().map(TokenId::as_str).collect();
    for part in ids.chunks(chunk) {
        for f in subscribe_frames(SubscribeOp::Subscribe, part, custom) {
            let _ = sock.out.send(Message::text(f));
        }
    }
    let feed = sock.feed;
    if let Some(r) = s.recorder.as_mut() {
        r.assign(feed, &ids);
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
        if let Some(r) = s.recorder.as_mut() {
            let ids: Vec<&str> = tokens.iter().map(TokenId::as_str).collect();
            r.untrack(m.as_str(), &ids);
        }
        for t in &tokens {
            if let Some(book) = s.store.untrack(t.as_str()) {
                s.clock.counts.remove(book.status());
            }
            s.tap.untracked(t);
        }
        let Some(conn_id) = s.table.remove(m.as_str()) else { continue };
        let empty = s.table.close_if_empty(conn_id);
        let Some(conn) = s.conns.get_mut(&conn_id) else { continue };
        if empty {
            conn.closing = true;
            conn.slot_kill.trigger();
            for sock in &conn.sockets {
                sock.kill.trigger();
            }
            continue;
        }
        let ids: Vec<&str> = tokens.iter().map(TokenId::as_str).collect();
        for sock in &mut conn.sockets {
            for t in &tokens {
                sock.awaiting.remove(t);
            }
            // Without dynamic unsubscribe the tokens stay on the socket: pollution, which
            // control answers with a recycle.
            if dynamic {
                for t in &tokens {
                    sock.subscribed.remove(t);
                }
                for f in subscribe_frames(SubscribeOp::Unsubscribe, &ids, false) {
                    let _ = sock.out.send(Message::text(f));
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

/// The slot's main loop: connect, serve the socket until it ends, reconnect with backoff.
/// `first` is a socket a recycle already opened. When a socket ends while a newer one of the
/// same slot is open (its recycle replacement), this task ends: the newer socket's task owns
/// the slot now.
async fn slot_task(shard: ShardRef, conn_id: u32, first: Option<ClientWs>) {
    let mut attempt: u32 = 0;
    let mut pending = first;
    loop {
        let (url, opts, slot_kill) = {
            let s = shard.borrow();
            let Some(conn) = s.conns.get(&conn_id) else { return };
            if conn.closing {
                break;
            }
            (s.cfg.ws_url.clone(), s.cfg.connect.clone(), conn.slot_kill.clone())
        };
        let ws = match pending.take() {
            Some(ws) => ws,
            None => match connect_ws_with(&url, &opts).await {
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
                    sleep_or_kill(Duration::from_millis(delay), &slot_kill).await;
                    continue;
                }
            },
        };
        let ended_healthy = run_socket(&shard, conn_id, ws).await;
        let (closing, others, delay) = {
            let mut s = shard.borrow_mut();
            let (closing, others) =
                s.conns.get(&conn_id).map_or((true, 0), |c| (c.closing, c.sockets.len()));
            if ended_healthy {
                attempt = 0;
            }
            if !closing && others == 0 {
                s.counters.reconnects += 1;
                if let Some(c) = s.conns.get_mut(&conn_id) {
                    c.reconnects += 1;
                    c.state = "backoff";
                }
            }
            let r = next_random(&mut s);
            (closing, others, s.cfg.backoff.delay_ms(attempt, r))
        };
        if others > 0 {
            return;
        }
        if closing {
            break;
        }
        attempt = attempt.saturating_add(1);
        sleep_or_kill(Duration::from_millis(delay), &slot_kill).await;
    }
    let mut s = shard.borrow_mut();
    if s.conns.get(&conn_id).is_some_and(|c| c.sockets.is_empty()) {
        s.conns.remove(&conn_id);
    }
}

async fn sleep_or_kill(d: Duration, kill: &Shutdown) {
    future::or(glommio::timer::sleep(d), kill.wait()).await;
}

/// Serves one socket; returns true if it was up long enough to count as healthy.
async fn run_socket(shard: &ShardRef, conn_id: u32, ws: ClientWs) -> bool {
    let opened = Instant::now();
    let (mut sink, mut stream) = ws.split();
    let (out_tx, out_rx) = flume::unbounded::<Message>();
    let kill = Shutdown::new();
    let feed = {
        let mut s = shard.borrow_mut();
        let feed = s.next_feed;
        s.next_feed = s.next_feed.wrapping_add(1).max(1);
        let tokens = tokens_of(&s, conn_id);
        let ids: Vec<&str> = tokens.iter().map(TokenId::as_str).collect();
        if let Some(r) = s.recorder.as_mut() {
            r.assign(feed, &ids);
        }
        for t in &tokens {
            s.store.assign_feed(t.as_str(), FeedId(feed));
        }
        let custom = s.cfg.custom_features;
        let mut frames: Vec<String> = Vec::new();
        for (i, part) in ids.chunks(s.cfg.ids_per_frame_max).enumerate() {
            let op = if i == 0 { SubscribeOp::Open } else { SubscribeOp::Subscribe };
            frames.extend(subscribe_frames(op, part, custom));
        }
        if frames.is_empty() {
            frames.extend(subscribe_frames(SubscribeOp::Open, &[], custom));
        }
        for f in frames {
            let _ = out_tx.send(Message::text(f));
        }
        let Some(conn) = s.conns.get_mut(&conn_id) else { return false };
        conn.state = if conn.sockets.is_empty() { "open" } else { "recycling" };
        conn.sockets.push(Sock {
            feed,
            out: out_tx.clone(),
            kill: kill.clone(),
            opened_at: opened,
            last_pong: opened,
            last_data: opened,
            stale: false,
            frames: 0,
            subscribed: tokens.iter().cloned().collect(),
            awaiting: tokens.iter().map(|t| (t.clone(), (opened, 0))).collect(),
        });
        feed
    };
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
    let watchdog = glommio::spawn_local(watchdog(
        Rc::clone(shard),
        conn_id,
        feed,
        out_tx.clone(),
        kill.clone(),
    ))
    .detach();
    drop(out_tx);
    let mut kill_wait = kill.wait();
    loop {
        let next = future::or(async { Some(stream.next().await) }, async {
            (&mut kill_wait).await;
            None
        })
        .await;
        let msg = match next {
            None | Some(None) => break,
            Some(Some(Err(e))) => {
                tracing::info!(conn = conn_id, feed, error = %e, "socket error");
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
                let mut was_stale = false;
                if let Some(sock) = s.conns.get_mut(&conn_id).and_then(|c| c.sock_mut(feed)) {
                    sock.frames += 1;
                    if pong {
                        sock.last_pong = recv;
                    } else {
                        sock.last_data = recv;
                        was_stale = std::mem::take(&mut sock.stale);
                    }
                }
                if pong {
                    continue;
                }
                // One clock reading for the store and the recording, so replay sets the same.
                let recv_ns = now_ns();
                s.store.set_now_ms(recv_ns / 1_000_000);
                if was_stale {
                    resync_stale_books(s, conn_id, feed);
                }
                if let Some(r) = s.recorder.as_mut() {
                    r.frame(recv_ns, feed, text);
                }
                let (store, mut sink) = s.store_and_sink();
                let report = store.apply_frame_from(FeedId(feed), text, &mut sink);
                let resync_tokens = sink.resync;
                if !report.errors.is_empty() {
                    tracing::debug!(conn = conn_id, errors = ?report.errors, "frame errors");
                }
                if !resync_tokens.is_empty() {
                    s.counters.resyncs += resync_tokens.len() as u64;
                    resync(s, conn_id, feed, &resync_tokens);
                }
                let ns = recv.elapsed().as_nanos() as u64;
                if let Some(h) = &mut s.hist {
                    h.saturating_record(ns.max(1));
                }
            }
            Message::Close(frame) => {
                tracing::info!(conn = conn_id, feed, ?frame, "venue closed the connection");
                break;
            }
            _ => {}
        }
    }
    drop(watchdog);
    drop(writer);
    kill.trigger();
    let mut s = shard.borrow_mut();
    let s = &mut *s;
    let tokens = tokens_of(s, conn_id);
    if let Some(r) = s.recorder.as_mut() {
        let ids: Vec<&str> = tokens.iter().map(TokenId::as_str).collect();
        r.lost(feed, &ids);
    }
    let (store, mut sink) = s.store_and_sink();
    for t in &tokens {
        store.feed_lost(t.as_str(), FeedId(feed), &mut sink);
    }
    // These books resync because their socket ended, not because a check failed.
    let lost = sink.resync.len() as u64;
    s.counters.resyncs_connection_lost += lost;
    if let Some(conn) = s.conns.get_mut(&conn_id) {
        conn.sockets.retain(|sock| sock.feed != feed);
        conn.state = if conn.sockets.is_empty() { "closed" } else { "open" };
    }
    hints_and_resolutions(s);
    opened.elapsed() > Duration::from_secs(30)
}

/// Whether a make-before-break recycle of a slot can start now (not unknown, closing,
/// already recycling, or disconnected).
fn can_recycle(s: &Shard, conn_id: u32) -> bool {
    s.conns.get(&conn_id).is_some_and(|c| !c.closing && !c.recycling && !c.sockets.is_empty())
}

fn start_recycle(shard: &ShardRef, conn_id: u32) -> bool {
    {
        let mut s = shard.borrow_mut();
        if !can_recycle(&s, conn_id) {
            return false;
        }
        s.counters.recycles_started += 1;
        if let Some(c) = s.conns.get_mut(&conn_id) {
            c.recycling = true;
        }
    }
    glommio::spawn_local(recycle_task(Rc::clone(shard), conn_id)).detach();
    true
}

/// Opens the replacement socket, waits until it has taken every book over (or the handoff
/// timeout), then closes the old socket(s).
async fn recycle_task(shard: ShardRef, conn_id: u32) {
    let (ok, migrated, left) = recycle_once(&shard, conn_id).await;
    let again = {
        let mut s = shard.borrow_mut();
        if ok {
            s.counters.recycles_completed += 1;
        } else {
            s.counters.recycles_failed += 1;
        }
        s.counters.tokens_migrated += migrated;
        s.counters.handoff_timeouts += left;
        s.conns.get_mut(&conn_id).is_some_and(|c| {
            c.recycling = false;
            std::mem::take(&mut c.resubscribe_pending)
        })
    };
    if again {
        start_recycle(&shard, conn_id);
    }
}

/// Where a recycle stands, judged from the shard's state alone (no borrow outlives it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecycleProgress {
    /// The slot is gone or closing, or the new socket died before taking over.
    Abandoned,
    /// The new socket has not registered yet.
    WaitingForSocket,
    /// Books still on an old socket.
    Moving { feed: u32 },
    /// Every movable book is on the new socket (or the timeout passed): close the old ones.
    Done { moved: u64, left: u64 },
}

fn recycle_progress(
    s: &Shard,
    conn_id: u32,
    old_feeds: &[u32],
    new_feed: Option<u32>,
    timed_out: bool,
) -> RecycleProgress {
    let Some(conn) = s.conns.get(&conn_id) else { return RecycleProgress::Abandoned };
    if conn.closing {
        return RecycleProgress::Abandoned;
    }
    let newest = conn.newest().map(|k| k.feed).filter(|f| !old_feeds.contains(f));
    let Some(feed) = new_feed.or(newest) else {
        return if timed_out {
            RecycleProgress::Abandoned
        } else {
            RecycleProgress::WaitingForSocket
        };
    };
    if newest != Some(feed) {
        return RecycleProgress::Abandoned;
    }
    // Books that can still move: tracked, seeded, not resolved, and on an old socket.
    let (mut moved, mut left) = (0u64, 0u64);
    for t in &tokens_of(s, conn_id) {
        match s.store.get(t.as_str()) {
            Some(b) if b.feed() == feed => moved += 1,
            Some(b) if matches!(b.status(), BookStatus::Resolved | BookStatus::Seeding) => {}
            Some(b) if old_feeds.contains(&b.feed()) => left += 1,
            _ => {}
        }
    }
    if left == 0 || timed_out {
        RecycleProgress::Done { moved, left }
    } else {
        RecycleProgress::Moving { feed }
    }
}

/// Opens the replacement socket and follows the handoff until it completes, times out or is
/// abandoned; returns (completed, books moved, books left to resync).
///
/// Every look at the shard is one `borrow()` inside a single expression, released before
/// anything else runs: the old code held a borrow across `finish`, which borrows mutably, and
/// a slot vanishing mid-recycle killed the shard.
async fn recycle_once(shard: &ShardRef, conn_id: u32) -> (bool, u64, u64) {
    let (url, opts, timeout, old_feeds) = {
        let s = shard.borrow();
        let old: Vec<u32> = s
            .conns
            .get(&conn_id)
            .map(|c| c.sockets.iter().map(|k| k.feed).collect())
            .unwrap_or_default();
        (s.cfg.ws_url.clone(), s.cfg.connect.clone(), s.cfg.handoff_timeout, old)
    };
    let ws = match connect_ws_with(&url, &opts).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::warn!(conn = conn_id, error = %e, "recycle: cannot open the new socket");
            return (false, 0, 0);
        }
    };
    glommio::spawn_local(slot_task(Rc::clone(shard), conn_id, Some(ws))).detach();
    let start = Instant::now();
    let mut new_feed = None;
    loop {
        glommio::timer::sleep(Duration::from_millis(20)).await;
        let timed_out = start.elapsed() > timeout;
        let progress = recycle_progress(&shard.borrow(), conn_id, &old_feeds, new_feed, timed_out);
        match progress {
            RecycleProgress::Abandoned => return (false, 0, 0),
            RecycleProgress::WaitingForSocket => {}
            RecycleProgress::Moving { feed } => new_feed = Some(feed),
            RecycleProgress::Done { moved, left } => {
                if let Some(conn) = shard.borrow().conns.get(&conn_id) {
                    for sock in conn.sockets.iter().filter(|k| old_feeds.contains(&k.feed)) {
                        sock.kill.trigger();
                    }
                }
                tracing::info!(conn = conn_id, moved, left, "recycle done");
                return (left == 0, moved, left);
            }
        }
    }
}

/// Sends PING on schedule and ends the socket on PONG timeout, data silence, or closing; also
/// redrives tokens whose first `book` is late and forwards hints to control.
async fn watchdog(
    shard: ShardRef,
    conn_id: u32,
    feed: u32,
    out: flume::Sender<Message>,
    kill: Shutdown,
) {
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
        let times = shard
            .borrow_mut()
            .conns
            .get_mut(&conn_id)
            .and_then(|c| c.sock_mut(feed))
            .map(|k| (k.last_pong, k.last_data));
        let Some((last_pong, last_data)) = times else { return };
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
                tracing::warn!(conn = conn_id, feed, ?verdict, "watchdog ends the connection");
                kill.trigger();
                return;
            }
        }
        {
            let mut s = shard.borrow_mut();
            mark_stale_if_silent(&mut s, conn_id, feed, now);
            redrive_late_tokens(&mut s, conn_id, feed, now, first_book);
            hints_and_resolutions(&mut s);
        }
        future::or(glommio::timer::sleep(tick), kill.wait()).await;
    }
}

/// A socket without data for `stale_after` marks its Live books Stale (once, until data).
fn mark_stale_if_silent(s: &mut Shard, conn_id: u32, feed: u32, now: Instant) {
    let after = s.cfg.stale_after;
    let Some(sock) = s.conns.get_mut(&conn_id).and_then(|c| c.sock_mut(feed)) else { return };
    if sock.stale || now.saturating_duration_since(sock.last_data) < after {
        return;
    }
    sock.stale = true;
    if let Some(r) = s.recorder.as_mut() {
        r.stale(feed);
    }
    let (store, mut sink) = s.store_and_sink();
    let n = store.mark_feed_stale(FeedId(feed), &mut sink);
    if n > 0 {
        tracing::warn!(conn = conn_id, feed, books = n, "no data: books stale");
    }
}

/// Data flows again after a silence: what was lost in it is unknown (the venue replays
/// nothing), so the books that went Stale get fresh snapshots; a book the silence did not hurt
/// costs one resubscribe. Books that changed since are Live again already.
fn resync_stale_books(s: &mut Shard, conn_id: u32, feed: u32) {
    let stale = s.store.stale_tokens(FeedId(feed));
    if stale.is_empty() {
        return;
    }
    if let Some(r) = s.recorder.as_mut() {
        let ids: Vec<&str> = stale.iter().map(TokenId::as_str).collect();
        r.resync(&ids);
    }
    let (store, mut sink) = s.store_and_sink();
    for t in &stale {
        store.mark_resyncing(t.as_str(), &mut sink);
    }
    let tokens = sink.resync;
    tracing::info!(conn = conn_id, feed, books = tokens.len(), "data again: resyncing stale books");
    s.counters.resyncs_after_silence += tokens.len() as u64;
    resync(s, conn_id, feed, &tokens);
}

fn redrive_late_tokens(s: &mut Shard, conn_id: u32, feed: u32, now: Instant, timeout: Duration) {
    let custom = s.cfg.custom_features;
    let dynamic = s.cfg.dynamic_subscribe;
    let store = &s.store;
    let Some(sock) = s.conns.get_mut(&conn_id).and_then(|c| c.sock_mut(feed)) else { return };
    sock.awaiting.retain(|t, _| store.get(t.as_str()).is_some_and(|b| b.feed() != feed));
    let late: Vec<TokenId> = sock
        .awaiting
        .iter()
        .filter(|(_, (at, n))| now.duration_since(*at) > timeout && *n < REDRIVES_PER_TOKEN_MAX)
        .map(|(t, _)| t.clone())
        .collect();
    if late.is_empty() || !dynamic {
        return;
    }
    for t in &late {
        if let Some(entry) = sock.awaiting.get_mut(t) {
            *entry = (now, entry.1 + 1);
        }
    }
    let ids: Vec<&str> = late.iter().map(TokenId::as_str).collect();
    for f in subscribe_frames(SubscribeOp::Unsubscribe, &ids, custom) {
        let _ = sock.out.send(Message::text(f));
    }
    for f in subscribe_frames(SubscribeOp::Subscribe, &ids, custom) {
        let _ = sock.out.send(Message::text(f));
    }
    s.counters.redrives += late.len() as u64;
}

/// Asks the venue for fresh snapshots of books whose integrity checks kept failing: an
/// unsubscribe and a subscribe on the socket that feeds them (the venue replays nothing, but
/// a new subscription starts with a `book`). Without dynamic subscribe the slot is recycled.
fn resync(s: &mut Shard, conn_id: u32, feed: u32, tokens: &[TokenId]) {
    let custom = s.cfg.custom_features;
    tracing::warn!(conn = conn_id, tokens = tokens.len(), "resyncing books");
    let dynamic = s.cfg.dynamic_subscribe;
    let Some(sock) = s.conns.get_mut(&conn_id).and_then(|c| c.sock_mut(feed)) else { return };
    if !dynamic {
        // Reopening the socket is the only way to a fresh snapshot; the reconnect path marks
        // its books Resyncing and reseeds them.
        sock.kill.trigger();
        return;
    }
    let ids: Vec<&str> = tokens.iter().map(TokenId::as_str).collect();
    for f in subscribe_frames(SubscribeOp::Unsubscribe, &ids, custom) {
        let _ = sock.out.send(Message::text(f));
    }
    for f in subscribe_frames(SubscribeOp::Subscribe, &ids, custom) {
        let _ = sock.out.send(Message::text(f));
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

/// CPU time of the calling thread from /proc/thread-self/stat (utime + stime, in clock ticks
/// of 10 ms on Linux's usual USER_HZ = 100).
fn thread_cpu_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) * 10)
}

fn stats(s: &Shard) -> ShardStats {
    let c = &s.counters;
    let mut st = ShardStats {
        shard: s.cfg.shard,
        markets: s.markets.len(),
        books: s.store.len(),
        reconnects: c.reconnects,
        connect_failures: c.connect_failures,
        pong_timeouts: c.pong_timeouts,
        silence_timeouts: c.silence_timeouts,
        redrives: c.redrives,
        resyncs: c.resyncs,
        resyncs_connection_lost: c.resyncs_connection_lost,
        resyncs_after_silence: c.resyncs_after_silence,
        suspect_ms_total: s.clock.suspect_ms,
        resyncing_ms_total: s.clock.resyncing_ms,
        bytes: c.bytes,
        recycles_started: c.recycles_started,
        recycles_completed: c.recycles_completed,
        recycles_failed: c.recycles_failed,
        tokens_migrated: c.tokens_migrated,
        handoff_timeouts: c.handoff_timeouts,
        cpu_ms: thread_cpu_ms().unwrap_or(0),
        stream_dropped: s.tap.dropped,
        stream_gap_snapshots: s.tap.gap_snapshots,
        streamed_tokens: s.tap.len(),
        apply_ns_p50: s.hist.as_ref().map_or(0, |h| h.value_at_quantile(0.5)),
        apply_ns_p99: s.hist.as_ref().map_or(0, |h| h.value_at_quantile(0.99)),
        apply_ns_p999: s.hist.as_ref().map_or(0, |h| h.value_at_quantile(0.999)),
        apply_ns_max: s.hist.as_ref().map_or(0, |h| h.max()),
        store: s.store.counters().clone(),
        ..ShardStats::default()
    };
    let counts = &s.clock.counts;
    st.books_seeding = counts.get(BookStatus::Seeding);
    st.books_live = counts.get(BookStatus::Live);
    st.books_suspect = counts.get(BookStatus::Suspect);
    st.books_resyncing = counts.get(BookStatus::Resyncing);
    st.books_resolved = counts.get(BookStatus::Resolved);
    st.books_stale = counts.get(BookStatus::Stale);
    debug_assert_eq!(counts.0.iter().sum::<usize>(), s.store.len(), "status counts drifted");
    for (&id, conn) in &s.conns {
        let tokens: HashSet<TokenId> = tokens_of(s, id).into_iter().collect();
        let newest = conn.newest();
        let subscribed = newest.map_or(0, |k| k.subscribed.len());
        let stale =
            newest.map_or(0, |k| k.subscribed.iter().filter(|t| !tokens.contains(*t)).count());
        st.connections.push(ConnStats {
            id,
            feed: newest.map_or(0, |k| k.feed),
            state: conn.state,
            sockets: conn.sockets.len(),
            tokens: tokens.len(),
            subscribed,
            pollution_pct: (stale * 100).checked_div(subscribed).unwrap_or(0) as u8,
            frames: conn.sockets.iter().map(|k| k.frames).sum(),
            reconnects: conn.reconnects,
            age_ms: newest.map_or(0, |k| k.opened_at.elapsed().as_millis() as u64),
            slot_age_ms: conn.created_at.elapsed().as_millis() as u64,
            recycling: conn.recycling,
        });
    }
    st.connections.sort_by_key(|c| c.id);
    st
}
