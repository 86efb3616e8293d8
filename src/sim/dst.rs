//! Deterministic simulation: the real core state machines (each shard's [`ConnGroup`] with
//! its store) against the simulated venue ([`Venue`]) in virtual time, with seeded faults,
//! checking invariants after every event and every book against the independent truth at
//! rest. One seed is one exact run: a failure names its seed, and
//! `cargo run -p polybook --example dst -- --seed N --trace` repeats it event for event.
//!
//! The network is a queue of timed events: sockets open after a seeded latency (or are
//! refused), frames travel each way in order per socket, a venue-side drop reaches the
//! engine after the frames sent before it. A small control loop plays the control shard:
//! discovery from the venue's listing, resolutions untracked after a grace period, markets
//! closed at random (often one whose slot is mid-recycle), and recycles chosen by
//! `policy::recycle_candidates` within `recycle_concurrent_max`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use super::model::{SimConfig, SimExchange};
use super::rng::Rng;
use super::shape::RealShape;
use super::truth::TruthBook;
use super::venue::Venue;
use crate::book::Side;
use crate::book::{Book, BookStatus, TokenMeta};
use crate::conn::{Action, ConnConfig, ConnGroup};
use crate::ids::{ConnId, MarketId, ShardId, SocketId};
use crate::market::MarketSpec;
use crate::policy::{recycle_candidates, Backoff, ConnView, RecycleLimits};
use crate::store::{NoSink, StoreConfig};

/// The shape of the simulated runs.
#[derive(Debug, Clone)]
pub struct DstConfig {
    pub markets: usize,
    /// Virtual time with faults, then at rest (ms).
    pub fault_ms: u64,
    pub rest_ms: u64,
    /// Mean time between venue events (ms).
    pub step_every_ms: u64,
    pub recycle_concurrent_max: usize,
}

impl Default for DstConfig {
    fn default() -> Self {
        DstConfig {
            markets: 12,
            fault_ms: 20_000,
            rest_ms: 14_000,
            step_every_ms: 10,
            recycle_concurrent_max: 2,
        }
    }
}

/// What one run did.
#[derive(Debug, Clone, Default)]
pub struct DstReport {
    pub seed: u64,
    pub shards: usize,
    pub dynamic: bool,
    pub events: u64,
    pub frames_to_engine: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub recycles_started: u64,
    pub recycles_completed: u64,
    pub recycles_failed: u64,
    pub untracked_mid_recycle: u64,
    pub resyncs: u64,
    pub reconnects: u64,
    pub books_checked: usize,
    /// FNV-1a of the whole event trace: equal digests, identical runs.
    pub digest: u64,
}

/// A broken invariant, with where it broke and the events before it.
#[derive(Debug, Clone)]
pub struct DstFailure {
    pub seed: u64,
    pub at_ms: u64,
    pub event: u64,
    pub what: String,
    pub trace: Vec<String>,
}

impl fmt::Display for DstFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {}: {} (t={} ms, event {})",
            self.seed, self.what, self.at_ms, self.event
        )?;
        writeln!(f, "replay: cargo run -p polybook --example dst -- --seed {} --trace", self.seed)?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

#[derive(Debug)]
enum Ev {
    VenueStep,
    Tick(usize),
    OpenDone { shard: usize, socket: SocketId, ok: bool },
    ToVenue { socket: SocketId, text: String },
    ToEngine { shard: usize, socket: SocketId, text: String },
    Closed { shard: usize, socket: SocketId },
    Fault,
    Control,
    Recheck,
}

struct World {
    seed: u64,
    cfg: DstConfig,
    now: u64,
    start: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    venue: Venue,
    groups: Vec<ConnGroup>,
    tick_at: Vec<u64>,
    /// Per socket: the time of the last frame scheduled each way (frames keep their order).
    to_engine_at: BTreeMap<SocketId, u64>,
    to_venue_at: BTreeMap<SocketId, u64>,
    shard_of_socket: BTreeMap<SocketId, usize>,
    rng: Rng,
    tracked: BTreeMap<MarketId, usize>,
    closed: BTreeSet<MarketId>,
    resolved_at: BTreeMap<MarketId, u64>,
    refuse_until: u64,
    faults_on: bool,
    dynamic: bool,
    last_discovery: u64,
    trace: VecDeque<String>,
    keep_trace: bool,
    full_trace: Vec<String>,
    report: DstReport,
}

