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

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use async_tungstenite::WebSocketStream;
use futures_lite::future::or;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use futures_util::future::LocalBoxFuture;
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;

use super::error::NetError;
use super::http::{
    body_kind, decode_chunked, has_token, parse_query, BodyKind, ChunkError, FramingError, Request,
    Response,
};
use super::signal::Shutdown;
use super::stream::{MaybeTls, ServerStream};

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

const MAX_HEADERS: usize = 64;

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

enum Incoming {
    Request(Request, usize),
    Closed,
    Reject(Response),
}

/// One upgraded WebSocket counted against [`ServerConfig::max_websockets`] while it lives.
struct WsSlot(Rc<Cell<usize>>);

impl WsSlot {
    fn take(count: &Rc<Cell<usize>>, max: Option<usize>) -> Option<WsSlot> {
        if max.is_some_and(|m| count.get() >= m) {
            return None;
        }
        count.set(count.get() + 1);
        Some(WsSlot(Rc::clone(count)))
    }
}

impl Drop for WsSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

async fn serve_connection<H: Handler + ?Sized>(
    mut stream: ServerStream,
    handler: Rc<H>,
    cfg: Rc<ServerConfig>,
    shutdown: Shutdown,
    websockets: Rc<Cell<usize>>,
) {
    let peer = stream.tcp().peer_addr().ok();
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let incoming = or(
            async {
                let read = read_request(&mut stream, &mut buf, &cfg, peer);
                match with_timeout(cfg.read_timeout, read).await {
                    Some(r) => r,
                    None if buf.is_empty() => Ok(Incoming::Closed),
                    None => Ok(Incoming::Reject(Response::error(408, "request timeout"))),
                }
            },
            async {
                shutdown.wait().await;
                Ok(Incoming::Closed)
            },
        )
        .await;
        let (req, used) = match incoming {
            Ok(Incoming::Request(req, used)) => (req, used),
            Ok(Incoming::Closed) | Err(_) => return,
            Ok(Incoming::Reject(resp)) => {
                reject_and_close(stream, &resp).await;
                return;
            }
        };
        buf.drain(..used);

        if req.is_websocket_upgrade() {
            if let Some(task) = handler.upgrade(&req) {
                let accept = match check_upgrade(&req) {
                    Ok(accept) => accept,
                    Err(resp) => {
                        reject_and_close(stream, &resp).await;
                        return;
                    }
                };
                let Some(slot) = WsSlot::take(&websockets, cfg.max_websockets) else {
                    tracing::debug!(peer = ?peer, "websocket upgrade refused: at capacity");
                    let resp = Response::error(503, "too many websocket connections; retry later")
                        .with_header("retry-after", "5");
                    reject_and_close(stream, &resp).await;
                    return;
                };
                let head = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
                     connection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
                );
                if write_all(&mut stream, head.as_bytes()).await.is_err() {
                    return;
                }
                // A client may send its first frame together with the upgrade request: those
                // bytes are already in `buf` and must reach the WebSocket, not be dropped.
                let leftover = std::mem::take(&mut buf);
                let ws = WebSocketStream::from_partially_read(
                    stream,
                    leftover,
                    Role::Server,
                    cfg.ws_config,
                )
                .await;
                task(ws).await;
                drop(slot);
                return;
            }
        }

        let resp = match handler.handle_async(&req) {
            Some(fut) => fut.await,
            None => handler.handle(&req),
        };
        let keep_alive = wants_keep_alive(&req) && !shutdown.is_triggered();
        let wire = resp.serialize(keep_alive, req.method == "HEAD");
        if write_all(&mut stream, &wire).await.is_err() || !keep_alive {
            return;
        }
    }
}

fn wants_keep_alive(req: &Request) -> bool {
    let conn = req.header("connection");
    if req.version_minor >= 1 {
        !conn.is_some_and(|c| has_token(c, "close"))
    } else {
        conn.is_some_and(|c| has_token(c, "keep-alive"))
    }
}

/// Validates a WebSocket upgrade the handler wants and returns the accept key.
fn check_upgrade(req: &Request) -> Result<String, Response> {
    if req.method != "GET" || req.version_minor < 1 {
        return Err(Response::error(400, "websocket upgrade needs GET over HTTP/1.1"));
    }
    if req.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(Response::error(426, "unsupported websocket version")
            .with_header("sec-websocket-version", "13"));
    }
    let key = req.header("sec-websocket-key").map(str::trim).unwrap_or_default();
    // The key is 16 random bytes in base64: 22 symbols and "==".
    let well_formed = key.len() == 24
        && key.ends_with("==")
        && key[..22].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if !well_formed {
        return Err(Response::error(400, "bad sec-websocket-key"));
    }
    Ok(websocket_accept_key(key))
}

