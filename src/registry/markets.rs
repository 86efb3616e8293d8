//! The market registry: the target state the control shard holds and the data shards follow.
//!
//! Every decision about a market's lifecycle is made here, with time as an argument, and
//! returned as [`Changes`] for the shards to carry out, so the rules run the same in tests as
//! on the engine.

use hashbrown::{HashMap, HashSet};

use super::listing::{AbsenceTracker, ListingRules, ListingVerdict};
use super::selection::SelectionRules;
use crate::book::TokenMeta;
use crate::policy::parse_iso8601_ms;
use crate::protocol::gamma::GammaMarket;
use crate::routing::shard_for;
use crate::{MarketId, MarketSpec, ShardId, TokenId};

/// Most refused close candidates confirmed with Gamma per run (10 requests of 100 ids).
pub const CONFIRM_IDS_MAX: usize = 1000;

/// What the registry needs to decide.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Data shards the markets are spread over (`routing::shard_for`).
    pub shards: usize,
    pub selection: SelectionRules,
    pub listing: ListingRules,
    /// Resolved, closed and expired markets stay visible this long, then leave.
    pub resolved_grace_ms: u64,
    /// An active market this long past its end date is expired.
    pub expire_after_end_ms: u64,
}

/// A market's lifecycle as the registry sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// Listed open by Gamma (or added by hand) and tracked.
    Active,
    /// `market_resolved` arrived; tracked until it leaves after the grace period.
    Resolved,
    /// Gamma no longer lists it as open (or said so when asked); untracked.
    Closed,
    /// Past its end date by `expire_after_end_ms` without resolving or closing; untracked.
    Expired,
}

impl Lifecycle {
    /// Every state, in the order the API lists them.
    pub const ALL: [Lifecycle; 4] =
        [Lifecycle::Active, Lifecycle::Resolved, Lifecycle::Closed, Lifecycle::Expired];

    pub fn name(self) -> &'static str {
        match self {
            Lifecycle::Active => "active",
            Lifecycle::Resolved => "resolved",
            Lifecycle::Closed => "closed",
            Lifecycle::Expired => "expired",
        }
    }

    pub fn from_name(s: &str) -> Option<Lifecycle> {
        Lifecycle::ALL.into_iter().find(|l| l.name() == s)
    }
}

/// One market the registry holds.
#[derive(Debug, Clone)]
pub struct Entry {
    pub market: GammaMarket,
    pub shard: ShardId,
    pub state: Lifecycle,
    /// When it entered `state` (ms, the caller's clock).
    pub since_ms: u64,
}

/// What one shard must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Track(Vec<MarketSpec>),
    Untrack(Vec<MarketId>),
}

/// Changes in the order they must be sent: per shard, at most one of each kind.
pub type Changes = Vec<(ShardId, Change)>;

/// A listing that would have closed too much at once; nothing was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Every market the listing would have closed, sorted.
    pub candidates: Vec<MarketId>,
    /// Active markets when it was judged.
    pub active: usize,
}

impl Refusal {
    /// The candidates to ask Gamma about in this run; the rest are asked again next time.
    pub fn to_confirm(&self) -> &[MarketId] {
        &self.candidates[..self.candidates.len().min(CONFIRM_IDS_MAX)]
    }
}

/// What one listing decided.
#[derive(Debug, Clone, Default)]
pub struct ListingOutcome {
    pub changes: Changes,
    /// Markets missing from enough complete listings (within the cap): close them with
    /// [`Registry::close_checked`] once Gamma, asked by condition id, has said which of them
    /// it still lists open. A listing that ends early without an error looks complete, and
    /// three such in a row would otherwise close the markets past the cut while they trade.
    pub to_check: Vec<MarketId>,
    /// Set when the listing-sanity rule refused the listing.
    pub refused: Option<Refusal>,
}

/// A market added by hand, as the admin API answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    pub market: MarketId,
    pub tokens: Vec<TokenId>,
    pub shard: ShardId,
}

