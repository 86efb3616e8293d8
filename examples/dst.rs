//! Runs the deterministic simulation: `--seed N` (one seed, exactly as CI ran it), `--seeds
//! A..B`, `--trace` (print every event of a single seed).
//!
//! `cargo run --release -p polybook --example dst -- --seed 17 --trace`

use polybook::sim::dst::{run, DstConfig};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seeds = 0..200u64;
    let mut trace = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seed" => {
                let n = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                seeds = n..n + 1;
            }
            "--seeds" => {
                let r = it.next().map(String::as_str).unwrap_or("0..200");
                let (a, b) = r.split_once("..").unwrap_or(("0", "200"));
                seeds = a.parse().unwrap_or(0)..b.parse().unwrap_or(200);
            }
            "--trace" => trace = true,
            other => {
                eprintln!("unknown argument {other}; use --seed N, --seeds A..B, --trace");
                std::process::exit(2);
            }
        }
    }
    let cfg = DstConfig::default();
    let started = std::time::Instant::now();
    let (mut ok, mut failed) = (0, 0);
    for seed in seeds {
        match run(seed, &cfg, trace) {
            Ok((report, events)) => {
                for e in &events {
                    println!("{e}");
                }
                println!("{report:?}");
                ok += 1;
            }
            Err(f) => {
                println!("{f}");
                failed += 1;
            }
        }
    }
    println!("{ok} passed, {failed} failed in {:.1} s", started.elapsed().as_secs_f64());
    if failed > 0 {
        std::process::exit(1);
    }
}
