//! `polybook-e2e-bench`: the end-to-end load harness. The simulated exchange and the engine run
//! in this one process, on 127.0.0.1, as they would in `polybook demo`.
//!
//! ```sh
//! cargo run --release -p polybook-bench --bin polybook-e2e-bench -- --quick   # <= 2 min
//! cargo run --release -p polybook-bench --bin polybook-e2e-bench -- --full    # ~10 min
//! ```
//!
//! Phases (see BENCHMARKS.md for results and how to read them):
//! 1. **wire**: the simulator's WebSocket frames/s to a plain client that subscribes to every
//!    token and only counts frames (tungstenite decodes the WebSocket framing and checks UTF-8;
//!    no JSON); markets listed during the run are followed on extra connections, as the
//!    engine does. The simulator runs flat out, so this is the ceiling of simulator + loopback
//!    on this machine, not of the wire alone.
//! 2. **engine**: a fresh simulator and engine per step (so each step's latency histogram is
//!    its own) at increasing simulator rates, with 1 and 2 data shards. Reports frames and
//!    events applied per second (engine `/stats`), apply latency percentiles (per-shard
//!    `apply_ns_*`: frame received -> applied), CPU time per frame (from `/proc/self/task`),
//!    then pauses the simulator, waits until it is at rest, and compares books with the truth.
//! 3. **scale** (run first, while the process is fresh): cold start against many markets: time
//!    until every book is live, and the RSS the engine added (VmRSS before engine start vs
//!    after all books live). Here the simulator runs in a child process (this binary with
//!    `--sim-child`), so the RSS delta is the engine's alone.
//! 4. **api** (`--full` or `--only api`): API under load. Two steps at a steady rate (2,000
//!    markets, 1 data shard, 20,000 events/s): without API clients, then with 8 HTTP clients
//!    (threads) asking for `/books/{token}?depth=10` and 4 WebSocket clients on `/ws` (50 tokens
//!    each). Reports HTTP queries/s and latency, WS messages/s, and the engine's frames/s and
//!    apply latency in both steps.
//! 5. **api-health** (`--full` or `--only api-health`): the cheap endpoints
//!    (`/health`, `/ready`, `/stats`, `/metrics`, `/markets?limit=100`, and `/books/{token}`
//!    apart) from 4 paced client threads at 1,000 and 5,000 requests/s total while the feed
//!    runs, 2,000 and 5,000 markets (`--api-markets`), one fresh engine per step
//!    (`api_load.rs`). Reports requests/s, HTTP p50/p99, apply p50/p99/p99.9 and the data
//!    shard's CPU per request (its run time in the step minus what the feed costs it in a
//!    quiet step, per request).
//!
//! `--soak MINUTES` (only that, never part of `--quick`/`--full`): the same steady rate with the
//! simulator's random faults on; RSS and books by status printed every minute; at the end the
//! simulator is paused and every book compared with the truth.
//!
//! Everything shares this machine's CPUs (the simulator generating and hashing frames, the
//! engine, the harness polling, and anything else running): each measurement first waits a
//! little for a quiet machine and reports the share of CPU other processes took during it.
//! The JSON result goes to `target/bench-e2e.json` by default.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

mod api;
mod api_load;
mod args;
mod harness;
mod report;
mod soak;
mod steps;
mod truth;
mod wire;

/// Shared with the replay harness (`polybook_bench::procfs`).
pub(crate) use polybook_bench::procfs;

use crate::api::{api_step, print_api};
use crate::args::parse_args;
use crate::harness::{cpus, u, Http};
use crate::procfs::machine;
use crate::report::{f, k, print_scale, print_step, print_wire, step_header, us, write_out};
use crate::soak::soak;
use crate::steps::{engine_step, scale, sim_child};
use crate::wire::wire_baseline;

/// A simulator rate this high means "as fast as the simulator's core can generate".
pub(crate) const RATE_MAX: f64 = 100_000_000.0;

/// Tokens per connection for the plain wire client (as the engine's default target).
pub(crate) const WIRE_TOKENS_PER_CONN: usize = 400;

