//! A ladder's levels as the venue hash renders them, kept in step with the ladder: a hash check
//! then costs one SHA-1 over text already written instead of rendering every level's decimals
//! again (that rendering was ~30 % of a data shard's CPU at its top rate, the SHA-1 ~13 %).

use super::Level;
use crate::decimal::push_decimal;

/// One side: each level's `{"price":"…","size":"…"}` followed by a comma, and where each ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RenderedSide {
    text: String,
    /// `ends[i]`: the byte just past level `i`'s comma.
    ends: Vec<u32>,
}

impl RenderedSide {
    pub(crate) fn build(levels: &[Level]) -> RenderedSide {
        let mut s = RenderedSide {
            text: String::with_capacity(levels.len() * 34),
            ends: Vec::with_capacity(levels.len()),
        };
        for l in levels {
            push_level(&mut s.text, l);
            s.ends.push(s.text.len() as u32);
        }
        s
    }

    /// The levels in wire order, comma separated (what goes between the hash's brackets).
    pub(crate) fn as_str(&self) -> &str {
        self.text.strip_suffix(',').unwrap_or(&self.text)
    }

    fn start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            self.ends[i - 1] as usize
        }
    }

    /// Level `i` is new (the ladder inserted it at `i`). `one` is scratch.
    pub(crate) fn insert(&mut self, i: usize, l: &Level, one: &mut String) {
        let at = self.start(i);
        one.clear();
        push_level(one, l);
        self.text.insert_str(at, one);
        let n = one.len() as u32;
        self.ends.insert(i, at as u32 + n);
        self.ends[i + 1..].iter_mut().for_each(|e| *e += n);
    }

    /// Level `i` is gone.
    pub(crate) fn remove(&mut self, i: usize) {
        let (at, end) = (self.start(i), self.ends[i] as usize);
        self.text.replace_range(at..end, "");
        self.ends.remove(i);
        let n = (end - at) as u32;
        self.ends[i..].iter_mut().for_each(|e| *e -= n);
    }

    /// Level `i` has a new size. `one` is scratch.
    pub(crate) fn modify(&mut self, i: usize, l: &Level, one: &mut String) {
        let (at, end) = (self.start(i), self.ends[i] as usize);
        one.clear();
        push_level(one, l);
        self.text.replace_range(at..end, one);
        let (old, new) = ((end - at) as i64, one.len() as i64);
        if old != new {
            self.ends[i..].iter_mut().for_each(|e| *e = (i64::from(*e) + new - old) as u32);
        }
    }

    pub(crate) fn capacity_bytes(&self) -> usize {
        self.text.capacity() + self.ends.capacity() * std::mem::size_of::<u32>()
    }
}

/// One level as the venue writes it, and a comma.
fn push_level(out: &mut String, l: &Level) {
    out.push_str("{\"price\":\"");
    push_decimal(out, u64::from(l.price.units()), 0);
    out.push_str("\",\"size\":\"");
    push_decimal(out, l.size.units(), 0);
    out.push_str("\"},");
}

/// Both sides, and scratch for one level's text (so an edit does not allocate).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Rendered {
    pub(crate) bids: RenderedSide,
    pub(crate) asks: RenderedSide,
    pub(crate) one: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decimal::{Price, Size};

    fn lv(p: u32, s: u64) -> Level {
        Level::new(Price(p), Size(s))
    }

    #[test]
    fn edits_equal_a_fresh_rendering() {
        let mut levels = vec![lv(10_000, 5_000_000), lv(20_000, 1)];
        let mut r = RenderedSide::build(&levels);
        let one = &mut String::new();
        levels.insert(1, lv(15_000, 123_456_789));
        r.insert(1, &levels[1], one);
        assert_eq!(r, RenderedSide::build(&levels));
        levels[0].size = Size(7);
        r.modify(0, &levels[0], one);
        assert_eq!(r, RenderedSide::build(&levels));
        levels.remove(2);
        r.remove(2);
        assert_eq!(r, RenderedSide::build(&levels));
        levels.remove(0);
        r.remove(0);
        levels.remove(0);
        r.remove(0);
        assert_eq!(r, RenderedSide::build(&levels));
        assert_eq!(r.as_str(), "");
        let one = RenderedSide::build(&[lv(500_000, 10_000_000)]);
        assert_eq!(one.as_str(), "{\"price\":\"0.5\",\"size\":\"10\"}");
    }
}
