//! Property tests: the book and the store against `BTreeMap` models, decimal parse/format round
//! trips, and "never panics" for arbitrary and mutated frames.
//!
//! Case counts are kept modest so the file runs in a few seconds in debug builds. For a deeper
//! run multiply them, e.g. `POLYBOOK_PROPTEST_SCALE=20 cargo test --release --test properties`,
//! or use the cargo-fuzz target in `fuzz/` for open-ended exploration.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use polybook::book::hash::{book_hash, to_hex};
use polybook::book::{check_ladder, Book, BookStatus, LtpText, TokenMeta};
use polybook::protocol::{decode_frame, FrameKind};
use polybook::store::{BookUpdate, StoreConfig};
use polybook::{BookStore, Level, MarketId, Price, Side, Size, TokenId};

/// Real frames used as seeds for the mutation tests.
const PRICE_CHANGE: &str = include_str!("data/polymarket/ws_price_change_2025-12-23.json");
const OPENING_DUMP: &str =
    include_str!("data/polymarket/ws_book_initial_dump_array_2025-12-23.json");

type Ladder = BTreeMap<Price, Size>;

/// Cases per property, scaled by the `POLYBOOK_PROPTEST_SCALE` environment variable (default 1).
fn cases(base: u32) -> ProptestConfig {
    let scale = std::env::var("POLYBOOK_PROPTEST_SCALE").ok().and_then(|s| s.parse::<u32>().ok());
    ProptestConfig::with_cases(base.saturating_mul(scale.unwrap_or(1).max(1)))
}

// ---------------------------------------------------------------------------------------------
// Shared strategies and helpers
// ---------------------------------------------------------------------------------------------

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Buy), Just(Side::Sell)]
}

/// Mostly a small grid (so levels collide and get replaced/removed), sometimes any u32.
fn price_units() -> impl Strategy<Value = u32> {
    prop_oneof![9 => (1u32..=40).prop_map(|t| t * 25_000), 1 => any::<u32>()]
}

/// Zero (remove), ordinary sizes, and extremes (to exercise saturating totals).
fn size_units() -> impl Strategy<Value = u64> {
    prop_oneof![2 => Just(0u64), 6 => 1u64..=1_000_000_000, 1 => any::<u64>()]
}

fn raw_levels() -> impl Strategy<Value = Vec<(u32, u64)>> {
    prop::collection::vec((price_units(), size_units()), 0..12)
}

fn to_levels(raw: &[(u32, u64)]) -> Vec<Level> {
    raw.iter().map(|&(p, s)| Level::new(Price::from_units(p), Size::from_units(s))).collect()
}

/// A snapshot's meaning: later levels at the same price win, zero sizes are dropped.
fn ladder_of(levels: &[Level]) -> Ladder {
    let mut m = Ladder::new();
    for l in levels {
        m.insert(l.price, l.size);
    }
    m.retain(|_, s| !s.is_zero());
    m
}

/// Levels of a ladder in wire order (bids ascending, asks descending: best last).
fn wire_levels(ladder: &Ladder, side: Side) -> Vec<Level> {
    let it = ladder.iter().map(|(p, s)| Level::new(*p, *s));
    match side {
        Side::Buy => it.collect(),
        Side::Sell => it.rev().collect(),
    }
}

fn set_model(ladder: &mut Ladder, price: Price, size: Size) -> Size {
    let old = if size.is_zero() { ladder.remove(&price) } else { ladder.insert(price, size) };
    old.unwrap_or(Size::ZERO)
}

