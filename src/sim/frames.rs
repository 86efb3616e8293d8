//! The venue's server frames, written byte for byte as captured in 2026-10: compact JSON, keys
//! in the venue's (non-alphabetical) order, every number a string, opening dumps as one array
//! frame ending in `\n`. See the protocol doc §3.1 and the fixtures in tests/data/polymarket.
//!
//! Books, hashes and numbers are written from the simulator's independent truth
//! ([`TruthBook`], its own decimal text): nothing the engine uses to read or hash a book sits
//! between the model and the bytes a client receives (issue 13).

use std::fmt::Write;

use super::truth::{hex, push_text, TruthBook};
use crate::book::Book;
use crate::book::Side;
use crate::decimal::{Price, Size};

/// One `price_change` entry as the venue writes it.
#[derive(Debug, Clone)]
pub struct EntryOut<'a> {
    pub asset_id: &'a str,
    pub price: Price,
    pub size: Size,
    pub side: Side,
    pub hash: [u8; 20],
    pub best_bid: Price,
    pub best_ask: Price,
}

/// Best bid and ask with the venue's empty-side sentinels `"0"` and `"1"`.
pub fn top_of_book(book: &Book) -> (Price, Price) {
    (
        book.best_bid().map_or(Price::ZERO, |l| l.price),
        book.best_ask().map_or(Price::ONE, |l| l.price),
    )
}

/// `{"market":..,"price_changes":[{asset_id,price,size,side,hash,best_bid,best_ask}..],
/// "timestamp":..,"event_type":"price_change"}`
pub fn price_change(out: &mut String, market: &str, entries: &[EntryOut<'_>], ts: u64) {
    out.push_str("{\"market\":\"");
    out.push_str(market);
    out.push_str("\",\"price_changes\":[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"asset_id\":\"");
        out.push_str(e.asset_id);
        out.push_str("\",\"price\":\"");
        push_text(out, u64::from(e.price.units()), 0);
        out.push_str("\",\"size\":\"");
        push_text(out, e.size.units(), 0);
        let _ = write!(out, "\",\"side\":\"{}\",\"hash\":\"{}", e.side.as_str(), hex(&e.hash));
        out.push_str("\",\"best_bid\":\"");
        push_text(out, u64::from(e.best_bid.units()), 0);
        out.push_str("\",\"best_ask\":\"");
        push_text(out, u64::from(e.best_ask.units()), 0);
        out.push_str("\"}");
    }
    let _ = write!(out, "],\"timestamp\":\"{ts}\",\"event_type\":\"price_change\"}}");
}

/// `{"market":..,"asset_id":..,"timestamp":..,"hash":..,"bids":[..],"asks":[..]`: the head
/// that opening books and REST books share (the Go struct order).
fn snapshot_head(out: &mut String, book: &TruthBook, hash: [u8; 20]) {
    let _ = write!(
        out,
        "{{\"market\":\"{}\",\"asset_id\":\"{}\",\"timestamp\":\"{}\",\"hash\":\"{}\",\"bids\":",
        book.market,
        book.asset_id,
        book.timestamp_ms,
        hex(&hash)
    );
    book.write_wire_levels(out, true);
    out.push_str(",\"asks\":");
    book.write_wire_levels(out, false);
}

/// An opening-dump element: `market, asset_id, timestamp, hash, bids, asks, tick_size,
/// event_type, last_trade_price`.
pub fn opening_book(out: &mut String, book: &TruthBook, hash: [u8; 20]) {
    snapshot_head(out, book, hash);
    let _ = write!(
        out,
        ",\"tick_size\":\"{}\",\"event_type\":\"book\",\"last_trade_price\":\"{}\"}}",
        book.tick_size, book.last_trade_price
    );
}

/// A `book` sent after a trade: `market, asset_id, bids, asks, hash, timestamp, event_type`.
pub fn book_after_trade(out: &mut String, book: &TruthBook, hash: [u8; 20]) {
    let _ = write!(
        out,
        "{{\"market\":\"{}\",\"asset_id\":\"{}\",\"bids\":",
        book.market, book.asset_id
    );
    book.write_wire_levels(out, true);
    out.push_str(",\"asks\":");
    book.write_wire_levels(out, false);
    let _ = write!(
        out,
        ",\"hash\":\"{}\",\"timestamp\":\"{}\",\"event_type\":\"book\"}}",
        hex(&hash),
        book.timestamp_ms
    );
}

/// REST `GET /book`: `market, asset_id, timestamp, hash, bids, asks, min_order_size,
/// tick_size, neg_risk, last_trade_price` (the Go struct order the hash also uses).
pub fn rest_book(out: &mut String, book: &TruthBook, hash: [u8; 20]) {
    snapshot_head(out, book, hash);
    let _ = write!(
        out,
        ",\"min_order_size\":\"{}\",\"tick_size\":\"{}\",\"neg_risk\":{},\"last_trade_price\":\"{}\"}}",
        book.min_order_size, book.tick_size, book.neg_risk, book.last_trade_price
    );
}

