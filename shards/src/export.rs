//! `polybook export`: replays a recording and writes what researchers load into pandas or
//! DuckDB — top-of-book changes, trades, every level change, or every book at a fixed cadence —
//! as CSV or Parquet. Each row starts with the receive time (unix ns), the venue's timestamp
//! (unix ms, the book's), the token and the market. Prices and sizes are the exact decimal
//! strings the venue uses ("0.49", "172.92"), never floats.
//!
//! Each shard's files are replayed into a store of their own (shards own disjoint books), so
//! rows are in receive order within a shard; sort by `recv_ns` for one order across shards.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use polybook::book::{Book, Level, Side};
use polybook::store::{BookUpdate, UpdateSink};
use polybook::BookStore;

use crate::replay::{ReplayOptions, ReplayVisitor};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Parquet,
}

/// What to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// A row each time a book's best bid or best ask (price or size) changes.
    Bbo,
    /// A row per trade (`last_trade_price`): the taker's side, price and size.
    Trades,
    /// A row per level change; a snapshot is a `clear` row, then one `snapshot` row per level.
    Levels,
    /// Every book, level by level, at each multiple of `--every` (receive time).
    Books,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ExportArgs {
    /// An engine recording: a `--record` directory or one of its files (plain or `.zst`).
    pub recording: PathBuf,
    /// Output format.
    #[arg(long = "to", value_enum)]
    pub format: Format,
    #[arg(long, value_enum)]
    pub what: What,
    /// Cadence of `--what books` (`1s`, `500ms`, `5m`, `1h`).
    #[arg(long, default_value = "1s", value_parser = parse_duration_ns)]
    pub every: u64,
    /// Only these tokens (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub tokens: Vec<String>,
    /// Only rows received at or after this time (`2026-12-02T01:30:00Z` or unix s/ms/ns).
    #[arg(long, value_parser = crate::replay::parse_time_ns)]
    pub from: Option<u64>,
    /// Only rows received at or before this time; the replay stops there.
    #[arg(long, value_parser = crate::replay::parse_time_ns)]
    pub until: Option<u64>,
    /// The output file.
    pub out: PathBuf,
}

/// `1s`, `250ms`, `5m`, `1h` as nanoseconds (more than zero).
pub fn parse_duration_ns(text: &str) -> Result<u64, String> {
    let bad = || format!("bad duration {text:?}: want e.g. 1s, 250ms, 5m, 1h");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let scale = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).filter(|&ns| ns > 0).ok_or_else(bad)
}

/// A column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    /// Unsigned 64-bit integer (times).
    U64,
    /// Text (ids, sides, exact decimals).
    Str,
    /// Text or null.
    OptStr,
}

/// One value of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Val<'a> {
    U64(u64),
    Str(&'a str),
    Null,
}

/// The columns of each kind, in order.
pub fn schema(what: What) -> Vec<(&'static str, ColType)> {
    use ColType::*;
    let mut cols = vec![("recv_ns", U64), ("venue_ts_ms", U64), ("token", Str), ("market", Str)];
    cols.extend_from_slice(match what {
        What::Bbo => &[
            ("bid_price", OptStr),
            ("bid_size", OptStr),
            ("ask_price", OptStr),
            ("ask_size", OptStr),
            ("status", Str),
        ][..],
        What::Trades => &[("side", Str), ("price", Str), ("size", Str)][..],
        What::Levels => &[("kind", Str), ("side", OptStr), ("price", OptStr), ("size", OptStr)][..],
        What::Books => {
            &[("side", Str), ("level", U64), ("price", Str), ("size", Str), ("status", Str)][..]
        }
    });
    cols
}

/// Where rows go.
pub trait RowWriter {
    fn row(&mut self, vals: &[Val<'_>]) -> std::io::Result<()>;
    fn finish(self: Box<Self>) -> anyhow::Result<()>;
}

/// CSV (RFC 4180): a header line, then one line per row; null is an empty field.
pub struct CsvWriter<W: Write> {
    out: W,
}

impl<W: Write> CsvWriter<W> {
    pub fn new(mut out: W, what: What) -> std::io::Result<CsvWriter<W>> {
        let names: Vec<&str> = schema(what).iter().map(|c| c.0).collect();
        writeln!(out, "{}", names.join(","))?;
        Ok(CsvWriter { out })
    }
}

impl<W: Write> RowWriter for CsvWriter<W> {
    fn row(&mut self, vals: &[Val<'_>]) -> std::io::Result<()> {
        for (i, v) in vals.iter().enumerate() {
            if i > 0 {
                self.out.write_all(b",")?;
            }
            match v {
                Val::U64(n) => write!(self.out, "{n}")?,
                Val::Null => {}
                Val::Str(s) if s.contains([',', '"', '\n', '\r']) => {
                    write!(self.out, "\"{}\"", s.replace('"', "\"\""))?
                }
                Val::Str(s) => self.out.write_all(s.as_bytes())?,
            }
        }
        self.out.write_all(b"\n")
    }
    fn finish(mut self: Box<Self>) -> anyhow::Result<()> {
        Ok(self.out.flush()?)
    }
}

/// Receives the replay's changes and turns them into rows of one kind.
struct Rows<'w> {
    what: What,
    every_ns: u64,
    tokens: HashSet<String>,
    from: u64,
    until: u64,
    recv_ns: u64,
    /// The next `books` snapshot time (0: not yet known).
    next_dump_ns: u64,
    last_bbo: HashMap<String, (Option<Level>, Option<Level>)>,
    out: &'w mut dyn RowWriter,
    error: Option<std::io::Error>,
    pub rows: u64,
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Buy => "bid",
        Side::Sell => "ask",
    }
}

impl Rows<'_> {
    fn wanted(&self, book: &Book) -> bool {
        (self.tokens.is_empty() || self.tokens.contains(book.token().as_str()))
            && self.recv_ns >= self.from
            && self.recv_ns <= self.until
    }

