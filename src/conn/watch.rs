//! The sink the group puts between the store and the runtime's sink: it forwards every
//! change and notes what the group must act on (books turning Resyncing, books a handoff
//! waits for) and keeps the status tally.

use crate::book::Book;
use crate::ids::TokenId;
use crate::store::{BookUpdate, UpdateSink};

use super::tally::StatusTally;

pub(super) struct Watch<'a, S: UpdateSink> {
    pub inner: &'a mut S,
    pub tally: &'a mut StatusTally,
    pub now_ms: u64,
    /// Books that turned Resyncing.
    pub resync: Vec<TokenId>,
    /// Books replaced or whose status moved (only collected while a handoff runs).
    pub touched: Option<Vec<TokenId>>,
}

impl<'a, S: UpdateSink> Watch<'a, S> {
    pub fn new(inner: &'a mut S, tally: &'a mut StatusTally, now_ms: u64, touched: bool) -> Self {
        Watch { inner, tally, now_ms, resync: Vec::new(), touched: touched.then(Vec::new) }
    }
}

impl<S: UpdateSink> UpdateSink for Watch<'_, S> {
    fn on_update(&mut self, update: &BookUpdate, book: &Book) {
        match *update {
            BookUpdate::Status { from, to } => {
                self.tally.moved(book.token(), from, to, self.now_ms);
                if to == crate::book::BookStatus::Resyncing {
                    self.resync.push(book.token().clone());
                }
                if let Some(t) = self.touched.as_mut() {
                    t.push(book.token().clone());
                }
            }
            BookUpdate::Snapshot => {
                if let Some(t) = self.touched.as_mut() {
                    t.push(book.token().clone());
                }
            }
            _ => {}
        }
        self.inner.on_update(update, book);
    }
}
