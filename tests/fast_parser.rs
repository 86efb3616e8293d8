//! Differential tests of the hand-written fast path (`src/protocol/fast.rs`): `decode_frame`
//! must give exactly what the serde-only path (`decode_frame_serde`) gives — same events, same
//! borrowed strings, same typed errors with the same details — for every real fixture, for the
//! simulated venue's frames, and for random mutations of both (byte edits, deletions, insertions
//! of JSON punctuation and whitespace, key reorders). It must never panic.
//!
//! Case counts are modest so the file runs in a few seconds in debug builds; scale them with
//! `POLYBOOK_PROPTEST_SCALE` (see tests/properties.rs).

use std::borrow::Cow;
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

use polybook::protocol::market::decode_frame_serde;
use polybook::protocol::{decode_frame, DecodeError, FrameKind, MarketEvent, Text};
use polybook::sim::{SimConfig, SimExchange};

fn cases(base: u32) -> ProptestConfig {
    let scale = std::env::var("POLYBOOK_PROPTEST_SCALE").ok().and_then(|s| s.parse::<u32>().ok());
    ProptestConfig::with_cases(base.saturating_mul(scale.unwrap_or(1).max(1)))
}

type Decoded<'a> = (Result<FrameKind, DecodeError>, Vec<Result<MarketEvent<'a>, DecodeError>>);

fn decode_fast(text: &str) -> Decoded<'_> {
    let mut out = Vec::new();
    let kind = decode_frame(text, |r| out.push(r));
    (kind, out)
}

fn decode_serde(text: &str) -> Decoded<'_> {
    let mut out = Vec::new();
    let kind = decode_frame_serde(text, |r| out.push(r));
    (kind, out)
}

/// Which strings of an event borrow from the frame (`Text` compares by content only).
fn borrowed(e: &MarketEvent<'_>) -> Vec<bool> {
    let b = |t: &Text<'_>| matches!(t.0, Cow::Borrowed(_));
    let ob = |t: &Option<Text<'_>>| t.as_ref().map(b);
    match e {
        MarketEvent::PriceChange(p) => {
            let mut v = vec![b(&p.market), ob(&p.event_type).unwrap_or(true)];
            for c in &p.changes {
                v.push(b(&c.asset_id));
                v.push(ob(&c.hash).unwrap_or(true));
            }
            v
        }
        MarketEvent::Book(e) => vec![
            b(&e.market),
            b(&e.asset_id),
            ob(&e.hash).unwrap_or(true),
            ob(&e.last_trade_price).unwrap_or(true),
            ob(&e.event_type).unwrap_or(true),
        ],
        _ => Vec::new(),
    }
}

/// The property: both paths agree exactly. Returns the number of events decoded.
fn same(text: &str) -> Result<usize, TestCaseError> {
    let fast = decode_fast(text);
    let serde = decode_serde(text);
    prop_assert_eq!(&fast, &serde, "frame {:?}", text);
    for (f, s) in fast.1.iter().zip(&serde.1) {
        if let (Ok(f), Ok(s)) = (f, s) {
            prop_assert_eq!(borrowed(f), borrowed(s), "borrowing differs on {:?}", text);
        }
    }
    Ok(fast.1.iter().filter(|r| r.is_ok()).count())
}

fn assert_same(text: &str) -> usize {
    same(text).unwrap_or_else(|e| panic!("{e}"))
}

fn fixtures() -> Vec<String> {
    let dir = format!("{}/tests/data/polymarket", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|n| {
            let path = format!("{dir}/{n}");
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
        })
        .collect()
}

/// Frames of the simulated venue: every event kind, opening dumps and REST bodies.
fn sim_frames(seed: u64, steps: u64) -> Vec<String> {
    let mut ex = SimExchange::new(SimConfig { seed, markets: 12, ..SimConfig::default() });
    let tokens: Vec<String> =
        ex.markets().iter().flat_map(|m| m.tokens.iter().map(|t| t.to_string())).collect();
    let mut out = vec![ex.opening_dump(tokens.iter().map(String::as_str))];
    out.extend(tokens.iter().take(4).filter_map(|t| ex.rest_book(t)));
    let mut frames = Vec::new();
    let t0 = ex.now_ms();
    for i in 0..steps {
        ex.step(t0 + i, &mut frames);
    }
    out.extend(frames.into_iter().map(|f| f.text));
    out
}

/// Mutation seeds: the fixtures and a slice of the simulator's output.
fn corpus() -> &'static [String] {
    static CORPUS: OnceLock<Vec<String>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut c = fixtures();
        c.extend(sim_frames(5, 150));
        c
    })
}

