//! A TCP stream that is plain or TLS, for both ends: [`ClientStream`] for outbound connections
//! and [`ServerStream`] for accepted ones. Each is a plain enum over glommio's `TcpStream`, so a
//! plain connection pays one `match` per poll and nothing else.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// Plain TCP, or TLS over TCP. Both halves are `Unpin`, so the enum forwards the I/O traits
/// without pinning tricks.
pub enum MaybeTls<T> {
    Plain(TcpStream),
    // Boxed: a rustls connection is several KiB and would bloat every plain stream too.
    Tls(Box<T>),
}

/// An outbound connection (ws/wss, http/https).
pub type ClientStream = MaybeTls<futures_rustls::client::TlsStream<TcpStream>>;

/// An accepted connection of a [`super::Server`].
pub type ServerStream = MaybeTls<futures_rustls::server::TlsStream<TcpStream>>;

impl<T> MaybeTls<T> {
    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }
}

impl ClientStream {
    /// The TCP socket under the stream, e.g. to read its addresses.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls(s) => s.get_ref().0,
        }
    }
}

impl ServerStream {
    /// The TCP socket under the stream, e.g. to read its addresses.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls(s) => s.get_ref().0,
        }
    }

    /// Ends our sending side but keeps reading possible (to drain before close). TLS sends
    /// `close_notify` first, so the peer can tell an orderly end from a truncation.
    pub(crate) async fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            MaybeTls::Plain(s) => s.shutdown(std::net::Shutdown::Write).await.map_err(Into::into),
            // futures-rustls's close sends close_notify, flushes, then closes the socket's
            // write side (glommio's close is shutdown(Write)).
            MaybeTls::Tls(s) => futures_lite::AsyncWriteExt::close(s.as_mut()).await,
        }
    }
}

impl<T> std::fmt::Debug for MaybeTls<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            MaybeTls::Plain(_) => "Plain",
            MaybeTls::Tls(_) => "Tls",
        };
        f.debug_struct("MaybeTls").field("kind", &kind).finish()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_close(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}
