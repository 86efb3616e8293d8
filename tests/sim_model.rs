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

/// A client that subscribes to everything and applies every frame keeps exact books.
#[test]
fn sim_store_fed_all_frames_equals_truth() {
    for seed in [1u64, 2, 3] {
        let mut ex = sim(seed, 40);
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
