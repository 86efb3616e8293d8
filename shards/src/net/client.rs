//! Outbound connections on glommio: WebSocket clients for the venue's market channel (ws:// to
//! the simulator, wss:// to the real venue through rustls with ring). The engine's only HTTP
//! client is discovery's (ureq, on a blocking thread); tests use ureq too.
//!
//! DNS names are resolved on glommio's blocking pool because the std resolver blocks, and
//! glommio's own connect would resolve on the executor. Every phase has a timeout.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::{header, HeaderValue};
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::WebSocketStream;
use futures_rustls::pki_types::ServerName;
use futures_rustls::rustls::{ClientConfig, RootCertStore};
use futures_rustls::TlsConnector;
use glommio::net::TcpStream;

use super::error::NetError;
use super::server::with_timeout;
use super::stream::{ClientStream, MaybeTls};

/// What every request of ours says it is: the venue sits behind Cloudflare, which treats
/// requests without a User-Agent as suspect.
pub const USER_AGENT: &str = concat!("polybook/", env!("CARGO_PKG_VERSION"));

/// The client side of a WebSocket.
pub type ClientWs = WebSocketStream<ClientStream>;

/// Timeouts, limits and TLS trust of outbound connections.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Per address tried.
    pub connect_timeout: Duration,
    /// TLS plus WebSocket handshake.
    pub io_timeout: Duration,
    /// Trust for wss:// and https://; `None` uses the bundled webpki roots.
    pub tls: Option<Arc<ClientConfig>>,
    /// Limits of the WebSocket; `None` for tungstenite's defaults.
    pub ws_config: Option<WebSocketConfig>,
    /// `User-Agent` of WebSocket handshakes; `None` sends none.
    pub user_agent: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            tls: None,
            ws_config: None,
            user_agent: Some(USER_AGENT.to_owned()),
        }
    }
}

