//! The data shard's side of the streams: sequence numbers, serialised messages, gap repair.
//!
//! Two outputs share one per-token `seq` and one rendering of each message: the `/ws` hub
//! (tokens a client asked for) and, when `[publish.nats]` is on, the NATS publisher (every
//! token). Every seq-numbered message goes to both outputs that carry the token, so a
//! consumer of either sees the same sequence; a message one output lost makes the token's next
//! message a snapshot for both. With NATS off, a token no client streams costs one branch.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use hashbrown::{HashMap, HashSet};
use polybook::store::BookUpdate;
use polybook::{Book, Price, Size, TokenId};

use super::StreamMsg;
use crate::engine::nats::{PubBatch, PubMsg};

/// One token's sequence and what its outputs need.
#[derive(Default)]
struct Tok {
    seq: u64,
    /// A `/ws` client streams it.
    ws: bool,
    /// Top of book last published to NATS (bid price/size, ask price/size).
    bbo: Option<[u64; 4]>,
    /// When the last NATS snapshot was published (wall ms).
    snap_ms: u64,
}

/// The NATS side of the tap.
struct NatsOut {
    tx: flume::Sender<PubBatch>,
    interval_ms: u64,
    /// Tokens changed since their last snapshot, with when the next one is due.
    due: HashMap<TokenId, u64>,
    /// The same, soonest first, so a frequent wake visits only what is due. An entry whose
    /// time no longer matches `due` (its snapshot went out another way) is skipped.
    queue: BinaryHeap<Reverse<(u64, TokenId)>>,
    /// Tokens one of whose messages was lost: their next message is a snapshot.
    gapped: HashSet<TokenId>,
    /// Messages of the shard step under way, handed over as one batch by `flush_nats`.
    pending: Vec<PubMsg>,
    sent: u64,
    dropped: u64,
    snapshots: u64,
}

/// The data shard's side: which tokens are streamed and their sequence numbers.
pub struct StreamTap {
    tx: flume::Sender<StreamMsg>,
    toks: HashMap<TokenId, Tok>,
    /// Tokens a `/ws` client streams (those with `Tok::ws`).
    ws_len: usize,
    /// Tokens one of whose `/ws` messages could not be queued: their next message is a
    /// snapshot, so a client never holds a wrong book without knowing (see `retry_gaps`).
    gapped: HashSet<TokenId>,
    nats: Option<NatsOut>,
    /// Messages lost because the hub's channel was full (each is repaired by a snapshot).
    pub dropped: u64,
    /// Snapshots sent to repair such gaps.
    pub gap_snapshots: u64,
}

/// The tap's NATS counters for the shard's stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatsTapCounters {
    /// Messages handed to the publisher.
    pub sent: u64,
    /// Messages lost to a full publisher channel (each repaired by a snapshot).
    pub dropped: u64,
    /// Periodic and repairing snapshots rendered for NATS.
    pub snapshots: u64,
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

fn to_text(out: &impl serde::Serialize) -> Arc<str> {
    Arc::from(serde_json::to_string(out).unwrap_or_default())
}

/// The first time at or after `earliest` in the token's own slot of the interval (a fixed
/// phase from its routing hash). Books that start changing together (a stream's start, a
/// reconnect, a busy minute) would otherwise fall due together, every interval, as one burst
/// of snapshots that holds up the deltas behind it in the publisher and the server; with a
/// slot each, a book changing all the time still gets one every interval.
fn snapshot_slot(earliest: u64, interval_ms: u64, token: &str) -> u64 {
    if interval_ms == 0 {
        return earliest;
    }
    let phase = polybook::routing::routing_hash(token) % interval_ms;
    let wait = (phase + interval_ms - earliest % interval_ms) % interval_ms;
    earliest.saturating_add(wait)
}

impl StreamTap {
    pub fn new(tx: flume::Sender<StreamMsg>) -> StreamTap {
        StreamTap {
            tx,
            toks: HashMap::new(),
            ws_len: 0,
            gapped: HashSet::new(),
            nats: None,
            dropped: 0,
            gap_snapshots: 0,
        }
    }

