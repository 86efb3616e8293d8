//! Decode (and decode + apply) on the message shapes NautilusTrader's Polymarket adapter
//! publishes numbers for (`crates/adapters/polymarket/benches/data.rs`, BENCHMARKS.md of
//! release 1.228.0): a `price_change` with one entry and a `book` with 5 bids and 5 asks,
//! pretty-printed. The frames here are our own (same shape, our ids and values, valid venue
//! hashes), in the pretty form and in the venue's compact form.
//!
//! Run: `cargo bench -p polybook-bench --bench compare -- --warm-up-time 1 --measurement-time 3`.
//! Throughput is in messages per second, as NautilusTrader reports it.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use polybook::book::hash::{book_hash, to_hex};
use polybook::book::{Book, BookStatus, LtpText, TokenMeta};
use polybook::protocol::{decode_frame, MarketEvent};
use polybook::store::{NoSink, StoreConfig};
use polybook::{BookStore, Level, MarketId, Price, Side, Size, TokenId};

const MARKET: &str = "0x5c1e9a5be8d2f1e0c7a1b3d4e6f708192a3b4c5d6e7f8091a2b3c4d5e6f70819";
const TOKEN: &str = "48331043336612883890938759509493159234755048973500640148014422747788308965732";
const LTP: &str = "0.500";
const TS_BOOK: u64 = 1_790_000_000_000;