#[test]
fn fixtures_and_sim_frames_decode_identically() {
    let mut ok = 0;
    for text in fixtures() {
        ok += assert_same(&text);
    }
    for seed in [1, 2, 3] {
        let frames = sim_frames(seed, 1500);
        let kinds: std::collections::BTreeSet<&str> = frames
            .iter()
            .filter_map(|f| f.split("\"event_type\":\"").nth(1)?.split('"').next())
            .collect();
        assert!(kinds.len() >= 6, "seed {seed}: {kinds:?}");
        for f in &frames {
            ok += assert_same(f);
        }
    }
    assert!(ok > 3000, "{ok} events decoded");
}

/// JSON punctuation, whitespace (form feed and NBSP are not JSON's), escapes, garbage.
const INSERTS: &[&str] = &[
    " ", "\n", "\t", "\r", "\u{c}", "\u{a0}", "\"", "\\", ",", ":", "{", "}", "[", "]", "null",
    "0", "-", ".", "e", "x", "é", "\u{1}", "\\u0030", "\\\"", "{}", "[]", "\"\"", ",,", "::",
];

/// Values to put in place of a string, or under an extra key.
fn values() -> &'static [String] {
    static VALUES: OnceLock<Vec<String>> = OnceLock::new();
    VALUES.get_or_init(|| {
        // The first eight are also tried under every known key.
        let mut v: Vec<String> = [
            "null",
            "[]",
            "\"0.5\"",
            "\"BUY\"",
            "0",
            "\"book\"",
            "{}",
            "\"+1\"",
            "true",
            "false",
            "tru",
            "-0",
            "01",
            "1.",
            ".5",
            "-",
            "1e5",
            "1E+2",
            "2e-0",
            "1e",
            "-1.25",
            "18446744073709551616",
            "1791125476001",
            "\"\"",
            "\"0\"",
            "\"0.5e0\"",
            "\"-1\"",
            "\" 1\"",
            "\"5000\"",
            "\"99999999999999999999\"",
            "\"buy\"",
            "\"Buy\"",
            "\"SELL\"",
            "\"sell\"",
            "\"price_change\"",
            "\"0x1\"",
            "\"\\u0030\"",
            "\"a\\\"b\"",
            "\"tab\there\"",
            "\"é\"",
            "[1,]",
            "[1 2]",
            "[1}",
            "{\"a\"}",
            "{\"a\" 1}",
            "{\"a\":1 \"b\":2}",
            "{\"a\":1]",
            "[null,{\"b\":[true]}]",
            "{\"event_type\":\"book\"}",
            "[{\"price\":\"0.5\",\"size\":\"1\"}]",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        for depth in [31usize, 32, 33, 34, 127, 128, 129] {
            v.push(format!("{}{}", "[".repeat(depth), "]".repeat(depth)));
            v.push(format!("{}1{}", "{\"a\":[".repeat(depth / 2), "]}".repeat(depth / 2)));
        }
        v
    })
}

/// Keys to insert: unknown ones, known ones (duplicates), legacy ones, odd ones.
const KEYS: &[&str] = &[
    "x",
    "",
    "event_type",
    "market",
    "timestamp",
    "price_changes",
    "asset_id",
    "hash",
    "price",
    "size",
    "side",
    "changes",
    "bids",
    "tick_size",
    "neg_risk",
    "best_bid",
    "m\\u0061rket",
];

