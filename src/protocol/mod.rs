//! Wire model of the venue: the market WebSocket channel (decode) and client frames (encode).
//!
//! Decoding is four modules with no cycle: `event` (the typed events and errors), `fast` and
//! `serde_path` (two decoders of one object, each knowing only `event`), and `market` (the frame
//! decoder, the one place that chooses between them).

pub mod encode;
pub mod event;
mod fast;
pub mod gamma;
pub mod market;
mod serde_path;
mod wire;

pub use event::{
    BestBidAskEvent, BookEvent, DecodeError, DecodeErrorKind, FrameKind, LastTradePriceEvent,
    MarketEvent, MarketResolvedEvent, NewMarketEvent, PriceChangeEntry, PriceChangeEvent,
    PriceChangeSchema, TickSizeChangeEvent,
};
pub use market::{decode_event, decode_frame};
pub use wire::{Millis, Text};
