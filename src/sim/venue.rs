//! The simulated venue's market channel without sockets: connections by id, their
//! subscriptions, the frames queued for each, and per-connection faults. The deterministic
//! simulation (`sim::dst`) drives it in virtual time; the socket server keeps its own copy
//! of these rules (`shards/src/sim_server/state/`) with real queues and wakers.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use hashbrown::HashSet;

use super::model::{EventKind, SimExchange, SimFrame};
use crate::ids::TokenId;

/// One client connection as the venue sees it.
#[derive(Debug, Default)]
pub struct VenueConn {
    tokens: HashSet<TokenId>,
    opened: bool,
    custom: bool,
    /// Frames waiting to go out, oldest first.
    pub queue: VecDeque<String>,
    /// No data (and no PONG) until then: a frozen connection.
    pub frozen_until_ms: u64,
    /// PONGs still answered but no data until then: the venue's silent freeze.
    pub silent_until_ms: u64,
    /// Data frames to lose (a gap the engine must detect).
    pub skip: u32,
    /// Data frames to send twice.
    pub duplicate: u32,
}

impl VenueConn {
    pub fn subscribed(&self) -> usize {
        self.tokens.len()
    }
}

/// The market channel: connections keyed by the client's socket number.
#[derive(Debug)]
pub struct Venue {
    pub ex: SimExchange,
    pub conns: BTreeMap<u64, VenueConn>,
    /// Market index → connections subscribed to either token.
    routes: BTreeMap<u32, BTreeSet<u64>>,
    /// Frames a connection may have queued before the venue drops it (1013, slow consumer).
    pub queue_max: usize,
    pub frames_skipped: u64,
    pub frames_duplicated: u64,
    /// Skips may hit opening dumps too (as the socket simulator's do); without dynamic
    /// subscribe the engine has no way to ask again short of reconnecting, so runs without
    /// it keep dumps whole.
    pub skip_dumps: bool,
}

impl Venue {
    pub fn new(ex: SimExchange) -> Venue {
        Venue {
            ex,
            conns: BTreeMap::new(),
            routes: BTreeMap::new(),
            queue_max: 100_000,
            frames_skipped: 0,
            frames_duplicated: 0,
            skip_dumps: true,
        }
    }

    pub fn connect(&mut self, id: u64) {
        self.conns.insert(id, VenueConn::default());
    }

    pub fn disconnect(&mut self, id: u64) {
        if self.conns.remove(&id).is_some() {
            for subs in self.routes.values_mut() {
                subs.remove(&id);
            }
        }
    }

    /// One client text frame: `PING`, a subscription, or something ignored.
    pub fn client_text(&mut self, id: u64, text: &str, now_ms: u64) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if text == "PING" {
            if now_ms >= conn.frozen_until_ms {
                conn.queue.push_back("PONG".to_owned());
            }
            return;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else { return };
        let ids: Vec<String> = v
            .get("assets_ids")
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let custom = v.get("custom_feature_enabled").and_then(serde_json::Value::as_bool);
        let op = v.get("operation").and_then(|o| o.as_str()).map(str::to_ascii_lowercase);
        let kind = v.get("type").and_then(|o| o.as_str()).map(str::to_ascii_lowercase);
        match (op.as_deref(), kind.as_deref()) {
            (Some("subscribe"), _) => {
                if let Some(c) = custom {
                    conn.custom = c;
                }
                conn.opened = true;
                self.subscribe(id, &ids);
            }
            (Some("unsubscribe"), _) => self.unsubscribe(id, &ids),
            (None, Some("market")) if !conn.opened => {
                conn.opened = true;
                conn.custom = custom.unwrap_or(false);
                self.subscribe(id, &ids);
            }
            _ => {}
        }
    }

    fn subscribe(&mut self, id: u64, ids: &[String]) {
        let mut fresh = Vec::new();
        let Some(conn) = self.conns.get_mut(&id) else { return };
        for t in ids {
            if conn.tokens.insert(TokenId::new(t)) {
                fresh.push(t.clone());
                if let Some((m, _)) = self.ex.market_of_token(t) {
                    self.routes.entry(m).or_default().insert(id);
                }
            }
        }
        let dump = self.ex.opening_dump(fresh.iter().map(String::as_str));
        if self.skip_dumps {
            self.push_data(id, dump);
        } else if let Some(conn) = self.conns.get_mut(&id) {
            conn.queue.push_back(dump);
        }
    }

    fn unsubscribe(&mut self, id: u64, ids: &[String]) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let mut markets = BTreeSet::new();
        for t in ids {
            conn.tokens.remove(t.as_str());
            if let Some((m, _)) = self.ex.market_of_token(t) {
                markets.insert(m);
            }
        }
        for m in markets {
            let still = self
                .ex
                .market(m)
                .is_some_and(|mk| mk.tokens.iter().any(|t| conn.tokens.contains(t.as_str())));
            if !still {
                if let Some(subs) = self.routes.get_mut(&m) {
                    subs.remove(&id);
                }
            }
        }
    }

    /// One venue event at `now_ms`, its frames queued for every connection they concern.
    pub fn step(&mut self, now_ms: u64) -> EventKind {
        let mut frames = Vec::new();
        let kind = self.ex.step(now_ms, &mut frames);
        for f in frames {
            self.dispatch(f, now_ms);
        }
        kind
    }

    /// An order on one market now (both tokens' books change and carry fresh claims).
    pub fn order(&mut self, market: u32, now_ms: u64) {
        let mut frames = Vec::new();
        self.ex.order(market, &mut frames);
        for f in frames {
            self.dispatch(f, now_ms);
        }
    }

    fn dispatch(&mut self, frame: SimFrame, now_ms: u64) {
        let ids: Vec<u64> = if frame.broadcast {
            self.conns.iter().filter(|(_, c)| c.custom).map(|(&id, _)| id).collect()
        } else {
            let only = frame
                .token
                .and_then(|o| self.ex.market(frame.market)?.tokens.get(usize::from(o)).cloned());
            let Some(subs) = self.routes.get(&frame.market) else { return };
            subs.iter()
                .copied()
                .filter(|id| {
                    self.conns.get(id).is_some_and(|c| {
                        (!frame.custom || c.custom)
                            && only.as_ref().is_none_or(|t| c.tokens.contains(t.as_str()))
                    })
                })
                .collect()
        };
        for id in ids {
            let live = self
                .conns
                .get(&id)
                .is_some_and(|c| now_ms >= c.frozen_until_ms && now_ms >= c.silent_until_ms);
            if live {
                self.push_data(id, frame.text.clone());
            }
        }
    }

    /// Queues a data frame, losing or doubling it while a fault says so.
    fn push_data(&mut self, id: u64, text: String) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if conn.skip > 0 {
            conn.skip -= 1;
            self.frames_skipped += 1;
            return;
        }
        if conn.duplicate > 0 {
            conn.duplicate -= 1;
            self.frames_duplicated += 1;
            conn.queue.push_back(text.clone());
        }
        conn.queue.push_back(text);
    }

    /// Connections whose queue is over the limit: the venue drops them as slow consumers.
    pub fn slow_consumers(&self) -> Vec<u64> {
        self.conns
            .iter()
            .filter(|(_, c)| c.queue.len() > self.queue_max)
            .map(|(&id, _)| id)
            .collect()
    }
}
