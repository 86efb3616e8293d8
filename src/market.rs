//! What a shard is told to carry: one market, its outcome tokens and the parameters the
//! venue's hash needs. Made by the registry from Gamma, consumed by a shard's connections.

use crate::book::TokenMeta;
use crate::ids::{MarketId, TokenId};

/// A market a data shard should carry: both tokens and the parameters the hash needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarketSpec {
    pub market: MarketId,
    pub tokens: Vec<TokenId>,
    pub meta: TokenMeta,
}
