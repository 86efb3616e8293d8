//! Origins and `Host` checks, against cross-site requests and DNS rebinding.

use std::net::SocketAddr;

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
