//! The store on long seeded real-shaped streams (issue 17): same-timestamp runs, cascades,
//! hashes ahead and trades hashed before they are announced raise (almost) no false alarm,
//! while genuine divergences (stale opening books) are still caught.

use polybook::book::TokenMeta;
use polybook::capture::{apply_capture_line, settle_at_end};
use polybook::sim::{capture_lines, RealShape, SimConfig};
use polybook::store::{NoSink, StoreConfig};
use polybook::{BookStore, Size, StoreCounters};

fn replay(lines: &[String]) -> StoreCounters {
    // The captures hold markets with the venue's usual parameters (as `polybook replay`
    // assumes): min_order_size 5, neg_risk false; the tick comes from the opening books.
    let meta =
        TokenMeta { tick_size: None, min_order_size: Size::parse("5").ok(), neg_risk: Some(false) };
    let config = StoreConfig { auto_track: true, default_meta: meta, ..StoreConfig::default() };
    let mut store = BookStore::new(config);
    for l in lines {
        apply_capture_line(&mut store, l, &mut NoSink);
    }
    settle_at_end(&mut store, &mut NoSink);
    store.counters().clone()
}

fn share(part: u64, whole: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let s = part as f64 / whole.max(1) as f64;
    s
}

fn events() -> usize {
    std::env::var("POLYBOOK_SHAPE_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(30_000)
}

#[test]
fn real_shaped_stream_without_stale_books_raises_no_false_alarm() {
    let shape = RealShape { stale_snapshot_permille: 0, ..RealShape::default() };
    let cfg = SimConfig { seed: 7, markets: 80, real_shape: shape, ..SimConfig::default() };
    let c = replay(&capture_lines(cfg, 60, events()));
    eprintln!(
        "hash {:?}\nbbo {:?}\nsuspect {} resyncing {}",
        c.hash, c.bbo, c.books_marked_suspect, c.books_marked_resyncing
    );
    assert!(c.hash.judged() > 10_000, "{:?}", c.hash);
    assert!(c.hash.matched_after_run > 0 && c.hash.matched_later > 0, "{:?}", c.hash);
    assert!(share(c.hash.divergent, c.hash.judged()) <= 0.005, "{:?}", c.hash);
    assert!(share(c.bbo.divergent, c.bbo.judged()) <= 0.005, "{:?}", c.bbo);
    assert_eq!(c.books_marked_resyncing, 0, "a burst caused a resync");
}

#[test]
fn stale_opening_books_are_still_detected() {
    let shape = RealShape { stale_snapshot_permille: 1000, ..RealShape::default() };
    let cfg = SimConfig { seed: 8, markets: 40, real_shape: shape, ..SimConfig::default() };
    let c = replay(&capture_lines(cfg, 40, events() / 3));
    eprintln!(
        "hash {:?}\nsuspect {} resyncing {}",
        c.hash, c.books_marked_suspect, c.books_marked_resyncing
    );
    assert!(c.hash.divergent > 0, "{:?}", c.hash);
    assert!(c.books_marked_suspect >= 1);
}
