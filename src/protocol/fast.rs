//! A hand-written, zero-copy fast path for the venue's common shapes: a current-schema
//! `price_change` object and a `book` object, alone or as the elements of an array frame.
//!
//! serde_json spends most of a `price_change` scanning long strings (78-digit asset ids, 40-hex
//! hashes, the 66-char market id) byte by byte; here strings are scanned 16 bytes at a time
//! (SWAR on a `u128`), every value is parsed in the one pass, and where the venue's layout is
//! predictable (key order, fixed-length ids and hashes) the guess is checked instead of searched
//! for. A wrong guess only costs the general path; it never changes a result.
//!
//! The contract is one-sided: `None` means "not handled" and the serde path decides, so every
//! error keeps exactly the kind and detail it always had. `Some` is returned only for input the
//! serde path accepts, with exactly the event it produces: this parser accepts a strict subset
//! of JSON (no escapes, no `null`, no duplicate keys, no legacy or cross-type fields, strings
//! where the typed parse wants strings) and parses values with the same functions
//! (`Price::parse`, `Size::parse`, the `Millis` and `Side` rules). Anything else, down to
//! trailing bytes after the object, is "not handled".

use std::marker::PhantomData;

use super::event::{BookEvent, MarketEvent, PriceChangeEntry, PriceChangeEvent, PriceChangeSchema};
use super::wire::{Millis, Text};
use crate::book::{Level, Side};
use crate::decimal::{Price, Size};

/// Expected lengths of fixed-size venue strings: checked in one go instead of searching for the
/// closing quote (any other length takes the general scan).
const MARKET_LEN: usize = 66;
const ASSET_ID_LEN: usize = 77;
const HASH_LEN: usize = 40;
const TIMESTAMP_LEN: usize = 13;

/// Nesting allowed inside an unknown value. serde_json skips ignored values with an explicit
/// stack (no depth limit); this bound only keeps our recursion short: deeper values go to serde.
const SKIP_DEPTH: u32 = 32;

/// Decodes one object (already trimmed, as `decode_event` has it). `None`: not handled.
#[inline]
pub(crate) fn decode_object(obj: &str) -> Option<MarketEvent<'_>> {
    let mut c = Cursor { text: obj, i: 0 };
    let event = c.event()?;
    c.ws();
    if c.at_end() {
        Some(event)
    } else {
        None
    }
}

/// Decodes an array frame (already trimmed) whose every element this path handles; `None`
/// otherwise, before anything was reported, so the caller can start over on the serde path.
pub(crate) fn decode_array(frame: &str) -> Option<Vec<MarketEvent<'_>>> {
    let mut c = Cursor { text: frame, i: 0 };
    c.eat(b'[')?;
    c.ws();
    let mut events = Vec::new();
    if c.eat(b']').is_none() {
        loop {
            events.push(c.event()?);
            if !c.more(b']')? {
                break;
            }
        }
    }
    c.ws();
    c.at_end().then_some(events)
}

/// Stores `v` in an empty slot; a second value for the same key is not handled (serde keeps the
/// last one, which we do not try to mirror).
#[inline]
fn put<T>(slot: &mut Option<T>, v: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(v);
            Some(())
        }
    }
}

const ONES: u128 = 0x0101_0101_0101_0101_0101_0101_0101_0101;
const HIGHS: u128 = 0x8080_8080_8080_8080_8080_8080_8080_8080;

/// Flags (bit 7 of a byte) the bytes of `x` that are `"`, `\\` or a control character (< 0x20),
/// with the classic "has zero byte" / "has byte less than" tricks. A false flag can only sit
/// above (after) a true one, as borrows only propagate upwards: the lowest flag is exact.
#[inline]
fn special_bytes(x: u128) -> u128 {
    let quote = x ^ (ONES * u128::from(b'"'));
    let backslash = x ^ (ONES * u128::from(b'\\'));
    let zero = |v: u128| v.wrapping_sub(ONES) & !v & HIGHS;
    zero(quote) | zero(backslash) | (x.wrapping_sub(ONES * 0x20) & !x & HIGHS)
}

/// True if `s` holds no `"`, `\\` or control character.
#[inline]
fn is_plain(s: &[u8]) -> bool {
    let chunk = |at: usize| {
        s.get(at..at + 16)
            .and_then(|c| <[u8; 16]>::try_from(c).ok())
            .map_or(HIGHS, |c| special_bytes(u128::from_le_bytes(c)))
    };
    let Some(last) = s.len().checked_sub(16) else {
        return !s.iter().any(|&b| matches!(b, b'"' | b'\\' | 0..0x20));
    };
    let mut flags = chunk(last);
    let mut at = 0;
    while at < last {
        flags |= chunk(at);
        at += 16;
    }
    flags == 0
}

/// Up to 16 bytes compared in one masked 128-bit compare.
#[derive(Clone, Copy)]
struct Pattern {
    bytes: u128,
    mask: u128,
    /// The same bytes, for a compare near the end of the text.
    raw: [u8; 16],
    /// 0: longer than 16 bytes, never matched this way.
    len: usize,
}