    /// Publish every token to NATS through `tx`, with a snapshot of a changing book at most
    /// every `interval_ms`.
    pub fn with_nats(mut self, tx: flume::Sender<PubBatch>, interval_ms: u64) -> StreamTap {
        self.nats = Some(NatsOut {
            tx,
            interval_ms,
            due: HashMap::new(),
            queue: BinaryHeap::new(),
            gapped: HashSet::new(),
            pending: Vec::new(),
            sent: 0,
            dropped: 0,
            snapshots: 0,
        });
        self
    }

    /// Whether any change needs the tap at all (false: the shard skips it).
    pub fn active(&self) -> bool {
        self.ws_len > 0 || self.nats.is_some()
    }

    pub fn nats_counters(&self) -> Option<NatsTapCounters> {
        self.nats.as_ref().map(|n| NatsTapCounters {
            sent: n.sent,
            dropped: n.dropped,
            snapshots: n.snapshots,
        })
    }

    /// Starts streaming `token` (if not yet) and sends `client` a snapshot.
    pub fn subscribe(&mut self, book: &Book, client: u64, depth: Option<usize>) {
        let tok = self.toks.entry(book.token().clone()).or_default();
        if !tok.ws {
            tok.ws = true;
            self.ws_len += 1;
        }
        let text = snapshot_json(book, tok.seq, depth);
        self.send(StreamMsg { token: book.token().clone(), to: Some(client), text });
    }

    pub fn unsubscribe(&mut self, token: &str) {
        self.gapped.remove(token);
        let Some(tok) = self.toks.get_mut(token) else { return };
        if tok.ws {
            tok.ws = false;
            self.ws_len -= 1;
        }
        // NATS carries every token: its sequence goes on.
        if self.nats.is_none() {
            self.toks.remove(token);
        }
    }

    /// The engine drops `token`'s book: its clients are told to drop theirs too. They stay
    /// subscribed (the hub keeps them), so the token stays streamed here: if its market comes
    /// back (a market closed on one listing and found again on the next), the new book's first
    /// snapshot reaches them. A reset lost to a full channel marks a gap, and the gap repair
    /// sends it again while there is no book.
    pub fn untracked(&mut self, token: &TokenId) {
        let Some(tok) = self.toks.get_mut(token.as_str()) else { return };
        tok.seq += 1;
        let (seq, ws) = (tok.seq, tok.ws);
        self.gapped.remove(token.as_str());
        let text = to_text(&Out::Reset { token_id: token.as_str(), seq, reason: "untracked" });
        if ws {
            self.send(StreamMsg { token: token.clone(), to: None, text: Arc::clone(&text) });
        } else {
            // Nobody on `/ws` holds it: forget it (NATS consumers drop the book on `Gone`).
            self.toks.remove(token.as_str());
        }
        if let Some(n) = self.nats.as_mut() {
            n.due.remove(token.as_str());
            n.gapped.remove(token.as_str());
            n.offer(PubMsg::Gone { token: token.clone(), text });
            n.flush();
        }
    }

    /// Hands what the steps queued for NATS to the publisher as one batch (the shard calls it
    /// once the feed has nothing else ready); the tap's own timer-driven methods
    /// (`nats_snapshots`, `repair`, `untracked`) flush themselves.
    pub fn flush_nats(&mut self) {
        if let Some(n) = self.nats.as_mut() {
            n.flush();
        }
    }

    /// NATS messages queued and not yet handed over.
    pub fn nats_pending(&self) -> usize {
        self.nats.as_ref().map_or(0, |n| n.pending.len())
    }

    pub fn is_empty(&self) -> bool {
        self.ws_len == 0
    }

    /// Tokens streamed to `/ws` clients now.
    pub fn len(&self) -> usize {
        self.ws_len
    }

    /// Tokens whose stream (either output) has a gap still to repair.
    pub fn gaps(&self) -> Vec<TokenId> {
        let mut v: Vec<TokenId> = self.gapped.iter().cloned().collect();
        if let Some(n) = &self.nats {
            v.extend(n.gapped.iter().filter(|t| !self.gapped.contains(t.as_str())).cloned());
        }
        v
    }

