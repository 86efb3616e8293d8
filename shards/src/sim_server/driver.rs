//! The exchange's clockwork: the generator that runs the model at the configured event rate,
//! and the seeded random fault schedule.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::fault::FaultPlan;
use super::state::State;
use super::wall_ms;
use super::ws::timeout;
use crate::net::Shutdown;

/// How often the generator wakes.
const TICK: Duration = Duration::from_millis(1);

/// How often a paused (or zero-rate) generator looks again: waking every millisecond for
/// nothing cost a few percent of a core that benches share with the engine.
const IDLE_TICK: Duration = Duration::from_millis(50);

/// Most event debt carried across ticks, so a stalled executor does not come back with a
/// burst of seconds' worth of events.
const BACKLOG_MAX: Duration = Duration::from_millis(50);

/// Most time one tick may spend generating; the rest of the debt waits for the next tick, so
/// writers and HTTP requests still get the executor when the rate is beyond what a core can
/// generate.
const TICK_WORK_MAX: Duration = Duration::from_millis(2);

/// Events generated between two looks at the tick's time budget.
const CHUNK: u128 = 32;

/// One event in the generator's fixed-point unit (milli-events times nanoseconds per second).
const EVENT_UNITS: u128 = 1_000 * 1_000_000_000;

/// `rate` (events per second) in thousandths of an event per second. The rate is a float
/// config knob; it is turned into an integer once here, and the generator's arithmetic is
/// integer (no float ever touches prices or sizes).
#[allow(clippy::float_arithmetic)]
pub(crate) fn rate_milli(rate: f64) -> u128 {
    if !(rate.is_finite() && rate > 0.0) {
        return 0;
    }
    (rate * 1_000.0).round().min(1e15) as u128
}

/// Holds `rate` events per second unless paused; each tick runs the events owed since the
/// last one and carries the fraction. Behind schedule it only yields between slices instead of
/// sleeping, so a rate beyond one core's capacity runs the core flat out while writers and
/// HTTP requests still get their turns.
pub(crate) async fn generate(state: Rc<RefCell<State>>, rate_milli: u128, shutdown: Shutdown) {
    let mut last = Instant::now();
    let mut owed: u128 = 0;
    let owed_max = rate_milli * BACKLOG_MAX.as_nanos() + EVENT_UNITS;
    let mut idle = false;
    loop {
        if owed >= EVENT_UNITS {
            futures_lite::future::yield_now().await;
            if shutdown.is_triggered() {
                return;
            }
        } else if timeout(if idle { IDLE_TICK } else { TICK }, shutdown.wait()).await.is_some() {
            return;
        }
        let now = Instant::now();
        let elapsed = now.duration_since(last).as_nanos();
        last = now;
        let mut st = state.borrow_mut();
        idle = st.paused || rate_milli == 0;
        if idle {
            owed = 0;
            continue;
        }
        owed = (owed + rate_milli * elapsed).min(owed_max);
        let now_ms = wall_ms();
        while owed >= EVENT_UNITS && now.elapsed() < TICK_WORK_MAX {
            let n = (owed / EVENT_UNITS).min(CHUNK);
            owed -= n * EVENT_UNITS;
            st.step_n(u64::try_from(n).unwrap_or(u64::MAX), now_ms);
        }
    }
}

/// Injects faults at the plan's random times, on connections picked by the plan.
pub(crate) async fn random_faults(
    state: Rc<RefCell<State>>,
    mut plan: FaultPlan,
    shutdown: Shutdown,
) {
    loop {
        if timeout(plan.next_gap(), shutdown.wait()).await.is_some() {
            return;
        }
        let mut st = state.borrow_mut();
        // A paused venue is at rest: tests compare books with the truth then.
        if st.paused || !st.random_faults_on {
            continue;
        }
        let ids = st.conn_ids();
        let (fault, pos) = plan.next_fault(ids.len());
        if fault.kind.is_per_connection() && ids.is_empty() {
            continue;
        }
        let target = ids.get(pos).copied();
        tracing::debug!(kind = fault.kind.as_str(), conn = ?target, "random fault");
        let _ = st.inject(fault, target.filter(|_| fault.kind.is_per_connection()));
    }
}
