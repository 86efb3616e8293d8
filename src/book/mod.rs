//! One token's L2 book: two sorted ladders with the best price at the end (the wire order), the
//! token's trading parameters, its last trade and its integrity status.

pub mod hash;
mod level;
mod rendered;

pub use level::{check_ladder, InvariantError, Level, Side};

use crate::decimal::{DecimalText, Price, Size};
use crate::ids::{MarketId, TokenId};

/// How far a book can be trusted. Every API answer carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BookStatus {
    /// Tracked, no snapshot yet.
    Seeding,
    /// Seeded, and the last integrity check (if any) passed.
    Live,
    /// The last hash or top-of-book check failed; may clear at the next check.
    Suspect,
    /// Checks kept failing (or the connection was lost): waiting for a fresh snapshot.
    Resyncing,
    /// The market settled; the book no longer changes.
    Resolved,
    /// Live, but its connection has had no data for `stale_after`: a silent freeze or a quiet
    /// feed. Back to Live at the next change, snapshot, or data on the connection.
    Stale,
}

impl BookStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BookStatus::Seeding => "seeding",
            BookStatus::Live => "live",
            BookStatus::Suspect => "suspect",
            BookStatus::Resyncing => "resyncing",
            BookStatus::Resolved => "resolved",
            BookStatus::Stale => "stale",
        }
    }
}

/// The last trade announced by `last_trade_price` (side is the taker's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LastTrade {
    pub price: Price,
    pub size: Size,
    pub side: Side,
    #[serde(skip)]
    pub timestamp_ms: u64,
}

/// `last_trade_price` exactly as the venue's hash spells it ("0.500"), kept without allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LtpText {
    buf: [u8; 15],
    len: u8,
}

impl LtpText {
    /// A market with no trade yet: the venue writes and hashes `"last_trade_price":""`.
    pub const EMPTY: LtpText = LtpText { buf: [0; 15], len: 0 };

    /// Keeps `s` if it is a valid price string of at most 15 bytes, or empty (no trade yet).
    pub fn new(s: &str) -> Option<LtpText> {
        if s.len() > 15 || (!s.is_empty() && Price::parse(s).is_err()) {
            return None;
        }
        let mut buf = [0u8; 15];
        buf[..s.len()].copy_from_slice(s.as_bytes());
        Some(LtpText { buf, len: s.len() as u8 })
    }

    /// The venue writes trade prices in books with at least three decimals.
    pub fn from_price(p: Price) -> LtpText {
        let t = DecimalText::with_min_frac_digits(u64::from(p.units()), 3);
        LtpText::new(t.as_str()).unwrap_or(LtpText { buf: [b'0'; 15], len: 1 })
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("0")
    }
}

impl std::fmt::Debug for LtpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LtpText({})", self.as_str())
    }
}

/// Trading parameters of a token that the stream does not carry but the hash needs
/// (from Gamma or REST `/book`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenMeta {
    pub tick_size: Option<Price>,
    pub min_order_size: Option<Size>,
    pub neg_risk: Option<bool>,
}

/// A snapshot whose levels were out of order or repeated; the book repaired them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("snapshot levels were not strictly sorted in wire order; sorted and de-duplicated")]
pub struct UnsortedSnapshot;

/// One token's book.
#[derive(Debug, Clone)]
pub struct Book {
    token: TokenId,
    market: MarketId,
    /// Ascending by price: best bid last.
    bids: Vec<Level>,
    /// Descending by price: best ask last.
    asks: Vec<Level>,
    meta: TokenMeta,
    last_trade: Option<LastTrade>,
    hash_ltp: Option<LtpText>,
    timestamp_ms: u64,
    venue_hash: Option<[u8; 20]>,
    status: BookStatus,
    failed_checks: u16,
    /// The last two level prices changed: candidates for an unannounced trade price (see
    /// `store`), since the venue hashes a trade before it announces it.
    recent_prices: [Price; 2],
    /// The connection whose frames change this book (0: none), and the one that takes over
    /// when its next `book` arrives (make-before-break handoff). See `store::FeedId`.
    feed: u32,
    next_feed: u32,
    /// The owner's clock (unix ms) when a change was last applied (0: never).
    received_ms: u64,
    /// The last hash check could be computed and passed.
    verified: bool,
    /// Open integrity claims (see `checks`); empty costs no allocation.
    checks: crate::checks::BookChecks,
    /// The ladders as the venue hash renders them, kept in step by `replace` and `set_level`
    /// (None: not kept; `book_hash` renders every level instead). See `keep_rendered`.
    rendered: Option<Box<rendered::Rendered>>,
    /// (start of the current second, store clock; level changes in it): see `note_change`.
    heat: (u64, u32),
}

