//! The data shard's side of the streams: sequence numbers, serialised messages, gap repair.

use std::sync::Arc;

use hashbrown::{HashMap, HashSet};
use polybook::store::BookUpdate;
use polybook::{Book, TokenId};

use super::StreamMsg;

/// The data shard's side: which tokens are streamed and their sequence numbers.
pub struct StreamTap {
    tx: flume::Sender<StreamMsg>,
    seq: HashMap<TokenId, u64>,
    /// Tokens one of whose messages could not be queued: their next message is a snapshot, so
    /// a client never holds a wrong book without knowing (see `retry_gaps`).
    gapped: HashSet<TokenId>,
    /// Messages lost because the hub's channel was full (each is repaired by a snapshot).
    pub dropped: u64,
    /// Snapshots sent to repair such gaps.
    pub gap_snapshots: u64,
}

/// One stream message, serialised with serde so that any id is escaped.
#[derive(serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Out<'a> {
    Level {
        token_id: &'a str,
        seq: u64,
        timestamp_ms: u64,
        side: &'static str,
        price: polybook::Price,
        size: polybook::Size,
    },
    Trade {
        token_id: &'a str,
        seq: u64,
        timestamp_ms: u64,
        price: polybook::Price,
        size: polybook::Size,
        side: &'static str,
    },
    TickSize {
        token_id: &'a str,
        seq: u64,
        timestamp_ms: u64,
        tick_size: polybook::Price,
    },
    Status {
        token_id: &'a str,
        seq: u64,
        timestamp_ms: u64,
        status: polybook::BookStatus,
    },
    /// The engine no longer holds this book (its market left the registry): drop it.
    Reset {
        token_id: &'a str,
        seq: u64,
        reason: &'static str,
    },
}

fn to_text(out: &Out<'_>) -> Arc<str> {
    Arc::from(serde_json::to_string(out).unwrap_or_default())
}

impl StreamTap {
    pub fn new(tx: flume::Sender<StreamMsg>) -> StreamTap {
        StreamTap { tx, seq: HashMap::new(), gapped: HashSet::new(), dropped: 0, gap_snapshots: 0 }
    }

    /// Starts streaming `token` (if not yet) and sends `client` a snapshot.
    pub fn subscribe(&mut self, book: &Book, client: u64, depth: Option<usize>) {
        let seq = *self.seq.entry(book.token().clone()).or_insert(0);
        let text = snapshot_json(book, seq, depth);
        self.send(StreamMsg { token: book.token().clone(), to: Some(client), text });
    }

    pub fn unsubscribe(&mut self, token: &str) {
        self.seq.remove(token);
        self.gapped.remove(token);
    }

    /// The engine drops `token`'s book: its clients are told to drop theirs too. They stay
    /// subscribed (the hub keeps them), so the token stays streamed here: if its market comes
    /// back (a market closed on one listing and found again on the next), the new book's first
    /// snapshot reaches them. A reset lost to a full channel marks a gap, and the gap repair
    /// sends it again while there is no book.
    pub fn untracked(&mut self, token: &TokenId) {
        let Some(seq) = self.seq.get_mut(token.as_str()) else { return };
        *seq += 1;
        let seq = *seq;
        self.gapped.remove(token.as_str());
        let text = to_text(&Out::Reset { token_id: token.as_str(), seq, reason: "untracked" });
        self.send(StreamMsg { token: token.clone(), to: None, text });
    }

