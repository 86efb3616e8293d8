//! One data shard's connection group as a sans-IO state machine.
//!
//! [`ConnGroup`] owns the shard's books (a [`BookStore`](crate::BookStore)), its markets, its
//! connection slots and their sockets. The runtime feeds it events — a command, a socket that
//! opened or failed to, a text frame, a socket that ended, the passing of time — each with the
//! time as an argument, and carries out the [`Action`]s it returns: open a socket, send frames,
//! close a socket, report to control. It does no I/O and reads no clock, so a test can drive it
//! in virtual time against the simulated venue (`sim::dst`) and replay any run from its seed.
//!
//! A slot's life: `Connecting` → `Open` ⇄ `Backoff`; a recycle makes it `Recycling` (two
//! sockets, make-before-break) until every book moved to the new socket or the handoff timed
//! out. Watchdogs (PING, PONG timeout, data silence, stale books), redrives of late first
//! books and the store's integrity settling all run from [`ConnGroup::tick`], which the runtime
//! calls at [`ConnGroup::next_wake`].

mod check;
mod group;
mod slot;
mod tally;
mod timers;
mod watch;

pub use group::ConnGroup;
pub use slot::SlotState;
pub use tally::StatusTally;

use crate::ids::{ConnId, MarketId, ShardId, SocketId, TokenId};
use crate::market::MarketSpec;
use crate::policy::{Backoff, Verdict};
use crate::store::NewMarketHint;

/// How a shard's connections behave (from `[connections]`, `[lifecycle]`, `[integrity]`).
#[derive(Debug, Clone)]
pub struct ConnConfig {
    pub shard: ShardId,
    pub tokens_per_conn_target: usize,
    pub ids_per_frame_max: usize,
    pub ping_interval_ms: u64,
    pub pong_timeout_ms: u64,
    pub data_silence_ms: u64,
    /// A subscribed token without its first `book` for this long is redriven.
    pub first_book_timeout_ms: u64,
    pub backoff: Backoff,
    pub dynamic_subscribe: bool,
    pub custom_features: bool,
    /// Longest a recycle waits for the new socket to take every book over.
    pub handoff_timeout_ms: u64,
    /// A socket asked for that has not opened (or failed) after this long is given up.
    pub open_timeout_ms: u64,
    /// A socket without a data frame for this long marks its Live books Stale.
    pub stale_after_ms: u64,
    /// A socket up this long was healthy: the next reconnect starts the backoff over.
    pub healthy_after_ms: u64,
    /// How often the store's open integrity claims are judged against the passing time.
    pub settle_every_ms: u64,
    /// Most redrives of one token before it is left Seeding (the venue omits settled tokens).
    pub redrives_per_token_max: u8,
    /// Seeds the backoff jitter, so a run is reproducible.
    pub seed: u64,
}

impl ConnConfig {
    /// The engine's defaults for `shard` (the same as `config.toml`'s).
    pub fn new(shard: ShardId) -> ConnConfig {
        ConnConfig {
            shard,
            tokens_per_conn_target: 400,
            ids_per_frame_max: 100,
            ping_interval_ms: 10_000,
            pong_timeout_ms: 30_000,
            data_silence_ms: 120_000,
            first_book_timeout_ms: 5_000,
            backoff: Backoff { min_ms: 250, max_ms: 30_000 },
            dynamic_subscribe: true,
            custom_features: true,
            handoff_timeout_ms: 10_000,
            open_timeout_ms: 15_000,
            stale_after_ms: 60_000,
            healthy_after_ms: 30_000,
            settle_every_ms: 100,
            redrives_per_token_max: 3,
            seed: 0x9E37_79B9_7F4A_7C15 ^ u64::from(shard.0),
        }
    }
}

/// What the runtime must do after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a WebSocket for `conn`; answer with [`ConnGroup::opened`] or
    /// [`ConnGroup::open_failed`] for `socket`.
    Open { conn: ConnId, socket: SocketId },
    /// Write these text frames on `socket`, in order.
    Send { socket: SocketId, frames: Vec<String> },
    /// Close `socket` (or drop its pending open). The group has already forgotten it: frames
    /// that still arrive from it are ignored and counted.
    Close { socket: SocketId },
    /// `new_market` events seen on the stream: discovery may run early.
    NewMarkets(Vec<NewMarketHint>),
    /// A market's `market_resolved` arrived.
    Resolved(MarketId),
    /// Something an operator wants in the log.
    Note(Note),
}

/// Decisions worth a log line; the runtime logs them, tests count them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    ConnectFailed { conn: ConnId, socket: SocketId, retry_in_ms: u64 },
    Reconnecting { conn: ConnId, socket: SocketId, retry_in_ms: u64 },
    WatchdogEnded { conn: ConnId, socket: SocketId, verdict: Verdict },
    BooksStale { conn: ConnId, socket: SocketId, books: usize },
    StaleBooksResync { conn: ConnId, socket: SocketId, books: usize },
    Resync { conn: ConnId, socket: SocketId, books: usize },
    RecycleDone { conn: ConnId, moved: u64, left: u64 },
    RecycleFailed { conn: ConnId, why: &'static str },
}

/// Every store call that is not a pure function of the frames, so a recording can repeat it
/// (`--record`): the runtime's recorder implements this.
pub trait Journal {
    fn track(&mut self, spec: &MarketSpec);
    fn untrack(&mut self, market: &MarketId, tokens: &[TokenId]);
    fn assign(&mut self, socket: SocketId, tokens: &[TokenId]);
    fn lost(&mut self, socket: SocketId, tokens: &[TokenId]);
    fn settle(&mut self, now_ms: u64);
    fn stale(&mut self, socket: SocketId);
    fn resync(&mut self, tokens: &[TokenId]);
    fn frame(&mut self, recv_ns: u64, socket: SocketId, text: &str);
    fn flush(&mut self) {}
}

/// Counters of the connection group (the store keeps its own).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConnCounters {
    /// Books resynced after repeated failed checks (unsubscribe + subscribe for a fresh book).
    pub resyncs: u64,
    /// Books marked Resyncing because their socket ended.
    pub resyncs_connection_lost: u64,
    /// Stale books resynced when their socket's data resumed.
    pub resyncs_after_silence: u64,
    pub reconnects: u64,
    pub connect_failures: u64,
    pub pong_timeouts: u64,
    pub silence_timeouts: u64,
    pub redrives: u64,
    pub bytes: u64,
    pub recycles_started: u64,
    pub recycles_completed: u64,
    pub recycles_failed: u64,
    /// Books handed from an old socket to its replacement during recycles.
    pub tokens_migrated: u64,
    /// Books still on the old socket when a recycle gave up waiting (they resync).
    pub handoff_timeouts: u64,
    /// Books a recycle's new socket had taken that went back to the old one when it died.
    pub handoff_returned: u64,
    /// Frames from sockets the group had already closed (ignored).
    pub frames_after_close: u64,
}

/// One connection slot as `/stats` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConnSnapshot {
    pub id: ConnId,
    /// Feed id of the newest open socket.
    pub feed: u32,
    pub state: &'static str,
    /// Open sockets: 2 while a recycle overlaps old and new.
    pub sockets: usize,
    /// Tokens the slot carries.
    pub tokens: usize,
    /// Tokens the newest socket is subscribed to (more than `tokens` when polluted).
    pub subscribed: usize,
    pub pollution_pct: u8,
    pub frames: u64,
    pub reconnects: u64,
    /// Age of the newest open socket.
    pub age_ms: u64,
    pub slot_age_ms: u64,
    pub recycling: bool,
}
