//! One `/ws` client: its requests, limits (queue, idle, pings, operation rate) and close codes.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_util::{SinkExt, StreamExt};
use polybook::TokenId;

use super::Hub;
use crate::net::{Message, ServerWs, Shutdown};

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
