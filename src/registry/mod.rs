//! The market registry and its rules, free of I/O and clocks: which markets are carried, on
//! which shard, through which lifecycle, and what a Gamma listing may change.
//!
//! - [`markets`]: [`Registry`], the target state; lifecycle, expiry, removal, changes per shard.
//! - [`listing`]: listing sanity, which markets missing from a listing may be closed.
//! - [`selection`]: `[selection]` as a rule on Gamma markets.

pub mod listing;
pub mod markets;
pub mod selection;

#[cfg(test)]
mod model_tests;

pub use listing::{AbsenceTracker, ListingRules, ListingVerdict};
pub use markets::{
    spec_of, Added, Change, Changes, Entry, Lifecycle, ListingOutcome, Refusal, Registry,
    RegistryConfig, RegistryCounters, CONFIRM_IDS_MAX,
};
pub use selection::{Partition, PartitionError, SelectionRules};

/// Builders shared by the registry's tests.
#[cfg(test)]
pub(crate) mod tests_kit {
    use crate::protocol::gamma::GammaMarket;
    use crate::{MarketId, TokenId};

    /// An open, tradeable market with no figures and no end date.
    pub fn market(cid: &str, slug: &str, tokens: [&str; 2]) -> GammaMarket {
        GammaMarket {
            id: "1".into(),
            condition_id: MarketId::new(cid),
            question: String::new(),
            slug: slug.into(),
            end_date: None,
            tokens: tokens.iter().map(|t| TokenId::new(t)).collect(),
            outcomes: Vec::new(),
            active: true,
            closed: false,
            archived: false,
            enable_order_book: true,
            accepting_orders: true,
            neg_risk: false,
            tick_size: None,
            min_order_size: None,
            volume: None,
            liquidity: None,
        }
    }

    /// Market `i` of a numbered universe: condition id `0x{i:04}`, tokens `{i}1`, `{i}2`.
    pub fn numbered(i: usize) -> GammaMarket {
        market(&format!("0x{i:04}"), &format!("m{i}"), [&format!("{i}1"), &format!("{i}2")])
    }
}
