//! Live book streams for API clients (`/ws`): the data shard serialises each change of a
//! streamed token once (with a per-token sequence number) and sends it to the control shard's
//! hub, which fans it out to the clients that asked for it. Each client has a bounded queue;
//! a client that falls behind is disconnected, never the feed.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_util::{SinkExt, StreamExt};
use hashbrown::{HashMap, HashSet};
use polybook::store::BookUpdate;
use polybook::{Book, TokenId};

use crate::net::{Message, ServerWs, Shutdown};

/// One serialised stream message for `token`; `to`: a single client (its snapshot), or every
/// subscriber.
#[derive(Debug, Clone)]
pub struct StreamMsg {
    pub token: TokenId,
    pub to: Option<u64>,
    pub text: Arc<str>,
}

/// The data shard's side: which tokens are streamed and their sequence numbers.
pub struct StreamTap {
    tx: flume::Sender<StreamMsg>,
    seq: HashMap<TokenId, u64>,
    /// Tokens one of whose messages could not be queued: their next message is a snapshot, so
    /// a client never holds a wrong book without knowing (see `retry_gaps`).
    gapped: HashSet<TokenId>,
    /// Messages lost because the hub's channel was full (each is repaired by a snapshot).
    pub dropped: u64,
    /// Snapshots sent to repair such gaps.
    pub gap_snapshots: u64,
}

/// One stream message, serialised with serde so that any id is escaped.
#[derive(serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Out<'a> {
    Level {
        token_id: &'a str,
        seq: u64,
        timestamp_ms: u64,
        side: &'static str,
        price: polybook::Price,
        size: polybook::Size,
    },
    Trade {
        token_id: &'a str,
        seq: u64,
        timestamp_ms: u64,
        price: polybook::Price,
        size: polybook::Size,
        side: &'static str,
    },
    TickSize {
        token_id: &'a str,
        seq: u64,
        timestamp_ms: u64,
        tick_size: polybook::Price,
    },
    Status {
        token_id: &'a str,
        seq: u64,
        timestamp_ms: u64,
        status: polybook::BookStatus,
    },
    /// The engine no longer holds this book (its market left the registry): drop it.
    Reset {
        token_id: &'a str,
        seq: u64,
        reason: &'static str,
    },
}

fn to_text(out: &Out<'_>) -> Arc<str> {
    Arc::from(serde_json::to_string(out).unwrap_or_default())
}

impl StreamTap {
    pub fn new(tx: flume::Sender<StreamMsg>) -> StreamTap {
        StreamTap { tx, seq: HashMap::new(), gapped: HashSet::new(), dropped: 0, gap_snapshots: 0 }
    }

    /// Starts streaming `token` (if not yet) and sends `client` a snapshot.
    pub fn subscribe(&mut self, book: &Book, client: u64, depth: Option<usize>) {
        let seq = *self.seq.entry(book.token().clone()).or_insert(0);
        let text = snapshot_json(book, seq, depth);
        self.send(StreamMsg { token: book.token().clone(), to: Some(client), text });
    }

    pub fn unsubscribe(&mut self, token: &str) {
        self.seq.remove(token);
        self.gapped.remove(token);
    }

    /// The engine drops `token`'s book: its clients are told to drop theirs too.
    pub fn untracked(&mut self, token: &TokenId) {
        let Some(seq) = self.seq.remove(token.as_str()) else { return };
        self.gapped.remove(token.as_str());
        let text =
            to_text(&Out::Reset { token_id: token.as_str(), seq: seq + 1, reason: "untracked" });
        // A lost reset cannot be repaired by a snapshot (there is no book); the hub's channel
        // is large, and the loss is counted.
        self.send(StreamMsg { token: token.clone(), to: None, text });
    }

