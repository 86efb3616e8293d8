//! Wire model of the venue: the market WebSocket channel (decode) and client frames (encode).

pub mod encode;
mod fast;
pub mod gamma;
pub mod market;
mod wire;

pub use market::{
    decode_event, decode_frame, BestBidAskEvent, BookEvent, DecodeError, DecodeErrorKind,
    FrameKind, LastTradePriceEvent, Level, MarketEvent, MarketResolvedEvent, NewMarketEvent,
    PriceChangeEntry, PriceChangeEvent, PriceChangeSchema, Side, TickSizeChangeEvent,
};
pub use wire::{Millis, Text};
