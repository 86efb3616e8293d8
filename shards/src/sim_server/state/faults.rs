//! Fault injection: per-connection faults and the Gamma faults the REST side answers with.

use std::time::Instant;

use async_tungstenite::tungstenite::Utf8Bytes;

use super::conns::push;
use super::{ConnId, Kill, State, UnknownConn};
use crate::sim_server::fault::{Fault, FaultKind};

/// What the `malformed` fault sends: a `price_change` cut off mid-object, the way a frame
/// truncated by a broken proxy looks.
const MALFORMED: &str = "{\"market\":\"0x5f65177b394277fd294cd75650044e32ba009a95022d88a0c1d5\
                         65897d72f8f1\",\"price_changes\":[{\"asset_id\":\"7182";

impl State {
    /// Applies a fault to one connection, or to all when `target` is None; returns the
    /// connections hit.
    pub(crate) fn inject(
        &mut self,
        fault: Fault,
        target: Option<ConnId>,
    ) -> Result<Vec<ConnId>, UnknownConn> {
        let now = Instant::now();
        if matches!(fault.kind, FaultKind::GammaEmpty | FaultKind::GammaTruncated) {
            for _ in 0..fault.count.clamp(1, 1000) {
                self.listing_faults.push_back(fault.kind);
            }
            self.counters.faults.bump(fault.kind);
            return Ok(Vec::new());
        }
        if !fault.kind.is_per_connection() {
            let status = if fault.kind == FaultKind::Gamma429 { 429 } else { 500 };
            self.gamma_fault = Some((status, now + fault.duration));
            self.counters.faults.bump(fault.kind);
            return Ok(Vec::new());
        }
        let ids = match target {
            Some(id) if self.conns.contains_key(&id) => vec![id],
            Some(id) => return Err(UnknownConn(id)),
            None => self.conn_ids(),
        };
        let max = self.limits.queue_frames_max;
        for id in &ids {
            let Some(conn) = self.conns.get_mut(id) else { continue };
            match fault.kind {
                FaultKind::Drop | FaultKind::Close1013 => {
                    let kill =
                        if fault.kind == FaultKind::Drop { Kill::Drop } else { Kill::Close1013 };
                    conn.kill.get_or_insert(kill);
                    conn.queue.clear();
                    conn.wake();
                }
                FaultKind::Silence => conn.silence_until = Some(now + fault.duration),
                FaultKind::Duplicate => {
                    conn.duplicate_left = conn.duplicate_left.saturating_add(fault.count)
                }
                FaultKind::Skip => conn.skip_left = conn.skip_left.saturating_add(fault.count),
                FaultKind::Malformed => {
                    push(conn, Utf8Bytes::from_static(MALFORMED), max, &mut self.counters)
                }
                FaultKind::Gamma429
                | FaultKind::Gamma500
                | FaultKind::GammaEmpty
                | FaultKind::GammaTruncated => {}
            }
            self.counters.faults.bump(fault.kind);
        }
        Ok(ids)
    }

    /// The status Gamma must answer with while a Gamma fault lasts.
    pub(crate) fn gamma_fault(&mut self) -> Option<u16> {
        let (status, until) = self.gamma_fault?;
        if Instant::now() < until {
            return Some(status);
        }
        self.gamma_fault = None;
        None
    }

    /// The spoiling of the listing that starts now, if one is pending.
    pub(crate) fn take_listing_fault(&mut self) -> Option<FaultKind> {
        self.listing_faults.pop_front()
    }
}
