//! The serde decoder of one event object: the general path that owns every error.
//!
//! `event_type` is found by a scan from the end of the object (the venue puts it last or next
//! to last) and confirmed by the typed parse; a fooled scan falls back to parsing the tag
//! alone. Parsing into an internally tagged enum would be ~2x slower. `price_change` in any of
//! the venue's three schemas is normalised to current-schema entries here.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::event::{
    DecodeError, DecodeErrorKind, MarketEvent, PriceChangeEntry, PriceChangeEvent,
    PriceChangeSchema,
};
use super::wire::{wire_struct, Millis, Text};
use crate::book::Side;
use crate::decimal::{Price, Size};

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

wire_struct! {
    /// Only the tag; used when the fast scan for `event_type` cannot be trusted.
    pub struct Tag<'a> {
        opt "event_type" => event_type: Text<'a>,
    }
}

/// Splits an array frame (already trimmed) into its elements, unparsed.
pub(crate) fn split_array(frame: &str) -> Result<Vec<&RawValue>, DecodeError> {
    serde_json::from_str(frame).map_err(|e| DecodeError::from_json(&e))
}

/// Decodes one object (already trimmed and known to start with `{`) with serde alone.
pub(crate) fn decode_object(obj: &str) -> Result<MarketEvent<'_>, DecodeError> {
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