/// The registry's own counters (`/stats` `discovery`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RegistryCounters {
    /// Listings refused by the sanity rules.
    pub refused_runs: u64,
    /// Markets closed after missing from enough complete listings.
    pub closed: u64,
    /// Markets missing from enough complete listings that Gamma, asked by id, still listed
    /// open: kept (the listings were cut short).
    pub kept_open_on_check: u64,
    /// Markets Gamma, asked by id after a refusal, said are closed.
    pub confirmed_closed: u64,
}

/// Markets by condition id, their tokens, and the absence counts of listing sanity.
#[derive(Debug, Default)]
pub struct Registry {
    cfg: RegistryConfig,
    markets: HashMap<MarketId, Entry>,
    tokens: HashMap<TokenId, MarketId>,
    absence: AbsenceTracker,
    counters: RegistryCounters,
}

impl Registry {
    pub fn new(cfg: RegistryConfig) -> Registry {
        Registry { cfg, ..Registry::default() }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.cfg
    }

    /// The shard that owns `market`.
    pub fn shard_of(&self, market: &str) -> ShardId {
        let i = shard_for(market, self.cfg.shards.max(1));
        ShardId(u16::try_from(i).unwrap_or(u16::MAX))
    }

    /// Applies one Gamma listing at `now_ms`: registers selected markets not yet known,
    /// reopens closed ones listed again, and, when the listing is `complete`, closes markets
    /// missing from it under the listing-sanity rule.
    pub fn apply_listing(
        &mut self,
        markets: Vec<GammaMarket>,
        complete: bool,
        now_ms: u64,
    ) -> ListingOutcome {
        let mut track = PerShard::new(self.cfg.shards);
        // Presence counts before selection, so a market added by hand stays while it is open.
        let seen: HashSet<MarketId> = markets.iter().map(|m| m.condition_id.clone()).collect();
        let chosen: Vec<GammaMarket> =
            markets.into_iter().filter(|m| self.cfg.selection.selects(m)).collect();
        for m in chosen {
            if let Some(e) = self.markets.get_mut(m.condition_id.as_str()) {
                if e.state == Lifecycle::Closed {
                    // Listed open again (Gamma flapped): track again.
                    e.state = Lifecycle::Active;
                    e.since_ms = now_ms;
                    track.push(e.shard, spec_of(&e.market));
                }
                continue;
            }
            let shard = self.shard_of(m.condition_id.as_str());
            track.push(shard, self.register(m, shard, now_ms));
        }
        let mut out = ListingOutcome::default();
        // Only a complete listing says anything about the markets it does not name.
        if complete {
            let active: Vec<MarketId> = self
                .markets
                .iter()
                .filter(|(_, e)| e.state == Lifecycle::Active)
                .map(|(id, _)| id.clone())
                .collect();
            match self.absence.observe(&active, &seen, self.cfg.listing) {
                ListingVerdict::Close(ids) => out.to_check = ids,
                ListingVerdict::Refused { candidates, active } => {
                    self.counters.refused_runs += 1;
                    out.refused = Some(Refusal { candidates, active });
                }
            }
        }
        out.changes.extend(track.into_changes(Change::Track));
        out
    }

    /// Closes the active markets among `ids` and returns their untracks.
    pub fn close(&mut self, ids: &[MarketId], now_ms: u64) -> Changes {
        let mut untrack = PerShard::new(self.cfg.shards);
        for id in ids {
            self.absence.forget(id.as_str());
            if let Some(e) = self.markets.get_mut(id.as_str()) {
                if e.state == Lifecycle::Active {
                    e.state = Lifecycle::Closed;
                    e.since_ms = now_ms;
                    untrack.push(e.shard, id.clone());
                }
            }
        }
        untrack.into_changes(Change::Untrack)
    }

    /// Closes the markets of a listing's `to_check` except those Gamma, asked by condition
    /// id, still lists open (`open`); returns the untracks.
    pub fn close_checked(
        &mut self,
        to_check: &[MarketId],
        open: &HashSet<MarketId>,
        now_ms: u64,
    ) -> Changes {
        let (kept, gone): (Vec<MarketId>, Vec<MarketId>) =
            to_check.iter().cloned().partition(|id| open.contains(id));
        self.counters.kept_open_on_check += kept.len() as u64;
        self.counters.closed += gone.len() as u64;
        self.close(&gone, now_ms)
    }

