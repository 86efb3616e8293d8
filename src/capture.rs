//! The capture format: one raw text frame per line, optionally prefixed by the receive time in
//! nanoseconds and one space (`1766481546776000000 {"market":...}`).

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
}

/// First line of an engine recording (`polybook run --record`).
pub const RECORDING_HEADER: &str = "#polybook-recording v1";

/// One line of an engine recording: the raw frames a data shard received, with the socket
/// (feed) each came from, and the store operations that decide which socket feeds which book.
/// Replaying the lines in order repeats the shard's store calls exactly, so it rebuilds the
/// exact books the engine had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordLine<'a> {
    Header,
    /// `recv_ns:feed frame`
    Frame {
        recv_ns: u64,
        feed: u32,
        frame: &'a str,
    },
    /// `#track market tick min_order_size neg_risk token...` (`-` for unknown)
    Track {
        market: &'a str,
        meta: crate::book::TokenMeta,
        tokens: Vec<&'a str>,
    },
    /// `#untrack market token...`
    Untrack {
        tokens: Vec<&'a str>,
    },
    /// `#assign feed token...`: a socket subscribed these tokens.
    Assign {
        feed: u32,
        tokens: Vec<&'a str>,
    },
    /// `#lost feed token...`: that socket ended.
    Lost {
        feed: u32,
        tokens: Vec<&'a str>,
    },
}

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
        return Ok(Some(RecordLine::Header));
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

/// Writes a frame line.
pub fn record_frame_line(recv_ns: u64, feed: u32, frame: &str) -> String {
    let frame = frame.strip_suffix('\n').unwrap_or(frame);
    format!("{recv_ns}:{feed} {frame}")
}

/// Writes a `#track` line.
pub fn record_track_line(market: &str, meta: &crate::book::TokenMeta, tokens: &[&str]) -> String {
    let t = meta.tick_size.map_or("-".to_owned(), |v| v.to_string());
    let m = meta.min_order_size.map_or("-".to_owned(), |v| v.to_string());
    let n = meta.neg_risk.map_or("-".to_owned(), |v| v.to_string());
    format!("#track {market} {t} {m} {n} {}", tokens.join(" "))
}

/// Applies one recording line to a store, repeating the engine's call.
pub fn replay_record_line(
    store: &mut crate::BookStore,
    line: &RecordLine<'_>,
    sink: &mut impl crate::store::UpdateSink,
) -> Option<crate::store::FrameReport> {
    use crate::store::FeedId;
    match line {
        RecordLine::Header => None,
        RecordLine::Frame { recv_ns, feed, frame } => {
            // The store's clock is the receive time, as it was in the engine.
            let now_ms = recv_ns / 1_000_000;
            store.set_now_ms(now_ms);
            store.settle(now_ms, sink);
            Some(store.apply_frame_from(FeedId(*feed), frame, sink))
        }
        RecordLine::Track { market, meta, tokens } => {
            for t in tokens {
                store.track(crate::TokenId::new(t), crate::MarketId::new(market), *meta);
            }
            None
        }
        RecordLine::Untrack { tokens } => {
            for t in tokens {
                store.untrack(t);
            }
            None
        }
        RecordLine::Assign { feed, tokens } => {
            for t in tokens {
                store.assign_feed(t, FeedId(*feed));
            }
            None
        }
        RecordLine::Lost { feed, tokens } => {
            for t in tokens {
                store.feed_lost(t, FeedId(*feed), sink);
            }
            None
        }
    }
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
            Ok(Some(RecordLine::Frame { recv_ns: 5, feed: 7, frame: "[]" }))
        );
        assert_eq!(
            parse_record_line("#assign 3 1 2"),
            Ok(Some(RecordLine::Assign { feed: 3, tokens: vec!["1", "2"] }))
        );
        assert_eq!(parse_record_line(RECORDING_HEADER), Ok(Some(RecordLine::Header)));
        assert!(parse_record_line("#dance 1").is_err());
        assert!(parse_record_line("123 {}").is_err());
        assert_eq!(parse_record_line(""), Ok(None));
    }
}