    pub fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }

    /// Tokens streamed now.
    pub fn len(&self) -> usize {
        self.seq.len()
    }

    /// Tokens whose stream has a gap still to repair.
    pub fn gaps(&self) -> impl Iterator<Item = &TokenId> {
        self.gapped.iter()
    }

    /// Sends a repairing snapshot for a gapped token (called on a timer, for tokens that had no
    /// update since their gap).
    pub fn repair(&mut self, book: &Book) {
        if !self.gapped.contains(book.token().as_str()) {
            return;
        }
        let Some(seq) = self.seq.get_mut(book.token().as_str()) else { return };
        *seq += 1;
        let text = snapshot_json(book, *seq, None);
        if self.send(StreamMsg { token: book.token().clone(), to: None, text }) {
            self.gapped.remove(book.token().as_str());
            self.gap_snapshots += 1;
        }
    }

    /// Called for every applied change; cheap when the token is not streamed.
    pub fn on_update(&mut self, update: &BookUpdate, book: &Book) {
        let Some(seq) = self.seq.get_mut(book.token().as_str()) else { return };
        *seq += 1;
        let seq = *seq;
        let token_id = book.token().as_str();
        let timestamp_ms = book.timestamp_ms();
        let repair = self.gapped.contains(token_id);
        let text = match *update {
            _ if repair => snapshot_json(book, seq, None),
            BookUpdate::Snapshot => snapshot_json(book, seq, None),
            BookUpdate::Level { side, price, size, .. } => to_text(&Out::Level {
                token_id,
                seq,
                timestamp_ms,
                side: side.as_str(),
                price,
                size,
            }),
            BookUpdate::LastTrade(tr) => to_text(&Out::Trade {
                token_id,
                seq,
                timestamp_ms: tr.timestamp_ms,
                price: tr.price,
                size: tr.size,
                side: tr.side.as_str(),
            }),
            BookUpdate::TickSize { new, .. } => {
                to_text(&Out::TickSize { token_id, seq, timestamp_ms, tick_size: new })
            }
            BookUpdate::Status { to, .. } => {
                to_text(&Out::Status { token_id, seq, timestamp_ms, status: to })
            }
        };
        let token = book.token().clone();
        if self.send(StreamMsg { token, to: None, text }) && repair {
            self.gapped.remove(book.token().as_str());
            self.gap_snapshots += 1;
        }
    }

    fn send(&mut self, msg: StreamMsg) -> bool {
        let token = msg.token.clone();
        if self.tx.try_send(msg).is_err() {
            self.dropped += 1;
            if self.seq.contains_key(token.as_str()) {
                self.gapped.insert(token);
            }
            return false;
        }
        true
    }
}

/// Unix ms from the wall clock (a snapshot's `age_ms`).
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn snapshot_json(book: &Book, seq: u64, depth: Option<usize>) -> Arc<str> {
    let fresh = polybook::view::Freshness { now_ms: wall_ms(), feed_silent_ms: None };
    let b = polybook::view::ServedBook { book, depth, fresh }.to_json();
    // The token id goes through serde (escaped); the book is already JSON.
    let token = serde_json::to_string(book.token().as_str()).unwrap_or_default();
    Arc::from(format!("{{\"type\":\"snapshot\",\"token_id\":{token},\"seq\":{seq},\"book\":{b}}}"))
}

/// The control shard's side: clients, their subscriptions, fan-out.
#[derive(Default)]
pub struct Hub {
    clients: HashMap<u64, HubClient>,
    subs: HashMap<TokenId, HashSet<u64>>,
    next_id: u64,
    pub clients_dropped_slow: u64,
    pub messages_sent: u64,
}

struct HubClient {
    tx: flume::Sender<Arc<str>>,
    kill: Shutdown,
    tokens: HashSet<TokenId>,
}

impl Hub {
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Registers a client; returns its id, its queue and the signal that disconnects it.
    pub fn join(&mut self, buffer: usize) -> (u64, flume::Receiver<Arc<str>>, Shutdown) {
        self.next_id += 1;
        let (tx, rx) = flume::bounded(buffer.max(1));
        let kill = Shutdown::new();
        self.clients
            .insert(self.next_id, HubClient { tx, kill: kill.clone(), tokens: HashSet::new() });
        (self.next_id, rx, kill)
    }

    /// Adds tokens to a client; returns those that had no subscriber before.
    pub fn subscribe(&mut self, client: u64, tokens: &[TokenId]) -> Vec<TokenId> {
        let mut first = Vec::new();
        let Some(c) = self.clients.get_mut(&client) else { return first };
        for t in tokens {
            c.tokens.insert(t.clone());
            let subs = self.subs.entry(t.clone()).or_default();
            if subs.is_empty() {
                first.push(t.clone());
            }
            subs.insert(client);
        }
        first
    }

    /// Removes tokens from a client; returns those left with no subscriber.
    pub fn unsubscribe(&mut self, client: u64, tokens: &[TokenId]) -> Vec<TokenId> {
        let mut last = Vec::new();
        if let Some(c) = self.clients.get_mut(&client) {
            for t in tokens {
                c.tokens.remove(t);
            }
        }
        for t in tokens {
            if let Some(subs) = self.subs.get_mut(t.as_str()) {
                subs.remove(&client);
                if subs.is_empty() {
                    self.subs.remove(t.as_str());
                    last.push(t.clone());
                }
            }
        }
        last
    }

    /// Removes a client; returns tokens left with no subscriber.
    pub fn leave(&mut self, client: u64) -> Vec<TokenId> {
        let Some(c) = self.clients.remove(&client) else { return Vec::new() };
        c.kill.trigger();
        let tokens: Vec<TokenId> = c.tokens.into_iter().collect();
        self.unsubscribe(client, &tokens)
    }