    /// Closes what Gamma, asked about a refused listing's candidates, said is closed.
    pub fn confirm_closed(&mut self, closed: &[MarketId], now_ms: u64) -> Changes {
        self.counters.confirmed_closed += closed.len() as u64;
        self.close(closed, now_ms)
    }

    /// A shard saw `market_resolved`. Its books stay tracked until the market leaves.
    pub fn resolve(&mut self, market: &str, now_ms: u64) {
        if let Some(e) = self.markets.get_mut(market) {
            e.state = Lifecycle::Resolved;
            e.since_ms = now_ms;
        }
    }

    /// Adds markets by hand (selection does not apply): each found market is answered, and
    /// those not already active are registered and tracked.
    pub fn add(&mut self, found: Vec<GammaMarket>, now_ms: u64) -> (Vec<Added>, Changes) {
        let mut track = PerShard::new(self.cfg.shards);
        let mut added = Vec::with_capacity(found.len());
        for m in found {
            let shard = self.shard_of(m.condition_id.as_str());
            added.push(Added { market: m.condition_id.clone(), tokens: m.tokens.clone(), shard });
            if self.get(m.condition_id.as_str()).is_some_and(|e| e.state == Lifecycle::Active) {
                continue;
            }
            track.push(shard, self.register(m, shard, now_ms));
        }
        (added, track.into_changes(Change::Track))
    }

    /// Expires active markets long past their end date (untracked now) and removes resolved,
    /// closed and expired markets whose grace period is over (a resolved one is untracked
    /// then: its final book stayed visible until now).
    pub fn sweep(&mut self, now_ms: u64) -> Changes {
        let mut untrack = PerShard::new(self.cfg.shards);
        let after = self.cfg.expire_after_end_ms;
        for (id, e) in self.markets.iter_mut() {
            let end = e.market.end_date.as_deref().and_then(parse_iso8601_ms);
            if e.state == Lifecycle::Active
                && end.is_some_and(|end| now_ms > end.saturating_add(after))
            {
                e.state = Lifecycle::Expired;
                e.since_ms = now_ms;
                untrack.push(e.shard, id.clone());
            }
        }
        let grace = self.cfg.resolved_grace_ms;
        let gone: Vec<MarketId> = self
            .markets
            .iter()
            .filter(|(_, e)| {
                e.state != Lifecycle::Active && now_ms.saturating_sub(e.since_ms) >= grace
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some(e) = self.markets.remove(id.as_str()) {
                self.absence.forget(id.as_str());
                for t in &e.market.tokens {
                    self.tokens.remove(t.as_str());
                }
                if e.state == Lifecycle::Resolved {
                    untrack.push(e.shard, id);
                }
            }
        }
        untrack.into_changes(Change::Untrack)
    }

    pub fn get(&self, market: &str) -> Option<&Entry> {
        self.markets.get(market)
    }

    /// Whether the registry holds `market` in any state.
    pub fn knows(&self, market: &str) -> bool {
        self.markets.contains_key(market)
    }

    /// The token as the registry holds it, and its market's entry.
    pub fn token(&self, token: &str) -> Option<(&TokenId, &Entry)> {
        let (t, m) = self.tokens.get_key_value(token)?;
        Some((t, self.markets.get(m.as_str())?))
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.markets.values()
    }

    pub fn len(&self) -> usize {
        self.markets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.markets.is_empty()
    }

    /// Markets per state, in [`Lifecycle::ALL`] order.
    pub fn by_state(&self) -> [(Lifecycle, usize); 4] {
        let mut out = Lifecycle::ALL.map(|l| (l, 0usize));
        for e in self.markets.values() {
            if let Some(slot) = out.iter_mut().find(|(l, _)| *l == e.state) {
                slot.1 += 1;
            }
        }
        out
    }

    pub fn counters(&self) -> RegistryCounters {
        self.counters
    }

    /// Consecutive complete listings `market` has been missing from.
    pub fn misses(&self, market: &str) -> u32 {
        self.absence.misses(market)
    }

    fn register(&mut self, m: GammaMarket, shard: ShardId, now_ms: u64) -> MarketSpec {
        let spec = spec_of(&m);
        for t in &m.tokens {
            self.tokens.insert(t.clone(), m.condition_id.clone());
        }
        let entry = Entry { market: m, shard, state: Lifecycle::Active, since_ms: now_ms };
        self.markets.insert(entry.market.condition_id.clone(), entry);
        spec
    }
}

/// What a shard is told to carry for a Gamma market.
pub fn spec_of(m: &GammaMarket) -> MarketSpec {
    MarketSpec {
        market: m.condition_id.clone(),
        tokens: m.tokens.clone(),
        meta: TokenMeta {
            tick_size: m.tick_size,
            min_order_size: m.min_order_size,
            neg_risk: Some(m.neg_risk),
        },
    }
}

/// Items gathered per shard, emitted in shard order, empty shards left out.
struct PerShard<T>(Vec<Vec<T>>);

impl<T> PerShard<T> {
    fn new(shards: usize) -> Self {
        PerShard((0..shards.max(1)).map(|_| Vec::new()).collect())
    }