/// Seed of every simulator run (deterministic markets; event timing still varies).
pub(crate) const SEED: u64 = 7;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--sim-child") {
        return sim_child(args.get(2).map_or("", String::as_str));
    }
    let plan = parse_args()?;
    let started = Instant::now();
    let h = Http::new();
    let mach = machine();
    println!("polybook-e2e-bench --{} on {}", plan.mode, mach);
    println!(
        "note: the simulator, the engine and this harness share the machine's {} CPUs",
        cpus()
    );
    let has = |p: &str| plan.phases.iter().any(|x| x == p);

    if let Some(minutes) = plan.soak_minutes {
        let s = soak(&h, minutes, &plan)?;
        let mismatches = u(&s["verify"]["mismatches"]);
        let out = json!({ "mode": "soak", "machine": mach, "soak": s,
            "mismatches_total": mismatches, "total_secs": started.elapsed().as_secs_f64() });
        write_out(&plan.out, &out)?;
        println!(
            "soak total {:.0} s; books differing from the truth: {mismatches}; results in {}",
            started.elapsed().as_secs_f64(),
            plan.out
        );
        if mismatches > 0 {
            bail!("{mismatches} books differ from the truth");
        }
        return Ok(());
    }

    // Scale first, while this process is fresh: memory freed by earlier phases would be
    // reused by the engine and hide part of its footprint from the RSS delta.
    let mut scale_out = Value::Null;
    if has("scale") {
        let s = scale(&h, plan.scale_markets, plan.scale_verify)?;
        print_scale(&s);
        scale_out = s;
    }

    let mut wire = Vec::new();
    let mut wire_rate: BTreeMap<usize, f64> = BTreeMap::new();
    if has("wire") {
        for &m in &plan.markets {
            let w = wire_baseline(&h, m, &plan)?;
            print_wire(&w);
            wire_rate.insert(m, f(&w["frames_per_s"]));
            wire.push(w);
        }
    }

    let mut steps = Vec::new();
    if has("engine") {
        step_header();
        for &m in &plan.markets {
            for &sh in &plan.shards {
                for &r in &plan.rates {
                    let s = engine_step(&h, m, sh, r, &plan).with_context(|| {
                        format!("engine step {m} markets, {sh} shards, rate {r}")
                    })?;
                    print_step(&s, wire_rate.get(&m).copied());
                    steps.push(s);
                }
            }
        }
    }

    let mut api_steps = Vec::new();
    if has("api") {
        for load in [false, true] {
            let s = api_step(&h, load, &plan).with_context(|| format!("api step, load {load}"))?;
            print_api(&s);
            api_steps.push(s);
        }
        if let [a, b] = api_steps.as_slice() {
            println!(
                "api   with load vs without: engine frames/s {} -> {}, apply p50 {} -> {} us, p99 {} -> {} us",
                k(f(&a["frames_per_s"])),
                k(f(&b["frames_per_s"])),
                us(&a["apply_ns"]["p50"]),
                us(&b["apply_ns"]["p50"]),
                us(&a["apply_ns"]["p99"]),
                us(&b["apply_ns"]["p99"]),
            );
        }
    }

    let mut health_steps = Vec::new();
    if has("api-health") {
        health_steps = api_load::run(&h, &plan.api_markets, &plan)?;
    }

    let mismatches: u64 = steps.iter().map(|s| u(&s["verify"]["mismatches"])).sum::<u64>()
        + api_steps.iter().map(|s| u(&s["verify"]["mismatches"])).sum::<u64>()
        + health_steps.iter().map(|s| u(&s["verify"]["mismatches"])).sum::<u64>()
        + u(&scale_out["verify"]["mismatches"]);
    let out = json!({
        "mode": plan.mode,
        "machine": mach,
        "note": "wire and engine phases: simulator, engine and harness in one process, sharing every CPU; scale phase: simulator in a child process",
        "window_secs": plan.window.as_secs_f64(),
        "wire": wire,
        "engine": steps,
        "scale": scale_out,
        "api": api_steps,
        "api_health": health_steps,
        "mismatches_total": mismatches,
        "total_secs": started.elapsed().as_secs_f64(),
    });
    write_out(&plan.out, &out)?;
    println!(
        "total {:.0} s; books differing from the truth: {mismatches}; results in {}",
        started.elapsed().as_secs_f64(),
        plan.out
    );
    if mismatches > 0 {
        bail!("{mismatches} books differ from the truth");
    }
    Ok(())
}
