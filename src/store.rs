//! One shard's books: token -> book. Applies decoded events, runs the integrity checks,
//! reports each change to a sink (the library's handlers), and counts everything.
//!
//! The store never reads a clock and never does I/O; the shard that owns it does both.

use hashbrown::HashMap;

use crate::book::hash::{book_hash, parse_hex};
use crate::book::Side;
use crate::book::{Book, BookStatus, LastTrade, LtpText, TokenMeta};
use crate::checks::{BookChecks, CheckCounts, CheckWindow, Tally};
use crate::decimal::{Price, Size};
use crate::ids::{MarketId, TokenId};
use crate::protocol::decode_frame;
use crate::protocol::event::{
    BestBidAskEvent, BookEvent, DecodeError, DecodeErrorKind, FrameKind, LastTradePriceEvent,
    MarketEvent, MarketResolvedEvent, NewMarketEvent, PriceChangeEvent, PriceChangeSchema,
    TickSizeChangeEvent,
};

/// The connection a frame came from. Each book has exactly one feed whose frames change it;
/// frames from another connection are ignored and counted. A book's `next_feed` takes over
/// when it delivers a `book` snapshot, which is what makes recycling lossless: the old
/// connection keeps applying until the new one has a complete book. `FeedId::ANY` bypasses the
/// check (replay, tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FeedId(pub u32);

impl FeedId {
    pub const ANY: FeedId = FeedId(0);
}

/// How the store treats events.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Recompute the venue hash after each `book` and the last entry per token of each
    /// `price_change`. Off saves ~1 µs per check; the top-of-book check stays on.
    pub verify_hash: bool,
    /// Create a book for an unknown token when its `book` arrives (replay). The engine tracks
    /// tokens explicitly and leaves this off, so stray tokens are counted, not kept.
    pub auto_track: bool,
    /// Consecutive failed checks after which a Suspect book is marked Resyncing.
    pub failed_checks_max: u16,
    /// Parameters assumed for tokens whose own are unknown (replay of bare captures).
    pub default_meta: TokenMeta,
    /// Most `new_market` hints kept until drained; more are counted and dropped.
    pub new_market_hints_max: usize,
    /// How long a hash or BBO claim may wait for a matching state (bursts, see `checks`).
    pub window: CheckWindow,
    /// A Suspect book that stays divergent this long (store clock) is marked Resyncing even
    /// if it goes quiet; `failed_checks_max` divergent runs in a row do it sooner.
    pub divergence_ms_min: u64,
    /// A checked book with this many level changes in a second keeps its levels rendered for
    /// the hash (CPU for memory, see `Book::note_change`); 0: never.
    pub render_hot_changes_per_s: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            verify_hash: true,
            auto_track: false,
            failed_checks_max: 3,
            default_meta: TokenMeta::default(),
            new_market_hints_max: 1024,
            window: CheckWindow::default(),
            divergence_ms_min: 1_000,
            render_hot_changes_per_s: 20,
        }
    }
}

/// What changed in a book; passed with the book to the sink after the change is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BookUpdate {
    /// A `book` (or REST) snapshot replaced the book.
    Snapshot,
    /// One level set to `size` (zero: removed); `old` was its size before.
    Level {
        side: Side,
        price: Price,
        size: Size,
        old: Size,
    },
    TickSize {
        old: Option<Price>,
        new: Price,
    },
    LastTrade(LastTrade),
    /// The book's status moved.
    Status {
        from: BookStatus,
        to: BookStatus,
    },
}

/// Receives every change, on the shard that owns the book, right after it is applied.
pub trait UpdateSink {
    fn on_update(&mut self, update: &BookUpdate, book: &Book);
}

impl<F: FnMut(&BookUpdate, &Book)> UpdateSink for F {
    fn on_update(&mut self, update: &BookUpdate, book: &Book) {
        self(update, book)
    }
}

/// A sink that ignores everything.
pub struct NoSink;
impl UpdateSink for NoSink {
    fn on_update(&mut self, _: &BookUpdate, _: &Book) {}
}

