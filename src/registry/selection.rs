//! `[selection]` as a rule: which listed markets the registry carries, including this
//! instance's share of the universe (`partition = "I/N"`, see [`Partition`]).

use crate::protocol::gamma::GammaMarket;
use crate::routing::partition_for;

/// This instance's share of the universe: the markets whose [`partition_for`] of the condition
/// id is `index` out of `count`. N instances with the same `count` and `index` 0..N-1 carry
/// every market exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub index: u32,
    pub count: u32,
}

/// Why a `partition` text is not `I/N` with 0 <= I < N.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartitionError {
    #[error("expected \"I/N\" (two whole numbers), got {0:?}")]
    Syntax(String),
    #[error("N must be at least 1")]
    NoInstances,
    #[error("I = {index} must be below N = {count}")]
    IndexOutOfRange { index: u32, count: u32 },
}

impl Partition {
    pub fn new(index: u32, count: u32) -> Result<Partition, PartitionError> {
        if count == 0 {
            return Err(PartitionError::NoInstances);
        }
        if index >= count {
            return Err(PartitionError::IndexOutOfRange { index, count });
        }
        Ok(Partition { index, count })
    }

    /// Whether this instance carries `condition_id`.
    pub fn holds(&self, condition_id: &str) -> bool {
        partition_for(condition_id, self.count) == self.index
    }
}

impl std::str::FromStr for Partition {
    type Err = PartitionError;
    fn from_str(s: &str) -> Result<Partition, PartitionError> {
        let syntax = || PartitionError::Syntax(s.to_owned());
        let (i, n) = s.trim().split_once('/').ok_or_else(syntax)?;
        let whole = |t: &str| {
            let t = t.trim();
            // `u32::from_str` takes a leading '+'; "I/N" is digits only.
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            t.parse::<u32>().map_err(|_| syntax())
        };
        Partition::new(whole(i)?, whole(n)?)
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Which markets to carry. Empty lists and zero thresholds select every listed market.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SelectionRules {
    /// Condition ids; united with `slugs` and `token_ids` when any list is given.
    pub condition_ids: Vec<String>,
    pub slugs: Vec<String>,
    /// Markets holding any of these outcome tokens.
    pub token_ids: Vec<String>,
    /// Minimum volume and liquidity in USDC; they gate every market, listed or not.
    pub volume_min: f64,
    pub liquidity_min: f64,
    /// This instance's share; `None` carries every market. Gates listed markets too.
    pub partition: Option<Partition>,
}

impl SelectionRules {
    /// Explicit lists are united; thresholds apply to every market.
    pub fn selects(&self, m: &GammaMarket) -> bool {
        let any_list =
            !(self.condition_ids.is_empty() && self.slugs.is_empty() && self.token_ids.is_empty());
        let listed = !any_list
            || self.condition_ids.iter().any(|c| c == m.condition_id.as_str())
            || self.slugs.contains(&m.slug)
            || m.tokens.iter().any(|t| self.token_ids.iter().any(|x| x == t.as_str()));
        // A market Gamma gives no figure for counts as 0, so any threshold leaves it out.
        let ours = self.partition.is_none_or(|p| p.holds(m.condition_id.as_str()));
        listed
            && ours
            && m.volume.unwrap_or(0.0) >= self.volume_min
            && m.liquidity.unwrap_or(0.0) >= self.liquidity_min
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests_kit::market;

    #[test]
    fn selection_unites_lists_and_applies_thresholds() {
        let mut a = market("0xa", "alpha", ["1", "2"]);
        a.volume = Some(10.0);
        let mut b = market("0xb", "beta", ["3", "4"]);
        b.volume = Some(1000.0);
        let all = SelectionRules::default();
        assert!(all.selects(&a) && all.selects(&b));
        let by_list = SelectionRules {
            condition_ids: vec!["0xa".into()],
            token_ids: vec!["4".into()],
            ..SelectionRules::default()
        };
        assert!(by_list.selects(&a) && by_list.selects(&b));
        let by_slug = SelectionRules { slugs: vec!["beta".into()], ..SelectionRules::default() };
        assert!(!by_slug.selects(&a) && by_slug.selects(&b));
        let rich = SelectionRules { volume_min: 100.0, ..SelectionRules::default() };
        assert!(!rich.selects(&a) && rich.selects(&b));
        let liquid = SelectionRules { liquidity_min: 1.0, ..SelectionRules::default() };
        assert!(!liquid.selects(&b), "no liquidity figure counts as none");
    }

    #[test]
    fn partition_parses_i_of_n_and_rejects_the_rest() {
        assert_eq!("0/1".parse(), Ok(Partition { index: 0, count: 1 }));
        assert_eq!(" 2 / 3 ".parse(), Ok(Partition { index: 2, count: 3 }));
        assert_eq!("1/0".parse::<Partition>(), Err(PartitionError::NoInstances));
        assert_eq!(
            "2/2".parse::<Partition>(),
            Err(PartitionError::IndexOutOfRange { index: 2, count: 2 })
        );
        for bad in ["", "1", "1/", "/2", "-1/2", "+1/2", "1/2/3", "a/b", "1.0/2", "1/99999999999"] {
            assert!(matches!(bad.parse::<Partition>(), Err(PartitionError::Syntax(_))), "{bad}");
        }
        assert_eq!(Partition { index: 1, count: 4 }.to_string(), "1/4");
    }

    #[test]
    fn partition_gates_listed_markets_too() {
        let a = market("0xa", "alpha", ["1", "2"]);
        let mine = partition_for("0xa", 2);
        let rules = |index| SelectionRules {
            condition_ids: vec!["0xa".into()],
            partition: Some(Partition { index, count: 2 }),
            ..SelectionRules::default()
        };
        assert!(rules(mine).selects(&a));
        assert!(!rules(1 - mine).selects(&a));
    }

    proptest::proptest! {
        /// N instances with I = 0..N-1 carry every market exactly once.
        #[test]
        fn partitions_cover_every_market_exactly_once(
            ids in proptest::collection::vec("0x[0-9a-f]{1,64}", 1..50),
            count in 1u32..17,
        ) {
            for id in &ids {
                let m = market(id, "s", ["1", "2"]);
                let holders = (0..count)
                    .filter(|&index| SelectionRules {
                        partition: Some(Partition { index, count }),
                        ..SelectionRules::default()
                    }
                    .selects(&m))
                    .count();
                proptest::prop_assert_eq!(holders, 1, "{} with N = {}", id, count);
            }
        }
    }
}
