//! The `/ws` live stream: a client rebuilds books from the stream alone (snapshot, then every
//! change, sequence numbers without gaps) and they equal the engine's books and the truth; a
//! client that does not read is disconnected while the books stay exact.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use polybook_shards::engine;
use polybook_testkit::book_json::{price_units, side_map};
use serde_json::Value;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

fn connect(api: &str) -> Ws {
    let (ws, _) = tungstenite::connect(format!("ws://{api}/ws")).unwrap_or_else(|e| panic!("{e}"));
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    }
    ws
}

/// A book rebuilt from stream messages: price units -> size text, per side.
#[derive(Default)]
struct StreamBook {
    seq: u64,
    snap: bool,
    bids: BTreeMap<u64, String>,
    asks: BTreeMap<u64, String>,
    gaps: u64,
}

/// The socket's read timeout expired (no message yet), as opposed to the stream ending.
fn read_timed_out(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

fn apply(books: &mut HashMap<String, StreamBook>, msg: &Value) {
    let Some(token) = msg["token_id"].as_str() else { return };
    let seq = msg["seq"].as_u64().unwrap_or(0);
    let b = books.entry(token.to_owned()).or_default();
    if msg["type"] == "snapshot" {
        if !b.snap || seq >= b.seq {
            b.bids = side_map(&msg["book"]["bids"]);
            b.asks = side_map(&msg["book"]["asks"]);
            b.seq = seq;
            b.snap = true;
        }
        return;
    }
    // Anything at or before the snapshot's sequence is already in it.
    if !b.snap || seq <= b.seq {
        return;
    }
    if seq != b.seq + 1 {
        b.gaps += 1;
    }
    b.seq = seq;
    if msg["type"] == "level" {
        let side = if msg["side"] == "BUY" { &mut b.bids } else { &mut b.asks };
        let price = price_units(msg["price"].as_str().unwrap_or("0"));
        let size = msg["size"].as_str().unwrap_or("0");
        if size == "0" {
            side.remove(&price);
        } else {
            side.insert(price, size.to_owned());
        }
    }
}

/// Reads for at most `total`, or until `quiet` passes with no message; returns how many.
fn drain(
    ws: &mut Ws,
    books: &mut HashMap<String, StreamBook>,
    total: Duration,
    quiet: Duration,
) -> usize {
    let start = Instant::now();
    let mut last = Instant::now();
    let mut n = 0;
    while last.elapsed() < quiet && start.elapsed() < total {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                apply(books, &v);
                n += 1;
                last = Instant::now();
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if read_timed_out(&e) => {}
            Err(e) => panic!("stream ended: {e}"),
        }
    }
    n
}

#[test]
fn ws_client_rebuilds_books_from_the_stream_alone() {
    let sim = sim(51, 30, 500.0);
    let engine = engine::start(&engine_config(&sim, 40)).unwrap_or_else(|e| panic!("{e}"));
    let api = engine.api_addr().to_string();
    wait_for("all books live", Duration::from_secs(60), || all_books_settled(&engine, 60));
    let (_, list) = get(&format!("http://{api}/markets?status=active&limit=4"));
    let markets: Vec<String> = list["markets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["condition_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(markets.len(), 4);
    let mut ws = connect(&api);
    let req = serde_json::json!({"op": "subscribe", "markets": markets, "tokens": ["nope"]});
    ws.send(Message::text(req.to_string())).unwrap_or_else(|e| panic!("{e}"));
    let mut books: HashMap<String, StreamBook> = HashMap::new();
    // The reply names the tokens and the unknown id.
    let reply = loop {
        if let Ok(Message::Text(t)) = ws.read() {
            let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
            if v["type"] == "subscribed" {
                break v;
            }
            apply(&mut books, &v);
        }
    };
    assert_eq!(reply["tokens"].as_array().map(Vec::len), Some(8), "{reply}");
    assert_eq!(reply["unknown"], serde_json::json!(["nope"]));
    let n = drain(&mut ws, &mut books, Duration::from_secs(3), Duration::from_secs(3));
    assert!(n > 20, "only {n} stream messages in 3 s");
    wait_at_rest(&sim.http_url());
    drain(&mut ws, &mut books, Duration::from_secs(30), Duration::from_secs(1));
    assert_eq!(books.len(), 8);
    for (token, b) in &books {
        assert!(b.snap, "{token}: no snapshot");
        assert_eq!(b.gaps, 0, "{token}: sequence gaps");
        let (_, ours) = get(&format!("http://{api}/books/{token}"));
        let (_, truth) = get(&format!("{}/sim/book/{token}", sim.http_url()));
        assert_eq!(b.bids, side_map(&ours["bids"]), "{token}: bids vs engine");
        assert_eq!(b.asks, side_map(&ours["asks"]), "{token}: asks vs engine");
        assert_eq!(b.bids, side_map(&truth["bids"]), "{token}: bids vs truth");
        assert_eq!(b.asks, side_map(&truth["asks"]), "{token}: asks vs truth");
    }
    let bad = serde_json::json!({"op": "dance"}).to_string();
    ws.send(Message::text(bad)).unwrap_or_else(|e| panic!("{e}"));
    let answer = loop {
        if let Ok(Message::Text(t)) = ws.read() {
            let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
            if v["type"] == "error" {
                break v;
            }
        }
    };
    assert!(answer["error"].as_str().is_some_and(|e| e.contains("unknown op")), "{answer}");
    let _ = ws.close(None);
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn slow_ws_client_is_dropped_and_books_stay_exact() {
    let sim = sim(52, 40, 400.0);
    let mut c = (*engine_config(&sim, 40)).clone();
    c.api.ws_client_buffer_max = 16;
    let engine = engine::start(&c.validate().unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|e| panic!("{e}"));
    let api = engine.api_addr().to_string();
    wait_for("all books live", Duration::from_secs(60), || all_books_settled(&engine, 80));
    let tokens: Vec<String> = sim_tokens(&sim).into_iter().map(|(t, _)| t).collect();
    let mut slow = connect(&api);
    let req = serde_json::json!({"op": "subscribe", "tokens": tokens});
    slow.send(Message::text(req.to_string())).unwrap_or_else(|e| panic!("{e}"));
    // It never reads; its snapshots alone overflow a 16-message queue.
    let s = wait_for("the slow client dropped", Duration::from_secs(30), || {
        let s = stats(&engine);
        let dropped = s["streams"]["clients_dropped_slow"].as_u64().unwrap_or(0);
        if dropped >= 1 {
            Ok(s)
        } else {
            Err(s["streams"].to_string())
        }
    });
    assert_eq!(s["streams"]["clients"], 0, "{}", s["streams"]);
    // Its socket ends (close frame 1008, or reset).
    let mut ended = false;
    for _ in 0..200 {
        match slow.read() {
            Ok(Message::Close(frame)) => {
                if let Some(f) = frame {
                    assert_eq!(u16::from(f.code), 1008);
                }
                ended = true;
                break;
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if read_timed_out(&e) => {}
            Err(_) => {
                ended = true;
                break;
            }
        }
    }
    assert!(ended, "the slow client's stream did not end");
    wait_at_rest(&sim.http_url());
    wait_for("books equal to truth", Duration::from_secs(30), || {
        compare_with_truth(&engine, &sim, &|_, _| false)
    });
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
}
