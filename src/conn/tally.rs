//! Books by status and the time books spend Suspect or Resyncing, kept as they change so
//! that stats never scan the books.

use hashbrown::HashMap;

use crate::book::BookStatus;
use crate::ids::TokenId;

#[derive(Debug, Default, Clone)]
pub struct StatusTally {
    since: HashMap<TokenId, (BookStatus, u64)>,
    pub suspect_ms: u64,
    pub resyncing_ms: u64,
    counts: [usize; 6],
}

fn index(s: BookStatus) -> usize {
    match s {
        BookStatus::Seeding => 0,
        BookStatus::Live => 1,
        BookStatus::Suspect => 2,
        BookStatus::Resyncing => 3,
        BookStatus::Resolved => 4,
        BookStatus::Stale => 5,
    }
}

impl StatusTally {
    pub fn get(&self, s: BookStatus) -> usize {
        self.counts[index(s)]
    }

    pub fn total(&self) -> usize {
        self.counts.iter().sum()
    }

    pub(super) fn added(&mut self, s: BookStatus) {
        self.counts[index(s)] += 1;
    }

    pub(super) fn removed(&mut self, token: &TokenId, s: BookStatus, now_ms: u64) {
        let c = &mut self.counts[index(s)];
        *c = c.saturating_sub(1);
        self.leave(token, now_ms);
    }

    pub(super) fn moved(&mut self, token: &TokenId, from: BookStatus, to: BookStatus, now_ms: u64) {
        let c = &mut self.counts[index(from)];
        *c = c.saturating_sub(1);
        self.counts[index(to)] += 1;
        self.leave(token, now_ms);
        if matches!(to, BookStatus::Suspect | BookStatus::Resyncing) {
            self.since.insert(token.clone(), (to, now_ms));
        }
    }

    fn leave(&mut self, token: &TokenId, now_ms: u64) {
        if let Some((state, at)) = self.since.remove(token.as_str()) {
            let ms = now_ms.saturating_sub(at);
            match state {
                BookStatus::Suspect => self.suspect_ms += ms,
                BookStatus::Resyncing => self.resyncing_ms += ms,
                _ => {}
            }
        }
    }
}
