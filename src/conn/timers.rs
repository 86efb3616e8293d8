//! The group's time-driven decisions: reconnects after backoff, recycle deadlines, PING,
//! watchdog verdicts, stale books, redrives of late first books, integrity settling.

use crate::book::BookStatus;
use crate::ids::{ConnId, SocketId, TokenId};
use crate::policy::{judge, Verdict, WatchdogLimits};
use crate::store::{FeedId, UpdateSink};

use super::group::ConnGroup;
use super::slot::Phase;
use super::watch::Watch;
use super::{Action, Note};

impl ConnGroup {
    /// The earliest time [`ConnGroup::tick`] has something to do (never later than the next
    /// integrity settle).
    pub fn next_wake(&self) -> u64 {
        let c = &self.cfg;
        let mut wake = self.last_settle_ms + c.settle_every_ms;
        for slot in self.slots.values() {
            if let Some(at) = slot.resubscribe_at_ms {
                wake = wake.min(at);
            }
            match &slot.phase {
                Phase::Backoff { until_ms } => wake = wake.min(*until_ms),
                Phase::Recycling(h) => wake = wake.min(h.deadline_ms),
                _ => {}
            }
        }
        for &(_, deadline) in self.pending.values() {
            wake = wake.min(deadline);
        }
        for s in self.sockets.values() {
            let alive = s.last_pong_ms.max(s.last_data_ms);
            wake = wake
                .min(s.next_ping_ms)
                .min(alive + c.pong_timeout_ms + 1)
                .min(s.last_data_ms + c.data_silence_ms + 1);
            if !s.stale {
                wake = wake.min(s.last_data_ms + c.stale_after_ms);
            }
        }
        wake
    }

    /// Lets time pass to `now_ms`: everything due happens, in a fixed order.
    pub fn tick<S: UpdateSink>(&mut self, now_ms: u64, sink: &mut S, out: &mut Vec<Action>) {
        self.expire_pending(now_ms, out);
        self.slot_timers(now_ms, sink, out);
        let sockets: Vec<SocketId> = self.sockets.keys().copied().collect();
        for socket in sockets {
            self.socket_timers(socket, now_ms, sink, out);
        }
        if now_ms >= self.last_settle_ms + self.cfg.settle_every_ms {
            self.settle(now_ms, sink, out);
        }
        self.reports(out);
    }

