//! `[selection]` as a rule: which listed markets the registry carries.

use crate::protocol::gamma::GammaMarket;

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
        listed
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
}
