//! The WebSocket side of `polybook_shards::net`: upgrades through the server's handler, echo with
//! batched writes, a frame that arrives in the same packet as the upgrade request, refused
//! upgrades, the cap on WebSockets, client errors, shutdown of open sockets, and wss:// with a
//! self-signed certificate.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use async_tungstenite::tungstenite::protocol::Role;
use async_tungstenite::WebSocketStream;
use futures_lite::future::or;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use futures_rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use futures_rustls::rustls::RootCertStore;
use futures_util::{SinkExt, StreamExt};
use glommio::net::{TcpListener, TcpStream};
use polybook_shards::net::{
    connect_ws, connect_ws_with, tls_config_with_roots, websocket_accept_key, ws_task,
    ConnectOptions, Handler, Message, NetError, Request, Response, Server, ServerConfig, ServerWs,
    Shutdown, WsTask,
};

/// Runs `f` on a fresh executor; a hang fails the test instead of blocking the suite.
fn run<F: Future<Output = ()> + 'static>(f: impl FnOnce() -> F) {
    common::run_on_executor(Duration::from_secs(60), f)
}

/// Echoes text and binary frames, batching writes the way the simulator must: `feed` each echo
/// and flush only when no further frame is already waiting.
async fn echo(mut ws: ServerWs) {
    loop {
        let Some(Ok(msg)) = ws.next().await else { return };
        if msg.is_close() {
            return;
        }
        if (msg.is_text() || msg.is_binary()) && ws.feed(msg).await.is_err() {
            return;
        }
        // Flush when the read side has nothing buffered, so echoes leave in batches.
        let next = or(async { Some(ws.next().await) }, async {
            futures_lite::future::yield_now().await;
            None
        });
        match next.await {
            None => {
                if ws.flush().await.is_err() {
                    return;
                }
            }
            Some(Some(Ok(m))) if m.is_text() || m.is_binary() => {
                if ws.feed(m).await.is_err() {
                    return;
                }
                if ws.flush().await.is_err() {
                    return;
                }
            }
            Some(Some(Ok(m))) if m.is_close() => return,
            Some(Some(Ok(_))) => {}
            Some(_) => return,
        }
    }
}

struct App;

impl Handler for App {
    fn handle(&self, req: &Request) -> Response {
        match req.path.as_str() {
            "/ws/market" => Response::error(426, "websocket only"),
            "/health" => Response::text(200, "ok"),
            _ => Response::not_found(),
        }
    }

    fn upgrade(&self, req: &Request) -> Option<WsTask> {
        match req.path.as_str() {
            "/ws/market" => Some(ws_task(echo)),
            // Never returns on its own: only shutdown can end it.
            "/ws/hold" => Some(ws_task(|mut ws: ServerWs| async move {
                while let Some(Ok(_)) = ws.next().await {}
                futures_lite::future::pending::<()>().await;
            })),
            _ => None,
        }
    }
}

struct Running {
    addr: SocketAddr,
    shutdown: Shutdown,
    task: glommio::Task<()>,
}

fn start(config: ServerConfig) -> Running {
    let server = Server::bind("127.0.0.1:0", config).unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = server.local_addr();
    let shutdown = Shutdown::new();
    let task = glommio::spawn_local(server.serve(Rc::new(App), shutdown.clone()));
    Running { addr, shutdown, task }
}

async fn stop(r: Running) {
    r.shutdown.trigger();
    r.task.await;
}