const fn pattern(text: &[u8], quote_colon: bool) -> Pattern {
    let mut bytes = [0u8; 16];
    let mut mask = [0u8; 16];
    let len = text.len() + if quote_colon { 3 } else { 0 };
    if len > 16 {
        return Pattern { bytes: 0, mask: 0, raw: [0; 16], len: 0 };
    }
    let mut j = 0;
    while j < len {
        mask[j] = 0xFF;
        j += 1;
    }
    let offset = if quote_colon { 1 } else { 0 };
    let mut j = 0;
    while j < text.len() {
        bytes[j + offset] = text[j];
        j += 1;
    }
    if quote_colon {
        bytes[0] = b'"';
        bytes[len - 2] = b'"';
        bytes[len - 1] = b':';
    }
    Pattern { bytes: u128::from_le_bytes(bytes), mask: u128::from_le_bytes(mask), raw: bytes, len }
}

/// A key the typed parse knows: its name, and `"name":` as a pattern for the fast compare.
struct Key {
    name: &'static [u8],
    quoted: Pattern,
}

const fn key(name: &'static [u8]) -> Key {
    Key { name, quoted: pattern(name, true) }
}

/// Top-level keys of `price_change` and `book`, then the legacy `price_change` fields.
const TOP_KEYS: [Key; 16] = [
    key(b"market"),
    key(b"price_changes"),
    key(b"timestamp"),
    key(b"event_type"),
    key(b"asset_id"),
    key(b"hash"),
    key(b"bids"),
    key(b"asks"),
    key(b"tick_size"),
    key(b"min_order_size"),
    key(b"neg_risk"),
    key(b"last_trade_price"),
    key(b"changes"),
    key(b"price"),
    key(b"size"),
    key(b"side"),
];
const T_MARKET: usize = 0;
const T_PRICE_CHANGES: usize = 1;
const T_TIMESTAMP: usize = 2;
const T_EVENT_TYPE: usize = 3;
const T_ASSET_ID: usize = 4;
const T_HASH: usize = 5;
const T_BIDS: usize = 6;
const T_ASKS: usize = 7;
const T_TICK_SIZE: usize = 8;
const T_MIN_ORDER_SIZE: usize = 9;
const T_NEG_RISK: usize = 10;
const T_LAST_TRADE_PRICE: usize = 11;
const T_LEGACY: usize = 12;

/// The key the venue usually sends after each top-level key (`price_change`, then the opening
/// `book`); a wrong guess only costs the general key scan.
fn top_next(id: usize) -> usize {
    match id {
        T_MARKET => T_PRICE_CHANGES,
        T_PRICE_CHANGES => T_TIMESTAMP,
        T_TIMESTAMP => T_EVENT_TYPE,
        T_EVENT_TYPE => T_LAST_TRADE_PRICE,
        T_ASSET_ID => T_TIMESTAMP,
        T_HASH => T_BIDS,
        T_BIDS => T_ASKS,
        T_ASKS => T_TICK_SIZE,
        T_TICK_SIZE => T_EVENT_TYPE,
        _ => usize::MAX,
    }
}

/// Keys of a `price_change` entry, in the venue's order.
const ENTRY_KEYS: [Key; 7] = [
    key(b"asset_id"),
    key(b"price"),
    key(b"size"),
    key(b"side"),
    key(b"hash"),
    key(b"best_bid"),
    key(b"best_ask"),
];

/// Keys of a level, in the venue's order.
const LEVEL_KEYS: [Key; 2] = [key(b"price"), key(b"size")];

const PRICE_CHANGE: Pattern = pattern(b"\"price_change\"", false);
const BOOK: Pattern = pattern(b"\"book\"", false);
const BUY: Pattern = pattern(b"\"BUY\"", false);
const SELL: Pattern = pattern(b"\"SELL\"", false);

/// Index of the closing quote of a string whose contents start at `i`, or `None` if the string
/// has an escape or a control character (left to serde) or is not closed.
///
/// 16 bytes per step: keys, decimals and timestamps end in the first step, so the loop exit is
/// well predicted (the string scan's mispredicted exits were most of the parse time).
#[inline]
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    while let Some(chunk) = b.get(i..i + 16) {
        let x = u128::from_le_bytes(<[u8; 16]>::try_from(chunk).ok()?);
        let flags = special_bytes(x);
        if flags != 0 {
            i += (flags.trailing_zeros() / 8) as usize;
            return (b.get(i) == Some(&b'"')).then_some(i);
        }
        i += 16;
    }
    // Fewer than 16 bytes left.
    loop {
        match *b.get(i)? {
            b'"' => return Some(i),
            b'\\' | 0..0x20 => return None,
            _ => i += 1,
        }
    }
}

