//! The simulated exchange's state and event generator.

use hashbrown::HashMap;

use super::frames::{self, EntryOut, NewMarketOut};
use super::rng::Rng;
use super::shape::{RealShape, ShapeCounters};
use super::truth::{ltp_text, text_of, units_of, TruthBook, TruthTrade};
use crate::book::hash::{write_hash_input, HashInputs};
use crate::book::{Book, BookStatus, LastTrade, Level, LtpText, Side, TokenMeta};
use crate::decimal::{Price, Size, SCALE};
use crate::ids::{MarketId, TokenId};

/// How the simulated venue starts.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub markets: usize,
    /// Venue time at start (unix ms); events carry `now_ms` given to [`SimExchange::step`].
    pub start_ms: u64,
    /// Most levels kept per side; orders beyond it cancel the worst level instead.
    pub levels_per_side_max: usize,
    /// The real venue's quirks (runs, cascades, hashes ahead, stale snapshots, ...); on by
    /// default, [`RealShape::off`] for plain traffic.
    pub real_shape: RealShape,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            markets: 100,
            start_ms: 1_790_000_000_000,
            levels_per_side_max: 40,
            real_shape: RealShape::default(),
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Order,
    Trade,
    TickSizeChange,
    NewMarket,
    Resolution,
    /// Nothing to do (no active market).
    Idle,
}

/// A frame the venue sends, with whom it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimFrame {
    /// Index of the market in [`SimExchange::markets`].
    pub market: u32,
    pub text: String,
    /// Sent only to connections that enabled custom features.
    pub custom: bool,
    /// Sent to every such connection, subscribed or not (`new_market`).
    pub broadcast: bool,
    /// Sent only to connections subscribed to this outcome (0 or 1) of the market; None: to
    /// every connection subscribed to either (a `price_change` carries both tokens' entries).
    pub token: Option<u8>,
}

impl SimFrame {
    fn market(market: u32, text: String) -> SimFrame {
        SimFrame { market, text, custom: false, broadcast: false, token: None }
    }
}

/// A market's lifecycle on the venue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarketState {
    Active,
    Resolved { winner: u8, at_ms: u64 },
}

/// One binary market: two outcome tokens whose books mirror each other.
#[derive(Debug, Clone)]
pub struct SimMarket {
    pub gamma_id: u64,
    pub condition_id: MarketId,
    pub question_id: String,
    pub tokens: [TokenId; 2],
    pub outcomes: [&'static str; 2],
    pub question: String,
    pub slug: String,
    pub neg_risk: bool,
    pub created_ms: u64,
    pub end_date_ms: u64,
    pub state: MarketState,
    /// The generator's view of both books (mirror images), from which it picks orders.
    books: [Book; 2],
    /// The same books kept by the independent implementation (`sim::truth`). Every output is
    /// written from it (frames' books, hashes and tops, REST, the truth endpoint, Gamma's and
    /// `/sim/markets`' tick), so a bug in `Book` or `book_hash`, which the engine shares, makes
    /// the simulator disagree with the engine instead of agreeing with it; after every event
    /// both are checked to agree ([`SimExchange::disagreement`]).
    truth: [TruthBook; 2],
    /// The market's last trade price as the venue hashes it (one per market, in the terms of
    /// the token the trade printed on; empty before the first trade).
    ltp: LtpText,
    active_pos: usize,
    /// The timestamp of the market's last event, so that with runs on the next one is later.
    last_ts: u64,
}

impl SimMarket {
    pub fn book(&self, outcome: usize) -> &Book {
        &self.books[outcome.min(1)]
    }
    pub fn tick(&self) -> Price {
        self.books[0].tick_size().unwrap_or(Price::from_units(10_000))
    }
    /// The independent truth of one token's book.
    pub fn truth(&self, outcome: usize) -> &TruthBook {
        &self.truth[outcome.min(1)]
    }
    /// The market's tick as the venue writes it; both tokens always share it (a tick change
    /// moves both at once).
    pub fn tick_text(&self) -> &str {
        &self.truth[0].tick_size
    }
    pub fn min_order_size(&self) -> Size {
        self.books[0].meta().min_order_size.unwrap_or(Size::ZERO)
    }
    pub fn ltp(&self) -> LtpText {
        self.ltp
    }
    pub fn is_active(&self) -> bool {
        self.state == MarketState::Active
    }
    /// Both tokens' books changed at `ts`.
    fn stamp(&mut self, ts: u64) {
        for b in &mut self.books {
            b.set_timestamp(ts);
        }
        for t in &mut self.truth {
            t.timestamp_ms = ts;
        }
    }
}

/// The simulated venue.
#[derive(Debug)]
pub struct SimExchange {
    cfg: SimConfig,
    rng: Rng,
    markets: Vec<SimMarket>,
    by_token: HashMap<TokenId, (u32, u8)>,
    by_condition: HashMap<MarketId, u32>,
    active: Vec<u32>,
    next_gamma_id: u64,
    now_ms: u64,
    scratch: String,
    /// The quirks' own random stream, so that `RealShape::off()` draws exactly what earlier
    /// versions drew from `rng`.
    shape_rng: Rng,
    /// Opening dumps' stream: whether a dump is stale must not depend on, nor change, the
    /// events generated between subscriptions.
    snap_rng: Rng,
    shape_counters: ShapeCounters,
}

/// One level change of a market on token 0 (token 1 gets the mirror), with the size it set.
#[derive(Debug, Clone, Copy)]
struct Change {
    side: Side,
    price: Price,
    size: Size,
    /// Which token's entry is written first.
    first: usize,
}

/// What an entry says about its token's book: hash and best bid/ask of some state of it.
#[derive(Debug, Clone, Copy)]
struct Top {
    hash: [u8; 20],
    bid: Price,
    ask: Price,
}

/// One market's part of a run: its changes at one timestamp and the state they end in.
#[derive(Debug)]
struct RunPart {
    idx: u32,
    ts: u64,
    changes: Vec<Change>,
    end: [Top; 2],
    /// Per change and token, how many later changes the entry's state is ahead (0: none).
    ahead: Vec<[u8; 2]>,
    /// Changes that follow the run, one frame and one timestamp each, with their own state.
    follow: Vec<(Change, u64, [Top; 2])>,
}

const TICKS: [u32; 3] = [10_000, 1_000, 100];

/// Markets without a trade among those listed at start, when `ltp_empty_until_first_trade`.
const UNTRADED_AT_START_PERMILLE: u64 = 50;

/// Most changes an entry's hash may be ahead (the venue: 1–3).
const AHEAD_MAX: u64 = 3;

impl SimExchange {
    pub fn new(cfg: SimConfig) -> SimExchange {
        let mut ex = SimExchange {
            rng: Rng::new(cfg.seed),
            markets: Vec::with_capacity(cfg.markets),
            by_token: HashMap::with_capacity(cfg.markets * 2),
            by_condition: HashMap::with_capacity(cfg.markets),
            active: Vec::with_capacity(cfg.markets),
            next_gamma_id: 500_000,
            now_ms: cfg.start_ms,
            scratch: String::with_capacity(4096),
            shape_rng: Rng::new(cfg.seed ^ 0x5EA1_54A9_E000_0001),
            snap_rng: Rng::new(cfg.seed ^ 0x5EA1_54A9_E000_0002),
            shape_counters: ShapeCounters::default(),
            cfg,
        };
        for _ in 0..ex.cfg.markets {
            // Most markets that exist when the venue starts have traded.
            let untraded = ex.cfg.real_shape.ltp_empty_until_first_trade
                && ex.shape_rng.chance(UNTRADED_AT_START_PERMILLE);
            ex.add_market(untraded);
        }
        ex
    }