impl Book {
    pub fn new(token: TokenId, market: MarketId, meta: TokenMeta) -> Book {
        Book {
            token,
            market,
            bids: Vec::new(),
            asks: Vec::new(),
            meta,
            last_trade: None,
            hash_ltp: None,
            timestamp_ms: 0,
            venue_hash: None,
            status: BookStatus::Seeding,
            failed_checks: 0,
            recent_prices: [Price::ZERO; 2],
            feed: 0,
            next_feed: 0,
            received_ms: 0,
            verified: false,
            checks: crate::checks::BookChecks::default(),
            rendered: None,
            heat: (0, 0),
        }
    }

    /// Counts a level change at `now_ms` (store clock). At the end of each second of changes
    /// the book decides: `hot` or more changes in it, keep the levels rendered for the hash;
    /// fewer, stop. Only busy books pay the memory (~34 bytes a level), and they are where the
    /// rendering cost was. `hot == 0`: never keep.
    pub fn note_change(&mut self, now_ms: u64, hot: u32) {
        self.heat.1 = self.heat.1.saturating_add(1);
        if now_ms.saturating_sub(self.heat.0) >= 1_000 {
            let keep = hot > 0 && self.heat.1 >= hot;
            if keep != self.rendered.is_some() {
                self.keep_rendered(keep);
            }
            self.heat = (now_ms, 0);
        }
    }

    pub fn keeps_rendered(&self) -> bool {
        self.rendered.is_some()
    }

    /// Keeps (or stops keeping) the ladders rendered as the hash needs them, at ~34 bytes per
    /// level of memory; `note_change` decides it for the store.
    pub fn keep_rendered(&mut self, on: bool) {
        self.rendered = on.then(|| {
            Box::new(rendered::Rendered {
                bids: rendered::RenderedSide::build(&self.bids),
                asks: rendered::RenderedSide::build(&self.asks),
                one: String::with_capacity(48),
            })
        });
    }

    /// The rendered levels of each side (bids, asks), when kept.
    pub(crate) fn rendered_levels(&self) -> Option<(&str, &str)> {
        let r = self.rendered.as_deref()?;
        Some((r.bids.as_str(), r.asks.as_str()))
    }

    /// The open integrity claims, taken out so the book can be read while they are judged;
    /// give them back with [`Book::put_checks`].
    pub fn take_checks(&mut self) -> crate::checks::BookChecks {
        std::mem::take(&mut self.checks)
    }
    pub fn put_checks(&mut self, checks: crate::checks::BookChecks) {
        self.checks = checks;
    }
    pub fn checks(&self) -> &crate::checks::BookChecks {
        &self.checks
    }

    /// The owner's clock (unix ms) when a change was last applied to this book (0: never).
    pub fn received_ms(&self) -> u64 {
        self.received_ms
    }
    pub fn set_received_ms(&mut self, ms: u64) {
        self.received_ms = ms;
    }
    /// True when the last hash check could be computed and matched; false when an input is
    /// missing (min_order_size, neg_risk, tick, last trade), it failed, or none ran yet.
    pub fn verified(&self) -> bool {
        self.verified
    }
    pub fn set_verified(&mut self, verified: bool) {
        self.verified = verified;
    }

