//! Long seeded streams as one connection of the simulated venue receives them, written as a
//! capture (`<recv_ns> <frame>` per line, [`crate::capture`]) for `polybook replay`: the way
//! to measure a store's false alarms on real-shaped traffic without the network.

use hashbrown::HashSet;

use super::model::{SimConfig, SimExchange, SimFrame};
use crate::capture::format_line;
use crate::decimal::{Size, SCALE};

/// One connection subscribed to whole markets (both tokens, as the engine subscribes) until
/// `tokens_per_conn` tokens, then `events` venue events at one per millisecond: its opening
/// dump and every frame it would receive (custom features on), one capture line each, the
/// receive time being the venue time (strictly increasing). Only markets that `polybook
/// replay`'s defaults can hash are taken (min_order_size 5, neg_risk false); the tick comes
/// from the opening books.
pub fn capture_lines(cfg: SimConfig, tokens_per_conn: usize, events: usize) -> Vec<String> {
    capture(cfg, tokens_per_conn, events, false)
}

/// Like [`capture_lines`], but only the YES token of each market, as in the 2026-07 live
/// capture: every `price_change` still carries the NO token's entries, and the NO token's
/// trades reach the connection only inside the YES token's hashes.
pub fn capture_lines_yes_only(
    cfg: SimConfig,
    tokens_per_conn: usize,
    events: usize,
) -> Vec<String> {
    capture(cfg, tokens_per_conn, events, true)
}

fn capture(cfg: SimConfig, tokens_per_conn: usize, events: usize, yes_only: bool) -> Vec<String> {
    let mut ex = SimExchange::new(cfg);
    let mut tokens: Vec<String> = Vec::new();
    let mut subscribed: HashSet<(u32, u8)> = HashSet::new();
    let five = Size::from_units(5 * SCALE);
    for (i, m) in ex.markets().iter().enumerate() {
        let per_market = if yes_only { 1 } else { 2 };
        if tokens.len() + per_market > tokens_per_conn {
            break;
        }
        if m.min_order_size() != five || m.neg_risk {
            continue;
        }
        for o in 0..per_market {
            tokens.push(m.tokens[o].to_string());
            subscribed.insert((i as u32, o as u8));
        }
    }
    let mut lines = Vec::with_capacity(events / 4 + 1);
    let mut last_ns = 0u64;
    let mut push = |ms: u64, text: &str| {
        let ns = (ms.saturating_mul(1_000_000)).max(last_ns + 1);
        last_ns = ns;
        lines.push(format_line(ns, text));
    };
    let t0 = ex.now_ms();
    let dump = ex.opening_dump(tokens.iter().map(String::as_str));
    push(t0, &dump);
    let mut frames: Vec<SimFrame> = Vec::new();
    for i in 0..events as u64 {
        let now = t0 + 1 + i;
        frames.clear();
        ex.step(now, &mut frames);
        for f in &frames {
            let to_us = f.broadcast
                || match f.token {
                    Some(o) => subscribed.contains(&(f.market, o)),
                    None => {
                        subscribed.contains(&(f.market, 0)) || subscribed.contains(&(f.market, 1))
                    }
                };
            if to_us {
                push(now, &f.text);
            }
        }
    }
    lines
}