    /// What the real-traffic quirks did so far.
    pub fn shape_counters(&self) -> &ShapeCounters {
        &self.shape_counters
    }

    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }
    pub fn markets(&self) -> &[SimMarket] {
        &self.markets
    }
    pub fn market(&self, idx: u32) -> Option<&SimMarket> {
        self.markets.get(idx as usize)
    }
    pub fn active_count(&self) -> usize {
        self.active.len()
    }
    pub fn market_of_token(&self, token: &str) -> Option<(u32, u8)> {
        self.by_token.get(token).copied()
    }
    pub fn market_index(&self, condition_id: &str) -> Option<u32> {
        self.by_condition.get(condition_id).copied()
    }

    /// The true book of a token (resolved markets keep their final, empty books).
    pub fn book(&self, token: &str) -> Option<&Book> {
        let (m, o) = self.market_of_token(token)?;
        Some(self.markets[m as usize].book(usize::from(o)))
    }

    /// The independent truth of a token's book (what `/sim/book/{token}` serves).
    pub fn truth_book(&self, token: &str) -> Option<&TruthBook> {
        let (m, o) = self.market_of_token(token)?;
        Some(self.markets[m as usize].truth(usize::from(o)))
    }

    /// The venue's hash of a token's current book.
    pub fn hash_of(&mut self, token: &str) -> Option<[u8; 20]> {
        let t = self.truth_book(token)?;
        Some(t.digest(t.timestamp_ms))
    }

    /// Where the generator's `Book`s and the independent truth of market `idx` differ (levels,
    /// tick, parameters, timestamps, last trades, status; with `hash_text`, also the texts
    /// `book_hash` and `TruthBook::hash_hex` hash), or None if they agree.
    pub fn disagreement(&mut self, idx: u32, hash_text: bool) -> Option<String> {
        let m = self.markets.get(idx as usize)?;
        for (o, (b, t)) in m.books.iter().zip(&m.truth).enumerate() {
            let units = |l: &Level| (u64::from(l.price.units()), l.size.units());
            let bids_agree = b.bids().iter().map(units).eq(t.bids.iter().map(|(p, z)| (*p, *z)));
            let asks_agree =
                b.asks().iter().map(units).eq(t.asks.iter().rev().map(|(p, z)| (*p, *z)));
            let meta = b.meta();
            let trade = b.last_trade().map(|l| TruthTrade {
                price: u64::from(l.price.units()),
                size: l.size.units(),
                buy: l.side == Side::Buy,
            });
            let checks: [(&str, bool); 10] = [
                ("bids", bids_agree),
                ("asks", asks_agree),
                (
                    "tick_size",
                    meta.tick_size.map(|p| u64::from(p.units())) == units_of(&t.tick_size),
                ),
                (
                    "min_order_size",
                    meta.min_order_size.map(|z| z.units()) == units_of(&t.min_order_size),
                ),
                ("neg_risk", meta.neg_risk == Some(t.neg_risk)),
                ("timestamp", b.timestamp_ms() == t.timestamp_ms),
                (
                    "last_trade_price",
                    b.hash_ltp().map(|l| l.as_str().to_owned()).as_deref()
                        == Some(&*t.last_trade_price),
                ),
                ("last_trade", trade == t.last_trade),
                ("status", (b.status() == BookStatus::Resolved) == t.resolved),
                ("tick shared", t.tick_size == m.truth[0].tick_size),
            ];
            if let Some((what, _)) = checks.iter().find(|(_, ok)| !ok) {
                return Some(format!(
                    "market {idx} token {o}: {what} differs: book {b:?} truth {t:?}"
                ));
            }
            if !hash_text {
                continue;
            }
            // The texts the two hash: SHA-1 of equal texts is equal, and cheaper to compare.
            let inputs = b
                .hash_ltp()
                .and_then(|ltp| Some((ltp, meta.min_order_size?, meta.tick_size?, meta.neg_risk?)));
            let Some((ltp, min_order_size, tick_size, neg_risk)) = inputs else {
                return Some(format!("market {idx} token {o}: a hash input is unknown: {b:?}"));
            };
            let inp = HashInputs {
                market: b.market().as_str(),
                asset_id: b.token().as_str(),
                timestamp_ms: b.timestamp_ms(),
                min_order_size,
                tick_size,
                neg_risk,
                last_trade_price: ltp.as_str(),
            };
            write_hash_input(&mut self.scratch, &inp, b.bids(), b.asks());
            let want = t.hash_text(t.timestamp_ms);
            if self.scratch != want {
                return Some(format!(
                    "market {idx} token {o}: hash text differs:\n book  {}\n truth {want}",
                    self.scratch
                ));
            }
        }
        None
    }

