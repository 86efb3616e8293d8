//! The group's invariants, checked by the deterministic simulation after every event (and
//! cheap enough for a debug build to run them).

use crate::book::BookStatus;
use crate::ids::{ConnId, SocketId};

use super::group::ConnGroup;
use super::slot::Phase;

impl ConnGroup {
    /// Every invariant the group keeps, at `now_ms`; the first broken one, described.
    pub fn check(&self, now_ms: u64) -> Result<(), String> {
        if self.tally.total() != self.store.len() {
            return Err(format!(
                "status tally {} != {} books",
                self.tally.total(),
                self.store.len()
            ));
        }
        // A book that claims to be current is fed by an open socket of its market's slot.
        for b in self.store.books() {
            if !matches!(b.status(), BookStatus::Live | BookStatus::Suspect | BookStatus::Stale) {
                continue;
            }
            let Some(sock) = self.sockets.get(&SocketId(b.feed())) else {
                return Err(format!(
                    "{} is {:?} but its feed {} is not open",
                    b.token(),
                    b.status(),
                    b.feed()
                ));
            };
            let slot = self.table.conn_of(b.market().as_str()).map(ConnId::from_raw);
            if slot != Some(sock.conn) {
                return Err(format!(
                    "{} is fed by socket {} of {}, but its market is on {slot:?}",
                    b.token(),
                    b.feed(),
                    sock.conn
                ));
            }
        }
        for (id, sock) in &self.sockets {
            let Some(slot) = self.slots.get(&sock.conn) else {
                return Err(format!("socket {id} belongs to unknown slot {}", sock.conn));
            };
            if !slot.open_sockets().contains(id) {
                return Err(format!(
                    "socket {id} is open but slot {} ({:?}) does not hold it",
                    sock.conn,
                    slot.state()
                ));
            }
            if sock.awaiting.keys().any(|t| !sock.subscribed.contains(t.as_str())) {
                return Err(format!("socket {id} awaits a book it is not subscribed to"));
            }
        }
        for (id, (conn, _)) in &self.pending {
            let held = match self.slots.get(conn).map(|s| &s.phase) {
                Some(Phase::Connecting { socket }) => socket == id,
                Some(Phase::Recycling(h)) => h.new == *id && !h.new_open,
                _ => false,
            };
            if !held {
                return Err(format!("pending socket {id} is not awaited by slot {conn}"));
            }
        }
        let mut waiting = 0;
        for (conn, slot) in &self.slots {
            if self.table.markets_of(conn.raw()).is_empty() {
                return Err(format!("slot {conn} has no market"));
            }
            for s in slot.open_sockets() {
                if !self.sockets.contains_key(&s) {
                    return Err(format!("slot {conn} holds socket {s}, which is not open"));
                }
            }
            match &slot.phase {
                Phase::Connecting { socket } if !self.pending.contains_key(socket) => {
                    return Err(format!("slot {conn} waits for socket {socket}, never asked for"));
                }
                Phase::Recycling(h) => {
                    if h.deadline_ms + 1 < now_ms {
                        return Err(format!(
                            "slot {conn}: recycle past its deadline {} at {now_ms}",
                            h.deadline_ms
                        ));
                    }
                    waiting += h.remaining.len();
                }
                Phase::Backoff { until_ms } if until_ms + 1 < now_ms => {
                    return Err(format!(
                        "slot {conn}: backoff past its end {until_ms} at {now_ms}"
                    ));
                }
                _ => {}
            }
        }
        if waiting != self.handoff_of.len() {
            return Err(format!(
                "handoffs wait for {waiting} books, index has {}",
                self.handoff_of.len()
            ));
        }
        Ok(())
    }
}
