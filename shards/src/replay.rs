//! `polybook replay`: apply a capture or an engine recording with the core and report books and
//! counters. Files come from outside and may be damaged anywhere: every line is read as bytes,
//! and a line that is not usable (invalid UTF-8, NUL, too long, a bad escape) is a counted,
//! typed error; the rest of the file is still replayed. Recordings may be plain (`.rec`) or
//! zstd-compressed (`.rec.zst`, told by the zstd magic, not the name); a compressed file cut
//! short (the engine was killed) is read up to its last complete block and counted.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};

use polybook::book::TokenMeta;
use polybook::capture::{apply_capture_line, classify_line, settle_at_end, LineCounts, LineError};
use polybook::store::{NoSink, StoreCounters, UpdateSink};
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
    /// `#gap` lines: places where the recorder dropped lines (its queue was full).
    pub recording_gaps: u64,
    /// Lines the recorder dropped, in total (books after a gap may differ from the engine's).
    pub recording_lines_dropped: u64,
    /// Files that ended in the middle (a zstd frame without its end, or a read error).
    pub truncated_files: u64,
    /// Preamble lines skipped: they restated what the previous file of the shard had set.
    pub preamble_lines_skipped: u64,
    #[serde(flatten)]
    pub store: StoreCounters,
}

/// Whether to read on after a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Go,
    Stop,
}

/// Reads `input` line by line as bytes and calls `each` with the line's text (or its error)
/// and its 1-based number. Only an I/O error of the reader stops it.
fn for_each_line(
    mut input: impl BufRead,
    counts: &mut LineCounts,
    mut each: impl FnMut(u64, Result<&str, LineError>) -> std::io::Result<Flow>,
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
            if each(n, Err(LineError::TooLong))? == Flow::Stop {
                return Ok(());
            }
            continue;
        }
        let line = classify_line(&buf, counts);
        if let Err(e) = line {
            counts.add(e);
        }
        if each(n, line)? == Flow::Stop {
            return Ok(());
        }
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
                writeln!(errors, "line {n}: {}: {e}", e.as_str())?;
                return Ok(Flow::Go);
            }
        };
        // The receive time drives the burst-aware checks (run ends by quiet, windows).
        let Some(report) = apply_capture_line(&mut store, line, &mut NoSink) else {
            return Ok(Flow::Go);
        };
        stats.lines += 1;
        if !report.errors.is_empty() {
            stats.bad_lines += 1;
            for e in &report.errors {
                writeln!(errors, "line {n}: {}: {}", e.kind.as_str(), e.detail)?;
            }
        }
        Ok(Flow::Go)
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

/// The zstd frame magic number, little-endian on disk.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// A reader that ends where its inner reader fails (a zstd frame cut short, a disk error)
/// and remembers that it did, so a damaged file is read as far as it goes and counted.
struct UpToError<R> {
    inner: R,
    failed: std::rc::Rc<std::cell::Cell<bool>>,
}

impl<R: Read> Read for UpToError<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.failed.get() {
            return Ok(0);
        }
        match self.inner.read(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Err(e),
            Err(_) => {
                self.failed.set(true);
                Ok(0)
            }
        }
    }
}

/// An opened recording file: its lines, decompressed if the file is zstd, and whether it was
/// cut short (known once read to the end).
pub struct RecordingReader {
    pub lines: Box<dyn BufRead>,
    truncated: std::rc::Rc<std::cell::Cell<bool>>,
}

impl RecordingReader {
    pub fn truncated(&self) -> bool {
        self.truncated.get()
    }
}

/// Opens a plain or zstd-compressed file (told by its first four bytes).
pub fn open_recording(path: &std::path::Path) -> std::io::Result<RecordingReader> {
    let mut f = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(path)?);
    let zstd = f.fill_buf()?.starts_with(&ZSTD_MAGIC);
    let truncated = std::rc::Rc::new(std::cell::Cell::new(false));
    let lines: Box<dyn BufRead> = if zstd {
        let decoder = zstd::stream::read::Decoder::with_buffer(f)?;
        let inner = UpToError { inner: decoder, failed: std::rc::Rc::clone(&truncated) };
        Box::new(std::io::BufReader::with_capacity(1 << 16, inner))
    } else {
        let inner = UpToError { inner: f, failed: std::rc::Rc::clone(&truncated) };
        Box::new(std::io::BufReader::with_capacity(1 << 16, inner))
    };
    Ok(RecordingReader { lines, truncated })
}

