//! One connection: requests in turn (keep-alive), a WebSocket upgrade, or a rejection.

use std::cell::Cell;

use std::rc::Rc;
use std::time::Duration;

use async_tungstenite::tungstenite::protocol::Role;
use async_tungstenite::WebSocketStream;
use futures_lite::future::or;
use futures_lite::AsyncReadExt;

use super::read::read_request;
use super::{websocket_accept_key, with_timeout, Handler, ServerConfig};
use super::{write_all, Incoming};
use crate::net::http::{has_token, Request, Response};
use crate::net::signal::Shutdown;
use crate::net::stream::ServerStream;

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

pub(super) async fn serve_connection<H: Handler + ?Sized>(
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
