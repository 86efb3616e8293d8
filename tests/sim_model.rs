//! The simulated venue against the core: its frames decode, its hashes verify, its byte layout
//! matches the real captures, it is deterministic, and a store fed its frames equals its truth.

use polybook::book::hash::{book_hash, to_hex};
use polybook::book::{BookStatus, TokenMeta};
use polybook::protocol::{decode_frame, MarketEvent};
use polybook::sim::model::is_mirrored;
use polybook::sim::{EventKind, SimConfig, SimExchange, SimFrame};
use polybook::store::NoSink;
use polybook::{BookStore, StoreConfig};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

fn sim(seed: u64, markets: usize) -> SimExchange {
    SimExchange::new(SimConfig { seed, markets, ..SimConfig::default() })
}

fn run(ex: &mut SimExchange, steps: usize) -> (Vec<SimFrame>, Vec<EventKind>) {
    let mut frames = Vec::new();
    let mut kinds = Vec::new();
    let t0 = ex.now_ms();
    for i in 0..steps {
        kinds.push(ex.step(t0 + i as u64, &mut frames));
    }
    (frames, kinds)
}

/// Top-level keys of a JSON object in wire order.
fn keys(json: &str) -> Vec<String> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(k) = m.next_key::<String>()? {
                m.next_value::<IgnoredAny>()?;
                out.push(k);
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(json);
    de.deserialize_map(V).unwrap_or_else(|e| panic!("{e}: {json}"))
}

fn first_element(array: &str) -> String {
    let v: Vec<Box<serde_json::value::RawValue>> =
        serde_json::from_str(array).unwrap_or_else(|e| panic!("{e}"));
    v.first().map(|r| r.get().to_owned()).unwrap_or_default()
}

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/data/polymarket/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

#[test]
fn sim_same_seed_gives_same_stream() {
    let (a, ka) = run(&mut sim(42, 50), 2000);
    let (b, kb) = run(&mut sim(42, 50), 2000);
    assert_eq!(ka, kb);
    assert_eq!(a, b);
    let (c, _) = run(&mut sim(43, 50), 2000);
    assert_ne!(a, c);
    // All event kinds appear in a run this long.
    for k in [
        EventKind::Order,
        EventKind::Trade,
        EventKind::TickSizeChange,
        EventKind::NewMarket,
        EventKind::Resolution,
    ] {
        assert!(ka.contains(&k), "no {k:?} in 2000 steps");
    }
}

#[test]
fn sim_frames_decode_and_ids_look_real() {
    let mut ex = sim(7, 30);
    let (frames, _) = run(&mut ex, 3000);
    let mut kinds = std::collections::BTreeSet::new();
    for f in &frames {
        let r = decode_frame(&f.text, |ev| match ev {
            Ok(e) => {
                // new_market and market_resolved carry fields the core does not model.
                let modelled =
                    !matches!(e, MarketEvent::NewMarket(_) | MarketEvent::MarketResolved(_));
                assert!(!modelled || e.unknown_fields() == 0, "{}", f.text);
                kinds.insert(e.kind().to_owned());
            }
            Err(e) => panic!("{e}: {}", f.text),
        });
        assert!(r.is_ok(), "{}", f.text);
    }
    for k in [
        "price_change",
        "book",
        "last_trade_price",
        "best_bid_ask",
        "tick_size_change",
        "new_market",
        "market_resolved",
    ] {
        assert!(kinds.contains(k), "no {k}");
    }
    for m in ex.markets() {
        assert!(m.condition_id.as_str().starts_with("0x") && m.condition_id.as_str().len() == 66);
        for t in &m.tokens {
            assert!((77..=78).contains(&t.as_str().len()), "{t}");
            assert!(t.as_str().bytes().all(|b| b.is_ascii_digit()));
        }
    }
}

#[test]
fn sim_byte_layout_matches_real_captures() {
    let mut ex = sim(3, 20);
    let (frames, _) = run(&mut ex, 3000);
    let find = |et: &str| {
        frames
            .iter()
            .find(|f| {
                f.text.contains(&format!("\"event_type\":\"{et}\"")) && !f.text.starts_with('[')
            })
            .map(|f| f.text.clone())
            .unwrap_or_else(|| panic!("no {et}"))
    };
    // price_change: top-level and entry key order, compact like 2026-10-04.
    let real = fixture("ws_price_change_compact_2026-10-04.json");
    let ours = find("price_change");
    assert_eq!(keys(&ours), keys(&real));
    // Entry keys in wire order (serde_json::Value would sort them, so scan the raw text).
    let real_entry_keys = "{\"asset_id\":\"";
    assert!(ours.contains(&format!("\"price_changes\":[{real_entry_keys}")));
    for k in [
        "\",\"price\":\"",
        "\",\"size\":\"",
        "\",\"side\":\"",
        "\",\"hash\":\"",
        "\",\"best_bid\":\"",
        "\",\"best_ask\":\"",
    ] {
        assert!(ours.contains(k) && real.contains(k), "{k}");
    }
    assert!(!ours.contains(' '), "compact");
    // Post-trade book and last_trade_price key order.
    assert_eq!(keys(&find("book")), keys(&fixture("ws_book_after_trade_2025-12-23.json")));
    assert_eq!(
        keys(&find("last_trade_price")),
        keys(&fixture("ws_last_trade_price_2026-06-09.json"))
    );
    assert_eq!(
        keys(&find("best_bid_ask")),
        keys(&fixture("ws_best_bid_ask_compact_2026-10-04.json"))
    );
    assert_eq!(
        keys(&find("market_resolved")),
        keys(&fixture("ws_market_resolved_2026-10-04.json"))
    );
    // Opening dump: one array frame ending in \n, elements ordered like 2026-05-08.
    let active = ex.markets().iter().find(|m| m.is_active());
    let token = active.map(|m| m.tokens[0].to_string()).unwrap_or_default();
    let dump = ex.opening_dump([token.as_str()]);
    assert!(dump.starts_with("[{") && dump.ends_with("}]\n"));
    let real_dump = fixture("ws_book_initial_dump_with_tick_size_2026-05-08.json");
    assert_eq!(keys(&first_element(&dump)), keys(&first_element(&real_dump)));
    assert_eq!(ex.opening_dump(["123"]), "[]\n");
    // Numbers are strings with canonical decimals; opening last_trade_price has 3 decimals.
    let el = first_element(&dump);
    let ltp = el.rsplit("\"last_trade_price\":\"").next().unwrap_or_default();
    assert!(ltp.trim_end_matches("\"}").split('.').nth(1).is_some_and(|f| f.len() >= 3), "{ltp}");
}