/// Counters owned by the store; gathered by whoever scrapes the shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreCounters {
    pub frames: u64,
    pub frames_pong: u64,
    pub frames_array: u64,
    pub events_book: u64,
    pub events_price_change: u64,
    pub price_change_entries: u64,
    pub events_tick_size_change: u64,
    pub events_last_trade_price: u64,
    pub events_best_bid_ask: u64,
    pub events_new_market: u64,
    pub events_market_resolved: u64,
    pub events_unknown_type: u64,
    pub events_legacy_schema: u64,
    pub unknown_fields: u64,
    pub errors: DecodeErrorCounts,
    /// Events or entries for tokens this store does not track (not owned by this shard).
    pub untracked: u64,
    /// `price_change` entries for tracked tokens before their first snapshot.
    pub entries_before_seed: u64,
    /// Events for books already resolved.
    pub after_resolved: u64,
    /// Levels a book still had when its `market_resolved` arrived, cleared then: the venue
    /// cancels every order of a resolved market and sends each removal first, so these are
    /// removals that never reached us (a skipped frame).
    pub resolved_levels_cleared: u64,
    pub snapshots_repaired: u64,
    pub hash_checks: u64,
    pub hash_mismatches: u64,
    /// Mismatches resolved by finding the unannounced trade price the venue had hashed.
    pub hash_ltp_learned: u64,
    /// Checks skipped because min_order_size, neg_risk, tick or last trade price is unknown.
    pub hash_unverifiable: u64,
    pub bbo_checks: u64,
    pub bbo_mismatches: u64,
    /// `best_bid_ask` events that disagreed with the book (they often lead the change).
    pub best_bid_ask_disagreements: u64,
    pub books_marked_suspect: u64,
    pub books_marked_resyncing: u64,
    pub new_market_hints_dropped: u64,
    /// Events for a token from a connection that is not (yet) its feed.
    pub not_feed: u64,
    /// Feed handoffs completed (a new connection's snapshot took a book over).
    pub feed_handoffs: u64,
    /// Hash verdicts per entry, by kind (`hash_checks`/`hash_mismatches` are their judged and
    /// divergent totals).
    pub hash: CheckCounts,
    /// Best bid/ask verdicts per entry, by kind.
    pub bbo: CheckCounts,
}

/// Decode errors by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DecodeErrorCounts {
    pub empty: u64,
    pub not_json: u64,
    pub malformed: u64,
    pub wrong_type: u64,
    pub missing_field: u64,
    pub bad_number: u64,
    pub missing_event_type: u64,
    pub unknown_schema: u64,
}

impl DecodeErrorCounts {
    pub fn add(&mut self, kind: DecodeErrorKind) {
        let c = match kind {
            DecodeErrorKind::Empty => &mut self.empty,
            DecodeErrorKind::NotJson => &mut self.not_json,
            DecodeErrorKind::Malformed => &mut self.malformed,
            DecodeErrorKind::WrongType => &mut self.wrong_type,
            DecodeErrorKind::MissingField => &mut self.missing_field,
            DecodeErrorKind::BadNumber => &mut self.bad_number,
            DecodeErrorKind::MissingEventType => &mut self.missing_event_type,
            DecodeErrorKind::UnknownSchema => &mut self.unknown_schema,
        };
        *c += 1;
    }

    /// Each kind's wire name with its count.
    pub fn by_kind(&self) -> [(&'static str, u64); 8] {
        DecodeErrorKind::ALL.map(|k| {
            let n = match k {
                DecodeErrorKind::Empty => self.empty,
                DecodeErrorKind::NotJson => self.not_json,
                DecodeErrorKind::Malformed => self.malformed,
                DecodeErrorKind::WrongType => self.wrong_type,
                DecodeErrorKind::MissingField => self.missing_field,
                DecodeErrorKind::BadNumber => self.bad_number,
                DecodeErrorKind::MissingEventType => self.missing_event_type,
                DecodeErrorKind::UnknownSchema => self.unknown_schema,
            };
            (k.as_str(), n)
        })
    }

    pub fn total(&self) -> u64 {
        self.by_kind().iter().map(|(_, n)| n).sum()
    }
}

/// The result of applying one frame.
#[derive(Debug, Default)]
pub struct FrameReport {
    /// None if the frame could not be split into events.
    pub kind: Option<FrameKind>,
    pub events: u32,
    /// Frame-level and per-event errors (empty when all went well; no allocation then).
    pub errors: Vec<DecodeError>,
}

/// A market announced by `new_market`, for discovery to pick up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMarketHint {
    pub market: MarketId,
    pub tokens: Vec<TokenId>,
}

/// One shard's books.
#[derive(Debug)]
pub struct BookStore {
    config: StoreConfig,
    books: HashMap<TokenId, Book>,
    markets: HashMap<MarketId, Vec<TokenId>>,
    counters: StoreCounters,
    hints: Vec<NewMarketHint>,
    resolved: Vec<MarketId>,
    scratch: String,
    /// The owner's clock (unix ms), given by the shell before each frame: the store reads no
    /// clock. Stamped on each book it changes.
    now_ms: u64,
    /// Books with open claims, for [`BookStore::settle`].
    unsettled: hashbrown::HashSet<TokenId>,
    ended: Vec<[u8; 20]>,
}