/// Sends an error response and closes without resetting the connection: unread request bytes
/// at close() make the kernel send RST, which can destroy the response before the client reads
/// it. So shut down our side, drain what the client still sends for a moment, then close.
async fn reject_and_close(mut stream: ServerStream, resp: &Response) {
    if write_all(&mut stream, &resp.serialize(false, false)).await.is_err() {
        return;
    }
    let _ = stream.shutdown_write().await;
    let drain = async {
        let mut sink = [0u8; 8192];
        let mut total = 0usize;
        while total < 4 << 20 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = with_timeout(Duration::from_secs(1), drain).await;
}

async fn write_all(stream: &mut ServerStream, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
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

enum Head {
    Partial,
    Complete(Request, usize),
    Reject(Response),
}

fn parse_head(buf: &[u8], max_head: usize, peer: Option<SocketAddr>) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let too_large = || Head::Reject(Response::error(431, "request head too large"));
    let n = match parsed.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= max_head => return too_large(),
        Ok(httparse::Status::Partial) => return Head::Partial,
        Ok(httparse::Status::Complete(n)) if n > max_head => return too_large(),
        Ok(httparse::Status::Complete(n)) => n,
        Err(httparse::Error::TooManyHeaders) => return too_large(),
        Err(_) => return Head::Reject(Response::error(400, "malformed request")),
    };
    let target = parsed.path.unwrap_or("/");
    // Absolute-form targets (`GET http://host/p`) are legal; route on their path.
    let target = match target.split_once("://") {
        Some((_, rest)) if !target.starts_with('/') => {
            rest.find('/').map_or("/", |i| rest.get(i..).unwrap_or("/"))
        }
        _ => target,
    };
    let (path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let req = Request {
        method: parsed.method.unwrap_or_default().to_owned(),
        path: path.to_owned(),
        raw_query: raw_query.to_owned(),
        query: parse_query(raw_query),
        headers: parsed
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
            .collect(),
        body: Vec::new(),
        version_minor: parsed.version.unwrap_or(1),
        peer,
    };
    Head::Complete(req, n)
}

async fn read_request(
    stream: &mut ServerStream,
    buf: &mut Vec<u8>,
    cfg: &ServerConfig,
    peer: Option<SocketAddr>,
) -> io::Result<Incoming> {
    let (mut req, head_len) = loop {
        if !buf.is_empty() {
            match parse_head(buf, cfg.max_head, peer) {
                Head::Partial => {}
                Head::Complete(req, n) => break (req, n),
                Head::Reject(resp) => return Ok(Incoming::Reject(resp)),
            }
        }
        if read_more(stream, buf, 4096).await? == 0 {
            return Ok(Incoming::Closed);
        }
    };
    let kind = match body_kind(&req.headers) {
        Ok(kind) => kind,
        Err(e @ FramingError::Unsupported) => {
            return Ok(Incoming::Reject(Response::error(501, e.message())))
        }
        Err(e) => return Ok(Incoming::Reject(Response::error(400, e.message()))),
    };
    let too_large = || Incoming::Reject(Response::error(413, "request body too large"));
    let mut continue_sent = false;
    let expects_continue =
        req.header("expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue"));
    match kind {
        None => Ok(Incoming::Request(req, head_len)),
        Some(BodyKind::Length(n)) => {
            let Some(n) = usize::try_from(n).ok().filter(|&n| n <= cfg.max_body) else {
                return Ok(too_large());
            };
            let total = head_len + n;
            while buf.len() < total {
                if expects_continue && !continue_sent {
                    continue_sent = true;
                    write_all(stream, b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                }
                let want = (total - buf.len()).clamp(4096, 256 << 10);
                if read_more(stream, buf, want).await? == 0 {
                    return Ok(Incoming::Closed);
                }
            }
            req.body = buf.get(head_len..total).unwrap_or_default().to_vec();
            Ok(Incoming::Request(req, total))
        }
        Some(BodyKind::Chunked) => loop {
            match decode_chunked(buf.get(head_len..).unwrap_or_default(), cfg.max_body) {
                Ok(Some((body, used))) => {
                    req.body = body;
                    return Ok(Incoming::Request(req, head_len + used));
                }
                Ok(None) => {}
                Err(ChunkError::TooLarge) => return Ok(too_large()),
                Err(ChunkError::Malformed) => {
                    return Ok(Incoming::Reject(Response::error(400, "malformed chunked body")))
                }
            }
            // Chunk framing overhead is bounded too, not only the decoded size.
            if buf.len() - head_len > cfg.max_body.saturating_mul(2).saturating_add(64 << 10) {
                return Ok(too_large());
            }
            if expects_continue && !continue_sent {
                continue_sent = true;
                write_all(stream, b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            }
            if read_more(stream, buf, 16 << 10).await? == 0 {
                return Ok(Incoming::Closed);
            }
        },
    }
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

    #[test]
    fn head_parsing() {
        let wire = b"GET http://h/book?token_id=1%202&x HTTP/1.1\r\nHost: h\r\n\r\nrest";
        let Head::Complete(req, n) = parse_head(wire, 1024, None) else {
            panic!("head not parsed")
        };
        assert_eq!(n, wire.len() - 4);
        assert_eq!(req.path, "/book");
        assert_eq!(req.query_param("token_id"), Some("1 2"));
        assert_eq!(req.query_param("x"), Some(""));
        assert_eq!(req.header("HOST"), Some("h"));
        assert!(matches!(parse_head(b"GET / HTTP/1.1\r\n", 1024, None), Head::Partial));
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nA: b\r\n", 10, None),
            Head::Reject(Response { status: 431, .. })
        ));
        assert!(matches!(
            parse_head(b"GE\0T / HTTP/1.1\r\n\r\n", 1024, None),
            Head::Reject(Response { status: 400, .. })
        ));
    }
}