    fn emit(&mut self, vals: &[Val<'_>]) {
        if self.error.is_some() {
            return;
        }
        match self.out.row(vals) {
            Ok(()) => self.rows += 1,
            Err(e) => self.error = Some(e),
        }
    }

    fn dump_books(&mut self, at_ns: u64, store: &BookStore) {
        let mut books: Vec<&Book> = store
            .books()
            .filter(|b| self.tokens.is_empty() || self.tokens.contains(b.token().as_str()))
            .collect();
        books.sort_by(|a, b| a.token().as_str().cmp(b.token().as_str()));
        for book in books {
            for side in [Side::Buy, Side::Sell] {
                for (i, l) in book.levels(side).iter().enumerate() {
                    let (p, s) = (l.price.to_string(), l.size.to_string());
                    self.emit(&[
                        Val::U64(at_ns),
                        Val::U64(book.timestamp_ms()),
                        Val::Str(book.token().as_str()),
                        Val::Str(book.market().as_str()),
                        Val::Str(side_name(side)),
                        Val::U64(i as u64),
                        Val::Str(&p),
                        Val::Str(&s),
                        Val::Str(book.status().as_str()),
                    ]);
                }
            }
        }
    }
}

/// A level's price (`first`) or size, or null without a level.
fn opt_val(level: &Option<(String, String)>, first: bool) -> Val<'_> {
    match level {
        Some((p, s)) => Val::Str(if first { p } else { s }),
        None => Val::Null,
    }
}

/// The columns every row starts with.
fn head(recv_ns: u64, book: &Book) -> [Val<'_>; 4] {
    [
        Val::U64(recv_ns),
        Val::U64(book.timestamp_ms()),
        Val::Str(book.token().as_str()),
        Val::Str(book.market().as_str()),
    ]
}

impl UpdateSink for Rows<'_> {
    fn on_update(&mut self, update: &BookUpdate, book: &Book) {
        if !self.wanted(book) {
            return;
        }
        let head = |recv_ns: u64| head(recv_ns, book);
        match (self.what, update) {
            (What::Trades, BookUpdate::LastTrade(t)) => {
                let (p, s) = (t.price.to_string(), t.size.to_string());
                let [a, b, c, d] = head(self.recv_ns);
                self.emit(&[a, b, c, d, Val::Str(t.side.as_str()), Val::Str(&p), Val::Str(&s)]);
            }
            (What::Levels, BookUpdate::Snapshot) => {
                let [a, b, c, d] = head(self.recv_ns);
                self.emit(&[a, b, c, d, Val::Str("clear"), Val::Null, Val::Null, Val::Null]);
                for side in [Side::Buy, Side::Sell] {
                    for l in book.levels(side) {
                        let (p, s) = (l.price.to_string(), l.size.to_string());
                        self.emit(&[
                            a,
                            b,
                            c,
                            d,
                            Val::Str("snapshot"),
                            Val::Str(side_name(side)),
                            Val::Str(&p),
                            Val::Str(&s),
                        ]);
                    }
                }
            }
            (What::Levels, BookUpdate::Level { side, price, size, .. }) => {
                let (p, s) = (price.to_string(), size.to_string());
                let [a, b, c, d] = head(self.recv_ns);
                let side = Val::Str(side_name(*side));
                self.emit(&[a, b, c, d, Val::Str("change"), side, Val::Str(&p), Val::Str(&s)]);
            }
            (What::Bbo, _) => {
                let now = (book.best_bid(), book.best_ask());
                let token = book.token().as_str();
                if self.last_bbo.get(token) == Some(&now) {
                    return;
                }
                self.last_bbo.insert(token.to_owned(), now);
                let text = |l: Option<Level>| l.map(|l| (l.price.to_string(), l.size.to_string()));
                let (bid, ask) = (text(now.0), text(now.1));
                let [a, b, c, d] = head(self.recv_ns);
                let status = Val::Str(book.status().as_str());
                let row = [
                    a,
                    b,
                    c,
                    d,
                    opt_val(&bid, true),
                    opt_val(&bid, false),
                    opt_val(&ask, true),
                    opt_val(&ask, false),
                    status,
                ];
                self.emit(&row);
            }
            _ => {}
        }
    }
}

