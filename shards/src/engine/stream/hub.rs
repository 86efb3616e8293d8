//! The control shard's side of the streams: clients, their subscriptions, fan-out.

use std::sync::Arc;

use hashbrown::{HashMap, HashSet};
use polybook::TokenId;

use super::StreamMsg;
use crate::net::Shutdown;

/// The control shard's side: clients, their subscriptions, fan-out.
#[derive(Default)]
pub struct Hub {
    pub(super) clients: HashMap<u64, HubClient>,
    subs: HashMap<TokenId, HashSet<u64>>,
    next_id: u64,
    pub clients_dropped_slow: u64,
    pub messages_sent: u64,
}

pub(super) struct HubClient {
    tx: flume::Sender<Arc<str>>,
    kill: Shutdown,
    pub(super) tokens: HashSet<TokenId>,
}

impl Hub {
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// Registers a client; returns its id, its queue and the signal that disconnects it.
    pub fn join(&mut self, buffer: usize) -> (u64, flume::Receiver<Arc<str>>, Shutdown) {
        self.next_id += 1;
        let (tx, rx) = flume::bounded(buffer.max(1));
        let kill = Shutdown::new();
        self.clients
            .insert(self.next_id, HubClient { tx, kill: kill.clone(), tokens: HashSet::new() });
        (self.next_id, rx, kill)
    }

    /// Adds tokens to a client; returns those that had no subscriber before.
    pub fn subscribe(&mut self, client: u64, tokens: &[TokenId]) -> Vec<TokenId> {
        let mut first = Vec::new();
        let Some(c) = self.clients.get_mut(&client) else { return first };
        for t in tokens {
            c.tokens.insert(t.clone());
            let subs = self.subs.entry(t.clone()).or_default();
            if subs.is_empty() {
                first.push(t.clone());
            }
            subs.insert(client);
        }
        first
    }

    /// Removes tokens from a client; returns those left with no subscriber.
    pub fn unsubscribe(&mut self, client: u64, tokens: &[TokenId]) -> Vec<TokenId> {
        let mut last = Vec::new();
        if let Some(c) = self.clients.get_mut(&client) {
            for t in tokens {
                c.tokens.remove(t);
            }
        }
        for t in tokens {
            if let Some(subs) = self.subs.get_mut(t.as_str()) {
                subs.remove(&client);
                if subs.is_empty() {
                    self.subs.remove(t.as_str());
                    last.push(t.clone());
                }
            }
        }
        last
    }

    /// Removes a client; returns tokens left with no subscriber.
    pub fn leave(&mut self, client: u64) -> Vec<TokenId> {
        let Some(c) = self.clients.remove(&client) else { return Vec::new() };
        c.kill.trigger();
        let tokens: Vec<TokenId> = c.tokens.into_iter().collect();
        self.unsubscribe(client, &tokens)
    }

    /// Delivers one message; a client whose queue is full is disconnected (slow consumer).
    pub fn deliver(&mut self, msg: &StreamMsg) {
        let targets: Vec<u64> = match msg.to {
            Some(c) => vec![c],
            None => self
                .subs
                .get(msg.token.as_str())
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
        };
        for id in targets {
            let Some(c) = self.clients.get(&id) else { continue };
            if !c.tokens.contains(msg.token.as_str()) {
                continue;
            }
            if c.tx.try_send(Arc::clone(&msg.text)).is_ok() {
                self.messages_sent += 1;
            } else {
                self.clients_dropped_slow += 1;
                // Its tokens stay streamed until the client task leaves; it is gone soon.
                c.kill.trigger();
            }
        }
    }
}