const TRACE_TAIL: usize = 60;

impl World {
    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    fn note(&mut self, line: String) {
        for b in line.bytes() {
            self.report.digest ^= u64::from(b);
            self.report.digest = self.report.digest.wrapping_mul(0x0000_0100_0000_01b3);
        }
        if self.keep_trace {
            self.full_trace.push(format!("{:>7} {line}", self.now - self.start));
        }
        if self.trace.len() == TRACE_TAIL {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>7} {line}", self.now - self.start));
    }

    fn fail(&self, what: String) -> DstFailure {
        DstFailure {
            seed: self.seed,
            at_ms: self.now - self.start,
            event: self.report.events,
            what,
            trace: if self.keep_trace {
                self.full_trace.clone()
            } else {
                self.trace.iter().cloned().collect()
            },
        }
    }

    fn spec(&self, idx: u32) -> Option<MarketSpec> {
        let m = self.venue.ex.market(idx)?;
        Some(MarketSpec {
            market: m.condition_id.clone(),
            tokens: m.tokens.to_vec(),
            meta: TokenMeta {
                tick_size: Some(m.tick()),
                min_order_size: Some(m.min_order_size()),
                neg_risk: Some(m.neg_risk),
            },
        })
    }

    /// Carries out one group's actions on the simulated network.
    fn carry(&mut self, shard: usize, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Open { conn, socket } => {
                    let ok =
                        self.now >= self.refuse_until && !(self.faults_on && self.rng.chance(20));
                    let t = self.now + self.rng.range(1, 40);
                    self.note(format!(
                        "s{shard} open {conn} as {socket} -> {}",
                        if ok { "ok" } else { "refused" }
                    ));
                    self.shard_of_socket.insert(socket, shard);
                    self.at(t, Ev::OpenDone { shard, socket, ok });
                }
                Action::Send { socket, frames } => {
                    let t = (self.now + self.rng.range(0, 5))
                        .max(self.to_venue_at.get(&socket).copied().unwrap_or(0));
                    self.to_venue_at.insert(socket, t);
                    for text in frames {
                        self.at(t, Ev::ToVenue { socket, text });
                    }
                }
                Action::Close { socket } => {
                    self.note(format!("s{shard} close {socket}"));
                    self.venue.disconnect(u64::from(socket.0));
                }
                Action::Resolved(m) => {
                    self.note(format!("s{shard} resolved {}", short(m.as_str())));
                    self.resolved_at.entry(m).or_insert(self.now);
                }
                Action::NewMarkets(_) => {}
                Action::Note(n) => self.note(format!("s{shard} {n:?}")),
            }
        }
        self.schedule_tick(shard);
    }

    fn schedule_tick(&mut self, shard: usize) {
        let wake = self.groups[shard].next_wake().max(self.now);
        if wake < self.tick_at[shard] || self.tick_at[shard] <= self.now {
            self.tick_at[shard] = wake;
            self.at(wake, Ev::Tick(shard));
        }
    }

    /// Moves every frame the venue queued onto the wire towards the engine.
    fn flush_venue(&mut self) {
        let ids: Vec<u64> = self
            .venue
            .conns
            .iter()
            .filter(|(_, c)| !c.queue.is_empty())
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            let socket = SocketId(id as u32);
            let Some(&shard) = self.shard_of_socket.get(&socket) else { continue };
            let frames: Vec<String> = self
                .venue
                .conns
                .get_mut(&id)
                .map(|c| c.queue.drain(..).collect())
                .unwrap_or_default();
            let t = (self.now + self.rng.range(1, 6))
                .max(self.to_engine_at.get(&socket).copied().unwrap_or(0));
            self.to_engine_at.insert(socket, t);
            for text in frames {
                self.at(t, Ev::ToEngine { shard, socket, text });
            }
        }
    }

    fn run_event(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::VenueStep => {
                let kind = self.venue.step(now);
                self.note(format!("venue {kind:?}"));
                self.flush_venue();
                // The venue goes quiet 2 s before the end: every frame is delivered and every claim
                // judged, and no socket is silent for `stale_after_ms` yet.
                let active = now + 2_000 < self.start + self.cfg.fault_ms + self.cfg.rest_ms;
                if active {
                    let gap = self.rng.range(1, 2 * self.cfg.step_every_ms);
                    self.at(now + gap, Ev::VenueStep);
                }
            }
            Ev::Tick(shard) => {
                if self.tick_at[shard] == now {
                    self.tick_at[shard] = 0;
                }
                let mut out = Vec::new();
                self.groups[shard].tick(now, &mut NoSink, &mut out);
                self.carry(shard, out);
            }
            Ev::OpenDone { shard, socket, ok } => {
                let mut out = Vec::new();
                if ok {
                    self.venue.connect(u64::from(socket.0));
                    self.groups[shard].opened(socket, now, &mut NoSink, &mut out);
                } else {
                    self.groups[shard].open_failed(socket, now, &mut out);
                }
                self.carry(shard, out);
            }
            Ev::ToVenue { socket, text } => {
                self.venue.client_text(u64::from(socket.0), &text, now);
                self.flush_venue();
            }
            Ev::ToEngine { shard, socket, text } => {
                self.report.frames_to_engine += 1;
                let mut out = Vec::new();
                self.groups[shard].frame(socket, &text, now * 1_000_000, &mut NoSink, &mut out);
                self.carry(shard, out);
            }
            Ev::Closed { shard, socket } => {
                self.note(format!("s{shard} sees {socket} closed"));
                let mut out = Vec::new();
                self.groups[shard].closed(socket, now, &mut NoSink, &mut out);
                self.carry(shard, out);
            }
            Ev::Fault => {
                if !self.faults_on {
                    return;
                }
                self.fault();
                if now + 1 < self.start + self.cfg.fault_ms {
                    let gap = self.rng.range(100, 1_500);
                    self.at(now + gap, Ev::Fault);
                }
            }
            Ev::Control => {
                self.control();
                self.at(now + 250, Ev::Control);
            }
            Ev::Recheck => {
                // Every active market changes once more, so every book carries a fresh claim:
                // a book a fault left wrong is detected and repaired before the final check.
                let idx: Vec<u32> = self.tracked_active();
                for i in idx {
                    self.venue.order(i, now);
                }
                self.note("recheck orders".into());
                self.flush_venue();
            }
        }
    }

    fn tracked_active(&self) -> Vec<u32> {
        self.tracked
            .keys()
            .filter_map(|m| self.venue.ex.market_index(m.as_str()))
            .filter(|&i| self.venue.ex.market(i).is_some_and(|m| m.is_active()))
            .collect()
    }

    fn control(&mut self) {
        let now = self.now;
        // Discovery every 2 s: every active market the venue lists, not closed, is tracked.
        // Discovery stops 3 s before the end, so the last markets found are open at rest.
        let end = self.start + self.cfg.fault_ms + self.cfg.rest_ms;
        if now >= self.last_discovery + 2_000 && now + 3_000 < end {
            self.last_discovery = now;
            let n = self.venue.ex.markets().len() as u32;
            let mut by_shard: BTreeMap<usize, Vec<MarketSpec>> = BTreeMap::new();
            for i in 0..n {
                let Some(m) = self.venue.ex.market(i) else { continue };
                let id = m.condition_id.clone();
                if !m.is_active() || self.tracked.contains_key(&id) || self.closed.contains(&id) {
                    continue;
                }
                let shard = crate::routing::shard_for(id.as_str(), self.groups.len());
                if let Some(spec) = self.spec(i) {
                    self.tracked.insert(id, shard);
                    by_shard.entry(shard).or_default().push(spec);
                }
            }
            for (shard, specs) in by_shard {
                self.note(format!("s{shard} track {}", specs.len()));
                let mut out = Vec::new();
                self.groups[shard].track(specs, now, &mut out);
                self.carry(shard, out);
            }
        }
        // Resolved markets are untracked after a grace period.
        let due: Vec<MarketId> = self
            .resolved_at
            .iter()
            .filter(|(_, &t)| t + 1_000 <= now)
            .map(|(m, _)| m.clone())
            .collect();
        for m in due {
            self.resolved_at.remove(&m);
            self.untrack(&m, "resolved");
        }
        // The recycling policy, while faults run.
        if self.faults_on && self.rng.chance(300) {
            let limits = RecycleLimits {
                pollution_pct: 30,
                age_ms: self.rng.range(2_000, 10_000),
                min_age_ms: 1_000,
                concurrent_max: self.cfg.recycle_concurrent_max,
            };
            let mut views = Vec::new();
            for g in &self.groups {
                for c in g.snapshots(now) {
                    let open = matches!(c.state, "open" | "recycling");
                    if open {
                        views.push(ConnView {
                            id: c.id.raw(),
                            age_ms: c.age_ms,
                            pollution_pct: c.pollution_pct,
                            recycling: c.recycling,
                        });
                    }
                }
            }
            for id in recycle_candidates(&views, limits) {
                let conn = ConnId::from_raw(id);
                let shard = conn.shard.index();
                let mut out = Vec::new();
                let started = self.groups[shard].recycle(conn, now, &mut out);
                self.note(format!("s{shard} policy recycle {conn}: {started}"));
                self.carry(shard, out);
            }
        }
    }

    /// Whether the slot carrying `m` on `shard` is mid-recycle.
    fn slot_recycling(&self, shard: usize, m: &MarketId) -> bool {
        let g = &self.groups[shard];
        g.slot_of_market(m.as_str())
            .and_then(|c| g.slot_state(c))
            .is_some_and(|st| st == crate::conn::SlotState::Recycling)
    }

    fn untrack(&mut self, m: &MarketId, why: &str) {
        let Some(shard) = self.tracked.remove(m) else { return };
        self.closed.insert(m.clone());
        let recycling = self.slot_recycling(shard, m);
        if recycling {
            self.report.untracked_mid_recycle += 1;
        }
        self.note(format!("s{shard} untrack {} ({why})", short(m.as_str())));
        let mut out = Vec::new();
        self.groups[shard].untrack(std::slice::from_ref(m), self.now, &mut out);
        self.carry(shard, out);
    }

    fn fault(&mut self) {
        let open: Vec<u64> = self.venue.conns.keys().copied().collect();
        let roll = self.rng.below(100);
        let pick = |w: &mut World| -> Option<u64> {
            (!open.is_empty()).then(|| open[w.rng.below(open.len() as u64) as usize])
        };
        let kind: &'static str = match roll {
            0..=14 => {
                let Some(id) = pick(self) else { return };
                self.venue.disconnect(id);
                let socket = SocketId(id as u32);
                if let Some(&shard) = self.shard_of_socket.get(&socket) {
                    let t =
                        (self.now + 1).max(self.to_engine_at.get(&socket).copied().unwrap_or(0));
                    self.at(t, Ev::Closed { shard, socket });
                }
                "drop"
            }
            15..=24 => {
                let Some(id) = pick(self) else { return };
                let until = self.now + self.rng.range(1_000, 6_000);
                if let Some(c) = self.venue.conns.get_mut(&id) {
                    c.frozen_until_ms = until;
                }
                "freeze"
            }
            25..=34 => {
                let Some(id) = pick(self) else { return };
                let until = self.now + self.rng.range(2_000, 12_000);
                if let Some(c) = self.venue.conns.get_mut(&id) {
                    c.silent_until_ms = until;
                }
                "silence"
            }
            35..=54 => {
                let Some(id) = pick(self) else { return };
                let n = self.rng.range(1, 4) as u32;
                if let Some(c) = self.venue.conns.get_mut(&id) {
                    c.skip += n;
                }
                "skip"
            }
            55..=64 => {
                let Some(id) = pick(self) else { return };
                let n = self.rng.range(1, 6) as u32;
                if let Some(c) = self.venue.conns.get_mut(&id) {
                    c.duplicate += n;
                }
                "duplicate"
            }
            65..=69 => {
                self.refuse_until = self.now + self.rng.range(200, 3_000);
                "refuse_connects"
            }
            70..=84 => {
                // An admin recycle, within the same limit control applies.
                let in_flight: usize = self.groups.iter().map(ConnGroup::recycling).sum();
                if in_flight >= self.cfg.recycle_concurrent_max {
                    return;
                }
                let shard = self.rng.below(self.groups.len() as u64) as usize;
                let conns: Vec<ConnId> =
                    self.groups[shard].snapshots(self.now).iter().map(|c| c.id).collect();
                if conns.is_empty() {
                    return;
                }
                let conn = conns[self.rng.below(conns.len() as u64) as usize];
                let mut out = Vec::new();
                let started = self.groups[shard].recycle(conn, self.now, &mut out);
                self.note(format!("s{shard} admin recycle {conn}: {started}"));
                self.carry(shard, out);
                "recycle"
            }
            85..=89 => return,
            _ => {
                // A market closes; most often one whose slot is recycling (the old crash).
                let recycling: Vec<MarketId> = self
                    .tracked
                    .iter()
                    .filter(|(m, &s)| self.slot_recycling(s, m))
                    .map(|(m, _)| m.clone())
                    .collect();
                let pool: Vec<MarketId> = if !recycling.is_empty() && self.rng.chance(700) {
                    recycling
                } else {
                    self.tracked.keys().cloned().collect()
                };
                if pool.is_empty() {
                    return;
                }
                let m = pool[self.rng.below(pool.len() as u64) as usize].clone();
                self.untrack(&m, "closed");
                "close_market"
            }
        };
        self.note(format!("fault {kind}"));
        *self.report.faults.entry(kind).or_default() += 1;
    }

    fn check(&self) -> Result<(), String> {
        for (i, g) in self.groups.iter().enumerate() {
            g.check(self.now).map_err(|e| format!("shard {i}: {e}"))?;
        }
        if self.dynamic {
            let in_flight: usize = self.groups.iter().map(ConnGroup::recycling).sum();
            if in_flight > self.cfg.recycle_concurrent_max {
                return Err(format!(
                    "{in_flight} recycles in flight, max {}",
                    self.cfg.recycle_concurrent_max
                ));
            }
        }
        if self.queue.len() > 1_000_000 {
            return Err(format!("event queue grew to {}", self.queue.len()));
        }
        // A book that says `resolved` is final: it must be the venue's (empty) book.
        for (m, &shard) in &self.tracked {
            let Some(idx) = self.venue.ex.market_index(m.as_str()) else { continue };
            let Some(market) = self.venue.ex.market(idx) else { continue };
            for o in 0..2 {
                let token = &market.tokens[o];
                let Some(book) = self.groups[shard].store().get(token.as_str()) else { continue };
                if book.status() == BookStatus::Resolved {
                    differs_from_truth(book, market.truth(o)).map_or(Ok(()), |d| {
                        Err(format!("resolved {}: {d}", short(token.as_str())))
                    })?;
                }
            }
        }
        Ok(())
    }

    /// At rest: every slot open, every tracked active book Live and equal to the truth.
    fn final_check(&mut self) -> Result<(), String> {
        for (i, g) in self.groups.iter().enumerate() {
            for c in g.snapshots(self.now) {
                if c.state != "open" {
                    return Err(format!("shard {i}: slot {} is {} at rest", c.id, c.state));
                }
            }
        }
        let mut checked = 0;
        for (m, &shard) in &self.tracked {
            let Some(idx) = self.venue.ex.market_index(m.as_str()) else { continue };
            let Some(market) = self.venue.ex.market(idx) else { continue };
            if !market.is_active() {
                continue;
            }
            for o in 0..2 {
                let token = &market.tokens[o];
                let truth = market.truth(o);
                let Some(book) = self.groups[shard].store().get(token.as_str()) else {
                    return Err(format!("{} tracked but has no book", short(token.as_str())));
                };
                if book.status() != BookStatus::Live {
                    return Err(format!(
                        "{} is {:?} at rest (feed {})",
                        short(token.as_str()),
                        book.status(),
                        book.feed()
                    ));
                }
                if let Some(d) = differs_from_truth(book, truth) {
                    return Err(format!(
                        "{} differs from the truth at rest: {d}",
                        short(token.as_str())
                    ));
                }
                checked += 1;
            }
        }
        self.report.books_checked = checked;
        Ok(())
    }
}

