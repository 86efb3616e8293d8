//! The registry against a simple model of what the shards were told, over random sequences of
//! listings, resolutions, confirmations, additions by hand and sweeps.

use hashbrown::{HashMap, HashSet};
use proptest::prelude::*;

use super::tests_kit::numbered;
use super::*;
use crate::policy::parse_iso8601_ms;
use crate::protocol::gamma::GammaMarket;
use crate::routing::shard_for;
use crate::{MarketId, ShardId};

const N: usize = 12;
const END: &str = "2024-01-01T00:00:00Z";

#[derive(Debug, Clone)]
enum Op {
    /// Gamma lists these markets (bit i: market i); a truncated listing is not complete.
    /// Asked by id about the markets the listing would close, Gamma says `open` are open.
    Listing {
        present: u16,
        complete: bool,
        open: u16,
    },
    Resolve(usize),
    ConfirmClosed(u16),
    Add(u16),
    /// Time passes, then the registry is swept.
    Sweep(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let set = 0u16..(1 << N);
    prop_oneof![
        4 => (set.clone(), any::<bool>(), prop_oneof![Just(0u16), set.clone()])
            .prop_map(|(present, complete, open)| Op::Listing { present, complete, open }),
        // Mostly everything listed, so absences are rare and the cap is not always hit.
        2 => Just(Op::Listing { present: (1 << N) - 1, complete: true, open: 0 }),
        1 => (0..N).prop_map(Op::Resolve),
        1 => set.clone().prop_map(Op::ConfirmClosed),
        1 => set.prop_map(Op::Add),
        2 => (0u64..4_000).prop_map(Op::Sweep),
    ]
}

#[derive(Debug, Clone)]
struct Setup {
    shards: usize,
    slugs: Vec<String>,
    volume_min: f64,
    absent_runs_max: u32,
    close_pct_max: u8,
    grace_ms: u64,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        1usize..5,
        proptest::collection::vec(0..N, 0..4),
        prop_oneof![Just(0.0), Just(50.0)],
        1u32..4,
        prop_oneof![Just(10u8), Just(34), Just(50), Just(100)],
        0u64..6_000,
    )
        .prop_map(|(shards, slugs, volume_min, absent_runs_max, close_pct_max, grace_ms)| {
            Setup {
                shards,
                slugs: slugs.into_iter().map(|i| format!("m{i}")).collect(),
                volume_min,
                absent_runs_max,
                close_pct_max,
                grace_ms,
            }
        })
}

/// Market i: volume 10·i; every third ends at `END`.
fn universe() -> Vec<GammaMarket> {
    (0..N)
        .map(|i| {
            let mut m = numbered(i);
            m.volume = Some((i * 10) as f64);
            m.end_date = (i % 3 == 0).then(|| END.to_owned());
            m
        })
        .collect()
}

fn pick(all: &[GammaMarket], bits: u16) -> Vec<GammaMarket> {
    all.iter().enumerate().filter(|(i, _)| bits & (1 << i) != 0).map(|(_, m)| m.clone()).collect()
}

/// What the shards were told: each tracked market and the shard it was tracked on.
#[derive(Default)]
struct Model {
    tracked: HashMap<MarketId, ShardId>,
    by_hand: HashSet<MarketId>,
}

impl Model {
    /// Applies one step's changes; `re_track_ok` lists markets a second `Track` may name
    /// (a resolved market added again by hand: its shard merges the spec into the books).
    fn apply(
        &mut self,
        changes: &Changes,
        shards: usize,
        re_track_ok: &HashSet<MarketId>,
        by_hand: bool,
    ) -> Result<(), TestCaseError> {
        for (shard, change) in changes {
            match change {
                Change::Track(specs) => {
                    for s in specs {
                        let id = &s.market;
                        prop_assert_eq!(shard.index(), shard_for(id.as_str(), shards));
                        let before = self.tracked.insert(id.clone(), *shard);
                        prop_assert!(
                            before.is_none() || re_track_ok.contains(id),
                            "{id} tracked twice"
                        );
                        if by_hand {
                            self.by_hand.insert(id.clone());
                        } else {
                            self.by_hand.remove(id);
                        }
                    }
                }
                Change::Untrack(ids) => {
                    for id in ids {
                        prop_assert_eq!(shard.index(), shard_for(id.as_str(), shards));
                        self.tracked.remove(id);
                    }
                }
            }
        }
        Ok(())
    }
}

fn states(r: &Registry) -> HashMap<MarketId, (Lifecycle, u64)> {
    r.entries().map(|e| (e.market.condition_id.clone(), (e.state, e.since_ms))).collect()
}

fn active(r: &Registry) -> usize {
    r.entries().filter(|e| e.state == Lifecycle::Active).count()
}

fn untracks(changes: &Changes) -> Vec<&MarketId> {
    changes
        .iter()
        .flat_map(|(_, c)| match c {
            Change::Untrack(ids) => ids.iter().collect(),
            Change::Track(_) => Vec::new(),
        })
        .collect()
}

