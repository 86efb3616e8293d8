//! The simulator's truth (`/sim/markets`, `/sim/book/{token}`) against the engine's books
//! (`/stats`, `/books/{token}`): the one definition of "the engine has the venue's books".

use serde_json::Value;

/// One token the simulator lists, with its market's place in the listing (markets are listed
/// in creation order, so a low index was there from the start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimToken {
    pub id: String,
    pub active: bool,
    pub market_index: usize,
}

/// Every token of a `/sim/markets` answer.
pub fn sim_tokens(markets: &Value) -> Vec<SimToken> {
    let mut out = Vec::new();
    for (market_index, m) in markets.as_array().into_iter().flatten().enumerate() {
        let active = m["active"].as_bool().unwrap_or(false);
        for t in m["tokens"].as_array().into_iter().flatten() {
            let id = t.as_str().unwrap_or_default().to_owned();
            out.push(SimToken { id, active, market_index });
        }
    }
    out
}

fn total(stats: &Value, key: &str) -> u64 {
    stats["totals"][key].as_u64().unwrap_or(0)
}

/// A `/stats` answer says the engine has at least `want` books and every one is live or
/// resolved; otherwise how far it is.
pub fn books_settled(stats: &Value, want: u64) -> Result<(), String> {
    let (books, live, resolved) =
        (total(stats, "books"), total(stats, "books_live"), total(stats, "books_resolved"));
    if books >= want && live + resolved == books {
        Ok(())
    } else {
        Err(format!("books {books}, live {live}, resolved {resolved}"))
    }
}

/// One engine book judged equal to the truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compared {
    /// Listed and resolved between two discovery runs: never open while the engine looked.
    SkippedResolved,
    /// Status, levels and tick size agree; the last trade may not (a trade missed while a
    /// connection was down cannot be recovered: snapshots carry no trade details).
    Equal { last_trade_equal: bool },
}

/// How one engine book differs from the truth.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BookMismatch {
    #[error("engine has no book (HTTP {0})")]
    NoBook(u16),
    #[error("status {got} want {want}")]
    Status { got: Value, want: &'static str },
    #[error("{key} differs")]
    Field { key: &'static str },
}

/// Judges the engine's `/books/{token}` answer (`status`, `ours`) against the simulator's
/// `/sim/book/{token}` (`truth`) for a token whose market is `active` or resolved.
pub fn compare_book(
    truth: &Value,
    status: u16,
    ours: &Value,
    active: bool,
) -> Result<Compared, BookMismatch> {
    if status == 404 && !active {
        return Ok(Compared::SkippedResolved);
    }
    if status != 200 {
        return Err(BookMismatch::NoBook(status));
    }
    let want = if active { "live" } else { "resolved" };
    // A paused simulator is a silent venue: after `integrity.stale_after_ms` the engine's live
    // books honestly say `stale`, with the same levels.
    let stale_ok = active && ours["status"] == "stale";
    if ours["status"] != want && !stale_ok {
        return Err(BookMismatch::Status { got: ours["status"].clone(), want });
    }
    for key in ["bids", "asks", "tick_size"] {
        if ours[key] != truth[key] {
            return Err(BookMismatch::Field { key });
        }
    }
    Ok(Compared::Equal { last_trade_equal: ours["last_trade"] == truth["last_trade"] })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compare_book_judges_status_levels_and_trade() {
        let truth = json!({"bids": [["0.4", "1"]], "asks": [], "tick_size": "0.01",
            "last_trade": null});
        let mut ours = truth.clone();
        ours["status"] = json!("live");
        assert_eq!(
            compare_book(&truth, 200, &ours, true),
            Ok(Compared::Equal { last_trade_equal: true })
        );
        ours["status"] = json!("stale");
        assert!(compare_book(&truth, 200, &ours, true).is_ok());
        assert!(matches!(
            compare_book(&truth, 200, &ours, false),
            Err(BookMismatch::Status { want: "resolved", .. })
        ));
        assert_eq!(compare_book(&truth, 404, &ours, false), Ok(Compared::SkippedResolved));
        assert_eq!(compare_book(&truth, 404, &ours, true), Err(BookMismatch::NoBook(404)));
        ours["status"] = json!("live");
        ours["last_trade"] = json!({"price": "0.5"});
        assert_eq!(
            compare_book(&truth, 200, &ours, true),
            Ok(Compared::Equal { last_trade_equal: false })
        );
        ours["bids"] = json!([]);
        assert_eq!(
            compare_book(&truth, 200, &ours, true),
            Err(BookMismatch::Field { key: "bids" })
        );
    }

    #[test]
    fn sim_tokens_and_settled_read_the_answers() {
        let markets =
            json!([{"active": true, "tokens": ["1", "2"]}, {"active": false, "tokens": ["3"]}]);
        let t = sim_tokens(&markets);
        assert_eq!(t.len(), 3);
        assert_eq!(t[2], SimToken { id: "3".into(), active: false, market_index: 1 });
        let stats = json!({"totals": {"books": 3, "books_live": 2, "books_resolved": 1}});
        assert_eq!(books_settled(&stats, 3), Ok(()));
        assert!(books_settled(&stats, 4).is_err());
    }
}