    pub fn token(&self) -> &TokenId {
        &self.token
    }
    pub fn market(&self) -> &MarketId {
        &self.market
    }
    pub fn status(&self) -> BookStatus {
        self.status
    }
    pub fn meta(&self) -> &TokenMeta {
        &self.meta
    }
    pub fn tick_size(&self) -> Option<Price> {
        self.meta.tick_size
    }
    pub fn last_trade(&self) -> Option<&LastTrade> {
        self.last_trade.as_ref()
    }
    pub fn hash_ltp(&self) -> Option<LtpText> {
        self.hash_ltp
    }
    /// Venue time (ms) of the last event applied.
    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }
    /// The venue's hash carried by the last `book` or `price_change` entry applied.
    pub fn venue_hash(&self) -> Option<[u8; 20]> {
        self.venue_hash
    }
    /// The last two distinct level prices set by `set_level` (zero if none).
    pub fn recent_prices(&self) -> [Price; 2] {
        self.recent_prices
    }
    /// The connection that currently feeds this book (0: none).
    pub fn feed(&self) -> u32 {
        self.feed
    }
    /// The connection that takes over at its next snapshot (0: none).
    pub fn next_feed(&self) -> u32 {
        self.next_feed
    }
    pub fn set_feeds(&mut self, feed: u32, next_feed: u32) {
        self.feed = feed;
        self.next_feed = next_feed;
    }
    /// Consecutive failed integrity checks.
    pub fn failed_checks(&self) -> u16 {
        self.failed_checks
    }
    /// Bids in wire order (ascending; best last).
    pub fn bids(&self) -> &[Level] {
        &self.bids
    }
    /// Asks in wire order (descending; best last).
    pub fn asks(&self) -> &[Level] {
        &self.asks
    }
    pub fn levels(&self, side: Side) -> &[Level] {
        match side {
            Side::Buy => &self.bids,
            Side::Sell => &self.asks,
        }
    }

    /// Best `n` levels of a side, best first.
    pub fn depth(&self, side: Side, n: usize) -> impl Iterator<Item = &Level> {
        self.levels(side).iter().rev().take(n)
    }

    pub fn best_bid(&self) -> Option<Level> {
        self.bids.last().copied()
    }
    pub fn best_ask(&self) -> Option<Level> {
        self.asks.last().copied()
    }

    /// Best ask minus best bid; None unless both sides exist and are not crossed.
    pub fn spread(&self) -> Option<Price> {
        let (b, a) = (self.best_bid()?, self.best_ask()?);
        a.price.units().checked_sub(b.price.units()).map(Price::from_units)
    }

    /// Midpoint, rounded down to 1e-6 (exact for every venue tick size).
    pub fn midpoint(&self) -> Option<Price> {
        let (b, a) = (self.best_bid()?, self.best_ask()?);
        let sum = u64::from(b.price.units()) + u64::from(a.price.units());
        u32::try_from(sum / 2).ok().map(Price::from_units)
    }

    /// Sum of sizes on a side (saturating).
    pub fn total_size(&self, side: Side) -> Size {
        let units =
            self.levels(side).iter().fold(0u64, |acc, l| acc.saturating_add(l.size.units()));
        Size::from_units(units)
    }

    /// True if the best bid is at or above the best ask.
    pub fn is_crossed(&self) -> bool {
        matches!((self.best_bid(), self.best_ask()), (Some(b), Some(a)) if b.price >= a.price)
    }

    /// Replaces both sides with a snapshot given in wire order. Out-of-order or repeated levels
    /// are repaired (sorted, last one wins, zero sizes dropped) and reported.
    pub fn replace(
        &mut self,
        bids: &[Level],
        asks: &[Level],
        timestamp_ms: u64,
    ) -> Result<(), UnsortedSnapshot> {
        copy_side(&mut self.bids, bids);
        copy_side(&mut self.asks, asks);
        self.timestamp_ms = timestamp_ms;
        let ok_b = check_ladder(&self.bids, Side::Buy).is_ok();
        let ok_a = check_ladder(&self.asks, Side::Sell).is_ok();
        if !ok_b {
            repair(&mut self.bids, Side::Buy);
        }
        if !ok_a {
            repair(&mut self.asks, Side::Sell);
        }
        if self.rendered.is_some() {
            self.keep_rendered(true);
        }
        self.debug_check_invariants();
        if ok_b && ok_a {
            Ok(())
        } else {
            Err(UnsortedSnapshot)
        }
    }

    /// Every invariant a book keeps whatever was applied to it: both ladders in strict wire
    /// order with no zero size. A failure is a bug here, never bad input (input is repaired).
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        check_ladder(&self.bids, Side::Buy)?;
        check_ladder(&self.asks, Side::Sell)
    }

    /// The ladders change only in `replace` and `set_level`, so asserting there covers every
    /// apply path of the store (and any other caller) in debug builds, i.e. every test.
    fn debug_check_invariants(&self) {
        debug_assert_eq!(self.check_invariants(), Ok(()), "book {}", self.token);
        debug_assert!(
            self.rendered
                .as_deref()
                .is_none_or(|r| r.bids == rendered::RenderedSide::build(&self.bids)
                    && r.asks == rendered::RenderedSide::build(&self.asks)),
            "book {}: rendered levels out of step with the ladders",
            self.token
        );
    }

    /// Sets the aggregate size at `price` on `side`; zero removes the level. Returns the old size.
    pub fn set_level(&mut self, side: Side, price: Price, size: Size) -> Size {
        if self.recent_prices[1] != price {
            self.recent_prices = [self.recent_prices[1], price];
        }
        let (ladder, text) = match (side, self.rendered.as_deref_mut()) {
            (Side::Buy, r) => (&mut self.bids, r.map(|r| (&mut r.bids, &mut r.one))),
            (Side::Sell, r) => (&mut self.asks, r.map(|r| (&mut r.asks, &mut r.one))),
        };
        let old = match find(ladder, side, price) {
            Ok(i) => {
                let old = ladder[i].size;
                if size.is_zero() {
                    ladder.remove(i);
                    if let Some((t, _)) = text {
                        t.remove(i);
                    }
                } else {
                    ladder[i].size = size;
                    if let Some((t, one)) = text {
                        t.modify(i, &ladder[i], one);
                    }
                }
                old
            }
            Err(i) => {
                if !size.is_zero() {
                    ladder.insert(i, Level::new(price, size));
                    if let Some((t, one)) = text {
                        t.insert(i, &ladder[i], one);
                    }
                }
                Size::ZERO
            }
        };
        self.debug_check_invariants();
        old
    }

    pub fn set_timestamp(&mut self, timestamp_ms: u64) {
        self.timestamp_ms = timestamp_ms;
    }
    pub fn set_venue_hash(&mut self, hash: Option<[u8; 20]>) {
        self.venue_hash = hash;
    }
    pub fn set_tick_size(&mut self, tick: Price) {
        self.meta.tick_size = Some(tick);
    }
    /// Merges known parameters; unknown (`None`) ones keep their current value.
    pub fn merge_meta(&mut self, meta: TokenMeta) {
        self.meta.tick_size = meta.tick_size.or(self.meta.tick_size);
        self.meta.min_order_size = meta.min_order_size.or(self.meta.min_order_size);
        self.meta.neg_risk = meta.neg_risk.or(self.meta.neg_risk);
    }
    pub fn set_last_trade(&mut self, trade: LastTrade) {
        self.last_trade = Some(trade);
    }
    pub fn set_hash_ltp(&mut self, ltp: Option<LtpText>) {
        self.hash_ltp = ltp;
    }
    pub fn set_status(&mut self, status: BookStatus) {
        self.status = status;
        if status == BookStatus::Live {
            self.failed_checks = 0;
        }
    }
    /// Records a failed check and returns the consecutive count.
    pub fn note_failed_check(&mut self) -> u16 {
        self.failed_checks = self.failed_checks.saturating_add(1);
        self.failed_checks
    }

    /// Bytes this book occupies: the struct plus its ladders' allocated capacity.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Book>()
            + (self.bids.capacity() + self.asks.capacity()) * std::mem::size_of::<Level>()
            + self.rendered.as_deref().map_or(0, |r| {
                std::mem::size_of::<rendered::Rendered>()
                    + r.bids.capacity_bytes()
                    + r.asks.capacity_bytes()
                    + r.one.capacity()
            })
    }
}

