//! The market channel's typed events and decode errors: what both decoders produce.
//!
//! The serde path (`serde_path`) and the hand-written fast path (`fast`) both build these and
//! know nothing of each other; `market` picks between them. The `Deserialize` of the book's
//! `Side` and `Level` lives here because it is wire vocabulary (`"BUY"`, `{"price","size"}`).

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;

use super::wire::{wire_struct, Millis, Text, BAD_NUMBER};
use crate::book::{Level, Side};
use crate::decimal::{Price, Size};

impl<'de> Deserialize<'de> for Side {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Side;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"BUY\" or \"SELL\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Side, E> {
                match v {
                    "BUY" | "buy" => Ok(Side::Buy),
                    "SELL" | "sell" => Ok(Side::Sell),
                    _ => Err(E::custom(format_args!("{BAD_NUMBER}: side {v:?}"))),
                }
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Level {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Level;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a {\"price\",\"size\"} level")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Level, A::Error> {
                let (mut price, mut size) = (None, None);
                while let Some(key) = map.next_key::<super::wire::Key<'de>>()? {
                    match &*key.0 {
                        "price" => price = Some(map.next_value::<Price>()?),
                        "size" => size = Some(map.next_value::<Size>()?),
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(Level {
                    price: price.ok_or_else(|| de::Error::missing_field("price"))?,
                    size: size.ok_or_else(|| de::Error::missing_field("size"))?,
                })
            }
        }
        d.deserialize_map(V)
    }
}

wire_struct! {
    /// `book`: a full L2 snapshot of one token (also the shape of REST `GET /book`, which adds
    /// `min_order_size`, `neg_risk` and always `tick_size`/`last_trade_price`).
    pub struct BookEvent<'a> {
        req "market" => market: Text<'a>,
        req "asset_id" => asset_id: Text<'a>,
        req "timestamp" => timestamp: Millis,
        opt "hash" => hash: Text<'a>,
        req "bids" => bids: Vec<Level>,
        req "asks" => asks: Vec<Level>,
        opt "tick_size" => tick_size: Price,
        opt "min_order_size" => min_order_size: Size,
        opt "neg_risk" => neg_risk: bool,
        /// Kept as text: the venue hash uses the string exactly as sent ("0.500").
        opt "last_trade_price" => last_trade_price: Text<'a>,
        opt "event_type" => event_type: Text<'a>,
    }
}

wire_struct! {
    /// One entry of a current-schema `price_change`: the new aggregate size at a level.
    pub struct PriceChangeEntry<'a> {
        req "asset_id" => asset_id: Text<'a>,
        req "price" => price: Price,
        req "size" => size: Size,
        req "side" => side: Side,
        opt "hash" => hash: Text<'a>,
        opt "best_bid" => best_bid: Price,
        opt "best_ask" => best_ask: Price,
    }
}

/// Which `price_change` schema a frame used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceChangeSchema {
    /// Since 2025-09-15: `price_changes[]` with per-entry hash and best bid/ask.
    Current,
    /// 2024-10 .. 2025-09-15: one asset, `changes[]`.
    LegacyChanges,
    /// Before 2024-10: one change at the top level.
    LegacySingle,
}

/// `price_change`, normalised to current-schema entries.
///
/// Legacy schemas are accepted so old captures replay, but their `hash` is dropped: 2024-era
/// hashes follow a different recipe and would only produce false mismatches.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceChangeEvent<'a> {
    pub market: Text<'a>,
    pub changes: Vec<PriceChangeEntry<'a>>,
    pub timestamp: Millis,
    pub schema: PriceChangeSchema,
    pub unknown_fields: u16,
    /// `event_type` as sent (confirms the fast scan).
    pub event_type: Option<Text<'a>>,
}

wire_struct! {
    /// `tick_size_change`: the token's minimum tick moved (near 0.04 / 0.96).
    pub struct TickSizeChangeEvent<'a> {
        req "market" => market: Text<'a>,
        req "asset_id" => asset_id: Text<'a>,
        req "old_tick_size" => old_tick_size: Price,
        req "new_tick_size" => new_tick_size: Price,
        req "timestamp" => timestamp: Millis,
        opt "event_type" => event_type: Text<'a>,
    }
}

wire_struct! {
    /// `last_trade_price`: a maker and a taker matched; `side` is the taker's.
    pub struct LastTradePriceEvent<'a> {
        req "market" => market: Text<'a>,
        req "asset_id" => asset_id: Text<'a>,
        req "price" => price: Price,
        req "size" => size: Size,
        opt "fee_rate_bps" => fee_rate_bps: Text<'a>,
        req "side" => side: Side,
        req "timestamp" => timestamp: Millis,
        opt "event_type" => event_type: Text<'a>,
        opt "transaction_hash" => transaction_hash: Text<'a>,
    }
}

wire_struct! {
    /// `best_bid_ask` (custom features): the token's top of book; `"0"`/`"1"` mean an empty side.
    pub struct BestBidAskEvent<'a> {
        req "market" => market: Text<'a>,
        req "asset_id" => asset_id: Text<'a>,
        req "best_bid" => best_bid: Price,
        req "best_ask" => best_ask: Price,
        opt "spread" => spread: Price,
        req "timestamp" => timestamp: Millis,
        opt "event_type" => event_type: Text<'a>,
    }
}