/// A position in the text. Every method returns `None` for "not handled"; positions only ever
/// stop at ASCII bytes, and slices are taken with `str::get`, so nothing can panic.
///
/// Parsing JSON is a chain of dependent steps (where a string ends decides where the next
/// token starts). Where the venue's layout is predictable (key order, fixed-length ids and
/// hashes), the parser checks its guess instead of searching, which the CPU runs ahead on via
/// branch prediction; a wrong guess falls back to the general path, so only speed depends on it.
struct Cursor<'a> {
    text: &'a str,
    i: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.i).copied()
    }

    #[inline]
    fn at_end(&self) -> bool {
        self.i == self.text.len()
    }

    /// JSON whitespace (serde_json's set: no form feed).
    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    #[inline]
    fn eat(&mut self, byte: u8) -> Option<()> {
        if self.peek() == Some(byte) {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    #[inline]
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        if self.text.as_bytes().get(self.i..end) == Some(word) {
            self.i = end;
            Some(())
        } else {
            None
        }
    }

    /// Consumes `p` if the text at the cursor starts with it.
    #[inline]
    fn at_pattern(&mut self, p: &Pattern) -> bool {
        if p.len == 0 {
            return false;
        }
        let b = self.text.as_bytes();
        let hit = match b.get(self.i..self.i + 16).and_then(|c| <[u8; 16]>::try_from(c).ok()) {
            Some(next16) => u128::from_le_bytes(next16) & p.mask == p.bytes,
            // Near the end (`"price_change"}` is 15 bytes): a plain compare.
            None => b.get(self.i..self.i + p.len) == p.raw.get(..p.len),
        };
        if hit {
            self.i += p.len;
        }
        hit
    }

    /// A string without escapes or control characters: its contents, borrowed.
    #[inline]
    fn str(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let end = string_end(self.text.as_bytes(), start)?;
        self.i = end + 1;
        self.text.get(start..end)
    }

    /// Like [`Cursor::str`], checking first for a string of `len` bytes.
    #[inline]
    fn str_of_len(&mut self, len: usize) -> Option<&'a str> {
        let b = self.text.as_bytes();
        let start = self.i + 1;
        let end = start + len;
        if b.get(self.i) == Some(&b'"')
            && b.get(end) == Some(&b'"')
            && b.get(start..end).is_some_and(is_plain)
        {
            self.i = end + 1;
            return self.text.get(start..end);
        }
        self.str()
    }

    /// `"key"`, the colon and the whitespace around it.
    #[inline]
    fn key(&mut self) -> Option<&'a [u8]> {
        let k = self.str()?;
        self.ws();
        self.eat(b':')?;
        self.ws();
        Some(k.as_bytes())
    }

    /// The index in `keys` of the key at the cursor (`keys.len()` if it is not there), with the
    /// colon and whitespace consumed. `keys[guess]` is tried first in one compare.
    #[inline]
    fn key_of(&mut self, keys: &[Key], guess: usize) -> Option<usize> {
        if let Some(k) = keys.get(guess) {
            if self.at_pattern(&k.quoted) {
                self.ws();
                return Some(guess);
            }
        }
        let name = self.key()?;
        Some(keys.iter().position(|k| k.name == name).unwrap_or(keys.len()))
    }

    /// After a member or element: `true` after a comma (more follow), `false` after `close`.
    #[inline]
    fn more(&mut self, close: u8) -> Option<bool> {
        self.ws();
        match self.peek()? {
            b',' => {
                self.i += 1;
                self.ws();
                Some(true)
            }
            b if b == close => {
                self.i += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// `{` and the whitespace after it; `None` for an empty object (never a valid event part).
    #[inline]
    fn open_object(&mut self) -> Option<()> {
        self.eat(b'{')?;
        self.ws();
        (self.peek() != Some(b'}')).then_some(())
    }

    #[inline]
    fn text_value(&mut self) -> Option<Text<'a>> {
        self.str().map(Text::borrowed)
    }

    #[inline]
    fn text_of_len(&mut self, len: usize) -> Option<Text<'a>> {
        self.str_of_len(len).map(Text::borrowed)
    }

    #[inline]
    fn price(&mut self) -> Option<Price> {
        Price::parse(self.str()?).ok()
    }

    #[inline]
    fn size(&mut self) -> Option<Size> {
        Size::parse(self.str()?).ok()
    }

    /// The rules of `Millis`' visitor for strings; a bare number is left to serde.
    #[inline]
    fn millis(&mut self) -> Option<Millis> {
        let s = self.str_of_len(TIMESTAMP_LEN)?;
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u64>().ok().map(Millis)
    }

    /// The spellings `Side`'s visitor accepts.
    #[inline]
    fn side(&mut self) -> Option<Side> {
        if self.at_pattern(&BUY) {
            return Some(Side::Buy);
        }
        if self.at_pattern(&SELL) {
            return Some(Side::Sell);
        }
        match self.str()? {
            "BUY" | "buy" => Some(Side::Buy),
            "SELL" | "sell" => Some(Side::Sell),
            _ => None,
        }
    }

    /// `event_type`'s value.
    #[inline]
    fn event_type(&mut self) -> Option<Text<'a>> {
        let start = self.i;
        if self.at_pattern(&PRICE_CHANGE) || self.at_pattern(&BOOK) {
            return self.text.get(start + 1..self.i - 1).map(Text::borrowed);
        }
        self.text_value()
    }

    fn boolean(&mut self) -> Option<bool> {
        match self.peek()? {
            b't' => self.literal(b"true").map(|()| true),
            b'f' => self.literal(b"false").map(|()| false),
            _ => None,
        }
    }

    /// Skips a value the typed parse ignores, accepting only what serde_json accepts.
    fn skip(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => self.str().map(drop),
            b'{' => {
                let depth = depth.checked_sub(1)?;
                self.i += 1;
                self.ws();
                if self.eat(b'}').is_some() {
                    return Some(());
                }
                loop {
                    self.key()?;
                    self.skip(depth)?;
                    if !self.more(b'}')? {
                        return Some(());
                    }
                }
            }
            b'[' => {
                let depth = depth.checked_sub(1)?;
                self.i += 1;
                self.ws();
                if self.eat(b']').is_some() {
                    return Some(());
                }
                loop {
                    self.skip(depth)?;
                    if !self.more(b']')? {
                        return Some(());
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, as serde_json reads an ignored number.
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.digits1()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.digits1()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }

    fn digits1(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }

    /// One event object at the cursor: a current-schema `price_change` or a `book`.
    #[inline]
    fn event(&mut self) -> Option<MarketEvent<'a>> {
        self.open_object()?;
        let mut market = None;
        let mut asset_id = None;
        let mut timestamp = None;
        let mut hash = None;
        let mut bids = None;
        let mut asks = None;
        let mut tick_size = None;
        let mut min_order_size = None;
        let mut neg_risk = None;
        let mut last_trade_price = None;
        let mut event_type: Option<Text<'a>> = None;
        let mut price_changes = None;
        let mut unknown: u16 = 0;
        let mut guess = T_MARKET;
        loop {
            let id = self.key_of(&TOP_KEYS, guess)?;
            match id {
                T_MARKET => put(&mut market, self.text_of_len(MARKET_LEN)?)?,
                T_PRICE_CHANGES => put(&mut price_changes, self.entries()?)?,
                T_TIMESTAMP => put(&mut timestamp, self.millis()?)?,
                T_EVENT_TYPE => put(&mut event_type, self.event_type()?)?,
                T_ASSET_ID => put(&mut asset_id, self.text_of_len(ASSET_ID_LEN)?)?,
                T_HASH => put(&mut hash, self.text_of_len(HASH_LEN)?)?,
                T_BIDS => put(&mut bids, self.levels()?)?,
                T_ASKS => put(&mut asks, self.levels()?)?,
                T_TICK_SIZE => put(&mut tick_size, self.price()?)?,
                T_MIN_ORDER_SIZE => put(&mut min_order_size, self.size()?)?,
                T_NEG_RISK => put(&mut neg_risk, self.boolean()?)?,
                T_LAST_TRADE_PRICE => put(&mut last_trade_price, self.text_value()?)?,
                // Fields of the legacy `price_change` schemas: left to serde.
                T_LEGACY.. if id < TOP_KEYS.len() => return None,
                _ => {
                    self.skip(SKIP_DEPTH)?;
                    unknown = unknown.saturating_add(1);
                }
            }
            guess = top_next(id);
            if !self.more(b'}')? {
                break;
            }
        }
        let is_price_change = match event_type.as_deref()? {
            "price_change" => true,
            "book" => false,
            _ => return None,
        };
        if is_price_change {
            // Fields of `book` or of the legacy schemas in a `price_change`: left to serde.
            let foreign = asset_id.is_some()
                || hash.is_some()
                || bids.is_some()
                || asks.is_some()
                || tick_size.is_some()
                || min_order_size.is_some()
                || neg_risk.is_some()
                || last_trade_price.is_some();
            if foreign {
                return None;
            }
            Some(MarketEvent::PriceChange(PriceChangeEvent {
                market: market?,
                changes: price_changes?,
                timestamp: timestamp?,
                schema: PriceChangeSchema::Current,
                unknown_fields: unknown,
                event_type,
            }))
        } else {
            if price_changes.is_some() {
                return None;
            }
            Some(MarketEvent::Book(BookEvent {
                market: market?,
                asset_id: asset_id?,
                timestamp: timestamp?,
                hash,
                bids: bids?,
                asks: asks?,
                tick_size,
                min_order_size,
                neg_risk,
                last_trade_price,
                event_type,
                unknown_fields: unknown,
                _life: PhantomData,
            }))
        }
    }

    /// `price_changes`: an array of entries.
    fn entries(&mut self) -> Option<Vec<PriceChangeEntry<'a>>> {
        self.array(Self::entry)
    }

    /// `[item, item, ...]`, each item read by `item`; None if any is not understood.
    #[inline]
    fn array<T>(&mut self, mut item: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        self.eat(b'[')?;
        self.ws();
        let mut out = Vec::new();
        if self.eat(b']').is_some() {
            return Some(out);
        }
        loop {
            out.push(item(self)?);
            if !self.more(b']')? {
                return Some(out);
            }
        }
    }

    #[inline]
    fn entry(&mut self) -> Option<PriceChangeEntry<'a>> {
        self.open_object()?;
        let mut asset_id = None;
        let mut price = None;
        let mut size = None;
        let mut side = None;
        let mut hash = None;
        let mut best_bid = None;
        let mut best_ask = None;
        let mut unknown: u16 = 0;
        let mut guess = 0;
        loop {
            let id = self.key_of(&ENTRY_KEYS, guess)?;
            match id {
                0 => put(&mut asset_id, self.text_of_len(ASSET_ID_LEN)?)?,
                1 => put(&mut price, self.price()?)?,
                2 => put(&mut size, self.size()?)?,
                3 => put(&mut side, self.side()?)?,
                4 => put(&mut hash, self.text_of_len(HASH_LEN)?)?,
                5 => put(&mut best_bid, self.price()?)?,
                6 => put(&mut best_ask, self.price()?)?,
                _ => {
                    self.skip(SKIP_DEPTH)?;
                    unknown = unknown.saturating_add(1);
                }
            }
            guess = id + 1;
            if !self.more(b'}')? {
                break;
            }
        }
        Some(PriceChangeEntry {
            asset_id: asset_id?,
            price: price?,
            size: size?,
            side: side?,
            hash,
            best_bid,
            best_ask,
            unknown_fields: unknown,
            _life: PhantomData,
        })
    }

    /// `bids` / `asks`: an array of `{"price","size"}` levels.
    fn levels(&mut self) -> Option<Vec<Level>> {
        self.array(Self::level)
    }

    /// A level with exactly `price` and `size` (serde ignores other keys without counting them,
    /// and keeps the last of duplicates: both left to serde).
    #[inline]
    fn level(&mut self) -> Option<Level> {
        self.open_object()?;
        let mut price = None;
        let mut size = None;
        let mut guess = 0;
        loop {
            let id = self.key_of(&LEVEL_KEYS, guess)?;
            match id {
                0 => put(&mut price, self.price()?)?,
                1 => put(&mut size, self.size()?)?,
                _ => return None,
            }
            guess = id + 1;
            if !self.more(b'}')? {
                break;
            }
        }
        Some(Level { price: price?, size: size? })
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    // The differential tests compare whole frames through the frame decoder, with and
    // without this path: a test-only dependency on `market`, never the other way in code.
    use crate::protocol::event::{DecodeError, FrameKind};
    use crate::protocol::market::{
        decode_event, decode_event_serde, decode_frame, decode_frame_serde,
    };

    type Decoded<'a> = (Result<FrameKind, DecodeError>, Vec<Result<MarketEvent<'a>, DecodeError>>);

    fn frame_fast(text: &str) -> Decoded<'_> {
        let mut out = Vec::new();
        let kind = decode_frame(text, |r| out.push(r));
        (kind, out)
    }

    fn frame_serde(text: &str) -> Decoded<'_> {
        let mut out = Vec::new();
        let kind = decode_frame_serde(text, |r| out.push(r));
        (kind, out)
    }

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/data/polymarket/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
    }

    fn is_borrowed(t: &Text<'_>) -> bool {
        matches!(t.0, Cow::Borrowed(_))
    }

    /// Every string of a fast-path event borrows from the frame.
    fn assert_borrowed(e: &MarketEvent<'_>) {
        match e {
            MarketEvent::PriceChange(p) => {
                assert!(is_borrowed(&p.market));
                assert!(p.event_type.as_ref().is_some_and(is_borrowed));
                for c in &p.changes {
                    assert!(is_borrowed(&c.asset_id));
                    assert!(c.hash.as_ref().is_none_or(is_borrowed));
                }
            }
            MarketEvent::Book(b) => {
                assert!(is_borrowed(&b.market) && is_borrowed(&b.asset_id));
                assert!(b.hash.as_ref().is_none_or(is_borrowed));
                assert!(b.last_trade_price.as_ref().is_none_or(is_borrowed));
                assert!(b.event_type.as_ref().is_some_and(is_borrowed));
            }
            other => panic!("the fast path produced {}", other.kind()),
        }
    }

    /// Fast and serde-only decoding agree on `text`, event for event and error for error.
    /// Returns whether the fast path handled it on its own.
    fn check(text: &str) -> bool {
        let fast = frame_fast(text);
        let serde = frame_serde(text);
        assert_eq!(fast, serde, "fast and serde disagree on {text:?}");
        let trimmed = text.trim_ascii();
        let handled = if trimmed.starts_with('[') {
            decode_array(trimmed).inspect(|events| {
                assert_eq!(Ok(FrameKind::Array(events.len())), serde.0, "{text:?}");
            })
        } else {
            decode_object(trimmed).map(|e| vec![e])
        };
        if let Some(events) = &handled {
            for (e, want) in events.iter().zip(&serde.1) {
                assert_eq!(Ok(e), want.as_ref(), "{text:?}");
                assert_borrowed(e);
            }
        }
        handled.is_some()
    }

    const PC: &str = r#"{"market":"0x7ad403c3508f8e3912940fd1a913f227591145ca0614074208e0b962d5fcc422","price_changes":[{"asset_id":"16040015440196279900485035793550429453516625694844857319147506590755961451627","price":"0.198","size":"3888","side":"BUY","hash":"01025591eaaaa8b178d291a5e4fcd08782e8b7b8","best_bid":"0.202","best_ask":"0.203"},{"asset_id":"9","price":"0.802","size":"3888","side":"SELL","hash":"f9176fa82c768d81f610ed6a3b4c813a7f6d675f","best_bid":"0.797","best_ask":"0.798"}],"timestamp":"1791125476001","event_type":"price_change"}"#;
    const BOOK: &str = r#"{"market":"0x1","asset_id":"7","timestamp":"1778204225247","hash":"8602e06a","bids":[{"price":"0.01","size":"12816.02"},{"price":"0.02","size":"1350.6"}],"asks":[{"price":"0.99","size":"5"}],"tick_size":"0.01","min_order_size":"5","neg_risk":false,"event_type":"book","last_trade_price":"0.500"}"#;

    #[test]
    fn special_bytes_finds_the_first_quote_backslash_or_control_byte() {
        let naive = |s: &[u8]| s.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
        let mut seen = 0;
        for special in (0u8..0x20).chain([b'"', b'\\']) {
            for at in 0..16 {
                for filler in [b'0', b'#', b']', 0x7f, 0x80, 0xff, b'!', b'\\' + 1, b'"' + 1] {
                    let mut chunk = [filler; 16];
                    chunk[at] = special;
                    // A second special byte later must not move the answer.
                    if at + 3 < 16 {
                        chunk[at + 3] = b'"';
                    }
                    let flags = special_bytes(u128::from_le_bytes(chunk));
                    let first = (flags != 0).then(|| (flags.trailing_zeros() / 8) as usize);
                    assert_eq!(first, naive(&chunk), "{chunk:?}");
                    seen += 1;
                }
            }
        }
        assert!(seen > 1000);
        for b in 0x20u8..=0xff {
            let plain = b != b'"' && b != b'\\';
            assert_eq!(special_bytes(u128::from_le_bytes([b; 16])) == 0, plain, "{b:#x}");
        }
    }

    #[test]
    fn string_end_and_is_plain_agree_with_a_byte_loop() {
        for len in 0..70usize {
            for bad_at in (0..len).chain([usize::MAX]) {
                for bad in [b'"', b'\\', b'\n', 0u8] {
                    let mut s: Vec<u8> = (0..len).map(|i| b"0123456789abcdef"[i % 16]).collect();
                    if let Some(x) = s.get_mut(bad_at) {
                        *x = bad;
                    }
                    let plain = !s.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20);
                    assert_eq!(is_plain(&s), plain, "{s:?}");
                    let mut quoted = s.clone();
                    quoted.extend_from_slice(b"\",\"x\":\"y\"}");
                    let want =
                        match quoted.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20) {
                            Some(i) if quoted[i] == b'"' => Some(i),
                            _ => None,
                        };
                    assert_eq!(string_end(&quoted, 0), want, "{quoted:?}");
                    if plain {
                        assert_eq!(string_end(&s, 0), None, "unterminated {s:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn patterns_match_whole_keys_only() {
        assert_eq!(TOP_KEYS[T_LAST_TRADE_PRICE].quoted.len, 0, "longer than 16: never compared");
        assert_eq!(TOP_KEYS[T_PRICE_CHANGES].quoted.len, 16);
        let mut c = Cursor { text: r#""price_changes":[],"price":"1"........"#, i: 0 };
        assert_eq!(c.key_of(&TOP_KEYS, 13), Some(T_PRICE_CHANGES), "guess price, is not");
        assert_eq!(c.text.get(c.i..c.i + 1), Some("["));
        // Near the end of the text the compare still works (and never reads past it).
        for text in [r#""price_change"}"#, r#""price_change""#] {
            let mut c = Cursor { text, i: 0 };
            assert!(c.at_pattern(&PRICE_CHANGE), "{text}");
            assert_eq!(c.i, 14);
            let mut c = Cursor { text, i: 0 };
            assert_eq!(c.event_type().as_deref(), Some("price_change"));
        }
        let mut c = Cursor { text: r#""price_chang"#, i: 0 };
        assert!(!c.at_pattern(&PRICE_CHANGE) && c.event_type().is_none());
    }

    #[test]
    fn fixtures_decode_the_same_and_common_shapes_take_the_fast_path() {
        let mut handled = Vec::new();
        let dir = format!("{}/tests/data/polymarket", env!("CARGO_MANIFEST_DIR"));
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".json"))
            .collect();
        names.sort();
        assert!(names.len() >= 20, "{names:?}");
        for name in &names {
            let text = fixture(name);
            if check(&text) {
                handled.push(name.as_str());
            }
        }
        for must in [
            "ws_price_change_2025-12-23.json",
            "ws_price_change_2026-05-08.json",
            "ws_price_change_2026-05-13.json",
            "ws_price_change_compact_2026-10-04.json",
            "ws_price_change_size0_compact_2026-10-04.json",
            "ws_price_change_trade_compact_2026-10-04.json",
            "ws_book_after_trade_2025-12-23.json",
            "ws_book_initial_dump_array_2025-12-23.json",
            "ws_book_initial_dump_with_tick_size_2026-05-08.json",
            "legacy_ws_book_2024-10_sorted_keys.json",
            "ws_opening_frame_empty_2026-10-04.json",
        ] {
            assert!(handled.contains(&must), "{must} fell back to serde");
        }
        for never in [
            "legacy_ws_price_change_per_asset_2024-08_reformatted.json",
            "docs_example_legacy_price_change_changes_schema.json",
            "ws_last_trade_price_2026-06-09.json",
            // A REST body: no event_type, an error for decode_event.
            "legacy_rest_book_2024-10_reformatted.json",
        ] {
            assert!(!handled.contains(&never), "{never} must be left to serde");
        }
    }

    #[test]
    fn common_shapes_in_any_layout_are_handled() {
        assert!(check(PC));
        assert!(check(BOOK));
        let spaced = PC.replace("\",\"", "\", \"").replace("},{", "}, {").replace("],", "], ");
        assert!(check(&spaced));
        let pretty = PC.replace(':', " :\n\t").replace(',', " ,\r\n  ").replace('{', "{ ");
        assert!(check(&pretty));
        assert!(check(&format!(" \n{PC}\n ")));
        // decode_frame trims ASCII whitespace, form feed included, before either path.
        assert!(check(&format!("\u{c}{PC}\u{c}")));
        // Any key order, at both levels.
        let reordered = r#"{"event_type":"price_change","timestamp":"12","price_changes":[{"best_ask":"1","best_bid":"0.5","side":"buy","hash":"00","size":"10","price":"0.5","asset_id":"7"},{"side":"sell","size":"0","price":"1","asset_id":"8"}],"market":"0x1"}"#;
        assert!(check(reordered));
        // Unknown keys of every JSON kind are skipped and counted.
        for unknown in [
            r#""x""#,
            r#""é ü""#,
            "0",
            "-0",
            "12",
            "-1.5e+30",
            "2E-3",
            "0.25",
            "true",
            "false",
            "null",
            "[]",
            "{}",
            r#"[1,"a",{"b":[null,{"c":{}}]},[[]]]"#,
            r#"{"event_type":"book","market":"0x2"}"#,
            r#""\"event_type\":\"book\"""#,
        ] {
            let top = PC.replace(r#""timestamp""#, &format!(r#""new":{unknown},"timestamp""#));
            let entry = PC.replace(r#""side":"BUY""#, &format!(r#""side":"BUY","new":{unknown}"#));
            for t in [top, entry] {
                let handled = check(&t);
                assert_eq!(handled, !unknown.contains('\\'), "{t}");
                if handled {
                    let ev = decode_event(&t).map(|e| e.unknown_fields());
                    let entry_unknown = match decode_event(&t) {
                        Ok(MarketEvent::PriceChange(p)) => p.changes[0].unknown_fields,
                        _ => 0,
                    };
                    assert_eq!(ev.map(|n| n + entry_unknown), Ok(1), "{t}");
                }
            }
        }
        let book_extra = BOOK.replace(r#""tick_size""#, r#""extra":[1,2],"tick_size""#);
        assert!(check(&book_extra));
        assert!(check(&BOOK.replace("false", "true")));
        assert!(check(&PC.replace("\"1791125476001\"", "\"00000000000000000001\"")));
        assert!(check(&PC.replace("\"1791125476001\"", "\"0\"")));
        assert!(check(&BOOK.replace(",\"neg_risk\":false", "")));
        assert!(check(r#"[]"#) && check(" [ ] ") && check(&format!("[{BOOK}, {BOOK}]")));
        let empty_entries =
            r#"{"market":"0x1","price_changes":[ ],"timestamp":"1","event_type":"price_change"}"#;
        assert!(check(empty_entries));
    }

    #[test]
    fn anything_unusual_is_left_to_serde_with_the_same_result() {
        let cases: Vec<String> = vec![
            // Escapes, in values and keys.
            PC.replace("0x7ad4", "0x\\u0037ad4"),
            PC.replace("\"market\"", "\"m\\u0061rket\""),
            PC.replace("\"BUY\"", "\"B\\u0055Y\""),
            PC.replace("\"0.198\"", "\"0.1\\u00398\""),
            // null, for required and optional fields.
            PC.replace("\"0.202\"", "null"),
            PC.replace("\"0.198\"", "null"),
            PC.replace("\"1791125476001\"", "null"),
            PC.replace("\"price_change\"", "null"),
            BOOK.replace("false", "null"),
            // Numbers where strings are expected, and strings where a bool is.
            PC.replace("\"1791125476001\"", "1791125476001"),
            PC.replace("\"1791125476001\"", "-1"),
            PC.replace("\"1791125476001\"", "1.5"),
            PC.replace("\"3888\"", "3888"),
            BOOK.replace("false", "\"false\""),
            BOOK.replace("false", "fals"),
            BOOK.replace("false", "falsey"),
            // Bad values.
            PC.replace("\"0.198\"", "\"0.198e0\""),
            PC.replace("\"0.198\"", "\"\""),
            PC.replace("\"0.198\"", "\".5\""),
            PC.replace("\"3888\"", "\"99999999999999999999\""),
            PC.replace("\"0.198\"", "\"5000\""),
            PC.replace("\"BUY\"", "\"HOLD\""),
            PC.replace("\"BUY\"", "\"Buy\""),
            PC.replace("\"1791125476001\"", "\"\""),
            PC.replace("\"1791125476001\"", "\"18446744073709551616\""),
            PC.replace("\"1791125476001\"", "\"123456789012345678901\""),
            PC.replace("\"1791125476001\"", "\"+1\""),
            PC.replace("\"1791125476001\"", "\"1791125476001 \""),
            // Duplicate keys (serde keeps the last).
            PC.replace("\"timestamp\"", "\"market\":\"0x2\",\"timestamp\""),
            PC.replace("\"side\":\"BUY\"", "\"side\":\"BUY\",\"side\":\"SELL\""),
            PC.replace("\"event_type\"", "\"event_type\":\"book\",\"event_type\""),
            BOOK.replace("{\"price\":\"0.01\"", "{\"price\":\"0.01\",\"price\":\"0.03\""),
            // Missing fields.
            PC.replace("\"market\":\"0x7ad403c3508f8e3912940fd1a913f227591145ca0614074208e0b962d5fcc422\",", ""),
            PC.replace(",\"timestamp\":\"1791125476001\"", ""),
            PC.replace(",\"event_type\":\"price_change\"", ""),
            PC.replace("\"side\":\"BUY\",", ""),
            BOOK.replace(",\"size\":\"5\"", ""),
            BOOK.replace("\"asks\"", "\"asks_\""),
            // Legacy and cross-type fields.
            PC.replace("\"timestamp\"", "\"asset_id\":\"7\",\"timestamp\""),
            PC.replace("\"timestamp\"", "\"hash\":\"00\",\"timestamp\""),
            PC.replace("\"timestamp\"", "\"changes\":[],\"timestamp\""),
            PC.replace("\"timestamp\"", "\"tick_size\":\"0.01\",\"timestamp\""),
            PC.replace("\"timestamp\"", "\"bids\":[],\"timestamp\""),
            BOOK.replace("\"tick_size\"", "\"price_changes\":[],\"tick_size\""),
            BOOK.replace("\"tick_size\"", "\"side\":\"BUY\",\"tick_size\""),
            BOOK.replace("{\"price\":\"0.01\"", "{\"x\":1,\"price\":\"0.01\""),
            // Other event types and unknown ones.
            PC.replace("\"price_change\"", "\"last_trade_price\""),
            PC.replace("\"price_change\"", "\"brand_new\""),
            PC.replace("\"price_change\"", "\"Price_change\""),
            // Syntax.
            PC.replace("]", ",]"),
            PC.replace("\"best_ask\":\"0.203\"}", "\"best_ask\":\"0.203\",}"),
            PC.replace(":\"BUY\",", ":\"BUY\""),
            PC.replace("\"side\":", "\"side\""),
            PC.replace("\"side\":", "\"side\"::"),
            format!("{PC}}}"),
            format!("{PC},"),
            format!("{PC} x"),
            PC.replace(",\"timestamp\"", "\u{c},\"timestamp\""),
            PC.replace("}]", "}\u{a0}]"),
            PC[..PC.len() - 1].to_owned(),
            PC[..200].to_owned(),
            PC.replace("\"0x7ad4", "\"0x\n7ad4"),
            PC.replace("\"0x7ad4", "\"0x\u{1f}7ad4"),
            PC.replace("\"price_changes\":[", "\"price_changes\":{").replace("}],", "}},"),
            PC.replace("[{", "[[{").replace("}],", "}]],"),
            PC.replace("\"timestamp\"", "\"new\":01,\"timestamp\""),
            PC.replace("\"timestamp\"", "\"new\":1.,\"timestamp\""),
            PC.replace("\"timestamp\"", "\"new\":.5,\"timestamp\""),
            PC.replace("\"timestamp\"", "\"new\":-,\"timestamp\""),
            PC.replace("\"timestamp\"", "\"new\":1e,\"timestamp\""),
            PC.replace("\"timestamp\"", "\"new\":+1,\"timestamp\""),
            PC.replace("\"timestamp\"", "\"new\":nul,\"timestamp\""),
            PC.replace("\"timestamp\"", "\"new\":[1,],\"timestamp\""),
            PC.replace("\"timestamp\"", "\"new\":{\"a\"},\"timestamp\""),
            PC.replace("\"timestamp\"", &format!("\"new\":{}1{},\"timestamp\"", "[".repeat(40), "]".repeat(40))),
            PC.replace("\"timestamp\"", &format!("\"new\":{}1{},\"timestamp\"", "[".repeat(200), "]".repeat(200))),
            "{}".to_owned(),
            "{ }".to_owned(),
            "[{}]".to_owned(),
            format!("[{PC},7]"),
            format!("[{PC},]"),
            format!("[{PC} {PC}]"),
            format!("[{PC}]]"),
            format!("[{BOOK},{}]", fixture("ws_last_trade_price_2026-06-09.json")),
            "[".to_owned(),
            "{".to_owned(),
            "{\"".to_owned(),
            "{\"market\"".to_owned(),
            "{\"market\":".to_owned(),
            "{\"market\":\"é".to_owned(),
        ];
        for (i, t) in cases.iter().enumerate() {
            assert!(t != PC && t != BOOK, "case {i} changed nothing");
            assert!(!check(t), "must be left to serde: {t}");
        }
        // Serde accepts some of these: the fallback changes nothing for them either.
        assert!(cases.iter().any(|t| frame_serde(t).1.iter().any(Result::is_ok)));
    }

    #[test]
    fn deep_nesting_falls_back_before_serde_would_fail() {
        for depth in
            [SKIP_DEPTH as usize - 2, SKIP_DEPTH as usize, SKIP_DEPTH as usize + 1, 127, 130]
        {
            let t = PC.replace(
                "\"timestamp\"",
                &format!("\"new\":{}{},\"timestamp\"", "[".repeat(depth), "]".repeat(depth)),
            );
            let handled = check(&t);
            assert_eq!(handled, depth <= SKIP_DEPTH as usize, "depth {depth}");
        }
    }

    #[test]
    fn single_byte_edits_of_a_real_frame_agree() {
        let base = fixture("ws_price_change_2025-12-23.json");
        let bytes = base.as_bytes();
        for at in 0..=bytes.len() {
            let mut variants = Vec::new();
            if at < bytes.len() {
                let mut del = bytes.to_vec();
                del.remove(at);
                variants.push(del);
            }
            for ins in [b' ', b'"', b'\\', b',', b'}', b'0', b'\x0c'] {
                let mut v = bytes.to_vec();
                v.insert(at, ins);
                variants.push(v);
            }
            for v in variants {
                let text = String::from_utf8_lossy(&v);
                check(&text);
            }
        }
    }

    #[test]
    fn decode_event_serde_is_the_serde_path() {
        assert_eq!(decode_event(PC), decode_event_serde(PC));
        assert_eq!(
            decode_event("7").map_err(|e| e.kind),
            decode_event_serde("7").map_err(|e| e.kind)
        );
    }
}