impl BookStore {
    pub fn new(config: StoreConfig) -> BookStore {
        BookStore {
            config,
            books: HashMap::new(),
            markets: HashMap::new(),
            counters: StoreCounters::default(),
            hints: Vec::new(),
            resolved: Vec::new(),
            scratch: String::with_capacity(4096),
            now_ms: 0,
            unsettled: hashbrown::HashSet::new(),
            ended: Vec::new(),
        }
    }

    /// Lets time pass (store clock, unix ms): runs quiet for `run_quiet_ms` end, claims
    /// unmatched for `window_ms` after their run are judged divergent. The owner calls it on a
    /// timer; replay calls it per line and with `u64::MAX` at the end.
    pub fn settle(&mut self, now_ms: u64, sink: &mut impl UpdateSink) {
        if self.unsettled.is_empty() {
            return;
        }
        let tokens: Vec<TokenId> = self.unsettled.drain().collect();
        let w = self.config.window;
        for token in tokens {
            let Some(book) = self.books.get_mut(token.as_str()) else { continue };
            let mut ck = book.take_checks();
            let (mut th, mut tb) = (Tally::default(), Tally::default());
            self.ended.clear();
            ck.hash.settle(now_ms, w, &mut self.ended, &mut th);
            ck.bbo.settle(now_ms, w, &mut Vec::new(), &mut tb);
            let ts = book.timestamp_ms();
            let mut learned = None;
            for v in self.ended.drain(..) {
                if learn_ltp(book, v, ts, &mut self.scratch, &mut self.counters) {
                    ck.hash.resolve(&v, ck.step, &mut th);
                    learned = learned_ltp(book, None);
                }
            }
            let witness =
                self.config.verify_hash && book_hash(book, ts, &mut self.scratch).is_some();
            judge(book, &mut ck, &th, &tb, witness, &self.config, now_ms, &mut self.counters, sink);
            // A divergence that persists asks for a fresh snapshot even if the book goes quiet.
            let persisted = ck
                .diverged_at_ms
                .is_some_and(|t| now_ms.saturating_sub(t) >= self.config.divergence_ms_min);
            if book.status() == BookStatus::Suspect && persisted {
                set_status(book, BookStatus::Resyncing, &mut self.counters, sink);
            }
            if !ck.is_empty() || book.status() == BookStatus::Suspect {
                self.unsettled.insert(token.clone());
            }
            book.put_checks(ck);
            if let Some((market, ltp)) = learned {
                self.share_ltp(&market, ltp);
            }
        }
    }

