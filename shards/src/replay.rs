//! `polybook replay`: apply a capture or an engine recording with the core and report books and
//! counters. Files come from outside and may be damaged anywhere: every line is read as bytes,
//! and a line that is not usable (invalid UTF-8, NUL, too long, a bad escape) is a counted,
//! typed error; the rest of the file is still replayed.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};

use polybook::book::TokenMeta;
use polybook::capture::{apply_capture_line, classify_line, settle_at_end, LineCounts, LineError};
use polybook::store::{NoSink, StoreCounters};
use polybook::view::BookView;
use polybook::{BookStore, StoreConfig};

/// Longest line read; longer ones are skipped (and counted) without being held in memory. The
/// venue's largest frames are opening dumps of ~500 books, a few MiB.
pub const LINE_BYTES_MAX: usize = 32 << 20;

/// What a replay saw.
#[derive(Debug, Default, serde::Serialize)]
pub struct ReplayStats {
    pub lines: u64,
    pub bad_lines: u64,
    /// Lines that could not be read as text, by kind, and tolerated oddities.
    pub line_errors: LineCounts,
    pub books: usize,
    /// The settings of the recording's header (None for captures and version 1 recordings).
    pub settings: Option<polybook::capture::RecordingSettings>,
    #[serde(flatten)]
    pub store: StoreCounters,
}

/// Reads `input` line by line as bytes and calls `each` with the line's text (or its error)
/// and its 1-based number. Only an I/O error of the reader stops it.
fn for_each_line(
    mut input: impl BufRead,
    counts: &mut LineCounts,
    mut each: impl FnMut(u64, Result<&str, LineError>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut n = 0u64;
    loop {
        buf.clear();
        let (read, too_long) = read_line_capped(&mut input, &mut buf)?;
        if read == 0 {
            return Ok(());
        }
        n += 1;
        let terminated = buf.last() == Some(&b'\n');
        if terminated {
            buf.pop();
        } else {
            counts.unterminated_last_line += 1;
        }
        if too_long {
            counts.add(LineError::TooLong);
            each(n, Err(LineError::TooLong))?;
            continue;
        }
        let line = classify_line(&buf, counts);
        if let Err(e) = line {
            counts.add(e);
        }
        each(n, line)?;
    }
}

/// `read_until(b'\n')` that stops keeping bytes past [`LINE_BYTES_MAX`] (but still consumes
/// the line). Returns bytes consumed and whether the line was cut.
fn read_line_capped(input: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<(usize, bool)> {
    let mut total = 0;
    let mut too_long = false;
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            return Ok((total, too_long));
        }
        let (used, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if !too_long && buf.len() + used <= LINE_BYTES_MAX {
            buf.extend_from_slice(&chunk[..used]);
        } else if !too_long {
            too_long = true;
            buf.clear();
        }
        input.consume(used);
        total += used;
        if done {
            if too_long {
                buf.push(b'\n');
            }
            return Ok((total, too_long));
        }
    }
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
    let mut counts = LineCounts::default();
    for_each_line(input, &mut counts, |n, line| {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                stats.lines += 1;
                stats.bad_lines += 1;
                return writeln!(errors, "line {n}: {}: {e}", e.as_str());
            }
        };
        // The receive time drives the burst-aware checks (run ends by quiet, windows).
        let Some(report) = apply_capture_line(&mut store, line, &mut NoSink) else {
            return Ok(());
        };
        stats.lines += 1;
        if !report.errors.is_empty() {
            stats.bad_lines += 1;
            for e in &report.errors {
                writeln!(errors, "line {n}: {}: {}", e.kind.as_str(), e.detail)?;
            }
        }
        Ok(())
    })?;
    settle_at_end(&mut store, &mut NoSink);
    stats.line_errors = counts;
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

/// Whether `path` is an engine recording (a directory of `.rec` files, or a file that starts
/// with a recording header) rather than a plain capture.
pub fn is_recording(path: &std::path::Path) -> bool {
    if path.is_dir() {
        return true;
    }
    let Ok(f) = std::fs::File::open(path) else { return false };
    let mut first = Vec::new();
    let _ = std::io::BufReader::new(f).take(256).read_until(b'\n', &mut first);
    first.starts_with(b"#polybook-recording ")
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

/// The settings in the first file's header (version 2), if any.
fn recording_settings(
    path: &std::path::Path,
) -> std::io::Result<Option<polybook::capture::RecordingSettings>> {
    let f = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut first = Vec::new();
    let _ = f.take(64 << 10).read_until(b'\n', &mut first)?;
    let text = String::from_utf8_lossy(&first);
    match polybook::capture::parse_record_line(text.trim_end()) {
        Ok(Some(polybook::capture::RecordLine::Header(s))) => Ok(s),
        _ => Ok(None),
    }
}

/// Replays engine recordings: repeats each shard's store calls in order, with the integrity
/// settings the engine recorded, which rebuilds the exact books and statuses the engine had.
/// Bad lines are reported and counted.
pub fn replay_recording(
    files: &[std::path::PathBuf],
    errors: &mut impl Write,
) -> std::io::Result<(BookStore, ReplayStats)> {
    let settings = match files.first() {
        Some(f) => recording_settings(f)?,
        None => None,
    };
    let config = settings.map_or_else(StoreConfig::default, |s| s.store_config());
    let mut store = BookStore::new(config);
    let mut stats = ReplayStats { settings, ..ReplayStats::default() };
    let mut counts = LineCounts::default();
    let mut bad_escapes = 0u64;
    for path in files {
        let f = std::io::BufReader::new(std::fs::File::open(path)?);
        // Each file says its own version (files of older runs may sit beside newer ones).
        let mut v2 = false;
        for_each_line(f, &mut counts, |n, line| {
            stats.lines += 1;
            let bad = |stats: &mut ReplayStats, errors: &mut dyn Write, what: &str| {
                stats.bad_lines += 1;
                writeln!(errors, "{}:{n}: {what}", path.display())
            };
            let line = match line {
                Ok(l) => l,
                Err(e) => return bad(&mut stats, errors, e.as_str()),
            };
            let rec = match polybook::capture::parse_record_line(line) {
                Ok(Some(rec)) => rec,
                Ok(None) => return Ok(()),
                Err(e) => return bad(&mut stats, errors, &e.to_string()),
            };
            if let polybook::capture::RecordLine::Header(s) = &rec {
                v2 = s.is_some();
            }
            match polybook::capture::replay_record_line(&mut store, &rec, v2, &mut NoSink) {
                Ok(Some(r)) if !r.errors.is_empty() => {
                    stats.bad_lines += 1;
                    for e in &r.errors {
                        writeln!(
                            errors,
                            "{}:{n}: {}: {}",
                            path.display(),
                            e.kind.as_str(),
                            e.detail
                        )?;
                    }
                    Ok(())
                }
                Ok(_) => Ok(()),
                Err(e) => {
                    bad_escapes += 1;
                    bad(&mut stats, errors, e.as_str())
                }
            }
        })?;
    }
    counts.bad_escape += bad_escapes;
    stats.line_errors = counts;
    stats.books = store.len();
    stats.store = store.counters().clone();
    Ok((store, stats))
}
