//! HTTP/1.1 + WebSocket server on a glommio listener, for the simulated exchange (REST, the
//! market channel and `/sim` control on one port) and the engine's client API.
//!
//! One task per connection, no thread crossing: handlers are plain `Rc` state. Every read of a
//! request is bounded (head size, body size, time), so a slow or hostile client costs one
//! connection slot for at most `read_timeout`, and the slots themselves are capped; upgraded
//! WebSockets can be capped lower, so that they never take the slots plain HTTP needs.
//!
//! With [`ServerConfig::tls`] every accepted connection is TLS (https and wss on one port); the
//! handshake runs in the connection's task, and plain connections are served as before.

//!
//! `conn` serves one connection (keep-alive, upgrades, rejections); `read` reads and parses a
//! request within the limits.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::WebSocketStream;
use futures_lite::future::or;
use futures_lite::AsyncReadExt;
use futures_lite::AsyncWriteExt;
use futures_util::future::LocalBoxFuture;
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;

use super::error::NetError;
use super::http::{Request, Response};
use super::signal::Shutdown;
use super::stream::{MaybeTls, ServerStream};

mod conn;
mod read;

use conn::serve_connection;

/// The server side of an accepted WebSocket (plain or TLS, as the server is configured).
pub type ServerWs = WebSocketStream<ServerStream>;

/// What runs an accepted WebSocket; it owns the stream until it returns.
pub type WsTask = Box<dyn FnOnce(ServerWs) -> LocalBoxFuture<'static, ()>>;

/// Boxes an async closure as a [`WsTask`].
pub fn ws_task<F, Fut>(f: F) -> WsTask
where
    F: FnOnce(ServerWs) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    Box::new(move |ws| Box::pin(f(ws)))
}

/// Routes requests. Called on the executor that owns the server; it must not block.
///
/// For each request the server asks, in order: [`Handler::upgrade`] (only for WebSocket upgrade
/// requests), then [`Handler::handle_async`], then [`Handler::handle`].
pub trait Handler {
    /// Answers a request at once.
    fn handle(&self, req: &Request) -> Response;

    /// Answers a request that needs to wait (for another shard, say). `None`: use `handle`.
    fn handle_async(&self, _req: &Request) -> Option<LocalBoxFuture<'static, Response>> {
        None
    }

    /// Accepts a WebSocket upgrade request by returning the task that will own the socket.
    /// `None`: the request is answered by `handle_async`/`handle` like any other.
    fn upgrade(&self, _req: &Request) -> Option<WsTask> {
        None
    }
}

impl<F: Fn(&Request) -> Response> Handler for F {
    fn handle(&self, req: &Request) -> Response {
        self(req)
    }
}

/// Limits and timeouts of a [`Server`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest request head (request line and headers); larger gets 431.
    pub max_head: usize,
    /// Largest request body after de-chunking; larger gets 413.
    pub max_body: usize,
    /// Time from accept, or from the end of the previous response, until a whole request (head
    /// and body) must have arrived. It doubles as the keep-alive idle timeout.
    pub read_timeout: Duration,
    /// A write making no progress for this long fails and ends the connection (HTTP and
    /// WebSocket alike), so a client that stops reading cannot pin a task forever.
    pub write_timeout: Option<Duration>,
    /// Connections served at once; further clients wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// Upgraded WebSockets at once, each also holding one of `max_connections`; an upgrade
    /// beyond it is answered 503. Below `max_connections` it keeps the difference for plain
    /// HTTP, so idle WebSockets cannot lock out health checks. `None`: no cap of their own.
    pub max_websockets: Option<usize>,
    /// After shutdown fires, how long open connections (WebSockets included) get to finish
    /// before they are dropped.
    pub shutdown_grace: Duration,
    /// Limits of accepted WebSockets; `None` for tungstenite's defaults.
    pub ws_config: Option<WebSocketConfig>,
    /// Serve https and wss with this TLS config instead of plain http and ws. The handshake
    /// counts against `read_timeout`.
    pub tls: Option<Arc<futures_rustls::rustls::ServerConfig>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_head: 16 << 10,
            max_body: 1 << 20,
            read_timeout: Duration::from_secs(10),
            write_timeout: Some(Duration::from_secs(10)),
            max_connections: 4096,
            max_websockets: None,
            shutdown_grace: Duration::from_secs(2),
            ws_config: None,
            tls: None,
        }
    }
}

/// A bound listener, ready to [`Server::serve`].
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    config: Rc<ServerConfig>,
}

impl Server {
    /// Binds `addr` (call on the executor that will serve). glommio always sets SO_REUSEPORT,
    /// so binding a port that is in use succeeds silently: tests bind port 0 and read
    /// [`Server::local_addr`] back.
    pub fn bind<A: ToSocketAddrs>(addr: A, config: ServerConfig) -> Result<Self, NetError> {
        // Resolved here because glommio's bind panics on an address that does not resolve.
        let addr = addr.to_socket_addrs()?.next().ok_or_else(|| {
            NetError::Io(io::Error::new(io::ErrorKind::InvalidInput, "empty bind address"))
        })?;
        let listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        Ok(Self { listener, local_addr, config: Rc::new(config) })
    }

