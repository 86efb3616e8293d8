//! The one error type of the network layer, so callers can tell a refused connection from a bad
//! URL, a timeout or a protocol failure without parsing messages.

use std::io;
use std::net::SocketAddr;

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The URL is not one this client understands (scheme, host, port or path).
    #[error("bad url {url:?}: {reason}")]
    BadUrl { url: String, reason: &'static str },
    /// A host name did not resolve, or resolved to no address.
    #[error("cannot resolve {host:?}: {source}")]
    Resolve { host: String, source: io::Error },
    /// Every resolved address refused or failed the TCP connect; this is the last failure.
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    /// A phase did not finish within its configured time.
    #[error("timed out during {0}")]
    Timeout(&'static str),
    /// Binding, accepting, reading or writing a socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The TLS configuration or server name was rejected before any byte was sent.
    #[error("tls: {0}")]
    Tls(String),
    /// The WebSocket handshake or protocol failed (boxed: the error is large).
    #[error("websocket: {0}")]
    WebSocket(Box<async_tungstenite::tungstenite::Error>),
    /// The peer's HTTP response could not be understood or broke a configured limit.
    #[error("bad http response: {0}")]
    BadResponse(String),
    /// A JSON body could not be encoded or decoded.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<async_tungstenite::tungstenite::Error> for NetError {
    fn from(e: async_tungstenite::tungstenite::Error) -> Self {
        NetError::WebSocket(Box::new(e))
    }
}

impl From<glommio::GlommioError<()>> for NetError {
    fn from(e: glommio::GlommioError<()>) -> Self {
        NetError::Io(io::Error::from(e))
    }
}