/// The book equals the model: contents, order, best levels, totals and depth.
fn check_book(book: &Book, bids: &Ladder, asks: &Ladder) -> Result<(), TestCaseError> {
    prop_assert_eq!(book.check_invariants(), Ok(()));
    prop_assert_eq!(book.bids(), &wire_levels(bids, Side::Buy)[..]);
    prop_assert_eq!(book.asks(), &wire_levels(asks, Side::Sell)[..]);
    prop_assert_eq!(book.best_bid(), bids.last_key_value().map(|(p, s)| Level::new(*p, *s)));
    prop_assert_eq!(book.best_ask(), asks.first_key_value().map(|(p, s)| Level::new(*p, *s)));
    for (side, ladder) in [(Side::Buy, bids), (Side::Sell, asks)] {
        let total = ladder.values().fold(0u64, |acc, s| acc.saturating_add(s.units()));
        prop_assert_eq!(book.total_size(side), Size::from_units(total));
    }
    let top_bids: Vec<Level> = book.depth(Side::Buy, 3).copied().collect();
    let want_bids: Vec<Level> =
        bids.iter().rev().take(3).map(|(p, s)| Level::new(*p, *s)).collect();
    prop_assert_eq!(top_bids, want_bids);
    let top_asks: Vec<Level> = book.depth(Side::Sell, 3).copied().collect();
    let want_asks: Vec<Level> = asks.iter().take(3).map(|(p, s)| Level::new(*p, *s)).collect();
    prop_assert_eq!(top_asks, want_asks);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. Book against a BTreeMap model
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum BookOp {
    Set(Side, u32, u64),
    /// Bids and asks as sent; `sorted` renders them in clean wire order first.
    Snapshot {
        bids: Vec<(u32, u64)>,
        asks: Vec<(u32, u64)>,
        sorted: bool,
    },
}

fn book_op() -> impl Strategy<Value = BookOp> {
    prop_oneof![
        8 => (side(), price_units(), size_units()).prop_map(|(s, p, z)| BookOp::Set(s, p, z)),
        1 => (raw_levels(), raw_levels(), any::<bool>())
            .prop_map(|(bids, asks, sorted)| BookOp::Snapshot { bids, asks, sorted }),
    ]
}

fn new_book() -> Book {
    Book::new(TokenId::new("1"), MarketId::new("0xab"), TokenMeta::default())
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn book_random_ops_match_btreemap_model(ops in prop::collection::vec(book_op(), 1..60)) {
        let mut book = new_book();
        let (mut bids, mut asks) = (Ladder::new(), Ladder::new());
        check_book(&book, &bids, &asks)?;
        for op in ops {
            match op {
                BookOp::Set(side, p, z) => {
                    let (price, size) = (Price::from_units(p), Size::from_units(z));
                    let model = match side {
                        Side::Buy => &mut bids,
                        Side::Sell => &mut asks,
                    };
                    let want_old = set_model(model, price, size);
                    let old = book.set_level(side, price, size);
                    prop_assert_eq!(old, want_old, "old size at {:?} {:?}", side, price);
                }
                BookOp::Snapshot { bids: raw_b, asks: raw_a, sorted } => {
                    let mut sb = to_levels(&raw_b);
                    let mut sa = to_levels(&raw_a);
                    if sorted {
                        sb = wire_levels(&ladder_of(&sb), Side::Buy);
                        sa = wire_levels(&ladder_of(&sa), Side::Sell);
                    }
                    let clean = check_ladder(&sb, Side::Buy).is_ok() && check_ladder(&sa, Side::Sell).is_ok();
                    let result = book.replace(&sb, &sa, 7);
                    prop_assert_eq!(result.is_ok(), clean, "replace verdict for {:?} / {:?}", sb, sa);
                    bids = ladder_of(&sb);
                    asks = ladder_of(&sa);
                    prop_assert_eq!(book.timestamp_ms(), 7);
                }
            }
            check_book(&book, &bids, &asks)?;
        }
    }

    #[test]
    fn book_set_level_same_size_twice_is_idempotent(
        side in side(), p in price_units(), z in size_units(), seed in raw_levels()
    ) {
        let mut book = new_book();
        for (sp, sz) in seed {
            book.set_level(side, Price::from_units(sp), Size::from_units(sz));
        }
        book.set_level(side, Price::from_units(p), Size::from_units(z));
        let once = book.levels(side).to_vec();
        let old = book.set_level(side, Price::from_units(p), Size::from_units(z));
        prop_assert_eq!(old, Size::from_units(z));
        prop_assert_eq!(book.levels(side), &once[..]);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Decimals: parse <-> format
// ---------------------------------------------------------------------------------------------

/// Canonical text computed independently of the crate: integer part, then the fraction with
/// trailing zeros trimmed (and no point at all if nothing is left).
fn expected_canonical(units: u64) -> String {
    let int = units / 1_000_000;
    let frac = format!("{:06}", units % 1_000_000);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        int.to_string()
    } else {
        format!("{int}.{frac}")
    }
}

/// Exact value of `int[.frac]` in 1e-6 units, computed with u128 digit by digit.
fn expected_units(int: &str, frac: &str) -> u128 {
    let digits = |s: &str| s.bytes().fold(0u128, |acc, b| acc * 10 + u128::from(b - b'0'));
    let mut frac_units = digits(frac);
    for _ in frac.len()..6 {
        frac_units *= 10;
    }
    digits(int) * 1_000_000 + frac_units
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn size_format_then_parse_round_trips(u in any::<u64>()) {
        let s = Size::from_units(u);
        let text = s.to_string();
        prop_assert_eq!(Size::parse(&text), Ok(s), "text {:?}", text);
        prop_assert_eq!(&text, &expected_canonical(u));
        let on_stack = s.text();
        prop_assert_eq!(on_stack.as_str(), text.as_str());
    }

    #[test]
    fn price_format_then_parse_round_trips(u in any::<u32>()) {
        let p = Price::from_units(u);
        let text = p.to_string();
        prop_assert_eq!(Price::parse(&text), Ok(p), "text {:?}", text);
        prop_assert_eq!(&text, &expected_canonical(u64::from(u)));
    }

    #[test]
    fn decimal_canonical_format_is_shortest(u in prop_oneof![any::<u64>(), 0u64..10_000_000]) {
        let text = Size::from_units(u).to_string();
        prop_assert!(!text.ends_with('.'), "{}", text);
        prop_assert!(!text.starts_with('.'), "{}", text);
        if let Some((int, frac)) = text.split_once('.') {
            prop_assert!(!frac.ends_with('0'), "trailing zero in {}", text);
            prop_assert!(!frac.is_empty() && frac.len() <= 6, "{}", text);
            prop_assert!(int == "0" || !int.starts_with('0'), "leading zero in {}", text);
        } else {
            prop_assert!(text == "0" || !text.starts_with('0'), "leading zero in {}", text);
        }
        prop_assert!(text.bytes().all(|b| b.is_ascii_digit() || b == b'.'), "{}", text);
    }

    #[test]
    fn decimal_string_parses_to_exact_integer(
        int in "[0-9]{1,20}",
        frac in prop::option::of("[0-9]{1,6}"),
    ) {
        let text = match &frac {
            Some(f) => format!("{int}.{f}"),
            None => int.clone(),
        };
        let want = expected_units(&int, frac.as_deref().unwrap_or(""));
        let size = Size::parse(&text).map(Size::units);
        match u64::try_from(want) {
            Ok(w) => prop_assert_eq!(size, Ok(w), "Size {:?}", text),
            Err(_) => prop_assert_eq!(size, Err(polybook::DecimalError::Overflow), "Size {:?}", text),
        }
        let price = Price::parse(&text).map(Price::units);
        match u32::try_from(want) {
            Ok(w) => prop_assert_eq!(price, Ok(w), "Price {:?}", text),
            Err(_) => prop_assert_eq!(price, Err(polybook::DecimalError::Overflow), "Price {:?}", text),
        }
        // Non-canonical spellings (padding zeros) mean the same value.
        if let Ok(w) = u64::try_from(want) {
            let padded = format!("00{int}.{:0<6}", frac.as_deref().unwrap_or("0"));
            prop_assert_eq!(Size::parse(&padded).map(Size::units), Ok(w), "Size {:?}", padded);
        }
    }

    #[test]
    fn decimal_too_many_fraction_digits_is_rejected(int in "[0-9]{1,3}", frac in "[0-9]{7,12}") {
        let text = format!("{int}.{frac}");
        prop_assert_eq!(Size::parse(&text), Err(polybook::DecimalError::TooManyFractionDigits));
    }

    #[test]
    fn decimal_parse_of_any_string_never_panics_and_round_trips(s in "\\PC{0,40}|[0-9.]{0,40}") {
        if let Ok(v) = Size::parse(&s) {
            prop_assert_eq!(Size::parse(&v.to_string()), Ok(v));
        }
        if let Ok(v) = Price::parse(&s) {
            prop_assert_eq!(Price::parse(&v.to_string()), Ok(v));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Arbitrary and mutated frames never panic
// ---------------------------------------------------------------------------------------------

fn fuzz_config() -> StoreConfig {
    StoreConfig {
        auto_track: true,
        default_meta: TokenMeta {
            tick_size: Some(Price::from_units(10_000)),
            min_order_size: Some(Size::from_units(5_000_000)),
            neg_risk: Some(false),
        },
        ..StoreConfig::default()
    }
}

/// Feeds `text` to the decoder and to `store`, checking every book the sink sees and every
/// book left in the store.
fn feed(store: &mut BookStore, text: &str) -> Result<(), TestCaseError> {
    let mut events = 0usize;
    let _ = decode_frame(text, |_| events += 1);
    let mut broken: Option<String> = None;
    let mut sink = |u: &BookUpdate, b: &Book| {
        if let (None, Err(e)) = (&broken, b.check_invariants()) {
            broken = Some(format!("after {u:?}: {e}: bids {:?} asks {:?}", b.bids(), b.asks()));
        }
    };
    let report = store.apply_frame(text, &mut sink);
    prop_assert!(broken.is_none(), "{}", broken.unwrap_or_default());
    prop_assert!(usize::try_from(report.events).is_ok_and(|n| n <= events));
    // Every element of an array frame is either an event or a counted error.
    if let Some(FrameKind::Array(n)) = report.kind {
        prop_assert_eq!(report.events as usize + report.errors.len(), n);
    }
    for b in store.books() {
        prop_assert_eq!(b.check_invariants(), Ok(()), "book {} broken", b.token());
    }
    Ok(())
}

fn auto_store() -> BookStore {
    BookStore::new(StoreConfig { auto_track: true, ..StoreConfig::default() })
}

/// The opening dump applied: two live books, so mutated price changes reach the apply path.
fn seeded_store() -> BookStore {
    let mut s = BookStore::new(fuzz_config());
    let r = s.apply_frame(OPENING_DUMP, &mut polybook::store::NoSink);
    assert!(r.errors.is_empty(), "opening dump: {:?}", r.errors);
    s
}

/// Pieces of the venue's vocabulary; random sequences of them reach deeper than random bytes.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    " ",
    "\"",
    "null",
    "true",
    "false",
    "0",
    "1",
    "-1",
    "1e9",
    "\"0.5\"",
    "\"0\"",
    "\"1\"",
    "\"12\"",
    "\"0.5e0\"",
    "\"BUY\"",
    "\"SELL\"",
    "\"x\"",
    "\"\\u0031\"",
    "\"event_type\"",
    "\"book\"",
    "\"price_change\"",
    "\"last_trade_price\"",
    "\"tick_size_change\"",
    "\"best_bid_ask\"",
    "\"new_market\"",
    "\"market_resolved\"",
    "\"market\"",
    "\"asset_id\"",
    "\"assets_ids\"",
    "\"timestamp\"",
    "\"hash\"",
    "\"bids\"",
    "\"asks\"",
    "\"price\"",
    "\"size\"",
    "\"side\"",
    "\"price_changes\"",
    "\"changes\"",
    "\"best_bid\"",
    "\"best_ask\"",
    "\"tick_size\"",
    "\"old_tick_size\"",
    "\"new_tick_size\"",
    "\"min_order_size\"",
    "\"neg_risk\"",
    "PONG",
    "\"8c7f21df4ea57ce24228402e20a307358e55a0fd\"",
    "\"25245433628208476987364023432306599125597948324625578977436890641930158259698\"",
    "\"0x0936baff284871821b1ab5c64d33d67f117392dba34d461fe04360df893dfde4\"",
];

fn token_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..80).prop_map(|t| t.concat())
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Delete(usize),
    Insert(usize, u8),
    /// Copies a slice of the frame over another place (keeps it JSON-ish).
    Splice(usize, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![
        4 => prop::sample::select(&b"{}[]\":,.0123456789-eE \\nulBUYSELL"[..]),
        1 => any::<u8>(),
    ];
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, m)| Mutation::Flip(i, m)),
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), any::<usize>(), 1usize..40)
            .prop_map(|(a, b, n)| Mutation::Splice(a, b, n)),
    ]
}

