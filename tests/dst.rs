//! Deterministic simulation in CI: seeds 0, 1, 2, … run through `sim::dst` until the count or
//! the time budget is reached (`POLYBOOK_DST_SEEDS`, default 2,000 in all; `POLYBOOK_DST_BUDGET_S`,
//! default 200 for each half). Seeds are fixed, so a failure here fails the same way on any machine:
//! `cargo run --release -p polybook --example dst -- --seed N --trace` replays it.

use std::time::{Duration, Instant};

use polybook::sim::dst::{run, DstConfig};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

// Two tests, even and odd seeds, so both cores of a CI machine run seeds.
#[test]
fn even_seeds_keep_every_invariant_and_end_with_the_truth() {
    run_seeds(0);
}

#[test]
fn odd_seeds_keep_every_invariant_and_end_with_the_truth() {
    run_seeds(1);
}

fn run_seeds(parity: u64) {
    let seeds = env_u64("POLYBOOK_DST_SEEDS", 2_000) / 2;
    let budget = Duration::from_secs(env_u64("POLYBOOK_DST_BUDGET_S", 200));
    let cfg = DstConfig::default();
    let started = Instant::now();
    let (mut ran, mut events, mut frames, mut recycles, mut mid_recycle) = (0u64, 0, 0, 0, 0);
    let mut books = 0usize;
    for seed in (0..seeds).map(|i| 2 * i + parity) {
        if started.elapsed() > budget {
            break;
        }
        match run(seed, &cfg, false) {
            Ok((r, _)) => {
                ran += 1;
                events += r.events;
                frames += r.frames_to_engine;
                recycles += r.recycles_started;
                mid_recycle += r.untracked_mid_recycle;
                books += r.books_checked;
            }
            Err(f) => panic!("{f}"),
        }
    }
    eprintln!(
        "dst: {ran} seeds in {:.1} s: {events} events, {frames} frames, {recycles} recycles, \
         {mid_recycle} markets closed mid-recycle, {books} books compared with the truth",
        started.elapsed().as_secs_f64()
    );
    // However slow the machine, the budget buys a real sample.
    assert!(ran >= seeds.min(50), "only {ran} seeds ran");
    assert!(mid_recycle > 0, "no run closed a market mid-recycle: the old crash is not exercised");
}

#[test]
fn a_seed_replays_exactly() {
    let cfg = DstConfig::default();
    let one = |seed| run(seed, &cfg, false).unwrap_or_else(|f| panic!("{f}")).0;
    let (a, b) = (one(7), one(7));
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.events, b.events);
    let c = one(8);
    assert_ne!(a.digest, c.digest, "different seeds, different runs");
}
