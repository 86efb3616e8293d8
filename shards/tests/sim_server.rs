//! The simulated exchange through its network interfaces, the way the engine and its tests see
//! it: REST and Gamma conformance, market-channel subscriptions and limits, a client that
//! applies every frame ends equal to the truth, every fault kind is observable from a client,
//! and the same seed gives the same frames.
//!
//! Each test starts its own server with `spawn_sim_server` (its own thread and executor) and
//! talks to it from a fresh executor on the test thread. Nothing asserts on timing: waits poll
//! with generous deadlines.

mod common;

use std::cell::RefCell;
use std::collections::HashSet;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Error as WsError;
use common::{http, http_get, http_post_json, HttpResponse};
use futures_util::StreamExt;
use glommio::channels::local_channel::{self, LocalSender};
use polybook::book::TokenMeta;
use polybook::protocol::encode::{subscribe_frame, SubscribeOp};
use polybook::protocol::gamma::parse_keyset_page;
use polybook::protocol::{decode_frame, FrameKind, MarketEvent};
use polybook::sim::RealShape;
use polybook::store::NoSink;
use polybook::view::BookView;
use polybook::{BookStore, MarketId, Price, Size, StoreConfig, TokenId};
use polybook_shards::net::{connect_ws, Message};
use polybook_shards::sim_server::{
    spawn_sim_server, RandomFaults, SimServerConfig, SimServerHandle, NO_ORDERBOOK,
    SLOW_CONSUMER_REASON,
};
use serde_json::{json, Value};

/// A fixed venue clock, so runs with the same seed are byte-identical.
const T0: u64 = 1_790_000_000_000;

/// How long any wait may take before the test fails (CI has 2 busy cores).
const DEADLINE: Duration = Duration::from_secs(20);

/// Runs `f` on a fresh executor; a hang fails the test instead of blocking the suite.
fn run<F: Future<Output = ()> + 'static>(f: impl FnOnce() -> F) {
    common::run_on_executor(Duration::from_secs(90), f)
}

/// A paused server with a fixed clock; `f` adjusts the rest.
///
/// Plain traffic: the store these tests compare with still checks each entry's hash on its own
/// and raises false alarms on same-timestamp runs until it judges runs at their end (issue 17).
fn sim(f: impl FnOnce(&mut SimServerConfig)) -> SimServerHandle {
    let mut cfg = SimServerConfig {
        seed: 7,
        markets: 12,
        rate: 0.0,
        start_paused: true,
        start_ms: Some(T0),
        real_shape: RealShape::off(),
        ..SimServerConfig::default()
    };
    f(&mut cfg);
    spawn_sim_server(cfg).unwrap_or_else(|e| panic!("sim server: {e}"))
}

async fn sleep_ms(ms: u64) {
    glommio::timer::sleep(Duration::from_millis(ms)).await;
}

