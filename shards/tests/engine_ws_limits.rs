//! `/ws` clients are bounded (issue 12): an idle client is closed, the `unknown` echo is capped,
//! and operations are rate limited — each tried from outside as a hostile client would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use polybook_shards::engine;
use serde_json::Value;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

fn connect(api: &str) -> Ws {
    let (ws, _) = tungstenite::connect(format!("ws://{api}/ws")).unwrap();
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    }
    ws
}

/// The next text message, or the close frame's code, within `limit`.
fn next(ws: &mut Ws, limit: Duration) -> Result<Value, Option<u16>> {
    let start = Instant::now();
    while start.elapsed() < limit {
        match ws.read() {
            Ok(Message::Text(t)) => return Ok(serde_json::from_str(t.as_str()).unwrap()),
            Ok(Message::Close(f)) => return Err(f.map(|f| u16::from(f.code))),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Err(None),
        }
    }
    panic!("nothing within {limit:?}");
}

#[test]
fn ws_clients_are_bounded_idle_unknown_and_rate() {
    let sim = sim(81, 10, 100.0);
    let cfg = engine_config_with(&sim, 40, |c| {
        c.api.ws_idle_ms = 500;
        c.api.ws_ops_per_s_max = 5;
    });
    let engine = engine::start(&cfg).unwrap();
    let api = engine.api_addr().to_string();
    wait_for("all books live", Duration::from_secs(60), || all_books_settled(&engine, 20));

    // Idle: connected, never subscribes: closed with 4000.
    let mut idle = connect(&api);
    let start = Instant::now();
    assert_eq!(next(&mut idle, Duration::from_secs(10)).err(), Some(Some(4000)));
    assert!(start.elapsed() >= Duration::from_millis(400));

    // A 2,000-id subscribe of unknown ids (under the 64 KiB message limit) gets a capped echo.
    let mut ws = connect(&api);
    let ids: Vec<String> = (0..2_000).map(|i| format!("no-such-token-{i}")).collect();
    ws.send(Message::text(serde_json::json!({"op": "subscribe", "tokens": ids}).to_string()))
        .unwrap();
    let reply = next(&mut ws, Duration::from_secs(10)).unwrap();
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["unknown"].as_array().map(Vec::len), Some(100));
    assert_eq!(reply["unknown_count"], 2_000);

    // 5 operations a second (burst 10): a volley of 30 gets refusals, the client stays up.
    for _ in 0..30 {
        ws.send(Message::text(r#"{"op":"unsubscribe","tokens":["x"]}"#)).unwrap();
    }
    let (mut ok, mut limited) = (0, 0);
    while ok + limited < 30 {
        let v = next(&mut ws, Duration::from_secs(10)).unwrap();
        match v["type"].as_str() {
            Some("unsubscribed") => ok += 1,
            Some("error") if v["error"].as_str().is_some_and(|e| e.contains("rate limited")) => {
                limited += 1
            }
            _ => {}
        }
    }
    assert!(limited >= 15, "ok {ok}, limited {limited}");
    // The burst (10) less the subscribe above, plus what refilled meanwhile.
    assert!(ok >= 9, "ok {ok}, limited {limited}");
    engine.stop();
    sim.stop().unwrap();
}