    /// Sends a repairing snapshot for a gapped token (called on a timer, for tokens that had no
    /// update since their gap).
    pub fn repair(&mut self, book: &Book) {
        let token = book.token().as_str();
        let ws_gap = self.gapped.contains(token);
        let nats_gap = self.nats.as_ref().is_some_and(|n| n.gapped.contains(token));
        if !(ws_gap || nats_gap) {
            return;
        }
        let Some(tok) = self.toks.get_mut(token) else { return };
        tok.seq += 1;
        let text = snapshot_json(book, tok.seq, None);
        self.emit(book, text, true, None, wall_ms());
        self.flush_nats();
    }

    /// NATS snapshots of the books that changed and are due at `now_ms`, at most `max`;
    /// `books` finds a token's book (None: gone). Returns how many were rendered.
    pub fn nats_snapshots<'b>(
        &mut self,
        now_ms: u64,
        max: usize,
        books: impl Fn(&str) -> Option<&'b Book>,
    ) -> usize {
        let Some(n) = self.nats.as_mut() else { return 0 };
        let mut rendered = 0;
        while rendered < max {
            let Some(Reverse((at, _))) = n.queue.peek() else { break };
            if *at > now_ms {
                break;
            }
            let Some(Reverse((at, t))) = n.queue.pop() else { break };
            if n.due.get(t.as_str()) != Some(&at) {
                continue;
            }
            let (Some(book), Some(tok)) = (books(t.as_str()), self.toks.get_mut(t.as_str())) else {
                n.due.remove(t.as_str());
                continue;
            };
            // The book as it is after message `seq`: a consumer applies deltas above it.
            let text = snapshot_json(book, tok.seq, None);
            rendered += 1;
            if n.offer(PubMsg::Snapshot { token: t.clone(), text }) {
                n.due.remove(t.as_str());
                n.snapshots += 1;
                tok.snap_ms = now_ms;
            } else {
                // The publisher's channel is full: try again at the next wake.
                n.queue.push(Reverse((at, t)));
                break;
            }
        }
        n.flush();
        rendered
    }

    /// Called for every applied change; cheap when the token is not streamed.
    pub fn on_update(&mut self, update: &BookUpdate, book: &Book) {
        let token_id = book.token().as_str();
        let tok = match self.toks.get_mut(token_id) {
            Some(t) => t,
            None if self.nats.is_some() => self.toks.entry(book.token().clone()).or_default(),
            None => return,
        };
        tok.seq += 1;
        let seq = tok.seq;
        let timestamp_ms = book.timestamp_ms();
        let repair = self.gapped.contains(token_id)
            || self.nats.as_ref().is_some_and(|n| n.gapped.contains(token_id));
        let snapshot = repair || matches!(update, BookUpdate::Snapshot);
        let text = match *update {
            _ if snapshot => snapshot_json(book, seq, None),
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
        // A trade is a delta of the token and also the market's trade message (same text).
        let trade = matches!(update, BookUpdate::LastTrade(_)).then(|| Arc::clone(&text));
        let now_ms = if self.nats.is_some() { wall_ms() } else { 0 };
        self.emit(book, text, snapshot, trade, now_ms);
    }

    /// Sends one seq-numbered message to every output that carries the token.
    fn emit(
        &mut self,
        book: &Book,
        text: Arc<str>,
        snapshot: bool,
        trade: Option<Arc<str>>,
        now_ms: u64,
    ) {
        let token = book.token();
        let Some(tok) = self.toks.get_mut(token.as_str()) else { return };
        let ws = tok.ws;
        if let Some(n) = self.nats.as_mut() {
            let msg = PubMsg::Delta { token: token.clone(), text: Arc::clone(&text), snapshot };
            if n.offer(msg) {
                if n.gapped.remove(token.as_str()) {
                    n.snapshots += 1;
                }
                if snapshot {
                    n.due.remove(token.as_str());
                    tok.snap_ms = now_ms;
                }
            } else {
                n.gapped.insert(token.clone());
            }
            if !snapshot && !n.due.contains_key(token.as_str()) {
                let at = snapshot_slot(
                    tok.snap_ms.saturating_add(n.interval_ms).max(now_ms),
                    n.interval_ms,
                    token.as_str(),
                );
                n.due.insert(token.clone(), at);
                n.queue.push(Reverse((at, token.clone())));
            }
            let bbo = top_of_book(book);
            if tok.bbo != Some(bbo) {
                tok.bbo = Some(bbo);
                let text = bbo_json(book, tok.seq);
                n.offer(PubMsg::Bbo { token: token.clone(), text });
            }
            if let Some(text) = trade {
                n.offer(PubMsg::Trade { market: book.market().clone(), text });
            }
        }
        if ws {
            let was_gapped = self.gapped.contains(token.as_str());
            if self.send(StreamMsg { token: token.clone(), to: None, text }) && was_gapped {
                self.gapped.remove(token.as_str());
                self.gap_snapshots += 1;
            }
        }
    }

    fn send(&mut self, msg: StreamMsg) -> bool {
        let token = msg.token.clone();
        if self.tx.try_send(msg).is_err() {
            self.dropped += 1;
            if self.toks.get(token.as_str()).is_some_and(|t| t.ws) {
                self.gapped.insert(token);
            }
            return false;
        }
        true
    }
}

