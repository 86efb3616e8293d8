//! The group's state and its event handlers (commands, sockets opening, frames, sockets
//! ending). Time-driven decisions are in `timers.rs`.

use std::collections::BTreeMap;

use hashbrown::{HashMap, HashSet};

use crate::book::{Book, BookStatus};
use crate::ids::{ConnId, MarketId, SocketId, TokenId};
use crate::market::MarketSpec;
use crate::policy::{ConnTable, Placement};
use crate::protocol::encode::{subscribe_frames, SubscribeOp};
use crate::store::{BookStore, FeedId, FrameReport, StoreConfig, UpdateSink};

use super::slot::{Handoff, Phase, Slot, SlotState, Socket};
use super::tally::StatusTally;
use super::watch::Watch;
use super::{Action, ConnConfig, ConnCounters, ConnSnapshot, Journal, Note};

/// What follows a socket's end, decided before anything changes.
enum After {
    Nothing,
    Reconnect,
    OldEndedNewOpen,
    OldEndedNewPending(SocketId),
    NewEnded(SocketId),
}

/// One data shard's books and connections; see the module docs.
pub struct ConnGroup {
    pub(super) cfg: ConnConfig,
    pub(super) store: BookStore,
    pub(super) table: ConnTable,
    pub(super) markets: HashMap<MarketId, Vec<TokenId>>,
    // Ordered maps: the order of actions must not depend on a hasher's seed, so a run
    // replays exactly from its inputs.
    pub(super) slots: BTreeMap<ConnId, Slot>,
    pub(super) sockets: BTreeMap<SocketId, Socket>,
    /// Sockets asked for and not yet opened: their slot and when to give up.
    pub(super) pending: BTreeMap<SocketId, (ConnId, u64)>,
    /// Books a recycle waits for, and the slot recycling.
    pub(super) handoff_of: HashMap<TokenId, ConnId>,
    pub(super) next_socket: u32,
    pub(super) rng: u64,
    pub(super) counters: ConnCounters,
    pub(super) tally: StatusTally,
    pub(super) journal: Option<Box<dyn Journal>>,
    pub(super) last_settle_ms: u64,
}

impl ConnGroup {
    pub fn new(cfg: ConnConfig, store: StoreConfig) -> ConnGroup {
        let first = ConnId { shard: cfg.shard, slot: 1 };
        ConnGroup {
            table: ConnTable::new(cfg.tokens_per_conn_target, first.raw()),
            store: BookStore::new(store),
            markets: HashMap::new(),
            slots: BTreeMap::new(),
            sockets: BTreeMap::new(),
            pending: BTreeMap::new(),
            handoff_of: HashMap::new(),
            next_socket: first.raw(),
            rng: cfg.seed | 1,
            counters: ConnCounters::default(),
            tally: StatusTally::default(),
            journal: None,
            last_settle_ms: 0,
            cfg,
        }
    }

    /// Every store call worth repeating goes to `journal` from now on (`--record`).
    pub fn set_journal(&mut self, journal: Box<dyn Journal>) {
        self.journal = Some(journal);
    }

    pub fn take_journal(&mut self) -> Option<Box<dyn Journal>> {
        self.journal.take()
    }