    /// The opening frame for a subscription: one compact array of `book`s ending in `\n`,
    /// omitting unknown and resolved tokens (`[]\n` if none).
    ///
    /// With `stale_snapshot_permille`, now and then one of the books is stale at one level
    /// (see `stale_copy`); its hash is of what it shows, as on the venue.
    pub fn opening_dump<'t>(&mut self, tokens: impl IntoIterator<Item = &'t str>) -> String {
        let mut out = String::from("[");
        let mut first = true;
        let mut found: Vec<(u32, u8)> = Vec::new();
        for t in tokens {
            let Some((m, o)) = self.market_of_token(t) else { continue };
            if self.markets[m as usize].is_active() {
                found.push((m, o));
            }
        }
        let permille = u64::from(self.cfg.real_shape.stale_snapshot_permille);
        let mut stale_pos = None;
        if permille > 0 && self.snap_rng.chance(permille) {
            // A book with no level has nothing to be stale about.
            let has_levels = |&&(m, o): &&(u32, u8)| {
                let t = &self.markets[m as usize].truth[usize::from(o)];
                !(t.bids.is_empty() && t.asks.is_empty())
            };
            let n = found.iter().filter(has_levels).count() as u64;
            if n > 0 {
                let k = self.snap_rng.below(n) as usize;
                stale_pos =
                    found.iter().enumerate().filter(|(_, f)| has_levels(f)).nth(k).map(|(i, _)| i);
            }
        }
        for (pos, &(m, o)) in found.iter().enumerate() {
            let t = &self.markets[m as usize].truth[usize::from(o)];
            let stale =
                if stale_pos == Some(pos) { stale_copy(t, &mut self.snap_rng) } else { None };
            let t = stale.as_ref().unwrap_or(t);
            let h = t.digest(t.timestamp_ms);
            if stale.is_some() {
                self.shape_counters.stale_snapshots += 1;
            }
            if !first {
                out.push(',');
            }
            first = false;
            frames::opening_book(&mut out, t, h);
        }
        out.push_str("]\n");
        out
    }

    /// REST `GET /book` body, or None (404) for unknown or resolved tokens.
    pub fn rest_book(&mut self, token: &str) -> Option<String> {
        let (m, o) = self.market_of_token(token)?;
        let market = &self.markets[m as usize];
        if !market.is_active() {
            return None;
        }
        let t = &market.truth[usize::from(o)];
        let mut out = String::with_capacity(2048);
        frames::rest_book(&mut out, t, t.digest(t.timestamp_ms));
        Some(out)
    }

    /// Generates one venue event at `now_ms`, appending its frames to `out`.
    pub fn step(&mut self, now_ms: u64, out: &mut Vec<SimFrame>) -> EventKind {
        let first = out.len();
        let kind = self.step_event(now_ms, out);
        // Every market an event touches writes a frame; the generator's books and the truth
        // must still agree there (a disagreement is a bug in `Book` or in `sim::truth`). The
        // hash texts are left to tests (`disagreement(_, true)`) and to the engine, which
        // checks every hash the simulator writes: rendering both after every event would
        // double the simulator's cost in debug builds.
        if cfg!(debug_assertions) {
            let mut touched: Vec<u32> = out[first..].iter().map(|f| f.market).collect();
            touched.sort_unstable();
            touched.dedup();
            for idx in touched {
                if let Some(why) = self.disagreement(idx, false) {
                    panic!("simulator's book and truth disagree after {kind:?}: {why}");
                }
            }
        }
        kind
    }

    fn step_event(&mut self, now_ms: u64, out: &mut Vec<SimFrame>) -> EventKind {
        self.now_ms = self.now_ms.max(now_ms);
        let roll = self.rng.below(1000);
        // New markets replace resolved ones, so the active set stays near its starting size
        // over long runs (a soak would otherwise grow without bound).
        let room = self.active.len() < self.cfg.markets + self.cfg.markets / 10 + 1;
        if roll < 2 && room {
            self.create_market(out);
            return EventKind::NewMarket;
        }
        let Some(idx) = self.pick_active() else { return EventKind::Idle };
        if roll < 4 {
            self.resolve(idx, out);
            EventKind::Resolution
        } else if roll < 100 {
            self.trade(idx, out);
            EventKind::Trade
        } else if roll < 110 && self.tick_size_change(idx, out) {
            EventKind::TickSizeChange
        } else {
            self.order(idx, out);
            EventKind::Order
        }
    }

    fn pick_active(&mut self) -> Option<u32> {
        if self.active.is_empty() {
            return None;
        }
        let i = self.rng.below(self.active.len() as u64) as usize;
        Some(self.active[i])
    }

    /// Lists one market with a seeded book. `untraded`: no trade yet (`"last_trade_price":""`).
    fn add_market(&mut self, untraded: bool) -> u32 {
        let idx = self.markets.len() as u32;
        let gamma_id = self.next_gamma_id;
        self.next_gamma_id += 1 + self.rng.below(3);
        let condition_id = MarketId::new(&format!("0x{}", self.rng.hex(64)));
        let question_id = format!("0x{}", self.rng.hex(64));
        let t0_len = 77 + self.rng.below(2) as usize;
        let t1_len = 77 + self.rng.below(2) as usize;
        let tokens =
            [TokenId::new(&self.rng.digits(t0_len)), TokenId::new(&self.rng.digits(t1_len))];
        let tick = Price::from_units(match self.rng.below(20) {
            0 => TICKS[2],
            1..=3 => TICKS[1],
            _ => TICKS[0],
        });
        let min_order_size = Size::from_units(match self.rng.below(10) {
            0 => SCALE,
            1 => 15 * SCALE,
            _ => 5 * SCALE,
        });
        let neg_risk = self.rng.chance(200);
        let meta = TokenMeta {
            tick_size: Some(tick),
            min_order_size: Some(min_order_size),
            neg_risk: Some(neg_risk),
        };
        let mut books = [
            Book::new(tokens[0].clone(), condition_id.clone(), meta),
            Book::new(tokens[1].clone(), condition_id.clone(), meta),
        ];
        let mut truth = [
            TruthBook::new(condition_id.as_str(), tokens[0].as_str()),
            TruthBook::new(condition_id.as_str(), tokens[1].as_str()),
        ];
        for t in &mut truth {
            t.min_order_size = text_of(min_order_size.units());
            t.tick_size = text_of(u64::from(tick.units()));
            t.neg_risk = neg_risk;
        }
        // Most markets trade mid-range; some sit near the edges where tick sizes change.
        let t = u64::from(tick.units());
        let mid_ticks = match self.rng.below(10) {
            0 => self.rng.range(20_000 / t, 40_000 / t),
            1 => self.rng.range(960_000 / t, 980_000 / t),
            _ => self.rng.range(100_000 / t, 900_000 / t),
        };
        let levels = self.rng.range(3, 20);
        let ts = self.now_ms.saturating_sub(self.rng.below(60_000));
        for k in 0..levels {
            let size = self.lot();
            if let Some(p) = mid_ticks.checked_sub(1 + k).filter(|p| *p > 0) {
                set_pair(
                    &mut books,
                    &mut truth,
                    Side::Buy,
                    Price::from_units((p * t) as u32),
                    size,
                );
            }
            let ask = mid_ticks + 1 + k;
            if ask * t < SCALE {
                let size = self.lot();
                set_pair(
                    &mut books,
                    &mut truth,
                    Side::Sell,
                    Price::from_units((ask * t) as u32),
                    size,
                );
            }
        }
        let ltp = if untraded {
            LtpText::EMPTY
        } else {
            LtpText::from_price(Price::from_units((mid_ticks * t) as u32))
        };
        for b in &mut books {
            b.set_timestamp(ts);
            b.set_hash_ltp(Some(ltp));
            b.set_status(BookStatus::Live);
        }
        let ltp_truth = if untraded { String::new() } else { ltp_text(mid_ticks * t) };
        for tb in &mut truth {
            tb.timestamp_ms = ts;
            tb.last_trade_price.clone_from(&ltp_truth);
        }
        let n = gamma_id;
        let market = SimMarket {
            gamma_id,
            condition_id: condition_id.clone(),
            question_id,
            outcomes: ["Yes", "No"],
            question: format!("Will simulated event #{n} happen?"),
            slug: format!("simulated-event-{n}"),
            neg_risk,
            created_ms: self.now_ms,
            end_date_ms: self.now_ms + self.rng.range(3_600_000, 30 * 86_400_000),
            state: MarketState::Active,
            books,
            truth,
            ltp,
            active_pos: self.active.len(),
            last_ts: 0,
            tokens: tokens.clone(),
        };
        self.by_token.insert(tokens[0].clone(), (idx, 0));
        self.by_token.insert(tokens[1].clone(), (idx, 1));
        self.by_condition.insert(condition_id, idx);
        self.active.push(idx);
        self.markets.push(market);
        idx
    }

    /// A size with two decimals between 1 and 500.
    fn lot(&mut self) -> Size {
        Size::from_units(self.rng.range(100, 50_000) * 10_000)
    }

    /// The timestamp of the market's next event. With runs on it is later than the market's
    /// previous one even within one millisecond: a run is recognised by its timestamp, so two
    /// runs of a market sharing one would read as one run with the wrong hash.
    fn ts_for(&mut self, idx: u32) -> u64 {
        let now = self.now_ms;
        if !self.cfg.real_shape.runs() {
            return now;
        }
        let m = &mut self.markets[idx as usize];
        let ts = now.max(m.last_ts + 1);
        m.last_ts = ts;
        ts
    }

    /// A new order or a cancel on one level: one `price_change` with an entry per token (with
    /// runs on: maybe a run, a cascade, hashes ahead; see [`RealShape`]).
    pub fn order(&mut self, idx: u32, out: &mut Vec<SimFrame>) {
        if self.cfg.real_shape.runs() {
            return self.order_shaped(idx, out);
        }
        let now = self.now_ms;
        let Some(c) = self.gen_order(idx) else { return };
        self.markets[idx as usize].stamp(now);
        let text = self.entries_frame(idx, &[(c.side, c.price)], c.first);
        out.push(SimFrame::market(idx, text));
    }

    /// Picks one order or cancel and applies it to both books; None if nothing fits.
    fn gen_order(&mut self, idx: u32) -> Option<Change> {
        let lot = self.lot();
        let side = if self.rng.chance(500) { Side::Buy } else { Side::Sell };
        let cancel = self.rng.chance(350);
        let depth_roll = self.rng.below(6);
        let first = self.rng.below(2) as usize;
        let max_levels = self.cfg.levels_per_side_max;
        let m = &mut self.markets[idx as usize];
        let t = m.tick().units();
        let b0 = &m.books[0];
        let (bid, ask) = frames::top_of_book(b0);
        let levels = b0.levels(side);
        let (price, size) = if levels.len() >= max_levels || (cancel && !levels.is_empty()) {
            // Cancel: shrink or remove a level (the worst one when the side is full).
            let pick =
                if levels.len() >= max_levels { 0 } else { depth_roll as usize % levels.len() };
            let lvl = levels[levels.len() - 1 - pick.min(levels.len() - 1)];
            let lvl = if levels.len() >= max_levels { levels[0] } else { lvl };
            let left = lvl.size.units().saturating_sub(lot.units());
            let left = if left < 1_000_000 || levels.len() >= max_levels { 0 } else { left };
            (lvl.price, Size::from_units(left))
        } else {
            // Add near the top, never crossing the other side.
            let offset = depth_roll as u32; // 0 improves the top by one tick
            let price = match side {
                Side::Buy => {
                    let base =
                        if bid.is_zero() { ask.units().saturating_sub(t) } else { bid.units() + t };
                    base.saturating_sub(offset * t)
                }
                Side::Sell => {
                    let base = if ask == Price::ONE {
                        bid.units() + t
                    } else {
                        ask.units().saturating_sub(t)
                    };
                    base + offset * t
                }
            };
            let crosses = match side {
                Side::Buy => price >= ask.units(),
                Side::Sell => price <= bid.units(),
            };
            if price == 0 || price >= SCALE as u32 || crosses {
                return self.gen_order_fallback(idx, side, lot);
            }
            let old = b0
                .levels(side)
                .iter()
                .find(|l| l.price.units() == price)
                .map_or(0, |l| l.size.units());
            (Price::from_units(price), Size::from_units(old + lot.units()))
        };
        set_pair(&mut m.books, &mut m.truth, side, price, size);
        Some(Change { side, price, size, first })
    }

    /// When the chosen price would cross, rest the order one tick behind the top instead.
    fn gen_order_fallback(&mut self, idx: u32, side: Side, lot: Size) -> Option<Change> {
        let m = &mut self.markets[idx as usize];
        let t = m.tick().units();
        let b0 = &m.books[0];
        let price = match side {
            Side::Buy => b0.best_bid().map(|l| l.price.units()),
            Side::Sell => b0.best_ask().map(|l| l.price.units()),
        };
        let price = Price::from_units(price.filter(|p| *p > t && *p + t < SCALE as u32)?);
        let old = b0.levels(side).iter().find(|l| l.price == price).map_or(Size::ZERO, |l| l.size);
        let size = Size::from_units(old.units() + lot.units());
        set_pair(&mut m.books, &mut m.truth, side, price, size);
        Some(Change { side, price, size, first: 0 })
    }

    /// A maker moves across the spread: a bid appears at the best ask's price before that ask
    /// is cancelled (or the other way round), so between the two entries the book is crossed.
    fn gen_requote(&mut self, idx: u32) -> Option<[Change; 2]> {
        let lot = Size::from_units(self.shape_rng.range(100, 50_000) * 10_000);
        let first = self.shape_rng.below(2) as usize;
        let lift_ask = self.shape_rng.chance(500);
        let max_levels = self.cfg.levels_per_side_max;
        let m = &mut self.markets[idx as usize];
        let b0 = &m.books[0];
        let (from, to) = if lift_ask { (Side::Sell, Side::Buy) } else { (Side::Buy, Side::Sell) };
        let top = match from {
            Side::Sell => b0.best_ask()?,
            Side::Buy => b0.best_bid()?,
        };
        // The side it leaves keeps a level and the side it joins has room.
        if b0.levels(from).len() < 2 || b0.levels(to).len() >= max_levels {
            return None;
        }
        let add = Change { side: to, price: top.price, size: lot, first };
        let cancel = Change { side: from, price: top.price, size: Size::ZERO, first };
        for c in [add, cancel] {
            set_pair(&mut m.books, &mut m.truth, c.side, c.price, c.size);
        }
        Some([add, cancel])
    }

    /// A `price_change` for changes given on token 0; each token's entries follow its mirror.
    fn entries_frame(&mut self, idx: u32, changes: &[(Side, Price)], first: usize) -> String {
        let m = &self.markets[idx as usize];
        let hashes = [0, 1].map(|o| m.truth[o].digest(m.truth[o].timestamp_ms));
        let mut entries = Vec::with_capacity(changes.len() * 2);
        for &(side, price) in changes {
            for k in 0..2 {
                let o = (first + k) % 2;
                let (side, price) = if o == 0 { (side, price) } else { mirror(side, price) };
                let t = &m.truth[o];
                let ladder = if side == Side::Buy { &t.bids } else { &t.asks };
                let size =
                    Size::from_units(ladder.get(&u64::from(price.units())).copied().unwrap_or(0));
                let (best_bid, best_ask) = truth_top(t);
                entries.push(EntryOut {
                    asset_id: t.asset_id.as_str(),
                    price,
                    size,
                    side,
                    hash: hashes[o],
                    best_bid,
                    best_ask,
                });
            }
        }
        self.shape_counters.entries += entries.len() as u64;
        let mut text = String::with_capacity(128 + entries.len() * 260);
        frames::price_change(&mut text, m.condition_id.as_str(), &entries, self.now_ms);
        text
    }

    /// Hash and best bid/ask of both tokens' books now, at their timestamps.
    fn tops(&mut self, idx: u32) -> [Top; 2] {
        let m = &self.markets[idx as usize];
        let top = |t: &TruthBook| {
            let (bid, ask) = truth_top(t);
            Top { hash: t.digest(t.timestamp_ms), bid, ask }
        };
        [top(&m.truth[0]), top(&m.truth[1])]
    }

    /// Order events with runs on: a run of one or more changes at one timestamp for `idx`
    /// (every entry carrying the state after the run), maybe followed at the same timestamp by
    /// runs of other markets (a cascade); an entry now and then carries a state up to three
    /// changes later, and those changes follow, one frame each.
    fn order_shaped(&mut self, idx: u32, out: &mut Vec<SimFrame>) {
        let sh = self.cfg.real_shape;
        let ts = self.ts_for(idx);
        let mut part_markets = vec![idx];
        let cascade_max = u64::from(sh.cascade_markets_max);
        if sh.bursts && cascade_max > 1 && self.shape_rng.chance(u64::from(sh.cascade_permille)) {
            let want = self.shape_rng.range(2, cascade_max) as usize;
            for _ in 0..want * 4 {
                if part_markets.len() >= want {
                    break;
                }
                let i = self.shape_rng.below(self.active.len() as u64) as usize;
                let Some(&m) = self.active.get(i) else { break };
                // One timestamp for the whole cascade, so markets that already used it sit out.
                if part_markets.contains(&m) || self.markets[m as usize].last_ts >= ts {
                    continue;
                }
                self.markets[m as usize].last_ts = ts;
                part_markets.push(m);
            }
        }
        let mut parts = Vec::with_capacity(part_markets.len());
        for (j, &m) in part_markets.iter().enumerate() {
            // The first market's run is rare; the others are in a cascade, which is a run.
            let len = if j > 0 {
                1 + skewed(&mut self.shape_rng, u64::from(sh.run_len_max).saturating_sub(1))
            } else if sh.bursts && self.shape_rng.chance(u64::from(sh.run_permille)) {
                2 + skewed(&mut self.shape_rng, u64::from(sh.run_len_max).saturating_sub(2))
            } else {
                1
            };
            if let Some(part) = self.gen_part(m, ts, len) {
                parts.push(part);
            }
        }
        if parts.len() > 1 {
            self.shape_counters.cascades += 1;
        }
        for part in &parts {
            self.write_part(part, out);
        }
        for part in &parts {
            for (c, ts, tops) in &part.follow {
                let text = self.shaped_frame(part.idx, *ts, &[(*c, *tops, [0, 0])]);
                out.push(SimFrame::market(part.idx, text));
            }
        }
    }

    /// Generates one market's part of a run (and the changes its hashes run ahead to).
    fn gen_part(&mut self, idx: u32, ts: u64, len: u64) -> Option<RunPart> {
        let sh = self.cfg.real_shape;
        let mut changes = Vec::with_capacity(len as usize);
        let requote_at = (len >= 2 && self.shape_rng.chance(u64::from(sh.crossed_permille)))
            .then(|| self.shape_rng.below(len - 1));
        let mut k = 0;
        while k < len {
            if requote_at == Some(k) {
                if let Some(pair) = self.gen_requote(idx) {
                    changes.extend(pair);
                    self.shape_counters.crossed_runs += 1;
                    k += 2;
                    continue;
                }
            }
            changes.extend(self.gen_order(idx));
            k += 1;
        }
        if changes.is_empty() {
            return None;
        }
        self.markets[idx as usize].stamp(ts);
        let end = self.tops(idx);
        let ahead_pm = u64::from(sh.ahead_permille);
        let mut ahead = vec![[0u8; 2]; changes.len()];
        let mut ahead_max = 0;
        if ahead_pm > 0 {
            for a in ahead.iter_mut().flatten() {
                if self.shape_rng.chance(ahead_pm) {
                    *a = self.shape_rng.range(1, AHEAD_MAX) as u8;
                    ahead_max = ahead_max.max(*a);
                }
            }
        }
        let mut follow = Vec::with_capacity(usize::from(ahead_max));
        for _ in 0..ahead_max {
            let ts = self.ts_for(idx);
            let Some(c) = self.gen_order(idx) else { break };
            self.markets[idx as usize].stamp(ts);
            follow.push((c, ts, self.tops(idx)));
        }
        // An entry cannot be ahead of changes that did not happen.
        let n = follow.len() as u8;
        for a in ahead.iter_mut().flatten() {
            *a = (*a).min(n);
        }
        if changes.len() >= 2 {
            self.shape_counters.runs += 1;
        }
        Some(RunPart { idx, ts, changes, end, ahead, follow })
    }

    /// Writes a run part as one or more frames at its timestamp.
    fn write_part(&mut self, part: &RunPart, out: &mut Vec<SimFrame>) {
        let per_frame_max = u64::from(self.cfg.real_shape.frame_events_max.max(1));
        let mut at = 0;
        let mut frames_n = 0;
        while at < part.changes.len() {
            let left = (part.changes.len() - at) as u64;
            let take = 1 + self.shape_rng.below(per_frame_max.min(left)) as usize;
            let items: Vec<(Change, [Top; 2], [u8; 2])> = (at..at + take)
                .map(|i| {
                    let a = part.ahead[i];
                    let pick = |o: usize| match a[o] {
                        0 => part.end[o],
                        k => part.follow[usize::from(k) - 1].2[o],
                    };
                    (part.changes[i], [pick(0), pick(1)], a)
                })
                .collect();
            let text = self.shaped_frame(part.idx, part.ts, &items);
            out.push(SimFrame::market(part.idx, text));
            at += take;
            frames_n += 1;
        }
        if frames_n > 1 {
            self.shape_counters.multi_frame_runs += 1;
        }
    }

    /// A `price_change` at `ts` whose entries carry the given states (per token) instead of
    /// the book's current one.
    fn shaped_frame(&mut self, idx: u32, ts: u64, items: &[(Change, [Top; 2], [u8; 2])]) -> String {
        let m = &self.markets[idx as usize];
        let mut entries = Vec::with_capacity(items.len() * 2);
        for (c, tops, ahead) in items {
            for k in 0..2 {
                let o = (c.first + k) % 2;
                let (side, price) =
                    if o == 0 { (c.side, c.price) } else { mirror(c.side, c.price) };
                let top = tops[o];
                if ahead[o] > 0 {
                    self.shape_counters.ahead_entries += 1;
                }
                entries.push(EntryOut {
                    asset_id: m.tokens[o].as_str(),
                    price,
                    size: c.size,
                    side,
                    hash: top.hash,
                    best_bid: top.bid,
                    best_ask: top.ask,
                });
            }
        }
        self.shape_counters.entries += entries.len() as u64;
        let mut text = String::with_capacity(128 + entries.len() * 260);
        frames::price_change(&mut text, m.condition_id.as_str(), &entries, ts);
        text
    }

    /// A taker hits the top of book: `price_change`, a `book` per token, then
    /// `last_trade_price` (the venue hashes the trade price before it announces it), then
    /// `best_bid_ask` per token for custom-feature connections.
    pub fn trade(&mut self, idx: u32, out: &mut Vec<SimFrame>) {
        let taker_buys = self.rng.chance(500);
        let qty = self.lot();
        let report_on = self.rng.below(2) as usize;
        let tx = format!("0x{}", self.rng.hex(64));
        let m = &self.markets[idx as usize];
        // Token 0's resting level that the taker hits.
        let maker_side = if taker_buys { Side::Sell } else { Side::Buy };
        let Some(level) = (match maker_side {
            Side::Sell => m.books[0].best_ask(),
            Side::Buy => m.books[0].best_bid(),
        }) else {
            return self.order(idx, out);
        };
        let now = self.ts_for(idx);
        let m = &mut self.markets[idx as usize];
        let filled = Size::from_units(qty.units().min(level.size.units()));
        let left = Size::from_units(level.size.units() - filled.units());
        set_pair(&mut m.books, &mut m.truth, maker_side, level.price, left);
        let (side_on_report, price_on_report) = if report_on == 0 {
            (if taker_buys { Side::Buy } else { Side::Sell }, level.price)
        } else {
            (
                if taker_buys { Side::Sell } else { Side::Buy },
                level.price.complement().unwrap_or(Price::ZERO),
            )
        };
        // One last trade price per market, both tokens hashing it as printed (real REST books:
        // a YES token at 0.004 hashes "0.996", a trade printed on NO).
        m.ltp = LtpText::from_price(price_on_report);
        m.stamp(now);
        for b in &mut m.books {
            b.set_hash_ltp(Some(m.ltp));
        }
        let ltp_truth = ltp_text(u64::from(price_on_report.units()));
        for t in &mut m.truth {
            t.last_trade_price.clone_from(&ltp_truth);
        }
        m.books[report_on].set_last_trade(LastTrade {
            price: price_on_report,
            size: filled,
            side: side_on_report,
            timestamp_ms: now,
        });
        m.truth[report_on].last_trade = Some(TruthTrade {
            price: u64::from(price_on_report.units()),
            size: filled.units(),
            buy: side_on_report == Side::Buy,
        });
        let text = if self.cfg.real_shape.runs() {
            let c = Change { side: maker_side, price: level.price, size: left, first: report_on };
            let tops = self.tops(idx);
            self.shaped_frame(idx, now, &[(c, tops, [0, 0])])
        } else {
            self.entries_frame(idx, &[(maker_side, level.price)], report_on)
        };
        out.push(SimFrame::market(idx, text));
        // Trade events are per token on the venue; a price_change is per market.
        let per_token = self.cfg.real_shape.ltp_from_other_token;
        let only = |o: usize| per_token.then_some(o as u8);
        let m = &self.markets[idx as usize];
        for (o, t) in m.truth.iter().enumerate() {
            let mut text = String::with_capacity(2048);
            frames::book_after_trade(&mut text, t, t.digest(t.timestamp_ms));
            out.push(SimFrame { token: only(o), ..SimFrame::market(idx, text) });
        }
        let mut text = String::with_capacity(400);
        frames::last_trade_price(
            &mut text,
            m.condition_id.as_str(),
            m.tokens[report_on].as_str(),
            price_on_report,
            filled,
            side_on_report,
            now,
            &tx,
        );
        out.push(SimFrame { token: only(report_on), ..SimFrame::market(idx, text) });
        for (o, t) in m.truth.iter().enumerate() {
            let mut text = String::with_capacity(300);
            frames::best_bid_ask(&mut text, t, now);
            out.push(SimFrame { custom: true, token: only(o), ..SimFrame::market(idx, text) });
        }
    }

    /// Near the edges (best price < 0.04 or > 0.96) a 0.01 tick becomes 0.001, on both
    /// tokens, one frame each. Returns false if the market is not near an edge.
    pub fn tick_size_change(&mut self, idx: u32, out: &mut Vec<SimFrame>) -> bool {
        let m = &self.markets[idx as usize];
        let old = m.tick();
        let (bid, ask) = frames::top_of_book(&m.books[0]);
        let near_edge = (bid.units() > 0 && bid.units() < 40_000)
            || (ask.units() > 960_000 && ask != Price::ONE);
        if old.units() != TICKS[0] || !near_edge {
            return false;
        }
        let now = self.ts_for(idx);
        let per_token = self.cfg.real_shape.ltp_from_other_token;
        let m = &mut self.markets[idx as usize];
        let new = Price::from_units(TICKS[1]);
        let new_text = text_of(u64::from(new.units()));
        m.stamp(now);
        for (o, (b, t)) in m.books.iter_mut().zip(&mut m.truth).enumerate() {
            b.set_tick_size(new);
            let old_text = std::mem::replace(&mut t.tick_size, new_text.clone());
            let mut text = String::with_capacity(300);
            frames::tick_size_change(&mut text, t, &old_text, &new_text, now);
            // Like trade events, a token's tick change is announced to that token's
            // subscribers only; each token's event comes before any price on its new grid.
            out.push(SimFrame {
                token: per_token.then_some(o as u8),
                ..SimFrame::market(idx, text)
            });
        }
        true
    }

    /// Settles a market: every level goes to zero (one `price_change` per level, as the
    /// venue's burst does; with bursts on, all at one timestamp carrying the final, empty
    /// state), then `market_resolved` for custom-feature connections.
    pub fn resolve(&mut self, idx: u32, out: &mut Vec<SimFrame>) {
        let winner = self.rng.below(2) as u8;
        let first = self.rng.below(2) as usize;
        let now = self.ts_for(idx);
        let m = &self.markets[idx as usize];
        let mut levels: Vec<(Side, Price)> = Vec::new();
        levels.extend(m.books[0].bids().iter().map(|l| (Side::Buy, l.price)));
        levels.extend(m.books[0].asks().iter().map(|l| (Side::Sell, l.price)));
        if self.cfg.real_shape.bursts {
            let m = &mut self.markets[idx as usize];
            for &(side, price) in &levels {
                set_pair(&mut m.books, &mut m.truth, side, price, Size::ZERO);
            }
            m.stamp(now);
            let tops = self.tops(idx);
            for &(side, price) in &levels {
                let c = Change { side, price, size: Size::ZERO, first };
                let text = self.shaped_frame(idx, now, &[(c, tops, [0, 0])]);
                out.push(SimFrame::market(idx, text));
            }
        } else {
            for (side, price) in levels {
                let m = &mut self.markets[idx as usize];
                set_pair(&mut m.books, &mut m.truth, side, price, Size::ZERO);
                m.stamp(now);
                let text = self.entries_frame(idx, &[(side, price)], first);
                out.push(SimFrame::market(idx, text));
            }
        }
        let m = &mut self.markets[idx as usize];
        m.state = MarketState::Resolved { winner, at_ms: now };
        for b in &mut m.books {
            b.set_status(BookStatus::Resolved);
        }
        for t in &mut m.truth {
            t.resolved = true;
        }
        let pos = m.active_pos;
        let mut text = String::with_capacity(400);
        frames::market_resolved(
            &mut text,
            &m.gamma_id.to_string(),
            m.condition_id.as_str(),
            [m.tokens[0].as_str(), m.tokens[1].as_str()],
            usize::from(winner),
            m.outcomes,
            now,
        );
        out.push(SimFrame { custom: true, ..SimFrame::market(idx, text) });
        self.active.swap_remove(pos);
        if let Some(&moved) = self.active.get(pos) {
            self.markets[moved as usize].active_pos = pos;
        }
    }

    /// Lists a new market (Gamma sees it at once) and announces it with `new_market`.
    pub fn create_market(&mut self, out: &mut Vec<SimFrame>) -> u32 {
        let idx = self.add_market(self.cfg.real_shape.ltp_empty_until_first_trade);
        let m = &self.markets[idx as usize];
        let id = m.gamma_id.to_string();
        let mut text = String::with_capacity(800);
        frames::new_market(
            &mut text,
            &NewMarketOut {
                id: &id,
                question: &m.question,
                market: m.condition_id.as_str(),
                slug: &m.slug,
                tokens: [m.tokens[0].as_str(), m.tokens[1].as_str()],
                outcomes: m.outcomes,
                tick: m.tick_text(),
                ts: self.now_ms,
            },
        );
        out.push(SimFrame { custom: true, broadcast: true, ..SimFrame::market(idx, text) });
        idx
    }
}