fn mutate(seed: &str, muts: &[Mutation]) -> String {
    let mut bytes = seed.as_bytes().to_vec();
    for m in muts {
        let len = bytes.len().max(1);
        match *m {
            Mutation::Flip(i, mask) => {
                if let Some(b) = bytes.get_mut(i % len) {
                    *b ^= mask;
                }
            }
            Mutation::Delete(i) => {
                if i % len < bytes.len() {
                    bytes.remove(i % len);
                }
            }
            Mutation::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
            Mutation::Splice(from, to, n) => {
                let from = from % len;
                let end = (from + n).min(bytes.len());
                let piece: Vec<u8> = bytes.get(from..end).map(<[u8]>::to_vec).unwrap_or_default();
                let at = to % (bytes.len() + 1);
                bytes.splice(at..at, piece);
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn frame_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        feed(&mut auto_store(), &text)?;
    }

    #[test]
    fn frame_arbitrary_string_never_panics(s in "\\PC{0,200}") {
        feed(&mut auto_store(), &s)?;
    }

    #[test]
    fn frame_token_soup_never_panics(s in token_soup(), wrap in any::<bool>()) {
        let text = if wrap { format!("[{s}]") } else { s };
        let mut store = seeded_store();
        feed(&mut store, &text)?;
    }

    #[test]
    fn frame_mutated_price_change_never_panics(muts in prop::collection::vec(mutation(), 1..8)) {
        let text = mutate(PRICE_CHANGE, &muts);
        let mut store = seeded_store();
        feed(&mut store, &text)?;
        // And a second time, into whatever state the first left.
        feed(&mut store, &text)?;
    }

    #[test]
    fn frame_mutated_opening_dump_never_panics(muts in prop::collection::vec(mutation(), 1..8)) {
        let text = mutate(OPENING_DUMP, &muts);
        let mut store = BookStore::new(fuzz_config());
        feed(&mut store, &text)?;
        feed(&mut store, PRICE_CHANGE)?;
        feed(&mut auto_store(), &text)?;
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Store through frames against a model
// ---------------------------------------------------------------------------------------------

const TOKENS_MODEL: [(&str, &str); 3] = [("111", "0xm1"), ("222", "0xm1"), ("333", "0xm2")];
const LTP: &str = "0.500";
const FAILED_CHECKS_MAX: u16 = 3;

/// How an event carries its integrity witness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HashMode {
    /// The hash of the book after the change (what the venue sends).
    Good,
    /// A hash that matches nothing.
    Bad,
    Absent,
}

fn hash_mode() -> impl Strategy<Value = HashMode> {
    prop_oneof![5 => Just(HashMode::Good), 2 => Just(HashMode::Bad), 2 => Just(HashMode::Absent)]
}

#[derive(Debug, Clone)]
enum StoreEvent {
    Book {
        token: usize,
        bids: Vec<(u32, u64)>,
        asks: Vec<(u32, u64)>,
        sorted: bool,
        hash: HashMode,
    },
    PriceChange {
        entries: Vec<(usize, Side, u32, u64, HashMode, bool)>,
    },
}

/// Prices on the venue's 0.01 grid strictly inside (0, 1): "0" and "1" mean "no level" in bbo.
fn grid_price() -> impl Strategy<Value = u32> {
    (1u32..=99).prop_map(|t| t * 10_000)
}

fn grid_size() -> impl Strategy<Value = u64> {
    prop_oneof![1 => Just(0u64), 4 => (1u64..=100_000).prop_map(|c| c * 10_000)]
}

fn store_levels() -> impl Strategy<Value = Vec<(u32, u64)>> {
    prop::collection::vec((grid_price(), grid_size()), 0..10)
}

fn store_event() -> impl Strategy<Value = StoreEvent> {
    let token = 0..TOKENS_MODEL.len();
    let entry = (token.clone(), side(), grid_price(), grid_size(), hash_mode(), any::<bool>());
    prop_oneof![
        1 => (token, store_levels(), store_levels(), prop::bool::weighted(0.7), hash_mode())
            .prop_map(|(token, bids, asks, sorted, hash)| StoreEvent::Book {
                token, bids, asks, sorted, hash
            }),
        3 => prop::collection::vec(entry, 1..6)
            .prop_map(|entries| StoreEvent::PriceChange { entries }),
    ]
}

/// Decimal text, canonical or padded with zeros (the value must not change).
fn spell(units: u64, pad: bool) -> String {
    let canonical = expected_canonical(units);
    if !pad {
        return canonical;
    }
    match canonical.split_once('.') {
        Some((i, f)) => format!("{i}.{f:0<6}"),
        None => format!("{canonical}.0"),
    }
}

#[derive(Debug, Clone)]
struct TokenModel {
    bids: Ladder,
    asks: Ladder,
    status: BookStatus,
    failed: u16,
    /// A bad hash claimed in this frame, judged when the frame's run settles (unless a
    /// snapshot supersedes it first).
    pending_bad: bool,
}

impl TokenModel {
    /// Mirrors the store's status rules: a pass makes the book live, a failure makes it
    /// suspect, and `FAILED_CHECKS_MAX` failures in a row make it resyncing.
    fn check(&mut self, verdict: Option<bool>) {
        match verdict {
            Some(true) => {
                self.status = BookStatus::Live;
                self.failed = 0;
            }
            Some(false) => {
                self.failed = self.failed.saturating_add(1);
                if self.status != BookStatus::Resyncing {
                    self.status = if self.failed >= FAILED_CHECKS_MAX {
                        BookStatus::Resyncing
                    } else {
                        BookStatus::Suspect
                    };
                }
            }
            None => {}
        }
    }
}

fn model_meta() -> TokenMeta {
    TokenMeta {
        tick_size: Some(Price::from_units(10_000)),
        min_order_size: Some(Size::from_units(5_000_000)),
        neg_risk: Some(false),
    }
}

/// The hash the venue would send for the model's book of `token` at `ts`.
fn model_hash(token: usize, m: &TokenModel, ts: u64) -> Result<String, TestCaseError> {
    let (t, market) = TOKENS_MODEL[token];
    let mut b = Book::new(TokenId::new(t), MarketId::new(market), model_meta());
    b.set_hash_ltp(LtpText::new(LTP));
    let _ = b.replace(&wire_levels(&m.bids, Side::Buy), &wire_levels(&m.asks, Side::Sell), ts);
    let mut scratch = String::new();
    let h = book_hash(&b, ts, &mut scratch);
    prop_assert!(h.is_some(), "model hash not computable");
    Ok(h.map(|h| to_hex(&h)).unwrap_or_default())
}

fn hash_field(
    mode: HashMode,
    good: impl FnOnce() -> Result<String, TestCaseError>,
) -> Result<String, TestCaseError> {
    Ok(match mode {
        HashMode::Good => format!(",\"hash\":\"{}\"", good()?),
        HashMode::Bad => format!(",\"hash\":\"{}\"", "0".repeat(40)),
        HashMode::Absent => String::new(),
    })
}

fn render_levels(levels: &[Level], pad: bool) -> String {
    let parts: Vec<String> = levels
        .iter()
        .map(|l| {
            format!(
                "{{\"price\":\"{}\",\"size\":\"{}\"}}",
                spell(u64::from(l.price.units()), pad),
                spell(l.size.units(), pad)
            )
        })
        .collect();
    format!("[{}]", parts.join(","))
}

/// Renders `event` as the venue would send it at `ts`, applying it to `models` as it goes (the
/// hashes need the model after each change).
fn render_and_apply(
    event: &StoreEvent,
    ts: u64,
    pad: bool,
    models: &mut BTreeMap<usize, TokenModel>,
) -> Result<String, TestCaseError> {
    match event {
        StoreEvent::Book { token, bids, asks, sorted, hash } => {
            let (t, market) = TOKENS_MODEL[*token];
            let (mut sb, mut sa) = (to_levels(bids), to_levels(asks));
            if *sorted {
                sb = wire_levels(&ladder_of(&sb), Side::Buy);
                sa = wire_levels(&ladder_of(&sa), Side::Sell);
            }
            let m = models.entry(*token).or_insert(TokenModel {
                bids: Ladder::new(),
                asks: Ladder::new(),
                status: BookStatus::Seeding,
                failed: 0,
                pending_bad: false,
            });
            m.bids = ladder_of(&sb);
            m.asks = ladder_of(&sa);
            let h = hash_field(*hash, || model_hash(*token, m, ts))?;
            // A snapshot is live unless its own hash disagrees; it supersedes open claims.
            m.pending_bad = false;
            m.check(Some(*hash != HashMode::Bad));
            Ok(format!(
                "{{\"market\":\"{market}\",\"asset_id\":\"{t}\",\"timestamp\":\"{ts}\"{h},\"bids\":{},\"asks\":{},\"tick_size\":\"0.01\",\"event_type\":\"book\",\"last_trade_price\":\"{LTP}\"}}",
                render_levels(&sb, pad),
                render_levels(&sa, pad)
            ))
        }
        StoreEvent::PriceChange { entries } => {
            let mut parts = Vec::with_capacity(entries.len());
            for &(token, side, p, z, hash, with_bbo) in entries.iter() {
                let (t, _) = TOKENS_MODEL[token];
                let (price, size) = (Price::from_units(p), Size::from_units(z));
                let mut h = String::new();
                let mut bbo = String::new();
                if let Some(m) = models.get_mut(&token) {
                    match side {
                        Side::Buy => set_model(&mut m.bids, price, size),
                        Side::Sell => set_model(&mut m.asks, price, size),
                    };
                    h = hash_field(hash, || model_hash(token, m, ts))?;
                    if with_bbo {
                        let bid = m.bids.last_key_value().map_or(Price::ZERO, |(p, _)| *p);
                        let ask = m.asks.first_key_value().map_or(Price::ONE, |(p, _)| *p);
                        bbo = format!(",\"best_bid\":\"{bid}\",\"best_ask\":\"{ask}\"");
                    }
                    // Every entry is a claim: a good hash matches its own state at once; a
                    // bad one waits for the run to settle; the top of book is the witness
                    // only while no hash claim is open.
                    match hash {
                        HashMode::Good => m.check(Some(true)),
                        HashMode::Bad => m.pending_bad = true,
                        HashMode::Absent if with_bbo && !m.pending_bad => m.check(Some(true)),
                        HashMode::Absent => {}
                    }
                }
                parts.push(format!(
                    "{{\"asset_id\":\"{t}\",\"price\":\"{}\",\"size\":\"{}\",\"side\":\"{}\"{h}{bbo}}}",
                    spell(u64::from(p), pad),
                    spell(z, pad),
                    side.as_str()
                ));
            }
            let market = TOKENS_MODEL[entries.first().map_or(0, |e| e.0)].1;
            Ok(format!(
                "{{\"market\":\"{market}\",\"price_changes\":[{}],\"timestamp\":\"{ts}\",\"event_type\":\"price_change\"}}",
                parts.join(",")
            ))
        }
    }
}

fn check_store(
    store: &BookStore,
    models: &BTreeMap<usize, TokenModel>,
) -> Result<(), TestCaseError> {
    for (i, (t, _)) in TOKENS_MODEL.iter().enumerate() {
        match (store.get(t), models.get(&i)) {
            (None, None) => {}
            (Some(b), Some(m)) => {
                check_book(b, &m.bids, &m.asks)?;
                prop_assert_eq!(b.status(), m.status, "status of {}", t);
            }
            (b, m) => prop_assert!(
                false,
                "token {}: store has {:?}, model has {:?}",
                t,
                b.is_some(),
                m.is_some()
            ),
        }
    }
    prop_assert_eq!(store.len(), models.len());
    Ok(())
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn store_random_frames_match_btreemap_model(
        frames in prop::collection::vec(
            (prop::collection::vec(store_event(), 1..4), any::<bool>(), any::<bool>()),
            1..16,
        ),
        verify_hash in prop::bool::weighted(0.8),
    ) {
        let mut store = BookStore::new(StoreConfig {
            auto_track: true,
            verify_hash,
            failed_checks_max: FAILED_CHECKS_MAX,
            default_meta: model_meta(),
            // The model counts runs, not time.
            divergence_ms_min: u64::MAX,
            ..StoreConfig::default()
        });
        let mut models: BTreeMap<usize, TokenModel> = BTreeMap::new();
        let mut seen_tokens: BTreeSet<usize> = BTreeSet::new();
        for (n, (events, as_array, pad)) in frames.iter().enumerate() {
            let ts = 1_700_000_000_000 + n as u64;
            let mut objects = Vec::with_capacity(events.len());
            for e in events {
                if let StoreEvent::Book { token, .. } = e {
                    seen_tokens.insert(*token);
                }
                // Without verification, the model sees hashes as absent.
                let e = if verify_hash { e.clone() } else { strip_hashes(e) };
                objects.push(render_and_apply(&e, ts, *pad, &mut models)?);
            }
            let text = if *as_array || objects.len() > 1 {
                format!("[{}]", objects.join(","))
            } else {
                objects.concat()
            };
            let report = store.apply_frame(&text, &mut polybook::store::NoSink);
            prop_assert!(report.errors.is_empty(), "errors {:?} for {}", report.errors, text);
            prop_assert_eq!(report.events as usize, objects.len());
            // Quiet: the frame's run ends, then its unmatched claims are judged.
            let quiet = 10_000 * (n as u64 + 1);
            store.settle(quiet, &mut polybook::store::NoSink);
            store.settle(quiet + 5_000, &mut polybook::store::NoSink);
            for m in models.values_mut() {
                if std::mem::take(&mut m.pending_bad) {
                    m.check(Some(false));
                }
            }
            check_store(&store, &models)?;
        }
        prop_assert_eq!(store.counters().errors.total(), 0);
        prop_assert_eq!(models.keys().copied().collect::<BTreeSet<_>>(), seen_tokens);
    }
}

/// With `verify_hash` off the store ignores hashes; mark them absent in the model (the frame
/// then carries none, which is equivalent).
fn strip_hashes(e: &StoreEvent) -> StoreEvent {
    match e {
        StoreEvent::Book { token, bids, asks, sorted, .. } => StoreEvent::Book {
            token: *token,
            bids: bids.clone(),
            asks: asks.clone(),
            sorted: *sorted,
            hash: HashMode::Absent,
        },
        StoreEvent::PriceChange { entries } => StoreEvent::PriceChange {
            entries: entries
                .iter()
                .map(|&(t, s, p, z, _, bbo)| (t, s, p, z, HashMode::Absent, bbo))
                .collect(),
        },
    }
}

#[test]
fn store_model_spelling_helper_pads_without_changing_value() {
    for (units, pad) in [(500_000u64, true), (2_226_000_000, true), (0, true), (1_234_567, false)] {
        let text = spell(units, pad);
        assert_eq!(Size::parse(&text).map(Size::units), Ok(units), "{text}");
    }
}