async fn get(url: &str) -> HttpResponse {
    http_get(url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

async fn get_json(url: &str) -> Value {
    let r = get(url).await;
    assert_eq!(r.status, 200, "GET {url}: {}", r.text());
    r.json().unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

async fn post(url: &str) -> HttpResponse {
    http("POST", url, None).await.unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

async fn post_json(url: &str, body: &Value) -> HttpResponse {
    http_post_json(url, body).await.unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

/// `POST /sim/step?n=..&now_ms=..`.
async fn step(base: &str, n: u64, now_ms: u64) {
    let r = post(&format!("{base}/sim/step?n={n}&now_ms={now_ms}")).await;
    assert_eq!(r.status, 200, "step: {}", r.text());
}

async fn fault(base: &str, body: Value) -> HttpResponse {
    post_json(&format!("{base}/sim/fault"), &body).await
}

async fn status(base: &str) -> Value {
    get_json(&format!("{base}/sim/status")).await
}

/// Polls `/sim/status` until `ok` holds.
async fn wait_status(base: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let s = status(base).await;
        if ok(&s) {
            return s;
        }
        assert!(start.elapsed() < DEADLINE, "waited too long for {what}: {s}");
        sleep_ms(10).await;
    }
}

/// The id of the connection that has the most recent id.
fn newest_conn(status: &Value) -> u64 {
    let ids = status["connections"].as_array().map(|c| c.iter().filter_map(|c| c["id"].as_u64()));
    ids.and_then(Iterator::max).unwrap_or_else(|| panic!("no connections: {status}"))
}

/// One market as `/sim/markets` lists it.
#[derive(Debug, Clone)]
struct Market {
    condition_id: String,
    tokens: [String; 2],
    active: bool,
    meta: TokenMeta,
}

async fn markets(base: &str) -> Vec<Market> {
    let v = get_json(&format!("{base}/sim/markets")).await;
    let list = v.as_array().unwrap_or_else(|| panic!("not a list: {v}"));
    let s = |x: &Value| x.as_str().unwrap_or_else(|| panic!("not a string: {x}")).to_owned();
    list.iter()
        .map(|m| Market {
            condition_id: s(&m["condition_id"]),
            tokens: [s(&m["tokens"][0]), s(&m["tokens"][1])],
            active: m["active"].as_bool().unwrap_or_else(|| panic!("active: {m}")),
            meta: TokenMeta {
                tick_size: Price::parse(&s(&m["tick_size"])).ok(),
                min_order_size: Size::parse(&s(&m["min_order_size"])).ok(),
                neg_risk: m["neg_risk"].as_bool(),
            },
        })
        .collect()
}

fn track(store: &mut BookStore, m: &Market) {
    for t in &m.tokens {
        store.track(TokenId::new(t), MarketId::new(&m.condition_id), m.meta);
    }
}

/// Asserts the client's book of `token` has the truth's levels and tick size.
async fn assert_equals_truth(base: &str, store: &BookStore, token: &str) {
    let truth = get_json(&format!("{base}/sim/book/{token}")).await;
    let book = store.get(token).unwrap_or_else(|| panic!("untracked {token}"));
    let ours = serde_json::to_value(BookView::new(book)).unwrap_or_else(|e| panic!("{e}"));
    for k in ["bids", "asks", "tick_size"] {
        assert_eq!(ours[k], truth[k], "token {token} {k}");
    }
}

/// How a client connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    Close(u16, String),
    /// The stream ended without a close frame (reset, EOF).
    NoCloseFrame(String),
}

/// What a client has received so far.
#[derive(Default)]
struct Seen {
    /// Every text frame but `PONG`, in order.
    frames: Vec<String>,
    pongs: usize,
    /// Frames that `decode_frame` rejected, whole or in part.
    undecodable: Vec<String>,
    ended: Option<Ending>,
}

/// A market-channel client: a reader task records frames, a writer task sends what `send`
/// queues. Dropping it cancels both.
struct Client {
    seen: Rc<RefCell<Seen>>,
    out: Rc<LocalSender<String>>,
    _reader: glommio::Task<()>,
    _writer: glommio::Task<()>,
}

impl Client {
    async fn connect(url: &str) -> Client {
        let ws = connect_ws(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
        let (mut tx, mut rx) = ws.split();
        let seen = Rc::new(RefCell::new(Seen::default()));
        let (out, out_rx) = local_channel::new_unbounded::<String>();
        let writer = glommio::spawn_local(async move {
            while let Some(text) = out_rx.recv().await {
                if tx.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
        });
        let seen2 = Rc::clone(&seen);
        let reader = glommio::spawn_local(async move {
            let ending = loop {
                match rx.next().await {
                    Some(Ok(Message::Text(t))) => record(&mut seen2.borrow_mut(), t.as_str()),
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame
                            .map_or((0, String::new()), |f| (f.code.into(), f.reason.to_string()));
                        break Ending::Close(code, reason);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(WsError::ConnectionClosed)) => break Ending::Close(0, String::new()),
                    Some(Err(e)) => break Ending::NoCloseFrame(e.to_string()),
                    None => break Ending::NoCloseFrame("end of stream".into()),
                }
            };
            seen2.borrow_mut().ended = Some(ending);
        });
        Client { seen, out: Rc::new(out), _reader: reader, _writer: writer }
    }

    fn send(&self, text: impl Into<String>) {
        self.out.try_send(text.into()).unwrap_or_else(|e| panic!("send: {e}"));
    }

    /// Opens a subscription and waits for its opening dump.
    async fn open(&self, tokens: &[&str], custom: bool) {
        let n = self.frame_count();
        self.send(subscribe_frame(SubscribeOp::Open, tokens, custom));
        self.wait("opening dump", |s| s.frames.len() > n).await;
    }

    fn frame_count(&self) -> usize {
        self.seen.borrow().frames.len()
    }

    fn frames(&self) -> Vec<String> {
        self.seen.borrow().frames.clone()
    }

    fn ended(&self) -> Option<Ending> {
        self.seen.borrow().ended.clone()
    }

    async fn wait(&self, what: &str, ok: impl Fn(&Seen) -> bool) {
        let start = Instant::now();
        while !ok(&self.seen.borrow()) {
            let s = self.seen.borrow();
            assert!(
                start.elapsed() < DEADLINE,
                "waited too long for {what}: {} frames, ended {:?}",
                s.frames.len(),
                s.ended
            );
            drop(s);
            sleep_ms(5).await;
        }
    }

    /// `PING` and wait for its `PONG`: the venue queues `PONG` behind data, so every frame
    /// sent before it has arrived.
    async fn ping_barrier(&self) {
        let before = self.seen.borrow().pongs;
        self.send("PING");
        self.wait("PONG", |s| s.pongs > before).await;
    }
}

fn record(seen: &mut Seen, text: &str) {
    if text == "PONG" {
        seen.pongs += 1;
        return;
    }
    let mut ok = true;
    let kind = decode_frame(text, |ev| ok &= ev.is_ok());
    if kind.is_err() || !ok {
        seen.undecodable.push(text.to_owned());
    }
    seen.frames.push(text.to_owned());
}

/// Condition ids a frame mentions (top level or per array element).
fn frame_markets(frame: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(frame).unwrap_or(Value::Null);
    let elements = match v {
        Value::Array(a) => a,
        other => vec![other],
    };
    elements.iter().filter_map(|e| e["market"].as_str().map(str::to_owned)).collect()
}

/// `asset_id`s of an opening dump frame.
fn dump_tokens(frame: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(frame).unwrap_or_else(|e| panic!("{e}: {frame}"));
    let a = v.as_array().unwrap_or_else(|| panic!("dump is not an array: {frame}"));
    a.iter().map(|b| b["asset_id"].as_str().unwrap_or_default().to_owned()).collect()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn tokens_of(ms: &[Market]) -> Vec<String> {
    ms.iter().flat_map(|m| m.tokens.iter().cloned()).collect()
}

#[test]
fn rest_and_gamma_conform() {
    let sim = sim(|_| {});
    let base = sim.http_url();
    run(move || async move {
        let ms = markets(&base).await;
        assert_eq!(ms.len(), 12);

        // Keyset paging walks every open market exactly once; the last page has no cursor.
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut url = format!("{base}/markets/keyset?closed=false&limit=5");
            if let Some(c) = &cursor {
                url.push_str(&format!("&after_cursor={c}"));
            }
            let r = get(&url).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let page = parse_keyset_page(&r.text()).unwrap_or_else(|e| panic!("{e}"));
            pages += 1;
            for m in page.markets {
                let m = m.unwrap_or_else(|e| panic!("market: {e}"));
                assert!(m.is_tradeable());
                seen.push(m.condition_id.to_string());
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(pages, 3);
        let all: Vec<String> = ms.iter().map(|m| m.condition_id.clone()).collect();
        assert_eq!(seen, all, "every market once, in order");
        let r = get(&format!("{base}/markets/keyset?offset=5")).await;
        assert_eq!(r.status, 422);
        let legacy = get_json(&format!("{base}/markets?limit=100&offset=10")).await;
        assert_eq!(legacy.as_array().map(Vec::len), Some(2));

        // REST books equal the truth; unknown tokens get the venue's 404 body.
        for t in [&ms[0].tokens[0], &ms[5].tokens[1]] {
            let r = get(&format!("{base}/book?token_id={t}")).await;
            assert_eq!((r.status, r.header("content-type")), (200, Some("application/json")));
            let rest: Value = r.json().unwrap_or_else(|e| panic!("{e}"));
            let truth = get_json(&format!("{base}/sim/book/{t}")).await;
            for (side, key) in [("bids", "bids"), ("asks", "asks")] {
                // REST lists levels in wire order (best last); BOOK JSON best first.
                let mut levels: Vec<Value> = rest[side]
                    .as_array()
                    .unwrap_or_else(|| panic!("{rest}"))
                    .iter()
                    .map(|l| json!([l["price"], l["size"]]))
                    .collect();
                levels.reverse();
                assert_eq!(Value::Array(levels), truth[key], "{t} {side}");
            }
            assert_eq!(rest["tick_size"], truth["tick_size"]);
        }
        let r = get(&format!("{base}/book?token_id=123")).await;
        assert_eq!((r.status, r.text().as_str()), (404, NO_ORDERBOOK));
        assert_eq!(get(&format!("{base}/sim/book/123")).await.status, 404);
        let (t1, t2) = (&ms[1].tokens[0], &ms[2].tokens[1]);
        let body = json!([{ "token_id": t1 }, { "token_id": "123" }, { "token_id": t2 }]);
        let r = post_json(&format!("{base}/books"), &body).await;
        let books: Value = r.json().unwrap_or_else(|e| panic!("{e}"));
        let ids: Vec<&str> = books
            .as_array()
            .unwrap_or_else(|| panic!("{books}"))
            .iter()
            .filter_map(|b| b["asset_id"].as_str())
            .collect();
        assert_eq!(ids, [ms[1].tokens[0].as_str(), ms[2].tokens[1].as_str()]);
        assert_eq!(get(&format!("{base}/ws/market")).await.status, 426);
        assert_eq!(get(&format!("{base}/nope")).await.status, 404);
        assert_eq!(post(&format!("{base}/sim/status")).await.status, 405);
    });
    sim.stop().unwrap_or_else(|e| panic!("stop: {e}"));
}

#[test]
fn market_channel_subscriptions_and_limits() {
    let sim = sim(|c| c.tokens_per_conn_max = 8);
    let (base, url) = (sim.http_url(), sim.ws_url());
    run(move || async move {
        let ms = markets(&base).await;
        let mut store = BookStore::new(StoreConfig::default());
        ms.iter().for_each(|m| track(&mut store, m));
        let mut now = T0;

        // Python-style spacing and extra keys are accepted; one dump frame, ending in \n.
        let a = Client::connect(&url).await;
        let first = tokens_of(&ms[0..3]);
        a.send(format!(
            "{{\"assets_ids\": {}, \"markets\": [], \"type\": \"market\", \"initial_dump\": true}}",
            serde_json::to_string(&first).unwrap_or_default()
        ));
        a.wait("opening dump", |s| !s.frames.is_empty()).await;
        let dump = &a.frames()[0];
        assert!(dump.ends_with("}]\n"), "{dump}");
        assert_eq!(decode_frame(dump, |_| {}).ok(), Some(FrameKind::Array(6)));
        assert_eq!(dump_tokens(dump), first);
        a.ping_barrier().await;

        now += 1_000;
        step(&base, 300, now).await;
        a.ping_barrier().await;
        let subscribed: HashSet<String> = ms[0..3].iter().map(|m| m.condition_id.clone()).collect();
        let live = a.frames()[1..].to_vec();
        assert!(live.len() > 10, "only {} frames", live.len());
        for f in &live {
            assert!(frame_markets(f).iter().all(|m| subscribed.contains(m)), "stray frame {f}");
            assert!(!f.contains("best_bid_ask") && !f.contains("new_market"), "custom: {f}");
        }

        // Dynamic subscribe: the new tokens' dump arrives; unsubscribe stops the frames.
        let n = a.frame_count();
        a.send(subscribe_frame(SubscribeOp::Subscribe, &refs(&ms[3].tokens), false));
        a.wait("dynamic dump", |s| s.frames.len() > n).await;
        assert_eq!(dump_tokens(&a.frames()[n]), ms[3].tokens);
        a.send(subscribe_frame(SubscribeOp::Unsubscribe, &refs(&ms[0].tokens), false));
        // A repeated opening frame adds nothing; junk is ignored and counted.
        a.send(subscribe_frame(SubscribeOp::Open, &refs(&ms[9].tokens), false));
        a.send("{\"assets_ids\":[\"1\"");
        a.ping_barrier().await;
        let n = a.frame_count();
        now += 1_000;
        step(&base, 300, now).await;
        a.ping_barrier().await;
        let after = a.frames()[n..].to_vec();
        let mentioned: HashSet<String> = after.iter().flat_map(|f| frame_markets(f)).collect();
        assert!(!mentioned.contains(&ms[0].condition_id), "unsubscribed market still sent");
        assert!(!mentioned.contains(&ms[9].condition_id), "repeated open frame subscribed");
        assert!(mentioned.contains(&ms[3].condition_id), "no frames for the new market");
        let st = status(&base).await;
        assert_eq!(st["client_frames_ignored"], 1, "{st}");
        assert_eq!(st["repeated_open_ignored"], 1, "{st}");

        // Every frame decodes, and every hash verifies against a store fed all of them.
        assert!(a.seen.borrow().undecodable.is_empty(), "{:?}", a.seen.borrow().undecodable);
        for f in &a.frames() {
            let r = store.apply_frame(f, &mut NoSink);
            assert!(r.errors.is_empty(), "{:?}", r.errors);
        }
        let c = store.counters();
        assert_eq!((c.hash_mismatches, c.bbo_mismatches), (0, 0), "{c:?}");
        assert!(c.hash_checks > 50, "{c:?}");
        for t in tokens_of(&ms[1..4]) {
            assert_equals_truth(&base, &store, &t).await;
        }

        // Over the per-connection limit: accepted, but no book and no updates.
        let b = Client::connect(&url).await;
        let wanted = tokens_of(&ms[4..9]);
        b.open(&refs(&wanted), false).await;
        assert_eq!(dump_tokens(&b.frames()[0]), wanted[..8]);
        let st = status(&base).await;
        let id = newest_conn(&st);
        let conn = st["connections"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["id"] == id))
            .unwrap_or_else(|| panic!("{st}"));
        assert_eq!((conn["tokens"].as_u64(), conn["tokens_ignored"].as_u64()), (Some(8), Some(2)));
        now += 1_000;
        step(&base, 400, now).await;
        b.ping_barrier().await;
        let mentioned: HashSet<String> = b.frames().iter().flat_map(|f| frame_markets(f)).collect();
        assert!(!mentioned.contains(&ms[8].condition_id), "token over the limit got frames");
        assert!(mentioned.contains(&ms[4].condition_id));
    });
    sim.stop().unwrap_or_else(|e| panic!("stop: {e}"));
}

/// Real-shaped traffic: a connection subscribed only to YES tokens gets every `price_change`
/// of their markets (NO entries included) but no trade event of a NO token: no
/// `last_trade_price`, no post-trade `book`, no `best_bid_ask` (protocol doc §3.10).
#[test]
fn real_shape_trade_events_reach_only_their_tokens_connections() {
    let sim = sim(|c| c.real_shape = RealShape::default());
    let (base, url) = (sim.http_url(), sim.ws_url());
    run(move || async move {
        let ms = markets(&base).await;
        let yes: Vec<String> =
            ms.iter().filter(|m| m.active).map(|m| m.tokens[0].clone()).collect();
        let no: HashSet<String> = ms.iter().map(|m| m.tokens[1].clone()).collect();
        let a = Client::connect(&url).await;
        a.open(&refs(&yes), true).await;
        step(&base, 3000, T0 + 1_000).await;
        a.ping_barrier().await;
        let (mut trades, mut books, mut no_entries) = (0, 0, 0);
        for f in &a.frames()[1..] {
            let r = decode_frame(f, |ev| match ev {
                Ok(MarketEvent::LastTradePrice(e)) => {
                    assert!(!no.contains(&*e.asset_id), "{f}");
                    trades += 1;
                }
                Ok(MarketEvent::Book(e)) => {
                    assert!(!no.contains(&*e.asset_id), "{f}");
                    books += 1;
                }
                Ok(MarketEvent::BestBidAsk(e)) => assert!(!no.contains(&*e.asset_id), "{f}"),
                Ok(MarketEvent::PriceChange(e)) => {
                    no_entries += e.changes.iter().filter(|c| no.contains(&*c.asset_id)).count();
                }
                _ => {}
            });
            assert!(r.is_ok(), "{f}");
        }
        assert!(trades > 10 && books > 10 && no_entries > 500, "{trades} {books} {no_entries}");
    });
    sim.stop().unwrap_or_else(|e| panic!("stop: {e}"));
}

/// The end-to-end property the engine relies on: subscribe to everything (and to each new
/// market as it is announced), apply every frame, pause, wait for rest: every book equals the
/// truth and every hash verified.
#[test]
fn client_applying_every_frame_equals_truth_at_rest() {
    let sim = sim(|c| {
        c.seed = 31;
        c.markets = 40;
        c.rate = 2_000.0;
        c.start_paused = false;
        c.start_ms = None;
    });
    let (base, url) = (sim.http_url(), sim.ws_url());
    run(move || async move {
        let mut store = BookStore::new(StoreConfig::default());
        let mut known: HashSet<String> = HashSet::new();
        let client = Client::connect(&url).await;
        let mut applied = 0;
        let start = Instant::now();
        let mut opened = false;
        let mut paused = false;
        loop {
            // Track and subscribe every market not seen yet (all at first, then new ones).
            let fresh: Vec<Market> = markets(&base)
                .await
                .into_iter()
                .filter(|m| m.active && !known.contains(&m.condition_id))
                .collect();
            for m in &fresh {
                track(&mut store, m);
                known.insert(m.condition_id.clone());
            }
            let ids = tokens_of(&fresh);
            if !opened {
                client.open(&refs(&ids), true).await;
                opened = true;
            } else if !ids.is_empty() {
                client.send(subscribe_frame(SubscribeOp::Subscribe, &refs(&ids), true));
            }
            if paused {
                client.ping_barrier().await;
            }
            let frames = client.frames();
            for f in &frames[applied..] {
                let r = store.apply_frame(f, &mut NoSink);
                assert!(r.errors.is_empty(), "{:?}: {f}", r.errors);
            }
            applied = frames.len();
            // New markets are announced by `new_market`; discovery would pick them up.
            let hints = store.drain_new_market_hints();
            if paused && ids.is_empty() && hints.is_empty() {
                break;
            }
            if !paused && start.elapsed() > Duration::from_millis(1_500) {
                assert_eq!(post(&format!("{base}/sim/pause")).await.status, 200);
                wait_status(&base, "rest", |s| s["at_rest"] == true).await;
                paused = true;
            }
            sleep_ms(20).await;
        }
        let st = status(&base).await;
        assert!(st["events"].as_u64() > Some(500), "{st}");
        let c = store.counters().clone();
        assert_eq!(c.hash_mismatches, 0, "{c:?}");
        assert_eq!(c.bbo_mismatches, 0, "{c:?}");
        assert_eq!(c.errors.total(), 0, "{c:?}");
        assert!(c.hash_checks > 500, "{c:?}");
        assert!(client.seen.borrow().undecodable.is_empty());
        let all = markets(&base).await;
        let mut compared = 0;
        for m in all.iter().filter(|m| known.contains(&m.condition_id)) {
            for t in &m.tokens {
                assert_equals_truth(&base, &store, t).await;
                compared += 1;
            }
        }
        assert!(compared >= 80, "{compared}");
    });
    sim.stop().unwrap_or_else(|e| panic!("stop: {e}"));
}

#[test]
fn every_fault_kind_is_observable() {
    let sim = sim(|c| c.markets = 10);
    let (base, url) = (sim.http_url(), sim.ws_url());
    run(move || async move {
        let ms = markets(&base).await;
        let all = tokens_of(&ms);
        let mut now = T0;
        let mut clients = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..5 {
            let c = Client::connect(&url).await;
            c.open(&refs(&all), false).await;
            ids.push(newest_conn(&status(&base).await));
            clients.push(c);
        }
        let [drop_c, close_c, silent, dup, bad] = &clients[..] else { panic!("5 clients") };

        let r = fault(&base, json!({"kind": "drop", "conn": ids[0]})).await;
        assert_eq!(r.status, 200, "{}", r.text());
        drop_c.wait("drop", |s| s.ended.is_some()).await;
        assert!(matches!(drop_c.ended(), Some(Ending::NoCloseFrame(_))), "{:?}", drop_c.ended());

        fault(&base, json!({"kind": "close_1013", "conn": ids[1]})).await;
        close_c.wait("close", |s| s.ended.is_some()).await;
        assert_eq!(close_c.ended(), Some(Ending::Close(1013, SLOW_CONSUMER_REASON.into())));

        // Silence: data stops (and is lost) while PING is still answered.
        let r = fault(&base, json!({"kind": "silence", "conn": ids[2], "duration_ms": 2_000}));
        assert_eq!(r.await.status, 200);
        let n = silent.frame_count();
        now += 1_000;
        step(&base, 100, now).await;
        silent.ping_barrier().await;
        assert_eq!(silent.frame_count(), n, "data during silence");
        let st = status(&base).await;
        assert!(st["frames_silenced"].as_u64() > Some(0), "{st}");
        wait_status(&base, "silence over", |s| {
            s["connections"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["id"] == ids[2] && c["silenced"] == false))
        })
        .await;
        now += 1_000;
        step(&base, 100, now).await;
        silent.ping_barrier().await;
        assert!(silent.frame_count() > n, "no data after the silence");

        // Duplicate: the next frames arrive twice in a row.
        fault(&base, json!({"kind": "duplicate", "conn": ids[3], "count": 3})).await;
        let n = dup.frame_count();
        now += 1_000;
        step(&base, 50, now).await;
        dup.ping_barrier().await;
        let f = dup.frames();
        let twice = f[n..].windows(2).filter(|w| w[0] == w[1]).count();
        assert!(twice >= 3, "{twice} repeated frames");

        // Malformed: one frame that does not decode; the connection stays up.
        fault(&base, json!({"kind": "malformed", "conn": ids[4]})).await;
        bad.ping_barrier().await;
        assert_eq!(bad.seen.borrow().undecodable.len(), 1);
        assert!(bad.ended().is_none());

        // Gamma answers 429 (then 500) for a while, then recovers.
        for (kind, code) in [("gamma_429", 429), ("gamma_500", 500)] {
            fault(&base, json!({"kind": kind, "duration_ms": 300})).await;
            let keyset = format!("{base}/markets/keyset?closed=false&limit=5");
            assert_eq!(get(&keyset).await.status, code);
            let start = Instant::now();
            while get(&keyset).await.status != 200 {
                assert!(start.elapsed() < DEADLINE, "gamma did not recover");
                sleep_ms(20).await;
            }
        }

        assert_eq!(fault(&base, json!({"kind": "bogus"})).await.status, 400);
        assert_eq!(fault(&base, json!({"kind": "drop", "conn": 999})).await.status, 404);
        let st = status(&base).await;
        for k in ["drop", "close_1013", "silence", "duplicate", "malformed", "gamma_429"] {
            assert_eq!(st["faults"][k], 1, "{k}: {st}");
        }
        assert_eq!(st["closes"]["fault_drop"], 1, "{st}");
        assert_eq!(st["closes"]["fault_close_1013"], 1, "{st}");
    });
    sim.stop().unwrap_or_else(|e| panic!("stop: {e}"));
}

/// The venue's own closes: 1013 for a backlog over the limit, and a silent drop after no
/// client traffic for the idle time (which a client that PINGs never sees).
#[test]
fn slow_consumer_and_idle_close() {
    let sim = sim(|c| {
        c.queue_frames_max = 50;
        c.idle_close_ms = 1_000;
    });
    let (base, url) = (sim.http_url(), sim.ws_url());
    run(move || async move {
        let ms = markets(&base).await;
        let pinger = Client::connect(&url).await;
        pinger.open(&[], false).await;
        assert_eq!(pinger.frames(), ["[]\n"]);
        let out = Rc::clone(&pinger.out);
        let _pings = glommio::spawn_local(async move {
            while out.try_send("PING".to_owned()).is_ok() {
                sleep_ms(100).await;
            }
        });

        // One step call queues far more than 50 frames before the writer can run. Not many
        // more: the step blocks the executor, and one that outlasts `idle_close_ms` on a busy
        // machine lets the idle close win the race against the 1013.
        let slow = Client::connect(&url).await;
        slow.open(&refs(&tokens_of(&ms)), false).await;
        step(&base, 400, T0 + 1_000).await;
        slow.wait("1013", |s| s.ended.is_some()).await;
        assert_eq!(slow.ended(), Some(Ending::Close(1013, SLOW_CONSUMER_REASON.into())));

        let idle = Client::connect(&url).await;
        idle.open(&[], false).await;
        idle.wait("idle close", |s| s.ended.is_some()).await;
        assert!(matches!(idle.ended(), Some(Ending::NoCloseFrame(_))), "{:?}", idle.ended());
        assert_eq!(pinger.ended(), None, "a client that PINGs is not idle");
        let st = status(&base).await;
        assert_eq!(
            (st["closes"]["slow_consumer"].as_u64(), st["closes"]["idle"].as_u64()),
            (Some(1), Some(1)),
            "{st}"
        );
    });
    sim.stop().unwrap_or_else(|e| panic!("stop: {e}"));
}

/// What a client subscribed to everything receives for `steps` events.
fn recorded_frames(seed: u64) -> Vec<String> {
    let sim = sim(|c| c.seed = seed);
    let (base, url) = (sim.http_url(), sim.ws_url());
    let out = Rc::new(RefCell::new(Vec::new()));
    let out2 = Rc::clone(&out);
    run(move || async move {
        let ms = markets(&base).await;
        let c = Client::connect(&url).await;
        c.open(&refs(&tokens_of(&ms)), true).await;
        step(&base, 200, T0 + 1_000).await;
        step(&base, 200, T0 + 2_000).await;
        c.ping_barrier().await;
        *out2.borrow_mut() = c.frames();
    });
    sim.stop().unwrap_or_else(|e| panic!("stop: {e}"));
    out.take()
}

#[test]
fn same_seed_same_frames() {
    let a = recorded_frames(21);
    assert!(a.len() > 300, "{} frames", a.len());
    assert_eq!(a, recorded_frames(21));
    assert_ne!(a, recorded_frames(22));
}

#[test]
fn random_faults_fire_by_seed() {
    let sim = sim(|c| {
        c.rate = 200.0;
        c.start_paused = false;
        c.random_faults = Some(RandomFaults { seed: 3, per_minute: 1_200.0 });
    });
    let (base, url) = (sim.http_url(), sim.ws_url());
    run(move || async move {
        let ms = markets(&base).await;
        let c = Client::connect(&url).await;
        c.open(&refs(&tokens_of(&ms)), true).await;
        wait_status(&base, "random faults", |s| {
            let f = &s["faults"];
            let n: u64 = ["drop", "close_1013", "silence", "duplicate", "malformed", "gamma_429"]
                .iter()
                .chain(&["gamma_500"])
                .filter_map(|k| f[*k].as_u64())
                .sum();
            n >= 5
        })
        .await;
    });
    sim.stop().unwrap_or_else(|e| panic!("stop: {e}"));
}

/// A price or tick text in millionths (the wire's decimals, at most six).
fn units(text: &str) -> u64 {
    polybook::sim::truth::units_of(text).unwrap_or_else(|| panic!("not a decimal: {text:?}"))
}

/// The probe of issue 13 item 4 as a self-check of the simulator, seen by a client over the
/// real WebSocket: seed 7, 300 markets, 2,000 events/s, one connection (custom features on)
/// with 8 whole markets and 4 single tokens, tick changes forced on the subscribed markets.
/// (1) `book`, `best_bid_ask`, `last_trade_price` and `tick_size_change` come only for
/// subscribed tokens (only `price_change` carries the unsubscribed mirror token's entries);
/// (2) every price a token receives is on the tick last announced for it on the connection
/// (opening book, then `tick_size_change`s whose `old_tick_size` is that tick), so a change
/// is announced before any price on the new grid; (3) at rest, that tick is Gamma's, REST's,
/// `/sim/markets`' and the truth's.
#[test]
fn sim_announces_per_token_events_and_ticks_only_to_subscribers_before_use() {
    let sim = sim(|c| {
        c.seed = 7;
        c.markets = 300;
        c.rate = 2_000.0;
        c.start_ms = None;
        c.real_shape = RealShape::default();
    });
    let (base, url) = (sim.http_url(), sim.ws_url());
    run(move || async move {
        let ms = markets(&base).await;
        // Markets at a 0.01 tick whose book is near an edge, where the venue changes ticks.
        let mut edge = Vec::new();
        for m in ms.iter().filter(|m| m.active && m.meta.tick_size == Price::parse("0.01").ok()) {
            let rest = get_json(&format!("{base}/book?token_id={}", m.tokens[0])).await;
            let best = |k: &str| {
                rest[k]
                    .as_array()
                    .and_then(|a| a.last())
                    .map(|l| units(l["price"].as_str().unwrap_or("")))
            };
            let near = best("bids").is_some_and(|b| b > 0 && b < 40_000)
                || best("asks").is_some_and(|a| a > 960_000 && a < 1_000_000);
            if near {
                edge.push(m.clone());
            }
            if edge.len() == 12 {
                break;
            }
        }
        assert_eq!(edge.len(), 12, "markets near an edge");
        let (whole, single) = edge.split_at(8);
        let mut subscribed: HashSet<String> = tokens_of(whole).into_iter().collect();
        for (i, m) in single.iter().enumerate() {
            subscribed.insert(m.tokens[i % 2].clone());
        }
        // token -> its market's other token (for mirrored entries of unsubscribed tokens).
        let partner: std::collections::HashMap<String, String> = ms
            .iter()
            .flat_map(|m| {
                [
                    (m.tokens[0].clone(), m.tokens[1].clone()),
                    (m.tokens[1].clone(), m.tokens[0].clone()),
                ]
            })
            .collect();
        let ids: Vec<String> = subscribed.iter().cloned().collect();
        let client = Client::connect(&url).await;
        client.open(&refs(&ids), true).await;
        assert_eq!(post(&format!("{base}/sim/resume")).await.status, 200);
        let start = Instant::now();
        let mut forced = 0;
        let mut pending: Vec<&Market> = edge.iter().collect();
        // Bounded by events, not time, so a busy machine checks as much as an idle one.
        while status(&base).await["events"].as_u64() < Some(6_000) {
            assert!(start.elapsed() < Duration::from_secs(60), "the generator is too slow");
            // Tick changes wherever the model allows one (a book near an edge).
            let mut left = Vec::new();
            for m in pending {
                let r =
                    post(&format!("{base}/sim/tick_size_change?market={}", m.condition_id)).await;
                if r.status == 404 {
                    // Resolved meanwhile: nothing to change there any more.
                    continue;
                }
                assert_eq!(r.status, 200, "{}", r.text());
                let v: Value = r.json().unwrap_or_else(|e| panic!("{e}"));
                if v["changed"] == true {
                    forced += 1;
                } else {
                    left.push(m);
                }
            }
            pending = left;
            sleep_ms(200).await;
        }
        assert_eq!(post(&format!("{base}/sim/pause")).await.status, 200);
        wait_status(&base, "rest", |s| s["at_rest"] == true).await;
        client.ping_barrier().await;
        assert!(forced >= 6, "only {forced} forced tick changes");

        let per_token = ["book", "best_bid_ask", "last_trade_price", "tick_size_change"];
        let mut tick: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        let (mut changes, mut checked, mut mirrored) = (0, 0u64, 0u64);
        let on_grid = |tick: &std::collections::HashMap<String, u64>,
                       token: &str,
                       price: &str,
                       what: &str| {
            let t = tick
                .get(token)
                .copied()
                .unwrap_or_else(|| panic!("{what}: no tick announced for {token}"));
            let p = units(price);
            assert!(p % t == 0, "{what}: {token} got price {price} off its announced tick {t}e-6");
        };
        for f in client.frames() {
            let v: Value =
                serde_json::from_str(f.trim_end()).unwrap_or_else(|e| panic!("{e}: {f}"));
            let events = match v {
                Value::Array(a) => a,
                o => vec![o],
            };
            for e in &events {
                let kind = e["event_type"].as_str().unwrap_or_default();
                let asset = e["asset_id"].as_str().unwrap_or_default().to_owned();
                if per_token.contains(&kind) {
                    assert!(subscribed.contains(&asset), "{kind} for unsubscribed {asset}: {f}");
                }
                let s = |k: &str| e[k].as_str().unwrap_or_else(|| panic!("{k}: {e}")).to_owned();
                match kind {
                    "book" => {
                        if let Some(t) = e["tick_size"].as_str() {
                            tick.insert(asset.clone(), units(t));
                        }
                        for side in ["bids", "asks"] {
                            for l in e[side].as_array().into_iter().flatten() {
                                on_grid(&tick, &asset, l["price"].as_str().unwrap_or(""), "book");
                                checked += 1;
                            }
                        }
                    }
                    "tick_size_change" => {
                        let old = tick.get(&asset).copied();
                        assert_eq!(
                            old,
                            Some(units(&s("old_tick_size"))),
                            "old tick of {asset}: {e}"
                        );
                        tick.insert(asset, units(&s("new_tick_size")));
                        changes += 1;
                    }
                    "best_bid_ask" => {
                        on_grid(&tick, &asset, &s("best_bid"), "best_bid_ask");
                        on_grid(&tick, &asset, &s("best_ask"), "best_bid_ask");
                        checked += 2;
                    }
                    "last_trade_price" => {
                        on_grid(&tick, &asset, &s("price"), "last_trade_price");
                        checked += 1;
                    }
                    "price_change" => {
                        for c in e["price_changes"].as_array().into_iter().flatten() {
                            let a = c["asset_id"].as_str().unwrap_or_default();
                            // Both tokens of a market share its tick: an unsubscribed mirror
                            // token's entries are judged by the subscribed one's.
                            let who = if subscribed.contains(a) {
                                a.to_owned()
                            } else {
                                mirrored += 1;
                                partner[a].clone()
                            };
                            for k in ["price", "best_bid", "best_ask"] {
                                on_grid(&tick, &who, c[k].as_str().unwrap_or(""), "price_change");
                                checked += 1;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        assert!(changes >= forced, "{changes} tick_size_change events for {forced} forced changes");
        assert!(checked > 1_000 && mirrored > 50, "{checked} prices checked, {mirrored} mirrored");
        assert_eq!(tick.len(), subscribed.len(), "every subscribed token got its opening book");
        // At rest every source names the tick the connection was last told.
        let listed = markets(&base).await;
        for token in &subscribed {
            let want = tick[token];
            let m = listed
                .iter()
                .find(|m| m.tokens.contains(token))
                .unwrap_or_else(|| panic!("{token}"));
            let sim_markets = m.meta.tick_size.map(|p| u64::from(p.units()));
            let truth = get_json(&format!("{base}/sim/book/{token}")).await;
            let gamma = get_json(&format!("{base}/markets/keyset?clob_token_ids={token}")).await;
            let gamma_tick = gamma["markets"][0]["orderPriceMinTickSize"].to_string();
            let mut got = vec![
                ("/sim/markets", sim_markets),
                ("/sim/book", Some(units(truth["tick_size"].as_str().unwrap_or("")))),
                ("Gamma", Some(units(&gamma_tick))),
            ];
            // A market resolved during the run has no REST book any more (404).
            if m.active {
                let rest = get_json(&format!("{base}/book?token_id={token}")).await;
                got.push(("REST /book", Some(units(rest["tick_size"].as_str().unwrap_or("")))));
            }
            for (source, t) in got {
                assert_eq!(t, Some(want), "{token}: {source} tick vs the connection's");
            }
        }
    });
    sim.stop().unwrap_or_else(|e| panic!("stop: {e}"));
}
