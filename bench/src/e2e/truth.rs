//! The comparison of the engine's books with the simulator's truth, on 4 threads.

use std::time::Instant;

use anyhow::Result;
use serde_json::{json, Value};

use polybook_testkit::{compare_book, Compared};

use crate::harness::Http;

#[derive(Debug, Default)]
pub(crate) struct Verify {
    pub(crate) tokens: usize,
    pub(crate) compared: usize,
    /// Listed by the simulator, resolved, and never tracked by the engine (not a loss).
    pub(crate) skipped_resolved: usize,
    pub(crate) mismatches: usize,
    /// Books equal but the last trade differs (informational).
    pub(crate) last_trade_diffs: usize,
    /// Of those, on markets listed at start (subscribed before any event).
    pub(crate) last_trade_diffs_initial: usize,
    /// Levels (both sides) of the compared truth books.
    pub(crate) levels: usize,
    pub(crate) examples: Vec<String>,
    pub(crate) trade_examples: Vec<String>,
    pub(crate) secs: f64,
}

/// A token to compare: its market's active flag, and whether the market was listed at start
/// (the simulator lists markets in creation order).
#[derive(Debug, Clone)]
pub(crate) struct Tok {
    pub(crate) id: String,
    pub(crate) active: bool,
    pub(crate) initial: bool,
}

/// Every simulator token, or an evenly spread sample.
pub(crate) fn sim_tokens(h: &Http, sim: &str, initial: usize, max: usize) -> Result<Vec<Tok>> {
    let markets = h.get_ok(&format!("{sim}/sim/markets"))?;
    let all: Vec<Tok> = polybook_testkit::sim_tokens(&markets)
        .into_iter()
        .map(|t| Tok { id: t.id, active: t.active, initial: t.market_index < initial })
        .collect();
    if all.len() <= max {
        return Ok(all);
    }
    let step = all.len() as f64 / max as f64;
    Ok((0..max).filter_map(|i| all.get((i as f64 * step) as usize).cloned()).collect())
}

pub(crate) fn compare_one(h: &Http, sim: &str, api: &str, tok: &Tok, v: &mut Verify) {
    let (token, active) = (tok.id.as_str(), tok.active);
    let truth = h.get(&format!("{sim}/sim/book/{token}"));
    let ours = h.get(&format!("{api}/books/{token}"));
    let mut bad = |why: String| {
        v.mismatches += 1;
        if v.examples.len() < 5 {
            v.examples.push(why);
        }
    };
    let (truth, (status, ours)) = match (truth, ours) {
        (Ok((200, t)), Ok(o)) => (t, o),
        (t, o) => return bad(format!("{token}: truth {t:?} ours {o:?}")),
    };
    let verdict = compare_book(&truth, status, &ours, active);
    if verdict == Ok(Compared::SkippedResolved) {
        v.skipped_resolved += 1;
        return;
    }
    v.compared += 1;
    for side in ["bids", "asks"] {
        v.levels += truth[side].as_array().map_or(0, Vec::len);
    }
    let last_trade_equal = match verdict {
        Ok(Compared::Equal { last_trade_equal }) => last_trade_equal,
        Ok(Compared::SkippedResolved) => true,
        Err(e) => return bad(format!("{token}: {e}")),
    };
    if !last_trade_equal {
        v.last_trade_diffs += 1;
        if tok.initial {
            v.last_trade_diffs_initial += 1;
        }
        if v.trade_examples.len() < 3 {
            v.trade_examples.push(format!(
                "{token}: ours {} truth {}",
                ours["last_trade"], truth["last_trade"]
            ));
        }
    }
}

/// Compares books with the truth on 4 threads.
pub(crate) fn verify(h: &Http, sim: &str, api: &str, initial: usize, max: usize) -> Result<Verify> {
    let t = Instant::now();
    let tokens = sim_tokens(h, sim, initial, max)?;
    let chunk = tokens.len().div_ceil(4).max(1);
    let parts: Vec<Verify> = std::thread::scope(|s| {
        let handles: Vec<_> = tokens
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let h = Http::new();
                    let mut v = Verify::default();
                    for tok in part {
                        compare_one(&h, sim, api, tok, &mut v);
                        v.tokens += 1;
                    }
                    v
                })
            })
            .collect();
        handles.into_iter().map(|j| j.join().unwrap_or_default()).collect()
    });
    let mut v = Verify { tokens: tokens.len(), ..Verify::default() };
    let mut done = 0;
    for p in parts {
        done += p.tokens;
        v.compared += p.compared;
        v.skipped_resolved += p.skipped_resolved;
        v.mismatches += p.mismatches;
        v.last_trade_diffs += p.last_trade_diffs;
        v.last_trade_diffs_initial += p.last_trade_diffs_initial;
        v.levels += p.levels;
        v.examples.extend(p.examples);
        v.trade_examples.extend(p.trade_examples);
    }
    // A thread that panicked returned nothing: its tokens count as mismatches (unverified).
    v.mismatches += v.tokens.saturating_sub(done);
    v.examples.truncate(5);
    v.secs = t.elapsed().as_secs_f64();
    Ok(v)
}

pub(crate) fn verify_json(v: &Verify) -> Value {
    json!({
        "tokens_checked": v.tokens,
        "compared": v.compared,
        "skipped_resolved_never_tracked": v.skipped_resolved,
        "mismatches": v.mismatches,
        "last_trade_diffs": v.last_trade_diffs,
        "last_trade_diffs_on_initial_markets": v.last_trade_diffs_initial,
        "last_trade_note": "a market listed during the run can trade before the engine subscribes; its opening book carries no trade details",
        "examples": v.examples,
        "last_trade_examples": v.trade_examples,
        "secs": v.secs,
    })
}
