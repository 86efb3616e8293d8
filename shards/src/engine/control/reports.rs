//! Data shards' reports: a resolved market enters its grace period; a `new_market` hint for a
//! market the registry does not know wakes discovery early.

use super::{recv_or_stop, ControlRef};
use crate::engine::mesh::Report;
use crate::net::Shutdown;

pub async fn report_loop(
    control: ControlRef,
    reports: flume::Receiver<Report>,
    stopping: Shutdown,
) {
    while let Some(report) = recv_or_stop(&reports, &stopping).await {
        match report {
            Report::Resolved { market, .. } => {
                let now = control.clock.now_ms();
                control.registry.borrow_mut().resolve(market.as_str(), now);
            }
            Report::NewMarkets { hints, .. } => {
                let unknown = {
                    let r = control.registry.borrow();
                    hints.iter().any(|h| !r.knows(h.market.as_str()))
                };
                if unknown {
                    // Triggered outside the borrow: waking may run code that replaces it.
                    let wake = control.wake_discovery.borrow().clone();
                    wake.trigger();
                }
            }
        }
    }
}
