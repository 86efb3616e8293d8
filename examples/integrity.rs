//! Integrity checks on a long seeded real-shaped stream (issue 17): generates one simulated
//! connection's frames (as `sim_capture` does), replays them through the store as `polybook
//! replay` would, and prints the verdicts by kind, the status marks and the share of false
//! alarms. With `--no-stale` the stream holds no genuine divergence, so every divergent
//! verdict is a false alarm.
//!
//! `cargo run --release --example integrity -- [--seed 7] [--markets 200] [--tokens 100]
//! [--events 200000] [--no-stale] [--yes-only]`

use polybook::book::TokenMeta;
use polybook::capture::{apply_capture_line, settle_at_end};
use polybook::sim::{capture_lines, capture_lines_yes_only, RealShape, SimConfig};
use polybook::store::{NoSink, StoreConfig};
use polybook::{BookStore, Size};

fn main() -> std::process::ExitCode {
    let mut cfg = SimConfig { seed: 7, markets: 200, ..SimConfig::default() };
    let (mut tokens, mut events, mut yes_only) = (100usize, 200_000usize, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--no-stale" => {
                cfg.real_shape = RealShape { stale_snapshot_permille: 0, ..RealShape::default() }
            }
            "--yes-only" => yes_only = true,
            "--seed" | "--markets" | "--tokens" | "--events" => {
                let Some(v) = args.next().and_then(|v| v.parse::<u64>().ok()) else {
                    eprintln!("{a} needs a number");
                    return std::process::ExitCode::FAILURE;
                };
                match a.as_str() {
                    "--seed" => cfg.seed = v,
                    "--markets" => cfg.markets = v as usize,
                    "--tokens" => tokens = v as usize,
                    _ => events = v as usize,
                }
            }
            _ => {
                eprintln!("unknown argument {a}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    let started = std::time::Instant::now();
    let lines = if yes_only {
        capture_lines_yes_only(cfg, tokens, events)
    } else {
        capture_lines(cfg, tokens, events)
    };
    let generated = started.elapsed();
    let meta =
        TokenMeta { tick_size: None, min_order_size: Size::parse("5").ok(), neg_risk: Some(false) };
    let config = StoreConfig { auto_track: true, default_meta: meta, ..StoreConfig::default() };
    let mut store = BookStore::new(config);
    let started = std::time::Instant::now();
    for l in &lines {
        apply_capture_line(&mut store, l, &mut NoSink);
    }
    settle_at_end(&mut store, &mut NoSink);
    let replayed = started.elapsed();
    let c = store.counters();
    let pct = |a: u64, b: u64| {
        #[allow(clippy::cast_precision_loss)]
        let p = 100.0 * a as f64 / b.max(1) as f64;
        p
    };
    println!(
        "frames {} (generated in {:.1} s, replayed in {:.2} s), books {}",
        lines.len(),
        generated.as_secs_f64(),
        replayed.as_secs_f64(),
        store.len()
    );
    for (name, k) in [("hash", &c.hash), ("bbo", &c.bbo)] {
        println!(
            "{name}: judged {} | matched now {} / after run {} / later {} | divergent {} ({:.3} %) | superseded {} | unverifiable {}",
            k.judged(),
            k.matched_now,
            k.matched_after_run,
            k.matched_later,
            k.divergent,
            pct(k.divergent, k.judged()),
            k.superseded,
            k.unverifiable
        );
    }
    println!(
        "marked suspect {}, resyncing {}; trade prices learned {}",
        c.books_marked_suspect, c.books_marked_resyncing, c.hash_ltp_learned
    );
    std::process::ExitCode::SUCCESS
}