fn copy_side(dst: &mut Vec<Level>, src: &[Level]) {
    dst.clear();
    // Exact capacity: a fresh book should not carry doubling slack.
    if dst.capacity() < src.len() || dst.capacity() > src.len().saturating_mul(2) + 8 {
        *dst = Vec::with_capacity(src.len());
    }
    dst.extend_from_slice(src);
}

fn repair(levels: &mut Vec<Level>, side: Side) {
    // Stable sort keeps wire order among equal prices, so "last one wins" holds after dedup.
    levels.sort_by(|a, b| match side {
        Side::Buy => a.price.cmp(&b.price),
        Side::Sell => b.price.cmp(&a.price),
    });
    let mut out: Vec<Level> = Vec::with_capacity(levels.len());
    for l in levels.iter() {
        match out.last_mut() {
            Some(prev) if prev.price == l.price => prev.size = l.size,
            _ => out.push(*l),
        }
    }
    out.retain(|l| !l.size.is_zero());
    *levels = out;
}

/// Binary search in wire order. Updates cluster at the top of book, i.e. the end.
fn find(ladder: &[Level], side: Side, price: Price) -> Result<usize, usize> {
    match side {
        Side::Buy => ladder.binary_search_by(|l| l.price.cmp(&price)),
        Side::Sell => ladder.binary_search_by(|l| price.cmp(&l.price)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Price {
        Price::parse(s).unwrap_or_default()
    }
    fn z(s: &str) -> Size {
        Size::parse(s).unwrap_or_default()
    }
    fn book() -> Book {
        Book::new(TokenId::new("1"), MarketId::new("0xab"), TokenMeta::default())
    }

    #[test]
    fn set_level_keeps_wire_order_and_best_at_end() {
        let mut b = book();
        b.set_level(Side::Buy, p("0.4"), z("10"));
        b.set_level(Side::Buy, p("0.45"), z("5"));
        b.set_level(Side::Buy, p("0.3"), z("7"));
        b.set_level(Side::Sell, p("0.6"), z("1"));
        b.set_level(Side::Sell, p("0.55"), z("2"));
        b.set_level(Side::Sell, p("0.7"), z("3"));
        let bid_prices: Vec<String> = b.bids().iter().map(|l| l.price.to_string()).collect();
        let ask_prices: Vec<String> = b.asks().iter().map(|l| l.price.to_string()).collect();
        assert_eq!(bid_prices, ["0.3", "0.4", "0.45"]);
        assert_eq!(ask_prices, ["0.7", "0.6", "0.55"]);
        assert_eq!(b.best_bid().map(|l| l.price), Some(p("0.45")));
        assert_eq!(b.best_ask().map(|l| l.price), Some(p("0.55")));
        assert_eq!(b.spread(), Some(p("0.1")));
        assert_eq!(b.midpoint(), Some(p("0.5")));
        assert_eq!(b.total_size(Side::Buy), z("22"));
        let top2: Vec<Price> = b.depth(Side::Sell, 2).map(|l| l.price).collect();
        assert_eq!(top2, [p("0.55"), p("0.6")]);
    }

    #[test]
    fn set_level_zero_removes_and_returns_old() {
        let mut b = book();
        assert_eq!(b.set_level(Side::Buy, p("0.4"), z("10")), Size::ZERO);
        assert_eq!(b.set_level(Side::Buy, p("0.4"), z("12")), z("10"));
        assert_eq!(b.set_level(Side::Buy, p("0.4"), Size::ZERO), z("12"));
        assert!(b.bids().is_empty());
        assert_eq!(b.set_level(Side::Buy, p("0.4"), Size::ZERO), Size::ZERO);
        assert!(b.bids().is_empty());
    }

    #[test]
    fn replace_repairs_unsorted_snapshot() {
        let mut b = book();
        let bids = [Level::new(p("0.5"), z("1")), Level::new(p("0.4"), z("2"))];
        assert_eq!(b.replace(&bids, &[], 7), Err(UnsortedSnapshot));
        assert_eq!(b.check_invariants(), Ok(()));
        assert_eq!(b.best_bid(), Some(Level::new(p("0.5"), z("1"))));
        assert_eq!(b.bids().len(), 2);
        assert_eq!(b.timestamp_ms(), 7);
    }

    #[test]
    fn book_with_20_levels_per_side_fits_in_2_kib() {
        let mut b = book();
        let bids: Vec<Level> = (1..=20).map(|i| Level::new(Price(i * 10_000), z("100"))).collect();
        let asks: Vec<Level> =
            (1..=20).rev().map(|i| Level::new(Price(500_000 + i * 10_000), z("100"))).collect();
        assert_eq!(b.replace(&bids, &asks, 1), Ok(()));
        eprintln!("20-level-per-side book: {} bytes", b.memory_bytes());
        assert!(b.memory_bytes() < 2048, "book uses {} bytes", b.memory_bytes());
        // And after churn through set_level, which may grow capacity.
        for i in 0..20 {
            b.set_level(Side::Buy, Price(5_000 + i * 10_000), z("1"));
            b.set_level(Side::Buy, Price(5_000 + i * 10_000), Size::ZERO);
        }
        assert!(b.memory_bytes() < 2048, "book uses {} bytes after churn", b.memory_bytes());
    }

    #[test]
    fn crossed_book_is_detected_not_panicking() {
        let mut b = book();
        b.set_level(Side::Buy, p("0.6"), z("1"));
        b.set_level(Side::Sell, p("0.5"), z("1"));
        assert!(b.is_crossed());
        assert_eq!(b.spread(), None);
    }

    #[test]
    fn ltp_text_keeps_venue_spelling() {
        assert_eq!(LtpText::new("0.500").map(|t| t.as_str().to_owned()), Some("0.500".into()));
        assert_eq!(LtpText::from_price(p("0.49")).as_str(), "0.490");
        assert_eq!(LtpText::from_price(p("0.0645")).as_str(), "0.0645");
        assert!(LtpText::new("abc").is_none());
        assert_eq!(LtpText::new(""), Some(LtpText::EMPTY));
        assert_eq!(LtpText::EMPTY.as_str(), "");
    }

    proptest::proptest! {
        /// A book that keeps its levels rendered hashes exactly as one that renders them for
        /// each hash, whatever sequence of snapshots and level changes it went through.
        #[test]
        fn kept_rendering_hashes_like_a_fresh_one(
            ops in proptest::collection::vec((0u8..8, 1u32..40, 0u64..4), 1..120)
        ) {
            let meta = TokenMeta {
                tick_size: Some(p("0.01")),
                min_order_size: Some(z("5")),
                neg_risk: Some(false),
            };
            let mut kept = Book::new(TokenId::new("7"), MarketId::new("0xab"), meta);
            kept.set_hash_ltp(LtpText::new("0.5"));
            kept.keep_rendered(true);
            let (mut s1, mut s2) = (String::new(), String::new());
            for (ts, (op, tick, size)) in ops.into_iter().enumerate() {
                let price = Price(tick * 10_000 + if op == 7 { 5_000 } else { 0 });
                let size = Size(size * 1_250_000);
                match op {
                    0 => {
                        let bids: Vec<Level> = (1..=tick % 7).map(|i| Level::new(Price(i * 10_000), z("3"))).collect();
                        let asks: Vec<Level> = (1..=tick % 5).rev().map(|i| Level::new(Price(500_000 + i * 10_000), size)).collect();
                        let _ = kept.replace(&bids, &asks, ts as u64);
                    }
                    1..=3 => { kept.set_level(Side::Buy, price, size); }
                    _ => { kept.set_level(Side::Sell, price, size); }
                }
                let mut fresh = kept.clone();
                fresh.keep_rendered(false);
                let a = hash::book_hash(&kept, ts as u64, &mut s1);
                let b = hash::book_hash(&fresh, ts as u64, &mut s2);
                proptest::prop_assert!(a.is_some());
                proptest::prop_assert_eq!(a, b);
            }
        }
    }
}
