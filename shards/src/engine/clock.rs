//! The engine's time: Unix time read once at start-up, advanced by the monotonic clock. Books
//! are stamped with it and every timer runs on it, so it never runs backwards and grace
//! periods do not jump with the wall clock, while end dates still compare as dates. Each
//! shard keeps its own (they differ by the microseconds between their start-ups).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    wall_at_start_ns: u64,
}

impl Clock {
    pub fn start() -> Clock {
        Clock { start: Instant::now(), wall_at_start_ns: wall_ns() }
    }

    pub fn now_ns(&self) -> u64 {
        let run = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.wall_at_start_ns.saturating_add(run)
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ns() / 1_000_000
    }

    /// Time since start-up (`/stats` `uptime_ms`).
    pub fn uptime(&self) -> Duration {
        self.start.elapsed()
    }
}

/// Unix nanoseconds from the wall clock (0 before 1970).
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Unix milliseconds from the wall clock.
pub fn wall_ms() -> u64 {
    wall_ns() / 1_000_000
}