impl NatsOut {
    /// Queues a message for this step's batch; `false` (dropped, counted) when the publisher's
    /// channel is full now, so the caller marks the gap as it happens.
    fn offer(&mut self, msg: PubMsg) -> bool {
        if self.tx.is_full() {
            self.dropped += 1;
            return false;
        }
        self.pending.push(msg);
        self.sent += 1;
        true
    }

    /// Hands the queued messages over as one batch. If the channel filled up meanwhile (other
    /// shards share it), they are dropped, counted, and their tokens' next messages are
    /// snapshots.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let Err(e) = self.tx.try_send(std::mem::take(&mut self.pending)) else { return };
        for m in e.into_inner() {
            self.sent -= 1;
            self.dropped += 1;
            match m {
                PubMsg::Delta { token, .. }
                | PubMsg::Snapshot { token, .. }
                | PubMsg::Bbo { token, .. } => {
                    self.gapped.insert(token);
                }
                // A lost reset: the token is gone from the tap; consumers learn of it from
                // the snapshot subject's next value, if the market comes back.
                PubMsg::Gone { .. } | PubMsg::Trade { .. } => {}
            }
        }
    }
}

fn wall_ms() -> u64 {
    crate::engine::clock::wall_ms()
}

/// Best bid and ask, price and size (0 for an empty side).
fn top_of_book(book: &Book) -> [u64; 4] {
    let raw = |l: Option<polybook::Level>| {
        l.map_or((0, 0), |l| (u64::from(l.price.units()), l.size.units()))
    };
    let (bp, bs) = raw(book.best_bid());
    let (ap, as_) = raw(book.best_ask());
    [bp, bs, ap, as_]
}

#[derive(serde::Serialize)]
struct Quote {
    price: Price,
    size: Size,
}

#[derive(serde::Serialize)]
struct BboOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    token_id: &'a str,
    seq: u64,
    timestamp_ms: u64,
    bid: Option<Quote>,
    ask: Option<Quote>,
}

fn bbo_json(book: &Book, seq: u64) -> Arc<str> {
    let q = |l: Option<polybook::Level>| l.map(|l| Quote { price: l.price, size: l.size });
    to_text(&BboOut {
        kind: "bbo",
        token_id: book.token().as_str(),
        seq,
        timestamp_ms: book.timestamp_ms(),
        bid: q(book.best_bid()),
        ask: q(book.best_ask()),
    })
}

