//! `GET /sim/status`: a snapshot of the model, counters, faults and every connection.

use std::time::Instant;

use serde::Serialize;

use super::{ConnId, SimCounters, State};

impl State {
    /// `GET /sim/status`.
    pub(crate) fn status(&self) -> Status<'_> {
        let now = Instant::now();
        let queues_empty = self.queues_empty();
        let connections = self
            .conns
            .iter()
            .map(|(id, c)| ConnStatus {
                id: *id,
                tokens: c.tokens.len(),
                tokens_ignored: c.ignored.len(),
                custom: c.custom,
                frames_sent: c.frames_sent,
                queue_depth: c.queue.len(),
                in_flight: c.in_flight,
                silenced: c.silence_until.is_some_and(|u| now < u),
                silenced_frames: c.frames_silenced,
                duplicate_pending: c.duplicate_left,
                closing: c.kill.is_some(),
                client_frames: c.client_frames,
                client_frames_ignored: c.client_frames_ignored,
            })
            .collect();
        let gamma_fault =
            self.gamma_fault.filter(|(_, until)| now < *until).map(|(s, until)| GammaFaultStatus {
                status: s,
                remaining_ms: u64::try_from(until.saturating_duration_since(now).as_millis())
                    .unwrap_or(u64::MAX),
            });
        Status {
            paused: self.paused,
            at_rest: self.paused && queues_empty,
            queues_empty,
            rate: self.rate,
            now_ms: self.ex.now_ms(),
            markets: self.ex.markets().len(),
            markets_active: self.ex.active_count(),
            counters: &self.counters,
            gamma_fault,
            connections,
        }
    }
}

/// `GET /sim/status` body.
#[derive(Debug, Serialize)]
pub(crate) struct Status<'a> {
    pub paused: bool,
    /// Paused and every queue flushed: a client that applied every frame holds the truth.
    pub at_rest: bool,
    pub queues_empty: bool,
    pub rate: f64,
    pub now_ms: u64,
    pub markets: usize,
    pub markets_active: usize,
    #[serde(flatten)]
    pub counters: &'a SimCounters,
    pub gamma_fault: Option<GammaFaultStatus>,
    pub connections: Vec<ConnStatus>,
}

#[derive(Debug, Serialize)]
pub(crate) struct GammaFaultStatus {
    pub status: u16,
    pub remaining_ms: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct ConnStatus {
    pub id: ConnId,
    pub tokens: usize,
    pub tokens_ignored: usize,
    pub custom: bool,
    pub frames_sent: u64,
    pub queue_depth: usize,
    pub in_flight: usize,
    pub silenced: bool,
    pub silenced_frames: u64,
    pub duplicate_pending: u32,
    pub closing: bool,
    pub client_frames: u64,
    pub client_frames_ignored: u64,
}