fn run(setup: Setup, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let end_ms = parse_iso8601_ms(END).ok_or_else(|| TestCaseError::fail("END parses"))?;
    let expire_after = 5_000;
    let selection = SelectionRules {
        slugs: setup.slugs.clone(),
        volume_min: setup.volume_min,
        ..SelectionRules::default()
    };
    let mut r = Registry::new(RegistryConfig {
        shards: setup.shards,
        selection: selection.clone(),
        listing: ListingRules {
            absent_runs_max: setup.absent_runs_max,
            close_pct_max: setup.close_pct_max,
        },
        resolved_grace_ms: setup.grace_ms,
        expire_after_end_ms: expire_after,
    });
    let all = universe();
    let mut model = Model::default();
    // Starts before the end date, so some markets expire during the run.
    let mut now = end_ms - 10_000;
    let none = HashSet::new();
    for op in ops {
        let before = states(&r);
        match op {
            Op::Listing { present, complete, open } => {
                let listed = pick(&all, present);
                let names: HashSet<MarketId> =
                    listed.iter().map(|m| m.condition_id.clone()).collect();
                let out = r.apply_listing(listed, complete, now);
                model.apply(&out.changes, setup.shards, &none, false)?;
                prop_assert!(untracks(&out.changes).is_empty(), "closed before Gamma was asked");
                let open: HashSet<MarketId> =
                    pick(&all, open).into_iter().map(|m| m.condition_id).collect();
                let closed_before = r.counters().closed;
                let checked = r.close_checked(&out.to_check, &open, now);
                model.apply(&checked, setup.shards, &none, false)?;
                let closed = untracks(&checked);
                prop_assert!(
                    closed.iter().all(|id| !open.contains(*id)),
                    "closed a market Gamma lists open"
                );
                prop_assert_eq!(closed.len() as u64, r.counters().closed - closed_before);
                prop_assert_eq!(
                    closed.len() + out.to_check.iter().filter(|id| open.contains(*id)).count(),
                    out.to_check.len()
                );
                prop_assert!(
                    closed.iter().all(|id| !names.contains(*id)),
                    "closed a listed market"
                );
                if !complete || out.refused.is_some() {
                    prop_assert!(closed.is_empty());
                }
                // At most close_pct_max % of the markets active when the listing was judged.
                let judged = active(&r) + closed.len();
                prop_assert!(
                    closed.len() * 100 <= judged * usize::from(setup.close_pct_max),
                    "closed {} of {judged}",
                    closed.len()
                );
            }
            Op::Resolve(i) => r.resolve(all[i].condition_id.as_str(), now),
            Op::ConfirmClosed(bits) => {
                let ids: Vec<MarketId> =
                    pick(&all, bits).into_iter().map(|m| m.condition_id).collect();
                let changes = r.confirm_closed(&ids, now);
                model.apply(&changes, setup.shards, &none, false)?;
            }
            Op::Add(bits) => {
                let resolved: HashSet<MarketId> = before
                    .iter()
                    .filter(|(_, (s, _))| *s == Lifecycle::Resolved)
                    .map(|(id, _)| id.clone())
                    .collect();
                let (added, changes) = r.add(pick(&all, bits), now);
                prop_assert_eq!(added.len(), bits.count_ones() as usize);
                model.apply(&changes, setup.shards, &resolved, true)?;
            }
            Op::Sweep(dt) => {
                now += dt;
                let changes = r.sweep(now);
                model.apply(&changes, setup.shards, &none, false)?;
                let after = states(&r);
                for (id, (state, since)) in &before {
                    if after.contains_key(id) {
                        continue;
                    }
                    // Only a market out of `active` for the grace period leaves (an active
                    // one may expire and leave at once with no grace).
                    let grace_over = now - since >= setup.grace_ms;
                    let expired_now = *state == Lifecycle::Active && setup.grace_ms == 0;
                    prop_assert!(
                        (*state != Lifecycle::Active && grace_over) || expired_now,
                        "{id} left too early"
                    );
                }
                for e in r.entries() {
                    prop_assert!(
                        e.state == Lifecycle::Active || now - e.since_ms < setup.grace_ms,
                        "{} outlived its grace period",
                        e.market.condition_id
                    );
                    let past_end = e.market.end_date.is_some() && now > end_ms + expire_after;
                    prop_assert!(!(e.state == Lifecycle::Active && past_end), "not expired");
                }
            }
        }
        // Tracked on exactly its own shard iff active (a resolved market stays tracked until it
        // leaves); never tracked once gone; active by selection unless added by hand.
        for e in r.entries() {
            let id = &e.market.condition_id;
            prop_assert_eq!(e.shard.index(), shard_for(id.as_str(), setup.shards));
            if e.state == Lifecycle::Active {
                prop_assert_eq!(model.tracked.get(id), Some(&e.shard), "{} active", id);
                prop_assert!(model.by_hand.contains(id) || selection.selects(&e.market));
            }
        }
        for id in model.tracked.keys() {
            let state = r.get(id.as_str()).map(|e| e.state);
            prop_assert!(
                matches!(state, Some(Lifecycle::Active | Lifecycle::Resolved)),
                "{id} tracked while {state:?}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn registry_agrees_with_the_model(setup in setup(), ops in proptest::collection::vec(op(), 1..60)) {
        run(setup, ops)?;
    }
}
