//! Live book streams for API clients (`/ws`): the data shard serialises each change of a
//! streamed token once (with a per-token sequence number) and sends it to the control shard's
//! hub, which fans it out to the clients that asked for it. Each client has a bounded queue;
//! a client that falls behind is disconnected, never the feed.

use std::rc::Rc;
use std::sync::Arc;

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
    /// Messages lost because the hub's channel was full (clients see a sequence gap).
    pub dropped: u64,
}

impl StreamTap {
    pub fn new(tx: flume::Sender<StreamMsg>) -> StreamTap {
        StreamTap { tx, seq: HashMap::new(), dropped: 0 }
    }

    /// Starts streaming `token` (if not yet) and sends `client` a snapshot.
    pub fn subscribe(&mut self, book: &Book, client: u64, depth: Option<usize>) {
        let seq = *self.seq.entry(book.token().clone()).or_insert(0);
        let text = snapshot_json(book, seq, depth);
        self.send(StreamMsg { token: book.token().clone(), to: Some(client), text });
    }

    pub fn unsubscribe(&mut self, token: &str) {
        self.seq.remove(token);
    }

    pub fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }

    /// Tokens streamed now.
    pub fn len(&self) -> usize {
        self.seq.len()
    }

    /// Called for every applied change; cheap when the token is not streamed.
    pub fn on_update(&mut self, update: &BookUpdate, book: &Book) {
        let Some(seq) = self.seq.get_mut(book.token().as_str()) else { return };
        *seq += 1;
        let seq = *seq;
        let t = book.token().as_str();
        let ts = book.timestamp_ms();
        let text: String = match *update {
            BookUpdate::Snapshot => snapshot_json(book, seq, None).to_string(),
            BookUpdate::Level { side, price, size, .. } => format!(
                "{{\"type\":\"level\",\"token_id\":\"{t}\",\"seq\":{seq},\"timestamp_ms\":{ts},\
                 \"side\":\"{}\",\"price\":\"{price}\",\"size\":\"{size}\"}}",
                side.as_str()
            ),
            BookUpdate::LastTrade(tr) => format!(
                "{{\"type\":\"trade\",\"token_id\":\"{t}\",\"seq\":{seq},\"timestamp_ms\":{},\
                 \"price\":\"{}\",\"size\":\"{}\",\"side\":\"{}\"}}",
                tr.timestamp_ms,
                tr.price,
                tr.size,
                tr.side.as_str()
            ),
            BookUpdate::TickSize { new, .. } => format!(
                "{{\"type\":\"tick_size\",\"token_id\":\"{t}\",\"seq\":{seq},\"timestamp_ms\":{ts},\
                 \"tick_size\":\"{new}\"}}"
            ),
            BookUpdate::Status { to, .. } => format!(
                "{{\"type\":\"status\",\"token_id\":\"{t}\",\"seq\":{seq},\"timestamp_ms\":{ts},\
                 \"status\":\"{}\"}}",
                to.as_str()
            ),
        };
        self.send(StreamMsg { token: book.token().clone(), to: None, text: Arc::from(text) });
    }

    fn send(&mut self, msg: StreamMsg) {
        if self.tx.try_send(msg).is_err() {
            self.dropped += 1;
        }
    }
}

fn snapshot_json(book: &Book, seq: u64, depth: Option<usize>) -> Arc<str> {
    let fresh = super::data::Freshness { now_ms: super::data::wall_ms(), feed_silent_ms: None };
    let b = super::data::book_json(book, depth, fresh);
    Arc::from(format!(
        "{{\"type\":\"snapshot\",\"token_id\":\"{}\",\"seq\":{seq},\"book\":{b}}}",
        book.token()
    ))
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

/// Serves one `/ws` client until it leaves, is too slow, or the server stops.
pub async fn serve_client<C: StreamControl + 'static>(
    ctl: Rc<C>,
    mut ws: ServerWs,
    buffer: usize,
    stopping: Shutdown,
) {
    let (id, rx, kill) = ctl.hub().borrow_mut().join(buffer);
    let mut reason = "bye";
    loop {
        enum Ev {
            In(Option<Result<Message, async_tungstenite::tungstenite::Error>>),
            Out(Option<Arc<str>>),
            Stop(&'static str),
        }
        let ev = future::or(
            future::or(async { Ev::In(ws.next().await) }, async {
                Ev::Out(rx.recv_async().await.ok())
            }),
            future::or(
                async {
                    kill.wait().await;
                    Ev::Stop("slow consumer: buffer full")
                },
                async {
                    stopping.wait().await;
                    Ev::Stop("server stopping")
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
            Ev::In(Some(Ok(Message::Text(t)))) => {
                let reply = handle_request(&ctl, id, t.as_str());
                if ws.send(Message::text(reply)).await.is_err() {
                    break;
                }
            }
            Ev::In(Some(Ok(Message::Close(_)))) | Ev::In(None) | Ev::In(Some(Err(_))) => break,
            Ev::In(Some(Ok(_))) => {}
            Ev::Stop(why) => {
                reason = why;
                break;
            }
        }
    }
    let _ = ws
        .close(Some(async_tungstenite::tungstenite::protocol::CloseFrame {
            code: if reason.starts_with("slow") { 1008u16.into() } else { 1000u16.into() },
            reason: reason.into(),
        }))
        .await;
    let orphaned = ctl.hub().borrow_mut().leave(id);
    if !orphaned.is_empty() {
        ctl.stream(id, orphaned, None, false);
    }
}

fn handle_request<C: StreamControl>(ctl: &Rc<C>, id: u64, text: &str) -> String {
    let req: ClientRequest = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => return serde_json::json!({"type": "error", "error": e.to_string()}).to_string(),
    };
    let (tokens, unknown) = ctl.resolve(&req);
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
                "unknown": unknown})
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