/// Whether `path` is an engine recording (a directory of `.rec`/`.rec.zst` files, or a file
/// that starts with a recording header, compressed or not) rather than a plain capture.
pub fn is_recording(path: &std::path::Path) -> bool {
    if path.is_dir() {
        return true;
    }
    let Ok(r) = open_recording(path) else { return false };
    let mut first = Vec::new();
    let _ = r.lines.take(256).read_until(b'\n', &mut first);
    first.starts_with(b"#polybook-recording ")
}

fn is_recording_name(p: &std::path::Path) -> bool {
    let name = p.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    name.ends_with(".rec") || name.ends_with(".rec.zst")
}

/// The recording files under `path` (or `path` itself), in name order: per shard, in the
/// order they were written; shards own disjoint books, so their files may be applied one
/// after another.
pub fn recording_files(path: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(path)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| is_recording_name(p))
        .collect();
    files.sort();
    Ok(files)
}

/// The shard a file belongs to: its name without the sequence number and extension
/// (`shard-3-000002.rec.zst` -> `shard-3`); the whole name for other files.
pub fn shard_of(path: &std::path::Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match name.rsplit_once('-') {
        Some((stem, rest))
            if rest.split('.').next().is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit())) =>
        {
            stem.to_owned()
        }
        _ => name,
    }
}

/// The settings in the first file's header (version 2), if any.
fn recording_settings(
    path: &std::path::Path,
) -> std::io::Result<Option<polybook::capture::RecordingSettings>> {
    let r = open_recording(path)?;
    let mut first = Vec::new();
    let _ = r.lines.take(64 << 10).read_until(b'\n', &mut first)?;
    let text = String::from_utf8_lossy(&first);
    match polybook::capture::parse_record_line(text.trim_end()) {
        Ok(Some(polybook::capture::RecordLine::Header(s))) => Ok(s),
        _ => Ok(None),
    }
}

/// Sees a recording's replay: every book change (as an [`UpdateSink`]) and, before each line
/// that carries a time, that time and the store as it was (export's cadence uses it).
pub trait ReplayVisitor: UpdateSink {
    fn before(&mut self, _recv_ns: u64, _store: &BookStore) {}
    /// After a frame was applied: its receive time and text (unescaped).
    fn after_frame(&mut self, _recv_ns: u64, _text: &str) {}
}

impl ReplayVisitor for NoSink {}

/// How far to replay.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayOptions {
    /// Stop each shard at its first line received after this time (unix ns): the books as of
    /// that receive time.
    pub at_ns: Option<u64>,
}

/// Replays engine recordings: repeats each shard's store calls in order, with the integrity
/// settings the engine recorded, which rebuilds the exact books and statuses the engine had.
/// Bad lines are reported and counted.
pub fn replay_recording(
    files: &[std::path::PathBuf],
    errors: &mut impl Write,
) -> std::io::Result<(BookStore, ReplayStats)> {
    replay_recording_with(files, errors, ReplayOptions::default(), &mut NoSink)
}

