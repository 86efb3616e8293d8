//! `--record DIR`: each data shard records every raw frame it receives (with its receive time
//! and socket) and the store operations that decide which socket feeds which book. `polybook
//! replay` rebuilds the exact books from these files (see `polybook::capture::RecordLine`).
//!
//! The data shard never touches the disk: it formats a line and hands it to its own writer
//! thread (`record-K`) through a bounded channel. A full channel drops the line and counts it —
//! never a stall; the next line that gets through carries the count and the writer writes
//! `#gap N` before it, so a reader knows the books after that point may be wrong (replay counts
//! `recording_gaps`). The writer compresses with zstd (`.rec.zst`, one complete zstd frame per
//! file) or writes plain `.rec`, and rotates by size and by hour. Every file starts with the
//! header, the markets tracked at that moment and their feeds, then `#preamble-end`, so a file
//! replays alone; a replay of consecutive files skips the repeated preamble.
//!
//! A writer whose disk fails stops recording (counted, logged once) and keeps draining the
//! channel: books matter more than the recording.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use polybook::book::TokenMeta;
use polybook::capture::{
    record_frame_line, record_track_line, recording_header_v2, RecordingSettings, PREAMBLE_END,
};

/// How a shard records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordOptions {
    /// zstd-compress each file (`.rec.zst`); otherwise plain `.rec`.
    pub compress: bool,
    /// zstd level (3: the library's default; fast and about 10x on frames).
    pub zstd_level: i32,
    /// Uncompressed bytes per file before a new one starts.
    pub rotate_bytes: u64,
    /// A new file starts when the wall clock enters a new period of this many seconds (3600:
    /// one file per UTC hour at least).
    pub rotate_secs: u64,
    /// Lines queued between the shard and its writer; beyond, lines are dropped and counted.
    pub queue_lines_max: usize,
}

impl Default for RecordOptions {
    fn default() -> Self {
        RecordOptions {
            compress: true,
            zstd_level: 3,
            rotate_bytes: 256 << 20,
            rotate_secs: 3600,
            queue_lines_max: 1 << 16,
        }
    }
}

/// Counters shared by a shard's recorder and its writer thread.
#[derive(Debug, Default)]
pub struct RecordCounters {
    pub lines_queued: AtomicU64,
    /// Lines the shard dropped because the writer's queue was full.
    pub lines_dropped: AtomicU64,
    pub lines_written: AtomicU64,
    /// Bytes of lines written (before compression).
    pub bytes_in: AtomicU64,
    pub files: AtomicU64,
    pub failed: AtomicBool,
}

enum Msg {
    /// A line, and how many lines were dropped just before it.
    Line { text: String, dropped_before: u64 },
    /// Finish the current file and reply.
    Finish(flume::Sender<()>),
}

/// The shard's side: formats lines and queues them for the writer thread.
pub struct Recorder {
    shard: usize,
    tx: Option<flume::Sender<Msg>>,
    /// Dropped since the last line that got through.
    dropped_pending: u64,
    warned: bool,
    pub counters: Arc<RecordCounters>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// How long the shard waits at shutdown for its writer to finish the last file.
const FINISH_WAIT: Duration = Duration::from_secs(30);

impl Recorder {
    /// `settings`: the store's integrity settings, written in every file's header so that
    /// replay judges exactly as the engine did. Opens the first file before returning, so a
    /// directory that cannot be written is an error here.
    pub fn open(
        dir: &Path,
        shard: usize,
        settings: &RecordingSettings,
        options: RecordOptions,
    ) -> std::io::Result<Recorder> {
        std::fs::create_dir_all(dir)?;
        let counters = Arc::new(RecordCounters::default());
        let mut writer = Writer::new(dir, shard, settings, options, Arc::clone(&counters));
        writer.rotate()?;
        let (tx, rx) = flume::bounded(options.queue_lines_max.max(1));
        let handle =
            super::supervise::spawn_thread(&format!("record-{shard}"), move || writer.run(rx))?;
        Ok(Recorder {
            shard,
            tx: Some(tx),
            dropped_pending: 0,
            warned: false,
            counters,
            writer: Some(handle),
        })
    }

    fn line(&mut self, text: String) {
        let Some(tx) = self.tx.as_ref() else { return };
        let msg = Msg::Line { text, dropped_before: self.dropped_pending };
        match tx.try_send(msg) {
            Ok(()) => {
                self.dropped_pending = 0;
                self.counters.lines_queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.dropped_pending += 1;
                self.counters.lines_dropped.fetch_add(1, Ordering::Relaxed);
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(
                        shard = self.shard,
                        "recording queue full: lines dropped (counted; the file says #gap)"
                    );
                }
            }
        }
    }

    pub fn frame(&mut self, recv_ns: u64, feed: u32, text: &str) {
        self.line(record_frame_line(recv_ns, feed, text));
    }

