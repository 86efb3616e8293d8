//! The discovery loop: each Gamma listing runs on a supervised blocking thread (ureq blocks),
//! the registry judges it, and the shards are told. A failed or refused run is retried with
//! backoff (1 s doubling up to the interval) and shown in `/stats`.

use std::time::{Duration, Instant};

use futures_lite::future;
use polybook::registry::Refusal;
use polybook::MarketId;

use super::{send_changes, ControlRef};
use crate::engine::discovery::{closed_markets, discover, open_markets};
use crate::engine::supervise;
use crate::net::Shutdown;

/// Least time between two discovery runs, whatever wakes it.
const DISCOVERY_GAP_MIN: Duration = Duration::from_secs(2);

pub async fn discovery_loop(control: ControlRef, tag_ids: Vec<u64>, stopping: Shutdown) {
    let mut fail_streak: u32 = 0;
    while !stopping.is_triggered() {
        let (url, limits, tags) =
            (control.gamma_url.clone(), control.gamma_limits.clone(), tag_ids.clone());
        let result = off_executor("discovery", &stopping, move || discover(&url, &tags, &limits));
        let ok = match result.await {
            Blocking::Stopped => return,
            Blocking::Died => {
                // The supervisor has the panic and fails the process; note it here too.
                note_failure(&control, "the discovery thread died".into());
                false
            }
            Blocking::Done(Err(e)) => {
                note_failure(&control, e.to_string());
                false
            }
            Blocking::Done(Ok(run)) => {
                {
                    let mut d = control.discovery.borrow_mut();
                    d.runs += 1;
                    d.requests += u64::from(run.requests);
                    d.retries += u64::from(run.retries);
                    d.last_markets = run.markets.len();
                    d.last_rejected = run.rejected;
                    d.last_ok = Some(Instant::now());
                    d.consecutive_failures = 0;
                }
                tracing::info!(markets = run.markets.len(), pages = run.pages, "discovery");
                let now = control.clock.now_ms();
                let out =
                    control.registry.borrow_mut().apply_listing(run.markets, !run.truncated, now);
                if let Some(refusal) = &out.refused {
                    note_refusal(&control, refusal);
                }
                send_changes(&control, out.changes).await;
                if !out.to_check.is_empty() {
                    close_checked(&control, &stopping, out.to_check).await;
                }
                match out.refused {
                    Some(refusal) => {
                        confirm_closed(&control, &stopping, refusal.to_confirm().to_vec()).await;
                        false
                    }
                    None => true,
                }
            }
        };
        fail_streak = if ok { 0 } else { fail_streak.saturating_add(1) };
        let now = control.clock.now_ms();
        let swept = control.registry.borrow_mut().sweep(now);
        send_changes(&control, swept).await;
        let wake = Shutdown::new();
        control.wake_discovery.replace(wake.clone());
        let interval = control.discovery_interval;
        if fail_streak > 0 {
            let backoff = Duration::from_secs(1 << (fail_streak - 1).min(10)).min(interval);
            future::or(glommio::timer::sleep(backoff), stopping.wait()).await;
            continue;
        }
        // A `new_market` hint may cut the wait short, but never below a minimum gap: on the
        // venue new markets arrive up to several per second, and Gamma's budget is shared.
        let gap = interval.min(DISCOVERY_GAP_MIN);
        future::or(glommio::timer::sleep(gap), stopping.wait()).await;
        let rest = interval.saturating_sub(gap);
        future::or(future::or(glommio::timer::sleep(rest), wake.wait()), stopping.wait()).await;
    }
}

fn note_refusal(control: &ControlRef, refusal: &Refusal) {
    let close_pct_max = control.registry.borrow().config().listing.close_pct_max;
    let why = format!(
        "listing refused: it would close {} of {} active markets (more than \
         discovery.close_pct_max = {close_pct_max} %); confirming with Gamma",
        refusal.candidates.len(),
        refusal.active,
    );
    tracing::warn!("{why}");
    let mut d = control.discovery.borrow_mut();
    d.last_error = Some(why);
    d.last_error_at = Some(Instant::now());
}

