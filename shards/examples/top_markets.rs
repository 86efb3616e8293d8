//! Embeds polybook as a library: starts the simulated exchange and an engine with a
//! `BookHandler`, then prints the best bid/ask of the ten most active markets.
//!
//! `cargo run --release -p polybook-shards --example top_markets -- [SECONDS]`
//!
//! Against the real venue, drop the simulator and start the engine with your config.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use polybook::store::BookUpdate;
use polybook::Book;
use polybook_shards::config::Config;
use polybook_shards::engine::{BookHandler, Engine};
use polybook_shards::sim_server::{spawn_sim_server, SimServerConfig};

/// Per market: updates seen, and the latest best bid / best ask of its first token seen.
type Board = Arc<Mutex<HashMap<String, (u64, String)>>>;

/// Runs on one data shard. It counts locally and publishes every 256 updates, so the shared
/// board's lock stays off the hot path.
struct Activity {
    board: Board,
    local: HashMap<String, (u64, String)>,
    pending: u32,
}

impl BookHandler for Activity {
    fn on_update(&mut self, update: &BookUpdate, book: &Book) {
        if !matches!(update, BookUpdate::Level { .. } | BookUpdate::Snapshot) {
            return;
        }
        let top = match (book.best_bid(), book.best_ask()) {
            (Some(b), Some(a)) => format!("{} / {}", b.price, a.price),
            _ => "-".to_owned(),
        };
        let e = self.local.entry(book.market().to_string()).or_default();
        e.0 += 1;
        e.1 = top;
        self.pending += 1;
        if self.pending >= 256 {
            self.pending = 0;
            if let Ok(mut board) = self.board.lock() {
                for (m, (n, top)) in self.local.drain() {
                    let b = board.entry(m).or_default();
                    b.0 += n;
                    b.1 = top;
                }
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let sim =
        spawn_sim_server(SimServerConfig { markets: 200, rate: 2000.0, ..Default::default() })?;
    let mut cfg = Config::default();
    cfg.endpoints.gamma_url = sim.http_url();
    cfg.endpoints.ws_url = sim.ws_url();
    cfg.api.listen = "127.0.0.1:0".into();
    cfg.log.progress_interval_ms = 0;
    let board: Board = Arc::default();
    let for_shards = Arc::clone(&board);
    let engine = Engine::builder(cfg.validate()?)
        .handler(move |_shard| Activity {
            board: Arc::clone(&for_shards),
            local: HashMap::new(),
            pending: 0,
        })
        .start()?;
    println!("engine API on http://{}; watching for {seconds} s", engine.api_addr());
    std::thread::sleep(Duration::from_secs(seconds));
    let mut top: Vec<(String, (u64, String))> =
        board.lock().map(|b| b.clone().into_iter().collect()).unwrap_or_default();
    top.sort_by_key(|e| std::cmp::Reverse(e.1 .0));
    println!("{:<68} {:>8}  best bid / best ask", "market", "updates");
    for (market, (n, quote)) in top.iter().take(10) {
        println!("{market:<68} {n:>8}  {quote}");
    }
    engine.stop();
    sim.stop()?;
    Ok(())
}
