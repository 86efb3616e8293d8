//! The frame decoder: `PONG`, one JSON object, or an array of objects, decoded without copying
//! (strings borrow from the frame). Each object is decoded on its own, so a bad element costs
//! only itself.
//!
//! `fast` tries the venue's common shapes (current `price_change`, `book`) first; whatever it
//! does not fully understand comes back "not handled" and takes `serde_path`, so results and
//! errors are the serde path's. This module is the only one that knows both.

use super::event::{DecodeError, DecodeErrorKind, FrameKind, MarketEvent};
use super::{fast, serde_path};

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
    use_fast: bool,
    mut on_event: impl FnMut(Result<MarketEvent<'a>, DecodeError>),
) -> Result<FrameKind, DecodeError> {
    let trimmed = text.trim_ascii();
    match trimmed.as_bytes().first() {
        None => Err(DecodeError::new(DecodeErrorKind::Empty, "empty frame")),
        Some(b'{') => {
            on_event(decode_event_with(trimmed, use_fast));
            Ok(FrameKind::Object)
        }
        Some(b'[') => {
            // An opening dump of `book`s: all or nothing, nothing is reported before it is
            // known that every element is handled.
            if let Some(events) = use_fast.then(|| fast::decode_array(trimmed)).flatten() {
                let n = events.len();
                events.into_iter().for_each(|e| on_event(Ok(e)));
                return Ok(FrameKind::Array(n));
            }
            let elements = serde_path::split_array(trimmed)?;
            for raw in &elements {
                on_event(decode_event_with(raw.get(), use_fast));
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

fn decode_event_with(obj: &str, use_fast: bool) -> Result<MarketEvent<'_>, DecodeError> {
    let obj = obj.trim_ascii();
    if !obj.starts_with('{') {
        return Err(DecodeError::new(
            DecodeErrorKind::WrongType,
            format!("element is not an object: {:?}", preview(obj)),
        ));
    }
    // The common shapes (`price_change`, `book`) by hand; anything it does not fully understand
    // comes back `None` and takes the serde path, which owns every error.
    if use_fast {
        if let Some(event) = fast::decode_object(obj) {
            return Ok(event);
        }
    }
    serde_path::decode_object(obj)
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
