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
    /// Markets per connection, in placement order: `markets_of` is asked for every slot on
    /// every stats snapshot, and scanning all markets each time cost O(slots × markets).
    members: HashMap<u32, Vec<MarketId>>,
}

impl ConnTable {
    /// `first_id` lets shards hand out disjoint connection ids (shard in the top bits).
    pub fn new(target: usize, first_id: u32) -> ConnTable {
        ConnTable {
            target: target.max(2),
            next_id: first_id.max(1),
            load: Vec::new(),
            placed: HashMap::new(),
            members: HashMap::new(),
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
            let id = slot.0;
            self.members.entry(id).or_default().push(market.clone());
            self.placed.insert(market, (id, tokens));
            return Placement::Existing(id);
        }
        let id = self.fresh_id();
        self.load.push((id, tokens));
        self.members.entry(id).or_default().push(market.clone());
        self.placed.insert(market, (id, tokens));
        Placement::New(id)
    }

    /// Removes a market; returns its connection.
    pub fn remove(&mut self, market: &str) -> Option<u32> {
        let (conn, tokens) = self.placed.remove(market)?;
        if let Some(slot) = self.load.iter_mut().find(|(c, _)| *c == conn) {
            slot.1 = slot.1.saturating_sub(tokens);
        }
        if let Some(m) = self.members.get_mut(&conn) {
            m.retain(|x| x.as_str() != market);
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
        if let Some(m) = self.members.remove(&old) {
            self.members.insert(id, m);
        }
        Some(id)
    }

    /// Markets on a connection.
    pub fn markets_of(&self, conn: u32) -> Vec<MarketId> {
        self.members.get(&conn).cloned().unwrap_or_default()
    }

    /// Drops a connection slot that has no markets left.
    pub fn close_if_empty(&mut self, conn: u32) -> bool {
        let empty = self.load.iter().any(|(c, n)| *c == conn && *n == 0);
        if empty {
            self.load.retain(|(c, _)| *c != conn);
            self.members.remove(&conn);
        }
        empty
    }

    fn fresh_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }
}

/// A connection as the recycling policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnView {
    pub id: u32,
    /// Age of its current socket.
    pub age_ms: u64,
    /// Share of its subscriptions that no longer belong to tracked markets.
    pub pollution_pct: u8,
    pub recycling: bool,
}

/// Recycling thresholds (config `[lifecycle]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecycleLimits {
    pub pollution_pct: u8,
    pub age_ms: u64,
    pub min_age_ms: u64,
    pub concurrent_max: usize,
}

/// Which connections to recycle now: polluted or old ones, most polluted then oldest first,
/// never one younger than the minimum age, and never more than `concurrent_max` in flight.
pub fn recycle_candidates(conns: &[ConnView], limits: RecycleLimits) -> Vec<u32> {
    let in_flight = conns.iter().filter(|c| c.recycling).count();
    let room = limits.concurrent_max.saturating_sub(in_flight);
    let mut due: Vec<&ConnView> = conns
        .iter()
        .filter(|c| !c.recycling && c.age_ms >= limits.min_age_ms)
        .filter(|c| c.pollution_pct >= limits.pollution_pct || c.age_ms >= limits.age_ms)
        .collect();
    due.sort_by(|a, b| b.pollution_pct.cmp(&a.pollution_pct).then(b.age_ms.cmp(&a.age_ms)));
    due.into_iter().take(room).map(|c| c.id).collect()
}

/// Unix milliseconds of an ISO-8601 UTC timestamp as Gamma writes them
/// (`2026-03-12T09:25:00Z`, optional fraction, or a bare date). None if it does not parse.
pub fn parse_iso8601_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&d)
    {
        return None;
    }
    let (mut hh, mut mm, mut ss) = (0, 0, 0);
    if b.len() > 10 {
        if !matches!(b.get(10), Some(b'T') | Some(b' ')) {
            return None;
        }
        hh = num(11..13)?;
        mm = num(14..16)?;
        ss = num(17..19).unwrap_or(0);
        if hh > 23 || mm > 59 || ss > 60 {
            return None;
        }
    }
    let secs = days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs).ok().map(|s| s * 1000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
    fn recycle_candidates_respects_limits_and_order() {
        let l =
            RecycleLimits { pollution_pct: 30, age_ms: 1000, min_age_ms: 100, concurrent_max: 2 };
        let c = |id, age_ms, pollution_pct, recycling| ConnView {
            id,
            age_ms,
            pollution_pct,
            recycling,
        };
        // Young (below min age), healthy, polluted, old, very polluted.
        let conns = [
            c(1, 50, 90, false),
            c(2, 500, 0, false),
            c(3, 500, 40, false),
            c(4, 2000, 0, false),
            c(5, 500, 80, false),
        ];
        assert_eq!(recycle_candidates(&conns, l), [5, 3]);
        let busy = [c(1, 5000, 0, true), c(2, 5000, 0, false), c(3, 9000, 0, false)];
        assert_eq!(recycle_candidates(&busy, l), [3]);
        let full = [c(1, 5000, 0, true), c(2, 5000, 0, true), c(3, 9000, 0, false)];
        assert!(recycle_candidates(&full, l).is_empty());
    }

    #[test]
    fn parse_iso8601_matches_known_instants() {
        assert_eq!(parse_iso8601_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_iso8601_ms("2026-03-12T09:25:00Z"), Some(1_773_307_500_000));
        assert_eq!(parse_iso8601_ms("2026-03-11T09:29:01.328428Z"), Some(1_773_221_341_000));
        assert_eq!(parse_iso8601_ms("2000-02-29"), Some(951_782_400_000));
        assert_eq!(parse_iso8601_ms("2026-13-01"), None);
        assert_eq!(parse_iso8601_ms("garbage"), None);
        assert_eq!(parse_iso8601_ms(""), None);
        assert_eq!(parse_iso8601_ms("2026-03-12X09"), None);
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

    proptest::proptest! {
        /// The per-connection index agrees with a scan of every placement, whatever the
        /// sequence of places, removals, connection replacements and closes.
        #[test]
        fn markets_of_agrees_with_a_scan(ops in proptest::collection::vec((0u8..4, 0u8..12), 1..200)) {
            let mut t = ConnTable::new(6, 1);
            for (op, m) in ops {
                let name = format!("m{m}");
                match op {
                    0 | 1 => { t.place(MarketId::new(&name), 2); }
                    2 => { t.remove(&name); }
                    _ => {
                        if let Some(c) = t.conn_of(&name) {
                            if m % 2 == 0 { t.replace_conn(c); } else { t.close_if_empty(c); }
                        }
                    }
                }
                for &(conn, _) in t.loads() {
                    let mut scan: Vec<MarketId> =
                        t.placed.iter().filter(|(_, p)| p.0 == conn).map(|(m, _)| m.clone()).collect();
                    let mut index = t.markets_of(conn);
                    scan.sort();
                    index.sort();
                    proptest::prop_assert_eq!(index, scan);
                }
            }
        }
    }
}
