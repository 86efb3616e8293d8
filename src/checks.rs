//! Integrity checks that understand the venue's bursts (protocol doc §3.10).
//!
//! On real traffic the venue sends runs of `price_change` frames for one market with the same
//! timestamp, and every entry of a run carries the hash and best bid/ask of the book *after the
//! whole run*; now and then an entry's hash is a few changes ahead. Judging each entry against
//! the book right after it raised ~9 % false alarms. So each entry's hash and BBO become a
//! *claim* about some state of the book: a claim is tested against every state the book passes
//! through from its own entry on, and it is divergent only if no state matched by the time its
//! run ended and `states_after_run_max` more states (or `window_ms` of quiet) went by.
//!
//! Verdicts are counted per entry, by kind: matched now (the state right after the entry),
//! matched after the run (a later state of the same run), matched later (a state after the
//! run), divergent, superseded (a snapshot replaced the book first), unverifiable (counted by
//! the store: an input of the hash is unknown).

/// How long a claim may wait for a matching state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckWindow {
    /// States after the end of its run in which a claim may still match.
    pub states_after_run_max: u8,
    /// A run ends when the next entry for the token has a later timestamp, or after this long
    /// without one (store clock).
    pub run_quiet_ms: u64,
    /// An ended claim that saw no further state is divergent after this long.
    pub window_ms: u64,
    /// Most open claims per book and kind; the oldest is judged divergent to make room.
    pub claims_max: usize,
}

impl Default for CheckWindow {
    fn default() -> Self {
        CheckWindow { states_after_run_max: 3, run_quiet_ms: 250, window_ms: 1000, claims_max: 8 }
    }
}

/// Entries judged, by verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CheckCounts {
    pub matched_now: u64,
    pub matched_after_run: u64,
    pub matched_later: u64,
    pub divergent: u64,
    pub superseded: u64,
    pub unverifiable: u64,
}

impl CheckCounts {
    /// Entries whose claim was judged against a state (matched or divergent).
    pub fn judged(&self) -> u64 {
        self.matched() + self.divergent
    }
    pub fn matched(&self) -> u64 {
        self.matched_now + self.matched_after_run + self.matched_later
    }
    pub fn add(&mut self, t: &Tally) {
        self.matched_now += t.now;
        self.matched_after_run += t.after_run;
        self.matched_later += t.later;
        self.divergent += t.divergent;
        self.superseded += t.superseded;
    }
}

/// Verdicts of one step, weighted by entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub now: u64,
    pub after_run: u64,
    pub later: u64,
    pub divergent: u64,
    pub superseded: u64,
}

