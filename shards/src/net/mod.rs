//! Networking on glommio, shared by the simulated exchange, the engine's client API and the
//! engine's venue connections: an HTTP/1.1 + WebSocket [`Server`], WebSocket and HTTP clients
//! (plain or TLS), TLS material (extra roots, a self-signed server identity), and the
//! [`Shutdown`] signal that stops servers.
//!
//! Everything here runs on one executor and never blocks it: handlers are synchronous `Rc`
//! state or return a local future, and DNS goes to the blocking pool.

mod client;
mod error;
mod http;
mod server;
mod signal;
mod stream;
mod tls;

pub use async_tungstenite::tungstenite::protocol::WebSocketConfig;
pub use async_tungstenite::tungstenite::Message;
pub use client::{
    connect_stream, connect_ws, connect_ws_with, default_tls_config, resolve,
    tls_config_with_roots, ClientWs, ConnectOptions, Target, USER_AGENT,
};
pub use error::NetError;
pub use http::{
    parse_authority, parse_query, percent_decode, reason, Origin, OriginPolicy, Request, Response,
};
pub use server::{websocket_accept_key, ws_task, Handler, Server, ServerConfig, ServerWs, WsTask};
pub use signal::{Shutdown, Wait};
pub use stream::{ClientStream, MaybeTls, ServerStream};
pub use tls::{parse_pem_roots, ring_provider, tls_config_with_extra_roots, TlsIdentity};