/// `last_trade_price`: `market, asset_id, price, size, fee_rate_bps, side, timestamp,
/// event_type, transaction_hash` (side is the taker's).
#[allow(clippy::too_many_arguments)]
pub fn last_trade_price(
    out: &mut String,
    market: &str,
    asset_id: &str,
    price: Price,
    size: Size,
    side: Side,
    ts: u64,
    tx_hash: &str,
) {
    let _ = write!(out, "{{\"market\":\"{market}\",\"asset_id\":\"{asset_id}\",\"price\":\"");
    push_text(out, u64::from(price.units()), 0);
    out.push_str("\",\"size\":\"");
    push_text(out, size.units(), 0);
    let _ = write!(
        out,
        "\",\"fee_rate_bps\":\"0\",\"side\":\"{}\",\"timestamp\":\"{ts}\",\
         \"event_type\":\"last_trade_price\",\"transaction_hash\":\"{tx_hash}\"}}",
        side.as_str()
    );
}

/// `best_bid_ask`: `market, asset_id, best_bid, best_ask, spread, timestamp, event_type`.
pub fn best_bid_ask(out: &mut String, book: &TruthBook, ts: u64) {
    let (bid, ask) = book.top_or_sentinels();
    let _ = write!(
        out,
        "{{\"market\":\"{}\",\"asset_id\":\"{}\",\"best_bid\":\"",
        book.market, book.asset_id
    );
    push_text(out, bid, 0);
    out.push_str("\",\"best_ask\":\"");
    push_text(out, ask, 0);
    out.push_str("\",\"spread\":\"");
    push_text(out, ask.saturating_sub(bid), 0);
    let _ = write!(out, "\",\"timestamp\":\"{ts}\",\"event_type\":\"best_bid_ask\"}}");
}

/// `tick_size_change` (field order of the docs; the only real capture had sorted keys).
pub fn tick_size_change(out: &mut String, book: &TruthBook, old: &str, new: &str, ts: u64) {
    let _ = write!(
        out,
        "{{\"event_type\":\"tick_size_change\",\"asset_id\":\"{}\",\"market\":\"{}\",\
         \"old_tick_size\":\"{old}\",\"new_tick_size\":\"{new}\",\"timestamp\":\"{ts}\"}}",
        book.asset_id, book.market
    );
}

/// `market_resolved`: `id, market, assets_ids, winning_asset_id, winning_outcome,
/// event_message, timestamp, event_type, tags`.
pub fn market_resolved(
    out: &mut String,
    id: &str,
    market: &str,
    tokens: [&str; 2],
    winner: usize,
    outcomes: [&str; 2],
    ts: u64,
) {
    let _ = write!(
        out,
        "{{\"id\":\"{id}\",\"market\":\"{market}\",\"assets_ids\":[\"{}\",\"{}\"],\
         \"winning_asset_id\":\"{}\",\"winning_outcome\":\"{}\",\"event_message\":null,\
         \"timestamp\":\"{ts}\",\"event_type\":\"market_resolved\",\"tags\":[\"Simulated\"]}}",
        tokens[0],
        tokens[1],
        tokens[winner.min(1)],
        outcomes[winner.min(1)]
    );
}

/// Fields of a `new_market` event.
#[derive(Debug, Clone)]
pub struct NewMarketOut<'a> {
    pub id: &'a str,
    pub question: &'a str,
    pub market: &'a str,
    pub slug: &'a str,
    pub tokens: [&'a str; 2],
    pub outcomes: [&'a str; 2],
    pub tick: &'a str,
    pub ts: u64,
}

/// `new_market` in the documented field order.
pub fn new_market(out: &mut String, m: &NewMarketOut<'_>) {
    let q = json_str(m.question);
    let _ = write!(
        out,
        "{{\"id\":\"{}\",\"question\":{q},\"market\":\"{}\",\"slug\":\"{}\",\"description\":{q},\
         \"assets_ids\":[\"{}\",\"{}\"],\"outcomes\":[\"{}\",\"{}\"],\"event_message\":null,\
         \"timestamp\":\"{}\",\"tags\":[\"Simulated\"],\"condition_id\":\"{}\",\"active\":true,\
         \"clob_token_ids\":[\"{}\",\"{}\"],\"order_price_min_tick_size\":\"{}\",\
         \"event_type\":\"new_market\"}}",
        m.id,
        m.market,
        m.slug,
        m.tokens[0],
        m.tokens[1],
        m.outcomes[0],
        m.outcomes[1],
        m.ts,
        m.market,
        m.tokens[0],
        m.tokens[1],
        m.tick
    );
}

/// A JSON string literal (quoted and escaped).
pub fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}
