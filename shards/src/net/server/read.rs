//! Reading one request: the head, then a body by its framing, each within the limits.

use std::io;
use std::net::SocketAddr;

use super::{read_more, write_all, Incoming, ServerConfig};
use crate::net::http::{
    body_kind, decode_chunked, parse_query, BodyKind, ChunkError, FramingError, Request, Response,
};
use crate::net::stream::ServerStream;

const MAX_HEADERS: usize = 64;

enum Head {
    Partial,
    Complete(Request, usize),
    Reject(Response),
}

fn parse_head(buf: &[u8], max_head: usize, peer: Option<SocketAddr>) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let too_large = || Head::Reject(Response::error(431, "request head too large"));
    let n = match parsed.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= max_head => return too_large(),
        Ok(httparse::Status::Partial) => return Head::Partial,
        Ok(httparse::Status::Complete(n)) if n > max_head => return too_large(),
        Ok(httparse::Status::Complete(n)) => n,
        Err(httparse::Error::TooManyHeaders) => return too_large(),
        Err(_) => return Head::Reject(Response::error(400, "malformed request")),
    };
    let target = parsed.path.unwrap_or("/");
    // Absolute-form targets (`GET http://host/p`) are legal; route on their path.
    let target = match target.split_once("://") {
        Some((_, rest)) if !target.starts_with('/') => {
            rest.find('/').map_or("/", |i| rest.get(i..).unwrap_or("/"))
        }
        _ => target,
    };
    let (path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let req = Request {
        method: parsed.method.unwrap_or_default().to_owned(),
        path: path.to_owned(),
        raw_query: raw_query.to_owned(),
        query: parse_query(raw_query),
        headers: parsed
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
            .collect(),
        body: Vec::new(),
        version_minor: parsed.version.unwrap_or(1),
        peer,
    };
    Head::Complete(req, n)
}

pub(super) async fn read_request(
    stream: &mut ServerStream,
    buf: &mut Vec<u8>,
    cfg: &ServerConfig,
    peer: Option<SocketAddr>,
) -> io::Result<Incoming> {
    let (mut req, head_len) = loop {
        if !buf.is_empty() {
            match parse_head(buf, cfg.max_head, peer) {
                Head::Partial => {}
                Head::Complete(req, n) => break (req, n),
                Head::Reject(resp) => return Ok(Incoming::Reject(resp)),
            }
        }
        if read_more(stream, buf, 4096).await? == 0 {
            return Ok(Incoming::Closed);
        }
    };
    let kind = match body_kind(&req.headers) {
        Ok(kind) => kind,
        Err(e @ FramingError::Unsupported) => {
            return Ok(Incoming::Reject(Response::error(501, e.message())))
        }
        Err(e) => return Ok(Incoming::Reject(Response::error(400, e.message()))),
    };
    let too_large = || Incoming::Reject(Response::error(413, "request body too large"));
    let mut continue_sent = false;
    let expects_continue =
        req.header("expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue"));
    match kind {
        None => Ok(Incoming::Request(req, head_len)),
        Some(BodyKind::Length(n)) => {
            let Some(n) = usize::try_from(n).ok().filter(|&n| n <= cfg.max_body) else {
                return Ok(too_large());
            };
            let total = head_len + n;
            while buf.len() < total {
                if expects_continue && !continue_sent {
                    continue_sent = true;
                    write_all(stream, b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                }
                let want = (total - buf.len()).clamp(4096, 256 << 10);
                if read_more(stream, buf, want).await? == 0 {
                    return Ok(Incoming::Closed);
                }
            }
            req.body = buf.get(head_len..total).unwrap_or_default().to_vec();
            Ok(Incoming::Request(req, total))
        }
        Some(BodyKind::Chunked) => loop {
            match decode_chunked(buf.get(head_len..).unwrap_or_default(), cfg.max_body) {
                Ok(Some((body, used))) => {
                    req.body = body;
                    return Ok(Incoming::Request(req, head_len + used));
                }
                Ok(None) => {}
                Err(ChunkError::TooLarge) => return Ok(too_large()),
                Err(ChunkError::Malformed) => {
                    return Ok(Incoming::Reject(Response::error(400, "malformed chunked body")))
                }
            }
            // Chunk framing overhead is bounded too, not only the decoded size.
            if buf.len() - head_len > cfg.max_body.saturating_mul(2).saturating_add(64 << 10) {
                return Ok(too_large());
            }
            if expects_continue && !continue_sent {
                continue_sent = true;
                write_all(stream, b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            }
            if read_more(stream, buf, 16 << 10).await? == 0 {
                return Ok(Incoming::Closed);
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parsing() {
        let wire = b"GET http://h/book?token_id=1%202&x HTTP/1.1\r\nHost: h\r\n\r\nrest";
        let Head::Complete(req, n) = parse_head(wire, 1024, None) else {
            panic!("head not parsed")
        };
        assert_eq!(n, wire.len() - 4);
        assert_eq!(req.path, "/book");
        assert_eq!(req.query_param("token_id"), Some("1 2"));
        assert_eq!(req.query_param("x"), Some(""));
        assert_eq!(req.header("HOST"), Some("h"));
        assert!(matches!(parse_head(b"GET / HTTP/1.1\r\n", 1024, None), Head::Partial));
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nA: b\r\n", 10, None),
            Head::Reject(Response { status: 431, .. })
        ));
        assert!(matches!(
            parse_head(b"GE\0T / HTTP/1.1\r\n\r\n", 1024, None),
            Head::Reject(Response { status: 400, .. })
        ));
    }
}