/// A parsed `scheme://host[:port]/path?query`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    /// Without brackets for IPv6 literals.
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Target {
    /// Parses a ws, wss, http or https URL. User info and fragments are refused.
    pub fn parse(url: &str) -> Result<Self, NetError> {
        let bad = |reason| NetError::BadUrl { url: url.to_owned(), reason };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let (tls, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "ws" | "http" => (false, 80),
            "wss" | "https" => (true, 443),
            _ => return Err(bad("scheme is not ws, wss, http or https")),
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.contains('@') {
            return Err(bad("user info is not supported"));
        }
        if path.contains('#') {
            return Err(bad("fragments are not allowed"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            match after {
                "" => (host, None),
                p => (host, Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?)),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let port = match port {
            Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| bad("bad port"))?,
            None => default_port,
        };
        let path = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        Ok(Self { tls, host: host.to_owned(), port, path })
    }
}

/// The process-wide default TLS client config: webpki roots, ring, TLS 1.2 and 1.3.
///
/// The provider is named explicitly: if another crate enables aws-lc-rs as well, rustls's
/// implicit choice panics at run time.
pub fn default_tls_config() -> Result<Arc<ClientConfig>, NetError> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if let Some(c) = CONFIG.get() {
        return Ok(Arc::clone(c));
    }
    let roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = tls_config_with_roots(roots)?;
    Ok(Arc::clone(CONFIG.get_or_init(|| config)))
}

/// A TLS client config trusting exactly `roots` (tests use it with a self-signed certificate).
pub fn tls_config_with_roots(roots: RootCertStore) -> Result<Arc<ClientConfig>, NetError> {
    let config = ClientConfig::builder_with_provider(super::tls::ring_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Resolves `host:port`. IP literals are used as they are; names go to the blocking pool.
pub async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, NetError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let owned = host.to_owned();
    let res = glommio::executor()
        .spawn_blocking(move || (owned.as_str(), port).to_socket_addrs().map(Vec::from_iter))
        .await;
    match res {
        Ok(addrs) if !addrs.is_empty() => Ok(addrs),
        Ok(_) => Err(NetError::Resolve {
            host: host.to_owned(),
            source: io::Error::new(io::ErrorKind::NotFound, "no address"),
        }),
        Err(source) => Err(NetError::Resolve { host: host.to_owned(), source }),
    }
}

/// Opens TCP (with TCP_NODELAY) to the target, trying each resolved address in turn, then TLS
/// when the scheme asks for it.
pub async fn connect_stream(
    target: &Target,
    opts: &ConnectOptions,
) -> Result<ClientStream, NetError> {
    let addrs = resolve(&target.host, target.port).await?;
    let mut last = None;
    let mut tcp = None;
    for addr in addrs {
        match TcpStream::connect_timeout(addr, opts.connect_timeout.max(Duration::from_millis(1)))
            .await
        {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = Some(NetError::Connect { addr, source: io::Error::from(e) }),
        }
    }
    let tcp = match (tcp, last) {
        (Some(tcp), _) => tcp,
        (None, Some(e)) => return Err(e),
        (None, None) => return Err(NetError::Timeout("connect")),
    };
    // Without it a TLS handshake waits on Nagle's timer (~43 ms measured) and so do frames.
    tcp.set_nodelay(true)?;
    if !target.tls {
        return Ok(MaybeTls::Plain(tcp));
    }
    let config = match &opts.tls {
        Some(c) => Arc::clone(c),
        None => default_tls_config()?,
    };
    let name =
        ServerName::try_from(target.host.clone()).map_err(|e| NetError::Tls(e.to_string()))?;
    let tls = with_timeout(opts.io_timeout, TlsConnector::from(config).connect(name, tcp))
        .await
        .ok_or(NetError::Timeout("tls handshake"))??;
    Ok(MaybeTls::Tls(Box::new(tls)))
}

/// Connects a WebSocket to a `ws://` or `wss://` URL with default options.
pub async fn connect_ws(url: &str) -> Result<ClientWs, NetError> {
    connect_ws_with(url, &ConnectOptions::default()).await
}

/// Connects a WebSocket with explicit options.
///
/// For throughput, send with `SinkExt::feed` and `flush` every few dozen frames: `send` flushes
/// (one syscall) per frame.
pub async fn connect_ws_with(url: &str, opts: &ConnectOptions) -> Result<ClientWs, NetError> {
    let target = Target::parse(url)?;
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("ws" | "wss")) {
        return Err(NetError::BadUrl { url: url.to_owned(), reason: "scheme is not ws or wss" });
    }
    let mut request = url.into_client_request()?;
    if let Some(ua) = &opts.user_agent {
        let value = HeaderValue::from_str(ua)
            .map_err(|_| NetError::BadUrl { url: url.to_owned(), reason: "bad user agent" })?;
        request.headers_mut().insert(header::USER_AGENT, value);
    }
    let stream = connect_stream(&target, opts).await?;
    let handshake = async_tungstenite::client_async_with_config(request, stream, opts.ws_config);
    let (ws, _response) = with_timeout(opts.io_timeout, handshake)
        .await
        .ok_or(NetError::Timeout("ws handshake"))??;
    Ok(ws)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(tls: bool, host: &str, port: u16, path: &str) -> Target {
        Target { tls, host: host.into(), port, path: path.into() }
    }

    #[test]
    fn url_parsing() {
        let p = |u: &str| Target::parse(u).unwrap_or_else(|e| panic!("{u}: {e}"));
        assert_eq!(p("ws://127.0.0.1:8080/ws/market"), t(false, "127.0.0.1", 8080, "/ws/market"));
        assert_eq!(p("wss://example.com/ws"), t(true, "example.com", 443, "/ws"));
        assert_eq!(p("http://h:1?x=1"), t(false, "h", 1, "/?x=1"));
        assert_eq!(p("HTTPS://h"), t(true, "h", 443, "/"));
        assert_eq!(p("ws://[::1]:9/a?b"), t(false, "::1", 9, "/a?b"));
        for bad in ["127.0.0.1:80", "ftp://h/", "ws://:80/", "ws://h:0/", "ws://h:x/", "ws://u@h/"]
        {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