#[test]
fn sim_hashes_verify_and_rest_book_equals_truth() {
    let mut ex = sim(11, 10);
    run(&mut ex, 500);
    for i in 0..ex.markets().len() {
        let m = ex.markets()[i].clone();
        if !m.is_active() {
            assert!(ex.rest_book(m.tokens[0].as_str()).is_none(), "resolved -> 404");
            continue;
        }
        for t in &m.tokens {
            let body = ex.rest_book(t.as_str()).unwrap_or_else(|| panic!("no rest book"));
            assert_eq!(
                keys(&body),
                [
                    "market",
                    "asset_id",
                    "timestamp",
                    "hash",
                    "bids",
                    "asks",
                    "min_order_size",
                    "tick_size",
                    "neg_risk",
                    "last_trade_price"
                ]
            );
            let mut store =
                BookStore::new(StoreConfig { auto_track: true, ..StoreConfig::default() });
            let ev: polybook::protocol::BookEvent<'_> =
                serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}"));
            store.apply_snapshot(&ev, &mut NoSink);
            let ours = store.get(t.as_str()).unwrap_or_else(|| panic!("no book"));
            let truth = ex.book(t.as_str()).unwrap_or_else(|| panic!("no truth"));
            assert_eq!(ours.status(), BookStatus::Live, "REST hash verified");
            assert_eq!(store.counters().hash_checks, 1);
            assert_eq!((ours.bids(), ours.asks()), (truth.bids(), truth.asks()));
            let mut scratch = String::new();
            assert_eq!(
                ev.hash.as_deref(),
                book_hash(truth, truth.timestamp_ms(), &mut scratch).map(|h| to_hex(&h)).as_deref()
            );
        }
        assert!(is_mirrored(m.book(0), m.book(1)), "market {i} mirror broken");
    }
}

/// The generator's books (`Book`, shared with the engine) and the independent truth the
/// simulator writes its frames from (`sim::truth`) agree after every event, hash texts
/// included, on plain and real-shaped traffic (tick changes, trades and resolutions too).
#[test]
fn sim_books_and_independent_truth_agree_after_every_event() {
    for shape in [RealShape::off(), RealShape::default()] {
        let mut ex = SimExchange::new(SimConfig {
            seed: 13,
            markets: 30,
            real_shape: shape,
            ..SimConfig::default()
        });
        let mut frames = Vec::new();
        let mut kinds = std::collections::HashSet::new();
        let t0 = ex.now_ms();
        for i in 0..4000u64 {
            frames.clear();
            kinds.insert(ex.step(t0 + i, &mut frames));
            let mut touched: Vec<u32> = frames.iter().map(|f| f.market).collect();
            touched.dedup();
            for m in touched {
                if let Some(why) = ex.disagreement(m, true) {
                    panic!("step {i}: {why}");
                }
            }
        }
        for m in 0..ex.markets().len() as u32 {
            assert_eq!(ex.disagreement(m, true), None);
        }
        assert!(kinds.contains(&EventKind::TickSizeChange) && kinds.contains(&EventKind::Trade));
    }
}

