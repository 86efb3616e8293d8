//! The simulated Gamma API: market objects shaped like the real ones (`clobTokenIds` and
//! `outcomes` are JSON-encoded strings inside the JSON, numbers where Gamma has numbers) and the
//! keyset and legacy offset listings.

use std::fmt::Write;

use super::frames::json_str;
use super::model::{MarketState, SimExchange, SimMarket};

/// Most markets per page, as on the venue (larger limits are silently capped).
pub const PAGE_LIMIT_MAX: usize = 100;

/// One Gamma market object.
pub fn market_json(m: &SimMarket) -> String {
    let closed = !m.is_active();
    let (p0, p1) = match m.state {
        MarketState::Resolved { winner: 0, .. } => ("1".to_owned(), "0".to_owned()),
        MarketState::Resolved { .. } => ("0".to_owned(), "1".to_owned()),
        MarketState::Active => {
            let mid = m.book(0).midpoint().unwrap_or_default();
            (mid.to_string(), mid.complement().unwrap_or_default().to_string())
        }
    };
    let outcomes = json_str(&format!("[\"{}\", \"{}\"]", m.outcomes[0], m.outcomes[1]));
    let prices = json_str(&format!("[\"{p0}\", \"{p1}\"]"));
    let token_ids = json_str(&format!("[\"{}\", \"{}\"]", m.tokens[0], m.tokens[1]));
    let mut s = String::with_capacity(1500);
    let _ = write!(
        s,
        "{{\"id\":\"{id}\",\"question\":{q},\"conditionId\":\"{cid}\",\"slug\":\"{slug}\",\
         \"endDate\":\"{end}\",\"startDate\":\"{start}\",\"description\":{q},\
         \"outcomes\":{outcomes},\"outcomePrices\":{prices},\"active\":true,\"closed\":{closed},\
         \"archived\":false,\"restricted\":true,\"questionID\":\"{qid}\",\
         \"enableOrderBook\":true,\"orderPriceMinTickSize\":{tick},\"orderMinSize\":{mos},\
         \"endDateIso\":\"{end_day}\",\"clobTokenIds\":{token_ids},\
         \"acceptingOrders\":{accepting},\"negRisk\":{neg_risk}}}",
        id = m.gamma_id,
        q = json_str(&m.question),
        cid = m.condition_id,
        slug = m.slug,
        end = iso8601(m.end_date_ms),
        start = iso8601(m.created_ms),
        qid = m.question_id,
        tick = m.tick_text(),
        mos = m.min_order_size(),
        end_day = &iso8601(m.end_date_ms)[..10],
        accepting = !closed,
        neg_risk = m.neg_risk,
    );
    s
}

/// Gamma's list filters that the simulator honours (repeatable on the venue).
#[derive(Debug, Clone, Default)]
pub struct GammaFilter {
    pub closed: Option<bool>,
    pub condition_ids: Vec<String>,
    pub slugs: Vec<String>,
    pub clob_token_ids: Vec<String>,
}

impl GammaFilter {
    pub fn closed(closed: Option<bool>) -> GammaFilter {
        GammaFilter { closed, ..GammaFilter::default() }
    }

    fn wants(&self, m: &SimMarket) -> bool {
        self.closed.is_none_or(|c| c != m.is_active())
            && (self.condition_ids.is_empty()
                || self.condition_ids.iter().any(|c| c == m.condition_id.as_str()))
            && (self.slugs.is_empty() || self.slugs.contains(&m.slug))
            && (self.clob_token_ids.is_empty()
                || m.tokens.iter().any(|t| self.clob_token_ids.iter().any(|x| x == t.as_str())))
    }
}

/// `GET /markets/keyset`: `{"markets":[..],"next_cursor":".."}`, `next_cursor` absent on the
/// last page. Markets are ordered by id; the cursor is the last id returned.
pub fn keyset_page(
    ex: &SimExchange,
    after_cursor: Option<&str>,
    limit: usize,
    filter: &GammaFilter,
) -> String {
    let limit = limit.clamp(1, PAGE_LIMIT_MAX);
    let after: u64 = after_cursor.and_then(|c| c.parse().ok()).unwrap_or(0);
    let markets = ex.markets();
    let start = markets.partition_point(|m| m.gamma_id <= after);
    let mut out = String::from("{\"markets\":[");
    let mut n = 0;
    let mut last = None;
    let mut more = false;
    for m in &markets[start..] {
        if !filter.wants(m) {
            continue;
        }
        if n == limit {
            more = true;
            break;
        }
        if n > 0 {
            out.push(',');
        }
        out.push_str(&market_json(m));
        last = Some(m.gamma_id);
        n += 1;
    }
    out.push(']');
    if let (true, Some(id)) = (more, last) {
        let _ = write!(out, ",\"next_cursor\":\"{id}\"");
    }
    out.push('}');
    out
}

/// Legacy `GET /markets?limit&offset`: a bare array.
pub fn offset_page(ex: &SimExchange, offset: usize, limit: usize, filter: &GammaFilter) -> String {
    let limit = limit.clamp(1, PAGE_LIMIT_MAX);
    let mut out = String::from("[");
    for (i, m) in
        ex.markets().iter().filter(|m| filter.wants(m)).skip(offset).take(limit).enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&market_json(m));
    }
    out.push(']');
    out
}

/// `2026-03-12T09:25:00Z` from unix milliseconds (proleptic Gregorian, UTC).
pub fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_known_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_773_307_500_000), "2026-03-12T09:25:00Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
