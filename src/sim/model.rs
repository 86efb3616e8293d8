//! The simulated exchange's state and event generator.

use hashbrown::HashMap;

use super::frames::{self, EntryOut, NewMarketOut};
use super::rng::Rng;
use crate::book::hash::book_hash;
use crate::book::{Book, BookStatus, LastTrade, LtpText, TokenMeta};
use crate::decimal::{Price, Size, SCALE};
use crate::ids::{MarketId, TokenId};
use crate::protocol::{Level, Side};

/// How the simulated venue starts.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub markets: usize,
    /// Venue time at start (unix ms); events carry `now_ms` given to [`SimExchange::step`].
    pub start_ms: u64,
    /// Most levels kept per side; orders beyond it cancel the worst level instead.
    pub levels_per_side_max: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig { seed: 1, markets: 100, start_ms: 1_790_000_000_000, levels_per_side_max: 40 }
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
    books: [Book; 2],
    /// The market's last trade price as the venue hashes it (one per market).
    ltp: LtpText,
    active_pos: usize,
}

impl SimMarket {
    pub fn book(&self, outcome: usize) -> &Book {
        &self.books[outcome.min(1)]
    }
    pub fn tick(&self) -> Price {
        self.books[0].tick_size().unwrap_or(Price::from_units(10_000))
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
}

const TICKS: [u32; 3] = [10_000, 1_000, 100];

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
            cfg,
        };
        for _ in 0..ex.cfg.markets {
            ex.add_market();
        }
        ex
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

    /// The venue's hash of a token's current book.
    pub fn hash_of(&mut self, token: &str) -> Option<[u8; 20]> {
        let (m, o) = self.market_of_token(token)?;
        let b = &self.markets[m as usize].books[usize::from(o)];
        book_hash(b, b.timestamp_ms(), &mut self.scratch)
    }

    /// The opening frame for a subscription: one compact array of `book`s ending in `\n`,
    /// omitting unknown and resolved tokens (`[]\n` if none).
    pub fn opening_dump<'t>(&mut self, tokens: impl IntoIterator<Item = &'t str>) -> String {
        let mut out = String::from("[");
        let mut first = true;
        for t in tokens {
            let Some((m, o)) = self.market_of_token(t) else { continue };
            let market = &self.markets[m as usize];
            if !market.is_active() {
                continue;
            }
            let b = &market.books[usize::from(o)];
            let Some(h) = book_hash(b, b.timestamp_ms(), &mut self.scratch) else { continue };
            if !first {
                out.push(',');
            }
            first = false;
            frames::opening_book(&mut out, b, h, market.ltp.as_str());
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
        let b = &market.books[usize::from(o)];
        let h = book_hash(b, b.timestamp_ms(), &mut self.scratch)?;
        let mut out = String::with_capacity(2048);
        frames::rest_book(&mut out, b, h, market.ltp.as_str());
        Some(out)
    }

    /// Generates one venue event at `now_ms`, appending its frames to `out`.
    pub fn step(&mut self, now_ms: u64, out: &mut Vec<SimFrame>) -> EventKind {
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

    fn add_market(&mut self) -> u32 {
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
                set_pair(&mut books, Side::Buy, Price::from_units((p * t) as u32), size);
            }
            let ask = mid_ticks + 1 + k;
            if ask * t < SCALE {
                let size = self.lot();
                set_pair(&mut books, Side::Sell, Price::from_units((ask * t) as u32), size);
            }
        }
        let ltp = LtpText::from_price(Price::from_units((mid_ticks * t) as u32));
        for b in &mut books {
            b.set_timestamp(ts);
            b.set_hash_ltp(Some(ltp));
            b.set_status(BookStatus::Live);
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
            ltp,
            active_pos: self.active.len(),
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

    /// A new order or a cancel on one level: one `price_change` with an entry per token.
    pub fn order(&mut self, idx: u32, out: &mut Vec<SimFrame>) {
        let now = self.now_ms;
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
                return self.order_fallback(idx, side, lot, out);
            }
            let old = b0
                .levels(side)
                .iter()
                .find(|l| l.price.units() == price)
                .map_or(0, |l| l.size.units());
            (Price::from_units(price), Size::from_units(old + lot.units()))
        };
        set_pair(&mut m.books, side, price, size);
        for b in &mut m.books {
            b.set_timestamp(now);
        }
        let text = self.entries_frame(idx, &[(side, price)], first);
        out.push(SimFrame { market: idx, text, custom: false, broadcast: false });
    }

    /// When the chosen price would cross, rest the order one tick behind the top instead.
    fn order_fallback(&mut self, idx: u32, side: Side, lot: Size, out: &mut Vec<SimFrame>) {
        let now = self.now_ms;
        let m = &mut self.markets[idx as usize];
        let t = m.tick().units();
        let b0 = &m.books[0];
        let price = match side {
            Side::Buy => b0.best_bid().map(|l| l.price.units()),
            Side::Sell => b0.best_ask().map(|l| l.price.units()),
        };
        let Some(price) = price.filter(|p| *p > t && *p + t < SCALE as u32) else { return };
        let price = Price::from_units(price);
        let old = b0.levels(side).iter().find(|l| l.price == price).map_or(Size::ZERO, |l| l.size);
        let size = Size::from_units(old.units() + lot.units());
        set_pair(&mut m.books, side, price, size);
        for b in &mut m.books {
            b.set_timestamp(now);
        }
        let text = self.entries_frame(idx, &[(side, price)], 0);
        out.push(SimFrame { market: idx, text, custom: false, broadcast: false });
    }

    /// A `price_change` for changes given on token 0; each token's entries follow its mirror.
    fn entries_frame(&mut self, idx: u32, changes: &[(Side, Price)], first: usize) -> String {
        let m = &self.markets[idx as usize];
        let mut hashes = [[0u8; 20]; 2];
        for (o, b) in m.books.iter().enumerate() {
            hashes[o] = book_hash(b, b.timestamp_ms(), &mut self.scratch).unwrap_or([0; 20]);
        }
        let mut entries = Vec::with_capacity(changes.len() * 2);
        for &(side, price) in changes {
            for k in 0..2 {
                let o = (first + k) % 2;
                let (side, price) = if o == 0 { (side, price) } else { mirror(side, price) };
                let b = &m.books[o];
                let size =
                    b.levels(side).iter().find(|l| l.price == price).map_or(Size::ZERO, |l| l.size);
                let (best_bid, best_ask) = frames::top_of_book(b);
                entries.push(EntryOut {
                    asset_id: b.token().as_str(),
                    price,
                    size,
                    side,
                    hash: hashes[o],
                    best_bid,
                    best_ask,
                });
            }
        }
        let mut text = String::with_capacity(128 + entries.len() * 260);
        frames::price_change(&mut text, m.condition_id.as_str(), &entries, self.now_ms);
        text
    }

    /// A taker hits the top of book: `price_change`, a `book` per token, then
    /// `last_trade_price` (the venue hashes the trade price before it announces it), then
    /// `best_bid_ask` per token for custom-feature connections.
    pub fn trade(&mut self, idx: u32, out: &mut Vec<SimFrame>) {
        let now = self.now_ms;
        let taker_buys = self.rng.chance(500);
        let qty = self.lot();
        let report_on = self.rng.below(2) as usize;
        let tx = format!("0x{}", self.rng.hex(64));
        let m = &mut self.markets[idx as usize];
        // Token 0's resting level that the taker hits.
        let maker_side = if taker_buys { Side::Sell } else { Side::Buy };
        let Some(level) = (match maker_side {
            Side::Sell => m.books[0].best_ask(),
            Side::Buy => m.books[0].best_bid(),
        }) else {
            return self.order(idx, out);
        };
        let filled = Size::from_units(qty.units().min(level.size.units()));
        let left = Size::from_units(level.size.units() - filled.units());
        set_pair(&mut m.books, maker_side, level.price, left);
        let (side_on_report, price_on_report) = if report_on == 0 {
            (if taker_buys { Side::Buy } else { Side::Sell }, level.price)
        } else {
            (
                if taker_buys { Side::Sell } else { Side::Buy },
                level.price.complement().unwrap_or(Price::ZERO),
            )
        };
        m.ltp = LtpText::from_price(price_on_report);
        for b in &mut m.books {
            b.set_timestamp(now);
            b.set_hash_ltp(Some(m.ltp));
        }
        m.books[report_on].set_last_trade(LastTrade {
            price: price_on_report,
            size: filled,
            side: side_on_report,
            timestamp_ms: now,
        });
        let text = self.entries_frame(idx, &[(maker_side, level.price)], report_on);
        out.push(SimFrame { market: idx, text, custom: false, broadcast: false });
        let m = &self.markets[idx as usize];
        for b in &m.books {
            let h = book_hash(b, b.timestamp_ms(), &mut self.scratch).unwrap_or([0; 20]);
            let mut text = String::with_capacity(2048);
            frames::book_after_trade(&mut text, b, h);
            out.push(SimFrame { market: idx, text, custom: false, broadcast: false });
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
        out.push(SimFrame { market: idx, text, custom: false, broadcast: false });
        for b in &m.books {
            let mut text = String::with_capacity(300);
            frames::best_bid_ask(&mut text, b, now);
            out.push(SimFrame { market: idx, text, custom: true, broadcast: false });
        }
    }

    /// Near the edges (best price < 0.04 or > 0.96) a 0.01 tick becomes 0.001, on both
    /// tokens, one frame each. Returns false if the market is not near an edge.
    pub fn tick_size_change(&mut self, idx: u32, out: &mut Vec<SimFrame>) -> bool {
        let now = self.now_ms;
        let m = &mut self.markets[idx as usize];
        let old = m.tick();
        let (bid, ask) = frames::top_of_book(&m.books[0]);
        let near_edge = (bid.units() > 0 && bid.units() < 40_000)
            || (ask.units() > 960_000 && ask != Price::ONE);
        if old.units() != TICKS[0] || !near_edge {
            return false;
        }
        let new = Price::from_units(TICKS[1]);
        for b in &mut m.books {
            b.set_tick_size(new);
            b.set_timestamp(now);
            let mut text = String::with_capacity(300);
            frames::tick_size_change(&mut text, b, old, new, now);
            out.push(SimFrame { market: idx, text, custom: false, broadcast: false });
        }
        true
    }

    /// Settles a market: every level goes to zero (one `price_change` per level, as the
    /// venue's burst does), then `market_resolved` for custom-feature connections.
    pub fn resolve(&mut self, idx: u32, out: &mut Vec<SimFrame>) {
        let now = self.now_ms;
        let winner = self.rng.below(2) as u8;
        let first = self.rng.below(2) as usize;
        let m = &self.markets[idx as usize];
        let mut levels: Vec<(Side, Price)> = Vec::new();
        levels.extend(m.books[0].bids().iter().map(|l| (Side::Buy, l.price)));
        levels.extend(m.books[0].asks().iter().map(|l| (Side::Sell, l.price)));
        for (side, price) in levels {
            let m = &mut self.markets[idx as usize];
            set_pair(&mut m.books, side, price, Size::ZERO);
            for b in &mut m.books {
                b.set_timestamp(now);
            }
            let text = self.entries_frame(idx, &[(side, price)], first);
            out.push(SimFrame { market: idx, text, custom: false, broadcast: false });
        }
        let m = &mut self.markets[idx as usize];
        m.state = MarketState::Resolved { winner, at_ms: now };
        for b in &mut m.books {
            b.set_status(BookStatus::Resolved);
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
        out.push(SimFrame { market: idx, text, custom: true, broadcast: false });
        self.active.swap_remove(pos);
        if let Some(&moved) = self.active.get(pos) {
            self.markets[moved as usize].active_pos = pos;
        }
    }

    /// Lists a new market (Gamma sees it at once) and announces it with `new_market`.
    pub fn create_market(&mut self, out: &mut Vec<SimFrame>) -> u32 {
        let idx = self.add_market();
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
                tick: m.tick(),
                ts: self.now_ms,
            },
        );
        out.push(SimFrame { market: idx, text, custom: true, broadcast: true });
        idx
    }
}

/// The same order seen from the other outcome token: opposite side at 1 - p.
pub fn mirror(side: Side, price: Price) -> (Side, Price) {
    (side.opposite(), price.complement().unwrap_or(Price::ZERO))
}

/// Sets a level on token 0 and its mirror on token 1.
fn set_pair(books: &mut [Book; 2], side: Side, price: Price, size: Size) {
    books[0].set_level(side, price, size);
    let (s1, p1) = mirror(side, price);
    books[1].set_level(s1, p1, size);
}

/// Token 1's book must be token 0's mirror image.
pub fn is_mirrored(a: &Book, b: &Book) -> bool {
    let flip = |ls: &[Level]| -> Vec<Level> {
        ls.iter().map(|l| Level::new(l.price.complement().unwrap_or(Price::ZERO), l.size)).collect()
    };
    flip(a.bids()) == b.asks() && flip(a.asks()) == b.bids()
}
