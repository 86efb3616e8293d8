//! Byte-level decoding: query strings, percent escapes, body framing headers, chunked bodies.

/// Splits `a=1&b=x%20y+z&c` into decoded pairs (`+` is form encoding's space); a key without
/// `=` gets an empty value.
pub fn parse_query(raw: &str) -> Vec<(String, String)> {
    let component = |s: &str| percent_decode(&s.replace('+', " "));
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (component(k), component(v)),
            None => (component(p), String::new()),
        })
        .collect()
}

/// Decodes `%XX` escapes (a path segment: `+` stays). Malformed escapes stay as they are, and
/// invalid UTF-8 is replaced, so decoding never fails.
pub fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Why a chunked body could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChunkError {
    Malformed,
    TooLarge,
}

/// Decodes a complete chunked body at the start of `data`. `Ok(None)`: more bytes are needed.
/// `Ok(Some((body, used)))`: `used` bytes of `data` held the body and its trailers. The whole
/// body is re-scanned on each call, which is fine at the sizes the limits allow.
pub(crate) fn decode_chunked(
    data: &[u8],
    max_body: usize,
) -> Result<Option<(Vec<u8>, usize)>, ChunkError> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let rest = data.get(pos..).unwrap_or_default();
        let (size_len, size) = match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete(v)) => v,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(ChunkError::Malformed),
        };
        pos += size_len;
        if size == 0 {
            // Trailer fields, then an empty line. They are skipped: nothing here uses them.
            loop {
                let rest = data.get(pos..).unwrap_or_default();
                let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                    if rest.len() > 16 << 10 {
                        return Err(ChunkError::TooLarge);
                    }
                    return Ok(None);
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, pos)));
                }
            }
        }
        let size = usize::try_from(size).map_err(|_| ChunkError::TooLarge)?;
        if body.len().saturating_add(size) > max_body {
            return Err(ChunkError::TooLarge);
        }
        let end = pos.saturating_add(size);
        let Some(chunk) = data.get(pos..end) else { return Ok(None) };
        body.extend_from_slice(chunk);
        match data.get(end..end + 2) {
            Some(b"\r\n") => pos = end + 2,
            Some(_) => return Err(ChunkError::Malformed),
            None => return Ok(None),
        }
    }
}

/// How the body of a message is delimited, from its headers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BodyKind {
    Length(u64),
    Chunked,
}

/// Why the framing headers of a message are refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FramingError {
    /// A transfer coding other than plain `chunked` (501 for a request).
    Unsupported,
    /// Malformed or contradictory headers (400 for a request); the text says which.
    Invalid(&'static str),
}

impl FramingError {
    pub(crate) fn message(&self) -> &'static str {
        match self {
            FramingError::Unsupported => "unsupported transfer-encoding",
            FramingError::Invalid(m) => m,
        }
    }
}

/// Reads `Content-Length` / `Transfer-Encoding`. `None`: no body framing header.
/// Both headers together are refused: a mismatch between hops is how requests get smuggled.
pub(crate) fn body_kind(headers: &[(String, String)]) -> Result<Option<BodyKind>, FramingError> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("content-length") {
            for part in v.split(',') {
                let part = part.trim();
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(FramingError::Invalid("bad content-length"));
                }
                let n: u64 =
                    part.parse().map_err(|_| FramingError::Invalid("bad content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(FramingError::Invalid("conflicting content-length"));
                }
                length = Some(n);
            }
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            let last = v.rsplit(',').next().map(str::trim).unwrap_or_default();
            if !last.eq_ignore_ascii_case("chunked") || v.split(',').count() > 1 {
                return Err(FramingError::Unsupported);
            }
            chunked = true;
        }
    }
    match (length, chunked) {
        (Some(_), true) => Err(FramingError::Invalid("both content-length and transfer-encoding")),
        (Some(n), false) => Ok(Some(BodyKind::Length(n))),
        (None, true) => Ok(Some(BodyKind::Chunked)),
        (None, false) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query("token_id=123&x=a%20b+c&flag&bad=%zz&=v");
        assert_eq!(
            q,
            vec![
                ("token_id".into(), "123".into()),
                ("x".into(), "a b c".into()),
                ("flag".into(), String::new()),
                ("bad".into(), "%zz".into()),
                (String::new(), "v".into()),
            ]
        );
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("a%4"), "a%4");
        assert_eq!(percent_decode("%41"), "A");
        assert_eq!(percent_decode("a+b%2B"), "a+b+", "a path keeps its plus signs");
        assert_eq!(percent_decode("%ff"), "\u{fffd}", "invalid UTF-8 is replaced");
    }

    #[test]
    fn chunked_bodies() {
        let wire = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        assert_eq!(decode_chunked(wire, 100), Ok(Some((b"Wikipedia".to_vec(), wire.len() - 4))));
        for cut in 0..wire.len() - 4 {
            assert_eq!(decode_chunked(&wire[..cut], 100), Ok(None), "cut at {cut}");
        }
        assert_eq!(decode_chunked(wire, 5), Err(ChunkError::TooLarge));
        assert_eq!(decode_chunked(b"4\r\nWikiXX", 100), Err(ChunkError::Malformed));
        assert_eq!(decode_chunked(b"zz\r\n", 100), Err(ChunkError::Malformed));
    }

    #[test]
    fn framing_headers() {
        let h = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(body_kind(&[h("Content-Length", "12")]), Ok(Some(BodyKind::Length(12))));
        assert_eq!(body_kind(&[h("content-length", "3, 3")]), Ok(Some(BodyKind::Length(3))));
        assert!(body_kind(&[h("content-length", "3, 4")]).is_err());
        assert!(body_kind(&[h("content-length", "-1")]).is_err());
        assert!(body_kind(&[h("content-length", "+1")]).is_err());
        assert_eq!(body_kind(&[h("Transfer-Encoding", "chunked")]), Ok(Some(BodyKind::Chunked)));
        assert!(body_kind(&[h("Transfer-Encoding", "gzip, chunked")]).is_err());
        assert!(body_kind(&[h("Transfer-Encoding", "chunked"), h("Content-Length", "1")]).is_err());
        assert_eq!(body_kind(&[]), Ok(None));
    }
}
