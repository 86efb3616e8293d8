//! The exchange's counters, as `/sim/status` shows them.

use serde::Serialize;

use super::FaultKind;

/// Events generated, by kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EventCounts {
    pub order: u64,
    pub trade: u64,
    pub tick_size_change: u64,
    pub new_market: u64,
    pub resolution: u64,
    pub idle: u64,
}

/// Faults injected, by kind (a fault on every connection counts once per connection).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultCounts {
    pub drop: u64,
    pub close_1013: u64,
    pub silence: u64,
    pub duplicate: u64,
    pub skip: u64,
    pub malformed: u64,
    pub gamma_429: u64,
    pub gamma_500: u64,
    pub gamma_empty: u64,
    pub gamma_truncated: u64,
}

impl FaultCounts {
    pub(super) fn bump(&mut self, kind: FaultKind) {
        let c = match kind {
            FaultKind::Drop => &mut self.drop,
            FaultKind::Close1013 => &mut self.close_1013,
            FaultKind::Silence => &mut self.silence,
            FaultKind::Duplicate => &mut self.duplicate,
            FaultKind::Skip => &mut self.skip,
            FaultKind::Malformed => &mut self.malformed,
            FaultKind::Gamma429 => &mut self.gamma_429,
            FaultKind::Gamma500 => &mut self.gamma_500,
            FaultKind::GammaEmpty => &mut self.gamma_empty,
            FaultKind::GammaTruncated => &mut self.gamma_truncated,
        };
        *c += 1;
    }
}

/// Connections ended, by cause.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CloseCounts {
    pub client: u64,
    pub idle: u64,
    pub slow_consumer: u64,
    pub fault_drop: u64,
    pub fault_close_1013: u64,
    pub error: u64,
    pub shutdown: u64,
}

/// The `User-Agent` of one kind of request, as the exchange saw it. The venue sits behind
/// Cloudflare, so tests check that every request of the engine names itself.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentSeen {
    pub requests: u64,
    /// Requests without a `User-Agent` header (or with an empty one).
    pub missing: u64,
    /// The last one seen (cut to 256 characters).
    pub last: Option<String>,
}

impl AgentSeen {
    pub(crate) fn note(&mut self, agent: Option<&str>) {
        self.requests += 1;
        match agent.map(str::trim).filter(|a| !a.is_empty()) {
            None => self.missing += 1,
            Some(a) if self.last.as_deref() == Some(a) => {}
            Some(a) => self.last = Some(a.chars().take(256).collect()),
        }
    }
}

/// `User-Agent`s by endpoint kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UserAgents {
    /// `/markets/keyset`, `/markets`.
    pub gamma: AgentSeen,
    /// CLOB REST: `/book`, `/books`.
    pub clob: AgentSeen,
    /// `/ws/market` upgrade requests.
    pub ws: AgentSeen,
}

/// The exchange's counters, as `/sim/status` shows them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SimCounters {
    pub events: u64,
    pub events_by_kind: EventCounts,
    pub frames_generated: u64,
    /// Frames put on connection queues (a frame for three connections counts three times).
    pub frames_queued: u64,
    /// Frames written and flushed to sockets.
    pub frames_sent: u64,
    /// Data frames lost to the `silence` fault.
    pub frames_silenced: u64,
    pub connections_opened: u64,
    pub closes: CloseCounts,
    pub faults: FaultCounts,
    pub client_frames: u64,
    /// Client frames that were not `PING` or a subscription the venue understands.
    pub client_frames_ignored: u64,
    /// A second `type:"market"` frame on an open connection (ignored, like the venue does).
    pub repeated_open_ignored: u64,
    pub pings: u64,
    pub user_agents: UserAgents,
}
