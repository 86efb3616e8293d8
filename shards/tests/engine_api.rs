//! The engine's HTTP/WebSocket API as a hostile client meets it (issue 12): admin
//! credentials, cross-origin and DNS-rebinding requests, HTTP manners (405, HEAD, 400 on bad
//! queries), admin recycles under `recycle_concurrent_max`, HTTP kept reachable while every
//! `/ws` slot is held, and oversized WebSocket messages. Requests are written byte for byte
//! on raw sockets where headers matter.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use polybook_shards::config::{Config, ConfigError, Secret};
use polybook_shards::engine::{self, EngineHandle};
use serde_json::Value;

const TOKEN: &str = "test-admin-token-0123456789abcdef";

/// A response read off a raw socket.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

/// Sends `wire` as is and reads the whole answer (the request should say `Connection: close`).
fn raw(addr: SocketAddr, wire: &str) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap_or_else(|e| panic!("{e}"));
    s.write_all(wire.as_bytes()).unwrap_or_else(|e| panic!("write: {e}"));
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_reply(&String::from_utf8_lossy(&out))
}

fn parse_reply(text: &str) -> Reply {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.get(9..12)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Reply { status, headers, body: body.to_owned() }
}

/// A request with `Host: addr` (unless `headers` has one), a length for any body, and
/// `Connection: close`.
fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut wire = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        wire.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        wire.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        wire.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    wire.push_str("Connection: close\r\n\r\n");
    wire.push_str(body);
    raw(addr, &wire)
}

fn get_raw(addr: SocketAddr, path: &str) -> Reply {
    http(addr, "GET", path, &[], "")
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// Opens a `/ws` upgrade and reads the answer's head. The socket stays open on 101.
fn upgrade(addr: SocketAddr, headers: &[(&str, &str)]) -> (u16, TcpStream) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap_or_else(|e| panic!("{e}"));
    let mut wire = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (k, v) in headers {
        wire.push_str(&format!("{k}: {v}\r\n"));
    }
    wire.push_str("\r\n");
    s.write_all(wire.as_bytes()).unwrap_or_else(|e| panic!("write: {e}"));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    (parse_reply(&String::from_utf8_lossy(&head)).status, s)
}

fn start(
    sim: &polybook_shards::sim_server::SimServerHandle,
    change: impl FnOnce(&mut Config),
) -> EngineHandle {
    let cfg = engine_config_with(sim, 40, change);
    engine::start(&cfg).unwrap_or_else(|e| panic!("engine: {e}"))
}

/// A live engine's first market: (condition id, first token).
fn first_market(api: SocketAddr) -> (String, String) {
    wait_for("a market with a live book", Duration::from_secs(60), || {
        let r = get_raw(api, "/markets?status=active&limit=1");
        let m = &r.json()["markets"][0];
        let cid = m["condition_id"].as_str().unwrap_or_default().to_owned();
        let token = m["tokens"][0].as_str().unwrap_or_default().to_owned();
        let book = get_raw(api, &format!("/books/{token}"));
        if book.status == 200 && book.json()["status"] == "live" {
            Ok((cid, token))
        } else {
            Err(format!("{} {}", r.body, book.body))
        }
    })
}