async fn next_text<S>(ws: &mut WebSocketStream<S>) -> String
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    match ws.next().await {
        Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

#[test]
fn upgrade_and_echo_many_batched_frames() {
    run(|| async {
        let r = start(ServerConfig::default());
        let url = format!("ws://{}/ws/market", r.addr);
        let mut ws = connect_ws(&url).await.unwrap_or_else(|e| panic!("connect: {e}"));
        ws.send(Message::text("hello")).await.unwrap_or_else(|e| panic!("send: {e}"));
        assert_eq!(next_text(&mut ws).await, "hello");

        let n = 2000;
        for i in 0..n {
            ws.feed(Message::text(format!(r#"{{"i":{i}}}"#)))
                .await
                .unwrap_or_else(|e| panic!("feed: {e}"));
            if i % 64 == 63 {
                ws.flush().await.unwrap_or_else(|e| panic!("flush: {e}"));
            }
        }
        ws.flush().await.unwrap_or_else(|e| panic!("flush: {e}"));
        for i in 0..n {
            assert_eq!(next_text(&mut ws).await, format!(r#"{{"i":{i}}}"#));
        }
        ws.close(None).await.unwrap_or_else(|e| panic!("close: {e}"));
        stop(r).await;
    });
}

/// A masked client text frame, built by hand so it can share a write with the upgrade request.
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[test]
fn frame_sent_with_the_upgrade_request_is_not_lost() {
    run(|| async {
        let r = start(ServerConfig::default());
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let mut wire = format!(
            "GET /ws/market HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            r.addr
        )
        .into_bytes();
        wire.extend(masked_text_frame(b"first"));
        wire.extend(masked_text_frame(b"second"));
        let mut s = TcpStream::connect(r.addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
        s.write_all(&wire).await.unwrap_or_else(|e| panic!("write: {e}"));

        // Read up to the end of the 101 head; whatever follows already belongs to the socket.
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 512];
            let n = s.read(&mut chunk).await.unwrap_or_else(|e| panic!("read: {e}"));
            assert!(n > 0, "closed before the 101: {}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        let accept = websocket_accept_key(key).to_ascii_lowercase();
        assert!(head.contains(&format!("sec-websocket-accept: {accept}\r\n")), "{head}");

        let rest = buf[head_end..].to_vec();
        let mut ws = WebSocketStream::from_partially_read(s, rest, Role::Client, None).await;
        assert_eq!(next_text(&mut ws).await, "first");
        assert_eq!(next_text(&mut ws).await, "second");
        // Closed first so that shutdown need not wait out its grace period for this socket.
        ws.close(None).await.unwrap_or_else(|e| panic!("close: {e}"));
        stop(r).await;
    });
}

#[test]
fn refused_and_malformed_upgrades() {
    run(|| async {
        let r = start(ServerConfig::default());
        // The handler does not upgrade this path: the normal route answers (404).
        let err = connect_ws(&format!("ws://{}/ws/other", r.addr)).await;
        assert!(matches!(err, Err(NetError::WebSocket(_))), "{err:?}");

        let exchange = |wire: String| async move {
            let mut s = TcpStream::connect(r.addr).await.unwrap_or_else(|e| panic!("conn: {e}"));
            s.write_all(wire.as_bytes()).await.unwrap_or_else(|e| panic!("write: {e}"));
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        };
        let req = |version: &str, key: &str| {
            format!(
                "GET /ws/market HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n\r\n"
            )
        };
        let out = exchange(req("8", "dGhlIHNhbXBsZSBub25jZQ==")).await;
        assert!(out.starts_with("HTTP/1.1 426"), "{out}");
        assert!(out.contains("sec-websocket-version: 13"), "{out}");
        let out = exchange(req("13", "short")).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        // A plain GET of the WebSocket path reaches `handle`.
        let out = exchange("GET /ws/market HTTP/1.1\r\nConnection: close\r\n\r\n".into()).await;
        assert!(out.starts_with("HTTP/1.1 426"), "{out}");
        stop(r).await;
    });
}

#[test]
fn upgrades_beyond_max_websockets_get_503_while_http_is_still_served() {
    run(|| async {
        let cfg =
            ServerConfig { max_connections: 8, max_websockets: Some(3), ..Default::default() };
        let r = start(cfg);
        let url = format!("ws://{}/ws/market", r.addr);
        let mut open = Vec::new();
        for _ in 0..3 {
            open.push(connect_ws(&url).await.unwrap_or_else(|e| panic!("connect: {e}")));
        }
        let exchange = |wire: &'static str| async move {
            let mut s = TcpStream::connect(r.addr).await.unwrap_or_else(|e| panic!("conn: {e}"));
            s.write_all(wire.as_bytes()).await.unwrap_or_else(|e| panic!("write: {e}"));
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        };
        let upgrade = "GET /ws/market HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                       Sec-WebSocket-Version: 13\r\n\r\n";
        let out = exchange(upgrade).await;
        assert!(out.starts_with("HTTP/1.1 503") && out.contains("retry-after"), "{out}");
        // Plain HTTP is served from the slots WebSockets may not take.
        for _ in 0..10 {
            let out = exchange("GET /health HTTP/1.1\r\nConnection: close\r\n\r\n").await;
            assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        }
        // A WebSocket that ends gives its slot back.
        let mut first = open.remove(0);
        first.close(None).await.unwrap_or_else(|e| panic!("close: {e}"));
        while first.next().await.is_some() {}
        let mut again = None;
        for _ in 0..100 {
            if let Ok(ws) = connect_ws(&url).await {
                again = Some(ws);
                break;
            }
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        assert!(again.is_some(), "the slot of a closed WebSocket was not released");
        stop(r).await;
    });
}

#[test]
fn client_errors_are_typed() {
    run(|| async {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("probe: {e}"));
        let err = connect_ws(&format!("ws://127.0.0.1:{port}/ws/market")).await;
        assert!(matches!(err, Err(NetError::Connect { .. })), "{err:?}");
        let err = connect_ws("http://127.0.0.1:1/ws").await;
        assert!(matches!(err, Err(NetError::BadUrl { .. })), "{err:?}");
    });
}

#[test]
fn shutdown_ends_open_websockets_after_the_grace_period() {
    run(|| async {
        let cfg = ServerConfig { shutdown_grace: Duration::from_millis(100), ..Default::default() };
        let r = start(cfg);
        let mut held = connect_ws(&format!("ws://{}/ws/hold", r.addr))
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        let mut echoing = connect_ws(&format!("ws://{}/ws/market", r.addr))
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        echoing.send(Message::text("x")).await.unwrap_or_else(|e| panic!("send: {e}"));
        assert_eq!(next_text(&mut echoing).await, "x");
        stop(r).await;
        // Both sockets were dropped by the server: reads end instead of hanging.
        assert!(!matches!(held.next().await, Some(Ok(Message::Text(_)))));
        assert!(!matches!(echoing.next().await, Some(Ok(Message::Text(_)))));
    });
}

/// A TLS WebSocket echo server on a self-signed certificate, built from the same parts a test
/// venue would use; returns its port.
fn start_tls_echo(cert: CertificateDer<'static>, key: Vec<u8>) -> u16 {
    let provider = Arc::new(futures_rustls::rustls::crypto::ring::default_provider());
    let config = futures_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("versions: {e}"))
        .with_no_client_auth()
        .with_single_cert(vec![cert], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))
        .unwrap_or_else(|e| panic!("server config: {e}"));
    let acceptor = futures_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("addr: {e}"));
    glommio::spawn_local(async move {
        while let Ok(tcp) = listener.accept().await {
            let acceptor = acceptor.clone();
            glommio::spawn_local(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut ws) = async_tungstenite::accept_async(tls).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            })
            .detach();
        }
    })
    .detach();
    port
}

#[test]
fn wss_with_a_trusted_self_signed_certificate() {
    run(|| async {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .unwrap_or_else(|e| panic!("rcgen: {e}"));
        let cert = ck.cert.der().clone();
        let port = start_tls_echo(cert.clone(), ck.signing_key.serialize_der());

        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap_or_else(|e| panic!("root: {e}"));
        let tls = tls_config_with_roots(roots).unwrap_or_else(|e| panic!("tls config: {e}"));
        let opts = ConnectOptions { tls: Some(tls), ..Default::default() };
        // "localhost" goes through the resolver (off the executor) and must match the cert.
        let url = format!("wss://localhost:{port}/ws/market");
        let mut ws = connect_ws_with(&url, &opts).await.unwrap_or_else(|e| panic!("wss: {e}"));
        for i in 0..100 {
            ws.feed(Message::text(format!("m{i}"))).await.unwrap_or_else(|e| panic!("feed: {e}"));
        }
        ws.flush().await.unwrap_or_else(|e| panic!("flush: {e}"));
        for i in 0..100 {
            assert_eq!(next_text(&mut ws).await, format!("m{i}"));
        }

        // The default trust (webpki roots) must refuse the same self-signed certificate.
        let err = connect_ws(&url).await;
        assert!(err.is_err(), "untrusted certificate accepted");
    });
}
