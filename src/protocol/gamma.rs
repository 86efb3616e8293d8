//! Gamma market objects, as listed by `/markets/keyset` (and legacy `/markets`).
//!
//! `clobTokenIds` and `outcomes` are JSON-encoded strings inside the JSON; numeric fields are
//! JSON numbers whose literal text is kept (via `RawValue`) and parsed exactly, so no float
//! ever stands between Gamma's `0.001` and the book's tick size.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::decimal::{Price, Size};
use crate::ids::{MarketId, TokenId};

/// Why a Gamma answer or market could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GammaError {
    #[error("gamma page is not valid JSON of the expected shape: {0}")]
    Page(String),
    #[error("market {id}: {why}")]
    Market { id: String, why: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMarket<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    condition_id: Option<String>,
    question: Option<String>,
    slug: Option<String>,
    end_date: Option<String>,
    outcomes: Option<String>,
    clob_token_ids: Option<String>,
    active: Option<bool>,
    closed: Option<bool>,
    archived: Option<bool>,
    enable_order_book: Option<bool>,
    accepting_orders: Option<bool>,
    neg_risk: Option<bool>,
    #[serde(borrow)]
    order_price_min_tick_size: Option<&'a RawValue>,
    #[serde(borrow)]
    order_min_size: Option<&'a RawValue>,
    volume_num: Option<serde_json::Number>,
    liquidity_num: Option<serde_json::Number>,
}

#[derive(Deserialize)]
struct WirePage<'a> {
    #[serde(borrow)]
    markets: Vec<&'a RawValue>,
    next_cursor: Option<String>,
}

/// A market as polybook needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct GammaMarket {
    pub id: String,
    pub condition_id: MarketId,
    pub question: String,
    pub slug: String,
    pub end_date: Option<String>,
    pub tokens: Vec<TokenId>,
    pub outcomes: Vec<String>,
    pub active: bool,
    pub closed: bool,
    pub archived: bool,
    pub enable_order_book: bool,
    pub accepting_orders: bool,
    pub neg_risk: bool,
    pub tick_size: Option<Price>,
    pub min_order_size: Option<Size>,
    /// Volume and liquidity in USDC, only for selection thresholds (never book state).
    pub volume: Option<f64>,
    pub liquidity: Option<f64>,
}

impl GammaMarket {
    /// A market with an order book we should subscribe: enabled, open, two tokens.
    pub fn is_tradeable(&self) -> bool {
        self.enable_order_book && self.active && !self.closed && self.tokens.len() == 2
    }
}

/// A keyset page: the markets (each parsed on its own) and the cursor for the next page.
#[derive(Debug)]
pub struct GammaPage {
    pub markets: Vec<Result<GammaMarket, GammaError>>,
    pub next_cursor: Option<String>,
}

/// Parses `{"markets":[...],"next_cursor":"..."}`.
pub fn parse_keyset_page(body: &str) -> Result<GammaPage, GammaError> {
    let page: WirePage<'_> =
        serde_json::from_str(body).map_err(|e| GammaError::Page(e.to_string()))?;
    Ok(GammaPage {
        markets: page.markets.iter().map(|r| parse_market(r.get())).collect(),
        next_cursor: page.next_cursor.filter(|c| !c.is_empty()),
    })
}

/// Parses a legacy `/markets` answer (a bare array).
pub fn parse_market_list(body: &str) -> Result<Vec<Result<GammaMarket, GammaError>>, GammaError> {
    let list: Vec<&RawValue> =
        serde_json::from_str(body).map_err(|e| GammaError::Page(e.to_string()))?;
    Ok(list.iter().map(|r| parse_market(r.get())).collect())
}

fn raw_text(v: Option<&RawValue>) -> Option<&str> {
    v.map(|r| r.get().trim_matches('"')).filter(|s| *s != "null")
}

