//! Listing sanity: which markets missing from a Gamma listing may be closed.
//!
//! Gamma answers badly now and then: an empty 200 page, or a listing that ends early without
//! an error. Closing every market missing from one listing turned one bad answer into an
//! unsubscribe of the whole universe and a resubscribe storm at the next run. So a market is
//! closed only after it is missing from `absent_runs_max` consecutive complete listings, and a
//! listing that would close more than `close_pct_max` % of the active markets at once is
//! refused: its candidates are closed only when Gamma, asked by condition id, says so.

use hashbrown::{HashMap, HashSet};

use crate::MarketId;

/// How suspicious a listing must look to be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListingRules {
    /// Consecutive complete listings a market must be missing from before it is closed.
    pub absent_runs_max: u32,
    /// Most active markets (%) one listing may close; more is refused.
    pub close_pct_max: u8,
}

impl Default for ListingRules {
    fn default() -> Self {
        ListingRules { absent_runs_max: 3, close_pct_max: 10 }
    }
}

/// What one complete listing decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListingVerdict {
    /// Close these now (missing long enough; within the cap). May be empty.
    Close(Vec<MarketId>),
    /// The listing would close `candidates.len()` of `active` markets at once: nothing is
    /// closed. Confirm each candidate with Gamma before closing it.
    Refused { candidates: Vec<MarketId>, active: usize },
}

/// Counts, per active market, the consecutive complete listings it was missing from.
#[derive(Debug, Default, Clone)]
pub struct AbsenceTracker {
    misses: HashMap<MarketId, u32>,
}

impl AbsenceTracker {
    /// Judges one complete listing. `active` are the markets the registry holds open;
    /// `listed` every market the listing named open (before any selection).
    pub fn observe<'a>(
        &mut self,
        active: impl IntoIterator<Item = &'a MarketId>,
        listed: &HashSet<MarketId>,
        rules: ListingRules,
    ) -> ListingVerdict {
        let mut next: HashMap<MarketId, u32> = HashMap::new();
        let mut candidates = Vec::new();
        let mut n_active = 0usize;
        for id in active {
            n_active += 1;
            if listed.contains(id) {
                continue;
            }
            let misses = self.misses.get(id).copied().unwrap_or(0).saturating_add(1);
            if misses >= rules.absent_runs_max {
                candidates.push(id.clone());
            }
            next.insert(id.clone(), misses);
        }
        // Forgets markets that are listed again or no longer active.
        self.misses = next;
        candidates.sort();
        let cap = n_active.saturating_mul(usize::from(rules.close_pct_max));
        if !candidates.is_empty() && candidates.len().saturating_mul(100) > cap {
            return ListingVerdict::Refused { candidates, active: n_active };
        }
        for id in &candidates {
            self.misses.remove(id);
        }
        ListingVerdict::Close(candidates)
    }

    /// Consecutive listings `id` has been missing from.
    pub fn misses(&self, id: &str) -> u32 {
        self.misses.get(id).copied().unwrap_or(0)
    }

    /// Forgets a market (closed by confirmation, resolved, or removed).
    pub fn forget(&mut self, id: &str) {
        self.misses.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<MarketId> {
        (0..n).map(|i| MarketId::new(&format!("0x{i:04}"))).collect()
    }

    fn set(v: &[MarketId]) -> HashSet<MarketId> {
        v.iter().cloned().collect()
    }

    #[test]
    fn one_empty_listing_closes_nothing() {
        let all = ids(100);
        let mut t = AbsenceTracker::default();
        let v = t.observe(&all, &HashSet::new(), ListingRules::default());
        assert_eq!(v, ListingVerdict::Close(vec![]));
        assert_eq!(t.misses(all[0].as_str()), 1);
        // Listed again: forgotten.
        assert_eq!(
            t.observe(&all, &set(&all), ListingRules::default()),
            ListingVerdict::Close(vec![])
        );
        assert_eq!(t.misses(all[0].as_str()), 0);
    }

    #[test]
    fn repeated_empty_listings_are_refused_not_obeyed() {
        let all = ids(100);
        let mut t = AbsenceTracker::default();
        let rules = ListingRules::default();
        for _ in 0..2 {
            assert_eq!(t.observe(&all, &HashSet::new(), rules), ListingVerdict::Close(vec![]));
        }
        match t.observe(&all, &HashSet::new(), rules) {
            ListingVerdict::Refused { candidates, active } => {
                assert_eq!((candidates.len(), active), (100, 100));
            }
            v => panic!("expected a refusal, got {v:?}"),
        }
    }

    #[test]
    fn a_market_missing_three_listings_in_a_row_closes() {
        let all = ids(100);
        let listed = set(&all[1..]);
        let mut t = AbsenceTracker::default();
        let rules = ListingRules::default();
        assert_eq!(t.observe(&all, &listed, rules), ListingVerdict::Close(vec![]));
        assert_eq!(t.observe(&all, &listed, rules), ListingVerdict::Close(vec![]));
        assert_eq!(t.observe(&all, &listed, rules), ListingVerdict::Close(vec![all[0].clone()]));
        assert_eq!(t.misses(all[0].as_str()), 0);
    }

    #[test]
    fn an_interrupted_absence_starts_over() {
        let all = ids(20);
        let without = set(&all[1..]);
        let mut t = AbsenceTracker::default();
        let rules = ListingRules { absent_runs_max: 2, close_pct_max: 10 };
        assert_eq!(t.observe(&all, &without, rules), ListingVerdict::Close(vec![]));
        assert_eq!(t.observe(&all, &set(&all), rules), ListingVerdict::Close(vec![]));
        assert_eq!(t.observe(&all, &without, rules), ListingVerdict::Close(vec![]));
        assert_eq!(t.observe(&all, &without, rules), ListingVerdict::Close(vec![all[0].clone()]));
    }

    #[test]
    fn the_cap_is_a_share_of_active_markets() {
        let all = ids(100);
        let rules = ListingRules { absent_runs_max: 1, close_pct_max: 10 };
        let mut t = AbsenceTracker::default();
        // 10 of 100 is within 10 %.
        let v = t.observe(&all, &set(&all[10..]), rules);
        assert!(matches!(v, ListingVerdict::Close(ref c) if c.len() == 10), "{v:?}");
        let rest = &all[10..];
        // 11 of 90 is not.
        let v = t.observe(rest, &set(&rest[11..]), rules);
        assert!(
            matches!(v, ListingVerdict::Refused { ref candidates, active: 90 } if candidates.len() == 11),
            "{v:?}"
        );
    }
}
