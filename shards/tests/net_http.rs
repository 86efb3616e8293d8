//! The HTTP side of `polybook_shards::net`: routing, bodies, keep-alive, limits, timeouts and
//! shutdown, through ureq (on glommio's blocking pool, so the server can run on the test's own
//! executor) and through raw sockets where a test needs bytes a client would never send.

mod common;

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use common::{agent, agent_trusting, http, http_get, http_post_json, http_with, TEST_USER_AGENT};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use polybook_shards::net::{
    Handler, Request, Response, Server, ServerConfig, Shutdown, TlsIdentity,
};
use serde_json::{json, Value};

/// Runs `f` on a fresh executor; a hang fails the test instead of blocking the suite.
fn run<F: Future<Output = ()> + 'static>(f: impl FnOnce() -> F) {
    common::run_on_executor(Duration::from_secs(60), f)
}

#[derive(Default)]
struct App {
    peers: RefCell<Vec<Option<SocketAddr>>>,
    agents: RefCell<Vec<Option<String>>>,
}

impl Handler for App {
    fn handle(&self, req: &Request) -> Response {
        self.peers.borrow_mut().push(req.peer);
        self.agents.borrow_mut().push(req.header("user-agent").map(str::to_owned));
        match (req.method.as_str(), req.path.as_str()) {
            ("GET" | "HEAD", "/book") => match req.query_param("token_id") {
                Some(id) => Response::json(200, &json!({ "token_id": id, "q": req.raw_query })),
                None => Response::error(400, "token_id is required"),
            },
            ("POST", "/echo") => Response {
                content_type: req.header("content-type").unwrap_or("").to_owned().into(),
                ..Response::json_raw(200, req.body.clone())
            },
            (_, "/echo") => Response::method_not_allowed("POST"),
            _ => Response::not_found(),
        }
    }

    fn handle_async(
        &self,
        req: &Request,
    ) -> Option<futures_util::future::LocalBoxFuture<'static, Response>> {
        if req.path != "/slow" {
            return None;
        }
        Some(Box::pin(async {
            glommio::timer::sleep(Duration::from_millis(5)).await;
            Response::text(200, "later")
        }))
    }
}

struct Running {
    addr: SocketAddr,
    shutdown: Shutdown,
    task: glommio::Task<()>,
    app: Rc<App>,
}

fn start(config: ServerConfig) -> Running {
    let server = Server::bind("127.0.0.1:0", config).unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = server.local_addr();
    let shutdown = Shutdown::new();
    let app = Rc::new(App::default());
    let task = glommio::spawn_local(server.serve(Rc::clone(&app), shutdown.clone()));
    Running { addr, shutdown, task, app }
}

async fn stop(r: Running) {
    r.shutdown.trigger();
    r.task.await;
}

/// Writes raw bytes and reads until the server closes the connection.
async fn raw_exchange(addr: SocketAddr, wire: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
    s.write_all(wire).await.unwrap_or_else(|e| panic!("write: {e}"));
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one response (head and its content-length body) from a kept-alive connection.
async fn read_one_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_owned)
                })
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
        let n = s.read(&mut chunk).await.unwrap_or(0);
        assert!(n > 0, "closed before a whole response: {text}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn status_of(resp: &str) -> &str {
    resp.get(9..12).unwrap_or("")
}

#[test]
fn get_with_query_string() {
    run(|| async {
        let r = start(ServerConfig::default());
        let url = format!("http://{}/book?token_id=12%2034&x=1", r.addr);
        let resp = http_get(&url).await.unwrap_or_else(|e| panic!("get: {e}"));
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("Content-Type"), Some("application/json"));
        let v: Value = resp.json().unwrap_or_else(|e| panic!("json: {e}"));
        assert_eq!(v, json!({ "token_id": "12 34", "q": "token_id=12%2034&x=1" }));
        stop(r).await;
    });
}

#[test]
fn post_with_json_body() {
    run(|| async {
        let r = start(ServerConfig::default());
        let body = json!({ "markets": ["a", "b"], "n": 3 });
        let resp = http_post_json(&format!("http://{}/echo", r.addr), &body)
            .await
            .unwrap_or_else(|e| panic!("post: {e}"));
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json::<Value>().unwrap_or_else(|e| panic!("json: {e}")), body);
        let resp = http_get(&format!("http://{}/echo", r.addr))
            .await
            .unwrap_or_else(|e| panic!("get: {e}"));
        assert_eq!(resp.status, 405);
        assert_eq!(resp.header("allow"), Some("POST"));
        stop(r).await;
    });
}