/// Parses one market object.
pub fn parse_market(obj: &str) -> Result<GammaMarket, GammaError> {
    let w: WireMarket<'_> = serde_json::from_str(obj)
        .map_err(|e| GammaError::Market { id: "?".into(), why: e.to_string() })?;
    let id = raw_text(w.id).unwrap_or("?").to_owned();
    let bad = |why: String| GammaError::Market { id: id.clone(), why };
    let condition_id =
        w.condition_id.filter(|c| !c.is_empty()).ok_or_else(|| bad("no conditionId".into()))?;
    let tokens: Vec<String> = match w.clob_token_ids.as_deref() {
        None | Some("") => Vec::new(),
        Some(s) => serde_json::from_str(s).map_err(|e| bad(format!("clobTokenIds: {e}")))?,
    };
    let outcomes: Vec<String> = match w.outcomes.as_deref() {
        None | Some("") => Vec::new(),
        Some(s) => serde_json::from_str(s).map_err(|e| bad(format!("outcomes: {e}")))?,
    };
    let tick_size = match raw_text(w.order_price_min_tick_size) {
        None => None,
        Some(t) => {
            Some(Price::parse(t).map_err(|e| bad(format!("orderPriceMinTickSize {t}: {e}")))?)
        }
    };
    let min_order_size = match raw_text(w.order_min_size) {
        None => None,
        Some(t) => Some(Size::parse(t).map_err(|e| bad(format!("orderMinSize {t}: {e}")))?),
    };
    Ok(GammaMarket {
        condition_id: MarketId::new(&condition_id),
        question: w.question.unwrap_or_default(),
        slug: w.slug.unwrap_or_default(),
        end_date: w.end_date,
        tokens: tokens.iter().map(|t| TokenId::new(t)).collect(),
        outcomes,
        active: w.active.unwrap_or(false),
        closed: w.closed.unwrap_or(false),
        archived: w.archived.unwrap_or(false),
        enable_order_book: w.enable_order_book.unwrap_or(false),
        accepting_orders: w.accepting_orders.unwrap_or(false),
        neg_risk: w.neg_risk.unwrap_or(false),
        tick_size,
        min_order_size,
        volume: w.volume_num.and_then(|n| n.as_f64()),
        liquidity: w.liquidity_num.and_then(|n| n.as_f64()),
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gamma_market_fixture_parses_exactly() {
        let text = include_str!("../../tests/data/polymarket/gamma_market_2026-03.json");
        let m = parse_market(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.id, "1557558");
        assert_eq!(
            m.condition_id.as_str(),
            "0x78443f961b9a65869dcb39359de9960165c7e5cbad0904eac7f29cd77872a63b"
        );
        assert_eq!(m.tokens.len(), 2);
        assert!(m.tokens[0].as_str().starts_with("1042398980"));
        assert_eq!(m.outcomes, ["Up", "Down"]);
        assert_eq!(m.tick_size, Price::parse("0.01").ok());
        assert_eq!(m.min_order_size, Size::parse("5").ok());
        assert!(m.is_tradeable());
        assert!(!m.neg_risk);
        assert!(m.liquidity.is_some_and(|l| l > 20_000.0 && l < 20_329.0));
        assert!(m.volume.is_some());
    }

    #[test]
    fn gamma_event_markets_parse() {
        let text = include_str!("../../tests/data/polymarket/gamma_event.json");
        let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        let markets = v[0]["markets"].as_array().cloned().unwrap_or_default();
        assert_eq!(markets.len(), 2);
        for m in markets {
            let parsed = parse_market(&m.to_string()).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed.tokens.len(), 2);
        }
    }

    #[test]
    fn keyset_page_and_bad_markets() {
        let body = r#"{"markets":[{"id":"1","conditionId":"0x1","clobTokenIds":"[\"5\", \"6\"]","enableOrderBook":true,"active":true,"closed":false,"orderPriceMinTickSize":0.001},{"id":"2"},{"id":"3","conditionId":"0x3","clobTokenIds":"nope"}],"next_cursor":"abc"}"#;
        let page = parse_keyset_page(body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(page.next_cursor.as_deref(), Some("abc"));
        assert_eq!(page.markets.len(), 3);
        let m0 = page.markets[0].as_ref().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m0.tick_size, Price::parse("0.001").ok());
        assert!(m0.is_tradeable());
        assert!(page.markets[1].is_err());
        assert!(page.markets[2].is_err());
        assert!(parse_keyset_page("{\"markets\":7}").is_err());
        let last = parse_keyset_page(r#"{"markets":[]}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(last.next_cursor, None);
    }
}
