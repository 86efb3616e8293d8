//! Requests per second per client address, in fixed one-second windows: simple, and enough to
//! keep one client from monopolising the control shard.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

/// Addresses remembered before windows older than a second are forgotten.
const ADDRESSES_MAX: usize = 10_000;

const WINDOW: Duration = Duration::from_secs(1);

pub struct RateLimiter {
    per_s: u32,
    windows: HashMap<IpAddr, (Instant, u32)>,
    /// Requests refused so far.
    pub refused: u64,
}

impl RateLimiter {
    pub fn new(per_s: u32) -> RateLimiter {
        RateLimiter { per_s, windows: HashMap::new(), refused: 0 }
    }

    /// Whether a request from `ip` may go on now; one without an address always may.
    pub fn allow(&mut self, ip: Option<IpAddr>) -> bool {
        self.allow_at(ip, Instant::now())
    }

    fn allow_at(&mut self, ip: Option<IpAddr>, now: Instant) -> bool {
        let Some(ip) = ip else { return true };
        if self.windows.len() > ADDRESSES_MAX {
            self.windows.retain(|_, (t, _)| now.saturating_duration_since(*t) < WINDOW);
        }
        let w = self.windows.entry(ip).or_insert((now, 0));
        if now.saturating_duration_since(w.0) >= WINDOW {
            *w = (now, 0);
        }
        w.1 += 1;
        let ok = w.1 <= self.per_s;
        if !ok {
            self.refused += 1;
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_own_window() {
        let mut l = RateLimiter::new(2);
        let (a, b) = (Some(IpAddr::from([10, 0, 0, 1])), Some(IpAddr::from([10, 0, 0, 2])));
        let t = Instant::now();
        assert!(l.allow_at(a, t) && l.allow_at(a, t));
        assert!(!l.allow_at(a, t), "third in one second");
        assert!(l.allow_at(b, t), "another address is not held up");
        assert!(l.allow_at(None, t), "no address, no limit");
        assert!(l.allow_at(a, t + WINDOW), "a new window");
        assert_eq!(l.refused, 1);
    }
}