    /// Delivers one message; a client whose queue is full is disconnected (slow consumer).
    pub fn deliver(&mut self, msg: &StreamMsg) {
        let targets: Vec<u64> = match msg.to {
            Some(c) => vec![c],
            None => self
                .subs
                .get(msg.token.as_str())
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
        };
        for id in targets {
            let Some(c) = self.clients.get(&id) else { continue };
            if !c.tokens.contains(msg.token.as_str()) {
                continue;
            }
            if c.tx.try_send(Arc::clone(&msg.text)).is_ok() {
                self.messages_sent += 1;
            } else {
                self.clients_dropped_slow += 1;
                // Its tokens stay streamed until the client task leaves; it is gone soon.
                c.kill.trigger();
            }
        }
    }
}

/// A client request on `/ws`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRequest {
    pub op: String,
    #[serde(default)]
    pub tokens: Vec<String>,
    #[serde(default)]
    pub markets: Vec<String>,
    #[serde(default)]
    pub depth: Option<usize>,
}

/// What the client task needs from control: resolve markets to tokens and tell the owning
/// shards to start or stop streaming.
pub trait StreamControl {
    /// Tokens of the request that the registry knows, and those it does not.
    fn resolve(&self, req: &ClientRequest) -> (Vec<TokenId>, Vec<String>);
    /// Starts (and snapshots) or stops streaming tokens on their shards.
    fn stream(&self, client: u64, tokens: Vec<TokenId>, depth: Option<usize>, on: bool);
    fn hub(&self) -> &std::cell::RefCell<Hub>;
}

/// Most tokens one client may stream.
pub const CLIENT_TOKENS_MAX: usize = 10_000;

/// Most ids echoed back as `unknown` in one reply (the rest are only counted).
pub const UNKNOWN_ECHO_MAX: usize = 100;

/// How a `/ws` client is bounded.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// Messages queued for the client before it is closed as too slow (1008).
    pub buffer: usize,
    /// A client with no subscription is closed after this long (4000).
    pub idle: Duration,
    /// A subscribed client is pinged this often; one silent for 3 pings is closed (1001).
    pub ping: Duration,
    /// subscribe/unsubscribe operations per second (burst: twice as many); more are refused.
    pub ops_per_s: u32,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            buffer: 1024,
            idle: Duration::from_secs(30),
            ping: Duration::from_secs(15),
            ops_per_s: 20,
        }
    }
}

/// Refused operations after which a client is closed (1008): it is not listening to errors.
const REFUSED_OPS_MAX: u32 = 100;

/// Close codes a client can see, documented in the README.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const IDLE: u16 = 4000;
}

/// A token bucket for a client's operations.
struct OpBudget {
    tokens: f64,
    per_s: f64,
    at: Instant,
    refused: u32,
}

impl OpBudget {
    #[allow(clippy::float_arithmetic)]
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let burst = self.per_s * 2.0;
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_s).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.refused += 1;
            false
        }
    }
}