fn note_failure(control: &ControlRef, error: String) {
    tracing::warn!(error = %error, "discovery failed; keeping the last registry, retrying");
    let mut d = control.discovery.borrow_mut();
    d.runs += 1;
    d.failures += 1;
    d.consecutive_failures += 1;
    d.last_error = Some(error);
    d.last_error_at = Some(Instant::now());
}

/// Markets missing from enough listings are closed unless Gamma, asked by condition id, still
/// lists them open (the listings were cut short); if Gamma cannot be asked, none is closed
/// now (their absence counts start over).
async fn close_checked(control: &ControlRef, stopping: &Shutdown, ids: Vec<MarketId>) {
    let (url, limits) = (control.gamma_url.clone(), control.gamma_limits.clone());
    let asked = ids.clone();
    let answer = off_executor("gamma-check", stopping, move || open_markets(&url, &asked, &limits));
    let open: hashbrown::HashSet<MarketId> = match answer.await {
        Blocking::Done(Ok(open)) => open.into_iter().collect(),
        Blocking::Done(Err(e)) => {
            tracing::warn!(error = %e, candidates = ids.len(), "cannot check markets to close; none closed");
            return;
        }
        Blocking::Died | Blocking::Stopped => return,
    };
    if !open.is_empty() {
        tracing::warn!(
            kept = open.len(),
            candidates = ids.len(),
            "markets missing from the listings are still open on Gamma: kept"
        );
    }
    let now = control.clock.now_ms();
    let changes = control.registry.borrow_mut().close_checked(&ids, &open, now);
    send_changes(control, changes).await;
}

/// A refused listing's candidates are closed only if Gamma, asked by condition id, says so.
async fn confirm_closed(control: &ControlRef, stopping: &Shutdown, ids: Vec<MarketId>) {
    let (url, limits) = (control.gamma_url.clone(), control.gamma_limits.clone());
    let asked = ids.len();
    let answer =
        off_executor("gamma-confirm", stopping, move || closed_markets(&url, &ids, &limits));
    let closed = match answer.await {
        Blocking::Done(Ok(closed)) => closed,
        Blocking::Done(Err(e)) => {
            tracing::warn!(error = %e, "cannot confirm closed markets; none closed");
            return;
        }
        Blocking::Died | Blocking::Stopped => return,
    };
    tracing::info!(asked, closed = closed.len(), "refused listing: closed what Gamma confirmed");
    let now = control.clock.now_ms();
    let changes = control.registry.borrow_mut().confirm_closed(&closed, now);
    send_changes(control, changes).await;
}

/// The end of a blocking call run on its own thread.
pub enum Blocking<T> {
    Done(T),
    /// The thread ended without an answer (it panicked; the supervisor was told).
    Died,
    /// The engine is stopping.
    Stopped,
}

/// Runs `f` (ureq blocks: never on an executor) on a supervised thread and waits for it.
pub async fn off_executor<T: Send + 'static>(
    name: &'static str,
    stopping: &Shutdown,
    f: impl FnOnce() -> T + Send + 'static,
) -> Blocking<T> {
    let (tx, rx) = flume::bounded(1);
    let spawned = supervise::spawn_thread(name, move || {
        let _ = tx.send(f());
    });
    if let Err(e) = spawned {
        tracing::error!(thread = name, error = %e, "cannot start a thread");
        return Blocking::Died;
    }
    let answer = future::or(async { Some(rx.recv_async().await) }, async {
        stopping.wait().await;
        None
    });
    match answer.await {
        None => Blocking::Stopped,
        Some(Ok(v)) => Blocking::Done(v),
        Some(Err(_)) => Blocking::Died,
    }
}
