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
    let mut now_ms = 0;
    for (n, line) in input.lines().enumerate() {
        let line = line?;
        let Some(parsed) = parse_line(&line) else { continue };
        stats.lines += 1;
        // The receive time drives the burst-aware checks (run ends by quiet, windows).
        if let Some(ns) = parsed.recv_ns {
            now_ms = ns / 1_000_000;
            store.set_now_ms(now_ms);
            store.settle(now_ms, &mut NoSink);
        }
        let report = store.apply_frame(parsed.frame, &mut NoSink);
        if !report.errors.is_empty() {
            stats.bad_lines += 1;
            for e in &report.errors {
                writeln!(errors, "line {}: {}: {}", n + 1, e.kind.as_str(), e.detail)?;
            }
        }
    }
    settle_at_end(&mut store, now_ms);
    stats.books = store.len();
    stats.store = store.counters().clone();
    Ok((store, stats))
}

/// The input ended: every open claim is judged (runs end, then windows pass).
fn settle_at_end(store: &mut BookStore, now_ms: u64) {
    let end = now_ms.saturating_add(3_600_000);
    store.settle(end, &mut NoSink);
    store.settle(end.saturating_add(3_600_000), &mut NoSink);
}

/// `{"books": {TOKEN_ID: BOOK, ...}, "stats": {...}}`, books ordered by token id.
pub fn dump_json(store: &BookStore, stats: &ReplayStats) -> serde_json::Result<String> {
    let books: BTreeMap<&str, BookView<'_>> =
        store.books().map(|b| (b.token().as_str(), BookView::new(b))).collect();
    serde_json::to_string_pretty(&serde_json::json!({ "books": books, "stats": stats }))
}

/// Whether `path` is an engine recording (a directory of `.rec` files, or a file that starts
/// with the recording header) rather than a plain capture.
pub fn is_recording(path: &std::path::Path) -> bool {
    if path.is_dir() {
        return true;
    }
    let Ok(f) = std::fs::File::open(path) else { return false };
    let mut first = String::new();
    let _ = std::io::BufReader::new(f).read_line(&mut first);
    first.trim_end() == polybook::capture::RECORDING_HEADER
}

/// The `.rec` files under `path` (or `path` itself), in name order: per shard, in the order
/// they were written; shards own disjoint books, so their files may be applied one after another.
pub fn recording_files(path: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(path)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "rec"))
        .collect();
    files.sort();
    Ok(files)
}

/// Replays engine recordings: repeats each shard's store calls in order, which rebuilds the
/// exact books the engine had. Bad lines are reported and counted.
pub fn replay_recording(
    files: &[std::path::PathBuf],
    errors: &mut impl Write,
) -> std::io::Result<(BookStore, ReplayStats)> {
    let mut store = BookStore::new(StoreConfig::default());
    let mut stats = ReplayStats::default();
    for path in files {
        let f = std::io::BufReader::new(std::fs::File::open(path)?);
        for (n, line) in f.lines().enumerate() {
            let line = line?;
            stats.lines += 1;
            match polybook::capture::parse_record_line(&line) {
                Ok(Some(rec)) => {
                    let report =
                        polybook::capture::replay_record_line(&mut store, &rec, &mut NoSink);
                    if let Some(r) = report.filter(|r| !r.errors.is_empty()) {
                        stats.bad_lines += 1;
                        for e in &r.errors {
                            writeln!(
                                errors,
                                "{}:{}: {}: {}",
                                path.display(),
                                n + 1,
                                e.kind.as_str(),
                                e.detail
                            )?;
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    stats.bad_lines += 1;
                    writeln!(errors, "{}:{}: {e}", path.display(), n + 1)?;
                }
            }
        }
    }
    let now = store.now_ms();
    settle_at_end(&mut store, now);
    stats.books = store.len();
    stats.store = store.counters().clone();
    Ok((store, stats))
}
