//! `polybook replay`: apply a recorded capture with the core and report books and counters.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use polybook::book::TokenMeta;
use polybook::capture::parse_line;
use polybook::store::{NoSink, StoreCounters};
use polybook::view::BookView;
use polybook::{BookStore, StoreConfig};

/// What a replay saw.
#[derive(Debug, Default, serde::Serialize)]
pub struct ReplayStats {
    pub lines: u64,
    pub bad_lines: u64,
    pub books: usize,
    #[serde(flatten)]
    pub store: StoreCounters,
}

/// Replays `input` into a fresh store. Bad lines are reported to `errors` and counted.
pub fn replay(
    input: impl BufRead,
    meta: TokenMeta,
    verify_hash: bool,
    errors: &mut impl Write,
) -> std::io::Result<(BookStore, ReplayStats)> {
    let config =
        StoreConfig { verify_hash, auto_track: true, default_meta: meta, ..StoreConfig::default() };
    let mut store = BookStore::new(config);
    let mut stats = ReplayStats::default();
    for (n, line) in input.lines().enumerate() {
        let line = line?;
        let Some(parsed) = parse_line(&line) else { continue };
        stats.lines += 1;
        let report = store.apply_frame(parsed.frame, &mut NoSink);
        if !report.errors.is_empty() {
            stats.bad_lines += 1;
            for e in &report.errors {
                writeln!(errors, "line {}: {}: {}", n + 1, e.kind.as_str(), e.detail)?;
            }
        }
    }
    stats.books = store.len();
    stats.store = store.counters().clone();
    Ok((store, stats))
}

/// `{"books": {TOKEN_ID: BOOK, ...}, "stats": {...}}`, books ordered by token id.
pub fn dump_json(store: &BookStore, stats: &ReplayStats) -> serde_json::Result<String> {
    let books: BTreeMap<&str, BookView<'_>> =
        store.books().map(|b| (b.token().as_str(), BookView::new(b))).collect();
    serde_json::to_string_pretty(&serde_json::json!({ "books": books, "stats": stats }))
}
