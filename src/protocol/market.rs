//! The market channel's server events, decoded without copying: strings borrow from the frame.
//!
//! A frame is `PONG`, one JSON object, or an array of objects. Each object is decoded on its
//! own, so a bad element costs only itself. `event_type` is found by a scan from the end of the
//! object (the venue puts it last or next to last) and confirmed by the typed parse; parsing
//! into an internally tagged enum would be ~2x slower.
//!
//! Before any of that, `super::fast` tries the venue's common shapes (current `price_change`,
//! `book`) with a hand-written zero-copy parser; whatever it does not fully understand comes
//! back "not handled" and takes the serde path, so results and errors are the serde path's.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt;

use super::wire::{wire_struct, Millis, Text, BAD_NUMBER};
use crate::decimal::{Price, Size};

/// Order side. In `price_change`, BUY is a bid level and SELL an ask level; in
/// `last_trade_price` it is the taker's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Side {
    #[serde(rename = "BUY")]
    Buy,
    #[serde(rename = "SELL")]
    Sell,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "BUY",
            Side::Sell => "SELL",
        }
    }

    pub fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }
}

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

/// One aggregated price level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Level {
    pub price: Price,
    pub size: Size,
}

impl Level {
    pub const fn new(price: Price, size: Size) -> Self {
        Level { price, size }
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

wire_struct! {
    /// A change of the 2024-10 .. 2025-09 schema (`changes[]` under one asset).
    pub struct LegacyChange<'a> {
        req "price" => price: Price,
        req "size" => size: Size,
        req "side" => side: Side,
    }
}

wire_struct! {
    /// `price_change` as it may arrive in any of the three schemas the venue has used.
    pub struct PriceChangeWire<'a> {
        req "market" => market: Text<'a>,
        opt "price_changes" => price_changes: Vec<PriceChangeEntry<'a>>,
        opt "changes" => changes: Vec<LegacyChange<'a>>,
        opt "asset_id" => asset_id: Text<'a>,
        opt "price" => price: Price,
        opt "size" => size: Size,
        opt "side" => side: Side,
        opt "hash" => hash: Text<'a>,
        req "timestamp" => timestamp: Millis,
        opt "event_type" => event_type: Text<'a>,
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

wire_struct! {
    /// Only the tag; used when the fast scan for `event_type` cannot be trusted.
    pub struct Tag<'a> {
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
    fn new(kind: DecodeErrorKind, detail: impl Into<String>) -> Self {
        DecodeError { kind, detail: detail.into() }
    }

    fn from_json(e: &serde_json::Error) -> Self {
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

/// Decodes one text frame, calling `on_event` for each element in order. Returns what the
/// frame was, or an error if it could not be split into elements at all.
pub fn decode_frame<'a>(
    text: &'a str,
    on_event: impl FnMut(Result<MarketEvent<'a>, DecodeError>),
) -> Result<FrameKind, DecodeError> {
    decode_frame_with(text, true, on_event)
}

/// [`decode_frame`] without the hand-written fast path (`super::fast`): serde only. Kept so the
/// differential tests can check that the fast path changes nothing.
#[doc(hidden)]
pub fn decode_frame_serde<'a>(
    text: &'a str,
    on_event: impl FnMut(Result<MarketEvent<'a>, DecodeError>),
) -> Result<FrameKind, DecodeError> {
    decode_frame_with(text, false, on_event)
}

fn decode_frame_with<'a>(
    text: &'a str,
    fast: bool,
    mut on_event: impl FnMut(Result<MarketEvent<'a>, DecodeError>),
) -> Result<FrameKind, DecodeError> {
    let trimmed = text.trim_ascii();
    match trimmed.as_bytes().first() {
        None => Err(DecodeError::new(DecodeErrorKind::Empty, "empty frame")),
        Some(b'{') => {
            on_event(decode_event_with(trimmed, fast));
            Ok(FrameKind::Object)
        }
        Some(b'[') => {
            // An opening dump of `book`s: all or nothing, nothing is reported before it is
            // known that every element is handled.
            if let Some(events) = fast.then(|| super::fast::decode_array(trimmed)).flatten() {
                let n = events.len();
                events.into_iter().for_each(|e| on_event(Ok(e)));
                return Ok(FrameKind::Array(n));
            }
            let elements: Vec<&'a RawValue> =
                serde_json::from_str(trimmed).map_err(|e| DecodeError::from_json(&e))?;
            for raw in &elements {
                on_event(decode_event_with(raw.get(), fast));
            }
            Ok(FrameKind::Array(elements.len()))
        }
        _ if trimmed == "PONG" => Ok(FrameKind::Pong),
        _ => Err(DecodeError::new(
            DecodeErrorKind::NotJson,
            format!("unexpected text frame {:?}", preview(trimmed)),
        )),
    }
}

fn preview(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Decodes one JSON object (an element of a frame).
pub fn decode_event(obj: &str) -> Result<MarketEvent<'_>, DecodeError> {
    decode_event_with(obj, true)
}

/// [`decode_event`] without the hand-written fast path: serde only (differential tests).
#[doc(hidden)]
pub fn decode_event_serde(obj: &str) -> Result<MarketEvent<'_>, DecodeError> {
    decode_event_with(obj, false)
}

fn decode_event_with(obj: &str, fast: bool) -> Result<MarketEvent<'_>, DecodeError> {
    let obj = obj.trim_ascii();
    if !obj.starts_with('{') {
        return Err(DecodeError::new(
            DecodeErrorKind::WrongType,
            format!("element is not an object: {:?}", preview(obj)),
        ));
    }
    // The common shapes (`price_change`, `book`) by hand; anything it does not fully understand
    // comes back `None` and takes the serde path below, which owns every error.
    if fast {
        if let Some(event) = super::fast::decode_object(obj) {
            return Ok(event);
        }
    }
    if let Some(guess) = scan_event_type(obj) {
        // The scan can be fooled by an `event_type` key in a nested object; a typed parse that
        // fails or disagrees sends us to the slow path, which reads the top-level tag.
        if let Ok(event) = decode_as(obj, guess) {
            if tag_of(&event) == Some(guess) {
                return Ok(event);
            }
        }
    }
    let tag: Tag<'_> = serde_json::from_str(obj).map_err(|e| DecodeError::from_json(&e))?;
    match tag.event_type {
        Some(t) => decode_as(obj, &t).map(MarketEvent::into_owned_tag),
        None => Err(DecodeError::new(DecodeErrorKind::MissingEventType, "no event_type")),
    }
}

impl<'a> MarketEvent<'a> {
    /// `Unknown` may borrow from a temporary tag; make it own its name.
    fn into_owned_tag(self) -> MarketEvent<'a> {
        match self {
            MarketEvent::Unknown { event_type } => MarketEvent::Unknown {
                event_type: Text(std::borrow::Cow::Owned(event_type.0.into_owned())),
            },
            other => other,
        }
    }
}

fn tag_of<'e>(event: &'e MarketEvent<'_>) -> Option<&'e str> {
    let t = match event {
        MarketEvent::Book(e) => e.event_type.as_deref(),
        MarketEvent::PriceChange(e) => e.event_type.as_deref(),
        MarketEvent::TickSizeChange(e) => e.event_type.as_deref(),
        MarketEvent::LastTradePrice(e) => e.event_type.as_deref(),
        MarketEvent::BestBidAsk(e) => e.event_type.as_deref(),
        MarketEvent::NewMarket(e) => e.event_type.as_deref(),
        MarketEvent::MarketResolved(e) => e.event_type.as_deref(),
        // Only the slow path may conclude a type is unknown.
        MarketEvent::Unknown { .. } => return None,
    };
    t
}

/// Finds the value of the last `"event_type"` key by scanning backwards. Only a hint.
fn scan_event_type(obj: &str) -> Option<&str> {
    const KEY: &str = "\"event_type\"";
    let at = obj.rfind(KEY)?;
    let rest = obj[at + KEY.len()..].trim_ascii_start();
    let rest = rest.strip_prefix(':')?.trim_ascii_start();
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    let value = &rest[..end];
    if value.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        Some(value)
    } else {
        None
    }
}

