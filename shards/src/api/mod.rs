//! The HTTP/WebSocket API on the control shard: one route table ([`routes`]), the exposure
//! policy ([`exposure`]) and rate limit ([`limiter`]) every request passes first, then the
//! handlers. Reads answer from control's copies (registry, stats snapshots) and never cost a
//! data shard a scan; a book is asked of its owner.
//!
//! - [`health`]: `/health`, `/ready`. [`stats`]: `/stats`. [`metrics`]: `/metrics`.
//! - [`markets`]: `/markets`, `/markets/{id}`, `/books/{token}`. [`admin`]: `/admin/*`.
//! - [`hub`]: the `/ws` hub's glue to the registry and the data shards.

mod admin;
mod exposure;
mod health;
mod hub;
mod limiter;
mod markets;
mod metrics;
mod params;
mod process;
mod routes;
mod stats;

use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;

use crate::config::Secret;
use crate::engine::control::ControlRef;
use crate::engine::mesh::Command;
use crate::engine::stream::{ClientLimits, StreamMsg};
use crate::net::{
    ws_task, Handler, OriginPolicy, Request, Response, Server, ServerConfig, Shutdown,
    WebSocketConfig, WsTask,
};
use hub::Streams;
use limiter::RateLimiter;

/// What the API needs to know.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: String,
    /// How `/ws` clients are bounded (queue, idle, pings, operation rate).
    pub ws_limits: ClientLimits,
    /// HTTP requests per second per client address.
    pub requests_per_s_max: u32,
    /// `/ready` fails below this share (%) of tracked books live.
    pub ready_books_live_pct_min: u8,
    /// `[publish.nats] required_for_ready`: `/ready` fails while NATS is not connected.
    pub ready_needs_nats: bool,
    /// `lifecycle.recycle_concurrent_max`, which admin recycles obey like the policy's.
    pub recycles_max: usize,
    /// Who may reach the API, and how many at once.
    pub exposure: Exposure,
}

/// The API's exposure: admin authentication, the origins it answers, connection limits.
#[derive(Debug, Clone)]
pub struct Exposure {
    pub admin_token: Option<Secret>,
    /// Besides the listen address, localhost, 127.0.0.1 and [::1] (validated origins).
    pub allowed_origins: Vec<String>,
    pub connections_max: usize,
    /// Upgraded `/ws` streams at once (below `connections_max`).
    pub ws_connections_max: usize,
}

/// Largest `/ws` message (and frame) a client may send; a larger one ends the stream. A
/// subscribe request of about 800 token ids fits; larger sets go in several requests.
pub const WS_MESSAGE_MAX: usize = 64 << 10;

/// How long a request waits for a data shard's answer before 503.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds the listener and works out the origins it answers; `Err` says why it cannot start.
pub fn bind(cfg: &ApiConfig) -> Result<(Server, OriginPolicy), String> {
    let server = Server::bind(cfg.listen.as_str(), server_config(&cfg.exposure))
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let origins = OriginPolicy::local(server.local_addr(), &cfg.exposure.allowed_origins)
        .map_err(|e| format!("api.allowed_origins: {e}"))?;
    tracing::debug!(origins = %origins.describe(), "api origins");
    Ok((server, origins))
}

fn server_config(e: &Exposure) -> ServerConfig {
    ServerConfig {
        max_connections: e.connections_max,
        max_websockets: Some(e.ws_connections_max),
        ws_config: Some(
            WebSocketConfig::default()
                // Clients send small requests: an idle stream then holds 16 KiB of read
                // buffer, not tungstenite's 128 KiB (thousands of idle streams add up).
                .read_buffer_size(16 << 10)
                .max_message_size(Some(WS_MESSAGE_MAX))
                .max_frame_size(Some(WS_MESSAGE_MAX)),
        ),
        ..ServerConfig::default()
    }
}

/// The running API: its server and the `/ws` hub.
pub struct Running {
    server: glommio::task::JoinHandle<()>,
    hub: glommio::task::JoinHandle<()>,
    server_stop: Shutdown,
}

impl Running {
    /// Stops accepting and ends the server's connections (the hub stops with `stopping`).
    pub fn stop(&self) {
        self.server_stop.trigger();
    }

    pub async fn join(self) {
        let _ = self.server.await;
        drop(self.hub);
    }
}

/// Serves the API and runs the `/ws` hub on this executor until stopped.
pub fn start(
    server: Server,
    origins: OriginPolicy,
    cfg: ApiConfig,
    control: ControlRef,
    streams: flume::Receiver<StreamMsg>,
    stopping: &Shutdown,
) -> Running {
    let live = Rc::new(Streams::new(Rc::clone(&control), stopping.clone()));
    let hub = glommio::spawn_local(hub::hub_loop(Rc::clone(&live), streams)).detach();
    let api = Api {
        limiter: std::cell::RefCell::new(RateLimiter::new(cfg.requests_per_s_max)),
        origins,
        recycle_gate: Rc::new(glommio::sync::Semaphore::new(1)),
        cfg,
        control,
        live,
    };
    let server_stop = Shutdown::new();
    let server = glommio::spawn_local(server.serve(Rc::new(api), server_stop.clone())).detach();
    Running { server, hub, server_stop }
}

/// The HTTP API on the control shard.
struct Api {
    cfg: ApiConfig,
    control: ControlRef,
    live: Rc<Streams>,
    limiter: std::cell::RefCell<RateLimiter>,
    /// The `Host` and `Origin` values the API answers to.
    origins: OriginPolicy,
    /// Admin recycles are decided one at a time: two requests must not both see room below
    /// `recycles_max` and both start.
    recycle_gate: Rc<glommio::sync::Semaphore>,
}

impl Handler for Api {
    fn handle(&self, _req: &Request) -> Response {
        // Unreachable: `handle_async` answers every request.
        Response::not_found()
    }

    fn upgrade(&self, req: &Request) -> Option<WsTask> {
        // Whatever is refused here is answered by `handle_async`, with the reason.
        if req.path != "/ws" || req.method != "GET" || self.refusal(req).is_some() {
            return None;
        }
        if !self.limiter.borrow_mut().allow(req.peer.map(|p| p.ip())) {
            return None;
        }
        let live = Rc::clone(&self.live);
        let limits = self.cfg.ws_limits;
        let stopping = live.stopping.clone();
        Some(ws_task(move |ws| crate::engine::stream::serve_client(live, ws, limits, stopping)))
    }

    fn handle_async(
        &self,
        req: &Request,
    ) -> Option<futures_util::future::LocalBoxFuture<'static, Response>> {
        Some(self.answer(req).unwrap_or_else(|resp| Box::pin(future::ready(resp))))
    }
}

/// Asks a data shard and waits up to [`QUERY_TIMEOUT`] for its answer (None: no answer).
async fn query<T>(
    tx: &flume::Sender<Command>,
    make: impl FnOnce(flume::Sender<T>) -> Command,
) -> Option<T> {
    let (reply, rx) = flume::bounded(1);
    tx.send_async(make(reply)).await.ok()?;
    future::or(async { rx.recv_async().await.ok() }, async {
        glommio::timer::sleep(QUERY_TIMEOUT).await;
        None
    })
    .await
}