fn snapshot_json(book: &Book, seq: u64, depth: Option<usize>) -> Arc<str> {
    let fresh = polybook::view::Freshness { now_ms: wall_ms(), feed_silent_ms: None };
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

    /// Each token's periodic snapshot falls in its own slot of the interval: never before
    /// the earliest allowed time, at most one interval after it, and books that all start
    /// changing at one moment spread over the interval instead of falling due together.
    #[test]
    fn periodic_snapshots_fall_in_each_tokens_slot_spread_over_the_interval() {
        let interval = 1000;
        let mut per_10ms = [0u32; 100];
        for i in 0..2000u32 {
            let token = format!("{}", 10_000_000_000u64 + u64::from(i) * 7919);
            for earliest in [0u64, 1, 999, 1000, 1_764_000_000_123] {
                let at = snapshot_slot(earliest, interval, &token);
                assert!(at >= earliest && at < earliest + interval, "{token} {earliest} {at}");
                // The same slot whatever the earliest time.
                assert_eq!(at % interval, snapshot_slot(5, interval, &token) % interval);
            }
            per_10ms
                [(snapshot_slot(1_764_000_000_000, interval, &token) % interval / 10) as usize] +=
                1;
        }
        // 2,000 books over 100 slots of 10 ms: 20 each on average, none near all of them.
        let most = per_10ms.iter().copied().max().unwrap_or(0);
        assert!(most <= 60, "one 10 ms slot holds {most} of 2000 snapshots");
        assert_eq!(snapshot_slot(42, 0, "1"), 42);
    }

    fn level(price: &str, size: &str) -> BookUpdate {
        BookUpdate::Level {
            side: polybook::Side::Buy,
            price: Price::parse(price).unwrap(),
            size: Size::parse(size).unwrap(),
            old: Size::ZERO,
        }
    }

    /// What a hand-over's messages say: (kind, snapshot?) for deltas, the other kinds by name.
    fn kinds(batch: &PubBatch) -> Vec<(&'static str, bool)> {
        batch
            .iter()
            .map(|m| match m {
                PubMsg::Delta { snapshot, .. } => ("delta", *snapshot),
                PubMsg::Snapshot { .. } => ("snapshot", true),
                PubMsg::Bbo { .. } => ("bbo", false),
                PubMsg::Trade { .. } => ("trade", false),
                PubMsg::Gone { .. } => ("gone", false),
            })
            .collect()
    }

    /// A step's NATS messages wait for `flush_nats` and leave as one batch; a batch the
    /// shared channel had no room for by then is counted as dropped and its token's next
    /// message is a snapshot, so a consumer sees the gap and its repair.
    #[test]
    fn a_steps_nats_messages_leave_as_one_batch_and_a_lost_batch_gaps_its_token() {
        let (ws_tx, _ws_rx) = flume::unbounded();
        let (tx, rx) = flume::bounded(1);
        let other_shard = tx.clone();
        let mut tap = StreamTap::new(ws_tx).with_nats(tx, 1000);
        let mut book = Book::new(TokenId::new("1"), MarketId::new("m"), TokenMeta::default());
        book.set_level(
            polybook::Side::Buy,
            Price::parse("0.5").unwrap(),
            Size::parse("10").unwrap(),
        );
        tap.on_update(&level("0.5", "10"), &book);
        book.set_level(
            polybook::Side::Buy,
            Price::parse("0.4").unwrap(),
            Size::parse("3").unwrap(),
        );
        tap.on_update(&level("0.4", "3"), &book);
        assert!(rx.is_empty(), "nothing leaves before the step ends");
        assert_eq!(tap.nats_pending(), 3, "two deltas and one top of book");
        tap.flush_nats();
        let got: Vec<PubBatch> = rx.try_iter().collect();
        assert_eq!(got.len(), 1, "one hand-over");
        assert_eq!(kinds(&got[0]), [("delta", false), ("bbo", false), ("delta", false)]);

        // Room at the change, none at the flush: another shard filled the channel meanwhile.
        book.set_level(polybook::Side::Buy, Price::parse("0.4").unwrap(), Size::ZERO);
        tap.on_update(&level("0.4", "0"), &book);
        assert_eq!(tap.nats_pending(), 1);
        let filler = vec![PubMsg::Trade { market: MarketId::new("x"), text: Arc::from("{}") }];
        other_shard.try_send(filler).unwrap();
        tap.flush_nats();
        let c = tap.nats_counters().unwrap();
        assert_eq!((c.sent, c.dropped), (3, 1));
        assert_eq!(tap.gaps(), [TokenId::new("1")]);
        assert_eq!(rx.try_iter().count(), 1, "only the other shard's message got in");

        // The token's next message repairs the gap: a snapshot, on the delta subject too.
        book.set_level(
            polybook::Side::Buy,
            Price::parse("0.3").unwrap(),
            Size::parse("1").unwrap(),
        );
        tap.on_update(&level("0.3", "1"), &book);
        tap.flush_nats();
        let got: Vec<PubBatch> = rx.try_iter().collect();
        assert_eq!(got.len(), 1);
        assert_eq!(kinds(&got[0])[0], ("delta", true));
        assert!(tap.gaps().is_empty());
    }

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