#[test]
fn keep_alive_serves_two_requests_on_one_connection() {
    run(|| async {
        let r = start(ServerConfig::default());
        // One agent pools its connection: the second request reuses it if the server kept it.
        let one = agent();
        let base = format!("http://{}", r.addr);
        let a = http_with(&one, "GET", &format!("{base}/book?token_id=1"), None).await;
        let a = a.unwrap_or_else(|e| panic!("first: {e}"));
        let echo = format!("{base}/echo");
        let b = http_with(&one, "POST", &echo, Some(("text/plain", b"hello"))).await;
        let b = b.unwrap_or_else(|e| panic!("second: {e}"));
        assert_eq!((a.status, b.status), (200, 200));
        assert_eq!(b.body, b"hello");
        assert_eq!(b.header("content-type"), Some("text/plain"));
        let peers = r.app.peers.borrow().clone();
        assert_eq!(peers.len(), 2);
        assert!(peers[0].is_some() && peers[0] == peers[1], "one connection: {peers:?}");
        stop(r).await;
    });
}

#[test]
fn pipelined_requests_in_one_write_are_all_answered() {
    run(|| async {
        let r = start(ServerConfig::default());
        let wire = b"GET /book?token_id=1 HTTP/1.1\r\nHost: x\r\n\r\n\
                     POST /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
                     GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n";
        let out = raw_exchange(r.addr, wire).await;
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
        assert!(out.contains("\r\n\r\nabc"), "{out}");
        assert!(out.contains("HTTP/1.1 404 Not Found"), "{out}");
        assert!(out.ends_with(r#"{"error":"not found"}"#), "{out}");
        stop(r).await;
    });
}

#[test]
fn unknown_path_is_404() {
    run(|| async {
        let r = start(ServerConfig::default());
        let resp = http_get(&format!("http://{}/missing", r.addr))
            .await
            .unwrap_or_else(|e| panic!("get: {e}"));
        assert_eq!(resp.status, 404);
        assert_eq!(resp.json::<Value>().ok(), Some(json!({ "error": "not found" })));
        stop(r).await;
    });
}

#[test]
fn oversized_body_is_rejected_with_413() {
    run(|| async {
        let r = start(ServerConfig { max_body: 1024, ..ServerConfig::default() });
        let big = vec![b'x'; 4096];
        let resp = http("POST", &format!("http://{}/echo", r.addr), Some(("text/plain", &big)))
            .await
            .unwrap_or_else(|e| panic!("post: {e}"));
        assert_eq!(resp.status, 413);
        // A declared length far past the limit is refused from the head alone.
        let out =
            raw_exchange(r.addr, b"POST /echo HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n").await;
        assert_eq!(status_of(&out), "413", "{out}");
        let small = http_post_json(&format!("http://{}/echo", r.addr), &"ok").await;
        assert_eq!(small.map(|r| r.status).ok(), Some(200));
        stop(r).await;
    });
}

#[test]
fn bad_requests_get_400_431_or_501() {
    run(|| async {
        let r = start(ServerConfig { max_head: 1024, ..ServerConfig::default() });
        let out = raw_exchange(r.addr, b"NOT HTTP AT ALL\r\n\r\n").await;
        assert_eq!(status_of(&out), "400", "{out}");
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(2000));
        let out = raw_exchange(r.addr, long.as_bytes()).await;
        assert_eq!(status_of(&out), "431", "{out}");
        let out = raw_exchange(
            r.addr,
            b"POST /echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        )
        .await;
        assert_eq!(status_of(&out), "400", "{out}");
        let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
        let out = raw_exchange(r.addr, format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()).await;
        assert_eq!(status_of(&out), "431", "{out}");
        let out =
            raw_exchange(r.addr, b"POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").await;
        assert_eq!(status_of(&out), "501", "{out}");
        stop(r).await;
    });
}

#[test]
fn chunked_body_head_request_and_expect_continue() {
    run(|| async {
        let r = start(ServerConfig::default());
        let out = raw_exchange(
            r.addr,
            b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
              3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("\r\n\r\nabcde"), "{out}");

        let out =
            raw_exchange(r.addr, b"HEAD /book?token_id=7 HTTP/1.1\r\nConnection: close\r\n\r\n")
                .await;
        assert!(out.contains("content-length: ") && out.ends_with("\r\n\r\n"), "{out}");

        let mut s = TcpStream::connect(r.addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
        let head = b"POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\
                     Connection: close\r\n\r\n";
        s.write_all(head).await.unwrap_or_else(|e| panic!("write: {e}"));
        let mut interim = vec![0u8; 25];
        s.read_exact(&mut interim).await.unwrap_or_else(|e| panic!("read: {e}"));
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        s.write_all(b"hi").await.unwrap_or_else(|e| panic!("write: {e}"));
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        let rest = String::from_utf8_lossy(&rest);
        assert!(rest.starts_with("HTTP/1.1 200") && rest.ends_with("hi"), "{rest}");
        stop(r).await;
    });
}

#[test]
fn async_handler_answers() {
    run(|| async {
        let r = start(ServerConfig::default());
        let resp = http_get(&format!("http://{}/slow", r.addr)).await;
        let resp = resp.unwrap_or_else(|e| panic!("get: {e}"));
        assert_eq!((resp.status, resp.text().as_str()), (200, "later"));
        stop(r).await;
    });
}

#[test]
fn slow_client_is_cut_off_by_the_read_timeout() {
    run(|| async {
        let cfg = ServerConfig { read_timeout: Duration::from_millis(200), ..Default::default() };
        let r = start(cfg);
        // Half a head, then silence: the server answers 408 and closes.
        let out = raw_exchange(r.addr, b"GET /book?token_id=1 HTTP/1.1\r\nHost:").await;
        assert_eq!(status_of(&out), "408", "{out}");
        // An idle keep-alive connection is closed without a response.
        let mut s = TcpStream::connect(r.addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
        let mut rest = Vec::new();
        let n = s.read_to_end(&mut rest).await.unwrap_or(0);
        assert_eq!(n, 0);
        stop(r).await;
    });
}

#[test]
fn shutdown_stops_the_server_and_closes_idle_connections() {
    run(|| async {
        let r = start(ServerConfig::default());
        let addr = r.addr;
        // A kept-alive connection: one request answered, the connection left open.
        let mut idle = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
        idle.write_all(b"GET /book?token_id=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("write: {e}"));
        let first = read_one_response(&mut idle).await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        stop(r).await;
        // The kept-alive connection was closed by the server, and nothing listens any more.
        let mut rest = Vec::new();
        let n = idle.read_to_end(&mut rest).await.unwrap_or(0);
        assert_eq!(n, 0, "closed without another byte: {rest:?}");
        let err = http_get(&format!("http://{addr}/book?token_id=1")).await;
        assert!(err.is_err(), "{err:?}");
    });
}

#[test]
fn a_closure_is_a_handler() {
    run(|| async {
        let server = Server::bind("127.0.0.1:0", ServerConfig::default())
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = server.local_addr();
        let shutdown = Shutdown::new();
        let handler = Rc::new(|req: &Request| Response::text(200, req.path.clone()));
        let task = glommio::spawn_local(server.serve(handler, shutdown.clone()));
        let resp = http_get(&format!("http://{addr}/any/path?x=1")).await;
        let resp = resp.unwrap_or_else(|e| panic!("get: {e}"));
        assert_eq!((resp.status, resp.text().as_str()), (200, "/any/path"));
        shutdown.trigger();
        task.await;
    });
}

#[test]
fn https_keep_alive_clean_rejects_and_plain_clients_on_a_tls_port() {
    run(|| async {
        let id = TlsIdentity::self_signed_localhost().unwrap_or_else(|e| panic!("{e}"));
        let tls = id.server_config().unwrap_or_else(|e| panic!("{e}"));
        let r = start(ServerConfig { tls: Some(tls), max_body: 16, ..ServerConfig::default() });
        let trusting = agent_trusting(&[id.cert_der().clone()]);

        // Plain HTTP on the TLS port fails its handshake and is dropped; nothing is routed.
        let junk = raw_exchange(r.addr, b"GET /book?token_id=1 HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(!junk.starts_with("HTTP/"), "{junk}");
        assert!(r.app.peers.borrow().is_empty());

        // The name in the URL is the one the certificate is for, so it is checked for real.
        let base = format!("https://localhost:{}", r.addr.port());
        for i in 0..3 {
            let url = format!("{base}/book?token_id={i}");
            let resp = http_with(&trusting, "GET", &url, None).await;
            let resp = resp.unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(resp.status, 200, "{}", resp.text());
        }
        let peers = r.app.peers.borrow().clone();
        assert!(
            peers[0].is_some() && peers.iter().all(|p| *p == peers[0]),
            "kept alive: {peers:?}"
        );
        // A rejection is read whole over TLS too (close_notify and a drain, never a reset).
        let big = vec![b'x'; 4096];
        let resp =
            http_with(&trusting, "POST", &format!("{base}/echo"), Some(("text/plain", &big)))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status, 413, "{}", resp.text());
        // The default trust (webpki roots only) refuses the self-signed certificate.
        let err = http_get(&format!("{base}/book?token_id=1")).await.err();
        assert!(err.as_ref().is_some_and(|e| e.contains("certificate")), "{err:?}");
        let agents = r.app.agents.borrow().clone();
        assert_eq!(agents.len(), 3, "the 413 is answered from the head, before routing");
        assert!(agents.iter().all(|a| a.as_deref() == Some(TEST_USER_AGENT)), "{agents:?}");
        stop(r).await;
    });
}