    /// The bound address, with the real port when bound to port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accepts and serves connections until `shutdown` fires, then closes the listener and
    /// returns once every connection has ended (at most `shutdown_grace` later).
    pub async fn serve<H: Handler + ?Sized + 'static>(self, handler: Rc<H>, shutdown: Shutdown) {
        let Server { listener, config, .. } = self;
        let acceptor = config.tls.clone().map(futures_rustls::TlsAcceptor::from);
        let cap = u64::try_from(config.max_connections.max(1)).unwrap_or(u64::MAX);
        let slots = Rc::new(Semaphore::new(cap));
        let websockets = Rc::new(Cell::new(0usize));
        loop {
            let permit = or(async { slots.acquire_static_permit(1).await.ok() }, async {
                shutdown.wait().await;
                None
            })
            .await;
            let Some(permit) = permit else { break };
            let accepted = or(async { Some(listener.accept().await) }, async {
                shutdown.wait().await;
                None
            })
            .await;
            let stream = match accepted {
                None => break,
                Some(Ok(stream)) => stream,
                Some(Err(e)) => {
                    // EMFILE and friends persist for a while: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let (handler, config, shutdown, acceptor, websockets) = (
                Rc::clone(&handler),
                Rc::clone(&config),
                shutdown.clone(),
                acceptor.clone(),
                Rc::clone(&websockets),
            );
            glommio::spawn_local(async move {
                let grace = config.shutdown_grace;
                let conn = async {
                    if let Some(stream) = accept_stream(stream, acceptor, &config).await {
                        serve_connection(stream, handler, config, shutdown.clone(), websockets)
                            .await;
                    }
                };
                or(conn, async {
                    shutdown.wait().await;
                    glommio::timer::sleep(grace).await;
                })
                .await;
                drop(permit);
            })
            .detach();
        }
        drop(listener);
        // Every connection holds one unit until it ends; holding them all means none is left.
        let _ = slots.acquire(cap).await;
    }
}

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn websocket_accept_key(client_key: &str) -> String {
    derive_accept_key(client_key.trim().as_bytes())
}

/// Sets the socket options every connection needs, then does the TLS handshake if the server
/// has TLS. `None`: the handshake failed or timed out (the client is dropped).
async fn accept_stream(
    stream: TcpStream,
    acceptor: Option<futures_rustls::TlsAcceptor>,
    cfg: &ServerConfig,
) -> Option<ServerStream> {
    // Small responses and frames must not wait for Nagle's timer; a TLS handshake without it
    // took ~43 ms instead of ~0.6 ms (stack notes).
    let _ = stream.set_nodelay(true);
    if let Some(t) = cfg.write_timeout.filter(|t| !t.is_zero()) {
        let _ = stream.set_write_timeout(Some(t));
    }
    let Some(acceptor) = acceptor else { return Some(MaybeTls::Plain(stream)) };
    // Runs in the connection's task, so a slow handshake holds one slot, never the accept loop.
    match with_timeout(cfg.read_timeout, acceptor.accept(stream)).await {
        Some(Ok(tls)) => Some(MaybeTls::Tls(Box::new(tls))),
        Some(Err(e)) => {
            tracing::debug!(error = %e, "tls handshake failed");
            None
        }
        None => {
            tracing::debug!("tls handshake timed out");
            None
        }
    }
}

pub(crate) async fn with_timeout<T>(dur: Duration, fut: impl Future<Output = T>) -> Option<T> {
    or(async { Some(fut.await) }, async {
        glommio::timer::sleep(dur).await;
        None
    })
    .await
}

/// Appends up to `want` bytes from the stream; `Ok(0)` is end of stream.
pub(crate) async fn read_more<S: futures_lite::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    want: usize,
) -> io::Result<usize> {
    // Cancellation-safe: if the read is dropped (timeout, shutdown) the guard still trims the
    // zero padding, so it never passes for received bytes.
    struct Trim<'a> {
        buf: &'a mut Vec<u8>,
        keep: usize,
    }
    impl Drop for Trim<'_> {
        fn drop(&mut self) {
            self.buf.truncate(self.keep);
        }
    }
    let old = buf.len();
    buf.resize(old + want.max(1), 0);
    let mut guard = Trim { buf, keep: old };
    let n = stream.read(guard.buf.get_mut(old..).unwrap_or_default()).await?;
    guard.keep = old + n;
    Ok(n)
}

pub(super) enum Incoming {
    Request(Request, usize),
    Closed,
    Reject(Response),
}

pub(super) async fn write_all(stream: &mut ServerStream, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            websocket_accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