#[derive(Debug, Clone)]
enum Edit {
    /// Deletes 1..n bytes at a token boundary.
    Delete(Index, usize),
    /// Replaces any byte with a snippet.
    Replace(Index, usize),
    /// Inserts a snippet at a token boundary.
    Insert(Index, usize),
    /// Replaces a whole string token (key or value) with another value.
    Value(Index, usize),
    /// Inserts `"key":value,` after a `{` or a `,`.
    Member(Index, usize, usize),
    /// Copies a range starting at a boundary to another boundary (duplicate keys, nesting).
    Copy(Index, Index, usize),
    /// Appends a snippet (trailing bytes after the value).
    Append(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let n_values = values().len();
    prop_oneof![
        2 => (any::<Index>(), 1usize..4).prop_map(|(i, n)| Edit::Delete(i, n)),
        1 => (any::<Index>(), 0..INSERTS.len()).prop_map(|(i, k)| Edit::Replace(i, k)),
        3 => (any::<Index>(), 0..INSERTS.len()).prop_map(|(i, k)| Edit::Insert(i, k)),
        3 => (any::<Index>(), 0..n_values).prop_map(|(i, k)| Edit::Value(i, k)),
        3 => (any::<Index>(), 0..KEYS.len(), 0..n_values).prop_map(|(i, k, v)| Edit::Member(i, k, v)),
        1 => (any::<Index>(), any::<Index>(), 1usize..120).prop_map(|(a, b, n)| Edit::Copy(a, b, n)),
        1 => (0..INSERTS.len()).prop_map(Edit::Append),
    ]
}

/// Positions next to JSON punctuation, and both ends.
fn boundaries(b: &[u8]) -> Vec<usize> {
    let mut out = vec![0, b.len()];
    for (i, c) in b.iter().enumerate() {
        if matches!(c, b'"' | b'{' | b'}' | b'[' | b']' | b',' | b':') {
            out.extend([i, i + 1]);
        }
    }
    out
}

/// Spans of string tokens `"..."`, quotes included (escapes are rare in the corpus).
fn strings(b: &[u8]) -> Vec<(usize, usize)> {
    let quotes: Vec<usize> =
        b.iter().enumerate().filter(|(_, c)| **c == b'"').map(|(i, _)| i).collect();
    quotes.chunks_exact(2).map(|q| (q[0], q[1] + 1)).collect()
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut b = text.as_bytes().to_vec();
    for e in edits {
        let bounds = boundaries(&b);
        let at_bound = |i: &Index| bounds[i.index(bounds.len())];
        match e {
            Edit::Delete(i, n) => {
                let at = at_bound(i);
                b.drain(at..(at + n).min(b.len()));
            }
            Edit::Replace(i, k) => {
                if !b.is_empty() {
                    let at = i.index(b.len());
                    b.splice(at..at + 1, INSERTS[*k].bytes());
                }
            }
            Edit::Insert(i, k) => {
                let at = at_bound(i);
                b.splice(at..at, INSERTS[*k].bytes());
            }
            Edit::Value(i, k) => {
                let spans = strings(&b);
                if !spans.is_empty() {
                    let (from, to) = spans[i.index(spans.len())];
                    b.splice(from..to, values()[*k].bytes());
                }
            }
            Edit::Member(i, k, v) => {
                let opens: Vec<usize> = b
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| matches!(c, b'{' | b','))
                    .map(|(i, _)| i + 1)
                    .collect();
                if !opens.is_empty() {
                    let at = opens[i.index(opens.len())];
                    let member = format!("\"{}\":{},", KEYS[*k], values()[*v]);
                    b.splice(at..at, member.into_bytes());
                }
            }
            Edit::Copy(from, to, n) => {
                let from = at_bound(from);
                let piece: Vec<u8> = b[from..(from + n).min(b.len())].to_vec();
                let to = at_bound(to);
                b.splice(to..to, piece);
            }
            Edit::Append(k) => b.extend_from_slice(INSERTS[*k].as_bytes()),
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// Every single structured edit of a few typical frames, exhaustively: each string token replaced
/// by each value, each extra member at each place, each snippet at each token boundary.
#[test]
fn every_single_edit_of_typical_frames_decodes_identically() {
    let sim = sim_frames(9, 60);
    let first = |kind: &str| {
        sim.iter()
            .find(|f| f.starts_with('{') && f.contains(&format!("\"event_type\":\"{kind}\"")))
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} frame"))
    };
    let compact = fixtures()
        .into_iter()
        .find(|f| f.contains("\"price\":\"0.198\""))
        .unwrap_or_else(|| panic!("no compact price_change fixture"));
    let spaced = compact.replace("\",\"", "\", \"").replace("},{", "}, {");
    let small_dump = r#"[{"market":"0x1","asset_id":"7","timestamp":"1","hash":"ab","bids":[{"price":"0.1","size":"5"}],"asks":[],"tick_size":"0.01","event_type":"book","last_trade_price":"0.500"}]"#;
    let mut frames =
        vec![compact, spaced, first("price_change"), first("book"), small_dump.to_owned()];
    frames.dedup();
    // At most `k` positions, evenly spread, both ends kept.
    let spread = |mut v: Vec<usize>, k: usize| {
        v.sort_unstable();
        v.dedup();
        let step = v.len().div_ceil(k).max(1);
        let last = v.last().copied();
        let mut out: Vec<usize> = v.into_iter().step_by(step).collect();
        out.extend(last);
        out.dedup();
        out
    };
    let mut n = 0usize;
    for base in &frames {
        let b = base.as_bytes();
        for (from, to) in strings(b).into_iter().take(60) {
            for v in values() {
                let mut e = b.to_vec();
                e.splice(from..to, v.bytes());
                assert_same(&String::from_utf8_lossy(&e));
                n += 1;
            }
        }
        let opens: Vec<usize> = b
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(c, b'{' | b','))
            .map(|(i, _)| i + 1)
            .collect();
        for at in spread(opens, 24) {
            for (k, key) in KEYS.iter().enumerate() {
                // Every value under an unknown key; a few under the known ones.
                let vs = if k == 0 { values() } else { &values()[..8] };
                for v in vs {
                    let mut e = b.to_vec();
                    e.splice(at..at, format!("\"{key}\":{v},").into_bytes());
                    assert_same(&String::from_utf8_lossy(&e));
                    n += 1;
                }
            }
        }
        for at in spread(boundaries(b), 80) {
            for ins in INSERTS {
                let mut e = b.to_vec();
                e.splice(at..at, ins.bytes());
                assert_same(&String::from_utf8_lossy(&e));
                let mut r = b.to_vec();
                r.splice(at.min(r.len() - 1)..(at + 1).min(r.len()), ins.bytes());
                assert_same(&String::from_utf8_lossy(&r));
                n += 2;
            }
            let mut d = b.to_vec();
            d.remove(at.min(d.len() - 1));
            assert_same(&String::from_utf8_lossy(&d));
            n += 1;
        }
    }
    assert!(n > 10_000, "{n} edits");
}

/// Re-emits JSON with every object's keys permuted by `seed` and whitespace from `ws` between
/// tokens (none when `ws` is empty).
fn reorder(v: &Value, seed: &mut u64, ws: &[&str], out: &mut String) {
    fn next(seed: &mut u64) -> usize {
        *seed =
            seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (*seed >> 33) as usize
    }
    let space = |out: &mut String, r: usize| {
        if !ws.is_empty() && r % 3 == 0 {
            out.push_str(ws[r % ws.len()]);
        }
    };
    match v {
        Value::Object(m) => {
            let mut kv: Vec<(&String, &Value)> = m.iter().collect();
            for i in (1..kv.len()).rev() {
                kv.swap(i, next(seed) % (i + 1));
            }
            out.push('{');
            for (i, (k, v)) in kv.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                space(out, next(seed));
                out.push_str(&Value::String(k.clone()).to_string());
                space(out, next(seed));
                out.push(':');
                space(out, next(seed));
                reorder(v, seed, ws, out);
                space(out, next(seed));
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                space(out, next(seed));
                reorder(v, seed, ws, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

proptest! {
    #![proptest_config(cases(1500))]

    /// Random edits of real and simulated frames: both paths agree, nothing panics.
    #[test]
    fn mutated_frames_decode_identically(
        pick in any::<Index>(),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let c = corpus();
        let text = apply(&c[pick.index(c.len())], &edits);
        same(&text)?;
    }
}

proptest! {
    #![proptest_config(cases(300))]

    /// Any key order and whitespace, at every level; then maybe one edit on top.
    #[test]
    fn reordered_frames_decode_identically(
        pick in any::<Index>(),
        seed in any::<u64>(),
        spaced in prop_oneof![Just(0usize), Just(1), Just(2)],
        edits in prop::collection::vec(edit(), 0..2),
    ) {
        let c = corpus();
        let base = &c[pick.index(c.len())];
        let Ok(value) = serde_json::from_str::<Value>(base) else {
            return Err(TestCaseError::reject("not JSON"));
        };
        let ws: &[&str] = match spaced { 0 => &[], 1 => &[" "], _ => &[" ", "\n", "\t", "\r\n  "] };
        let mut text = String::new();
        let mut s = seed;
        reorder(&value, &mut s, ws, &mut text);
        if edits.is_empty() {
            // Reordering keeps every event: same count as the original frame.
            prop_assert_eq!(same(&text)?, same(base)?);
        } else {
            same(&apply(&text, &edits))?;
        }
    }

    /// Arbitrary text, and text made of JSON's alphabet.
    #[test]
    fn arbitrary_text_decodes_identically(
        s in prop_oneof![
            any::<String>(),
            "[\\[\\]{}\",:0-9a-z_ .\\\\\n-]{0,80}",
            "\\{\"(market|price_changes|event_type|timestamp|bids|asks|asset_id)\":[\\[\\]{}\",:0-9a-z_. ]{0,60}\\}",
        ],
    ) {
        same(&s)?;
    }
}
