//! The capture format: one raw text frame per line, optionally prefixed by the receive time in
//! nanoseconds and one space (`1766481546776000000 {"market":...}`), and the engine's recording
//! format (below). Files come from outside: [`classify_line`] turns any bytes into a line or a
//! typed, countable error, so a reader never stops at a bad line.

/// Why a line of a capture or recording could not be used. Counted by kind; the rest of the
/// file is still read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum LineError {
    #[error("not valid UTF-8")]
    InvalidUtf8,
    #[error("contains a NUL byte")]
    Nul,
    #[error("longer than the line limit")]
    TooLong,
    #[error("a recording frame with a bad escape")]
    BadEscape,
}

impl LineError {
    pub const ALL: [LineError; 4] =
        [LineError::InvalidUtf8, LineError::Nul, LineError::TooLong, LineError::BadEscape];
    pub fn as_str(self) -> &'static str {
        match self {
            LineError::InvalidUtf8 => "invalid_utf8",
            LineError::Nul => "nul",
            LineError::TooLong => "too_long",
            LineError::BadEscape => "bad_escape",
        }
    }
}

/// Lines counted while reading a file: errors by kind and the oddities that were tolerated.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LineCounts {
    pub invalid_utf8: u64,
    pub nul: u64,
    pub too_long: u64,
    pub bad_escape: u64,
    /// A UTF-8 byte order mark at the start of a line, stripped.
    pub bom_stripped: u64,
    /// The file's last line had no newline (read anyway: it may be cut short).
    pub unterminated_last_line: u64,
}

impl LineCounts {
    pub fn add(&mut self, e: LineError) {
        match e {
            LineError::InvalidUtf8 => self.invalid_utf8 += 1,
            LineError::Nul => self.nul += 1,
            LineError::TooLong => self.too_long += 1,
            LineError::BadEscape => self.bad_escape += 1,
        }
    }
    pub fn errors(&self) -> u64 {
        self.invalid_utf8 + self.nul + self.too_long + self.bad_escape
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One line's bytes (without its `\n`) as text: strips a trailing `\r` and a leading BOM
/// (counted), refuses invalid UTF-8 and NUL bytes (a frame never holds a raw NUL; a recording
/// escapes one).
pub fn classify_line<'a>(bytes: &'a [u8], counts: &mut LineCounts) -> Result<&'a str, LineError> {
    let mut b = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    if let Some(rest) = b.strip_prefix(BOM) {
        counts.bom_stripped += 1;
        b = rest;
    }
    let text = std::str::from_utf8(b).map_err(|_| LineError::InvalidUtf8)?;
    if text.as_bytes().contains(&0) {
        return Err(LineError::Nul);
    }
    Ok(text)
}

/// Escapes a frame for one recording line: `\\`, `\n`, `\r`, `\0`; everything else as is, so
/// any frame text replays byte for byte.
pub fn escape_frame(frame: &str, out: &mut String) {
    for c in frame.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
}

/// Reverses [`escape_frame`].
pub fn unescape_frame(line: &str) -> Result<std::borrow::Cow<'_, str>, LineError> {
    if !line.contains('\\') {
        return Ok(std::borrow::Cow::Borrowed(line));
    }
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next() {
            Some('\\') => '\\',
            Some('n') => '\n',
            Some('r') => '\r',
            Some('0') => '\0',
            _ => return Err(LineError::BadEscape),
        });
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// One line of a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureLine<'a> {
    pub recv_ns: Option<u64>,
    pub frame: &'a str,
}

/// Splits a line into its optional receive time and the frame. Blank lines give None.
pub fn parse_line(line: &str) -> Option<CaptureLine<'_>> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.trim_ascii().is_empty() {
        return None;
    }
    if let Some((head, rest)) = line.split_once(' ') {
        if !head.is_empty() && head.len() <= 20 && head.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(ns) = head.parse::<u64>() {
                return Some(CaptureLine { recv_ns: Some(ns), frame: rest });
            }
        }
    }
    Some(CaptureLine { recv_ns: None, frame: line })
}

/// Applies one capture line to a store as the engine would have: the receive time (if the
/// line has one) is the store's clock and lets time pass before the frame. None for a blank
/// line.
pub fn apply_capture_line(
    store: &mut crate::BookStore,
    line: &str,
    sink: &mut impl crate::store::UpdateSink,
) -> Option<crate::store::FrameReport> {
    let parsed = parse_line(line)?;
    if let Some(ns) = parsed.recv_ns {
        let now_ms = ns / 1_000_000;
        store.set_now_ms(now_ms);
        store.settle(now_ms, sink);
    }
    Some(store.apply_frame(parsed.frame, sink))
}