    fn expire_pending(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let due: Vec<(SocketId, ConnId)> = self
            .pending
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now_ms)
            .map(|(&s, &(c, _))| (s, c))
            .collect();
        for (socket, conn) in due {
            self.pending.remove(&socket);
            self.counters.connect_failures += 1;
            out.push(Action::Close { socket });
            self.pending_gone(conn, socket, now_ms, out);
        }
    }

    fn slot_timers<S: UpdateSink>(&mut self, now_ms: u64, sink: &mut S, out: &mut Vec<Action>) {
        let conns: Vec<ConnId> = self.slots.keys().copied().collect();
        for conn in conns {
            let resubscribe = self
                .slots
                .get(&conn)
                .and_then(|s| s.resubscribe_at_ms)
                .is_some_and(|at| at <= now_ms);
            if resubscribe {
                if let Some(slot) = self.slots.get_mut(&conn) {
                    slot.resubscribe_at_ms = None;
                }
                // A slot not open now subscribes everything when it reconnects; one recycling
                // already follows up through `resubscribe_pending`.
                if self.unsubscribed_tokens(conn) && !self.recycle(conn, now_ms, out) {
                    if let Some(slot) = self.slots.get_mut(&conn) {
                        slot.resubscribe_pending |= slot.state() == super::SlotState::Recycling;
                    }
                }
            }
            let (reopen, deadline, new_open) = match self.slots.get(&conn).map(|s| &s.phase) {
                Some(Phase::Backoff { until_ms }) => (*until_ms <= now_ms, false, false),
                Some(Phase::Recycling(h)) => (false, h.deadline_ms <= now_ms, h.new_open),
                _ => (false, false, false),
            };
            if reopen {
                let socket = self.request_open(conn, now_ms, out);
                if let Some(slot) = self.slots.get_mut(&conn) {
                    slot.phase = Phase::Connecting { socket };
                }
            } else if deadline && new_open {
                self.check_handoff(conn, now_ms, true, sink, out);
            } else if deadline {
                // The new socket is not up in time: give it up, the old one carries on.
                let Some(Phase::Recycling(h)) = self.slots.get(&conn).map(|s| &s.phase) else {
                    continue;
                };
                let (old, new) = (h.old, h.new);
                self.pending.remove(&new);
                out.push(Action::Close { socket: new });
                if let Some(slot) = self.slots.get_mut(&conn) {
                    slot.phase = Phase::Open { socket: old };
                }
                self.recycle_ended(conn, false, 0, 0, "new socket not up in time", now_ms, out);
            }
        }
    }

    fn socket_timers<S: UpdateSink>(
        &mut self,
        socket: SocketId,
        now_ms: u64,
        sink: &mut S,
        out: &mut Vec<Action>,
    ) {
        let limits = WatchdogLimits {
            pong_timeout_ms: self.cfg.pong_timeout_ms,
            data_silence_ms: self.cfg.data_silence_ms,
        };
        let ping_every = self.cfg.ping_interval_ms;
        let Some(sock) = self.sockets.get_mut(&socket) else { return };
        let conn = sock.conn;
        if now_ms >= sock.next_ping_ms {
            sock.next_ping_ms = now_ms + ping_every;
            out.push(Action::Send { socket, frames: vec!["PING".to_owned()] });
        }
        // Data proves the socket alive too: under load the venue queues PONG behind data.
        let alive = sock.last_pong_ms.max(sock.last_data_ms);
        let verdict = judge(now_ms, alive, sock.last_data_ms, limits);
        if verdict != Verdict::Healthy {
            match verdict {
                Verdict::PongTimeout => self.counters.pong_timeouts += 1,
                _ => self.counters.silence_timeouts += 1,
            }
            out.push(Action::Note(Note::WatchdogEnded { conn, socket, verdict }));
            self.end_socket(socket, now_ms, sink, out);
            return;
        }
        let stale_now =
            !sock.stale && now_ms.saturating_sub(sock.last_data_ms) >= self.cfg.stale_after_ms;
        if stale_now {
            sock.stale = true;
            if let Some(j) = self.journal.as_mut() {
                j.stale(socket);
            }
            let mut watch = Watch::new(sink, &mut self.tally, now_ms, false);
            let books = self.store.mark_feed_stale(FeedId(socket.0), &mut watch);
            if books > 0 {
                out.push(Action::Note(Note::BooksStale { conn, socket, books }));
            }
        }
        self.redrive_late_tokens(socket, now_ms, out);
    }

    /// Tokens whose first `book` is late are unsubscribed and subscribed again (the venue
    /// sometimes drops a subscription), at most `redrives_per_token_max` times.
    fn redrive_late_tokens(&mut self, socket: SocketId, now_ms: u64, out: &mut Vec<Action>) {
        let timeout = self.cfg.first_book_timeout_ms;
        let max = self.cfg.redrives_per_token_max;
        let store = &self.store;
        let Some(sock) = self.sockets.get_mut(&socket) else { return };
        // Waiting ends when this socket's `book` arrived: the book is its own and seeded.
        sock.awaiting.retain(|t, _| {
            store.get(t.as_str()).is_some_and(|b| {
                b.feed() != socket.0
                    || matches!(b.status(), BookStatus::Seeding | BookStatus::Resyncing)
            })
        });
        if !self.cfg.dynamic_subscribe {
            return;
        }
        let mut late: Vec<TokenId> = sock
            .awaiting
            .iter()
            .filter(|(_, (at, n))| now_ms.saturating_sub(*at) > timeout && *n < max)
            .map(|(t, _)| t.clone())
            .collect();
        if late.is_empty() {
            return;
        }
        late.sort();
        for t in &late {
            if let Some(entry) = sock.awaiting.get_mut(t.as_str()) {
                *entry = (now_ms, entry.1 + 1);
            }
        }
        self.counters.redrives += late.len() as u64;
        out.push(self.resubscribe(socket, &late));
    }

    /// Judges the store's open claims at `now_ms`; books that turn Resyncing are resubscribed
    /// on the socket that feeds them.
    fn settle<S: UpdateSink>(&mut self, now_ms: u64, sink: &mut S, out: &mut Vec<Action>) {
        self.last_settle_ms = now_ms;
        if let Some(j) = self.journal.as_mut() {
            j.settle(now_ms);
        }
        let mut watch = Watch::new(sink, &mut self.tally, now_ms, false);
        self.store.settle(now_ms, &mut watch);
        let mut tokens = std::mem::take(&mut watch.resync);
        if tokens.is_empty() {
            return;
        }
        self.counters.resyncs += tokens.len() as u64;
        tokens.sort();
        let mut by_socket: std::collections::BTreeMap<SocketId, Vec<TokenId>> = Default::default();
        for t in tokens {
            if let Some(feed) = self.store.get(t.as_str()).map(crate::Book::feed) {
                by_socket.entry(SocketId(feed)).or_default().push(t);
            }
        }
        for (socket, tokens) in by_socket {
            self.resync(socket, &tokens, now_ms, sink, out);
        }
    }

    fn reports(&mut self, out: &mut Vec<Action>) {
        let hints = self.store.drain_new_market_hints();
        if !hints.is_empty() {
            out.push(Action::NewMarkets(hints));
        }
        for m in self.store.drain_resolved_markets() {
            out.push(Action::Resolved(m));
        }
    }
}
