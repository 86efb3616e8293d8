//! HTTP/1.1 message types shared by the server and the client: the parsed [`Request`], the
//! [`Response`] a handler builds, and the byte-level pieces (query decoding, chunked bodies,
//! status lines) both sides need.
//!
//! `framing` decodes queries and bodies; `origin` decides which `Host` and `Origin` values a
//! server answers to.

use std::borrow::Cow;
use std::net::SocketAddr;

use serde::de::DeserializeOwned;
use serde::Serialize;

mod framing;
mod origin;

pub(crate) use framing::{body_kind, decode_chunked, BodyKind, ChunkError, FramingError};
pub use framing::{parse_query, percent_decode};
pub use origin::{parse_authority, Origin, OriginPolicy};

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

/// The standard reason phrase (clients ignore it, but humans read it in logs); empty for a
/// code without one.
pub fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status).ok().and_then(|c| c.canonical_reason()).unwrap_or("")
}

pub(crate) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Whether a comma-separated header value lists `token` (ASCII case-insensitive).
pub(crate) fn has_token(value: &str, token: &str) -> bool {
    value.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