/// The input ended: lets an hour pass twice, so every open claim is judged (runs end, then
/// their windows pass).
pub fn settle_at_end(store: &mut crate::BookStore, sink: &mut impl crate::store::UpdateSink) {
    let end = store.now_ms().saturating_add(3_600_000);
    store.settle(end, sink);
    store.settle(end.saturating_add(3_600_000), sink);
}

/// Formats a line for a capture file.
pub fn format_line(recv_ns: u64, frame: &str) -> String {
    let frame = frame.strip_suffix('\n').unwrap_or(frame);
    format!("{recv_ns} {frame}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_line_with_and_without_prefix() {
        assert_eq!(
            parse_line("123 {\"a\":1}"),
            Some(CaptureLine { recv_ns: Some(123), frame: "{\"a\":1}" })
        );
        assert_eq!(parse_line("[]"), Some(CaptureLine { recv_ns: None, frame: "[]" }));
        assert_eq!(parse_line("PONG\r"), Some(CaptureLine { recv_ns: None, frame: "PONG" }));
        assert_eq!(parse_line("   "), None);
        assert_eq!(
            parse_line("{\"market\":\"0x1\", \"x\":1}"),
            Some(CaptureLine { recv_ns: None, frame: "{\"market\":\"0x1\", \"x\":1}" })
        );
        assert_eq!(format_line(5, "[]\n"), "5 []");
    }

    #[test]
    fn any_frame_text_round_trips_through_a_recording_line() {
        for frame in ["[]\n", "a\\nb", "x\r\ny\0z\\", "{\"d\":\"\\u00e9 \\\"q\\\"\"}", ""] {
            let line = record_frame_line(7, 3, frame);
            assert!(
                !line.contains('\n') && !line.contains('\r') && !line.contains('\0'),
                "{line:?}"
            );
            let Ok(Some(RecordLine::Frame { recv_ns: 7, feed: 3, frame: esc })) =
                parse_record_line(&line)
            else {
                panic!("{line:?}")
            };
            assert_eq!(unescape_frame(esc).as_deref(), Ok(frame));
        }
        assert_eq!(unescape_frame("a\\x"), Err(LineError::BadEscape));
        assert_eq!(unescape_frame("a\\"), Err(LineError::BadEscape));
    }

    #[test]
    fn classify_line_types_every_bad_input() {
        let mut c = LineCounts::default();
        assert_eq!(classify_line(b"ok\r", &mut c), Ok("ok"));
        assert_eq!(classify_line(b"\xEF\xBB\xBF[]", &mut c), Ok("[]"));
        assert_eq!(c.bom_stripped, 1);
        assert_eq!(classify_line(b"\xff\xfe", &mut c), Err(LineError::InvalidUtf8));
        assert_eq!(classify_line(b"a\0b", &mut c), Err(LineError::Nul));
    }
}

/// First line of a version 1 recording (frames unescaped, no settings).
pub const RECORDING_HEADER: &str = "#polybook-recording v1";

/// First line of a version 2 recording, followed by one space and the store settings the engine
/// ran with as JSON ([`RecordingSettings`]). Frames are escaped ([`escape_frame`]).
pub const RECORDING_HEADER_V2: &str = "#polybook-recording v2";

/// The integrity settings a recording was made with; replay uses them, so statuses replay too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordingSettings {
    pub verify_hash: bool,
    pub failed_checks_max: u16,
    pub states_after_run_max: u8,
    pub run_quiet_ms: u64,
    pub window_ms: u64,
    pub divergence_ms_min: u64,
}

impl RecordingSettings {
    pub fn of(c: &crate::StoreConfig) -> RecordingSettings {
        RecordingSettings {
            verify_hash: c.verify_hash,
            failed_checks_max: c.failed_checks_max,
            states_after_run_max: c.window.states_after_run_max,
            run_quiet_ms: c.window.run_quiet_ms,
            window_ms: c.window.window_ms,
            divergence_ms_min: c.divergence_ms_min,
        }
    }
    pub fn store_config(&self) -> crate::StoreConfig {
        crate::StoreConfig {
            verify_hash: self.verify_hash,
            failed_checks_max: self.failed_checks_max,
            window: crate::checks::CheckWindow {
                states_after_run_max: self.states_after_run_max,
                run_quiet_ms: self.run_quiet_ms,
                window_ms: self.window_ms,
                ..crate::checks::CheckWindow::default()
            },
            divergence_ms_min: self.divergence_ms_min,
            ..crate::StoreConfig::default()
        }
    }
}

/// The header line of a version 2 recording.
pub fn recording_header_v2(settings: &RecordingSettings) -> String {
    let json = serde_json::to_string(settings).unwrap_or_default();
    format!("{RECORDING_HEADER_V2} {json}")
}

