//! The BOOK JSON's levels (`[["0.45","100"],…]`, as `polybook::view` writes them) read back.

use std::collections::BTreeMap;

use serde_json::Value;

/// A price text in millionths; panics on anything else, since the engine wrote it.
pub fn price_units(text: &str) -> u64 {
    polybook::Price::parse(text)
        .map(|p| u64::from(p.units()))
        .unwrap_or_else(|e| panic!("price {text:?}: {e}"))
}

/// One side's levels as price (millionths) → size text; a level that is not a pair of strings
/// panics.
pub fn side_map(levels: &Value) -> BTreeMap<u64, String> {
    let text = |v: &Value| v.as_str().unwrap_or_else(|| panic!("level {levels}")).to_owned();
    levels
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| (price_units(&text(&l[0])), text(&l[1])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_map_reads_levels_in_millionths() {
        let v = serde_json::json!([["0.45", "100"], ["0.5", "2.5"]]);
        let m = side_map(&v);
        assert_eq!(m.get(&450_000).map(String::as_str), Some("100"));
        assert_eq!(m.get(&500_000).map(String::as_str), Some("2.5"));
        assert!(side_map(&Value::Null).is_empty());
    }
}