/// A client that subscribes to everything and applies every frame keeps exact books.
///
/// Plain traffic for now: the store still checks each entry's hash on its own and raises false
/// alarms on same-timestamp runs until it judges runs at their end (issue 17).
#[test]
fn sim_store_fed_all_frames_equals_truth() {
    for seed in [1u64, 2, 3] {
        let mut ex = SimExchange::new(SimConfig {
            seed,
            markets: 40,
            real_shape: RealShape::off(),
            ..SimConfig::default()
        });
        let mut store = BookStore::new(StoreConfig::default());
        let tokens: Vec<(String, String, TokenMeta)> = ex
            .markets()
            .iter()
            .flat_map(|m| {
                let meta = *m.book(0).meta();
                m.tokens.iter().map(move |t| (t.to_string(), m.condition_id.to_string(), meta))
            })
            .collect();
        for (t, m, meta) in &tokens {
            store.track(t.as_str().into(), m.as_str().into(), *meta);
        }
        let dump = ex.opening_dump(tokens.iter().map(|t| t.0.as_str()));
        let r = store.apply_frame(&dump, &mut NoSink);
        assert!(r.errors.is_empty());
        let mut frames = Vec::new();
        let t0 = ex.now_ms();
        for i in 0..3000u64 {
            frames.clear();
            ex.step(t0 + i, &mut frames);
            for f in &frames {
                let r = store.apply_frame(&f.text, &mut NoSink);
                assert!(r.errors.is_empty(), "seed {seed}: {:?}", r.errors);
            }
            // Discovery's job in the engine: track new markets (their books come by subscribe).
            for hint in store.drain_new_market_hints() {
                let dump_tokens: Vec<String> = hint.tokens.iter().map(|t| t.to_string()).collect();
                let idx = ex
                    .market_index(hint.market.as_str())
                    .unwrap_or_else(|| panic!("unknown market"));
                let meta = *ex.markets()[idx as usize].book(0).meta();
                for t in &hint.tokens {
                    store.track(t.clone(), hint.market.clone(), meta);
                }
                let d = ex.opening_dump(dump_tokens.iter().map(String::as_str));
                store.apply_frame(&d, &mut NoSink);
            }
        }
        let c = store.counters().clone();
        assert_eq!(c.hash_mismatches, 0, "seed {seed}: {c:?}");
        assert_eq!(c.bbo_mismatches, 0, "seed {seed}");
        assert_eq!(c.entries_before_seed, 0, "seed {seed}");
        assert!(c.hash_checks > 1000, "seed {seed}: {}", c.hash_checks);
        for m in ex.markets() {
            for t in &m.tokens {
                let ours =
                    store.get(t.as_str()).unwrap_or_else(|| panic!("seed {seed}: untracked {t}"));
                let truth = ex.book(t.as_str()).unwrap_or_else(|| panic!("no truth"));
                assert_eq!(ours.bids(), truth.bids(), "seed {seed} token {t}");
                assert_eq!(ours.asks(), truth.asks(), "seed {seed} token {t}");
                assert_eq!(ours.tick_size(), truth.tick_size(), "seed {seed} token {t}");
                assert_eq!(ours.last_trade(), truth.last_trade(), "seed {seed} token {t}");
                let want = if m.is_active() { BookStatus::Live } else { BookStatus::Resolved };
                assert_eq!(ours.status(), want, "seed {seed} token {t}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Real-shaped traffic (protocol doc §3.10 "Hash timing on real traffic", §8 item 8), judged by
// an independent checker: its own level books (BTreeMap), its own rendering of the hash recipe,
// nothing from the store. The hash inputs the stream does not carry (min_order_size, neg_risk,
// and the last trade price, which the venue hashes before it announces it, or never announces
// to a connection without the traded token) come from the model; levels, ticks and
// timestamps come only from the frames.
// ---------------------------------------------------------------------------------------------

mod shaped {
    use std::collections::{BTreeMap, HashMap, HashSet};
    use std::fmt::Write;

    use polybook::sim::{RealShape, SimConfig, SimExchange, SimFrame};
    use serde_json::Value;
    use sha1::{Digest, Sha1};

    pub fn exchange(seed: u64, markets: usize, shape: RealShape) -> SimExchange {
        SimExchange::new(SimConfig { seed, markets, real_shape: shape, ..SimConfig::default() })
    }

    /// Price or size text in millionths (the wire's decimals, at most six).
    pub fn units(s: &str) -> u64 {
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        let int: u64 = int.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
        let mut f = frac.to_owned();
        assert!(f.len() <= 6, "{s}");
        while f.len() < 6 {
            f.push('0');
        }
        int * 1_000_000 + f.parse::<u64>().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// §3.10: SHA-1 of the compact JSON in the Go struct's key order with `hash` blank.
    #[allow(clippy::too_many_arguments)]
    pub fn venue_hash(
        market: &str,
        asset: &str,
        ts: u64,
        bids: &[(&str, &str)],
        asks: &[(&str, &str)],
        min_size: &str,
        tick: &str,
        neg_risk: bool,
        ltp: &str,
    ) -> String {
        let levels = |ls: &[(&str, &str)]| {
            let v: Vec<String> =
                ls.iter().map(|(p, s)| format!("{{\"price\":\"{p}\",\"size\":\"{s}\"}}")).collect();
            format!("[{}]", v.join(","))
        };
        let text = format!(
            "{{\"market\":\"{market}\",\"asset_id\":\"{asset}\",\"timestamp\":\"{ts}\",\"hash\":\"\",\
             \"bids\":{},\"asks\":{},\"min_order_size\":\"{min_size}\",\"tick_size\":\"{tick}\",\
             \"neg_risk\":{neg_risk},\"last_trade_price\":\"{ltp}\"}}",
            levels(bids),
            levels(asks)
        );
        let d = Sha1::digest(text.as_bytes());
        let mut hex = String::with_capacity(40);
        for b in d {
            let _ = write!(hex, "{b:02x}");
        }
        hex
    }

    /// A frame as one connection receives it, with the market's hashed last trade price right
    /// after the event that made it (trades change it in their own step only).
    #[derive(Debug, Clone)]
    pub struct Delivered {
        pub text: String,
        pub ltp: String,
    }

    /// Which tokens a connection subscribed: (market index, outcome); `follow`: it also
    /// subscribes the markets `new_market` announces (as the engine does).
    #[derive(Debug, Clone, Default)]
    pub struct Subs(pub HashSet<(u32, u8)>, pub bool);

    impl Subs {
        /// Every active market, following new ones.
        pub fn all(ex: &SimExchange) -> Subs {
            let active = (0..ex.markets().len() as u32)
                .filter(|&m| ex.market(m).is_some_and(|m| m.is_active()));
            Subs { 1: true, ..Subs::whole_markets(ex, active) }
        }
        pub fn whole_markets(ex: &SimExchange, markets: impl IntoIterator<Item = u32>) -> Subs {
            let mut s = HashSet::new();
            for m in markets {
                if ex.market(m).is_some_and(|m| m.is_active()) {
                    s.insert((m, 0));
                    s.insert((m, 1));
                }
            }
            Subs(s, false)
        }
        pub fn tokens(&self, ex: &SimExchange) -> Vec<String> {
            let mut v: Vec<(u32, u8)> = self.0.iter().copied().collect();
            v.sort_unstable();
            v.iter()
                .filter_map(|&(m, o)| Some(ex.market(m)?.tokens[usize::from(o)].to_string()))
                .collect()
        }
        /// The venue's fan-out: a market's frames to any connection with one of its tokens,
        /// per-token frames only to that token's, `new_market` to everyone (custom on).
        pub fn receives(&self, f: &SimFrame) -> bool {
            f.broadcast
                || match f.token {
                    Some(o) => self.0.contains(&(f.market, o)),
                    None => self.0.contains(&(f.market, 0)) || self.0.contains(&(f.market, 1)),
                }
        }
    }

    /// Runs `steps` events (one per millisecond) and hands each frame to every connection
    /// that receives it; `open(step)` may add connections (their opening dump comes first).
    pub fn drive(
        ex: &mut SimExchange,
        steps: u64,
        mut open: impl FnMut(u64, &mut SimExchange) -> Option<Subs>,
    ) -> Vec<(Subs, Vec<Delivered>)> {
        let mut conns: Vec<(Subs, Vec<Delivered>)> = Vec::new();
        let mut frames = Vec::new();
        let t0 = ex.now_ms();
        for i in 0..steps {
            if let Some(subs) = open(i, ex) {
                let tokens = subs.tokens(ex);
                let dump = ex.opening_dump(tokens.iter().map(String::as_str));
                conns.push((subs, vec![Delivered { text: dump, ltp: String::new() }]));
            }
            frames.clear();
            ex.step(t0 + 1 + i, &mut frames);
            for f in &frames {
                let ltp =
                    ex.market(f.market).map(|m| m.ltp().as_str().to_owned()).unwrap_or_default();
                for (subs, got) in conns.iter_mut() {
                    if subs.receives(f) {
                        got.push(Delivered { text: f.text.clone(), ltp: ltp.clone() });
                    }
                    if f.broadcast && subs.1 {
                        let Some(m) = ex.market(f.market) else { continue };
                        subs.0.insert((f.market, 0));
                        subs.0.insert((f.market, 1));
                        let tokens = [m.tokens[0].to_string(), m.tokens[1].to_string()];
                        let dump = ex.opening_dump(tokens.iter().map(String::as_str));
                        got.push(Delivered { text: dump, ltp: String::new() });
                    }
                }
            }
        }
        conns
    }

    /// A book's bids and asks as (price, size) texts in wire order.
    pub type Sides = (Vec<(String, String)>, Vec<(String, String)>);

    #[derive(Debug, Default, Clone)]
    struct Levels {
        /// price units -> (price text, size text); bids ascending, asks iterated in reverse.
        bids: BTreeMap<u64, (String, String)>,
        asks: BTreeMap<u64, (String, String)>,
        tick: String,
    }

    impl Levels {
        fn set(&mut self, side: &str, price: &str, size: &str) {
            let ladder = if side == "BUY" { &mut self.bids } else { &mut self.asks };
            if units(size) == 0 {
                ladder.remove(&units(price));
            } else {
                ladder.insert(units(price), (price.to_owned(), size.to_owned()));
            }
        }
        fn best(&self) -> (String, String) {
            let bid = self.bids.values().next_back().map_or("0".to_owned(), |l| l.0.clone());
            let ask = self.asks.values().next().map_or("1".to_owned(), |l| l.0.clone());
            (bid, ask)
        }
        fn crossed(&self) -> bool {
            match (self.bids.keys().next_back(), self.asks.keys().next()) {
                (Some(b), Some(a)) => b >= a,
                _ => false,
            }
        }
    }

    /// One entry of a tracked token, and the state of the checker's book right after it.
    #[derive(Debug, Clone)]
    struct Rec {
        ts: u64,
        frame: usize,
        hash: String,
        bbo: (String, String),
        state_hash: String,
        state_bbo: (String, String),
        crossed: bool,
    }

    /// What the entries' hashes turned out to be.
    #[derive(Debug, Default, Clone, PartialEq, Eq)]
    pub struct Verdicts {
        /// The state right after the entry (a single change, or the last of its run).
        pub own: u64,
        /// The state after the end of the entry's same-timestamp run (and not its own).
        pub run_end: u64,
        /// A state 1–3 changes of that token after its run's end.
        pub ahead: [u64; 3],
        /// None of these.
        pub none: u64,
        /// `book` frames, and those whose hash did not reproduce.
        pub books: u64,
        pub books_bad: u64,
        /// Runs (2+ entries of one token at one timestamp), those over 2+ frames, the longest.
        pub runs: u64,
        pub multi_frame_runs: u64,
        pub longest_run: usize,
        /// Runs whose book was crossed between two entries; runs that ended crossed.
        pub crossed_mid_run: u64,
        pub crossed_at_end: u64,
        /// Same-timestamp stretches of `price_change` frames over 2+ markets, the widest.
        pub cascades: u64,
        pub widest_cascade: usize,
        /// `last_trade_price` events received.
        pub trades_seen: u64,
        /// Opening books with `"last_trade_price":""`.
        pub opening_ltp_empty: u64,
    }

    impl Verdicts {
        pub fn checks(&self) -> u64 {
            self.own + self.run_end + self.ahead.iter().sum::<u64>() + self.none
        }
    }

    /// Per token, in order: checks that failed (true) or passed, and where `book`s came.
    #[derive(Debug, Default, Clone)]
    pub struct Timeline(pub Vec<Mark>);

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Mark {
        Pass,
        Fail,
        Book,
    }

    pub struct Checker<'a> {
        ex: &'a SimExchange,
        books: HashMap<String, Levels>,
        recs: HashMap<String, Vec<Rec>>,
        ltp: HashMap<String, String>,
        pub verdicts: Verdicts,
        pub timelines: HashMap<String, Timeline>,
        /// The opening book of each token as received: (bids, asks) as (price, size) texts.
        pub opening: HashMap<String, Sides>,
        subs: HashSet<String>,
        resolved: HashSet<String>,
    }

    impl<'a> Checker<'a> {
        /// `subs`: the connection's tokens at the end (tokens followed later are included).
        pub fn new(ex: &'a SimExchange, subs: &Subs) -> Checker<'a> {
            let subs = subs
                .0
                .iter()
                .filter_map(|&(m, o)| Some(ex.market(m)?.tokens[usize::from(o)].to_string()))
                .collect();
            Checker {
                ex,
                books: HashMap::new(),
                recs: HashMap::new(),
                ltp: HashMap::new(),
                verdicts: Verdicts::default(),
                timelines: HashMap::new(),
                opening: HashMap::new(),
                subs,
                resolved: HashSet::new(),
            }
        }

        fn meta(&self, token: &str) -> (String, String, bool) {
            let (m, _) = self.ex.market_of_token(token).unwrap_or_else(|| panic!("{token}"));
            let m = self.ex.market(m).unwrap_or_else(|| panic!("market"));
            (m.condition_id.to_string(), m.min_order_size().to_string(), m.neg_risk)
        }

        fn state_hash(&self, token: &str, ts: u64, ltp: &str) -> String {
            let b = &self.books[token];
            let (market, min_size, neg_risk) = self.meta(token);
            let bids: Vec<(&str, &str)> =
                b.bids.values().map(|(p, s)| (p.as_str(), s.as_str())).collect();
            let asks: Vec<(&str, &str)> =
                b.asks.values().rev().map(|(p, s)| (p.as_str(), s.as_str())).collect();
            venue_hash(&market, token, ts, &bids, &asks, &min_size, &b.tick, neg_risk, ltp)
        }

        pub fn run(&mut self, frames: &[Delivered]) {
            let mut last_pc: Option<(u64, HashSet<String>)> = None;
            for (i, d) in frames.iter().enumerate() {
                let v: Value = serde_json::from_str(d.text.trim_end())
                    .unwrap_or_else(|e| panic!("{e}: {}", d.text));
                let events = match v {
                    Value::Array(a) => a,
                    o => vec![o],
                };
                for e in &events {
                    let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                    match e["event_type"].as_str().unwrap_or_default() {
                        "book" => self.book(e, &d.ltp),
                        "price_change" => {
                            let ts: u64 = s("timestamp").parse().unwrap_or(0);
                            let market = s("market");
                            match &mut last_pc {
                                Some((t, ms)) if *t == ts => {
                                    ms.insert(market);
                                }
                                _ => {
                                    self.close_cascade(last_pc.take());
                                    last_pc = Some((ts, HashSet::from([market])));
                                }
                            }
                            self.price_change(e, ts, &d.ltp, i);
                        }
                        "tick_size_change" => {
                            if let Some(b) = self.books.get_mut(&s("asset_id")) {
                                b.tick = s("new_tick_size");
                            }
                        }
                        "last_trade_price" => {
                            assert!(
                                self.subs.contains(&s("asset_id")),
                                "trade of a token not subscribed"
                            );
                            self.verdicts.trades_seen += 1;
                        }
                        "market_resolved" => {
                            for t in e["assets_ids"].as_array().into_iter().flatten() {
                                let t = t.as_str().unwrap_or_default().to_owned();
                                self.flush(&t);
                                self.resolved.insert(t);
                            }
                        }
                        _ => {}
                    }
                }
            }
            self.close_cascade(last_pc.take());
            let tokens: Vec<String> = self.recs.keys().cloned().collect();
            for t in tokens {
                self.flush(&t);
            }
        }

        fn close_cascade(&mut self, c: Option<(u64, HashSet<String>)>) {
            if let Some((_, ms)) = c {
                if ms.len() >= 2 {
                    self.verdicts.cascades += 1;
                    self.verdicts.widest_cascade = self.verdicts.widest_cascade.max(ms.len());
                }
            }
        }

        fn book(&mut self, e: &Value, ltp_after: &str) {
            let token = e["asset_id"].as_str().unwrap_or_default().to_owned();
            if !self.subs.contains(&token) {
                return;
            }
            self.flush(&token);
            let opening = e.get("tick_size").is_some();
            let mut b = self.books.remove(&token).unwrap_or_default();
            if let Some(t) = e["tick_size"].as_str() {
                b.tick = t.to_owned();
            }
            b.bids.clear();
            b.asks.clear();
            let mut sides = (Vec::new(), Vec::new());
            for (side, key) in [("BUY", "bids"), ("SELL", "asks")] {
                for l in e[key].as_array().into_iter().flatten() {
                    let (p, sz) =
                        (l["price"].as_str().unwrap_or(""), l["size"].as_str().unwrap_or(""));
                    b.set(side, p, sz);
                    let pair = (p.to_owned(), sz.to_owned());
                    if side == "BUY" {
                        sides.0.push(pair)
                    } else {
                        sides.1.push(pair)
                    }
                }
            }
            self.books.insert(token.clone(), b);
            let ltp = if opening {
                let l =
                    e["last_trade_price"].as_str().unwrap_or_else(|| panic!("no ltp")).to_owned();
                if l.is_empty() {
                    self.verdicts.opening_ltp_empty += 1;
                }
                self.opening.insert(token.clone(), sides);
                l
            } else {
                ltp_after.to_owned()
            };
            self.ltp.insert(token.clone(), ltp.clone());
            let ts: u64 = e["timestamp"].as_str().unwrap_or("0").parse().unwrap_or(0);
            self.verdicts.books += 1;
            if self.state_hash(&token, ts, &ltp) != e["hash"].as_str().unwrap_or_default() {
                self.verdicts.books_bad += 1;
            }
            self.timelines.entry(token).or_default().0.push(Mark::Book);
        }

        fn price_change(&mut self, e: &Value, ts: u64, ltp: &str, frame: usize) {
            for en in e["price_changes"].as_array().into_iter().flatten() {
                let s = |k: &str| en[k].as_str().unwrap_or_default().to_owned();
                let token = s("asset_id");
                if !self.subs.contains(&token) || self.resolved.contains(&token) {
                    continue;
                }
                let Some(b) = self.books.get_mut(&token) else { continue };
                b.set(&s("side"), &s("price"), &s("size"));
                let crossed = b.crossed();
                let state_bbo = b.best();
                self.ltp.insert(token.clone(), ltp.to_owned());
                let state_hash = self.state_hash(&token, ts, ltp);
                let rec = Rec {
                    ts,
                    frame,
                    hash: s("hash"),
                    bbo: (s("best_bid"), s("best_ask")),
                    state_hash,
                    state_bbo,
                    crossed,
                };
                self.recs.entry(token).or_default().push(rec);
            }
        }

        /// Judges a token's entries since its last `book` (they cannot look past one).
        fn flush(&mut self, token: &str) {
            let Some(recs) = self.recs.remove(token) else { return };
            let v = &mut self.verdicts;
            let tl = self.timelines.entry(token.to_owned()).or_default();
            let mut a = 0;
            while a < recs.len() {
                let mut b = a;
                while b + 1 < recs.len() && recs[b + 1].ts == recs[a].ts {
                    b += 1;
                }
                if b > a {
                    v.runs += 1;
                    v.longest_run = v.longest_run.max(b - a + 1);
                    if recs[b].frame != recs[a].frame {
                        v.multi_frame_runs += 1;
                    }
                    if recs[a..b].iter().any(|r| r.crossed) {
                        v.crossed_mid_run += 1;
                    }
                }
                if recs[b].crossed {
                    v.crossed_at_end += 1;
                }
                let matches = |r: &Rec, s: &Rec| r.hash == s.state_hash && r.bbo == s.state_bbo;
                for i in a..=b {
                    let r = &recs[i];
                    let pass = if matches(r, &recs[b]) {
                        if i == b {
                            v.own += 1
                        } else {
                            v.run_end += 1
                        }
                        true
                    } else if let Some(k) =
                        (1..=3).find(|k| recs.get(b + k).is_some_and(|s| matches(r, s)))
                    {
                        v.ahead[k - 1] += 1;
                        true
                    } else {
                        v.none += 1;
                        false
                    };
                    tl.0.push(if pass { Mark::Pass } else { Mark::Fail });
                }
                a = b + 1;
            }
        }
    }
}

use polybook::sim::RealShape;
use shaped::{Checker, Mark, Subs};

/// Off is the plain stream of earlier versions, byte for byte (digests taken before
/// `RealShape` existed, from the same seeds and steps).
#[test]
fn plain_traffic_is_the_earlier_stream_byte_for_byte() {
    use sha1::{Digest, Sha1};
    let want = [
        (1u64, 30_219usize, "261a6f4cb16f0c9037cf6898e8e847a38fcfe929"),
        (9, 30_248, "8aa720e64fb15c0d6eb78b1ccbe3377cd7e7a144"),
    ];
    for (seed, n, digest) in want {
        let mut ex = shaped::exchange(seed, 30, RealShape::off());
        let mut h = Sha1::new();
        let all = |ex: &SimExchange| -> Vec<String> {
            ex.markets().iter().flat_map(|m| m.tokens.iter().map(|t| t.to_string())).collect()
        };
        let toks = all(&ex);
        h.update(ex.opening_dump(toks.iter().map(String::as_str)).as_bytes());
        let mut frames = Vec::new();
        let t0 = ex.now_ms();
        // Three events per millisecond, so frames of one market share timestamps by chance.
        for i in 0..20_000u64 {
            ex.step(t0 + i / 3, &mut frames);
        }
        for f in &frames {
            assert_eq!(f.token, None);
            h.update(f.text.as_bytes());
            h.update([u8::from(f.custom), u8::from(f.broadcast)]);
            h.update(f.market.to_le_bytes());
        }
        let toks = all(&ex);
        h.update(ex.opening_dump(toks.iter().map(String::as_str)).as_bytes());
        for t in &toks {
            if let Some(b) = ex.rest_book(t) {
                h.update(b.as_bytes());
            }
        }
        let d: [u8; 20] = h.finalize().into();
        assert_eq!((frames.len(), to_hex(&d).as_str()), (n, digest), "seed {seed}");
        assert_eq!(
            *ex.shape_counters(),
            polybook::sim::ShapeCounters {
                entries: ex.shape_counters().entries,
                ..Default::default()
            }
        );
    }
}

#[test]
fn real_shape_same_seed_gives_same_frames_and_dumps() {
    let go = |seed: u64| {
        let mut ex = shaped::exchange(seed, 60, RealShape::default());
        let conns = shaped::drive(&mut ex, 6000, |i, ex| {
            (i % 500 == 0)
                .then(|| Subs::whole_markets(ex, (0..60).filter(|m| m % 3 == (i / 500) as u32 % 3)))
        });
        let texts: Vec<Vec<String>> =
            conns.into_iter().map(|(_, d)| d.into_iter().map(|d| d.text).collect()).collect();
        (texts, *ex.shape_counters())
    };
    let (a, ca) = go(5);
    let (b, cb) = go(5);
    assert_eq!(a, b);
    assert_eq!(ca, cb);
    let (c, _) = go(6);
    assert_ne!(a, c);
    assert!(ca.runs > 0 && ca.cascades > 0 && ca.ahead_entries > 0, "{ca:?}");
}

/// The checker over a long run of a connection with every market: every entry's hash and
/// best bid/ask are of its token's book after its same-timestamp run, or 1–3 changes later;
/// runs span frames, cascades and crossed runs occur; shares as configured.
#[test]
fn real_shape_entries_carry_the_state_after_their_run() {
    // POLYBOOK_SHAPE_STEPS=1000000 for a long measurement (`--nocapture` prints the shares).
    let steps =
        std::env::var("POLYBOOK_SHAPE_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(40_000);
    let markets = 80;
    let mut ex = shaped::exchange(
        21,
        markets,
        RealShape { stale_snapshot_permille: 0, ..RealShape::default() },
    );
    let conns = shaped::drive(&mut ex, steps, |i, ex| (i == 0).then(|| Subs::all(ex)));
    let (subs, frames) = &conns[0];
    let mut ck = Checker::new(&ex, subs);
    ck.run(frames);
    let v = ck.verdicts.clone();
    let c = *ex.shape_counters();
    let n = v.checks();
    let pct = |x: u64| x * 10_000 / n.max(1);
    println!(
        "checks {n}: own {} ({}bp) run_end {} ({}bp) ahead {:?} ({}bp) none {}; runs {} multi-frame {} longest {} cascades {} widest {} crossed {}; model {c:?}",
        v.own, pct(v.own), v.run_end, pct(v.run_end), v.ahead, pct(v.ahead.iter().sum()), v.none,
        v.runs, v.multi_frame_runs, v.longest_run, v.cascades, v.widest_cascade, v.crossed_mid_run
    );
    assert_eq!(v.none, 0, "{v:?}");
    assert_eq!(v.books_bad, 0, "{v:?}");
    assert_eq!(v.crossed_at_end, 0, "{v:?}");
    assert!(n >= steps, "{v:?}");
    // Every entry the model wrote ahead is found ahead (every market is subscribed; markets
    // resolved before the connection opened had none).
    assert_eq!(v.ahead.iter().sum::<u64>(), c.ahead_entries, "{v:?} {c:?}");
    let ahead = pct(v.ahead.iter().sum());
    assert!((50..=200).contains(&ahead), "ahead {ahead}bp, configured 100");
    assert!(v.ahead.iter().all(|&k| k > 0), "{v:?}");
    let run_end = pct(v.run_end);
    assert!((500..=1500).contains(&run_end), "run_end {run_end}bp (the venue: ~900)");
    assert!(v.multi_frame_runs > 100 && v.longest_run >= 20, "{v:?}");
    assert!(v.cascades > 10 && v.widest_cascade >= 5, "{v:?}");
    assert!(v.crossed_mid_run > 10, "{v:?}");
    assert!(v.opening_ltp_empty > 0, "{v:?}");
}

/// A connection subscribed only to YES tokens still gets both tokens' entries, never a NO
/// trade's `last_trade_price`, and its books' hashes carry those trades' prices as printed.
#[test]
fn real_shape_yes_only_connection_sees_other_token_trades_only_in_hashes() {
    let markets = 40;
    let mut ex = shaped::exchange(
        22,
        markets,
        RealShape { stale_snapshot_permille: 0, ..RealShape::default() },
    );
    let conns = shaped::drive(&mut ex, 30_000, |i, _| {
        (i == 0).then(|| Subs((0..markets as u32).map(|m| (m, 0u8)).collect(), false))
    });
    let (subs, frames) = &conns[0];
    let mut no_entries = 0;
    let mut no_ltp_hashes = 0;
    for d in frames {
        if d.text.contains("\"event_type\":\"price_change\"") {
            // Both tokens' entries come, half of them for tokens without a book here.
            no_entries +=
                ex.markets().iter().filter(|m| d.text.contains(m.tokens[1].as_str())).count();
        }
        if d.text.contains("\"event_type\":\"last_trade_price\"") {
            assert!(
                ex.markets().iter().any(|m| d.text.contains(m.tokens[0].as_str())),
                "{}",
                d.text
            );
        }
        if d.text.starts_with("{\"market\"") && d.text.contains("\"event_type\":\"book\"") {
            // A post-trade YES book hashing a price above its best ask or below its best bid
            // was a NO trade (mirror price), announced only to NO subscribers.
            let v: serde_json::Value = serde_json::from_str(&d.text).unwrap_or_default();
            let bid = v["bids"]
                .as_array()
                .and_then(|a| a.last())
                .and_then(|l| l["price"].as_str())
                .map_or(0, shaped::units);
            let ask = v["asks"]
                .as_array()
                .and_then(|a| a.last())
                .and_then(|l| l["price"].as_str())
                .map_or(1_000_000, shaped::units);
            if !d.ltp.is_empty() && (shaped::units(&d.ltp) > ask || shaped::units(&d.ltp) < bid) {
                no_ltp_hashes += 1;
            }
        }
    }
    assert!(no_entries > 1000, "{no_entries}");
    assert!(no_ltp_hashes > 10, "{no_ltp_hashes}");
    let mut ck = Checker::new(&ex, subs);
    ck.run(frames);
    let v = ck.verdicts;
    assert_eq!((v.none, v.books_bad), (0, 0), "{v:?}");
    assert!(v.trades_seen > 0, "{v:?}");
}

/// Stale opening snapshots: the book a connection gets differs from the truth at one level,
/// every check of that token fails from then on, and only the next `book` of it repairs it.
#[test]
fn real_shape_stale_snapshot_fails_every_check_until_a_book() {
    use shaped::Sides;
    let markets = 60;
    let shape = RealShape { stale_snapshot_permille: 1000, ..RealShape::default() };
    let mut ex = shaped::exchange(23, markets, shape);
    let texts = |ls: &[polybook::Level]| -> Vec<(String, String)> {
        ls.iter().map(|l| (l.price.to_string(), l.size.to_string())).collect()
    };
    // The truth at the moment of each dump (the dump is made right after `open` returns).
    let mut truths: Vec<std::collections::HashMap<String, Sides>> = Vec::new();
    let conns = shaped::drive(&mut ex, 15_000, |i, ex| {
        if i % 1000 != 0 {
            return None;
        }
        // A third of the markets each, no following: every dump here is a counted one.
        let third = (i / 1000 % 3) as u32;
        let active = (0..ex.markets().len() as u32)
            .filter(|&m| m % 3 == third && ex.market(m).is_some_and(|m| m.is_active()));
        let subs = Subs::whole_markets(ex, active);
        let truth = subs
            .tokens(ex)
            .into_iter()
            .filter_map(|t| {
                let b = ex.book(&t)?;
                let sides = (texts(b.bids()), texts(b.asks()));
                Some((t, sides))
            })
            .collect();
        truths.push(truth);
        Some(subs)
    });
    assert_eq!(ex.shape_counters().stale_snapshots as usize, conns.len(), "one per dump");
    let (mut repaired, mut touched, mut unrepaired) = (0, 0, 0);
    for ((subs, frames), truth) in conns.iter().zip(&truths) {
        let mut ck = Checker::new(&ex, subs);
        ck.run(frames);
        assert_eq!(ck.verdicts.books_bad, 0, "a stale book's hash is of what it shows");
        let stale: Vec<&String> = ck
            .opening
            .iter()
            .filter(|(t, got)| truth.get(*t) != Some(*got))
            .map(|(t, _)| t)
            .collect();
        assert_eq!(stale.len(), 1, "exactly one stale opening book");
        let stale = stale[0];
        // One level differs, nothing else.
        let (got, want) = (&ck.opening[stale], &truth[stale]);
        let diff = |a: &[(String, String)], b: &[(String, String)]| {
            a.iter().filter(|l| !b.contains(l)).count()
                + b.iter().filter(|l| !a.contains(l)).count()
        };
        let d = diff(&got.0, &want.0) + diff(&got.1, &want.1);
        assert!((1..=2).contains(&d), "{d} levels differ");
        for (t, tl) in &ck.timelines {
            let marks = &tl.0[1..];
            if t != stale {
                assert!(!marks.contains(&Mark::Fail), "a fresh book failed a check");
                continue;
            }
            let until = marks.iter().position(|m| *m == Mark::Book).unwrap_or(marks.len());
            let fails = marks[..until].iter().filter(|m| **m == Mark::Fail).count();
            if fails < until {
                // An order reached the stale level: the stream repaired it (deep levels make
                // this rare).
                touched += 1;
            }
            assert!(
                marks[until.min(marks.len())..].iter().all(|m| *m != Mark::Fail),
                "after the book"
            );
            if until < marks.len() {
                repaired += 1;
            } else {
                unrepaired += 1;
            }
        }
    }
    println!(
        "{} stale dumps: repaired by a later book {repaired}, stream touched the level {touched}, \
         still stale at the end {unrepaired}",
        conns.len()
    );
    assert!(
        repaired >= 5 && touched * 5 <= conns.len(),
        "repaired {repaired} touched {touched} unrepaired {unrepaired}"
    );
}

/// At the default share, stale dumps come now and then, not always.
#[test]
fn real_shape_stale_snapshots_at_the_default_share() {
    let mut ex = shaped::exchange(24, 20, RealShape::default());
    let tokens: Vec<String> = ex.markets().iter().map(|m| m.tokens[0].to_string()).collect();
    for _ in 0..2000 {
        ex.opening_dump(tokens.iter().map(String::as_str));
    }
    let n = ex.shape_counters().stale_snapshots;
    println!("{n} of 2000 opening dumps stale");
    assert!((50..=150).contains(&n), "{n} of 2000 dumps stale, configured 5 %");
}

/// The capture helper: seeded, one line per frame with strictly increasing receive times,
/// every frame decodable, only tokens `polybook replay`'s defaults can hash.
#[test]
fn capture_lines_are_seeded_and_decode() {
    use polybook::capture::parse_line;
    use polybook::sim::{capture_lines, capture_lines_yes_only};
    let cfg = SimConfig { seed: 31, markets: 40, ..SimConfig::default() };
    let a = capture_lines(cfg.clone(), 20, 10_000);
    assert_eq!(a, capture_lines(cfg.clone(), 20, 10_000));
    assert!(a.len() > 1000, "{}", a.len());
    let mut last = 0;
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for (i, l) in a.iter().enumerate() {
        let c = parse_line(l).unwrap_or_else(|| panic!("line {i}"));
        let ns = c.recv_ns.unwrap_or_else(|| panic!("no recv_ns"));
        assert!(ns > last, "line {i}");
        last = ns;
        assert!(!c.frame.ends_with('\n'));
        if i == 0 {
            assert!(
                c.frame.starts_with("[{")
                    && c.frame.matches("\"event_type\":\"book\"").count() == 20
            );
        }
        decode_frame(c.frame, |ev| match ev {
            Ok(e) => *kinds.entry(e.kind().to_owned()).or_default() += 1,
            Err(e) => panic!("{e}: {}", c.frame),
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }
    for k in ["book", "price_change", "last_trade_price"] {
        assert!(kinds.contains_key(k), "{kinds:?}");
    }
    let ex = SimExchange::new(cfg.clone());
    let dump = &a[0];
    for m in ex.markets() {
        if dump.contains(m.tokens[0].as_str()) {
            assert_eq!(m.min_order_size().to_string(), "5");
            assert!(!m.neg_risk);
        }
    }
    let yes = capture_lines_yes_only(cfg, 10, 10_000);
    assert_eq!(yes[0].matches("\"event_type\":\"book\"").count(), 10);
    let no_tokens: Vec<String> = ex.markets().iter().map(|m| m.tokens[1].to_string()).collect();
    for l in &yes {
        if l.contains("\"event_type\":\"last_trade_price\"")
            || (l.contains("\"event_type\":\"book\"") && !l.contains(" ["))
        {
            assert!(!no_tokens.iter().any(|t| l.contains(&format!("\"asset_id\":\"{t}\""))), "{l}");
        }
    }
}