    pub fn config(&self) -> &ConnConfig {
        &self.cfg
    }
    pub fn store(&self) -> &BookStore {
        &self.store
    }
    pub fn counters(&self) -> &ConnCounters {
        &self.counters
    }
    pub fn tally(&self) -> &StatusTally {
        &self.tally
    }
    pub fn markets(&self) -> usize {
        self.markets.len()
    }
    pub fn slot_state(&self, conn: ConnId) -> Option<SlotState> {
        self.slots.get(&conn).map(Slot::state)
    }
    /// Slots with a recycle in flight.
    pub fn recycling(&self) -> usize {
        self.slots.values().filter(|s| s.state() == SlotState::Recycling).count()
    }
    /// The socket feeding `token`'s book, if it is open.
    pub fn owner_of(&self, token: &str) -> Option<SocketId> {
        let feed = self.store.get(token)?.feed();
        self.sockets.contains_key(&SocketId(feed)).then_some(SocketId(feed))
    }
    /// Sockets open now.
    pub fn open_sockets(&self) -> impl Iterator<Item = SocketId> + '_ {
        self.sockets.keys().copied()
    }

    /// How long the socket feeding `book` has been without a data frame (None: no socket).
    pub fn feed_silent_ms(&self, book: &Book, now_ms: u64) -> Option<u64> {
        let s = self.sockets.get(&SocketId(book.feed()))?;
        Some(now_ms.saturating_sub(s.last_data_ms))
    }

    pub(super) fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn fresh_socket(&mut self) -> SocketId {
        let id = SocketId(self.next_socket);
        self.next_socket = self.next_socket.wrapping_add(1).max(1);
        id
    }

    /// Asks the runtime for a socket for `conn`.
    pub(super) fn request_open(
        &mut self,
        conn: ConnId,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) -> SocketId {
        let socket = self.fresh_socket();
        self.pending.insert(socket, (conn, now_ms + self.cfg.open_timeout_ms));
        out.push(Action::Open { conn, socket });
        socket
    }

    /// The slot's tokens in a stable order (markets by id, tokens as the spec lists them).
    pub(super) fn tokens_of(&self, conn: ConnId) -> Vec<TokenId> {
        let mut markets = self.table.markets_of(conn.raw());
        markets.sort();
        markets.iter().filter_map(|m| self.markets.get(m.as_str())).flatten().cloned().collect()
    }

    /// The slot that carries `market`.
    pub fn slot_of_market(&self, market: &str) -> Option<ConnId> {
        self.conn_of_market(market)
    }

    fn conn_of_market(&self, market: &str) -> Option<ConnId> {
        self.table.conn_of(market).map(ConnId::from_raw)
    }

    // ---- commands ----

    /// Tracks markets: books start Seeding; new slots open sockets, open slots subscribe the
    /// new tokens (or, without dynamic subscribe, are recycled to subscribe them).
    pub fn track(&mut self, specs: Vec<MarketSpec>, now_ms: u64, out: &mut Vec<Action>) {
        let mut new_slots: Vec<ConnId> = Vec::new();
        let mut per_conn: BTreeMap<ConnId, Vec<TokenId>> = BTreeMap::new();
        for spec in specs {
            if let Some(j) = self.journal.as_mut() {
                j.track(&spec);
            }
            for t in &spec.tokens {
                if self.store.get(t.as_str()).is_none() {
                    self.tally.added(BookStatus::Seeding);
                }
                self.store.track(t.clone(), spec.market.clone(), spec.meta);
            }
            if self.markets.contains_key(spec.market.as_str()) {
                continue;
            }
            let placement = self.table.place(spec.market.clone(), spec.tokens.len());
            self.markets.insert(spec.market.clone(), spec.tokens.clone());
            match placement {
                Placement::New(id) => new_slots.push(ConnId::from_raw(id)),
                Placement::Existing(id) => {
                    per_conn.entry(ConnId::from_raw(id)).or_default().extend(spec.tokens)
                }
            }
        }
        for (conn, tokens) in per_conn {
            if new_slots.contains(&conn) {
                continue;
            }
            if self.cfg.dynamic_subscribe {
                self.subscribe_on(conn, &tokens, now_ms, out);
                continue;
            }
            // A slot still connecting or backing off opens with every token anyway.
            match self.slots.get(&conn).map(Slot::state) {
                Some(SlotState::Open) => {
                    self.recycle(conn, now_ms, out);
                }
                Some(SlotState::Recycling) => {
                    if let Some(s) = self.slots.get_mut(&conn) {
                        s.resubscribe_pending = true;
                    }
                }
                _ => {}
            }
        }
        for conn in new_slots {
            let socket = self.request_open(conn, now_ms, out);
            self.slots.insert(
                conn,
                Slot {
                    phase: Phase::Connecting { socket },
                    attempt: 0,
                    reconnects: 0,
                    created_at_ms: now_ms,
                    resubscribe_pending: false,
                    resubscribe_at_ms: None,
                },
            );
        }
    }

    /// Subscribes `tokens` on the slot's newest open socket and hands the books to it.
    fn subscribe_on(
        &mut self,
        conn: ConnId,
        tokens: &[TokenId],
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let Some(socket) = self.slots.get(&conn).and_then(Slot::newest_open) else { return };
        let Some(sock) = self.sockets.get_mut(&socket) else { return };
        for t in tokens {
            sock.awaiting.insert(t.clone(), (now_ms, 0));
            sock.subscribed.insert(t.clone());
        }
        let ids: Vec<&str> = tokens.iter().map(TokenId::as_str).collect();
        let mut frames = Vec::new();
        for part in ids.chunks(self.cfg.ids_per_frame_max.max(1)) {
            frames.extend(subscribe_frames(SubscribeOp::Subscribe, part, self.cfg.custom_features));
        }
        out.push(Action::Send { socket, frames });
        if let Some(j) = self.journal.as_mut() {
            j.assign(socket, tokens);
        }
        for t in tokens {
            self.store.assign_feed(t.as_str(), FeedId(socket.0));
        }
    }

    /// Stops tracking markets; returns the tokens whose books were dropped. A slot left
    /// without markets closes; otherwise the tokens are unsubscribed (with dynamic
    /// unsubscribe) or stay on the socket as pollution.
    pub fn untrack(
        &mut self,
        markets: &[MarketId],
        now_ms: u64,
        out: &mut Vec<Action>,
    ) -> Vec<TokenId> {
        let mut dropped = Vec::new();
        for m in markets {
            let Some(tokens) = self.markets.remove(m.as_str()) else { continue };
            if let Some(j) = self.journal.as_mut() {
                j.untrack(m, &tokens);
            }
            for t in &tokens {
                if let Some(book) = self.store.untrack(t.as_str()) {
                    self.tally.removed(t, book.status(), now_ms);
                }
                self.handoff_of.remove(t.as_str());
                dropped.push(t.clone());
            }
            let Some(conn) = self.conn_of_market(m.as_str()) else { continue };
            self.table.remove(m.as_str());
            for slot_socket in self.slot_sockets(conn) {
                if let Some(sock) = self.sockets.get_mut(&slot_socket) {
                    for t in &tokens {
                        sock.awaiting.remove(t.as_str());
                    }
                }
            }
            if let Some(Phase::Recycling(h)) = self.slots.get_mut(&conn).map(|s| &mut s.phase) {
                for t in &tokens {
                    h.remaining.remove(t.as_str());
                }
            }
            if self.table.close_if_empty(conn.raw()) {
                self.close_slot(conn, out);
                continue;
            }
            // Without dynamic unsubscribe the tokens stay on the socket: pollution, which
            // control answers with a recycle.
            if self.cfg.dynamic_subscribe {
                let ids: Vec<&str> = tokens.iter().map(TokenId::as_str).collect();
                for socket in self.slot_sockets(conn) {
                    if let Some(sock) = self.sockets.get_mut(&socket) {
                        for t in &tokens {
                            sock.subscribed.remove(t.as_str());
                        }
                        let frames = subscribe_frames(SubscribeOp::Unsubscribe, &ids, false);
                        out.push(Action::Send { socket, frames });
                    }
                }
            }
        }
        dropped
    }

    /// Every socket of a slot, open or pending.
    fn slot_sockets(&self, conn: ConnId) -> Vec<SocketId> {
        match self.slots.get(&conn).map(|s| &s.phase) {
            Some(Phase::Open { socket }) | Some(Phase::Connecting { socket }) => vec![*socket],
            Some(Phase::Recycling(h)) => vec![h.old, h.new],
            _ => Vec::new(),
        }
    }

    /// A slot without markets: its sockets close and it is forgotten (a recycle in flight
    /// simply ends; nothing is left to look at it).
    fn close_slot(&mut self, conn: ConnId, out: &mut Vec<Action>) {
        let sockets = self.slot_sockets(conn);
        if let Some(Phase::Recycling(h)) = self.slots.remove(&conn).map(|s| s.phase) {
            for t in &h.remaining {
                self.handoff_of.remove(t.as_str());
            }
            self.counters.recycles_failed += 1;
            out.push(Action::Note(Note::RecycleFailed { conn, why: "slot closed" }));
        }
        for socket in sockets {
            self.pending.remove(&socket);
            self.sockets.remove(&socket);
            out.push(Action::Close { socket });
        }
    }

    /// Starts a make-before-break recycle of an open slot; false if it cannot now (unknown,
    /// not open, or already recycling).
    pub fn recycle(&mut self, conn: ConnId, now_ms: u64, out: &mut Vec<Action>) -> bool {
        let old = match self.slots.get(&conn).map(|s| &s.phase) {
            Some(Phase::Open { socket }) => *socket,
            _ => return false,
        };
        self.counters.recycles_started += 1;
        let new = self.request_open(conn, now_ms, out);
        let deadline_ms = now_ms + self.cfg.open_timeout_ms + self.cfg.handoff_timeout_ms;
        if let Some(slot) = self.slots.get_mut(&conn) {
            slot.phase = Phase::Recycling(Handoff {
                old,
                new,
                new_open: false,
                deadline_ms,
                remaining: HashSet::new(),
            });
        }
        true
    }

    // ---- sockets ----

    /// The runtime opened `socket`: it subscribes the slot's tokens (opening frame first) and
    /// becomes the slot's socket, or the recycle's new one.
    pub fn opened<S: UpdateSink>(
        &mut self,
        socket: SocketId,
        now_ms: u64,
        sink: &mut S,
        out: &mut Vec<Action>,
    ) {
        let Some((conn, _)) = self.pending.remove(&socket) else {
            out.push(Action::Close { socket });
            return;
        };
        let role = match self.slots.get(&conn).map(|s| &s.phase) {
            Some(Phase::Connecting { socket: s }) if *s == socket => 0,
            Some(Phase::Recycling(h)) if h.new == socket && !h.new_open => 1,
            _ => 2,
        };
        if role == 2 {
            out.push(Action::Close { socket });
            return;
        }
        self.register_socket(conn, socket, now_ms, out);
        if role == 0 {
            if let Some(slot) = self.slots.get_mut(&conn) {
                slot.phase = Phase::Open { socket };
            }
            return;
        }
        let handoff_ms = self.cfg.handoff_timeout_ms;
        let movable = self.movable_tokens(conn, socket);
        for t in &movable {
            self.handoff_of.insert(t.clone(), conn);
        }
        if let Some(Phase::Recycling(h)) = self.slots.get_mut(&conn).map(|s| &mut s.phase) {
            h.new_open = true;
            h.deadline_ms = now_ms + handoff_ms;
            h.remaining = movable;
        }
        self.check_handoff(conn, now_ms, false, sink, out);
    }

    /// Books of the slot that a recycle onto `new` waits for.
    fn movable_tokens(&self, conn: ConnId, new: SocketId) -> HashSet<TokenId> {
        let old = match self.slots.get(&conn).map(|s| &s.phase) {
            Some(Phase::Recycling(h)) => h.old,
            _ => return HashSet::new(),
        };
        self.tokens_of(conn)
            .into_iter()
            .filter(|t| {
                self.store.get(t.as_str()).is_some_and(|b| {
                    b.feed() == old.0
                        && b.feed() != new.0
                        && !matches!(b.status(), BookStatus::Resolved | BookStatus::Seeding)
                })
            })
            .collect()
    }

    /// Subscribes a new socket to every token of its slot and hands the books to it.
    fn register_socket(
        &mut self,
        conn: ConnId,
        socket: SocketId,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let tokens = self.tokens_of(conn);
        if let Some(j) = self.journal.as_mut() {
            j.assign(socket, &tokens);
        }
        for t in &tokens {
            self.store.assign_feed(t.as_str(), FeedId(socket.0));
        }
        let ids: Vec<&str> = tokens.iter().map(TokenId::as_str).collect();
        let custom = self.cfg.custom_features;
        let mut frames = Vec::new();
        for (i, part) in ids.chunks(self.cfg.ids_per_frame_max.max(1)).enumerate() {
            let op = if i == 0 { SubscribeOp::Open } else { SubscribeOp::Subscribe };
            frames.extend(subscribe_frames(op, part, custom));
        }
        if frames.is_empty() {
            frames.extend(subscribe_frames(SubscribeOp::Open, &[], custom));
        }
        out.push(Action::Send { socket, frames });
        self.sockets.insert(
            socket,
            Socket {
                conn,
                opened_at_ms: now_ms,
                last_pong_ms: now_ms,
                last_data_ms: now_ms,
                next_ping_ms: now_ms,
                stale: false,
                frames: 0,
                subscribed: tokens.iter().cloned().collect(),
                awaiting: tokens.iter().map(|t| (t.clone(), (now_ms, 0))).collect(),
            },
        );
    }

    /// The runtime could not open `socket`.
    pub fn open_failed(&mut self, socket: SocketId, now_ms: u64, out: &mut Vec<Action>) {
        let Some((conn, _)) = self.pending.remove(&socket) else { return };
        self.counters.connect_failures += 1;
        self.pending_gone(conn, socket, now_ms, out);
    }

    /// A pending open of `conn` ended without a socket (failed or timed out).
    pub(super) fn pending_gone(
        &mut self,
        conn: ConnId,
        socket: SocketId,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let recycle_old = match self.slots.get(&conn).map(|s| &s.phase) {
            Some(Phase::Connecting { socket: s }) if *s == socket => None,
            Some(Phase::Recycling(h)) if h.new == socket && !h.new_open => Some(h.old),
            _ => return,
        };
        if let Some(old) = recycle_old {
            if let Some(slot) = self.slots.get_mut(&conn) {
                slot.phase = Phase::Open { socket: old };
            }
            self.recycle_ended(conn, false, 0, 0, "new socket did not open", now_ms, out);
            return;
        }
        let r = self.next_random();
        let Some(slot) = self.slots.get_mut(&conn) else { return };
        let delay = self.cfg.backoff.delay_ms(slot.attempt, r);
        slot.attempt = slot.attempt.saturating_add(1);
        slot.phase = Phase::Backoff { until_ms: now_ms + delay };
        out.push(Action::Note(Note::ConnectFailed { conn, socket, retry_in_ms: delay }));
    }

    /// Applies one text frame received on `socket` at `recv_ns` (unix ns: the store's clock
    /// and the recording's stamp). Returns the store's report, or None for PONG and for
    /// frames of sockets already closed.
    pub fn frame<S: UpdateSink>(
        &mut self,
        socket: SocketId,
        text: &str,
        recv_ns: u64,
        sink: &mut S,
        out: &mut Vec<Action>,
    ) -> Option<FrameReport> {
        let now_ms = recv_ns / 1_000_000;
        let Some(sock) = self.sockets.get_mut(&socket) else {
            self.counters.frames_after_close += 1;
            return None;
        };
        sock.frames += 1;
        self.counters.bytes += text.len() as u64;
        if text == "PONG" {
            sock.last_pong_ms = now_ms;
            return None;
        }
        sock.last_data_ms = now_ms;
        let was_stale = std::mem::take(&mut sock.stale);
        let conn = sock.conn;
        self.store.set_now_ms(now_ms);
        if was_stale {
            self.resync_stale_books(conn, socket, now_ms, sink, out);
        }
        if let Some(j) = self.journal.as_mut() {
            j.frame(recv_ns, socket, text);
        }
        let collect = !self.handoff_of.is_empty();
        let mut watch = Watch::new(sink, &mut self.tally, now_ms, collect);
        let report = self.store.apply_frame_from(FeedId(socket.0), text, &mut watch);
        let resync = std::mem::take(&mut watch.resync);
        let touched = watch.touched.take();
        if !resync.is_empty() {
            self.counters.resyncs += resync.len() as u64;
            self.resync(socket, &resync, now_ms, sink, out);
        }
        for t in touched.unwrap_or_default() {
            if let Some(&c) = self.handoff_of.get(t.as_str()) {
                self.settle_handoff_token(c, &t);
                self.check_handoff(c, now_ms, false, sink, out);
            }
        }
        Some(report)
    }

    /// A handoff stops waiting for `token` once it is on the new socket or cannot move.
    fn settle_handoff_token(&mut self, conn: ConnId, token: &TokenId) {
        let Some(Phase::Recycling(h)) = self.slots.get_mut(&conn).map(|s| &mut s.phase) else {
            self.handoff_of.remove(token.as_str());
            return;
        };
        let still = self.store.get(token.as_str()).is_some_and(|b| {
            b.feed() == h.old.0 && !matches!(b.status(), BookStatus::Resolved | BookStatus::Seeding)
        });
        if !still {
            h.remaining.remove(token.as_str());
            self.handoff_of.remove(token.as_str());
        }
    }

    /// Finishes the slot's recycle if every book moved, or if `timed_out`.
    pub(super) fn check_handoff<S: UpdateSink>(
        &mut self,
        conn: ConnId,
        now_ms: u64,
        timed_out: bool,
        sink: &mut S,
        out: &mut Vec<Action>,
    ) {
        let Some(Phase::Recycling(h)) = self.slots.get(&conn).map(|s| &s.phase) else { return };
        if !h.new_open || !(h.remaining.is_empty() || timed_out) {
            return;
        }
        let (old, new) = (h.old, h.new);
        let left = h.remaining.len() as u64;
        let leftovers: Vec<TokenId> = h.remaining.iter().cloned().collect();
        for t in leftovers {
            self.handoff_of.remove(t.as_str());
        }
        let moved = self
            .tokens_of(conn)
            .iter()
            .filter(|t| self.store.get(t.as_str()).is_some_and(|b| b.feed() == new.0))
            .count() as u64;
        if let Some(slot) = self.slots.get_mut(&conn) {
            slot.phase = Phase::Open { socket: new };
        }
        // The old socket's books not moved in time resync (they are on the new socket's
        // subscription, so its next `book` seeds them).
        self.end_socket(old, now_ms, sink, out);
        self.counters.tokens_migrated += moved;
        self.counters.handoff_timeouts += left;
        self.recycle_ended(conn, left == 0, moved, left, "handoff timed out", now_ms, out);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn recycle_ended(
        &mut self,
        conn: ConnId,
        ok: bool,
        moved: u64,
        left: u64,
        why: &'static str,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        if ok {
            self.counters.recycles_completed += 1;
            out.push(Action::Note(Note::RecycleDone { conn, moved, left }));
        } else {
            self.counters.recycles_failed += 1;
            out.push(Action::Note(Note::RecycleFailed { conn, why }));
        }
        let again =
            self.slots.get_mut(&conn).is_some_and(|s| std::mem::take(&mut s.resubscribe_pending));
        if again {
            self.recycle(conn, now_ms, out);
        } else if !ok && !self.cfg.dynamic_subscribe && self.unsubscribed_tokens(conn) {
            // Without dynamic subscribe only a recycle subscribes new markets: a failed one is
            // tried again after a backoff, or those markets would never be subscribed.
            let r = self.next_random();
            let delay = self.cfg.backoff.delay_ms(1, r);
            if let Some(slot) = self.slots.get_mut(&conn) {
                slot.resubscribe_at_ms = Some(now_ms + delay);
            }
        }
    }

    /// Whether the slot carries tokens its open socket is not subscribed to.
    pub(super) fn unsubscribed_tokens(&self, conn: ConnId) -> bool {
        let Some(socket) = self.slots.get(&conn).and_then(Slot::newest_open) else { return false };
        let Some(sock) = self.sockets.get(&socket) else { return false };
        self.tokens_of(conn).iter().any(|t| !sock.subscribed.contains(t.as_str()))
    }

    /// The socket ended on its own (venue close, error, end of stream).
    pub fn closed<S: UpdateSink>(
        &mut self,
        socket: SocketId,
        now_ms: u64,
        sink: &mut S,
        out: &mut Vec<Action>,
    ) {
        if let Some((conn, _)) = self.pending.remove(&socket) {
            self.pending_gone(conn, socket, now_ms, out);
            return;
        }
        self.end_socket(socket, now_ms, sink, out);
    }

    /// Forgets an open socket and closes it: its books resync, and the slot reconnects, or
    /// carries on with the other socket of a recycle.
    pub(super) fn end_socket<S: UpdateSink>(
        &mut self,
        socket: SocketId,
        now_ms: u64,
        sink: &mut S,
        out: &mut Vec<Action>,
    ) {
        let Some(sock) = self.sockets.remove(&socket) else { return };
        out.push(Action::Close { socket });
        let conn = sock.conn;
        let tokens = self.tokens_of(conn);
        if let Some(j) = self.journal.as_mut() {
            j.lost(socket, &tokens);
        }
        let mut watch = Watch::new(sink, &mut self.tally, now_ms, false);
        for t in &tokens {
            self.store.feed_lost(t.as_str(), FeedId(socket.0), &mut watch);
        }
        // These books resync because their socket ended, not because a check failed.
        self.counters.resyncs_connection_lost += watch.resync.len() as u64;
        drop(watch);
        let after = match self.slots.get(&conn).map(|s| &s.phase) {
            Some(Phase::Open { socket: s }) if *s == socket => After::Reconnect,
            Some(Phase::Recycling(h)) if h.old == socket && h.new_open => After::OldEndedNewOpen,
            Some(Phase::Recycling(h)) if h.old == socket => After::OldEndedNewPending(h.new),
            Some(Phase::Recycling(h)) if h.new == socket => After::NewEnded(h.old),
            _ => After::Nothing,
        };
        match after {
            After::Nothing => {}
            After::Reconnect => {
                let healthy = now_ms.saturating_sub(sock.opened_at_ms) >= self.cfg.healthy_after_ms;
                let r = self.next_random();
                let Some(slot) = self.slots.get_mut(&conn) else { return };
                if healthy {
                    slot.attempt = 0;
                }
                let delay = self.cfg.backoff.delay_ms(slot.attempt, r);
                slot.attempt = slot.attempt.saturating_add(1);
                slot.reconnects += 1;
                slot.phase = Phase::Backoff { until_ms: now_ms + delay };
                self.counters.reconnects += 1;
                out.push(Action::Note(Note::Reconnecting { conn, socket, retry_in_ms: delay }));
            }
            After::OldEndedNewOpen => {
                // The new socket holds every subscription: the books the old one lost are
                // seeded by its next `book`s. Nothing is left to wait for.
                self.clear_handoff(conn);
                self.check_handoff(conn, now_ms, false, sink, out);
            }
            After::OldEndedNewPending(new) => {
                // The pending new socket becomes the slot's reconnect.
                self.clear_handoff(conn);
                if let Some(slot) = self.slots.get_mut(&conn) {
                    slot.phase = Phase::Connecting { socket: new };
                    slot.reconnects += 1;
                }
                self.counters.reconnects += 1;
                self.recycle_ended(conn, false, 0, 0, "old socket ended first", now_ms, out);
            }
            After::NewEnded(old) => {
                self.clear_handoff(conn);
                if let Some(slot) = self.slots.get_mut(&conn) {
                    slot.phase = Phase::Open { socket: old };
                }
                self.return_to(old, &tokens, now_ms, sink, out);
                self.recycle_ended(conn, false, 0, 0, "new socket ended", now_ms, out);
            }
        }
    }

    /// Forgets what a slot's handoff waits for.
    fn clear_handoff(&mut self, conn: ConnId) {
        if let Some(Phase::Recycling(h)) = self.slots.get_mut(&conn).map(|s| &mut s.phase) {
            for t in h.remaining.drain() {
                self.handoff_of.remove(t.as_str());
            }
        }
    }

    /// A recycle's new socket died: every book it had taken (or was to seed) goes back to the
    /// old socket, which is asked for fresh snapshots. Without this they would wait for a
    /// feed that no longer exists.
    fn return_to<S: UpdateSink>(
        &mut self,
        old: SocketId,
        tokens: &[TokenId],
        now_ms: u64,
        sink: &mut S,
        out: &mut Vec<Action>,
    ) {
        let orphans: Vec<TokenId> = tokens
            .iter()
            .filter(|t| {
                self.store
                    .get(t.as_str())
                    .is_some_and(|b| b.feed() != old.0 && b.status() != BookStatus::Resolved)
            })
            .cloned()
            .collect();
        if orphans.is_empty() {
            return;
        }
        self.counters.handoff_returned += orphans.len() as u64;
        if let Some(sock) = self.sockets.get_mut(&old) {
            for t in &orphans {
                sock.subscribed.insert(t.clone());
                sock.awaiting.insert(t.clone(), (now_ms, 0));
            }
        }
        if let Some(j) = self.journal.as_mut() {
            j.assign(old, &orphans);
        }
        for t in &orphans {
            self.store.assign_feed(t.as_str(), FeedId(old.0));
        }
        self.resync(old, &orphans, now_ms, sink, out);
    }

    /// Asks the venue for fresh snapshots of `tokens` on `socket`: unsubscribe + subscribe
    /// (the venue replays nothing, but a new subscription starts with a `book`). Without
    /// dynamic subscribe the socket is reopened, which reseeds every book of the slot.
    pub(super) fn resync<S: UpdateSink>(
        &mut self,
        socket: SocketId,
        tokens: &[TokenId],
        now_ms: u64,
        sink: &mut S,
        out: &mut Vec<Action>,
    ) {
        let Some(conn) = self.sockets.get(&socket).map(|s| s.conn) else { return };
        out.push(Action::Note(Note::Resync { conn, socket, books: tokens.len() }));
        if !self.cfg.dynamic_subscribe {
            self.end_socket(socket, now_ms, sink, out);
            return;
        }
        // The fresh `book` is awaited like a first one: if it never comes (the venue lost
        // it), the redrive asks again instead of leaving the book Resyncing for good.
        if let Some(sock) = self.sockets.get_mut(&socket) {
            for t in tokens {
                sock.awaiting.insert(t.clone(), (now_ms, 0));
            }
        }
        out.push(self.resubscribe(socket, tokens));
    }

    /// Unsubscribe + subscribe `tokens` on `socket`: the venue replays nothing, but a new
    /// subscription starts with a `book` (resyncs and redrives both ask this way).
    pub(super) fn resubscribe(&self, socket: SocketId, tokens: &[TokenId]) -> Action {
        let ids: Vec<&str> = tokens.iter().map(TokenId::as_str).collect();
        let custom = self.cfg.custom_features;
        let mut frames = subscribe_frames(SubscribeOp::Unsubscribe, &ids, custom);
        frames.extend(subscribe_frames(SubscribeOp::Subscribe, &ids, custom));
        Action::Send { socket, frames }
    }

    /// Data flows again after a silence: what the silence lost is unknown (the venue replays
    /// nothing), so the books that went Stale get fresh snapshots.
    fn resync_stale_books<S: UpdateSink>(
        &mut self,
        conn: ConnId,
        socket: SocketId,
        now_ms: u64,
        sink: &mut S,
        out: &mut Vec<Action>,
    ) {
        let mut stale = self.store.stale_tokens(FeedId(socket.0));
        if stale.is_empty() {
            return;
        }
        stale.sort();
        if let Some(j) = self.journal.as_mut() {
            j.resync(&stale);
        }
        let mut watch = Watch::new(sink, &mut self.tally, now_ms, false);
        for t in &stale {
            self.store.mark_resyncing(t.as_str(), &mut watch);
        }
        let tokens = std::mem::take(&mut watch.resync);
        out.push(Action::Note(Note::StaleBooksResync { conn, socket, books: tokens.len() }));
        self.counters.resyncs_after_silence += tokens.len() as u64;
        self.resync(socket, &tokens, now_ms, sink, out);
    }

    /// Closes everything (shutdown). The books stay as they are: closing is not a venue
    /// event and must not mark them Resyncing.
    pub fn shutdown(&mut self, out: &mut Vec<Action>) {
        for socket in self.pending.keys().chain(self.sockets.keys()) {
            out.push(Action::Close { socket: *socket });
        }
        self.pending.clear();
        self.sockets.clear();
        self.slots.clear();
        self.handoff_of.clear();
        if let Some(j) = self.journal.as_mut() {
            j.flush();
        }
    }

    /// Every slot as `/stats` shows it, by id.
    pub fn snapshots(&self, now_ms: u64) -> Vec<ConnSnapshot> {
        let mut v = Vec::with_capacity(self.slots.len());
        for (&id, slot) in &self.slots {
            let tokens: HashSet<TokenId> = self.tokens_of(id).into_iter().collect();
            let open = slot.open_sockets();
            let newest = slot.newest_open().and_then(|s| self.sockets.get(&s).map(|k| (s, k)));
            let subscribed = newest.map_or(0, |(_, k)| k.subscribed.len());
            let stale = newest
                .map_or(0, |(_, k)| k.subscribed.iter().filter(|t| !tokens.contains(*t)).count());
            v.push(ConnSnapshot {
                id,
                feed: newest.map_or(0, |(s, _)| s.0),
                state: slot.state().name(),
                sockets: open.len(),
                tokens: tokens.len(),
                subscribed,
                pollution_pct: (stale * 100).checked_div(subscribed).unwrap_or(0) as u8,
                frames: open.iter().filter_map(|s| self.sockets.get(s)).map(|k| k.frames).sum(),
                reconnects: slot.reconnects,
                age_ms: newest.map_or(0, |(_, k)| now_ms.saturating_sub(k.opened_at_ms)),
                slot_age_ms: now_ms.saturating_sub(slot.created_at_ms),
                recycling: slot.state() == SlotState::Recycling,
            });
        }
        v
    }
}
