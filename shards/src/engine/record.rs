//! `--record DIR`: each data shard appends every raw frame it receives (with its receive time
//! and socket) and the store operations that decide which socket feeds which book, to
//! `DIR/shard-K-NNNNNN.rec`, rotating at `ROTATE_BYTES`. `polybook replay` rebuilds the exact
//! books from these files (see `polybook::capture::RecordLine`).
//!
//! Writes go through a large buffer; the occasional flush is a plain write to the page
//! cache. A shard whose recording fails stops recording (counted, logged once) and keeps
//! serving: books matter more than the recording.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use polybook::book::TokenMeta;
use polybook::capture::{
    record_frame_line, record_track_line, recording_header_v2, RecordingSettings,
};

/// Bytes per file before a new one starts.
pub const ROTATE_BYTES: u64 = 256 << 20;

pub struct Recorder {
    header: String,
    dir: PathBuf,
    shard: usize,
    seq: u32,
    out: Option<BufWriter<File>>,
    bytes: u64,
    pub lines: u64,
    pub failed: bool,
}

impl Recorder {
    /// `settings`: the store's integrity settings, written in every file's header so that
    /// replay judges exactly as the engine did.
    pub fn open(
        dir: &Path,
        shard: usize,
        settings: &RecordingSettings,
    ) -> std::io::Result<Recorder> {
        std::fs::create_dir_all(dir)?;
        let mut r = Recorder {
            header: recording_header_v2(settings),
            dir: dir.to_owned(),
            shard,
            seq: 0,
            out: None,
            bytes: 0,
            lines: 0,
            failed: false,
        };
        r.rotate()?;
        Ok(r)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(mut old) = self.out.take() {
            old.flush()?;
        }
        // Continue after files left by an earlier run in the same directory.
        loop {
            self.seq += 1;
            let path = self.dir.join(format!("shard-{}-{:06}.rec", self.shard, self.seq));
            if !path.exists() {
                let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
                writeln!(w, "{}", self.header)?;
                self.out = Some(w);
                self.bytes = 0;
                return Ok(());
            }
        }
    }

    fn line(&mut self, line: &str) {
        if self.failed {
            return;
        }
        let result = (|| -> std::io::Result<()> {
            if self.bytes >= ROTATE_BYTES {
                self.rotate()?;
            }
            if let Some(w) = self.out.as_mut() {
                w.write_all(line.as_bytes())?;
                w.write_all(b"\n")?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.bytes += line.len() as u64 + 1;
                self.lines += 1;
            }
            Err(e) => {
                self.failed = true;
                tracing::error!(shard = self.shard, error = %e, "recording failed; stopped");
            }
        }
    }

    pub fn frame(&mut self, recv_ns: u64, feed: u32, text: &str) {
        self.line(&record_frame_line(recv_ns, feed, text));
    }

    pub fn track(&mut self, market: &str, meta: &TokenMeta, tokens: &[&str]) {
        self.line(&record_track_line(market, meta, tokens));
    }

    pub fn untrack(&mut self, market: &str, tokens: &[&str]) {
        self.line(&format!("#untrack {market} {}", tokens.join(" ")));
    }

    pub fn assign(&mut self, feed: u32, tokens: &[&str]) {
        if !tokens.is_empty() {
            self.line(&format!("#assign {feed} {}", tokens.join(" ")));
        }
    }

    pub fn lost(&mut self, feed: u32, tokens: &[&str]) {
        if !tokens.is_empty() {
            self.line(&format!("#lost {feed} {}", tokens.join(" ")));
        }
    }

    pub fn settle(&mut self, now_ms: u64) {
        self.line(&format!("#settle {now_ms}"));
    }

    pub fn stale(&mut self, feed: u32) {
        self.line(&format!("#stale {feed}"));
    }

    pub fn resync(&mut self, tokens: &[&str]) {
        if !tokens.is_empty() {
            self.line(&format!("#resync {}", tokens.join(" ")));
        }
    }

    pub fn flush(&mut self) {
        if let Some(w) = self.out.as_mut() {
            if let Err(e) = w.flush() {
                tracing::error!(shard = self.shard, error = %e, "recording flush failed");
            }
        }
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
        Recorder::flush(self);
    }
}

fn ids(tokens: &[polybook::TokenId]) -> Vec<&str> {
    tokens.iter().map(polybook::TokenId::as_str).collect()
}