impl Tally {
    pub fn matched(&self) -> bool {
        self.now + self.after_run + self.later > 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Claim<T> {
    value: T,
    run_ts: u64,
    /// Store clock when the newest entry joined (for the quiet rule).
    touched_ms: u64,
    /// Entries that claimed this value (a run's entries usually share one).
    entries: u32,
    /// The step whose entry joined last: that entry matched "now" if this step matches.
    newest_step: u64,
    ended: Option<Ended>,
}

impl<T> Claim<T> {
    /// Counts a matched claim's entries: the one made at the matching step (if `now`) matched
    /// now, the others after their run or later.
    fn credit(&self, now: bool, t: &mut Tally) {
        let now = u64::from(now);
        let rest = u64::from(self.entries) - now;
        t.now += now;
        if self.ended.is_some() {
            t.later += rest;
        } else {
            t.after_run += rest;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ended {
    at_ms: u64,
    states_after: u8,
}

/// One book's open claims of one kind (hash or best bid/ask).
#[derive(Debug, Clone, Default)]
pub struct Claims<T> {
    open: Vec<Claim<T>>,
}

impl<T: Copy + PartialEq> Claims<T> {
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Ends the run of every claim made before `ts` (the token's next entry is later).
    /// Returns the values of claims whose run just ended (for trade-price learning).
    pub fn end_runs_before(&mut self, ts: u64, now_ms: u64, ended: &mut Vec<T>) {
        for c in &mut self.open {
            if c.ended.is_none() && c.run_ts < ts {
                c.ended = Some(Ended { at_ms: now_ms, states_after: 0 });
                ended.push(c.value);
            }
        }
    }

    /// An entry applied at `step` (run `ts`) claims `value`. Joins an open claim of the same
    /// value and run; makes room by judging the oldest divergent if there are too many.
    pub fn claim(&mut self, value: T, ts: u64, step: u64, now_ms: u64, max: usize, t: &mut Tally) {
        if let Some(c) =
            self.open.iter_mut().find(|c| c.value == value && c.run_ts == ts && c.ended.is_none())
        {
            c.entries += 1;
            c.newest_step = step;
            c.touched_ms = now_ms;
            return;
        }
        if self.open.len() >= max.max(1) {
            let old = self.open.remove(0);
            t.divergent += u64::from(old.entries);
        }
        self.open.push(Claim {
            value,
            run_ts: ts,
            touched_ms: now_ms,
            entries: 1,
            newest_step: step,
            ended: None,
        });
    }

    /// Tests every open claim against the state just reached at `step`; matched claims close.
    /// Then ages the claims whose run ended; those past the window close as divergent.
    pub fn test(
        &mut self,
        step: u64,
        window: CheckWindow,
        mut matches: impl FnMut(&T, u64) -> bool,
        t: &mut Tally,
    ) {
        self.open.retain_mut(|c| {
            if matches(&c.value, c.run_ts) {
                c.credit(c.newest_step == step, t);
                return false;
            }
            if let Some(e) = &mut c.ended {
                e.states_after = e.states_after.saturating_add(1);
                if e.states_after > window.states_after_run_max {
                    t.divergent += u64::from(c.entries);
                    return false;
                }
            }
            true
        });
    }

    /// Time passes without entries: runs quiet for `run_quiet_ms` end (their values are pushed
    /// to `ended`), and ended claims older than `window_ms` close as divergent.
    pub fn settle(&mut self, now_ms: u64, window: CheckWindow, ended: &mut Vec<T>, t: &mut Tally) {
        self.open.retain_mut(|c| match c.ended {
            None => {
                if now_ms.saturating_sub(c.touched_ms) >= window.run_quiet_ms {
                    c.ended = Some(Ended { at_ms: now_ms, states_after: 0 });
                    ended.push(c.value);
                }
                true
            }
            Some(e) if now_ms.saturating_sub(e.at_ms) >= window.window_ms => {
                t.divergent += u64::from(c.entries);
                false
            }
            Some(_) => true,
        });
    }

    /// A snapshot replaced the book: open claims are about states that no longer matter.
    /// Those equal to the snapshot's own (`matches`) count as matched after their run.
    pub fn supersede(&mut self, mut matches: impl FnMut(&T) -> bool, t: &mut Tally) {
        for c in self.open.drain(..) {
            if matches(&c.value) {
                if c.ended.is_some() {
                    t.later += u64::from(c.entries);
                } else {
                    t.after_run += u64::from(c.entries);
                }
            } else {
                t.superseded += u64::from(c.entries);
            }
        }
    }

    /// Closes the claims whose value is `value` as matched at `step` (a trade price was
    /// learned for it).
    pub fn resolve(&mut self, value: &T, step: u64, t: &mut Tally) {
        self.open.retain(|c| {
            if c.value == *value {
                c.credit(c.newest_step == step && c.ended.is_none(), t);
                return false;
            }
            true
        });
    }

    /// Entries of all open claims (dropped as unverifiable when an input of the hash is
    /// unknown).
    pub fn clear(&mut self) -> u64 {
        self.open.drain(..).map(|c| u64::from(c.entries)).sum()
    }
}

/// A book's open claims and its check clock.
#[derive(Debug, Clone, Default)]
pub struct BookChecks {
    pub hash: Claims<[u8; 20]>,
    pub bbo: Claims<(Option<crate::Price>, Option<crate::Price>)>,
    /// States the book went through (each applied entry is one).
    pub step: u64,
    /// Store clock when the current divergence began (None: not divergent).
    pub diverged_at_ms: Option<u64>,
}

impl BookChecks {
    pub fn is_empty(&self) -> bool {
        self.hash.is_empty() && self.bbo.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: CheckWindow =
        CheckWindow { states_after_run_max: 3, run_quiet_ms: 250, window_ms: 1000, claims_max: 8 };

    #[test]
    fn a_run_of_entries_sharing_the_post_run_value_matches_after_the_run() {
        let mut c: Claims<u32> = Claims::default();
        let mut t = Tally::default();
        // States 1, 2, 3 within run ts=10; every entry claims the post-run state 3.
        for step in 1..=3u64 {
            c.claim(3, 10, step, 0, 8, &mut t);
            c.test(step, W, |v, _| u64::from(*v) == step, &mut t);
        }
        assert!(c.is_empty());
        assert_eq!(t, Tally { now: 1, after_run: 2, ..Tally::default() });
    }

    #[test]
    fn a_value_ahead_matches_within_the_window_after_its_run() {
        let mut c: Claims<u32> = Claims::default();
        let mut t = Tally::default();
        c.claim(7, 10, 1, 0, 8, &mut t);
        c.test(1, W, |v, _| *v == 1, &mut t);
        let mut ended = Vec::new();
        c.end_runs_before(11, 0, &mut ended);
        assert_eq!(ended, vec![7]);
        for (step, state) in [(2u64, 5u32), (3, 7)] {
            c.test(step, W, |v, _| *v == state, &mut t);
        }
        assert_eq!(t, Tally { later: 1, ..Tally::default() });
    }

    #[test]
    fn an_unmatched_claim_is_divergent_after_the_window() {
        let mut c: Claims<u32> = Claims::default();
        let mut t = Tally::default();
        c.claim(99, 10, 1, 0, 8, &mut t);
        c.test(1, W, |_, _| false, &mut t);
        c.end_runs_before(11, 0, &mut Vec::new());
        for step in 2..=4 {
            c.test(step, W, |_, _| false, &mut t);
            assert_eq!(t.divergent, 0);
        }
        c.test(5, W, |_, _| false, &mut t);
        assert_eq!(t.divergent, 1);
        assert!(c.is_empty());
    }

    #[test]
    fn quiet_ends_the_run_and_the_window_judges_it() {
        let mut c: Claims<u32> = Claims::default();
        let mut t = Tally::default();
        c.claim(99, 10, 1, 1_000, 8, &mut t);
        let mut ended = Vec::new();
        c.settle(1_100, W, &mut ended, &mut t);
        assert!(ended.is_empty());
        c.settle(1_250, W, &mut ended, &mut t);
        assert_eq!(ended, vec![99]);
        c.settle(2_249, W, &mut ended, &mut t);
        assert_eq!(t.divergent, 0);
        c.settle(2_250, W, &mut ended, &mut t);
        assert_eq!(t.divergent, 1);
    }

    #[test]
    fn too_many_claims_judge_the_oldest() {
        let mut c: Claims<u32> = Claims::default();
        let mut t = Tally::default();
        for v in 0..3u32 {
            c.claim(v, 10 + u64::from(v), u64::from(v), 0, 2, &mut t);
        }
        assert_eq!((c.len(), t.divergent), (2, 1));
    }
}
