//! Pure decisions about connections: reconnect backoff, watchdog verdicts, and which
//! connection a market's tokens go to. Time and randomness are arguments.

use hashbrown::HashMap;

use crate::ids::MarketId;

/// Exponential backoff with jitter between `min_ms` and `max_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min_ms: u64,
    pub max_ms: u64,
}

impl Backoff {
    /// Delay before reconnect attempt `attempt` (0-based): `min * 2^attempt` capped at `max`,
    /// then a uniform jitter into its upper half so many connections do not retry in step.
    pub fn delay_ms(&self, attempt: u32, random: u64) -> u64 {
        let base = self.min_ms.saturating_mul(1u64 << attempt.min(30)).min(self.max_ms).max(1);
        let half = base / 2;
        half + random % (base - half + 1)
    }
}

/// What a connection's watchdog concludes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    /// No PONG for too long: the connection is dead.
    PongTimeout,
    /// PONGs arrive but no data: the venue's silent freeze.
    DataSilence,
}

/// Watchdog limits (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchdogLimits {
    pub pong_timeout_ms: u64,
    pub data_silence_ms: u64,
}

/// Judges a connection from the times (ms, any monotonic origin) of its last PONG (or its
/// opening) and last data frame.
pub fn judge(now_ms: u64, last_pong_ms: u64, last_data_ms: u64, limits: WatchdogLimits) -> Verdict {
    if now_ms.saturating_sub(last_pong_ms) > limits.pong_timeout_ms {
        Verdict::PongTimeout
    } else if now_ms.saturating_sub(last_data_ms) > limits.data_silence_ms {
        Verdict::DataSilence
    } else {
        Verdict::Healthy
    }
}

/// Where a market's tokens went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Added to an open connection (send a dynamic subscribe).
    Existing(u32),
    /// A new connection is needed.
    New(u32),
}

/// Assigns markets (both tokens together) to connections of at most `target` tokens.
#[derive(Debug, Clone)]
pub struct ConnTable {
    target: usize,
    next_id: u32,
    load: Vec<(u32, usize)>,
    placed: HashMap<MarketId, (u32, usize)>,
}

impl ConnTable {
    /// `first_id` lets shards hand out disjoint connection ids (shard in the top bits).
    pub fn new(target: usize, first_id: u32) -> ConnTable {
        ConnTable {
            target: target.max(2),
            next_id: first_id.max(1),
            load: Vec::new(),
            placed: HashMap::new(),
        }
    }

    pub fn conn_of(&self, market: &str) -> Option<u32> {
        self.placed.get(market).map(|p| p.0)
    }

    /// Tokens per open connection.
    pub fn loads(&self) -> &[(u32, usize)] {
        &self.load
    }

    /// Places a market with `tokens` tokens on the first connection with room, else a new one.
    pub fn place(&mut self, market: MarketId, tokens: usize) -> Placement {
        if let Some(&(conn, _)) = self.placed.get(market.as_str()) {
            return Placement::Existing(conn);
        }
        if let Some(slot) = self.load.iter_mut().find(|(_, n)| *n + tokens <= self.target) {
            slot.1 += tokens;
            self.placed.insert(market, (slot.0, tokens));
            return Placement::Existing(slot.0);
        }
        let id = self.fresh_id();
        self.load.push((id, tokens));
        self.placed.insert(market, (id, tokens));
        Placement::New(id)
    }

    /// Removes a market; returns its connection.
    pub fn remove(&mut self, market: &str) -> Option<u32> {
        let (conn, tokens) = self.placed.remove(market)?;
        if let Some(slot) = self.load.iter_mut().find(|(c, _)| *c == conn) {
            slot.1 = slot.1.saturating_sub(tokens);
        }
        Some(conn)
    }

    /// Moves every market of `old` to a fresh connection id (reconnect or recycle); returns it.
    pub fn replace_conn(&mut self, old: u32) -> Option<u32> {
        let pos = self.load.iter().position(|(c, _)| *c == old)?;
        let id = self.fresh_id();
        self.load[pos].0 = id;
        for p in self.placed.values_mut().filter(|p| p.0 == old) {
            p.0 = id;
        }
        Some(id)
    }

    /// Markets on a connection.
    pub fn markets_of(&self, conn: u32) -> Vec<MarketId> {
        self.placed.iter().filter(|(_, p)| p.0 == conn).map(|(m, _)| m.clone()).collect()
    }

    /// Drops a connection slot that has no markets left.
    pub fn close_if_empty(&mut self, conn: u32) -> bool {
        let empty = self.load.iter().any(|(c, n)| *c == conn && *n == 0);
        if empty {
            self.load.retain(|(c, _)| *c != conn);
        }
        empty
    }

    fn fresh_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters_in_upper_half() {
        let b = Backoff { min_ms: 250, max_ms: 30_000 };
        assert_eq!(b.delay_ms(0, 0), 125);
        assert_eq!(b.delay_ms(0, 125), 250);
        assert!((500..=1000).contains(&b.delay_ms(2, 12345)));
        assert!((15_000..=30_000).contains(&b.delay_ms(40, u64::MAX)));
    }

    #[test]
    fn judge_orders_pong_before_silence() {
        let l = WatchdogLimits { pong_timeout_ms: 30_000, data_silence_ms: 60_000 };
        assert_eq!(judge(100_000, 90_000, 90_000, l), Verdict::Healthy);
        assert_eq!(judge(100_000, 60_000, 0, l), Verdict::PongTimeout);
        assert_eq!(judge(100_000, 95_000, 30_000, l), Verdict::DataSilence);
    }

    #[test]
    fn conn_table_fills_to_target_then_opens_new() {
        let mut t = ConnTable::new(4, 1);
        assert_eq!(t.place(MarketId::new("a"), 2), Placement::New(1));
        assert_eq!(t.place(MarketId::new("b"), 2), Placement::Existing(1));
        assert_eq!(t.place(MarketId::new("c"), 2), Placement::New(2));
        assert_eq!(t.place(MarketId::new("a"), 2), Placement::Existing(1));
        assert_eq!(t.remove("b"), Some(1));
        assert_eq!(t.place(MarketId::new("d"), 2), Placement::Existing(1));
        let new = t.replace_conn(1);
        assert_eq!(new, Some(3));
        assert_eq!(t.conn_of("a"), Some(3));
        let mut ms: Vec<String> = t.markets_of(3).iter().map(|m| m.to_string()).collect();
        ms.sort();
        assert_eq!(ms, ["a", "d"]);
        assert_eq!(t.remove("c"), Some(2));
        assert!(t.close_if_empty(2));
        assert_eq!(t.loads(), &[(3, 4)]);
    }
}