impl ReplayVisitor for Rows<'_> {
    fn before(&mut self, recv_ns: u64, store: &BookStore) {
        self.recv_ns = recv_ns;
        if self.what != What::Books {
            return;
        }
        if self.next_dump_ns == 0 {
            // The first multiple of the cadence at or after the first line (or `--from`).
            let start = recv_ns.max(self.from);
            self.next_dump_ns = start.div_ceil(self.every_ns).saturating_mul(self.every_ns);
        }
        // A snapshot at time T holds every line received up to T.
        while recv_ns > self.next_dump_ns && self.next_dump_ns <= self.until {
            let at = self.next_dump_ns;
            if at >= self.from {
                self.dump_books(at, store);
            }
            self.next_dump_ns = at.saturating_add(self.every_ns);
        }
    }
}

/// What an export wrote.
#[derive(Debug, Default, serde::Serialize)]
pub struct ExportStats {
    pub rows: u64,
    pub lines: u64,
    pub bad_lines: u64,
    pub recording_gaps: u64,
    pub truncated_files: u64,
}

/// Replays `files` (grouped by shard) and writes rows to `out`.
pub fn export_to(
    files: &[PathBuf],
    args: &ExportArgs,
    out: &mut dyn RowWriter,
    errors: &mut impl Write,
) -> anyhow::Result<ExportStats> {
    let mut stats = ExportStats::default();
    let mut groups: Vec<(String, Vec<PathBuf>)> = Vec::new();
    for f in files {
        let shard = crate::replay::shard_of(f);
        match groups.last_mut() {
            Some((s, g)) if *s == shard => g.push(f.clone()),
            _ => groups.push((shard, vec![f.clone()])),
        }
    }
    for (_, group) in groups {
        let mut rows = Rows {
            what: args.what,
            every_ns: args.every.max(1),
            tokens: args.tokens.iter().cloned().collect(),
            from: args.from.unwrap_or(0),
            until: args.until.unwrap_or(u64::MAX),
            recv_ns: 0,
            next_dump_ns: 0,
            last_bbo: HashMap::new(),
            out: &mut *out,
            error: None,
            rows: 0,
        };
        let options = ReplayOptions { at_ns: args.until };
        let (_, s) = crate::replay::replay_recording_with(&group, errors, options, &mut rows)?;
        if let Some(e) = rows.error.take() {
            return Err(e).context("writing the export");
        }
        stats.rows += rows.rows;
        stats.lines += s.lines;
        stats.bad_lines += s.bad_lines;
        stats.recording_gaps += s.recording_gaps;
        stats.truncated_files += s.truncated_files;
    }
    Ok(stats)
}

/// Opens the writer for `format` at `path`.
pub fn writer_for(format: Format, what: What, path: &Path) -> anyhow::Result<Box<dyn RowWriter>> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(match format {
        Format::Csv => {
            Box::new(CsvWriter::new(std::io::BufWriter::with_capacity(1 << 20, file), what)?)
        }
        Format::Parquet => Box::new(crate::parquet_out::ParquetWriter::new(file, what)?),
    })
}

/// `polybook export`: prints the export's stats as JSON.
pub fn run(args: &ExportArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        crate::replay::is_recording(&args.recording),
        "{} is not an engine recording (record one with --record DIR)",
        args.recording.display()
    );
    let files = crate::replay::recording_files(&args.recording)
        .with_context(|| format!("cannot read {}", args.recording.display()))?;
    let started = std::time::Instant::now();
    let mut out = writer_for(args.format, args.what, &args.out)?;
    let stats = export_to(&files, args, out.as_mut(), &mut std::io::stderr())?;
    out.finish()?;
    let secs = started.elapsed().as_secs_f64();
    let json = serde_json::json!({
        "stats": stats,
        "seconds": secs,
        "lines_per_second": if secs > 0.0 { stats.lines as f64 / secs } else { 0.0 },
    });
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_duration_ns_reads_units() {
        assert_eq!(parse_duration_ns("1s"), Ok(1_000_000_000));
        assert_eq!(parse_duration_ns("250ms"), Ok(250_000_000));
        assert_eq!(parse_duration_ns("5m"), Ok(300_000_000_000));
        assert_eq!(parse_duration_ns("1h"), Ok(3_600_000_000_000));
        for bad in ["", "1", "0s", "s", "1d", "-1s"] {
            assert!(parse_duration_ns(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn csv_quotes_only_what_needs_it() {
        let mut buf = Vec::new();
        {
            let mut w = CsvWriter::new(&mut buf, What::Trades).unwrap_or_else(|e| panic!("{e}"));
            let row = [
                Val::U64(1),
                Val::U64(2),
                Val::Str("t"),
                Val::Str("a,\"b\""),
                Val::Str("BUY"),
                Val::Str("0.5"),
                Val::Null,
            ];
            w.row(&row).unwrap_or_else(|e| panic!("{e}"));
        }
        let text = String::from_utf8_lossy(&buf);
        assert_eq!(
            text,
            "recv_ns,venue_ts_ms,token,market,side,price,size\n1,2,t,\"a,\"\"b\"\"\",BUY,0.5,\n"
        );
    }
}
