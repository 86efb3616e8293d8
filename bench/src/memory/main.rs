//! `polybook-memory-bench`: what books cost in memory. For each depth it tracks N tokens in a
//! `BookStore` (two per market, as the engine does), applies one `book` snapshot of that many
//! levels per side to each, and reports the process's RSS growth per book — the store alone,
//! no sockets, no registry. Each depth runs in a child process of this binary, so one depth's
//! freed memory does not flatter the next. Each depth is measured with the venue-hash check off,
//! on (the default), and on with every book busy: a checked book that changes
//! `render_hot_changes_per_s` times in a second keeps its levels rendered for the hash.
//!
//! `cargo run --release -p polybook-bench --bin polybook-memory-bench -- [--books N] [--levels 20,100]`

use std::fmt::Write as _;
use std::process::Command;

use polybook::book::TokenMeta;
use polybook::store::NoSink;
use polybook::{BookStore, MarketId, Price, Size, StoreConfig, TokenId};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn book_frame(out: &mut String, market: &str, token: &str, levels: usize) {
    out.clear();
    let _ = write!(
        out,
        r#"{{"event_type":"book","market":"{market}","asset_id":"{token}","timestamp":"1","hash":"0","bids":["#
    );
    for i in 0..levels {
        let sep = if i > 0 { "," } else { "" };
        // Bids from 0.49 down, asks from 0.51 up, in the venue's order (worst first).
        let p = 490_000 - 1_000 * (levels - 1 - i) as u64;
        let _ = write!(out, r#"{sep}{{"price":"{}","size":"{}.5"}}"#, text(p), 10 + i);
    }
    out.push_str(r#"],"asks":["#);
    for i in 0..levels {
        let sep = if i > 0 { "," } else { "" };
        let p = 510_000 + 1_000 * (levels - 1 - i) as u64;
        let _ = write!(out, r#"{sep}{{"price":"{}","size":"{}.25"}}"#, text(p), 10 + i);
    }
    out.push_str(r#"],"tick_size":"0.001","last_trade_price":"0.500"}"#);
}

fn text(units: u64) -> String {
    format!("{}.{:06}", units / 1_000_000, units % 1_000_000).trim_end_matches('0').to_owned()
}

/// One depth, in this process: prints `levels books rss_delta per_book`.
fn child(books: usize, levels: usize, verify_hash: bool, busy: bool) {
    let cfg = StoreConfig { verify_hash, ..StoreConfig::default() };
    let mut store = BookStore::new(cfg);
    let meta = TokenMeta {
        tick_size: Some(Price::from_units(1_000)),
        min_order_size: Some(Size::from_units(5_000_000)),
        neg_risk: Some(false),
    };
    let ids: Vec<(MarketId, TokenId)> = (0..books)
        .map(|i| {
            let m = MarketId::new(&format!("0x{:064x}", i / 2));
            let t = TokenId::new(&format!("{:077}", 10u128.pow(30) + i as u128));
            (m, t)
        })
        .collect();
    let before = rss_bytes();
    let mut frame = String::with_capacity(64 << 10);
    for (m, t) in &ids {
        store.track(t.clone(), m.clone(), meta);
        book_frame(&mut frame, m.as_str(), t.as_str(), levels);
        store.apply_frame(&frame, &mut NoSink);
    }
    if busy {
        // One second of changes to every book (the store's clock, not the machine's), then
        // one more change that closes the second: each book decides to keep its rendering.
        let hot = u64::from(store.config().render_hot_changes_per_s);
        for k in 0..=hot {
            store.set_now_ms(if k == hot { 2_000 } else { 1_000 + k });
            for (m, t) in &ids {
                frame.clear();
                let size = 10 + k;
                let _ = write!(
                    frame,
                    r#"{{"event_type":"price_change","market":"{m}","timestamp":"{}","price_changes":[{{"asset_id":"{t}","price":"0.49","size":"{size}","side":"BUY","hash":"0"}}]}}"#,
                    2 + k,
                    m = m.as_str(),
                    t = t.as_str()
                );
                store.apply_frame(&frame, &mut NoSink);
            }
        }
        let kept = ids
            .iter()
            .filter(|(_, t)| store.get(t.as_str()).is_some_and(|b| b.keeps_rendered()))
            .count();
        assert_eq!(kept, books, "every busy book keeps its levels rendered");
    }
    let after = rss_bytes();
    let sample = store.get(ids[0].1.as_str()).map_or(0, |b| b.bids().len() + b.asks().len());
    assert_eq!(sample, 2 * levels, "the snapshot was not applied");
    let delta = after.saturating_sub(before);
    println!("{levels} {books} {delta} {}", delta / books as u64);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let books: usize = get("--books").and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let levels: Vec<usize> = get("--levels")
        .map_or("20,100", String::as_str)
        .split(',')
        .filter_map(|v| v.parse().ok())
        .collect();
    if let Some(l) = get("--child").and_then(|v| v.parse().ok()) {
        let has = |f: &str| args.iter().any(|a| a == f);
        child(books, l, has("--verify-hash"), has("--busy"));
        return;
    }
    println!("| levels per side | hash check | books | RSS growth | per book |");
    println!("|---|---|---|---|---|");
    let modes =
        [(false, false, "off"), (true, false, "on (default)"), (true, true, "on, every book busy")];
    for (l, (verify, busy, check)) in levels.iter().flat_map(|&l| modes.map(|m| (l, m))) {
        let exe = std::env::current_exe().unwrap_or_else(|_| "polybook-memory-bench".into());
        let mut cmd = Command::new(exe);
        cmd.args(["--child", &l.to_string(), "--books", &books.to_string()]);
        if verify {
            cmd.arg("--verify-hash");
        }
        if busy {
            cmd.arg("--busy");
        }
        let out = cmd.output();
        let Ok(out) = out else {
            eprintln!("cannot run the child for {l} levels");
            continue;
        };
        let line = String::from_utf8_lossy(&out.stdout);
        let f: Vec<u64> = line.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        if f.len() == 4 {
            let mib = f[2] as f64 / 1048576.0;
            println!("| {} | {check} | {} | {mib:.1} MiB | {} B |", f[0], f[1], f[3]);
        } else {
            eprintln!("child for {l} levels failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}
