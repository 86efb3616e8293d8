//! The progress log line: markets, books live, connections and frames/s, every
//! `log.progress_interval_ms` (zero: never).

use std::time::{Duration, Instant};

use futures_lite::future;

use super::ControlRef;
use crate::net::Shutdown;

pub async fn progress_loop(control: ControlRef, every: Duration, stopping: Shutdown) {
    if every.is_zero() {
        return;
    }
    let mut last_frames = 0u64;
    let mut last_at = Instant::now();
    while !stopping.is_triggered() {
        future::or(glommio::timer::sleep(every), stopping.wait()).await;
        if stopping.is_triggered() {
            return;
        }
        let (mut books, mut live, mut frames, mut conns) = (0usize, 0usize, 0u64, 0usize);
        for s in control.fresh_stats().iter().flatten() {
            books += s.books;
            live += s.books_live;
            frames += s.store.frames;
            conns += s.connections.len();
        }
        let ms = (last_at.elapsed().as_millis() as u64).max(1);
        let rate = frames.saturating_sub(last_frames) * 1000 / ms;
        last_frames = frames;
        last_at = Instant::now();
        let markets = control.registry.borrow().len();
        tracing::info!(
            markets,
            books,
            books_live = live,
            connections = conns,
            frames_per_s = rate,
            "progress"
        );
    }
}