#[test]
fn admin_needs_the_bearer_token_even_from_loopback() {
    let sim = sim(31, 10, 50.0);
    let engine = start(&sim, |c| c.api.admin_token = Some(Secret::new(TOKEN)));
    let api = engine.api_addr();
    let (cid, _) = first_market(api);
    let body = format!(r#"{{"condition_id":"{cid}"}}"#);
    let bearer = format!("Bearer {TOKEN}");
    let wrong = format!("Bearer {TOKEN}x");

    let none = http(api, "POST", "/admin/markets", &[JSON], &body);
    assert_eq!(none.status, 401, "{none:?}");
    assert!(none.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")), "{none:?}");
    for auth in [wrong.as_str(), "Bearer", "Basic dXNlcjpwYXNz", TOKEN] {
        let r = http(api, "POST", "/admin/markets", &[JSON, ("Authorization", auth)], &body);
        assert_eq!(r.status, 401, "{auth}: {r:?}");
    }
    let lower = format!("bearer {TOKEN}");
    let ok = http(api, "POST", "/admin/markets", &[JSON, ("Authorization", &lower)], &body);
    assert_eq!(ok.status, 200, "{ok:?}");
    let r = http(api, "POST", "/admin/recycle/1", &[JSON], "");
    assert_eq!(r.status, 401, "{r:?}");
    // Everything under /admin, known or not, any method: the token first.
    assert_eq!(http(api, "GET", "/admin/nothing", &[], "").status, 401);
    assert_eq!(http(api, "GET", "/admin", &[], "").status, 401);
    let r = http(api, "GET", "/admin/nothing", &[("Authorization", &bearer)], "");
    assert_eq!(r.status, 404, "{r:?}");
    let r = http(api, "GET", "/admin/markets", &[("Authorization", &bearer)], "");
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")), "{r:?}");
    // The rest of the API needs no token.
    assert_eq!(get_raw(api, "/health").status, 200);
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_non_loopback_listener_needs_an_admin_token_and_the_token_stays_secret() {
    let with = |listen: &str, token: Option<&str>| {
        let mut c = Config::default();
        c.api.listen = listen.into();
        c.api.admin_token = token.map(Secret::new);
        c.validate()
    };
    for listen in ["0.0.0.0:8080", "[::]:8080", "192.0.2.1:8080"] {
        match with(listen, None) {
            Err(e @ ConfigError::Invalid { key: "api.listen", .. }) => {
                assert!(e.to_string().contains("api.admin_token"), "{e}")
            }
            other => panic!("{listen} without a token: {other:?}"),
        }
        assert!(with(listen, Some(TOKEN)).is_ok(), "{listen} with a token");
    }
    assert!(with("127.0.0.1:8080", None).is_ok());
    assert!(with("[::1]:8080", None).is_ok());
    for bad in ["short", "has a space in it 0123456789", ""] {
        match with("0.0.0.0:8080", Some(bad)) {
            Err(e @ ConfigError::Invalid { key: "api.admin_token", .. }) => {
                assert!(bad.is_empty() || !e.to_string().contains(bad), "token in the error: {e}")
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    let valid = with("0.0.0.0:8080", Some(TOKEN)).unwrap_or_else(|e| panic!("{e}"));
    let shown = format!("{} {:?}", toml::to_string(&*valid).unwrap_or_default(), *valid);
    assert!(!shown.contains(TOKEN), "check-config or Debug shows the token: {shown}");
    assert!(shown.contains("admin_token = \"<redacted>\""), "{shown}");
}

#[test]
fn cross_origin_and_rebinding_requests_are_refused() {
    let sim = sim(32, 10, 50.0);
    let engine = start(&sim, |c| c.api.allowed_origins = vec!["https://dash.example.com".into()]);
    let api = engine.api_addr();
    let port = api.port();
    let (cid, _) = first_market(api);
    let body = format!(r#"{{"condition_id":"{cid}"}}"#);
    let evil = ("Origin", "http://evil.example");

    // The CSRF form: a text/plain POST from another site, which needs no preflight.
    let r = http(api, "POST", "/admin/markets", &[evil, ("Content-Type", "text/plain")], &body);
    assert_eq!(r.status, 403, "{r:?}");
    let r = http(api, "POST", "/admin/markets", &[evil, JSON], &body);
    assert_eq!(r.status, 403, "{r:?}");
    // Without an Origin (an old browser, a privacy proxy) the content type still stops it.
    for ct in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"] {
        let r = http(api, "POST", "/admin/markets", &[("Content-Type", ct)], &body);
        assert_eq!(r.status, 415, "{ct}: {r:?}");
    }
    let r = http(api, "POST", "/admin/markets", &[], &body);
    assert_eq!(r.status, 415, "no content type: {r:?}");
    let r = http(
        api,
        "POST",
        "/admin/markets",
        &[("Content-Type", "application/json; charset=utf-8")],
        &body,
    );
    assert_eq!(r.status, 200, "{r:?}");

    // DNS rebinding: the attacker's name resolving to 127.0.0.1.
    let attacker_port = format!("attacker.example:{port}");
    for host in [
        "attacker.example",
        attacker_port.as_str(),
        "localhost",
        "127.0.0.1:1",
        "dash.example.com:80",
    ] {
        let r = http(api, "GET", "/stats", &[("Host", host)], "");
        assert_eq!(r.status, 403, "Host {host}: {r:?}");
    }
    // Probes by the pod's address still answer (read-only, nothing to rebind for).
    for path in ["/health", "/ready"] {
        let r = http(api, "GET", path, &[("Host", "10.1.2.3:8080")], "");
        assert!(matches!(r.status, 200 | 503), "{path} with a pod-IP Host: {r:?}");
    }
    let r = raw(api, "GET /stats HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 400, "no Host: {r:?}");
    let twice = format!(
        "GET /stats HTTP/1.1\r\nHost: {api}\r\nHost: attacker.example\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(raw(api, &twice).status, 400);
    let own = [format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::1]:{port}")];
    for host in own.iter().map(String::as_str).chain(["dash.example.com", "DASH.example.com:443"]) {
        let r = http(api, "GET", "/stats", &[("Host", host)], "");
        assert_eq!(r.status, 200, "Host {host}: {r:?}");
    }
    let same = format!("http://localhost:{port}");
    for (origin, want) in [
        (same.as_str(), 200),
        ("https://dash.example.com", 200),
        ("null", 403),
        ("http://evil.example", 403),
        ("https://dash.example.com.evil.example", 403),
    ] {
        let r = http(api, "GET", "/markets", &[("Origin", origin)], "");
        assert_eq!(r.status, want, "Origin {origin}: {r:?}");
    }

    // WebSocket upgrades: the same rule (browsers do not apply CORS to WebSockets).
    let (status, _) = upgrade(api, &[evil]);
    assert_eq!(status, 403);
    let (status, _) = upgrade(api, &[("Origin", "null")]);
    assert_eq!(status, 403);
    let own_origin = format!("http://127.0.0.1:{port}");
    for origin in [own_origin.as_str(), "https://dash.example.com"] {
        let (status, _) = upgrade(api, &[("Origin", origin)]);
        assert_eq!(status, 101, "{origin}");
    }
    let (status, _) = upgrade(api, &[]);
    assert_eq!(status, 101, "no Origin: not a browser");
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn wrong_methods_head_and_bad_query_values() {
    let sim = sim(33, 10, 50.0);
    let engine = start(&sim, |_| {});
    let api = engine.api_addr();
    let (cid, token) = first_market(api);

    for (method, path, allow) in [
        ("DELETE", "/stats", "GET, HEAD"),
        ("PUT", "/books/1", "GET, HEAD"),
        ("OPTIONS", "/markets", "GET, HEAD"),
        ("POST", "/", "GET, HEAD"),
        ("GET", "/admin/markets", "POST"),
        ("DELETE", "/admin/recycle/1", "POST"),
    ] {
        let headers: &[(&str, &str)] = if method == "POST" { &[JSON] } else { &[] };
        let r = http(api, method, path, headers, "");
        assert_eq!((r.status, r.header("allow")), (405, Some(allow)), "{method} {path}: {r:?}");
    }
    let r = http(api, "POST", "/health", &[JSON], "{}");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")), "{r:?}");
    assert_eq!(get_raw(api, "/nothing").status, 404);

    // HEAD: the GET's status and headers, no body.
    let book = format!("/books/{token}");
    let market = format!("/markets/{cid}");
    for path in [
        "/",
        "/index.html",
        "/app.js",
        "/app.css",
        "/health",
        "/ready",
        "/stats",
        "/metrics",
        "/markets",
        &market,
        &book,
    ] {
        let g = get_raw(api, path);
        let h = http(api, "HEAD", path, &[], "");
        assert_eq!(h.status, g.status, "HEAD {path}: {h:?}");
        assert!(h.body.is_empty(), "HEAD {path} has a body");
        let len: usize = h.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        assert!(len > 0, "HEAD {path}: {h:?}");
        if path.starts_with("/app") || path == "/" || path == "/index.html" {
            assert_eq!(len, g.body.len(), "HEAD {path}: the GET's length");
        }
        assert_eq!(h.header("content-type"), g.header("content-type"), "HEAD {path}");
    }

    // Bad values are 400 naming the parameter and what it takes, never a silent default.
    for (path, name, takes) in [
        ("/markets?limit=abc".to_owned(), "limit", "0 to 1000"),
        ("/markets?limit=5000".into(), "limit", "0 to 1000"),
        ("/markets?offset=-1".into(), "offset", "whole number"),
        ("/markets?status=bogus".into(), "status", "active, resolved, closed, expired"),
        ("/markets?shard=q".into(), "shard", "0 to 1"),
        ("/markets?shard=2".into(), "shard", "0 to 1"),
        ("/markets?stauts=active".into(), "stauts", "status, shard, q, offset, limit"),
        ("/markets?limit=1&limit=2".into(), "limit", "twice"),
        (format!("{book}?depth=x"), "depth", "whole number"),
        (format!("{book}?depth=-1"), "depth", "whole number"),
        (format!("{book}?dpeth=1"), "dpeth", "depth"),
        ("/health?verbose=1".into(), "verbose", "no query parameters"),
    ] {
        let r = get_raw(api, &path);
        let e = r.error();
        assert_eq!(r.status, 400, "{path}: {r:?}");
        assert!(e.contains(name) && e.contains(takes), "{path}: {e}");
    }
    for path in [
        "/markets?status=active&shard=1&q=&offset=0&limit=0".to_owned(),
        "/markets?limit=1000&offset=5".into(),
        format!("{book}?depth=1"),
        format!("{book}?depth=0"),
        "/?v=2".into(),
    ] {
        let r = get_raw(api, &path);
        assert_eq!(r.status, 200, "{path}: {r:?}");
    }
    let r = get_raw(api, &format!("{book}?depth=1"));
    assert_eq!(r.json()["bids"].as_array().map(Vec::len), Some(1), "{r:?}");
    let r = get_raw(api, "/ws");
    assert_eq!((r.status, r.header("upgrade")), (426, Some("websocket")), "{r:?}");
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
}

/// A TCP relay to `target` that can start holding new connections open without relaying
/// anything: a replacement socket opened by a recycle then never gets its books, so the
/// recycle stays in flight.
fn stalling_relay(target: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let stall = Arc::new(AtomicBool::new(false));
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let stalling = Arc::clone(&stall);
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            if stalling.load(Ordering::SeqCst) {
                if let Ok(mut h) = held.lock() {
                    h.push(client);
                }
                continue;
            }
            let Ok(venue) = TcpStream::connect(target) else { continue };
            let (Ok(c2), Ok(v2)) = (client.try_clone(), venue.try_clone()) else { continue };
            for (mut from, mut to) in [(client, v2), (venue, c2)] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    (addr, stall)
}

/// An engine whose six connections (one market each) are up, and whose recycles cannot
/// finish: new sockets are held by the relay.
fn engine_with_stuck_recycles(
    seed: u64,
) -> (polybook_shards::sim_server::SimServerHandle, EngineHandle, Vec<u64>) {
    let sim = sim(seed, 6, 20.0);
    let (relay, stall) = stalling_relay(sim.addr());
    let cfg = engine_config_with(&sim, 2, |c| {
        c.endpoints.ws_url = format!("ws://{relay}/ws/market");
        c.lifecycle.recycle_concurrent_max = 2;
        c.lifecycle.handoff_timeout_ms = 60_000;
    });
    let engine = engine::start(&cfg).unwrap_or_else(|e| panic!("engine: {e}"));
    let s = wait_for("books live", Duration::from_secs(60), || all_books_settled(&engine, 12));
    stall.store(true, Ordering::SeqCst);
    let conns = connections(&s).iter().filter_map(|c| c["id"].as_u64()).collect::<Vec<_>>();
    assert!(conns.len() >= 6, "{conns:?}");
    (sim, engine, conns)
}

fn connections(stats: &Value) -> Vec<Value> {
    stats["shards"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["connections"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn recycling(engine: &EngineHandle) -> usize {
    connections(&stats(engine)).iter().filter(|c| c["recycling"] == true).count()
}

#[test]
fn admin_recycles_in_a_row_obey_recycle_concurrent_max() {
    let (sim, engine, conns) = engine_with_stuck_recycles(34);
    let api = engine.api_addr();
    let mut codes = Vec::new();
    for id in conns.iter().take(6) {
        let r = http(api, "POST", &format!("/admin/recycle/{id}"), &[JSON], "");
        if r.status == 429 {
            assert!(r.error().contains("recycle_concurrent_max = 2"), "{r:?}");
            assert!(r.header("retry-after").is_some(), "{r:?}");
        }
        codes.push(r.status);
    }
    assert_eq!(codes, [200, 200, 429, 429, 429, 429]);
    // /stats answers from 250 ms snapshots: wait for one taken after the recycles began.
    wait_for("two recycles in flight", Duration::from_secs(10), || match recycling(&engine) {
        2 => Ok(()),
        n => Err(format!("{n} recycling")),
    });
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn concurrent_admin_recycles_obey_recycle_concurrent_max() {
    let (sim, engine, conns) = engine_with_stuck_recycles(35);
    let api = engine.api_addr();
    let threads: Vec<_> = conns
        .iter()
        .take(6)
        .map(|&id| {
            std::thread::spawn(move || {
                http(api, "POST", &format!("/admin/recycle/{id}"), &[JSON], "").status
            })
        })
        .collect();
    let mut codes: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap_or(0)).collect();
    codes.sort_unstable();
    assert_eq!(codes, [200, 200, 429, 429, 429, 429]);
    // /stats answers from 250 ms snapshots: wait for one taken after the recycles began.
    wait_for("two recycles in flight", Duration::from_secs(10), || match recycling(&engine) {
        2 => Ok(()),
        n => Err(format!("{n} recycling")),
    });
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn http_answers_while_every_ws_slot_is_held() {
    let sim = sim(36, 10, 50.0);
    let engine = start(&sim, |c| {
        c.api.connections_max = 64;
        c.api.ws_connections_max = Some(48);
    });
    let api = engine.api_addr();
    first_market(api);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..60 {
        match upgrade(api, &[]) {
            (101, s) => held.push(s),
            (503, _) => refused += 1,
            (other, _) => panic!("upgrade answered {other}"),
        }
    }
    assert_eq!((held.len(), refused), (48, 12));
    for path in ["/health", "/ready", "/metrics", "/stats"] {
        let t = Instant::now();
        let r = get_raw(api, path);
        let ms = t.elapsed().as_millis();
        println!("{path} with {} idle /ws held: {} in {ms} ms", held.len(), r.status);
        assert!(r.status == 200 || (path == "/ready" && r.status == 503), "{path}: {r:?}");
    }
    // Freed slots are given out again.
    held.truncate(40);
    wait_for("ws slots released", Duration::from_secs(10), || match upgrade(api, &[]) {
        (101, s) => {
            held.push(s);
            Ok(())
        }
        (other, _) => Err(other.to_string()),
    });
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_ws_message_over_64_kib_ends_the_stream() {
    let sim = sim(37, 10, 50.0);
    let engine = start(&sim, |_| {});
    let api = engine.api_addr();
    first_market(api);
    let request = |n: usize| format!(r#"{{"op":"subscribe","tokens":["{}"]}}"#, "9".repeat(n));
    let connect = || {
        let (ws, _) =
            tungstenite::connect(format!("ws://{api}/ws")).unwrap_or_else(|e| panic!("{e}"));
        ws
    };

    // Under the limit: answered.
    let mut ws = connect();
    ws.send(tungstenite::Message::text(request(60 << 10))).unwrap_or_else(|e| panic!("{e}"));
    match ws.read() {
        Ok(tungstenite::Message::Text(t)) => assert!(t.contains("subscribed"), "{}", &t[..80]),
        other => panic!("60 KiB: {other:?}"),
    }

    let mut ws = connect();
    let sent = ws.send(tungstenite::Message::text(request(1 << 20)));
    let answer = match ws.read() {
        Ok(tungstenite::Message::Text(t)) => panic!("1 MiB request answered: {}", &t[..80]),
        Ok(tungstenite::Message::Close(frame)) => {
            // The stream loop names tungstenite's capacity error: 1009, as documented.
            let code = frame.as_ref().map(|f| u16::from(f.code));
            assert_eq!(code, Some(1009), "{frame:?}");
            format!("closed: {frame:?}")
        }
        Ok(other) => panic!("1 MiB: {other:?}"),
        Err(e) => format!("ended: {e}"),
    };
    println!("1 MiB /ws message (send: {sent:?}): {answer}");
    // The server is unharmed.
    assert_eq!(get_raw(api, "/health").status, 200);
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
}