/// Uniform in `0..=x` for `x` uniform in `0..max`: mostly short, now and then up to `max - 1`.
fn skewed(rng: &mut Rng, max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let x = rng.below(max);
    rng.below(x + 1)
}

/// The book as a snapshot taken a moment too early shows it: the deepest level of its longer
/// side missing, at an older size, or a level just below it not yet removed. Deep levels are
/// the ones later orders are least likely to touch, so the stream leaves the error in place.
fn stale_copy(b: &TruthBook, rng: &mut Rng) -> Option<TruthBook> {
    let buy = b.bids.len() >= b.asks.len();
    let side = if buy { &b.bids } else { &b.asks };
    // The worst level is the first in wire order: the lowest bid, the highest ask.
    let (&worst, &worst_size) = if buy { side.iter().next()? } else { side.iter().next_back()? };
    let tick = units_of(&b.tick_size)?;
    let lot = rng.range(100, 50_000) * 10_000;
    let mut s = b.clone();
    let beyond = if buy {
        worst.checked_sub(tick).filter(|p| *p > 0)
    } else {
        Some(worst + tick).filter(|p| *p < SCALE)
    };
    match (rng.below(3), beyond) {
        (0, _) if side.len() >= 2 => s.set(buy, worst, 0),
        (1, Some(p)) => s.set(buy, p, lot),
        _ => s.set(buy, worst, worst_size + lot),
    };
    Some(s)
}

