//! The real venue's traffic quirks that break a naive per-frame hash check (protocol doc §3.10
//! "Hash timing on real traffic", §8 item 8), as knobs of the simulated exchange.
//!
//! A live capture (2026-07-04, 13 YES tokens, 34,731 frames) showed: runs of same-timestamp
//! `price_change` frames for one market whose every entry carries the hash and best bid/ask of
//! the book after the whole run (~9 % of entries); cascades of such runs over up to 11 markets;
//! now and then an entry whose hash is already 1–3 changes ahead; one stale opening snapshot
//! that only a later `book` repaired; trade prices from the other token inside a token's hash;
//! and `"last_trade_price":""` for markets that never traded. A simulator without them lets a
//! store pass every test and then raise false alarms on the first real connection.

/// Which quirks the simulated venue reproduces, and how often. Shares are per mille (0: off).
/// `Default` is real-shaped; [`RealShape::off`] is the plain traffic of earlier versions, byte
/// for byte (same seed, same frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RealShape {
    /// Same-timestamp runs: several order events of one market written as several
    /// `price_change` frames sharing one timestamp, every entry carrying the hash and best
    /// bid/ask of its token's book after the whole run. While on, two runs of one market never
    /// share a timestamp (the venue's runs are told apart by it).
    pub bursts: bool,
    /// Share of order events that start a run.
    pub run_permille: u16,
    /// Most order events in a run (two entries each: the venue's runs reach ~40 entries).
    pub run_len_max: u16,
    /// Most order events written in one frame of a run.
    pub frame_events_max: u16,
    /// Share of order events that start a cascade: runs of several markets in a row at one
    /// timestamp (needs `bursts`).
    pub cascade_permille: u16,
    /// Most markets in a cascade, the first included (the venue: up to 11).
    pub cascade_markets_max: u16,
    /// Share of runs with a requote written bid-before-cancel, which leaves the book crossed
    /// between two entries of the run (valid again at its end).
    pub crossed_permille: u16,
    /// Share of entries whose hash and best bid/ask are of the state 1–3 changes of that
    /// market later; those changes follow at once in later frames.
    pub ahead_permille: u16,
    /// Share of opening dumps in which one token's book is stale at one level that the stream
    /// then never mentions: a genuine divergence that only a later `book` of it repairs.
    pub stale_snapshot_permille: u16,
    /// Per-token events (`last_trade_price`, the post-trade `book`, `best_bid_ask`,
    /// `tick_size_change`) go only to connections subscribed to their token, as on the venue;
    /// off, they go to every connection of the market (the earlier plain stream). The hashed last trade price is the market's last
    /// trade, in the terms of the token it printed on, so a connection subscribed to one token
    /// sees trades of the other only inside its hashes (real REST books: a YES token at 0.004
    /// hashing `"0.996"`).
    pub ltp_from_other_token: bool,
    /// Markets listed while the venue runs (and a few at start) have no trade yet: their books
    /// say and hash `"last_trade_price":""` until the first one.
    pub ltp_empty_until_first_trade: bool,
}

impl Default for RealShape {
    fn default() -> Self {
        RealShape {
            bursts: true,
            run_permille: 7,
            run_len_max: 20,
            frame_events_max: 4,
            cascade_permille: 2,
            cascade_markets_max: 11,
            crossed_permille: 100,
            ahead_permille: 10,
            stale_snapshot_permille: 50,
            ltp_from_other_token: true,
            ltp_empty_until_first_trade: true,
        }
    }
}

impl RealShape {
    /// Plain traffic: every frame hashes its own state, every book has a last trade price.
    pub fn off() -> RealShape {
        RealShape {
            bursts: false,
            run_permille: 0,
            run_len_max: 1,
            frame_events_max: 1,
            cascade_permille: 0,
            cascade_markets_max: 1,
            crossed_permille: 0,
            ahead_permille: 0,
            stale_snapshot_permille: 0,
            ltp_from_other_token: false,
            ltp_empty_until_first_trade: false,
        }
    }

    /// Whether order events go through the run generator (one timestamp per market per run).
    pub(crate) fn runs(&self) -> bool {
        self.bursts || self.ahead_permille > 0
    }
}

/// What the quirks generator did, for tests and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShapeCounters {
    /// Runs of two or more order events of one market at one timestamp.
    pub runs: u64,
    /// Runs written as more than one frame.
    pub multi_frame_runs: u64,
    /// Cascades: two or more markets' runs in a row at one timestamp.
    pub cascades: u64,
    /// Runs whose book was crossed between two of their entries.
    pub crossed_runs: u64,
    /// Entries carrying a state 1–3 changes ahead.
    pub ahead_entries: u64,
    /// `price_change` entries written (both tokens).
    pub entries: u64,
    /// Opening books sent stale.
    pub stale_snapshots: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::hash::to_hex;
    use crate::sim::{SimConfig, SimExchange};

    #[test]
    fn default_is_real_shaped_and_off_is_plain() {
        let on = RealShape::default();
        assert!(
            on.runs() && on.bursts && on.ltp_from_other_token && on.ltp_empty_until_first_trade
        );
        assert!(
            on.ahead_permille > 0 && on.stale_snapshot_permille > 0 && on.cascade_markets_max > 1
        );
        let off = RealShape::off();
        assert!(!off.runs() && !off.ltp_from_other_token && !off.ltp_empty_until_first_trade);
        assert_eq!((off.ahead_permille, off.stale_snapshot_permille), (0, 0));
    }

    /// Every order a run: all entries of a token carry the hash and top of its book after the
    /// run, at the run's one timestamp.
    #[test]
    fn a_run_carries_the_state_after_it_on_every_entry() {
        let shape = RealShape {
            run_permille: 1000,
            cascade_permille: 0,
            ahead_permille: 0,
            crossed_permille: 0,
            ..RealShape::default()
        };
        let mut ex = SimExchange::new(SimConfig {
            seed: 3,
            markets: 5,
            real_shape: shape,
            ..SimConfig::default()
        });
        let mut out = Vec::new();
        ex.order(0, &mut out);
        assert!(!out.is_empty());
        let token = ex.markets()[0].tokens[0].to_string();
        let want = ex.hash_of(&token).map(|h| to_hex(&h)).unwrap_or_default();
        let (bid, ask) = crate::sim::frames::top_of_book(ex.markets()[0].book(0));
        let (mut n, mut stamps) = (0, std::collections::BTreeSet::new());
        for f in &out {
            let v: serde_json::Value =
                serde_json::from_str(&f.text).unwrap_or_else(|e| panic!("{e}"));
            stamps.insert(v["timestamp"].as_str().unwrap_or_default().to_owned());
            for e in v["price_changes"].as_array().into_iter().flatten() {
                if e["asset_id"] == token.as_str() {
                    assert_eq!(e["hash"], want.as_str());
                    assert_eq!(
                        (e["best_bid"].as_str(), e["best_ask"].as_str()),
                        (Some(&*bid.to_string()), Some(&*ask.to_string()))
                    );
                    n += 1;
                }
            }
        }
        assert!(n >= 2, "{n}");
        assert_eq!(stamps.len(), 1);
        assert_eq!(ex.shape_counters().runs, 1);
    }
}
