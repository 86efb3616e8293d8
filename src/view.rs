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
        let b = self.book;
        let mut st = s.serialize_struct("Book", 11)?;
        st.serialize_field("token_id", b.token())?;
        st.serialize_field("market", b.market())?;
        st.serialize_field("status", &b.status())?;
        st.serialize_field("bids", &Side_(b, Side::Buy, self.depth))?;
        st.serialize_field("asks", &Side_(b, Side::Sell, self.depth))?;
        st.serialize_field("tick_size", &b.tick_size())?;
        st.serialize_field("last_trade", &b.last_trade())?;
        st.serialize_field("hash", &b.venue_hash().map(|h| to_hex(&h)))?;
        st.serialize_field("timestamp_ms", &b.timestamp_ms())?;
        st.serialize_field("verified", &b.verified())?;
        st.end()
    }
}
