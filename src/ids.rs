//! Identifiers shared across the engine: outcome tokens and markets.
//!
//! Both are kept as the venue's own text behind an `Arc<str>`, so a book, the registry and the
//! API can share one allocation per id and look books up by `&str` straight from a frame.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

macro_rules! text_id {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn new(s: &str) -> Self {
                Self(Arc::from(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), &self.0)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}

text_id!(
    TokenId,
    "An outcome token (the venue's `asset_id`): a decimal string of up to 78 digits."
);
text_id!(
    MarketId,
    "A market's condition id (`market` on the wire): `0x` and 64 hex digits on the venue."
);

/// A data shard's index (0-based, as `[layout]` lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ShardId(pub u16);

impl ShardId {
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A connection slot of one shard: one `ConnTable` entry, holding whole markets, that keeps
/// one socket open (two while it is recycled).
///
/// Its number on the API (`/stats` `connections[].id`, `POST /admin/recycle?conn=`) packs the
/// shard into the top 8 bits ([`ConnId::raw`]), so an id alone says which shard to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub shard: ShardId,
    /// 1-based within the shard, never reused while the shard runs.
    pub slot: u32,
}

impl ConnId {
    /// Slots per shard before ids would collide with the next shard's.
    pub const SLOTS_MAX: u32 = (1 << 24) - 1;

    pub fn raw(self) -> u32 {
        u32::from(self.shard.0) << 24 | (self.slot & Self::SLOTS_MAX)
    }

    pub fn from_raw(raw: u32) -> ConnId {
        ConnId { shard: ShardId((raw >> 24) as u16), slot: raw & Self::SLOTS_MAX }
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.raw())
    }
}

impl serde::Serialize for ConnId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.raw())
    }
}

/// One WebSocket opened by a slot. It is also the feed id the store keeps per book (which
/// socket's frames may change it), so it is unique per shard and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct SocketId(pub u32);

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A `/ws` API client of the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ClientId(pub u64);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod typed_id_tests {
    use super::*;

    #[test]
    fn conn_ids_pack_the_shard_in_the_top_bits() {
        let id = ConnId { shard: ShardId(3), slot: 17 };
        assert_eq!(id.raw(), 3 << 24 | 17);
        assert_eq!(ConnId::from_raw(id.raw()), id);
        assert_eq!(ConnId::from_raw(0x0100_0001), ConnId { shard: ShardId(1), slot: 1 });
    }
}
