//! HTTP/1.1 message types shared by the server and the client: the parsed [`Request`], the
//! [`Response`] a handler builds, and the byte-level pieces (query decoding, chunked bodies,
//! status lines) both sides need.

use std::borrow::Cow;
use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A complete request: head and body have both been read and checked against the limits.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The method as sent, e.g. `GET` (methods are case-sensitive).
    pub method: String,
    /// The path as sent, without the query string, not percent-decoded.
    pub path: String,
    /// The raw query string, without the `?`; empty when there is none.
    pub raw_query: String,
    /// The query string as percent-decoded `(name, value)` pairs in order; `+` reads as a space.
    pub query: Vec<(String, String)>,
    /// Header names and values as sent (values are read as UTF-8, lossily).
    pub headers: Vec<(String, String)>,
    /// The body, already de-chunked.
    pub body: Vec<u8>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
    /// The peer's address, when the socket could report it.
    pub peer: Option<SocketAddr>,
}

impl Request {
    /// The first header with this name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The first query parameter with this name.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Every value of a repeated query parameter (`?id=1&id=2`), in order.
    pub fn query_params<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.query.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The body as UTF-8 text.
    pub fn body_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.body)
    }

    /// The body parsed as JSON.
    pub fn body_json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// Whether the request asks for a WebSocket upgrade (`Upgrade: websocket` together with
    /// `Connection: upgrade`; an `Upgrade` header without the latter must be ignored).
    pub fn is_websocket_upgrade(&self) -> bool {
        self.headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("upgrade") && has_token(v, "websocket"))
            && self
                .headers
                .iter()
                .any(|(k, v)| k.eq_ignore_ascii_case("connection") && has_token(v, "upgrade"))
    }
}

/// What a handler answers. The server adds `content-length` and `connection` itself.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: Cow<'static, str>,
    /// Extra headers. Values with CR or LF are dropped when written, never sent.
    pub headers: Vec<(Cow<'static, str>, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// An empty response with this status.
    pub fn new(status: u16) -> Self {
        Self { status, content_type: Cow::Borrowed(""), headers: Vec::new(), body: Vec::new() }
    }

    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            content_type: Cow::Borrowed("text/plain; charset=utf-8"),
            body: body.into().into_bytes(),
            ..Self::new(status)
        }
    }

    /// An `application/json` response from text that is already JSON.
    pub fn json_raw(status: u16, json: impl Into<Vec<u8>>) -> Self {
        Self {
            content_type: Cow::Borrowed("application/json"),
            body: json.into(),
            ..Self::new(status)
        }
    }

    /// An `application/json` response serialised from `value`; a value that cannot be
    /// serialised (a map with non-string keys, say) becomes a 500 rather than a panic.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::json_raw(status, body),
            Err(e) => Self::error(500, &format!("cannot encode response: {e}")),
        }
    }

    /// `{"error": message}` with this status: the one error shape every endpoint uses.
    pub fn error(status: u16, message: &str) -> Self {
        let body = serde_json::json!({ "error": message }).to_string();
        Self::json_raw(status, body)
    }

    /// 404 with a JSON error body.
    pub fn not_found() -> Self {
        Self::error(404, "not found")
    }

    /// 405 with the `allow` header listing what the path accepts.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self::error(405, "method not allowed").with_header("allow", allow)
    }

    /// Adds a header.
    pub fn with_header(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<String>,
    ) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The status line, headers and body as sent on the wire. `head_only` leaves out the body
    /// (HEAD requests) but keeps its length.
    pub(crate) fn serialize(&self, keep_alive: bool, head_only: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.body.len());
        push_status_line(&mut out, self.status);
        if !self.content_type.is_empty() && is_header_safe(&self.content_type) {
            push_header(&mut out, "content-type", &self.content_type);
        }
        // 1xx and 204 must not carry a length; every other answer gets one so keep-alive works.
        if self.status >= 200 && self.status != 204 {
            push_header(&mut out, "content-length", &self.body.len().to_string());
        }
        push_header(&mut out, "connection", if keep_alive { "keep-alive" } else { "close" });
        for (k, v) in &self.headers {
            if is_token(k) && is_header_safe(v) {
                push_header(&mut out, k, v);
            }
        }
        out.extend_from_slice(b"\r\n");
        if !head_only && self.status >= 200 && self.status != 204 && self.status != 304 {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

pub(crate) fn push_status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn is_header_safe(v: &str) -> bool {
    !v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The standard reason phrase (clients ignore it, but humans read it in logs).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

pub(crate) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Whether a comma-separated header value lists `token` (ASCII case-insensitive).
pub(crate) fn has_token(value: &str, token: &str) -> bool {
    value.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Splits `a=1&b=x%20y&c` into decoded pairs; a key without `=` gets an empty value.
pub fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// Decodes `%XX` escapes and `+` (form encoding's space). Malformed escapes stay as they are,
/// and invalid UTF-8 is replaced, so decoding never fails.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
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

/// One origin, `scheme://host:port`, as compared: scheme and host lower-cased, the port
/// explicit (80 for http, 443 for https when left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// Parses an `Origin` header value or a configured origin: `http://` or `https://`, a
    /// host (a name, an IPv4 address or a bracketed IPv6 address) and an optional port; no
    /// path, no user info. `null` (what sandboxed pages and `file:` send) is not an origin.
    pub fn parse(s: &str) -> Result<Origin, String> {
        let (scheme, rest) =
            s.split_once("://").ok_or_else(|| "an origin is scheme://host[:port]".to_owned())?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(format!("scheme {scheme:?} is neither http nor https")),
        };
        let (host, port) = parse_authority(rest)?;
        Ok(Origin { scheme, host, port: port.unwrap_or(default_port) })
    }

    fn default_port(&self) -> bool {
        matches!((self.scheme.as_str(), self.port), ("http", 80) | ("https", 443))
    }
}

/// Splits `host[:port]` (a `Host` header, an origin's authority) into a lower-cased host and
/// the port if one is given. Anything else (paths, user info, spaces, empty parts) is refused
/// rather than guessed at: these values decide what a browser's page may reach.
pub fn parse_authority(s: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or_else(|| "unclosed [".to_owned())?;
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(format!("[{addr}] is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| format!("junk after ]: {p:?}"))?),
        };
        (format!("[{}]", addr.to_ascii_lowercase()), port)
    } else {
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        let name_ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_';
        if host.is_empty() || !host.bytes().all(name_ok) {
            return Err(format!("{host:?} is not a host name or address"));
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(format!("port {p:?} is not a number from 1 to 65535")),
        },
    };
    Ok((host, port))
}