wire_struct! {
    /// `new_market` (custom features): a market was created; a discovery hint.
    pub struct NewMarketEvent<'a> {
        opt "id" => id: Text<'a>,
        opt "question" => question: Text<'a>,
        req "market" => market: Text<'a>,
        opt "slug" => slug: Text<'a>,
        req "assets_ids" => assets_ids: Vec<Text<'a>>,
        opt "outcomes" => outcomes: Vec<Text<'a>>,
        req "timestamp" => timestamp: Millis,
        opt "order_price_min_tick_size" => tick_size: Price,
        opt "active" => active: bool,
        opt "event_type" => event_type: Text<'a>,
    }
}

wire_struct! {
    /// `market_resolved` (custom features): the market settled; nothing follows for it.
    pub struct MarketResolvedEvent<'a> {
        opt "id" => id: Text<'a>,
        req "market" => market: Text<'a>,
        req "assets_ids" => assets_ids: Vec<Text<'a>>,
        opt "winning_asset_id" => winning_asset_id: Text<'a>,
        opt "winning_outcome" => winning_outcome: Text<'a>,
        req "timestamp" => timestamp: Millis,
        opt "event_type" => event_type: Text<'a>,
    }
}

/// One decoded server event.
#[derive(Debug, Clone, PartialEq)]
pub enum MarketEvent<'a> {
    Book(BookEvent<'a>),
    PriceChange(PriceChangeEvent<'a>),
    TickSizeChange(TickSizeChangeEvent<'a>),
    LastTradePrice(LastTradePriceEvent<'a>),
    BestBidAsk(BestBidAskEvent<'a>),
    NewMarket(NewMarketEvent<'a>),
    MarketResolved(MarketResolvedEvent<'a>),
    /// An `event_type` this version does not know: tolerated, counted, skipped.
    Unknown {
        event_type: Text<'a>,
    },
}

impl MarketEvent<'_> {
    /// The wire name of the event type.
    pub fn kind(&self) -> &str {
        match self {
            MarketEvent::Book(_) => "book",
            MarketEvent::PriceChange(_) => "price_change",
            MarketEvent::TickSizeChange(_) => "tick_size_change",
            MarketEvent::LastTradePrice(_) => "last_trade_price",
            MarketEvent::BestBidAsk(_) => "best_bid_ask",
            MarketEvent::NewMarket(_) => "new_market",
            MarketEvent::MarketResolved(_) => "market_resolved",
            MarketEvent::Unknown { event_type } => event_type,
        }
    }

    /// Unknown keys seen in this event (tolerated, counted by the store).
    pub fn unknown_fields(&self) -> u16 {
        match self {
            MarketEvent::Book(e) => e.unknown_fields,
            MarketEvent::PriceChange(e) => e.unknown_fields,
            MarketEvent::TickSizeChange(e) => e.unknown_fields,
            MarketEvent::LastTradePrice(e) => e.unknown_fields,
            MarketEvent::BestBidAsk(e) => e.unknown_fields,
            MarketEvent::NewMarket(e) => e.unknown_fields,
            MarketEvent::MarketResolved(e) => e.unknown_fields,
            MarketEvent::Unknown { .. } => 0,
        }
    }
}

/// What a frame was, when it could be split into events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// The text keepalive reply.
    Pong,
    /// A single event object.
    Object,
    /// An array of `n` elements (`[]` gives 0).
    Array(usize),
}

/// Why a frame or an event could not be decoded. Every kind is counted by the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecodeErrorKind {
    /// Empty or whitespace-only frame.
    Empty,
    /// Text that is neither JSON nor a known keyword.
    NotJson,
    /// JSON syntax error or truncated JSON.
    Malformed,
    /// An element that is not an object, or a field of the wrong JSON type.
    WrongType,
    /// A required field is absent or null.
    MissingField,
    /// A decimal, timestamp or side that does not parse.
    BadNumber,
    /// No `event_type` in the object.
    MissingEventType,
    /// `price_change` with none of the three known shapes.
    UnknownSchema,
}

impl DecodeErrorKind {
    pub const ALL: [DecodeErrorKind; 8] = [
        DecodeErrorKind::Empty,
        DecodeErrorKind::NotJson,
        DecodeErrorKind::Malformed,
        DecodeErrorKind::WrongType,
        DecodeErrorKind::MissingField,
        DecodeErrorKind::BadNumber,
        DecodeErrorKind::MissingEventType,
        DecodeErrorKind::UnknownSchema,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DecodeErrorKind::Empty => "empty",
            DecodeErrorKind::NotJson => "not_json",
            DecodeErrorKind::Malformed => "malformed",
            DecodeErrorKind::WrongType => "wrong_type",
            DecodeErrorKind::MissingField => "missing_field",
            DecodeErrorKind::BadNumber => "bad_number",
            DecodeErrorKind::MissingEventType => "missing_event_type",
            DecodeErrorKind::UnknownSchema => "unknown_schema",
        }
    }
}

/// A typed decode error with a short human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {detail}")]
pub struct DecodeError {
    pub kind: DecodeErrorKind,
    pub detail: String,
}

impl DecodeError {
    pub(crate) fn new(kind: DecodeErrorKind, detail: impl Into<String>) -> Self {
        DecodeError { kind, detail: detail.into() }
    }

    pub(crate) fn from_json(e: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        let msg = e.to_string();
        let kind = match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => DecodeErrorKind::Malformed,
            Category::Data if msg.starts_with("missing field") => DecodeErrorKind::MissingField,
            Category::Data if msg.starts_with(BAD_NUMBER) => DecodeErrorKind::BadNumber,
            Category::Data => DecodeErrorKind::WrongType,
        };
        DecodeError { kind, detail: msg }
    }
}