/// One line of an engine recording: the raw frames a data shard received, with the socket
/// (feed) each came from, and the store operations that decide which socket feeds which book.
/// Replaying the lines in order repeats the shard's store calls exactly, so it rebuilds the
/// exact books the engine had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordLine<'a> {
    /// A version 1 header, or a version 2 header with its settings.
    Header(Option<RecordingSettings>),
    /// `recv_ns:feed frame` (escaped in version 2: see [`RecordLine::frame_text`])
    Frame { recv_ns: u64, feed: u32, frame: &'a str },
    /// `#settle now_ms`: the store's clock passed (runs end, windows judge).
    Settle { now_ms: u64 },
    /// `#stale feed`: that socket went silent; its live books were marked stale.
    Stale { feed: u32 },
    /// `#resync token...`: these books were marked resyncing outside a frame.
    Resync { tokens: Vec<&'a str> },
    /// `#track market tick min_order_size neg_risk token...` (`-` for unknown)
    Track { market: &'a str, meta: crate::book::TokenMeta, tokens: Vec<&'a str> },
    /// `#untrack market token...`
    Untrack { tokens: Vec<&'a str> },
    /// `#assign feed token...`: a socket subscribed these tokens.
    Assign { feed: u32, tokens: Vec<&'a str> },
    /// `#lost feed token...`: that socket ended.
    Lost { feed: u32, tokens: Vec<&'a str> },
    /// `#gap lines`: the recorder dropped that many lines here (its queue was full); books
    /// replayed past this point may differ from the engine's.
    Gap { lines: u64 },
    /// `#preamble-end`: the lines since the header restated the tracked markets and feeds so
    /// that this file replays alone; a replay continuing from the previous file skips them.
    PreambleEnd,
}

/// Ends a file's preamble (see [`RecordLine::PreambleEnd`]).
pub const PREAMBLE_END: &str = "#preamble-end";

/// Why a recording line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad recording line: {0}")]
pub struct RecordLineError(pub String);

fn opt_text<T: std::str::FromStr>(s: &str) -> Result<Option<T>, RecordLineError> {
    if s == "-" {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| RecordLineError(format!("bad value {s:?}")))
}

/// Parses one recording line (None for blank lines).
pub fn parse_record_line(line: &str) -> Result<Option<RecordLine<'_>>, RecordLineError> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.trim_ascii().is_empty() {
        return Ok(None);
    }
    if line == RECORDING_HEADER {
        return Ok(Some(RecordLine::Header(None)));
    }
    if let Some(json) = line.strip_prefix(RECORDING_HEADER_V2) {
        let settings = serde_json::from_str(json.trim())
            .map_err(|e| RecordLineError(format!("bad recording header: {e}")))?;
        return Ok(Some(RecordLine::Header(Some(settings))));
    }
    let bad = || RecordLineError(line.chars().take(80).collect());
    if let Some(rest) = line.strip_prefix('#') {
        let mut parts = rest.split(' ');
        let verb = parts.next().ok_or_else(bad)?;
        let parsed = match verb {
            "track" => {
                let market = parts.next().ok_or_else(bad)?;
                let tick = opt_text::<crate::Price>(parts.next().ok_or_else(bad)?)?;
                let min = opt_text::<crate::Size>(parts.next().ok_or_else(bad)?)?;
                let neg = opt_text::<bool>(parts.next().ok_or_else(bad)?)?;
                let meta =
                    crate::book::TokenMeta { tick_size: tick, min_order_size: min, neg_risk: neg };
                RecordLine::Track { market, meta, tokens: parts.collect() }
            }
            "untrack" => {
                let _market = parts.next().ok_or_else(bad)?;
                RecordLine::Untrack { tokens: parts.collect() }
            }
            "settle" => {
                let now_ms = parts.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
                RecordLine::Settle { now_ms }
            }
            "stale" => {
                let feed = parts.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
                RecordLine::Stale { feed }
            }
            "resync" => RecordLine::Resync { tokens: parts.collect() },
            "gap" => {
                let lines = parts.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
                RecordLine::Gap { lines }
            }
            "preamble-end" => RecordLine::PreambleEnd,
            "assign" | "lost" => {
                let feed = parts.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
                let tokens = parts.collect();
                if verb == "assign" {
                    RecordLine::Assign { feed, tokens }
                } else {
                    RecordLine::Lost { feed, tokens }
                }
            }
            _ => return Err(bad()),
        };
        return Ok(Some(parsed));
    }
    let (head, frame) = line.split_once(' ').ok_or_else(bad)?;
    let (ns, feed) = head.split_once(':').ok_or_else(bad)?;
    let recv_ns = ns.parse().map_err(|_| bad())?;
    let feed = feed.parse().map_err(|_| bad())?;
    Ok(Some(RecordLine::Frame { recv_ns, feed, frame }))
}

/// Writes a version 2 frame line: the frame escaped, byte for byte.
pub fn record_frame_line(recv_ns: u64, feed: u32, frame: &str) -> String {
    let mut line = format!("{recv_ns}:{feed} ");
    line.reserve(frame.len());
    escape_frame(frame, &mut line);
    line
}

/// Writes a `#track` line.
pub fn record_track_line(market: &str, meta: &crate::book::TokenMeta, tokens: &[&str]) -> String {
    let t = meta.tick_size.map_or("-".to_owned(), |v| v.to_string());
    let m = meta.min_order_size.map_or("-".to_owned(), |v| v.to_string());
    let n = meta.neg_risk.map_or("-".to_owned(), |v| v.to_string());
    format!("#track {market} {t} {m} {n} {}", tokens.join(" "))
}

/// Applies one recording line to a store, repeating the engine's call. `v2`: frames are
/// escaped (a version 2 header was read).
pub fn replay_record_line(
    store: &mut crate::BookStore,
    line: &RecordLine<'_>,
    v2: bool,
    sink: &mut impl crate::store::UpdateSink,
) -> Result<Option<crate::store::FrameReport>, LineError> {
    use crate::store::FeedId;
    match line {
        RecordLine::Header(_) | RecordLine::Gap { .. } | RecordLine::PreambleEnd => {}
        RecordLine::Frame { recv_ns, feed, frame } => {
            // The store's clock is the receive time, exactly as the engine set it.
            store.set_now_ms(recv_ns / 1_000_000);
            let text = if v2 { unescape_frame(frame)? } else { std::borrow::Cow::Borrowed(*frame) };
            return Ok(Some(store.apply_frame_from(FeedId(*feed), &text, sink)));
        }
        RecordLine::Settle { now_ms } => store.settle(*now_ms, sink),
        RecordLine::Stale { feed } => {
            store.mark_feed_stale(FeedId(*feed), sink);
        }
        RecordLine::Resync { tokens } => {
            for t in tokens {
                store.mark_resyncing(t, sink);
            }
        }
        RecordLine::Track { market, meta, tokens } => {
            for t in tokens {
                store.track(crate::TokenId::new(t), crate::MarketId::new(market), *meta);
            }
        }
        RecordLine::Untrack { tokens } => {
            for t in tokens {
                store.untrack(t);
            }
        }
        RecordLine::Assign { feed, tokens } => {
            for t in tokens {
                store.assign_feed(t, FeedId(*feed));
            }
        }
        RecordLine::Lost { feed, tokens } => {
            for t in tokens {
                store.feed_lost(t, FeedId(*feed), sink);
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod record_tests {
    use super::*;

    #[test]
    fn record_lines_round_trip() {
        let meta = crate::book::TokenMeta {
            tick_size: crate::Price::parse("0.01").ok(),
            min_order_size: None,
            neg_risk: Some(false),
        };
        let l = record_track_line("0xm", &meta, &["1", "2"]);
        assert_eq!(l, "#track 0xm 0.01 - false 1 2");
        assert_eq!(
            parse_record_line(&l),
            Ok(Some(RecordLine::Track { market: "0xm", meta, tokens: vec!["1", "2"] }))
        );
        assert_eq!(
            parse_record_line(&record_frame_line(5, 7, "[]\n")),
            Ok(Some(RecordLine::Frame { recv_ns: 5, feed: 7, frame: "[]\\n" }))
        );
        assert_eq!(
            parse_record_line("#assign 3 1 2"),
            Ok(Some(RecordLine::Assign { feed: 3, tokens: vec!["1", "2"] }))
        );
        assert_eq!(parse_record_line(RECORDING_HEADER), Ok(Some(RecordLine::Header(None))));
        let settings = RecordingSettings::of(&crate::StoreConfig::default());
        assert_eq!(
            parse_record_line(&recording_header_v2(&settings)),
            Ok(Some(RecordLine::Header(Some(settings))))
        );
        assert_eq!(parse_record_line("#settle 17"), Ok(Some(RecordLine::Settle { now_ms: 17 })));
        assert_eq!(parse_record_line("#stale 4"), Ok(Some(RecordLine::Stale { feed: 4 })));
        assert_eq!(parse_record_line("#gap 12"), Ok(Some(RecordLine::Gap { lines: 12 })));
        assert_eq!(parse_record_line(PREAMBLE_END), Ok(Some(RecordLine::PreambleEnd)));
        assert!(parse_record_line("#gap x").is_err());
        assert!(parse_record_line("#dance 1").is_err());
        assert!(parse_record_line("123 {}").is_err());
        assert_eq!(parse_record_line(""), Ok(None));
    }
}
