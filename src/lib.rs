//! polybook's deterministic core: exact fixed-point Polymarket L2 books.
//!
//! No I/O and no clock reads happen here: time and input arrive as arguments, so everything is
//! reproducible and testable. The runtime lives in the `polybook-shards` crate.
//!
//! # Layout
//! - [`decimal`]: `Price`/`Size`, exact parse and canonical format.
//! - [`ids`]: `TokenId`, `MarketId`; typed `ShardId`, `ConnId`, `SocketId`, `ClientId`.
//! - [`market`]: `MarketSpec`, what a shard is told to carry.
//! - [`protocol`]: market-channel frames decoded zero-copy; subscribe frames encoded.
//! - [`book`]: one token's book, its status, and the venue's SHA-1 book hash.
//! - [`store`]: one shard's books: applies events, reports changes, counts everything.
//! - [`checks`]: burst-aware hash and best bid/ask verdicts (claims judged over a window).
//! - [`policy`]: backoff, watchdog verdicts, market-to-connection placement.
//! - [`registry`]: the market registry: selection, lifecycle, expiry, listing sanity, with
//!   time as an argument and changes per shard as data.
//! - [`routing`]: `shard_for(market)`, the one hash that places markets on shards.
//! - [`view`]: the BOOK JSON shape shared by `replay --dump`, the HTTP API and the simulator.
//! - [`sim`]: the simulated venue: seeded market model, frames byte for byte, Gamma.
//! - [`capture`]: the capture line format (`[recv_ns ]frame`).

// Money is fixed point: no float arithmetic anywhere in the core (book state, decimals, hash).
#![deny(clippy::float_arithmetic)]

pub mod book;
pub mod capture;
pub mod checks;
pub mod conn;
pub mod decimal;
pub mod ids;
pub mod market;
pub mod policy;
pub mod protocol;
pub mod registry;
pub mod routing;
pub mod sim;
pub mod store;
pub mod view;

pub use book::{Book, BookStatus, Level, Side};
pub use decimal::{DecimalError, Price, Size};
pub use ids::{ClientId, ConnId, MarketId, ShardId, SocketId, TokenId};
pub use market::MarketSpec;
pub use protocol::MarketEvent;
pub use store::{BookStore, BookUpdate, StoreConfig, StoreCounters};