    /// Sets the clock (unix ms) that stamps the books changed from now on.
    pub fn set_now_ms(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Books fed by `feed` whose connection went silent: Live → Stale. Returns how many.
    pub fn mark_feed_stale(&mut self, feed: FeedId, sink: &mut impl UpdateSink) -> usize {
        self.set_feed_status(feed, BookStatus::Live, BookStatus::Stale, sink)
    }

    /// Tokens fed by `feed` that are Stale.
    pub fn stale_tokens(&self, feed: FeedId) -> Vec<TokenId> {
        self.books
            .values()
            .filter(|b| b.feed() == feed.0 && b.status() == BookStatus::Stale)
            .map(|b| b.token().clone())
            .collect()
    }

    fn set_feed_status(
        &mut self,
        feed: FeedId,
        from: BookStatus,
        to: BookStatus,
        sink: &mut impl UpdateSink,
    ) -> usize {
        let mut n = 0;
        for book in self.books.values_mut() {
            if book.feed() == feed.0 && book.status() == from {
                set_status(book, to, &mut self.counters, sink);
                n += 1;
            }
        }
        n
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }
    pub fn counters(&self) -> &StoreCounters {
        &self.counters
    }
    pub fn get(&self, token: &str) -> Option<&Book> {
        self.books.get(token)
    }
    pub fn len(&self) -> usize {
        self.books.len()
    }
    pub fn is_empty(&self) -> bool {
        self.books.is_empty()
    }
    pub fn books(&self) -> impl Iterator<Item = &Book> {
        self.books.values()
    }
    /// Tokens of a market that this store tracks.
    pub fn market_tokens(&self, market: &str) -> &[TokenId] {
        self.markets.get(market).map(Vec::as_slice).unwrap_or(&[])
    }
    /// Markets whose `market_resolved` arrived since the last call.
    pub fn drain_resolved_markets(&mut self) -> Vec<MarketId> {
        std::mem::take(&mut self.resolved)
    }
    /// `new_market` hints since the last call.
    pub fn drain_new_market_hints(&mut self) -> Vec<NewMarketHint> {
        std::mem::take(&mut self.hints)
    }

    /// Starts tracking a token (status Seeding until its snapshot). Known parameters are
    /// merged into an existing book.
    pub fn track(&mut self, token: TokenId, market: MarketId, meta: TokenMeta) {
        if let Some(book) = self.books.get_mut(token.as_str()) {
            book.merge_meta(meta);
            return;
        }
        let tokens = self.markets.entry(market.clone()).or_default();
        if !tokens.contains(&token) {
            tokens.push(token.clone());
        }
        let mut book = Book::new(token.clone(), market, self.config.default_meta);
        book.merge_meta(meta);
        self.books.insert(token, book);
    }

    /// Stops tracking a token; returns its book.
    pub fn untrack(&mut self, token: &str) -> Option<Book> {
        let book = self.books.remove(token)?;
        if let Some(tokens) = self.markets.get_mut(book.market().as_str()) {
            tokens.retain(|t| t.as_str() != token);
            if tokens.is_empty() {
                self.markets.remove(book.market().as_str());
            }
        }
        Some(book)
    }

    /// Marks a book as waiting for a fresh snapshot (e.g. its connection dropped).
    pub fn mark_resyncing(&mut self, token: &str, sink: &mut impl UpdateSink) {
        if let Some(book) = self.books.get_mut(token) {
            if !matches!(book.status(), BookStatus::Resolved | BookStatus::Seeding) {
                set_status(book, BookStatus::Resyncing, &mut self.counters, sink);
            }
        }
    }

    /// Decodes and applies one text frame from any source (no feed check).
    pub fn apply_frame(&mut self, text: &str, sink: &mut impl UpdateSink) -> FrameReport {
        self.apply_frame_from(FeedId::ANY, text, sink)
    }

    /// Decodes and applies one text frame received on connection `feed`.
    pub fn apply_frame_from(
        &mut self,
        feed: FeedId,
        text: &str,
        sink: &mut impl UpdateSink,
    ) -> FrameReport {
        self.counters.frames += 1;
        let mut report = FrameReport::default();
        let result = decode_frame(text, |ev| match ev {
            Ok(event) => {
                report.events += 1;
                self.apply_event_from(feed, &event, sink);
            }
            Err(e) => {
                self.counters.errors.add(e.kind);
                report.errors.push(e);
            }
        });
        match result {
            Ok(kind) => {
                match kind {
                    FrameKind::Pong => self.counters.frames_pong += 1,
                    FrameKind::Array(_) => self.counters.frames_array += 1,
                    FrameKind::Object => {}
                }
                report.kind = Some(kind);
            }
            Err(e) => {
                self.counters.errors.add(e.kind);
                report.errors.push(e);
            }
        }
        report
    }

    /// Applies one decoded event from any source.
    pub fn apply_event(&mut self, event: &MarketEvent<'_>, sink: &mut impl UpdateSink) {
        self.apply_event_from(FeedId::ANY, event, sink)
    }

    /// Applies one decoded event received on connection `feed`.
    pub fn apply_event_from(
        &mut self,
        feed: FeedId,
        event: &MarketEvent<'_>,
        sink: &mut impl UpdateSink,
    ) {
        self.counters.unknown_fields += u64::from(event.unknown_fields());
        match event {
            MarketEvent::Book(e) => {
                self.counters.events_book += 1;
                self.apply_snapshot_from(feed, e, sink);
            }
            MarketEvent::PriceChange(e) => {
                self.counters.events_price_change += 1;
                self.apply_price_change(feed, e, sink);
            }
            MarketEvent::TickSizeChange(e) => {
                self.counters.events_tick_size_change += 1;
                self.apply_tick_size(feed, e, sink);
            }
            MarketEvent::LastTradePrice(e) => {
                self.counters.events_last_trade_price += 1;
                self.apply_last_trade(e, sink);
            }
            MarketEvent::BestBidAsk(e) => {
                self.counters.events_best_bid_ask += 1;
                self.check_best_bid_ask(feed, e);
            }
            MarketEvent::NewMarket(e) => {
                self.counters.events_new_market += 1;
                self.note_new_market(e);
            }
            MarketEvent::MarketResolved(e) => {
                self.counters.events_market_resolved += 1;
                self.apply_resolved(feed, e, sink);
            }
            MarketEvent::Unknown { .. } => self.counters.events_unknown_type += 1,
        }
    }

    /// Applies a REST `/book` answer (which also carries the parameters), or any snapshot
    /// without a feed check.
    pub fn apply_snapshot(&mut self, e: &BookEvent<'_>, sink: &mut impl UpdateSink) {
        self.apply_snapshot_from(FeedId::ANY, e, sink)
    }

    /// The connection `feed` will take `token` over at its next snapshot.
    pub fn assign_feed(&mut self, token: &str, feed: FeedId) {
        if let Some(book) = self.books.get_mut(token) {
            if book.feed() != feed.0 {
                book.set_feeds(book.feed(), feed.0);
            }
        }
    }

    /// The connection feeding `token` is gone: nothing changes the book until another feed's
    /// snapshot arrives, so it is marked Resyncing.
    pub fn feed_lost(&mut self, token: &str, feed: FeedId, sink: &mut impl UpdateSink) {
        let Some(book) = self.books.get_mut(token) else { return };
        let next = if book.next_feed() == feed.0 { 0 } else { book.next_feed() };
        if book.feed() == feed.0 {
            book.set_feeds(0, next);
            if !matches!(book.status(), BookStatus::Resolved | BookStatus::Seeding) {
                set_status(book, BookStatus::Resyncing, &mut self.counters, sink);
            }
        } else {
            book.set_feeds(book.feed(), next);
        }
    }

    fn apply_snapshot_from(&mut self, feed: FeedId, e: &BookEvent<'_>, sink: &mut impl UpdateSink) {
        if !self.books.contains_key(&*e.asset_id) {
            if !self.config.auto_track {
                self.counters.untracked += 1;
                return;
            }
            self.track(TokenId::new(&e.asset_id), MarketId::new(&e.market), TokenMeta::default());
        }
        let Some(book) = self.books.get_mut(&*e.asset_id) else { return };
        if book.status() == BookStatus::Resolved {
            self.counters.after_resolved += 1;
            return;
        }
        if !admit_snapshot(book, feed, &mut self.counters) {
            return;
        }
        book.merge_meta(TokenMeta {
            tick_size: e.tick_size,
            min_order_size: e.min_order_size,
            neg_risk: e.neg_risk,
        });
        if let Some(ltp) = e.last_trade_price.as_deref().and_then(LtpText::new) {
            book.set_hash_ltp(Some(ltp));
        }
        if book.replace(&e.bids, &e.asks, e.timestamp.0).is_err() {
            self.counters.snapshots_repaired += 1;
        }
        book.set_received_ms(self.now_ms);
        let venue = e.hash.as_deref().and_then(parse_hex);
        book.set_venue_hash(venue);
        sink.on_update(&BookUpdate::Snapshot, book);
        let ltp_before = book.hash_ltp();
        let verdict = match venue {
            Some(h) if self.config.verify_hash => {
                hash_verdict(book, h, e.timestamp.0, &mut self.scratch, &mut self.counters)
            }
            _ => None,
        };
        book.set_verified(verdict == Some(true));
        // Claims about the replaced states are moot; a claim of this very state matched.
        let mut ck = book.take_checks();
        let (mut th, mut tb) = (Tally::default(), Tally::default());
        let own = venue.filter(|_| verdict == Some(true));
        ck.hash.supersede(|v| Some(*v) == own, &mut th);
        ck.bbo.supersede(|v| bbo_agrees(book, v.0, v.1), &mut tb);
        match verdict {
            Some(true) => th.now += 1,
            Some(false) => th.divergent += 1,
            None => {}
        }
        if verdict.is_none() && venue.is_some() && self.config.verify_hash {
            self.counters.hash.unverifiable += 1;
        }
        self.counters.hash.add(&th);
        self.counters.bbo.add(&tb);
        ck.diverged_at_ms = if verdict == Some(false) { Some(self.now_ms) } else { None };
        book.put_checks(ck);
        // A snapshot is the venue's full state: it is Live unless its own hash disagrees.
        let status = if verdict == Some(false) { None } else { Some(BookStatus::Live) };
        match status {
            Some(s) => set_status(book, s, &mut self.counters, sink),
            None => record_failed_check(book, &self.config, &mut self.counters, sink),
        }
        if book.status() == BookStatus::Suspect {
            self.unsettled.insert(book.token().clone());
        }
        let learned = learned_ltp(book, ltp_before);
        if let Some((market, ltp)) = learned {
            self.share_ltp(&market, ltp);
        }
    }

    /// The venue hashes one last trade price per market: give every tracked token of the
    /// market the same text.
    fn share_ltp(&mut self, market: &MarketId, ltp: LtpText) {
        if let Some(tokens) = self.markets.get(market.as_str()) {
            for t in tokens {
                if let Some(b) = self.books.get_mut(t.as_str()) {
                    b.set_hash_ltp(Some(ltp));
                }
            }
        }
    }

    fn apply_price_change(
        &mut self,
        feed: FeedId,
        e: &PriceChangeEvent<'_>,
        sink: &mut impl UpdateSink,
    ) {
        if e.schema != PriceChangeSchema::Current {
            self.counters.events_legacy_schema += 1;
        }
        let ts = e.timestamp.0;
        for (i, entry) in e.changes.iter().enumerate() {
            self.counters.price_change_entries += 1;
            let Some(book) = self.books.get_mut(&*entry.asset_id) else {
                self.counters.untracked += 1;
                continue;
            };
            match book.status() {
                BookStatus::Seeding => {
                    self.counters.entries_before_seed += 1;
                    continue;
                }
                BookStatus::Resolved => {
                    self.counters.after_resolved += 1;
                    continue;
                }
                _ => {}
            }
            if !admit(book, feed, &mut self.counters) {
                continue;
            }
            let now_ms = self.now_ms;
            let w = self.config.window;
            let verify = self.config.verify_hash;
            let mut ck = book.take_checks();
            let (mut th, mut tb) = (Tally::default(), Tally::default());
            // A later timestamp ends the token's previous run: the book as it is now is the
            // state after that run, where an unannounced trade price may be learned.
            let mut learned = None;
            self.ended.clear();
            ck.hash.end_runs_before(ts, now_ms, &mut self.ended);
            ck.bbo.end_runs_before(ts, now_ms, &mut Vec::new());
            let run_end_ts = book.timestamp_ms();
            for v in self.ended.drain(..) {
                if learn_ltp(book, v, run_end_ts, &mut self.scratch, &mut self.counters) {
                    ck.hash.resolve(&v, ck.step, &mut th);
                    learned = learned_ltp(book, None);
                }
            }
            let old = book.set_level(entry.side, entry.price, entry.size);
            if verify {
                book.note_change(now_ms, self.config.render_hot_changes_per_s);
            }
            book.set_timestamp(ts);
            book.set_received_ms(now_ms);
            if book.status() == BookStatus::Stale {
                set_status(book, BookStatus::Live, &mut self.counters, sink);
            }
            let update =
                BookUpdate::Level { side: entry.side, price: entry.price, size: entry.size, old };
            sink.on_update(&update, book);
            ck.step += 1;
            let step = ck.step;
            let venue = if verify { entry.hash.as_deref().and_then(parse_hex) } else { None };
            if let Some(h) = venue {
                book.set_venue_hash(Some(h));
                ck.hash.claim(h, ts, step, now_ms, w.claims_max, &mut th);
            }
            if entry.best_bid.is_some() || entry.best_ask.is_some() {
                ck.bbo.claim(
                    (entry.best_bid, entry.best_ask),
                    ts,
                    step,
                    now_ms,
                    w.claims_max,
                    &mut tb,
                );
            }
            let mut witness = false;
            if !ck.hash.is_empty() {
                match book_hash(book, ts, &mut self.scratch) {
                    Some(ours) => {
                        witness = true;
                        ck.hash.test(step, w, |v, _| *v == ours, &mut th);
                        // The venue hashes a trade before it announces it: on the last entry
                        // for the token in this frame, try the likely trade prices.
                        let last_for_token = !e.changes[i + 1..]
                            .iter()
                            .any(|later| later.asset_id == entry.asset_id);
                        if let Some(h) = venue.filter(|h| *h != ours && last_for_token) {
                            if learn_ltp(book, h, ts, &mut self.scratch, &mut self.counters) {
                                ck.hash.resolve(&h, step, &mut th);
                                learned = learned_ltp(book, None);
                            }
                        }
                    }
                    None => {
                        let n = ck.hash.clear();
                        self.counters.hash.unverifiable += n;
                        self.counters.hash_unverifiable += n;
                    }
                }
            }
            ck.bbo.test(step, w, |v, _| bbo_agrees(book, v.0, v.1), &mut tb);
            if !witness {
                book.set_verified(false);
            } else if th.matched() {
                book.set_verified(true);
            } else if th.divergent > 0 {
                book.set_verified(false);
            }
            judge(book, &mut ck, &th, &tb, witness, &self.config, now_ms, &mut self.counters, sink);
            let token_unsettled = !ck.is_empty() || book.status() == BookStatus::Suspect;
            book.put_checks(ck);
            if token_unsettled {
                self.unsettled.insert(book.token().clone());
            }
            if let Some((market, ltp)) = learned {
                self.share_ltp(&market, ltp);
            }
        }
    }

    fn apply_tick_size(
        &mut self,
        feed: FeedId,
        e: &TickSizeChangeEvent<'_>,
        sink: &mut impl UpdateSink,
    ) {
        let Some(book) = self.books.get_mut(&*e.asset_id) else {
            self.counters.untracked += 1;
            return;
        };
        if !admit(book, feed, &mut self.counters) {
            return;
        }
        let old = book.tick_size();
        book.set_tick_size(e.new_tick_size);
        book.set_timestamp(e.timestamp.0);
        book.set_received_ms(self.now_ms);
        if book.status() == BookStatus::Stale {
            set_status(book, BookStatus::Live, &mut self.counters, sink);
        }
        sink.on_update(&BookUpdate::TickSize { old, new: e.new_tick_size }, book);
    }

    fn apply_last_trade(&mut self, e: &LastTradePriceEvent<'_>, sink: &mut impl UpdateSink) {
        let Some(book) = self.books.get_mut(&*e.asset_id) else {
            self.counters.untracked += 1;
            return;
        };
        // A trade changes no level, so any connection of this shard may report it (during a
        // recycle the old socket can still deliver a trade the new socket's snapshot already
        // reflects, and the snapshot carries no trade details). Only a newer trade replaces.
        if book.last_trade().is_some_and(|t| t.timestamp_ms > e.timestamp.0) {
            return;
        }
        let trade =
            LastTrade { price: e.price, size: e.size, side: e.side, timestamp_ms: e.timestamp.0 };
        book.set_last_trade(trade);
        sink.on_update(&BookUpdate::LastTrade(trade), book);
        let market = book.market().clone();
        self.share_ltp(&market, LtpText::from_price(e.price));
    }

    fn check_best_bid_ask(&mut self, feed: FeedId, e: &BestBidAskEvent<'_>) {
        let Some(book) = self.books.get_mut(&*e.asset_id) else {
            self.counters.untracked += 1;
            return;
        };
        if !admit(book, feed, &mut self.counters) {
            return;
        }
        if !bbo_agrees(book, Some(e.best_bid), Some(e.best_ask)) {
            self.counters.best_bid_ask_disagreements += 1;
        }
    }

    fn note_new_market(&mut self, e: &NewMarketEvent<'_>) {
        if self.hints.len() >= self.config.new_market_hints_max {
            self.counters.new_market_hints_dropped += 1;
            return;
        }
        self.hints.push(NewMarketHint {
            market: MarketId::new(&e.market),
            tokens: e.assets_ids.iter().map(|t| TokenId::new(t)).collect(),
        });
    }

    fn apply_resolved(
        &mut self,
        feed: FeedId,
        e: &MarketResolvedEvent<'_>,
        sink: &mut impl UpdateSink,
    ) {
        let mut any = false;
        for token in &e.assets_ids {
            match self.books.get_mut(&**token) {
                Some(book) if !admit(book, feed, &mut self.counters) => {}
                Some(book) => {
                    any = true;
                    // A resolved market has no orders: the venue's book is empty. Levels left
                    // here are removals we missed; a resolved book is judged no more, so
                    // keeping them would show a wrong book under a final status for good.
                    let left = book.bids().len() + book.asks().len();
                    if left > 0 {
                        self.counters.resolved_levels_cleared += left as u64;
                        // Empty ladders are always in order: nothing to repair.
                        let _ = book.replace(&[], &[], e.timestamp.0);
                        book.set_venue_hash(None);
                        book.set_verified(false);
                        sink.on_update(&BookUpdate::Snapshot, book);
                    } else {
                        book.set_timestamp(e.timestamp.0);
                    }
                    set_status(book, BookStatus::Resolved, &mut self.counters, sink);
                }
                None => self.counters.untracked += 1,
            }
        }
        if any && self.resolved.len() < self.config.new_market_hints_max {
            self.resolved.push(MarketId::new(&e.market));
        }
    }
}

/// Only the book's feed may change it.
fn admit(book: &Book, feed: FeedId, counters: &mut StoreCounters) -> bool {
    if feed == FeedId::ANY || book.feed() == feed.0 {
        return true;
    }
    counters.not_feed += 1;
    false
}

/// A snapshot from the book's next feed hands the book over to it.
fn admit_snapshot(book: &mut Book, feed: FeedId, counters: &mut StoreCounters) -> bool {
    if feed != FeedId::ANY && book.feed() != feed.0 && book.next_feed() == feed.0 {
        book.set_feeds(feed.0, 0);
        counters.feed_handoffs += 1;
        return true;
    }
    admit(book, feed, counters)
}

/// Some(true/false) if the hash could be computed, None if an input is unknown. Used for
/// snapshots, whose hash is of exactly their own state; a mismatch tries to learn the trade
/// price first.
fn hash_verdict(
    book: &mut Book,
    venue: [u8; 20],
    ts: u64,
    scratch: &mut String,
    counters: &mut StoreCounters,
) -> Option<bool> {
    let ours = book_hash(book, ts, scratch);
    let Some(ours) = ours else {
        counters.hash_unverifiable += 1;
        return None;
    };
    counters.hash_checks += 1;
    if ours == venue || learn_ltp(book, venue, ts, scratch, counters) {
        return Some(true);
    }
    counters.hash_mismatches += 1;
    Some(false)
}

/// The venue puts a trade's price into the hash before `last_trade_price` announces it (and a
/// YES token's hash may carry a trade printed on its NO token, in its own terms), so the
/// recent level prices and the top of book, and their complements, are tried as the last
/// trade price; a match is adopted. A few SHA-1s, on mismatches only.
fn learn_ltp(
    book: &mut Book,
    venue: [u8; 20],
    ts: u64,
    scratch: &mut String,
    counters: &mut StoreCounters,
) -> bool {
    let current = book.hash_ltp();
    let [r0, r1] = book.recent_prices();
    let top = [book.best_bid().map(|l| l.price), book.best_ask().map(|l| l.price)];
    let mut tried: [Price; 8] = [Price::ZERO; 8];
    let mut n = 0;
    for p in [r0, r1, top[0].unwrap_or(Price::ZERO), top[1].unwrap_or(Price::ZERO)] {
        if p.is_zero() {
            continue;
        }
        for candidate in [Some(p), p.complement()].into_iter().flatten() {
            if tried[..n].contains(&candidate) {
                continue;
            }
            tried[n] = candidate;
            n += 1;
            let text = LtpText::from_price(candidate);
            if Some(text) == current {
                continue;
            }
            book.set_hash_ltp(Some(text));
            if book_hash(book, ts, scratch) == Some(venue) {
                counters.hash_ltp_learned += 1;
                return true;
            }
        }
    }
    book.set_hash_ltp(current);
    false
}

/// Turns one step's verdicts into counters and a status. The hash, when it can be computed,
/// is the witness; the top of book only when it cannot. A match makes the book Live; a
/// divergence makes it Suspect, and Resyncing after `failed_checks_max` divergent runs in a
/// row (or, in `settle`, once it has stayed divergent for `divergence_ms_min`).
#[allow(clippy::too_many_arguments)]
fn judge(
    book: &mut Book,
    ck: &mut BookChecks,
    th: &Tally,
    tb: &Tally,
    hash_is_witness: bool,
    config: &StoreConfig,
    now_ms: u64,
    counters: &mut StoreCounters,
    sink: &mut impl UpdateSink,
) {
    counters.hash.add(th);
    counters.bbo.add(tb);
    counters.hash_checks += th.now + th.after_run + th.later + th.divergent;
    counters.hash_mismatches += th.divergent;
    counters.bbo_checks += tb.now + tb.after_run + tb.later + tb.divergent;
    counters.bbo_mismatches += tb.divergent;
    let t = if hash_is_witness { th } else { tb };
    if matches!(book.status(), BookStatus::Resolved | BookStatus::Seeding) {
        return;
    }
    if t.matched() {
        ck.diverged_at_ms = None;
        if book.status() != BookStatus::Live {
            set_status(book, BookStatus::Live, counters, sink);
        }
    } else if t.divergent > 0 {
        ck.diverged_at_ms.get_or_insert(now_ms);
        let n = book.note_failed_check();
        let to =
            if n >= config.failed_checks_max { BookStatus::Resyncing } else { BookStatus::Suspect };
        if book.status() != BookStatus::Resyncing {
            set_status(book, to, counters, sink);
        }
    }
}

/// The market and new last trade price text if a hash check just learned one.
fn learned_ltp(book: &Book, before: Option<LtpText>) -> Option<(MarketId, LtpText)> {
    let now = book.hash_ltp()?;
    (Some(now) != before).then(|| (book.market().clone(), now))
}

/// The venue's top of book uses "0" for no bid and "1" for no ask.
fn bbo_agrees(book: &Book, best_bid: Option<Price>, best_ask: Option<Price>) -> bool {
    let ours_bid = book.best_bid().map_or(Price::ZERO, |l| l.price);
    let ours_ask = book.best_ask().map_or(Price::ONE, |l| l.price);
    best_bid.is_none_or(|b| b == ours_bid) && best_ask.is_none_or(|a| a == ours_ask)
}

fn set_status(
    book: &mut Book,
    to: BookStatus,
    counters: &mut StoreCounters,
    sink: &mut impl UpdateSink,
) {
    let from = book.status();
    book.set_status(to);
    if from != to {
        match to {
            BookStatus::Suspect => counters.books_marked_suspect += 1,
            BookStatus::Resyncing => counters.books_marked_resyncing += 1,
            _ => {}
        }
        sink.on_update(&BookUpdate::Status { from, to }, book);
    }
}

/// One failed check makes a book Suspect (the hash can run ahead of the stream); too many in a
/// row make it Resyncing, which asks the owner for a fresh snapshot.
fn record_failed_check(
    book: &mut Book,
    config: &StoreConfig,
    counters: &mut StoreCounters,
    sink: &mut impl UpdateSink,
) {
    let n = book.note_failed_check();
    let to =
        if n >= config.failed_checks_max { BookStatus::Resyncing } else { BookStatus::Suspect };
    if book.status() != BookStatus::Resyncing {
        set_status(book, to, counters, sink);
    }
}
