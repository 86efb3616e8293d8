//! Fuzzes the market-channel frame decoder and the store behind it.
//!
//! The input is split at newlines into up to 16 frames (like a capture file), each decoded on
//! its own and applied in order to two stores: an empty one that tracks whatever `book` arrives,
//! and one seeded with a real opening dump and full token parameters, so mutated
//! `price_change` frames reach the level and hash paths. Beyond "never panics", every book
//! must keep its invariants: bids strictly ascending, asks strictly descending, no zero size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use polybook::book::{Book, TokenMeta};
use polybook::protocol::{decode_frame, FrameKind};
use polybook::store::{BookUpdate, NoSink, StoreConfig};
use polybook::{BookStore, Price, Size};

const OPENING_DUMP: &str =
    include_str!("../../tests/data/polymarket/ws_book_initial_dump_array_2025-12-23.json");

const FRAMES_MAX: usize = 16;

/// The core's own invariant check, asserted here too because fuzz builds may be release builds,
/// where the core's `debug_assert!` after each change is compiled out.
fn check(book: &Book) {
    if let Err(e) = book.check_invariants() {
        panic!("{e}: bids {:?} asks {:?}", book.bids(), book.asks());
    }
}

fn apply(store: &mut BookStore, frame: &str) {
    let mut sink = |_: &BookUpdate, b: &Book| check(b);
    let report = store.apply_frame(frame, &mut sink);
    // Every element of an array frame is either an event or a counted error.
    if let Some(FrameKind::Array(n)) = report.kind {
        assert_eq!(report.events as usize + report.errors.len(), n, "elements lost in {frame:?}");
    }
    for b in store.books() {
        check(b);
    }
}

fn seeded() -> BookStore {
    let mut store = BookStore::new(StoreConfig {
        auto_track: true,
        default_meta: TokenMeta {
            tick_size: Some(Price::from_units(10_000)),
            min_order_size: Some(Size::from_units(5_000_000)),
            neg_risk: Some(false),
        },
        ..StoreConfig::default()
    });
    store.apply_frame(OPENING_DUMP, &mut NoSink);
    store
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut fresh = BookStore::new(StoreConfig {
        auto_track: true,
        verify_hash: false,
        ..StoreConfig::default()
    });
    let mut live = seeded();
    for frame in text.split('\n').take(FRAMES_MAX) {
        let mut n = 0usize;
        let _ = decode_frame(frame, |_| n += 1);
        apply(&mut fresh, frame);
        apply(&mut live, frame);
    }
});
