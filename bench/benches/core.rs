//! Criterion benches of the hot path: decode a frame, and decode + apply it to a `BookStore`.
//!
//! Run: `cargo bench -p polybook-bench -- --warm-up-time 1 --measurement-time 3`, optionally
//! with one filter regex, e.g. `'parse|apply_price_change'` (criterion takes a single filter).
//! Throughput is reported in entries (price_change entries or book levels) per second; the
//! design target is >= 3 M price_change entries/s/core for parse + apply. `parse_serde_only`
//! decodes the same frames without the hand-written fast path, for comparison.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use polybook::book::hash::{book_hash, to_hex};
use polybook::book::{Book, BookStatus, LtpText, TokenMeta};
use polybook::protocol::market::decode_frame_serde;
use polybook::protocol::{decode_frame, MarketEvent};
use polybook::store::{NoSink, StoreConfig};
use polybook::{BookStore, Level, MarketId, Price, Side, Size, TokenId};

const LTP: &str = "0.500";

fn fixture(name: &str) -> String {
    let path = format!("{}/../tests/data/polymarket/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn p(s: &str) -> Price {
    Price::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn z(s: &str) -> Size {
    Size::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// What the stream does not carry but the hash needs: the venue's usual values, which are the
/// ones the 2025-12-23 opening dump was hashed with (see tests/data/polymarket/hash_test_vectors).
fn venue_meta(tick: &str) -> TokenMeta {
    TokenMeta { tick_size: Some(p(tick)), min_order_size: Some(z("5")), neg_risk: Some(false) }
}

fn store_config(verify_hash: bool) -> StoreConfig {
    StoreConfig {
        verify_hash,
        auto_track: true,
        default_meta: venue_meta("0.01"),
        ..StoreConfig::default()
    }
}

/// Number of events/entries a frame decodes to, panicking on any error (benches must measure
/// the success path).
fn decode_count(text: &str) -> u64 {
    let mut n = 0u64;
    decode_frame(text, |r| match r {
        Ok(MarketEvent::PriceChange(pc)) => n += pc.changes.len() as u64,
        Ok(MarketEvent::Book(b)) => n += (b.bids.len() + b.asks.len()) as u64,
        Ok(other) => panic!("unexpected event {}", other.kind()),
        Err(e) => panic!("decode failed: {e}"),
    })
    .unwrap_or_else(|e| panic!("frame failed: {e}"));
    n
}

// ---------------------------------------------------------------------------------------------
// parse only
// ---------------------------------------------------------------------------------------------

fn bench_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    for name in ["ws_price_change_2025-12-23.json", "ws_price_change_compact_2026-10-04.json"] {
        let text = fixture(name);
        let entries = decode_count(&text);
        g.throughput(Throughput::Elements(entries));
        g.bench_function(name.trim_end_matches(".json"), |b| {
            b.iter(|| {
                let mut n = 0usize;
                let kind = decode_frame(black_box(&text), |r| {
                    if let Ok(MarketEvent::PriceChange(pc)) = r {
                        n += pc.changes.len();
                        black_box(&pc);
                    }
                });
                black_box((kind, n))
            })
        });
    }
    let (book, _) = book_frame_100(0, &venue_meta("0.001"));
    g.throughput(Throughput::Elements(decode_count(&book)));
    g.bench_function("book_100_levels_per_side", |b| {
        b.iter(|| {
            let kind = decode_frame(black_box(&book), |r| {
                black_box(&r);
            });
            black_box(kind)
        })
    });
    g.finish();
    // The same frames through the serde path alone (what `parse` measured before the fast path).
    let mut g = c.benchmark_group("parse_serde_only");
    for name in ["ws_price_change_2025-12-23.json", "ws_price_change_compact_2026-10-04.json"] {
        let text = fixture(name);
        g.throughput(Throughput::Elements(decode_count(&text)));
        g.bench_function(name.trim_end_matches(".json"), |b| {
            b.iter(|| {
                let kind = decode_frame_serde(black_box(&text), |r| {
                    black_box(&r);
                });
                black_box(kind)
            })
        });
    }
    g.throughput(Throughput::Elements(decode_count(&book)));
    g.bench_function("book_100_levels_per_side", |b| {
        b.iter(|| {
            let kind = decode_frame_serde(black_box(&book), |r| {
                black_box(&r);
            });
            black_box(kind)
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// parse + apply: price_change into the books of a real opening dump
// ---------------------------------------------------------------------------------------------

/// Reference copies of the opening dump's two books, used to compute the hashes and top of book
/// the venue would send with each generated change.
fn reference_books(dump: &str) -> Vec<Book> {
    let mut books = Vec::new();
    decode_frame(dump, |r| match r {
        Ok(MarketEvent::Book(e)) => {
            let mut b =
                Book::new(TokenId::new(&e.asset_id), MarketId::new(&e.market), venue_meta("0.01"));
            b.set_hash_ltp(e.last_trade_price.as_deref().and_then(LtpText::new));
            let _ = b.replace(&e.bids, &e.asks, e.timestamp.0);
            books.push(b);
        }
        other => panic!("opening dump: unexpected {other:?}"),
    })
    .unwrap_or_else(|e| panic!("opening dump: {e}"));
    assert_eq!(books.len(), 2, "the opening dump holds one market's two tokens");
    books
}

fn hash_hex(b: &Book, ts: u64) -> String {
    let mut scratch = String::new();
    book_hash(b, ts, &mut scratch)
        .map(|h| to_hex(&h))
        .unwrap_or_else(|| panic!("hash inputs unknown for {}", b.token()))
}

/// Applies one change to a reference book and renders its entry as the venue would (compact).
fn entry(b: &mut Book, side: Side, price: Price, size: Size, ts: u64) -> String {
    b.set_level(side, price, size);
    let bid = b.best_bid().map_or(Price::ZERO, |l| l.price);
    let ask = b.best_ask().map_or(Price::ONE, |l| l.price);
    format!(
        r#"{{"asset_id":"{}","price":"{price}","size":"{size}","side":"{}","hash":"{}","best_bid":"{bid}","best_ask":"{ask}"}}"#,
        b.token(),
        side.as_str(),
        hash_hex(b, ts)
    )
}

/// A cycle of realistic two-entry `price_change` frames (a level on one token and its mirror on
/// the other, as the venue sends them) that touches levels at and away from the top of book,
/// updates, removes and re-inserts them, and then restores every level, so the books return to
/// the opening state and the cycle can repeat with every hash still valid.
fn price_change_cycle(dump: &str) -> Vec<String> {
    let mut refs = reference_books(dump);
    let market = refs[0].market().to_string();
    // (side on token 0, price on token 0, new size); token 1 gets the mirror side at 1 - price.
    let steps: [(Side, &str, &str); 12] = [
        (Side::Buy, "0.49", "55"),
        (Side::Buy, "0.48", "120.5"),
        (Side::Sell, "0.5", "3.581817"),
        (Side::Buy, "0.45", "0"),
        (Side::Sell, "0.52", "13354.28"),
        (Side::Buy, "0.3", "999"),
        (Side::Sell, "0.75", "0"),
        (Side::Buy, "0.49", "0"),
        (Side::Buy, "0.1", "2500"),
        (Side::Sell, "0.5", "0"),
        (Side::Sell, "0.51", "42"),
        (Side::Buy, "0.47", "7.5"),
    ];
    let size_at = |b: &Book, side: Side, price: Price| {
        b.levels(side).iter().find(|l| l.price == price).map_or(Size::ZERO, |l| l.size)
    };
    // Per step: side and price on token 0, and the size to set on token 0 and on token 1 (the
    // mirror). The undo half restores each token's own opening size, in reverse order.
    let mut plan: Vec<(Side, Price, Size, Size)> = Vec::new();
    let mut undo: Vec<(Side, Price, Size, Size)> = Vec::new();
    {
        let (mut s0, mut s1) = (refs[0].clone(), refs[1].clone());
        for (side, price, size) in steps {
            let (price, size) = (p(price), z(size));
            let mirror = price.complement().unwrap_or_else(|| panic!("price {price} > 1"));
            undo.push((
                side,
                price,
                size_at(&s0, side, price),
                size_at(&s1, side.opposite(), mirror),
            ));
            s0.set_level(side, price, size);
            s1.set_level(side.opposite(), mirror, size);
            plan.push((side, price, size, size));
        }
    }
    plan.extend(undo.into_iter().rev());
    let mut frames = Vec::with_capacity(plan.len());
    let mut ts = 1_766_481_546_800u64;
    for (side, price, size0, size1) in plan {
        ts += 37;
        let mirror = price.complement().unwrap_or_else(|| panic!("price {price} > 1"));
        let (a, rest) = refs.split_at_mut(1);
        let e0 = entry(&mut a[0], side, price, size0, ts);
        let e1 = entry(&mut rest[0], side.opposite(), mirror, size1, ts);
        frames.push(format!(
            r#"{{"market":"{market}","price_changes":[{e0},{e1}],"timestamp":"{ts}","event_type":"price_change"}}"#
        ));
    }
    frames
}

fn seeded_store(dump: &str, verify_hash: bool) -> BookStore {
    let mut store = BookStore::new(store_config(verify_hash));
    let r = store.apply_frame(dump, &mut NoSink);
    assert!(r.errors.is_empty(), "opening dump: {:?}", r.errors);
    assert_eq!(store.len(), 2);
    store
}

/// One pass over the cycle must verify every hash and leave both books live and as they were.
fn preflight(dump: &str, frames: &[String]) {
    let mut store = seeded_store(dump, true);
    let before: Vec<(Vec<Level>, Vec<Level>)> =
        reference_books(dump).iter().map(|b| (b.bids().to_vec(), b.asks().to_vec())).collect();
    for f in frames {
        let r = store.apply_frame(f, &mut NoSink);
        assert!(r.errors.is_empty(), "generated frame rejected: {:?}\n{f}", r.errors);
    }
    let c = store.counters();
    assert_eq!(c.hash_mismatches, 0, "generated hashes must verify: {c:?}");
    assert_eq!(c.bbo_mismatches, 0, "generated best bid/ask must agree: {c:?}");
    assert_eq!(c.hash_checks, 2 + 2 * frames.len() as u64, "every entry hash-checked: {c:?}");
    for (b, (bids, asks)) in reference_books(dump).iter().zip(&before) {
        let s = store.get(b.token().as_str()).unwrap_or_else(|| panic!("book lost"));
        assert_eq!(s.status(), BookStatus::Live);
        assert_eq!((s.bids(), s.asks()), (&bids[..], &asks[..]), "cycle must restore the book");
    }
}

fn bench_apply_price_change(c: &mut Criterion) {
    let dump = fixture("ws_book_initial_dump_array_2025-12-23.json");
    let frames = price_change_cycle(&dump);
    preflight(&dump, &frames);
    let entries_per_frame = 2u64;
    let mut g = c.benchmark_group("apply_price_change");
    g.throughput(Throughput::Elements(entries_per_frame));
    for verify_hash in [true, false] {
        let mut store = seeded_store(&dump, verify_hash);
        let mut i = 0usize;
        let name = if verify_hash { "verify_hash" } else { "no_verify_hash" };
        g.bench_function(name, |b| {
            b.iter(|| {
                // Strictly in cycle order, across all of criterion's calls, so hashes stay valid.
                let frame = &frames[i];
                i = (i + 1) % frames.len();
                black_box(store.apply_frame(black_box(frame), &mut NoSink))
            })
        });
        // Sanity after the run (skipped when a filter left this bench out).
        let c = store.counters();
        if c.events_price_change == 0 {
            continue;
        }
        assert_eq!((c.hash_mismatches, c.bbo_mismatches), (0, 0), "{name}: {c:?}");
        if verify_hash {
            assert!(c.hash_checks > 2, "{name}: hashes were not computed: {c:?}");
            assert_eq!(c.hash_unverifiable, 0, "{name}: {c:?}");
        }
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// parse + apply: a 100-level-per-side book snapshot
// ---------------------------------------------------------------------------------------------

const BIG_MARKET: &str = "0x7ad403c3508f8e3912940fd1a913f227591145ca0614074208e0b962d5fcc422";
const BIG_TOKEN: &str =
    "16040015440196279900485035793550429453516625694844857319147506590755961451627";

/// A compact venue-style `book` frame with 100 levels per side on a 0.001 tick (bids
/// 0.001..0.100, asks 0.999..0.900), sizes varied by `variant`, with its correct hash.
fn book_frame_100(variant: u64, meta: &TokenMeta) -> (String, u64) {
    let ts = 1_791_125_476_001 + variant;
    let size =
        |i: u64| Size::from_units((i * 7_919 + variant * 104_729) % 50_000 * 10_000 + 10_000);
    let bids: Vec<Level> = (1..=100u32)
        .map(|i| Level::new(Price::from_units(i * 1_000), size(u64::from(i))))
        .collect();
    let asks: Vec<Level> = (0..100u32)
        .map(|i| Level::new(Price::from_units(999_000 - i * 1_000), size(u64::from(i) + 500)))
        .collect();
    let mut reference = Book::new(TokenId::new(BIG_TOKEN), MarketId::new(BIG_MARKET), *meta);
    reference.set_hash_ltp(LtpText::new(LTP));
    let _ = reference.replace(&bids, &asks, ts);
    let hash = hash_hex(&reference, ts);
    let levels = |ls: &[Level]| {
        ls.iter()
            .map(|l| format!(r#"{{"price":"{}","size":"{}"}}"#, l.price, l.size))
            .collect::<Vec<_>>()
            .join(",")
    };
    let frame = format!(
        r#"[{{"market":"{BIG_MARKET}","asset_id":"{BIG_TOKEN}","timestamp":"{ts}","hash":"{hash}","bids":[{}],"asks":[{}],"tick_size":"0.001","event_type":"book","last_trade_price":"{LTP}"}}]"#,
        levels(&bids),
        levels(&asks)
    );
    (frame, (bids.len() + asks.len()) as u64)
}

fn bench_apply_book(c: &mut Criterion) {
    let meta = venue_meta("0.001");
    let frames: Vec<(String, u64)> = (0..4).map(|v| book_frame_100(v, &meta)).collect();
    let levels = frames[0].1;
    let mut g = c.benchmark_group("apply_book_100_levels_per_side");
    g.throughput(Throughput::Elements(levels));
    for verify_hash in [true, false] {
        let mut store = BookStore::new(store_config(verify_hash));
        let mut i = 0usize;
        let name = if verify_hash { "verify_hash" } else { "no_verify_hash" };
        g.bench_function(name, |b| {
            b.iter(|| {
                let frame = &frames[i].0;
                i = (i + 1) % frames.len();
                black_box(store.apply_frame(black_box(frame), &mut NoSink))
            })
        });
        // Sanity after the run (skipped when a filter left this bench out).
        let c = store.counters();
        if c.frames == 0 {
            continue;
        }
        assert_eq!(c.errors.total(), 0, "{name}: {c:?}");
        assert_eq!(c.hash_mismatches, 0, "{name}: {c:?}");
        if verify_hash {
            assert!(c.hash_checks > 0 && c.hash_unverifiable == 0, "{name}: {c:?}");
        }
        let book = store.get(BIG_TOKEN).unwrap_or_else(|| panic!("book not tracked"));
        assert_eq!((book.bids().len(), book.asks().len()), (100, 100));
        assert_eq!(book.status(), BookStatus::Live);
    }
    g.finish();
}

criterion_group!(benches, bench_parse, bench_apply_price_change, bench_apply_book);
criterion_main!(benches);
