//! Live book streams for API clients (`/ws`): the data shard serialises each change of a
//! streamed token once (with a per-token sequence number) and sends it to the control shard's
//! hub, which fans it out to the clients that asked for it. Each client has a bounded queue;
//! a client that falls behind is disconnected, never the feed.
//!
//! `tap` is the data shard's side, `hub` the control shard's, `client` one `/ws` connection.

use std::sync::Arc;

use polybook::TokenId;

mod client;
mod hub;
mod tap;

pub use client::{
    close, serve_client, ClientLimits, ClientRequest, StreamControl, CLIENT_TOKENS_MAX,
    UNKNOWN_ECHO_MAX,
};
pub use hub::Hub;
pub use tap::StreamTap;

/// One serialised stream message for `token`; `to`: a single client (its snapshot), or every
/// subscriber.
#[derive(Debug, Clone)]
pub struct StreamMsg {
    pub token: TokenId,
    pub to: Option<u64>,
    pub text: Arc<str>,
}