/// [`replay_recording`] up to `options.at_ns`, showing every change to `visitor`.
pub fn replay_recording_with(
    files: &[std::path::PathBuf],
    errors: &mut impl Write,
    options: ReplayOptions,
    visitor: &mut impl ReplayVisitor,
) -> std::io::Result<(BookStore, ReplayStats)> {
    use polybook::capture::RecordLine;
    let settings = match files.first() {
        Some(f) => recording_settings(f)?,
        None => None,
    };
    let config = settings.map_or_else(StoreConfig::default, |s| s.store_config());
    let mut store = BookStore::new(config);
    let mut stats = ReplayStats { settings, ..ReplayStats::default() };
    let mut counts = LineCounts::default();
    let mut bad_escapes = 0u64;
    let mut previous_shard: Option<String> = None;
    let mut stopped_shard: Option<String> = None;
    for path in files {
        let shard = shard_of(path);
        if stopped_shard.as_ref() == Some(&shard) {
            continue;
        }
        // The preamble restates what the shard's previous file already set: skipped when
        // continuing, applied when this file is the first of its shard here.
        let continuing = previous_shard.as_ref() == Some(&shard);
        previous_shard = Some(shard.clone());
        let reader = open_recording(path)?;
        // Each file says its own version (files of older runs may sit beside newer ones).
        let mut v2 = false;
        // Preamble lines held while continuing: dropped at `#preamble-end`; applied if
        // another line comes first (a file from before preambles existed).
        let mut held: Vec<String> = Vec::new();
        let mut in_preamble = false;
        let truncated = std::rc::Rc::clone(&reader.truncated);
        for_each_line(reader.lines, &mut counts, |n, line| {
            stats.lines += 1;
            let bad = |stats: &mut ReplayStats, errors: &mut dyn Write, what: &str| {
                stats.bad_lines += 1;
                writeln!(errors, "{}:{n}: {what}", path.display()).map(|()| Flow::Go)
            };
            let line = match line {
                Ok(l) => l,
                Err(e) => return bad(&mut stats, errors, e.as_str()),
            };
            let rec = match polybook::capture::parse_record_line(line) {
                Ok(Some(rec)) => rec,
                Ok(None) => return Ok(Flow::Go),
                Err(e) => return bad(&mut stats, errors, &e.to_string()),
            };
            match &rec {
                RecordLine::Header(s) => {
                    v2 = s.is_some();
                    in_preamble = continuing;
                    return Ok(Flow::Go);
                }
                RecordLine::PreambleEnd => {
                    stats.preamble_lines_skipped += held.len() as u64;
                    held.clear();
                    in_preamble = false;
                    return Ok(Flow::Go);
                }
                RecordLine::Track { .. } | RecordLine::Assign { .. } if in_preamble => {
                    held.push(line.to_owned());
                    return Ok(Flow::Go);
                }
                RecordLine::Gap { lines } => {
                    stats.recording_gaps += 1;
                    stats.recording_lines_dropped += lines;
                }
                _ => {}
            }
            if in_preamble {
                in_preamble = false;
                for h in std::mem::take(&mut held) {
                    if let Ok(Some(r)) = polybook::capture::parse_record_line(&h) {
                        let _ = polybook::capture::replay_record_line(&mut store, &r, v2, visitor);
                    }
                }
            }
            let at = match &rec {
                RecordLine::Frame { recv_ns, .. } => Some(*recv_ns),
                RecordLine::Settle { now_ms } => Some(now_ms.saturating_mul(1_000_000)),
                _ => None,
            };
            if let Some(t) = at {
                if options.at_ns.is_some_and(|limit| t > limit) {
                    stopped_shard = Some(shard.clone());
                    return Ok(Flow::Stop);
                }
                visitor.before(t, &store);
            }
            let applied = polybook::capture::replay_record_line(&mut store, &rec, v2, visitor);
            if let (Ok(Some(_)), RecordLine::Frame { recv_ns, frame, .. }) = (&applied, &rec) {
                let text = if v2 {
                    polybook::capture::unescape_frame(frame).unwrap_or_default()
                } else {
                    std::borrow::Cow::Borrowed(*frame)
                };
                visitor.after_frame(*recv_ns, &text);
            }
            match applied {
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
                    Ok(Flow::Go)
                }
                Ok(_) => Ok(Flow::Go),
                Err(e) => {
                    bad_escapes += 1;
                    bad(&mut stats, errors, e.as_str())
                }
            }
        })?;
        if truncated.get() {
            stats.truncated_files += 1;
            writeln!(errors, "{}: ends early (cut short or damaged)", path.display())?;
        }
    }
    counts.bad_escape += bad_escapes;
    stats.line_errors = counts;
    stats.books = store.len();
    stats.store = store.counters().clone();
    Ok((store, stats))
}

