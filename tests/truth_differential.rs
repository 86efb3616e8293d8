//! The independent truth (`sim::truth`, written from the protocol doc) against the venue's own
//! hashes and against the engine's `Book`/`book_hash` (issue 13). The real fixtures are parsed
//! here with `serde_json::Value`, not with our decoder, so nothing of the code under test sits
//! between the venue's bytes and the oracle.

use polybook::book::hash::{book_hash, to_hex};
use polybook::book::{Book, LtpText, TokenMeta};
use polybook::sim::truth::{units_of, TruthBook};
use polybook::{MarketId, Price, Side, Size, TokenId};
use proptest::prelude::*;
use serde_json::Value;

fn data(name: &str) -> String {
    let path = format!("{}/tests/data/polymarket/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn u(v: &Value) -> u64 {
    units_of(s(v)).unwrap_or_else(|| panic!("not a decimal: {v}"))
}

/// A truth book from a venue `book` object (WS or REST).
fn truth_from(book: &Value, min: &str, tick: &str, neg: bool, ltp: &str) -> TruthBook {
    let mut t = TruthBook::new(s(&book["market"]), s(&book["asset_id"]));
    for l in book["bids"].as_array().into_iter().flatten() {
        t.set(true, u(&l["price"]), u(&l["size"]));
    }
    for l in book["asks"].as_array().into_iter().flatten() {
        t.set(false, u(&l["price"]), u(&l["size"]));
    }
    (t.min_order_size, t.tick_size, t.neg_risk, t.last_trade_price) =
        (min.into(), tick.into(), neg, ltp.into());
    t
}

fn ts(v: &Value) -> u64 {
    s(v).parse().unwrap_or_else(|e| panic!("{v}: {e}"))
}

#[test]
fn truth_reproduces_the_venues_ws_hashes() {
    let dump: Value = serde_json::from_str(&data("ws_book_initial_dump_array_2025-12-23.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut books: Vec<TruthBook> = Vec::new();
    for b in dump.as_array().into_iter().flatten() {
        let t = truth_from(b, "5", "0.01", false, "0.500");
        assert_eq!(t.hash_hex(ts(&b["timestamp"])), s(&b["hash"]));
        books.push(t);
    }
    // The price_change of that day: both entries match with the unannounced trade at 0.490.
    let pc: Value = serde_json::from_str(&data("ws_price_change_2025-12-23.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    for e in pc["price_changes"].as_array().into_iter().flatten() {
        let t = books
            .iter_mut()
            .find(|b| b.asset_id == s(&e["asset_id"]))
            .unwrap_or_else(|| panic!("no book for {e}"));
        t.set(s(&e["side"]) == "BUY", u(&e["price"]), u(&e["size"]));
        t.last_trade_price = "0.490".into();
        assert_eq!(t.hash_hex(ts(&pc["timestamp"])), s(&e["hash"]));
        assert_eq!(t.top().0, units_of(s(&e["best_bid"])));
        assert_eq!(t.top().1, units_of(s(&e["best_ask"])));
    }
    let open: Value =
        serde_json::from_str(&data("ws_book_initial_dump_with_tick_size_2026-05-08.json"))
            .unwrap_or_else(|e| panic!("{e}"));
    let b = &open[0];
    let mut t = truth_from(b, "5", s(&b["tick_size"]), false, s(&b["last_trade_price"]));
    assert_eq!(t.hash_hex(ts(&b["timestamp"])), s(&b["hash"]));
    let pc: Value = serde_json::from_str(&data("ws_price_change_2026-05-08.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    let e = &pc["price_changes"][1];
    t.set(s(&e["side"]) == "BUY", u(&e["price"]), u(&e["size"]));
    assert_eq!(t.hash_hex(ts(&pc["timestamp"])), s(&e["hash"]));
}

#[test]
fn truth_reproduces_every_2026_rest_book_hash() {
    let dir = format!("{}/tests/data/polymarket/rest_books_2026", env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{e}")).flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_else(|e| panic!("{e}"));
        let b: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        if b.get("hash").is_none() {
            continue;
        }
        let t = truth_from(
            &b,
            s(&b["min_order_size"]),
            s(&b["tick_size"]),
            b["neg_risk"].as_bool().unwrap_or_else(|| panic!("neg_risk")),
            s(&b["last_trade_price"]),
        );
        assert_eq!(t.hash_hex(ts(&b["timestamp"])), s(&b["hash"]), "{:?}", entry.path());
        n += 1;
    }
    assert_eq!(n, 38);
}

#[test]
fn truth_reproduces_the_reserialized_2026_07_capture_entry_by_entry() {
    let text = data("ws_capture_2026-07-20_reserialized.capture");
    let mut books: Vec<TruthBook> = Vec::new();
    let (mut checked, mut matched) = (0, 0);
    for line in text.lines() {
        let frame = line.split_once(' ').map_or(line, |(_, f)| f);
        let v: Value = serde_json::from_str(frame).unwrap_or_else(|e| panic!("{e}"));
        let events: Vec<Value> = v.as_array().cloned().unwrap_or_else(|| vec![v.clone()]);
        for ev in events {
            match ev["event_type"].as_str() {
                Some("book") => {
                    let ltp = ev["last_trade_price"].as_str().unwrap_or("0.925");
                    let t = truth_from(&ev, "5", "0.001", true, ltp);
                    checked += 1;
                    matched += usize::from(t.hash_hex(ts(&ev["timestamp"])) == s(&ev["hash"]));
                    books.retain(|b| b.asset_id != t.asset_id);
                    books.push(t);
                }
                Some("price_change") => {
                    for e in ev["price_changes"].as_array().into_iter().flatten() {
                        let Some(t) = books.iter_mut().find(|b| b.asset_id == s(&e["asset_id"]))
                        else {
                            continue;
                        };
                        t.set(s(&e["side"]) == "BUY", u(&e["price"]), u(&e["size"]));
                        checked += 1;
                        matched += usize::from(t.hash_hex(ts(&ev["timestamp"])) == s(&e["hash"]));
                    }
                }
                Some("last_trade_price") => {
                    // Books spell the trade price with at least three decimals.
                    let p = s(&ev["price"]);
                    let (int, frac) = p.split_once('.').unwrap_or((p, ""));
                    let text = format!("{int}.{frac:0<3}");
                    for b in &mut books {
                        b.last_trade_price = text.clone();
                    }
                }
                _ => {}
            }
        }
    }
    assert!(checked >= 26, "{checked}");
    assert_eq!(matched, checked, "{matched} of {checked} hashes");
}

fn meta() -> TokenMeta {
    TokenMeta {
        tick_size: Price::parse("0.01").ok(),
        min_order_size: Size::parse("5").ok(),
        neg_risk: Some(true),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The engine's book and hash against the independent ones, after every change of random
    /// streams (prices on a 0.001 grid, sizes with up to 6 decimals, removals included).
    #[test]
    fn book_and_hash_equal_the_independent_truth(
        ops in prop::collection::vec((any::<bool>(), 1u64..1000, 0u64..3, 0u64..5_000_000_000), 1..120)
    ) {
        let mut ours = Book::new(TokenId::new("7"), MarketId::new("0xabc"), meta());
        ours.set_hash_ltp(LtpText::new("0.55"));
        let mut truth = TruthBook::new("0xabc", "7");
        truth.neg_risk = true;
        truth.last_trade_price = "0.55".into();
        let mut scratch = String::new();
        for (i, (buy, tick, zero, size)) in ops.into_iter().enumerate() {
            let price = tick * 1_000;
            let size = if zero == 0 { 0 } else { size };
            let side = if buy { Side::Buy } else { Side::Sell };
            ours.set_level(side, Price::from_units(price as u32), Size::from_units(size));
            truth.set(buy, price, size);
            let t = 1_790_000_000_000 + i as u64;
            let h = book_hash(&ours, t, &mut scratch).map(|h| to_hex(&h));
            let want = truth.hash_hex(t);
            prop_assert_eq!(h.as_deref(), Some(want.as_str()));
            let bids: Vec<(u64, u64)> =
                ours.bids().iter().map(|l| (u64::from(l.price.units()), l.size.units())).collect();
            let want: Vec<(u64, u64)> = truth.bids.iter().map(|(p, z)| (*p, *z)).collect();
            prop_assert_eq!(bids, want);
            let asks: Vec<(u64, u64)> =
                ours.asks().iter().map(|l| (u64::from(l.price.units()), l.size.units())).collect();
            let want: Vec<(u64, u64)> = truth.asks.iter().rev().map(|(p, z)| (*p, *z)).collect();
            prop_assert_eq!(asks, want);
        }
    }
}
