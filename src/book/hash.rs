//! The venue's book hash: lowercase hex SHA-1 of a compact JSON rendering of the book with the
//! `hash` field blank (protocol doc §3.10). Recomputing it detects books that drifted.

use sha1::{Digest, Sha1};

use super::{Book, Level, LtpText};
use crate::decimal::{push_decimal, push_u64, Price, Size};

/// The inputs of the hash that are not levels; all must be known to compute it.
#[derive(Debug, Clone, Copy)]
pub struct HashInputs<'a> {
    pub market: &'a str,
    pub asset_id: &'a str,
    pub timestamp_ms: u64,
    pub min_order_size: Size,
    pub tick_size: Price,
    pub neg_risk: bool,
    pub last_trade_price: &'a str,
}

/// Writes the exact text the venue hashes. `bids`/`asks` in wire order.
pub fn write_hash_input(out: &mut String, inp: &HashInputs<'_>, bids: &[Level], asks: &[Level]) {
    out.clear();
    let mut num = String::new();
    recipe(out, &mut num, inp, |o| write_levels(o, bids), |o| write_levels(o, asks));
}

/// Where the recipe's text goes: a string, or straight into SHA-1.
trait Sink {
    fn put(&mut self, s: &str);
}

impl Sink for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
}

impl Sink for Sha1 {
    fn put(&mut self, s: &str) {
        self.update(s.as_bytes());
    }
}

/// The recipe, with each side's `[...]` written by the caller (rendered now, or kept).
/// `num` is scratch for the timestamp's digits.
fn recipe<S: Sink>(
    out: &mut S,
    num: &mut String,
    inp: &HashInputs<'_>,
    bids: impl FnOnce(&mut S),
    asks: impl FnOnce(&mut S),
) {
    out.put("{\"market\":\"");
    out.put(inp.market);
    out.put("\",\"asset_id\":\"");
    out.put(inp.asset_id);
    out.put("\",\"timestamp\":\"");
    num.clear();
    push_u64(num, inp.timestamp_ms);
    out.put(num);
    out.put("\",\"hash\":\"\",\"bids\":");
    bids(out);
    out.put(",\"asks\":");
    asks(out);
    out.put(",\"min_order_size\":\"");
    out.put(inp.min_order_size.text().as_str());
    out.put("\",\"tick_size\":\"");
    out.put(inp.tick_size.text().as_str());
    out.put("\",\"neg_risk\":");
    out.put(if inp.neg_risk { "true" } else { "false" });
    out.put(",\"last_trade_price\":\"");
    out.put(inp.last_trade_price);
    out.put("\"}");
}

/// `[{"price":"0.5","size":"10"},...]`, the level list as the venue writes it compactly.
pub fn write_levels(out: &mut String, levels: &[Level]) {
    out.push('[');
    for (i, l) in levels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"price\":\"");
        push_decimal(out, u64::from(l.price.units()), 0);
        out.push_str("\",\"size\":\"");
        push_decimal(out, l.size.units(), 0);
        out.push_str("\"}");
    }
    out.push(']');
}

fn bracketed(out: &mut impl Sink, levels: &str) {
    out.put("[");
    out.put(levels);
    out.put("]");
}

/// SHA-1 of `text`.
pub fn sha1(text: &str) -> [u8; 20] {
    Sha1::digest(text.as_bytes()).into()
}

/// Hash of `book` at `timestamp_ms`, or None if an input the stream does not carry is unknown.
/// `scratch` is reused between calls to avoid allocating.
pub fn book_hash(book: &Book, timestamp_ms: u64, scratch: &mut String) -> Option<[u8; 20]> {
    let meta = book.meta();
    let ltp: LtpText = book.hash_ltp()?;
    let inputs = HashInputs {
        market: book.market().as_str(),
        asset_id: book.token().as_str(),
        timestamp_ms,
        min_order_size: meta.min_order_size?,
        tick_size: meta.tick_size?,
        neg_risk: meta.neg_risk?,
        last_trade_price: ltp.as_str(),
    };
    match book.rendered_levels() {
        // Kept levels go straight into SHA-1: no copy of the book's text.
        Some((bids, asks)) => {
            let mut h = Sha1::new();
            recipe(&mut h, scratch, &inputs, |o| bracketed(o, bids), |o| bracketed(o, asks));
            Some(h.finalize().into())
        }
        None => {
            write_hash_input(scratch, &inputs, book.bids(), book.asks());
            Some(sha1(scratch))
        }
    }
}

/// Parses 40 hex digits (either case).
pub fn parse_hex(s: &str) -> Option<[u8; 20]> {
    let b = s.as_bytes();
    if b.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Lowercase hex, as the venue sends it.
pub fn to_hex(h: &[u8; 20]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(40);
    for b in h {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let h = sha1("abc");
        assert_eq!(to_hex(&h), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(parse_hex(&to_hex(&h)), Some(h));
        assert_eq!(parse_hex("A9993E364706816ABA3E25717850C26C9CD0D89D"), Some(h));
        assert_eq!(parse_hex("xyz"), None);
        assert_eq!(parse_hex(&"g".repeat(40)), None);
    }
}