    fn push(&mut self, shard: ShardId, item: T) {
        if let Some(v) = self.0.get_mut(shard.index()) {
            v.push(item);
        }
    }

    fn into_changes(self, make: fn(Vec<T>) -> Change) -> Changes {
        let shard = |i: usize| ShardId(u16::try_from(i).unwrap_or(u16::MAX));
        self.0
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(i, v)| (shard(i), make(v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests_kit::{market, numbered};

    const GRACE: u64 = 60_000;

    fn registry(shards: usize) -> Registry {
        Registry::new(RegistryConfig {
            shards,
            resolved_grace_ms: GRACE,
            expire_after_end_ms: 3_600_000,
            ..RegistryConfig::default()
        })
    }

    fn universe(n: usize) -> Vec<GammaMarket> {
        (0..n).map(numbered).collect()
    }

    fn tracked(changes: &Changes) -> Vec<&str> {
        let mut v: Vec<&str> = changes
            .iter()
            .flat_map(|(_, c)| match c {
                Change::Track(s) => s.iter().map(|s| s.market.as_str()).collect(),
                Change::Untrack(_) => Vec::new(),
            })
            .collect();
        v.sort();
        v
    }

    fn untracked(changes: &Changes) -> Vec<&str> {
        let mut v: Vec<&str> = changes
            .iter()
            .flat_map(|(_, c)| match c {
                Change::Untrack(ids) => ids.iter().map(MarketId::as_str).collect(),
                Change::Track(_) => Vec::new(),
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_listing_tracks_new_markets_once_on_their_shard() {
        let mut r = registry(4);
        let out = r.apply_listing(universe(20), true, 0);
        assert_eq!(tracked(&out.changes).len(), 20);
        for (shard, change) in &out.changes {
            let Change::Track(specs) = change else { panic!("{change:?}") };
            for s in specs {
                assert_eq!(*shard, r.shard_of(s.market.as_str()));
                assert_eq!(s.meta.neg_risk, Some(false));
            }
        }
        let shards: Vec<ShardId> = out.changes.iter().map(|(s, _)| *s).collect();
        assert!(shards.windows(2).all(|w| w[0] < w[1]), "one change per shard, in order");
        assert!(r.apply_listing(universe(20), true, 1).changes.is_empty());
        let Some((tok, e)) = r.token("31") else { panic!("token not indexed") };
        assert_eq!((tok.as_str(), e.market.condition_id.as_str()), ("31", "0x0003"));
    }

    #[test]
    fn a_market_missing_from_enough_complete_listings_closes_and_can_reopen() {
        let mut r = registry(2);
        let all = universe(50);
        r.apply_listing(all.clone(), true, 0);
        let rest = all[1..].to_vec();
        // A truncated listing says nothing about what it does not name.
        for t in 1..=5 {
            assert!(r.apply_listing(rest.clone(), false, t).changes.is_empty());
        }
        assert_eq!(r.misses("0x0000"), 0);
        assert!(r.apply_listing(rest.clone(), true, 10).changes.is_empty());
        assert!(r.apply_listing(rest.clone(), true, 11).changes.is_empty());
        let out = r.apply_listing(rest, true, 12);
        assert!(out.changes.is_empty(), "nothing closes before Gamma is asked");
        assert_eq!(out.to_check, vec![MarketId::new("0x0000")]);
        let changes = r.close_checked(&out.to_check, &HashSet::new(), 12);
        assert_eq!(untracked(&changes), vec!["0x0000"]);
        let Some(e) = r.get("0x0000") else { panic!("gone before its grace period") };
        assert_eq!((e.state, e.since_ms), (Lifecycle::Closed, 12));
        assert_eq!(r.counters().closed, 1);
        // Gamma flaps: listed open again, tracked again.
        let out = r.apply_listing(all, true, 13);
        assert_eq!(tracked(&out.changes), vec!["0x0000"]);
        assert_eq!(r.get("0x0000").map(|e| e.state), Some(Lifecycle::Active));
    }

    /// Three listings in a row cut short without an error (they look complete): the market
    /// past the cut is a candidate, and stays tracked because Gamma, asked by id, lists it open.
    #[test]
    fn a_candidate_gamma_still_lists_open_is_kept() {
        let mut r = registry(2);
        let all = universe(50);
        r.apply_listing(all.clone(), true, 0);
        let cut = all[..49].to_vec();
        let mut to_check = Vec::new();
        for t in 1..=3 {
            let out = r.apply_listing(cut.clone(), true, t);
            assert!(out.changes.is_empty());
            to_check = out.to_check;
        }
        assert_eq!(to_check, vec![MarketId::new("0x0049")]);
        let open: HashSet<MarketId> = to_check.iter().cloned().collect();
        assert!(r.close_checked(&to_check, &open, 4).is_empty());
        assert_eq!(r.get("0x0049").map(|e| e.state), Some(Lifecycle::Active));
        assert_eq!((r.counters().kept_open_on_check, r.counters().closed), (1, 0));
        // Its absence count starts over.
        assert_eq!(r.misses("0x0049"), 0);
    }

    #[test]
    fn a_refused_listing_closes_only_what_gamma_confirms() {
        let mut r = registry(3);
        r.apply_listing(universe(100), true, 0);
        for t in 1..=2 {
            assert!(r.apply_listing(Vec::new(), true, t).refused.is_none());
        }
        let out = r.apply_listing(Vec::new(), true, 3);
        assert!(out.changes.is_empty());
        let Some(refusal) = out.refused else { panic!("not refused") };
        assert_eq!((refusal.candidates.len(), refusal.active), (100, 100));
        assert_eq!(r.counters().refused_runs, 1);
        assert!(r.entries().all(|e| e.state == Lifecycle::Active));
        let confirmed = [MarketId::new("0x0007"), MarketId::new("0x0042"), MarketId::new("0xnone")];
        let changes = r.confirm_closed(&confirmed, 4);
        assert_eq!(untracked(&changes), vec!["0x0007", "0x0042"]);
        assert_eq!(r.counters().confirmed_closed, 3, "counts Gamma's answer");
        assert_eq!(r.misses("0x0007"), 0);
        // Confirming again closes nothing more.
        assert!(r.confirm_closed(&confirmed[..1], 5).is_empty());
    }

    #[test]
    fn a_refusal_confirms_at_most_a_thousand_per_run() {
        let candidates: Vec<MarketId> =
            (0..1500).map(|i| MarketId::new(&format!("0x{i:05}"))).collect();
        let r = Refusal { candidates, active: 1500 };
        assert_eq!(r.to_confirm().len(), CONFIRM_IDS_MAX);
        assert_eq!(r.to_confirm()[0].as_str(), "0x00000");
    }

    #[test]
    fn a_resolved_market_stays_tracked_until_its_grace_period_ends() {
        let mut r = registry(2);
        r.apply_listing(universe(3), true, 0);
        r.resolve("0x0001", 1_000);
        r.resolve("0xunknown", 1_000);
        assert!(r.sweep(1_000 + GRACE - 1).is_empty());
        assert_eq!(r.get("0x0001").map(|e| e.state), Some(Lifecycle::Resolved));
        let changes = r.sweep(1_000 + GRACE);
        assert_eq!(untracked(&changes), vec!["0x0001"]);
        assert!(!r.knows("0x0001") && r.token("11").is_none());
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn a_market_past_its_end_date_expires_then_leaves() {
        let mut r = registry(1);
        let mut m = market("0xe", "ends", ["1", "2"]);
        m.end_date = Some("2024-01-01T00:00:00Z".into());
        let Some(end) = parse_iso8601_ms("2024-01-01T00:00:00Z") else { panic!("bad date") };
        r.apply_listing(vec![m.clone(), market("0xf", "open", ["3", "4"])], true, end);
        let after = r.config().expire_after_end_ms;
        assert!(r.sweep(end + after).is_empty(), "not yet: strictly past end + after");
        let changes = r.sweep(end + after + 1);
        assert_eq!(untracked(&changes), vec!["0xe"]);
        assert_eq!(r.get("0xe").map(|e| e.state), Some(Lifecycle::Expired));
        // Still listed: an expired market is not tracked again.
        assert!(r.apply_listing(vec![m], false, end + after + 2).changes.is_empty());
        // Leaves after the grace period without a second untrack.
        assert!(r.sweep(end + after + 1 + GRACE).is_empty());
        assert!(!r.knows("0xe") && r.knows("0xf"));
    }

    #[test]
    fn selection_filters_listings_but_not_markets_added_by_hand() {
        let mut r = Registry::new(RegistryConfig {
            shards: 2,
            selection: SelectionRules { slugs: vec!["m1".into()], ..SelectionRules::default() },
            listing: ListingRules { absent_runs_max: 1, close_pct_max: 100 },
            ..RegistryConfig::default()
        });
        let out = r.apply_listing(universe(3), true, 0);
        assert_eq!(tracked(&out.changes), vec!["0x0001"]);
        let (added, changes) = r.add(vec![numbered(2), numbered(1)], 1);
        assert_eq!(added.len(), 2, "both answered");
        assert_eq!(added[0].shard, r.shard_of("0x0002"));
        assert_eq!(tracked(&changes), vec!["0x0002"], "an active market is not tracked twice");
        // Listed but not selected: presence counts before selection, so it stays.
        assert!(r.apply_listing(universe(3), true, 2).changes.is_empty());
        let out = r.apply_listing(universe(2), true, 3);
        assert_eq!(out.to_check, vec![MarketId::new("0x0002")]);
        assert_eq!(untracked(&r.close_checked(&out.to_check, &HashSet::new(), 3)), vec!["0x0002"]);
    }

    /// A listing tracks what is new at once; what it misses waits for Gamma's answer.
    #[test]
    fn a_listing_tracks_at_once_and_closes_only_after_the_check() {
        let mut r = Registry::new(RegistryConfig {
            shards: 1,
            listing: ListingRules { absent_runs_max: 1, close_pct_max: 100 },
            ..RegistryConfig::default()
        });
        r.apply_listing(universe(2), true, 0);
        let out = r.apply_listing(vec![numbered(1), numbered(5)], true, 1);
        assert!(matches!(out.changes.as_slice(), [(_, Change::Track(_))]));
        assert_eq!(out.to_check, vec![MarketId::new("0x0000")]);
        let changes = r.close_checked(&out.to_check, &HashSet::new(), 1);
        assert!(matches!(changes.as_slice(), [(_, Change::Untrack(_))]));
    }

    #[test]
    fn lifecycle_names_round_trip() {
        for l in Lifecycle::ALL {
            assert_eq!(Lifecycle::from_name(l.name()), Some(l));
        }
        assert_eq!(Lifecycle::from_name("open"), None);
        let r = registry(1);
        assert_eq!(r.by_state().map(|(l, _)| l), Lifecycle::ALL);
    }
}