/// A time on the command line, as unix nanoseconds: `2026-12-02T01:30:00Z` (optionally with
/// fractional seconds, UTC only), or a unix time in seconds, milliseconds or nanoseconds
/// (told by its size: < 1e11 seconds, < 1e14 milliseconds, else nanoseconds).
pub fn parse_time_ns(text: &str) -> Result<u64, String> {
    let bad = || format!("bad time {text:?}: want 2026-12-02T01:30:00Z or a unix time");
    if text.bytes().all(|b| b.is_ascii_digit()) && !text.is_empty() {
        let n: u64 = text.parse().map_err(|_| bad())?;
        return Ok(if n < 100_000_000_000 {
            n.saturating_mul(1_000_000_000)
        } else if n < 100_000_000_000_000 {
            n.saturating_mul(1_000_000)
        } else {
            n
        });
    }
    let t = text.strip_suffix('Z').ok_or_else(bad)?;
    let (date, clock) = t.split_once('T').ok_or_else(bad)?;
    let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
    let mut d = date.split('-');
    let (y, mo, day) = match (d.next(), d.next(), d.next(), d.next()) {
        (Some(y), Some(m), Some(dd), None) => (num(y)?, num(m)?, num(dd)?),
        _ => return Err(bad()),
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut c = hms.split(':');
    let (h, mi, s) = match (c.next(), c.next(), c.next(), c.next()) {
        (Some(h), Some(m), Some(s), None) => (num(h)?, num(m)?, num(s)?),
        _ => return Err(bad()),
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&day) || h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let frac_ns = if frac.is_empty() { 0 } else { num(frac)? * 10i64.pow(9 - frac.len() as u32) };
    let secs = polybook::policy::days_from_civil(y, mo, day) * 86_400 + h * 3600 + mi * 60 + s;
    u64::try_from(secs)
        .ok()
        .and_then(|s| s.checked_mul(1_000_000_000))
        .and_then(|ns| ns.checked_add(frac_ns as u64))
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_time_ns_reads_rfc3339_and_unix_times() {
        assert_eq!(parse_time_ns("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time_ns("2026-12-02T01:30:00Z"), Ok(1_796_175_000_000_000_000));
        assert_eq!(parse_time_ns("2000-03-01T00:00:00.5Z"), Ok(951_868_800_500_000_000));
        assert_eq!(parse_time_ns("1796175000"), Ok(1_796_175_000_000_000_000));
        assert_eq!(parse_time_ns("1796175000123"), Ok(1_796_175_000_123_000_000));
        assert_eq!(parse_time_ns("1796175000123456789"), Ok(1_796_175_000_123_456_789));
        for bad in ["", "yesterday", "2026-13-01T00:00:00Z", "2026-12-02T01:30:00", "1.5"] {
            assert!(parse_time_ns(bad).is_err(), "{bad}");
        }
    }

    /// A compressed recording cut anywhere (the engine was killed) replays up to its last
    /// complete block and is counted; damaged bytes never panic.
    #[test]
    fn cut_or_damaged_zstd_recordings_replay_what_they_can() {
        use std::io::Write as _;
        let dir = std::env::temp_dir().join(format!("polybook-cut-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let settings = polybook::capture::RecordingSettings::of(&StoreConfig::default());
        let mut enc = zstd::Encoder::new(Vec::new(), 3).unwrap_or_else(|e| panic!("{e}"));
        let mut text = polybook::capture::recording_header_v2(&settings);
        text.push('\n');
        text.push_str("#track 0xm 0.01 5 false 7\n#assign 1 7\n");
        let _ = enc.write_all(text.as_bytes());
        let _ = enc.flush();
        for i in 0..2000u64 {
            let _ = writeln!(enc, "#settle {i}");
        }
        let whole = enc.finish().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("shard-0-000001.rec.zst");
        let replay_bytes = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{e}"));
            let mut errors = Vec::new();
            replay_recording(std::slice::from_ref(&path), &mut errors)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let (store, stats) = replay_bytes(&whole);
        assert_eq!((store.len(), stats.truncated_files, stats.lines), (1, 0, 2003));
        let (store, stats) = replay_bytes(&whole[..whole.len() - 3]);
        assert_eq!((store.len(), stats.truncated_files), (1, 1));
        for cut in [5, whole.len() / 2] {
            let _ = replay_bytes(&whole[..cut]);
        }
        let mut flipped = whole.clone();
        for i in (10..flipped.len()).step_by(7) {
            flipped[i] ^= 0x5a;
        }
        let (_, stats) = replay_bytes(&flipped);
        assert!(stats.truncated_files + stats.bad_lines > 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn shard_of_strips_the_sequence_and_extension() {
        assert_eq!(shard_of(std::path::Path::new("/d/shard-3-000002.rec.zst")), "shard-3");
        assert_eq!(shard_of(std::path::Path::new("shard-12-000001.rec")), "shard-12");
        assert_eq!(shard_of(std::path::Path::new("capture.txt")), "capture.txt");
    }
}