fn p(s: &str) -> Price {
    Price::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn z(s: &str) -> Size {
    Size::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn meta() -> TokenMeta {
    TokenMeta { tick_size: Some(p("0.01")), min_order_size: Some(z("5")), neg_risk: Some(false) }
}

fn reference() -> Book {
    let mut b = Book::new(TokenId::new(TOKEN), MarketId::new(MARKET), meta());
    b.set_hash_ltp(LtpText::new(LTP));
    // Wire order: bids ascending and asks descending, the best price last.
    let level = |(px, sz): &(&str, &str)| Level::new(p(px), z(sz));
    let bids: Vec<Level> =
        [("0.45", "1200"), ("0.46", "800"), ("0.47", "500"), ("0.48", "350"), ("0.49", "200")]
            .iter()
            .map(level)
            .collect();
    let asks: Vec<Level> =
        [("0.55", "1500"), ("0.54", "900"), ("0.53", "400"), ("0.52", "250"), ("0.51", "150")]
            .iter()
            .map(level)
            .collect();
    let _ = b.replace(&bids, &asks, TS_BOOK);
    b
}

fn hash_hex(b: &Book, ts: u64) -> String {
    let mut scratch = String::new();
    book_hash(b, ts, &mut scratch)
        .map(|h| to_hex(&h))
        .unwrap_or_else(|| panic!("hash inputs unknown"))
}

/// The venue's compact text squeezed of the spaces and newlines `pretty` adds.
fn compact(pretty: &str) -> String {
    let mut out = String::with_capacity(pretty.len());
    let mut in_str = false;
    for c in pretty.chars() {
        if c == '"' {
            in_str = !in_str;
        }
        if in_str || !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

/// A pretty-printed `book` frame (5 + 5 levels) with its correct hash.
fn book_frame() -> String {
    let b = reference();
    let levels = |ls: &[Level]| {
        ls.iter()
            .map(|l| {
                format!("            {{\"price\": \"{}\", \"size\": \"{}\"}}", l.price, l.size)
            })
            .collect::<Vec<_>>()
            .join(",\n")
    };
    format!(
        "{{\n        \"event_type\": \"book\",\n        \"market\": \"{MARKET}\",\n        \"asset_id\": \"{TOKEN}\",\n        \"bids\": [\n{}\n        ],\n        \"asks\": [\n{}\n        ],\n        \"hash\": \"{}\",\n        \"tick_size\": \"0.01\",\n        \"last_trade_price\": \"{LTP}\",\n        \"timestamp\": \"{TS_BOOK}\"\n    }}",
        levels(b.bids()),
        levels(b.asks()),
        hash_hex(&b, TS_BOOK)
    )
}

/// Two pretty-printed one-entry `price_change` frames: the best bid's size changes, then
/// changes back, each with the hash and best bid/ask of the book after it.
fn price_change_frames() -> [String; 2] {
    let mut b = reference();
    let mut frame = |size: &str, ts: u64| {
        b.set_level(Side::Buy, p("0.49"), z(size));
        let bid = b.best_bid().map_or(Price::ZERO, |l| l.price);
        let ask = b.best_ask().map_or(Price::ONE, |l| l.price);
        format!(
            "{{\n        \"event_type\": \"price_change\",\n        \"market\": \"{MARKET}\",\n        \"price_changes\": [\n            {{\n                \"asset_id\": \"{TOKEN}\",\n                \"price\": \"0.49\",\n                \"side\": \"BUY\",\n                \"size\": \"{size}\",\n                \"hash\": \"{}\",\n                \"best_bid\": \"{bid}\",\n                \"best_ask\": \"{ask}\"\n            }}\n        ],\n        \"timestamp\": \"{ts}\"\n    }}",
            hash_hex(&b, ts)
        )
    };
    [frame("150", TS_BOOK + 1_000), frame("200", TS_BOOK + 2_000)]
}

fn must_decode(text: &str) {
    decode_frame(text, |r| match r {
        Ok(MarketEvent::PriceChange(_) | MarketEvent::Book(_)) => {}
        Ok(other) => panic!("unexpected event {}", other.kind()),
        Err(e) => panic!("decode failed: {e}\n{text}"),
    })
    .unwrap_or_else(|e| panic!("frame failed: {e}\n{text}"));
}

fn store(verify_hash: bool, book: &str) -> BookStore {
    let mut s = BookStore::new(StoreConfig {
        verify_hash,
        auto_track: true,
        default_meta: meta(),
        ..StoreConfig::default()
    });
    let r = s.apply_frame(book, &mut NoSink);
    assert!(r.errors.is_empty(), "book: {:?}", r.errors);
    s
}

fn bench_decode(c: &mut Criterion) {
    let book = book_frame();
    let pcs = price_change_frames();
    let mut g = c.benchmark_group("nautilus_shapes_decode");
    g.throughput(Throughput::Elements(1));
    for (form, pc, bk) in
        [("pretty", pcs[0].clone(), book.clone()), ("compact", compact(&pcs[0]), compact(&book))]
    {
        must_decode(&pc);
        must_decode(&bk);
        g.bench_function(format!("price_change_1_entry_{form}"), |b| {
            b.iter(|| {
                decode_frame(black_box(&pc), |r| {
                    black_box(&r);
                })
            })
        });
        g.bench_function(format!("book_5x5_{form}"), |b| {
            b.iter(|| {
                decode_frame(black_box(&bk), |r| {
                    black_box(&r);
                })
            })
        });
    }
    g.finish();
}

fn bench_apply(c: &mut Criterion) {
    let book = book_frame();
    let pcs = price_change_frames();
    let mut g = c.benchmark_group("nautilus_shapes_apply");
    g.throughput(Throughput::Elements(1));
    for verify_hash in [false, true] {
        let tag = if verify_hash { "verify_hash" } else { "no_verify_hash" };
        // Preflight: both frames apply cleanly and every hash verifies.
        let mut s = store(verify_hash, &book);
        for f in &pcs {
            let r = s.apply_frame(f, &mut NoSink);
            assert!(r.errors.is_empty(), "{:?}", r.errors);
        }
        let cs = s.counters();
        assert_eq!((cs.hash_mismatches, cs.bbo_mismatches), (0, 0), "{cs:?}");
        let mut s = store(verify_hash, &book);
        let mut i = 0usize;
        g.bench_function(format!("price_change_1_entry_{tag}"), |b| {
            b.iter(|| {
                // In order, so each frame's hash matches the book it leaves.
                let f = &pcs[i & 1];
                i += 1;
                black_box(s.apply_frame(black_box(f), &mut NoSink))
            })
        });
        let cs = s.counters();
        assert_eq!((cs.hash_mismatches, cs.bbo_mismatches), (0, 0), "{tag}: {cs:?}");
        let mut s = store(verify_hash, &book);
        g.bench_function(format!("book_5x5_{tag}"), |b| {
            b.iter(|| black_box(s.apply_frame(black_box(&book), &mut NoSink)))
        });
        let cs = s.counters();
        assert_eq!(cs.hash_mismatches, 0, "{tag}: {cs:?}");
        let live = s.get(TOKEN).map(|b| b.status());
        assert_eq!(live, Some(BookStatus::Live), "{tag}");
    }
    g.finish();
}

criterion_group!(benches, bench_decode, bench_apply);
criterion_main!(benches);
