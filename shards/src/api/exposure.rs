//! Who may ask: `Host`/`Origin` must be the API's own (cross-site requests and DNS rebinding
//! are refused), and admin needs the bearer token, or a loopback peer when none is set.

use super::Api;
use crate::net::{Request, Response};

impl Api {
    /// Refuses what a browser sends on another site's behalf: a `Host` that is not the
    /// API's (DNS rebinding: the attacker's name resolving to 127.0.0.1) or an `Origin` that
    /// is not (a form, fetch or WebSocket from another page). Clients that are not browsers
    /// send our `Host` and no `Origin`.
    pub(super) fn refusal(&self, req: &Request) -> Option<Response> {
        let mut hosts = req.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("host"));
        let (Some((_, host)), None) = (hosts.next(), hosts.next()) else {
            return Some(Response::error(400, "exactly one Host header is required"));
        };
        // Orchestrators probe liveness and readiness by the pod's address (`Host: 10.x.y.z`),
        // which no allow-list can know in advance; both are read-only and reveal nothing a
        // page could abuse, so only their `Origin` is checked.
        let probe = matches!(req.path.as_str(), "/health" | "/ready");
        if !probe && !self.origins.host_allowed(host) {
            tracing::debug!(host = %host, peer = ?req.peer, "refused: Host is not ours");
            return Some(Response::error(
                403,
                "Host is not this API's name; to reach it under another name, add that \
                 origin to api.allowed_origins",
            ));
        }
        let origin = req.header("origin")?;
        if self.origins.origin_allowed(origin) {
            return None;
        }
        tracing::debug!(origin = %origin, peer = ?req.peer, "refused: cross-origin request");
        Some(Response::error(
            403,
            "cross-origin request refused; pages of another origin need it in \
             api.allowed_origins",
        ))
    }

    /// Admin needs the token when one is configured, from any peer: behind a reverse proxy
    /// on the same host every request comes from loopback. Without a token the listener is
    /// loopback only (validated) and so is admin.
    pub(super) fn admin_check(&self, req: &Request) -> Result<(), Response> {
        match &self.cfg.exposure.admin_token {
            Some(token) => {
                let given = req.header("authorization").and_then(bearer_token);
                if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.expose().as_bytes()))
                {
                    return Ok(());
                }
                Err(Response::error(401, "admin needs Authorization: Bearer <api.admin_token>")
                    .with_header("www-authenticate", "Bearer realm=\"polybook admin\""))
            }
            None if req.peer.is_some_and(|p| p.ip().is_loopback()) => Ok(()),
            None => Err(Response::error(
                403,
                "admin endpoints are loopback only (set api.admin_token to allow others)",
            )),
        }
    }
}

/// Whether the request says its body is JSON (`application/json`, parameters allowed).
pub fn is_json(req: &Request) -> bool {
    req.header("content-type").is_some_and(|v| {
        v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    })
}

/// The credentials of `Authorization: Bearer TOKEN` (the scheme is case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares without stopping at the first difference, so the time taken does not tell a
/// guesser how much of a token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (a.get(i).copied().unwrap_or(0), b.get(i).copied().unwrap_or(0));
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_and_compared_whole() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("  bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