/// How a book's levels differ from the venue's truth, if they do.
fn differs_from_truth(book: &Book, truth: &TruthBook) -> Option<String> {
    let ours = |side: Side| -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = book
            .levels(side)
            .iter()
            .map(|l| (u64::from(l.price.units()), l.size.units()))
            .collect();
        v.sort_unstable();
        v
    };
    let (bids, asks) = (ours(Side::Buy), ours(Side::Sell));
    let tb: Vec<(u64, u64)> = truth.bids.iter().map(|(&p, &s)| (p, s)).collect();
    let ta: Vec<(u64, u64)> = truth.asks.iter().map(|(&p, &s)| (p, s)).collect();
    (bids != tb || asks != ta).then(|| format!("bids {bids:?} vs {tb:?}, asks {asks:?} vs {ta:?}"))
}

fn short(id: &str) -> &str {
    &id[..id.len().min(10)]
}

/// Runs one seed; `trace`: keep every event (for `--trace`), not only the tail.
pub fn run(
    seed: u64,
    cfg: &DstConfig,
    trace: bool,
) -> Result<(DstReport, Vec<String>), DstFailure> {
    let mut rng = Rng::new(seed ^ 0xD57D_57D5);
    let shards = 1 + rng.below(2) as usize;
    let dynamic = rng.chance(700);
    let per_conn = [4, 6, 10][rng.below(3) as usize];
    let shape = RealShape { stale_snapshot_permille: 0, ..RealShape::default() };
    let sim = SimConfig {
        seed,
        markets: cfg.markets,
        levels_per_side_max: 12,
        real_shape: shape,
        ..SimConfig::default()
    };
    let ex = SimExchange::new(sim);
    let start = ex.now_ms();
    let store = StoreConfig { auto_track: false, ..StoreConfig::default() };
    let groups: Vec<ConnGroup> = (0..shards)
        .map(|i| {
            let mut c = ConnConfig::new(ShardId(i as u16));
            c.tokens_per_conn_target = per_conn;
            c.ids_per_frame_max = 3;
            c.ping_interval_ms = 1_000;
            c.pong_timeout_ms = 3_000;
            c.data_silence_ms = 8_000;
            c.first_book_timeout_ms = 1_500;
            c.backoff = Backoff { min_ms: 50, max_ms: 2_000 };
            c.dynamic_subscribe = dynamic;
            c.handoff_timeout_ms = 3_000;
            c.open_timeout_ms = 2_000;
            c.stale_after_ms = 4_000;
            c.healthy_after_ms = 5_000;
            c.seed = seed.wrapping_mul(31).wrapping_add(i as u64);
            ConnGroup::new(c, store.clone())
        })
        .collect();
    let mut w = World {
        seed,
        cfg: cfg.clone(),
        now: start,
        start,
        seq: 0,
        queue: BTreeMap::new(),
        venue: Venue::new(ex),
        tick_at: vec![0; shards],
        groups,
        to_engine_at: BTreeMap::new(),
        to_venue_at: BTreeMap::new(),
        shard_of_socket: BTreeMap::new(),
        rng,
        tracked: BTreeMap::new(),
        closed: BTreeSet::new(),
        resolved_at: BTreeMap::new(),
        refuse_until: 0,
        faults_on: true,
        dynamic,
        last_discovery: 0,
        trace: VecDeque::new(),
        keep_trace: trace,
        full_trace: Vec::new(),
        report: DstReport {
            seed,
            shards,
            dynamic,
            digest: 0xcbf2_9ce4_8422_2325,
            ..DstReport::default()
        },
    };
    w.venue.skip_dumps = dynamic;
    w.note(format!(
        "seed {seed}: {shards} shard(s), dynamic {dynamic}, {per_conn} tokens per slot"
    ));
    let fault_end = start + cfg.fault_ms;
    let end = fault_end + cfg.rest_ms;
    w.at(start, Ev::Control);
    w.at(start + 10, Ev::VenueStep);
    w.at(start + 500, Ev::Fault);
    w.at(fault_end + cfg.rest_ms / 3, Ev::Recheck);
    w.at(fault_end + cfg.rest_ms / 2, Ev::Recheck);
    while let Some((&(t, s), _)) = w.queue.iter().next() {
        if t > end {
            break;
        }
        let Some(ev) = w.queue.remove(&(t, s)) else { break };
        w.now = t;
        if w.faults_on && t >= fault_end {
            // Faults end: connections behave again, nothing is refused.
            w.faults_on = false;
            w.refuse_until = 0;
            for c in w.venue.conns.values_mut() {
                c.frozen_until_ms = 0;
                c.silent_until_ms = 0;
                c.skip = 0;
                c.duplicate = 0;
            }
            w.note("faults end".into());
        }
        w.report.events += 1;
        w.run_event(ev);
        w.check().map_err(|e| w.fail(e))?;
    }
    w.now = end;
    w.final_check().map_err(|e| w.fail(e))?;
    for g in &w.groups {
        let c = g.counters();
        w.report.recycles_started += c.recycles_started;
        w.report.recycles_completed += c.recycles_completed;
        w.report.recycles_failed += c.recycles_failed;
        w.report.resyncs += c.resyncs + c.resyncs_connection_lost + c.resyncs_after_silence;
        w.report.reconnects += c.reconnects;
    }
    Ok((w.report, w.full_trace))
}