fn parse<'a, T: Deserialize<'a>>(obj: &'a str) -> Result<T, DecodeError> {
    serde_json::from_str(obj).map_err(|e| DecodeError::from_json(&e))
}

fn decode_as<'a>(obj: &'a str, event_type: &str) -> Result<MarketEvent<'a>, DecodeError> {
    Ok(match event_type {
        "book" => MarketEvent::Book(parse(obj)?),
        "price_change" => MarketEvent::PriceChange(normalise_price_change(parse(obj)?)?),
        "tick_size_change" => MarketEvent::TickSizeChange(parse(obj)?),
        "last_trade_price" => MarketEvent::LastTradePrice(parse(obj)?),
        "best_bid_ask" => MarketEvent::BestBidAsk(parse(obj)?),
        "new_market" => MarketEvent::NewMarket(parse(obj)?),
        "market_resolved" => MarketEvent::MarketResolved(parse(obj)?),
        other => {
            // Still require a well-formed object, so garbage is not counted as "unknown type".
            let _: serde::de::IgnoredAny = parse(obj)?;
            MarketEvent::Unknown { event_type: Text(std::borrow::Cow::Owned(other.to_owned())) }
        }
    })
}

fn normalise_price_change(w: PriceChangeWire<'_>) -> Result<PriceChangeEvent<'_>, DecodeError> {
    let (changes, schema) = if let Some(entries) = w.price_changes {
        (entries, PriceChangeSchema::Current)
    } else if let (Some(asset), Some(changes)) = (&w.asset_id, w.changes) {
        let entries =
            changes.into_iter().map(|c| legacy_entry(asset, c.price, c.size, c.side)).collect();
        (entries, PriceChangeSchema::LegacyChanges)
    } else if let (Some(asset), Some(price), Some(size), Some(side)) =
        (&w.asset_id, w.price, w.size, w.side)
    {
        (vec![legacy_entry(asset, price, size, side)], PriceChangeSchema::LegacySingle)
    } else {
        return Err(DecodeError::new(
            DecodeErrorKind::UnknownSchema,
            "price_change without price_changes[], changes[] or price/size/side",
        ));
    };
    Ok(PriceChangeEvent {
        market: w.market,
        changes,
        timestamp: w.timestamp,
        schema,
        unknown_fields: w.unknown_fields,
        event_type: w.event_type,
    })
}

fn legacy_entry<'a>(
    asset: &Text<'a>,
    price: Price,
    size: Size,
    side: Side,
) -> PriceChangeEntry<'a> {
    PriceChangeEntry {
        asset_id: asset.clone(),
        price,
        size,
        side,
        hash: None,
        best_bid: None,
        best_ask: None,
        unknown_fields: 0,
        _life: std::marker::PhantomData,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(
        text: &str,
    ) -> (Result<FrameKind, DecodeError>, Vec<Result<MarketEvent<'_>, DecodeError>>) {
        let mut out = Vec::new();
        let kind = decode_frame(text, |r| out.push(r));
        (kind, out)
    }

    const PC: &str = r#"{"market":"0x1","price_changes":[{"asset_id":"7","price":"0.5","size":"10","side":"BUY","hash":"00","best_bid":"0.5","best_ask":"1"}],"timestamp":"12","event_type":"price_change"}"#;

    #[test]
    fn decode_frame_pong_and_empty_array() {
        assert_eq!(collect("PONG").0, Ok(FrameKind::Pong));
        assert_eq!(collect("[]\n").0, Ok(FrameKind::Array(0)));
        assert_eq!(collect(" \n").0.map_err(|e| e.kind), Err(DecodeErrorKind::Empty));
        assert_eq!(collect("NO NEW ASSETS").0.map_err(|e| e.kind), Err(DecodeErrorKind::NotJson));
    }

    #[test]
    fn decode_event_ignores_whitespace_and_key_order() {
        let spaced = r#" { "event_type" : "price_change" , "timestamp" : "12",
            "price_changes" : [ { "side":"BUY", "size":"10", "price":"0.5", "asset_id":"7" } ],
            "market" : "0x1" } "#;
        let a = decode_event(PC).map(|e| match e {
            MarketEvent::PriceChange(p) => (p.changes[0].price, p.changes[0].size, p.timestamp),
            _ => panic!("wrong type"),
        });
        let b = decode_event(spaced).map(|e| match e {
            MarketEvent::PriceChange(p) => (p.changes[0].price, p.changes[0].size, p.timestamp),
            _ => panic!("wrong type"),
        });
        assert_eq!(a, b);
        assert!(a.is_ok());
    }

    #[test]
    fn decode_event_borrows_strings_from_frame() {
        let Ok(MarketEvent::PriceChange(p)) = decode_event(PC) else { panic!() };
        assert!(matches!(p.market.0, std::borrow::Cow::Borrowed(_)));
        assert!(matches!(p.changes[0].asset_id.0, std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn decode_event_accepts_escaped_strings() {
        let t = r#"{"market":"0x\u0031","asset_id":"7","price":"0.5","size":"1","side":"SELL","timestamp":"1","event_type":"last_trade_price"}"#;
        let Ok(MarketEvent::LastTradePrice(e)) = decode_event(t) else { panic!() };
        assert_eq!(&*e.market, "0x1");
    }

    #[test]
    fn decode_errors_are_typed() {
        let kind = |t: &str| decode_event(t).map(|_| ()).map_err(|e| e.kind);
        assert_eq!(kind(r#"{"event_type":"price_change""#), Err(DecodeErrorKind::Malformed));
        assert_eq!(
            kind(r#"{"market":"0x1","timestamp":"1","event_type":"price_change"}"#),
            Err(DecodeErrorKind::UnknownSchema)
        );
        assert_eq!(
            kind(r#"{"asset_id":"1","timestamp":"1","bids":[],"asks":[],"event_type":"book"}"#),
            Err(DecodeErrorKind::MissingField)
        );
        assert_eq!(
            kind(&PC.replace("\"0.5\",\"size\"", "\"0.5e0\",\"size\"")),
            Err(DecodeErrorKind::BadNumber)
        );
        assert_eq!(kind(&PC.replace("\"12\"", "\"-12\"")), Err(DecodeErrorKind::BadNumber));
        assert_eq!(kind(&PC.replace("BUY", "HOLD")), Err(DecodeErrorKind::BadNumber));
        assert_eq!(kind(&PC.replace("\"10\"", "10")), Err(DecodeErrorKind::WrongType));
        assert_eq!(kind(r#"{"market":"0x1"}"#), Err(DecodeErrorKind::MissingEventType));
        assert_eq!(kind("42"), Err(DecodeErrorKind::WrongType));
    }

    #[test]
    fn unknown_event_type_and_fields_are_tolerated() {
        let Ok(MarketEvent::Unknown { event_type }) =
            decode_event(r#"{"x":1,"event_type":"brand_new"}"#)
        else {
            panic!()
        };
        assert_eq!(&*event_type, "brand_new");
        let extra = PC.replace("\"market\":\"0x1\"", "\"market\":\"0x1\",\"new_key\":{\"a\":[1]}");
        let Ok(MarketEvent::PriceChange(p)) = decode_event(&extra) else { panic!() };
        assert_eq!(p.unknown_fields, 1);
    }

    #[test]
    fn bad_element_does_not_stop_the_rest_of_the_array() {
        let frame =
            format!("[{PC},{{\"event_type\":\"book\"}},7,{},{PC}]", r#"{"event_type":"mystery"}"#);
        let (kind, events) = collect(&frame);
        assert_eq!(kind, Ok(FrameKind::Array(5)));
        let oks: Vec<bool> = events.iter().map(Result::is_ok).collect();
        assert_eq!(oks, [true, false, false, true, true]);
    }

    #[test]
    fn scan_is_not_fooled_by_event_type_in_a_nested_object() {
        let base = r#"{"market":"0x1","asset_id":"7","price":"0.5","size":"1","side":"SELL","timestamp":"1","event_type":"last_trade_price","meta":{"event_type":"X"}}"#;
        for nested in ["book", "zzz", "price_change"] {
            let t = base.replace("\"X\"", &format!("\"{nested}\""));
            assert!(matches!(decode_event(&t), Ok(MarketEvent::LastTradePrice(_))), "{nested}");
        }
        let book = r#"{"market":"0x1","asset_id":"7","timestamp":"1","bids":[],"asks":[],"event_type":"book","meta":{"event_type":"price_change"}}"#;
        assert!(matches!(decode_event(book), Ok(MarketEvent::Book(_))));
        // A malformed event still fails with its own error after the fallback.
        let bad = r#"{"market":"0x1","timestamp":"1","event_type":"book"}"#;
        assert_eq!(
            decode_event(bad).map(|_| ()).map_err(|e| e.kind),
            Err(DecodeErrorKind::MissingField)
        );
    }

    #[test]
    fn scan_is_not_fooled_by_event_type_in_a_nested_string() {
        let t = r#"{"market":"0x1","asset_id":"7","price":"0.5","size":"1","side":"SELL","timestamp":"1","event_type":"last_trade_price","note":"\"event_type\":\"book\""}"#;
        assert!(matches!(decode_event(t), Ok(MarketEvent::LastTradePrice(_))));
    }
}