/// Which `Host` and `Origin` values a server answers to. A browser page on another site may
/// send requests to a server on 127.0.0.1 (a form POST, or by DNS rebinding, with its own
/// name in `Host`); refusing every `Host` and `Origin` that is not the server's own stops both.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    origins: Vec<Origin>,
}

impl OriginPolicy {
    /// A plain-http server bound to `addr`: `http://` with `localhost`, `127.0.0.1`, `[::1]`
    /// and `addr`'s own address, at `addr`'s port, plus every `extra` origin.
    pub fn local(addr: SocketAddr, extra: &[String]) -> Result<OriginPolicy, String> {
        let port = addr.port();
        let own = match addr {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        let mut origins: Vec<Origin> =
            ["localhost".to_owned(), "127.0.0.1".into(), "[::1]".into(), own]
                .into_iter()
                .map(|host| Origin { scheme: "http".into(), host, port })
                .collect();
        for e in extra {
            origins.push(Origin::parse(e).map_err(|why| format!("{e:?}: {why}"))?);
        }
        origins.dedup();
        Ok(OriginPolicy { origins })
    }

    /// Whether a `Host` header names this server. Without a port it means the scheme's
    /// default port (a proxy on 443 forwards `Host: name`).
    pub fn host_allowed(&self, host: &str) -> bool {
        let Ok((name, port)) = parse_authority(host.trim()) else { return false };
        self.origins
            .iter()
            .any(|o| o.host == name && port.map_or_else(|| o.default_port(), |p| p == o.port))
    }

    /// Whether an `Origin` header is one of this server's origins.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        Origin::parse(origin.trim()).is_ok_and(|o| self.origins.contains(&o))
    }

    /// The allowed origins, for error messages.
    pub fn describe(&self) -> String {
        let list: Vec<String> =
            self.origins.iter().map(|o| format!("{}://{}:{}", o.scheme, o.host, o.port)).collect();
        list.join(", ")
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

    #[test]
    fn response_wire_format() {
        let r = Response::json_raw(200, "{}").with_header("x-a", "1").with_header("x-b", "bad\r\n");
        let wire = String::from_utf8(r.serialize(true, false)).unwrap_or_default();
        assert_eq!(
            wire,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\
             connection: keep-alive\r\nx-a: 1\r\n\r\n{}"
        );
        let head = String::from_utf8(r.serialize(false, true)).unwrap_or_default();
        assert!(head.ends_with("connection: close\r\nx-a: 1\r\n\r\n"));
    }

    #[test]
    fn origin_policy_accepts_own_names_and_refuses_others() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap_or_else(|e| panic!("{e}"));
        let extra = vec!["https://Dash.Example.com".to_owned()];
        let p = OriginPolicy::local(addr, &extra).unwrap_or_else(|e| panic!("{e}"));
        for h in ["127.0.0.1:8080", "localhost:8080", "LOCALHOST:8080", "[::1]:8080"] {
            assert!(p.host_allowed(h), "{h}");
        }
        assert!(p.host_allowed("dash.example.com"), "no port: the scheme's default");
        assert!(p.host_allowed("dash.example.com:443"));
        for h in [
            "attacker.example",
            "attacker.example:8080",
            "localhost",
            "localhost:8081",
            "127.0.0.1:8080/x",
            "user@localhost:8080",
            "",
            "localhost:",
            "[::1",
            "dash.example.com:80",
        ] {
            assert!(!p.host_allowed(h), "{h}");
        }
        for o in ["http://127.0.0.1:8080", "http://localhost:8080", "https://dash.example.com"] {
            assert!(p.origin_allowed(o), "{o}");
        }
        for o in [
            "null",
            "http://evil.example",
            "https://127.0.0.1:8080",
            "http://localhost:8080/",
            "http://dash.example.com",
            "ws://localhost:8080",
        ] {
            assert!(!p.origin_allowed(o), "{o}");
        }
        assert!(Origin::parse("https://x.example/path").is_err());
        assert!(Origin::parse("*").is_err());
        assert_eq!(
            Origin::parse("HTTP://[::1]:9").map(|o| (o.host, o.port)),
            Ok(("[::1]".to_owned(), 9))
        );
    }
}
