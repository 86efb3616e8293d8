//! Client frames for the market channel: the opening subscription and dynamic updates.

use std::fmt::Write;

/// Most ids per subscribe frame; larger sets are chunked by [`subscribe_frames`].
pub const IDS_PER_FRAME_MAX: usize = 100;

/// The text keepalive the venue answers with `PONG`.
pub const PING: &str = "PING";

/// Which kind of subscription frame to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeOp {
    /// The first frame of a connection: `"type":"market"` with `initial_dump`.
    Open,
    /// `"operation":"subscribe"` on an open connection.
    Subscribe,
    /// `"operation":"unsubscribe"` on an open connection.
    Unsubscribe,
}

/// Writes one subscription frame for `ids`.
pub fn subscribe_frame(op: SubscribeOp, ids: &[&str], custom_features: bool) -> String {
    let mut out = String::with_capacity(64 + ids.len() * 82);
    out.push_str("{\"assets_ids\":[");
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Token ids are decimal digits; anything else is escaped by serde_json to stay valid.
        out.push_str(&serde_json::Value::from(*id).to_string());
    }
    out.push(']');
    match op {
        SubscribeOp::Open => out.push_str(",\"type\":\"market\",\"initial_dump\":true"),
        SubscribeOp::Subscribe => out.push_str(",\"operation\":\"subscribe\""),
        SubscribeOp::Unsubscribe => out.push_str(",\"operation\":\"unsubscribe\""),
    }
    if op != SubscribeOp::Unsubscribe {
        let _ = write!(out, ",\"custom_feature_enabled\":{custom_features}");
    }
    out.push('}');
    out
}

/// Chunks `ids` into frames of at most [`IDS_PER_FRAME_MAX`]; only the first chunk of an
/// `Open` is an opening frame, the rest are dynamic subscribes on the same connection.
pub fn subscribe_frames(op: SubscribeOp, ids: &[&str], custom_features: bool) -> Vec<String> {
    if ids.is_empty() {
        return match op {
            SubscribeOp::Open => vec![subscribe_frame(op, &[], custom_features)],
            _ => Vec::new(),
        };
    }
    ids.chunks(IDS_PER_FRAME_MAX)
        .enumerate()
        .map(|(i, chunk)| {
            let op = if op == SubscribeOp::Open && i > 0 { SubscribeOp::Subscribe } else { op };
            subscribe_frame(op, chunk, custom_features)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_frame_open_has_type_and_dump() {
        let f = subscribe_frame(SubscribeOp::Open, &["1", "2"], true);
        assert_eq!(
            f,
            r#"{"assets_ids":["1","2"],"type":"market","initial_dump":true,"custom_feature_enabled":true}"#
        );
        let f = subscribe_frame(SubscribeOp::Unsubscribe, &["1"], true);
        assert_eq!(f, r#"{"assets_ids":["1"],"operation":"unsubscribe"}"#);
    }

    #[test]
    fn subscribe_frames_chunk_at_limit() {
        let ids: Vec<String> = (0..250).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let frames = subscribe_frames(SubscribeOp::Open, &refs, false);
        assert_eq!(frames.len(), 3);
        assert!(frames[0].contains("\"type\":\"market\""));
        assert!(frames[1].contains("\"operation\":\"subscribe\""));
        let v: serde_json::Value = serde_json::from_str(&frames[2]).unwrap_or_default();
        assert_eq!(v["assets_ids"].as_array().map(Vec::len), Some(50));
    }
}
