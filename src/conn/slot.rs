//! A slot's and a socket's state.

use hashbrown::{HashMap, HashSet};

use crate::ids::{ConnId, SocketId, TokenId};

/// Where a slot stands, as `/stats` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    Connecting,
    Open,
    Recycling,
    Backoff,
}

impl SlotState {
    pub fn name(self) -> &'static str {
        match self {
            SlotState::Connecting => "connecting",
            SlotState::Open => "open",
            SlotState::Recycling => "recycling",
            SlotState::Backoff => "backoff",
        }
    }
}

/// A make-before-break recycle in progress.
#[derive(Debug)]
pub(super) struct Handoff {
    pub old: SocketId,
    pub new: SocketId,
    /// The new socket is open and subscribed (else its open is pending).
    pub new_open: bool,
    /// When the recycle gives up: waiting for the new socket to open, then for the books.
    pub deadline_ms: u64,
    /// Books still on the old socket that can move (tracked, seeded, not resolved).
    pub remaining: HashSet<TokenId>,
}

#[derive(Debug)]
pub(super) enum Phase {
    /// Waiting for `socket` to open (first connect or reconnect).
    Connecting {
        socket: SocketId,
    },
    /// Waiting to reconnect.
    Backoff {
        until_ms: u64,
    },
    Open {
        socket: SocketId,
    },
    Recycling(Handoff),
}

#[derive(Debug)]
pub(super) struct Slot {
    pub phase: Phase,
    /// Reconnect attempts since the last healthy socket (backoff exponent).
    pub attempt: u32,
    pub reconnects: u64,
    pub created_at_ms: u64,
    /// Without dynamic subscribe: markets were added while a recycle ran, so another recycle
    /// must follow to subscribe them.
    pub resubscribe_pending: bool,
    /// Without dynamic subscribe: a recycle meant to subscribe new markets failed; the next
    /// one starts then.
    pub resubscribe_at_ms: Option<u64>,
}

impl Slot {
    pub fn state(&self) -> SlotState {
        match self.phase {
            Phase::Connecting { .. } => SlotState::Connecting,
            Phase::Backoff { .. } => SlotState::Backoff,
            Phase::Open { .. } => SlotState::Open,
            Phase::Recycling(_) => SlotState::Recycling,
        }
    }

    /// The open socket new subscriptions go to: the recycle's new one once it is up.
    pub fn newest_open(&self) -> Option<SocketId> {
        match &self.phase {
            Phase::Open { socket } => Some(*socket),
            Phase::Recycling(h) if h.new_open => Some(h.new),
            Phase::Recycling(h) => Some(h.old),
            _ => None,
        }
    }

    /// Open sockets, oldest first.
    pub fn open_sockets(&self) -> Vec<SocketId> {
        match &self.phase {
            Phase::Open { socket } => vec![*socket],
            Phase::Recycling(h) if h.new_open => vec![h.old, h.new],
            Phase::Recycling(h) => vec![h.old],
            _ => Vec::new(),
        }
    }
}

/// One open socket.
#[derive(Debug)]
pub(super) struct Socket {
    pub conn: ConnId,
    pub opened_at_ms: u64,
    pub last_pong_ms: u64,
    pub last_data_ms: u64,
    pub next_ping_ms: u64,
    /// Silent for `stale_after_ms`: its Live books were marked Stale.
    pub stale: bool,
    pub frames: u64,
    /// Tokens this socket is subscribed to (more than the slot's when unsubscribe is off:
    /// the difference is pollution).
    pub subscribed: HashSet<TokenId>,
    /// Subscribed tokens without their first `book` from this socket: since when, redrives.
    pub awaiting: HashMap<TokenId, (u64, u8)>,
}