    pub fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }

    /// Tokens streamed now.
    pub fn len(&self) -> usize {
        self.seq.len()
    }

    /// Tokens whose stream has a gap still to repair.
    pub fn gaps(&self) -> impl Iterator<Item = &TokenId> {
        self.gapped.iter()
    }

    /// Sends a repairing snapshot for a gapped token (called on a timer, for tokens that had no
    /// update since their gap).
    pub fn repair(&mut self, book: &Book) {
        if !self.gapped.contains(book.token().as_str()) {
            return;
        }
        let Some(seq) = self.seq.get_mut(book.token().as_str()) else { return };
        *seq += 1;
        let text = snapshot_json(book, *seq, None);
        if self.send(StreamMsg { token: book.token().clone(), to: None, text }) {
            self.gapped.remove(book.token().as_str());
            self.gap_snapshots += 1;
        }
    }

    /// Called for every applied change; cheap when the token is not streamed.
    pub fn on_update(&mut self, update: &BookUpdate, book: &Book) {
        let Some(seq) = self.seq.get_mut(book.token().as_str()) else { return };
        *seq += 1;
        let seq = *seq;
        let token_id = book.token().as_str();
        let timestamp_ms = book.timestamp_ms();
        let repair = self.gapped.contains(token_id);
        let text = match *update {
            _ if repair => snapshot_json(book, seq, None),
            BookUpdate::Snapshot => snapshot_json(book, seq, None),
            BookUpdate::Level { side, price, size, .. } => to_text(&Out::Level {
                token_id,
                seq,
                timestamp_ms,
                side: side.as_str(),
                price,
                size,
            }),
            BookUpdate::LastTrade(tr) => to_text(&Out::Trade {
                token_id,
                seq,
                timestamp_ms: tr.timestamp_ms,
                price: tr.price,
                size: tr.size,
                side: tr.side.as_str(),
            }),
            BookUpdate::TickSize { new, .. } => {
                to_text(&Out::TickSize { token_id, seq, timestamp_ms, tick_size: new })
            }
            BookUpdate::Status { to, .. } => {
                to_text(&Out::Status { token_id, seq, timestamp_ms, status: to })
            }
        };
        let token = book.token().clone();
        if self.send(StreamMsg { token, to: None, text }) && repair {
            self.gapped.remove(book.token().as_str());
            self.gap_snapshots += 1;
        }
    }

    fn send(&mut self, msg: StreamMsg) -> bool {
        let token = msg.token.clone();
        if self.tx.try_send(msg).is_err() {
            self.dropped += 1;
            if self.seq.contains_key(token.as_str()) {
                self.gapped.insert(token);
            }
            return false;
        }
        true
    }
}

fn snapshot_json(book: &Book, seq: u64, depth: Option<usize>) -> Arc<str> {
    let fresh =
        polybook::view::Freshness { now_ms: crate::engine::clock::wall_ms(), feed_silent_ms: None };
    let b = polybook::view::ServedBook { book, depth, fresh }.to_json();
    // The token id goes through serde (escaped); the book is already JSON.
    let token = serde_json::to_string(book.token().as_str()).unwrap_or_default();
    Arc::from(format!("{{\"type\":\"snapshot\",\"token_id\":{token},\"seq\":{seq},\"book\":{b}}}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use polybook::book::TokenMeta;
    use polybook::MarketId;

    /// A market closed on one listing and found again on the next (the chaos e2e, issue 19):
    /// its still-subscribed clients got `reset`, and must get the new book's snapshot.
    #[test]
    fn a_token_untracked_then_tracked_again_reaches_its_subscribers_again() {
        let (tx, rx) = flume::unbounded();
        let mut tap = StreamTap::new(tx);
        let book = Book::new(TokenId::new("1"), MarketId::new("m"), TokenMeta::default());
        tap.subscribe(&book, 7, None);
        tap.untracked(book.token());
        // The market is tracked again: a new book, whose first snapshot arrives.
        let again = Book::new(TokenId::new("1"), MarketId::new("m"), TokenMeta::default());
        tap.on_update(&BookUpdate::Snapshot, &again);
        let got: Vec<(String, u64, Option<u64>)> = rx
            .try_iter()
            .map(|m| {
                let v: serde_json::Value = serde_json::from_str(&m.text).unwrap();
                (v["type"].as_str().unwrap().to_owned(), v["seq"].as_u64().unwrap(), m.to)
            })
            .collect();
        let want = [("snapshot", 0, Some(7)), ("reset", 1, None), ("snapshot", 2, None)]
            .map(|(k, s, to)| (k.to_owned(), s, to));
        assert_eq!(got, want);
        // Once nobody is subscribed, the token is no longer streamed.
        tap.unsubscribe("1");
        tap.on_update(&BookUpdate::Snapshot, &again);
        assert!(rx.try_iter().next().is_none() && tap.is_empty());
    }
}
