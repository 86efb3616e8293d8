//! Stream integrity under venue faults (issue 12): clients that keep books from `/ws` alone,
//! by the README's rules, end with exactly the engine's books and statuses (and the truth), or
//! were told the book is gone — never a wrong book without knowing. Both subscribe modes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use polybook_shards::engine;
use polybook_shards::sim_server::{spawn_sim_server, RandomFaults, SimServerConfig};
use polybook_testkit::book_json::{price_units, side_map};
use serde_json::Value;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

#[derive(Default, Debug, Clone)]
struct ClientBook {
    seq: u64,
    status: String,
    bids: BTreeMap<u64, String>,
    asks: BTreeMap<u64, String>,
    /// The engine said the book is gone (`reset`).
    dropped: bool,
}

#[derive(Default)]
struct Client {
    books: HashMap<String, ClientBook>,
    gaps: u64,
    messages: u64,
    closed: Option<String>,
}

/// The README's client rules.
fn apply(c: &mut Client, msg: &Value) {
    c.messages += 1;
    let Some(token) = msg["token_id"].as_str() else { return };
    let seq = msg["seq"].as_u64().unwrap_or(0);
    let b = c.books.entry(token.to_owned()).or_default();
    match msg["type"].as_str() {
        // A snapshot replaces the book whenever it is not older than what we hold.
        Some("snapshot") if seq >= b.seq || b.status.is_empty() => {
            let book = &msg["book"];
            b.bids = side_map(&book["bids"]);
            b.asks = side_map(&book["asks"]);
            b.status = book["status"].as_str().unwrap_or("").to_owned();
            b.seq = seq;
            b.dropped = false;
        }
        Some("snapshot") => {}
        Some("reset") => {
            *b = ClientBook { seq, dropped: true, ..ClientBook::default() };
        }
        Some(kind) => {
            if b.status.is_empty() || seq <= b.seq {
                return;
            }
            if seq != b.seq + 1 {
                c.gaps += 1;
            }
            b.seq = seq;
            match kind {
                "level" => {
                    let side = if msg["side"] == "BUY" { &mut b.bids } else { &mut b.asks };
                    let price = price_units(msg["price"].as_str().unwrap());
                    match msg["size"].as_str().unwrap() {
                        "0" => side.remove(&price),
                        size => side.insert(price, size.to_owned()),
                    };
                }
                "status" => b.status = msg["status"].as_str().unwrap().to_owned(),
                _ => {}
            }
        }
        None => {}
    }
}

/// Reads until `stop`, then until the stream has been quiet for a second.
fn run_client(api: String, req: Value, stop: Arc<AtomicBool>) -> Client {
    let (mut ws, _): (Ws, _) = tungstenite::connect(format!("ws://{api}/ws")).unwrap();
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    }
    ws.send(Message::text(req.to_string())).unwrap();
    let mut c = Client::default();
    let mut quiet_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if stop.load(Ordering::SeqCst) && quiet_since.elapsed() > Duration::from_secs(1) {
            break;
        }
        if Instant::now() > deadline {
            c.closed = Some("test deadline".into());
            break;
        }
        match ws.read() {
            Ok(Message::Text(t)) => {
                apply(&mut c, &serde_json::from_str(t.as_str()).unwrap());
                quiet_since = Instant::now();
            }
            Ok(Message::Close(f)) => {
                c.closed = Some(format!("{f:?}"));
                break;
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                c.closed = Some(e.to_string());
                break;
            }
        }
    }
    c
}

#[test]
fn stream_clients_hold_the_engines_books_after_venue_faults() {
    let sim = spawn_sim_server(SimServerConfig {
        seed: 71,
        markets: 120,
        rate: 500.0,
        real_shape: exact_shape(),
        random_faults: Some(RandomFaults { seed: 71, per_minute: 120.0 }),
        ..SimServerConfig::default()
    })
    .unwrap();
    assert_eq!(post(&format!("{}/sim/faults/random/off", sim.http_url()), ""), 200);
    // The paused venue must not turn books stale while the clients' books are compared with
    // the engine's one by one (the status would move between the two reads).
    let cfg = engine_config_with(&sim, 40, |c| c.integrity.stale_after_ms = 600_000);
    let engine = engine::start(&cfg).unwrap();
    let api = engine.api_addr().to_string();
    wait_for("all books live", Duration::from_secs(90), || all_books_settled(&engine, 240));
    // Every market is streamed, half by market id and half by token id: resolutions, closes
    // and resyncs during the faults all reach some client.
    let (_, list) = get(&format!("http://{api}/markets?status=active&limit=1000"));
    let markets: Vec<Value> = list["markets"].as_array().unwrap().clone();
    assert!(markets.len() >= 100, "{} markets", markets.len());
    let half = markets.len() / 2;
    let by_market: Vec<String> =
        markets[..half].iter().map(|m| m["condition_id"].as_str().unwrap().to_owned()).collect();
    let by_token: Vec<String> = markets[half..]
        .iter()
        .flat_map(|m| m["tokens"].as_array().unwrap().clone())
        .map(|t| {
            t.as_str().map_or_else(|| t["token_id"].as_str().unwrap().to_owned(), str::to_owned)
        })
        .collect();
    assert_eq!(by_token.len(), 2 * (markets.len() - half));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = [
        serde_json::json!({"op": "subscribe", "markets": by_market}),
        serde_json::json!({"op": "subscribe", "tokens": by_token}),
    ]
    .map(|req| {
        let (api, stop) = (api.clone(), Arc::clone(&stop));
        std::thread::spawn(move || run_client(api, req, stop))
    });
    // Faults: drops, 1013s, silences, duplicates, skips, malformed frames, Gamma trouble.
    assert_eq!(post(&format!("{}/sim/faults/random/on", sim.http_url()), ""), 200);
    std::thread::sleep(Duration::from_secs(30));
    assert_eq!(post(&format!("{}/sim/faults/random/off", sim.http_url()), ""), 200);
    // Let the engine repair what the faults broke, then stop the venue and drain.
    std::thread::sleep(Duration::from_secs(5));
    wait_at_rest(&sim.http_url());
    wait_for("engine books equal the truth", Duration::from_secs(60), || {
        compare_with_truth(&engine, &sim, &|_, _| false)
    });
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let clients: Vec<Client> = clients.into_iter().map(|h| h.join().unwrap()).collect();
    let faults = get(&format!("{}/sim/status", sim.http_url())).1;
    for (i, c) in clients.iter().enumerate() {
        assert!(c.closed.is_none(), "client {i} was closed: {:?}", c.closed);
        assert!(c.books.len() >= 2 * half, "client {i} has {} books", c.books.len());
        let mut wrong = Vec::new();
        for (token, b) in &c.books {
            let (status, ours) = get(&format!("http://{api}/books/{token}"));
            if status == 404 {
                if !b.dropped {
                    wrong.push(format!("{token}: engine has no book, client keeps {b:?}"));
                }
                continue;
            }
            assert_eq!(status, 200);
            let want = (side_map(&ours["bids"]), side_map(&ours["asks"]), ours["status"].clone());
            let have = (b.bids.clone(), b.asks.clone(), Value::from(b.status.clone()));
            if want != have || b.dropped {
                wrong.push(format!(
                    "{token}: client {have:?} engine {want:?} dropped {}",
                    b.dropped
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "client {i}: {} of {} books differ (gaps {}, faults {}): {wrong:#?}",
            wrong.len(),
            c.books.len(),
            c.gaps,
            faults["faults"]
        );
    }
    engine.stop();
    sim.stop().unwrap();
}