/// Best bid and ask of a truth book with the venue's empty-side sentinels.
fn truth_top(t: &TruthBook) -> (Price, Price) {
    let (bid, ask) = t.top_or_sentinels();
    let price = |u: u64| Price::from_units(u32::try_from(u).unwrap_or(u32::MAX));
    (price(bid), price(ask))
}

/// The same order seen from the other outcome token: opposite side at 1 - p.
pub fn mirror(side: Side, price: Price) -> (Side, Price) {
    (side.opposite(), price.complement().unwrap_or(Price::ZERO))
}

/// Sets a level on token 0 and its mirror on token 1, in both implementations.
fn set_pair(
    books: &mut [Book; 2],
    truth: &mut [TruthBook; 2],
    side: Side,
    price: Price,
    size: Size,
) {
    books[0].set_level(side, price, size);
    let (s1, p1) = mirror(side, price);
    books[1].set_level(s1, p1, size);
    truth[0].set(side == Side::Buy, u64::from(price.units()), size.units());
    truth[1].set(s1 == Side::Buy, u64::from(p1.units()), size.units());
}

/// Token 1's book must be token 0's mirror image.
pub fn is_mirrored(a: &Book, b: &Book) -> bool {
    let flip = |ls: &[Level]| -> Vec<Level> {
        ls.iter().map(|l| Level::new(l.price.complement().unwrap_or(Price::ZERO), l.size)).collect()
    };
    flip(a.bids()) == b.asks() && flip(a.asks()) == b.bids()
}
