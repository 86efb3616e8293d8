//! The `/ws` hub's glue: what a client's request names (resolved against the registry), which
//! shard streams each token, and the loop that hands the shards' messages to the hub.

use std::cell::RefCell;

use polybook::TokenId;

use crate::engine::control::recv_or_stop;
use crate::engine::control::ControlRef;
use crate::engine::mesh::Command;
use crate::engine::stream::{ClientRequest, Hub, StreamControl, StreamMsg};
use crate::net::Shutdown;

/// Live streams: the `/ws` hub and what it needs from control.
pub struct Streams {
    control: ControlRef,
    pub hub: RefCell<Hub>,
    pub stopping: Shutdown,
}

impl Streams {
    pub fn new(control: ControlRef, stopping: Shutdown) -> Streams {
        Streams { control, hub: RefCell::new(Hub::default()), stopping }
    }
}

impl StreamControl for Streams {
    fn resolve(&self, req: &ClientRequest) -> (Vec<TokenId>, Vec<String>) {
        let registry = self.control.registry.borrow();
        let (mut found, mut unknown) = (Vec::new(), Vec::new());
        for t in &req.tokens {
            match registry.token(t.as_str()) {
                Some((tok, _)) => found.push(tok.clone()),
                None => unknown.push(t.clone()),
            }
        }
        for m in &req.markets {
            match registry.get(m.as_str()) {
                Some(e) => found.extend(e.market.tokens.iter().cloned()),
                None => unknown.push(m.clone()),
            }
        }
        (found, unknown)
    }

    fn stream(&self, client: u64, tokens: Vec<TokenId>, depth: Option<usize>, on: bool) {
        let per = {
            let registry = self.control.registry.borrow();
            let mut per: Vec<Vec<TokenId>> = vec![Vec::new(); self.control.shards.len().max(1)];
            for t in tokens {
                let Some(shard) = registry.token(t.as_str()).map(|(_, e)| e.shard.index()) else {
                    continue;
                };
                if let Some(v) = per.get_mut(shard) {
                    v.push(t);
                }
            }
            per
        };
        for (shard, tokens) in per.into_iter().enumerate().filter(|(_, v)| !v.is_empty()) {
            let Some(tx) = self.control.shard(shard) else { continue };
            // Bounded: wait for room on a task rather than block the caller.
            glommio::spawn_local(async move {
                let _ = tx.send_async(Command::Stream { client, tokens, depth, on }).await;
            })
            .detach();
        }
    }

    fn hub(&self) -> &RefCell<Hub> {
        &self.hub
    }
}

/// Hands each stream message to the hub, which copies it to every subscriber's queue.
pub async fn hub_loop(live: std::rc::Rc<Streams>, streams: flume::Receiver<StreamMsg>) {
    while let Some(msg) = recv_or_stop(&streams, &live.stopping).await {
        live.hub.borrow_mut().deliver(&msg);
        // Deliver what else is queued without yielding per message.
        while let Ok(more) = streams.try_recv() {
            live.hub.borrow_mut().deliver(&more);
        }
    }
}
