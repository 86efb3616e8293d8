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