/// Serves one `/ws` client until it leaves, is too slow, idles, dies, or the server stops.
pub async fn serve_client<C: StreamControl + 'static>(
    ctl: Rc<C>,
    mut ws: ServerWs,
    limits: ClientLimits,
    stopping: Shutdown,
) {
    let (id, rx, kill) = ctl.hub().borrow_mut().join(limits.buffer);
    let mut close_code = close::NORMAL;
    let mut reason = "bye";
    let started = Instant::now();
    let mut last_seen = Instant::now();
    #[allow(clippy::cast_precision_loss)]
    let per_s = f64::from(limits.ops_per_s.max(1));
    #[allow(clippy::float_arithmetic)]
    let mut budget = OpBudget { tokens: per_s * 2.0, per_s, at: Instant::now(), refused: 0 };
    let tick =
        limits.ping.min(limits.idle).min(Duration::from_secs(1)).max(Duration::from_millis(10));
    let mut next_ping = Instant::now() + limits.ping;
    loop {
        enum Ev {
            In(Option<Result<Message, async_tungstenite::tungstenite::Error>>),
            Out(Option<Arc<str>>),
            Tick,
            Stop(u16, &'static str),
        }
        let ev = future::or(
            future::or(async { Ev::In(ws.next().await) }, async {
                Ev::Out(rx.recv_async().await.ok())
            }),
            future::or(
                future::or(
                    async {
                        kill.wait().await;
                        Ev::Stop(close::POLICY, "slow consumer: buffer full")
                    },
                    async {
                        stopping.wait().await;
                        Ev::Stop(close::GOING_AWAY, "server stopping")
                    },
                ),
                async {
                    glommio::timer::sleep(tick).await;
                    Ev::Tick
                },
            ),
        )
        .await;
        match ev {
            Ev::Out(Some(text)) => {
                if ws.feed(Message::text(text.to_string())).await.is_err() {
                    break;
                }
                // Drain what is queued, then one flush.
                let mut ok = true;
                while let Ok(more) = rx.try_recv() {
                    if ws.feed(Message::text(more.to_string())).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                if !ok || ws.flush().await.is_err() {
                    break;
                }
            }
            Ev::Out(None) => break,
            Ev::Tick => {
                let subscribed =
                    ctl.hub().borrow().clients.get(&id).is_some_and(|c| !c.tokens.is_empty());
                let now = Instant::now();
                if !subscribed && now.duration_since(started.max(last_seen)) >= limits.idle {
                    (close_code, reason) = (close::IDLE, "idle: no subscription");
                    break;
                }
                if subscribed && now.duration_since(last_seen) >= limits.ping * 3 {
                    (close_code, reason) = (close::GOING_AWAY, "no answer to pings");
                    break;
                }
                if subscribed && now >= next_ping {
                    next_ping = now + limits.ping;
                    if ws.send(Message::Ping(Vec::new().into())).await.is_err() {
                        break;
                    }
                }
            }
            Ev::In(Some(Ok(Message::Text(t)))) => {
                last_seen = Instant::now();
                let reply = if budget.allow() {
                    handle_request(&ctl, id, t.as_str())
                } else if budget.refused > REFUSED_OPS_MAX {
                    (close_code, reason) = (close::POLICY, "too many operations");
                    break;
                } else {
                    error_reply(&format!(
                        "rate limited: at most {} operations per second",
                        limits.ops_per_s
                    ))
                };
                if ws.send(Message::text(reply)).await.is_err() {
                    break;
                }
            }
            Ev::In(Some(Err(async_tungstenite::tungstenite::Error::Capacity(_)))) => {
                // Over the server's 64 KiB message limit: the documented close code.
                (close_code, reason) = (close::TOO_BIG, "message too big (64 KiB max)");
                break;
            }
            Ev::In(Some(Ok(Message::Close(_)))) | Ev::In(None) | Ev::In(Some(Err(_))) => break,
            Ev::In(Some(Ok(_))) => last_seen = Instant::now(),
            Ev::Stop(code, why) => {
                (close_code, reason) = (code, why);
                break;
            }
        }
    }
    let _ = ws
        .close(Some(async_tungstenite::tungstenite::protocol::CloseFrame {
            code: close_code.into(),
            reason: reason.into(),
        }))
        .await;
    let orphaned = ctl.hub().borrow_mut().leave(id);
    if !orphaned.is_empty() {
        ctl.stream(id, orphaned, None, false);
    }
}

fn error_reply(error: &str) -> String {
    serde_json::json!({"type": "error", "error": error}).to_string()
}

fn handle_request<C: StreamControl>(ctl: &Rc<C>, id: u64, text: &str) -> String {
    let req: ClientRequest = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => return serde_json::json!({"type": "error", "error": e.to_string()}).to_string(),
    };
    let (tokens, mut unknown) = ctl.resolve(&req);
    let unknown_count = unknown.len();
    unknown.truncate(UNKNOWN_ECHO_MAX);
    match req.op.as_str() {
        "subscribe" => {
            let current = ctl.hub().borrow().clients.get(&id).map_or(0, |c| c.tokens.len());
            if current + tokens.len() > CLIENT_TOKENS_MAX {
                return serde_json::json!({"type": "error",
                    "error": format!("at most {CLIENT_TOKENS_MAX} tokens per client")})
                .to_string();
            }
            ctl.hub().borrow_mut().subscribe(id, &tokens);
            // Every subscribing client gets its own snapshot; the shard streams from then on.
            ctl.stream(id, tokens.clone(), req.depth, true);
            serde_json::json!({"type": "subscribed",
                "tokens": tokens.iter().map(TokenId::as_str).collect::<Vec<_>>(),
                "unknown": unknown, "unknown_count": unknown_count})
            .to_string()
        }
        "unsubscribe" => {
            let orphaned = ctl.hub().borrow_mut().unsubscribe(id, &tokens);
            if !orphaned.is_empty() {
                ctl.stream(id, orphaned, None, false);
            }
            serde_json::json!({"type": "unsubscribed",
                "tokens": tokens.iter().map(TokenId::as_str).collect::<Vec<_>>()})
            .to_string()
        }
        other => serde_json::json!({"type": "error",
            "error": format!("unknown op {other:?}: use subscribe or unsubscribe")})
        .to_string(),
    }
}