    pub fn track(&mut self, market: &str, meta: &TokenMeta, tokens: &[&str]) {
        self.line(record_track_line(market, meta, tokens));
    }

    pub fn untrack(&mut self, market: &str, tokens: &[&str]) {
        self.line(format!("#untrack {market} {}", tokens.join(" ")));
    }

    pub fn assign(&mut self, feed: u32, tokens: &[&str]) {
        if !tokens.is_empty() {
            self.line(format!("#assign {feed} {}", tokens.join(" ")));
        }
    }

    pub fn lost(&mut self, feed: u32, tokens: &[&str]) {
        if !tokens.is_empty() {
            self.line(format!("#lost {feed} {}", tokens.join(" ")));
        }
    }

    pub fn settle(&mut self, now_ms: u64) {
        self.line(format!("#settle {now_ms}"));
    }

    pub fn stale(&mut self, feed: u32) {
        self.line(format!("#stale {feed}"));
    }

    pub fn resync(&mut self, tokens: &[&str]) {
        if !tokens.is_empty() {
            self.line(format!("#resync {}", tokens.join(" ")));
        }
    }

    /// Called once, at shutdown: the writer writes what is queued (and the last gap, if any),
    /// finishes the file and stops. Blocks the shard briefly, which is fine at shutdown.
    pub fn finish(&mut self) {
        let Some(tx) = self.tx.take() else { return };
        if self.dropped_pending > 0 {
            let text = format!("#gap {}", self.dropped_pending);
            let _ = tx.send_timeout(Msg::Line { text, dropped_before: 0 }, FINISH_WAIT);
            self.dropped_pending = 0;
        }
        let (done_tx, done_rx) = flume::bounded(1);
        if tx.send_timeout(Msg::Finish(done_tx), FINISH_WAIT).is_ok()
            && done_rx.recv_timeout(FINISH_WAIT).is_ok()
        {
            if let Some(h) = self.writer.take() {
                let _ = h.join();
            }
        } else {
            tracing::error!(shard = self.shard, "recording writer did not finish in time");
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The connection group's store calls, recorded so that replay repeats them.
impl polybook::conn::Journal for Recorder {
    fn track(&mut self, spec: &polybook::MarketSpec) {
        let ids: Vec<&str> = spec.tokens.iter().map(polybook::TokenId::as_str).collect();
        Recorder::track(self, spec.market.as_str(), &spec.meta, &ids);
    }
    fn untrack(&mut self, market: &polybook::MarketId, tokens: &[polybook::TokenId]) {
        Recorder::untrack(self, market.as_str(), &ids(tokens));
    }
    fn assign(&mut self, socket: polybook::SocketId, tokens: &[polybook::TokenId]) {
        Recorder::assign(self, socket.0, &ids(tokens));
    }
    fn lost(&mut self, socket: polybook::SocketId, tokens: &[polybook::TokenId]) {
        Recorder::lost(self, socket.0, &ids(tokens));
    }
    fn settle(&mut self, now_ms: u64) {
        Recorder::settle(self, now_ms);
    }
    fn stale(&mut self, socket: polybook::SocketId) {
        Recorder::stale(self, socket.0);
    }
    fn resync(&mut self, tokens: &[polybook::TokenId]) {
        Recorder::resync(self, &ids(tokens));
    }
    fn frame(&mut self, recv_ns: u64, socket: polybook::SocketId, text: &str) {
        Recorder::frame(self, recv_ns, socket.0, text);
    }
    fn flush(&mut self) {
        self.finish();
    }
}

fn ids(tokens: &[polybook::TokenId]) -> Vec<&str> {
    tokens.iter().map(polybook::TokenId::as_str).collect()
}

enum Out {
    Plain(BufWriter<File>),
    Zstd(zstd::Encoder<'static, BufWriter<File>>),
}

impl Out {
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Out::Plain(w) => w,
            Out::Zstd(w) => w,
        }
    }
    /// Ends the file: for zstd, the frame's epilogue (a complete frame).
    fn finish(self) -> std::io::Result<()> {
        match self {
            Out::Plain(mut w) => w.flush(),
            Out::Zstd(w) => w.finish()?.flush(),
        }
    }
}

/// The writer thread's state: the open file and what a new file's preamble needs.
struct Writer {
    header: String,
    dir: PathBuf,
    shard: usize,
    seq: u32,
    options: RecordOptions,
    out: Option<Out>,
    bytes: u64,
    period: u64,
    /// market -> its `#track` line (the latest).
    markets: BTreeMap<String, String>,
    /// token -> the feed it was last assigned to.
    feeds: BTreeMap<String, u32>,
    counters: Arc<RecordCounters>,
}

/// How long the writer waits for lines before it flushes what it has.
const IDLE_FLUSH: Duration = Duration::from_secs(1);

fn wall_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Writer {
    fn new(
        dir: &Path,
        shard: usize,
        settings: &RecordingSettings,
        options: RecordOptions,
        counters: Arc<RecordCounters>,
    ) -> Writer {
        Writer {
            header: recording_header_v2(settings),
            dir: dir.to_owned(),
            shard,
            seq: 0,
            options,
            out: None,
            bytes: 0,
            period: 0,
            markets: BTreeMap::new(),
            feeds: BTreeMap::new(),
            counters,
        }
    }

    fn run(mut self, rx: flume::Receiver<Msg>) {
        loop {
            match rx.recv_timeout(IDLE_FLUSH) {
                Ok(Msg::Line { text, dropped_before }) => {
                    if dropped_before > 0 {
                        self.write(&format!("#gap {dropped_before}"));
                    }
                    self.write(&text);
                }
                Ok(Msg::Finish(done)) => {
                    self.close();
                    let _ = done.send(());
                    return;
                }
                Err(flume::RecvTimeoutError::Timeout) => {
                    // A crash loses at most the last second: a flushed zstd block decodes.
                    if let Some(out) = self.out.as_mut() {
                        let r = out.writer().flush();
                        self.check(r);
                    }
                    if self.period_now() != self.period {
                        let r = self.rotate();
                        self.check(r);
                    }
                }
                Err(flume::RecvTimeoutError::Disconnected) => {
                    self.close();
                    return;
                }
            }
        }
    }

    fn period_now(&self) -> u64 {
        wall_secs() / self.options.rotate_secs.max(1)
    }

    fn close(&mut self) {
        if let Some(out) = self.out.take() {
            let r = out.finish();
            self.check(r);
        }
    }

    fn check(&mut self, r: std::io::Result<()>) {
        if let Err(e) = r {
            if !self.counters.failed.swap(true, Ordering::Relaxed) {
                tracing::error!(shard = self.shard, error = %e, "recording failed; stopped");
            }
            self.out = None;
        }
    }

    fn write(&mut self, line: &str) {
        if self.counters.failed.load(Ordering::Relaxed) {
            return;
        }
        self.remember(line);
        let r = (|| -> std::io::Result<()> {
            if self.bytes >= self.options.rotate_bytes || self.period_now() != self.period {
                self.rotate()?;
            }
            if let Some(out) = self.out.as_mut() {
                let w = out.writer();
                w.write_all(line.as_bytes())?;
                w.write_all(b"\n")?;
            }
            Ok(())
        })();
        if r.is_ok() {
            self.bytes += line.len() as u64 + 1;
            self.counters.lines_written.fetch_add(1, Ordering::Relaxed);
            self.counters.bytes_in.fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
        }
        self.check(r);
    }

    /// Keeps the tracked markets and feeds up to date for the next file's preamble.
    fn remember(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix('#') else { return };
        let mut parts = rest.split(' ');
        match parts.next() {
            Some("track") => {
                if let Some(m) = parts.next() {
                    self.markets.insert(m.to_owned(), line.to_owned());
                }
            }
            Some("untrack") => {
                if let Some(m) = parts.next() {
                    self.markets.remove(m);
                }
                for t in parts {
                    self.feeds.remove(t);
                }
            }
            Some("assign") => {
                if let Some(feed) = parts.next().and_then(|f| f.parse().ok()) {
                    for t in parts {
                        self.feeds.insert(t.to_owned(), feed);
                    }
                }
            }
            Some("lost") => {
                if let Some(feed) = parts.next().and_then(|f| f.parse::<u32>().ok()) {
                    for t in parts {
                        if self.feeds.get(t) == Some(&feed) {
                            self.feeds.remove(t);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(old) = self.out.take() {
            old.finish()?;
        }
        let ext = if self.options.compress { "rec.zst" } else { "rec" };
        // Continue after files left by an earlier run in the same directory.
        let (path, file) = loop {
            self.seq += 1;
            let stem = format!("shard-{}-{:06}", self.shard, self.seq);
            let taken =
                ["rec", "rec.zst"].iter().any(|e| self.dir.join(format!("{stem}.{e}")).exists());
            if !taken {
                let path = self.dir.join(format!("{stem}.{ext}"));
                let file = File::create(&path)?;
                break (path, file);
            }
        };
        let buf = BufWriter::with_capacity(1 << 20, file);
        let mut out = if self.options.compress {
            Out::Zstd(zstd::Encoder::new(buf, self.options.zstd_level)?)
        } else {
            Out::Plain(buf)
        };
        let mut bytes = 0u64;
        let mut put = |w: &mut dyn Write, line: &str| -> std::io::Result<()> {
            bytes += line.len() as u64 + 1;
            w.write_all(line.as_bytes())?;
            w.write_all(b"\n")
        };
        let w = out.writer();
        put(w, &self.header)?;
        for line in self.markets.values() {
            put(w, line)?;
        }
        let mut by_feed: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
        for (t, f) in &self.feeds {
            by_feed.entry(*f).or_default().push(t);
        }
        for (f, tokens) in by_feed {
            put(w, &format!("#assign {f} {}", tokens.join(" ")))?;
        }
        put(w, PREAMBLE_END)?;
        tracing::debug!(shard = self.shard, file = %path.display(), "recording to");
        self.out = Some(out);
        self.bytes = bytes;
        self.period = self.period_now();
        self.counters.files.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RecordingSettings {
        RecordingSettings::of(&polybook::StoreConfig::default())
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("polybook-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn frame(market: &str, token: &str, price: &str) -> String {
        format!(
            "{{\"event_type\":\"price_change\",\"market\":\"{market}\",\"timestamp\":\"1\",\
             \"price_changes\":[{{\"asset_id\":\"{token}\",\"price\":\"{price}\",\
             \"size\":\"1\",\"side\":\"BUY\"}}]}}"
        )
    }

    #[test]
    fn a_full_queue_drops_and_the_file_says_gap() {
        let dir = temp_dir("gap");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let counters = Arc::new(RecordCounters::default());
        let options = RecordOptions { queue_lines_max: 2, ..RecordOptions::default() };
        // The writer is not running yet: the queue fills and the shard must not wait.
        let (tx, rx) = flume::bounded(options.queue_lines_max);
        let mut rec = Recorder {
            shard: 0,
            tx: Some(tx),
            dropped_pending: 0,
            warned: false,
            counters: Arc::clone(&counters),
            writer: None,
        };
        for i in 0..5 {
            rec.frame(1_000_000 + i, 1, &frame("0xm", "7", "0.5"));
        }
        assert_eq!(counters.lines_queued.load(Ordering::Relaxed), 2);
        assert_eq!(counters.lines_dropped.load(Ordering::Relaxed), 3);
        let mut writer = Writer::new(&dir, 0, &settings(), options, Arc::clone(&counters));
        writer.rotate().unwrap_or_else(|e| panic!("{e}"));
        let handle = std::thread::spawn(move || writer.run(rx));
        poll(|| rec.tx.as_ref().is_some_and(|t| t.is_empty()));
        rec.frame(2_000_000, 1, &frame("0xm", "7", "0.4"));
        rec.finish();
        let _ = handle.join();
        let files = crate::replay::recording_files(&dir).unwrap_or_else(|e| panic!("{e}"));
        let mut errors = Vec::new();
        let (_, stats) =
            crate::replay::replay_recording(&files, &mut errors).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((stats.recording_gaps, stats.recording_lines_dropped), (1, 3));
        assert_eq!(stats.bad_lines, 0, "{}", String::from_utf8_lossy(&errors));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn poll(mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_new_period_starts_a_new_file() {
        let dir = temp_dir("period");
        let options = RecordOptions { rotate_secs: 1, ..RecordOptions::default() };
        let mut rec =
            Recorder::open(&dir, 0, &settings(), options).unwrap_or_else(|e| panic!("{e}"));
        rec.settle(1);
        let second = wall_secs();
        poll(|| wall_secs() > second);
        rec.settle(2);
        rec.finish();
        let files = crate::replay::recording_files(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(files.len() >= 2, "{files:?}");
        let mut errors = Vec::new();
        let (_, stats) =
            crate::replay::replay_recording(&files, &mut errors).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((stats.bad_lines, stats.truncated_files), (0, 0));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rotated_files_restate_markets_and_feeds_in_their_preamble() {
        let dir = temp_dir("preamble");
        let options = RecordOptions { rotate_bytes: 1, ..RecordOptions::default() };
        let mut rec =
            Recorder::open(&dir, 3, &settings(), options).unwrap_or_else(|e| panic!("{e}"));
        let meta = TokenMeta::default();
        rec.track("0xa", &meta, &["1", "2"]);
        rec.track("0xb", &meta, &["3", "4"]);
        rec.assign(9, &["1", "2", "3"]);
        rec.lost(9, &["3"]);
        rec.untrack("0xb", &["3", "4"]);
        rec.settle(5);
        rec.finish();
        let files = crate::replay::recording_files(&dir).unwrap_or_else(|e| panic!("{e}"));
        // Every line went to a new file (rotate_bytes 1); the last one's preamble says it all.
        assert_eq!(files.len(), 7, "{files:?}");
        let last = files.last().map(|f| {
            let r = crate::replay::open_recording(f).unwrap_or_else(|e| panic!("{e}"));
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut { r.lines }, &mut text);
            text
        });
        let text = last.unwrap_or_default();
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(lines, ["#track 0xa - - - 1 2", "#assign 9 1 2", PREAMBLE_END, "#settle 5"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
