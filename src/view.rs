//! The BOOK JSON shape, defined once: `polybook replay --dump` and the HTTP API serialise books
//! through [`BookView`]. The simulated exchange's truth endpoint writes the same shape from its
//! independent `sim::truth::TruthBook`, so that this code is under test there too.
//!
//! ```json
//! {"token_id","market","status","bids":[[price,size],...],"asks":[[price,size],...],
//!  "tick_size","last_trade":{"price","size","side"}|null,"hash","timestamp_ms"}
//! ```
//! Levels are best first; prices and sizes are canonical decimal strings.

use serde::ser::{SerializeSeq, SerializeStruct, SerializeTuple, Serializer};
use serde::Serialize;

use crate::book::hash::to_hex;
use crate::book::{Book, Level, Side};

/// A book rendered as BOOK JSON, optionally cut to the best `depth` levels per side.
pub struct BookView<'a> {
    pub book: &'a Book,
    pub depth: Option<usize>,
}

impl<'a> BookView<'a> {
    pub fn new(book: &'a Book) -> Self {
        BookView { book, depth: None }
    }
    pub fn with_depth(book: &'a Book, depth: usize) -> Self {
        BookView { book, depth: Some(depth) }
    }
}

struct Side_<'a>(&'a Book, Side, Option<usize>);

impl Serialize for Side_<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.2.unwrap_or(usize::MAX);
        let levels = self.0.levels(self.1);
        let mut seq = s.serialize_seq(Some(levels.len().min(n)))?;
        for l in self.0.depth(self.1, n) {
            seq.serialize_element(&LevelPair(l))?;
        }
        seq.end()
    }
}

struct LevelPair<'a>(&'a Level);

impl Serialize for LevelPair<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.0.price)?;
        t.serialize_element(&self.0.size)?;
        t.end()
    }
}

impl Serialize for BookView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Book", 11)?;
        book_fields(&mut st, self.book, self.depth)?;
        st.end()
    }
}

/// The BOOK JSON fields, for [`BookView`] and [`ServedBook`] alike.
fn book_fields<S: SerializeStruct>(
    st: &mut S,
    b: &Book,
    depth: Option<usize>,
) -> Result<(), S::Error> {
    {
        st.serialize_field("token_id", b.token())?;
        st.serialize_field("market", b.market())?;
        st.serialize_field("status", &b.status())?;
        st.serialize_field("bids", &Side_(b, Side::Buy, depth))?;
        st.serialize_field("asks", &Side_(b, Side::Sell, depth))?;
        st.serialize_field("tick_size", &b.tick_size())?;
        st.serialize_field("last_trade", &b.last_trade())?;
        st.serialize_field("hash", &b.venue_hash().map(|h| to_hex(&h)))?;
        st.serialize_field("timestamp_ms", &b.timestamp_ms())?;
        st.serialize_field("verified", &b.verified())?;
        Ok(())
    }
}

/// How fresh a book is when it is served, from the serving shard's clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Freshness {
    pub now_ms: u64,
    /// Time since the book's connection last delivered a data frame (None: no connection).
    pub feed_silent_ms: Option<u64>,
}

/// BOOK JSON plus what the API adds: the token's trading parameters and how fresh the book
/// is (`received_at_ms`, `age_ms`, `feed_silent_ms`).
pub struct ServedBook<'a> {
    pub book: &'a Book,
    pub depth: Option<usize>,
    pub fresh: Freshness,
}

impl ServedBook<'_> {
    pub fn to_json(&self) -> String {
        // Serialising our own types into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl Serialize for ServedBook<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let b = self.book;
        let mut st = s.serialize_struct("Book", 17)?;
        book_fields(&mut st, b, self.depth)?;
        let meta = b.meta();
        st.serialize_field("min_order_size", &meta.min_order_size)?;
        st.serialize_field("neg_risk", &meta.neg_risk)?;
        st.serialize_field("updated_at_ms", &b.timestamp_ms())?;
        let received = b.received_ms();
        st.serialize_field("received_at_ms", &received)?;
        let age = (received > 0).then(|| self.fresh.now_ms.saturating_sub(received));
        st.serialize_field("age_ms", &age)?;
        st.serialize_field("feed_silent_ms", &self.fresh.feed_silent_ms)?;
        st.end()
    }
}
