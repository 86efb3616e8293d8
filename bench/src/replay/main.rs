//! `polybook-replay-bench`: the engine fed by a load generator that is not the bottleneck
//! (issue 18). Frames are pre-rendered from the simulator's model before anything is
//! measured (`corpus.rs`), then written from this process's own WebSocket server on std
//! threads pinned to one CPU (`server.rs`) with big batched writes; the engine runs in this
//! process with its data shard on the other CPU. The simulated exchange only serves Gamma
//! (paused: its model never moves), so the engine discovers the same markets the corpus was
//! rendered for.
//!
//! ```sh
//! cargo run --release -p polybook-bench --bin polybook-replay-bench -- --quick   # ~1.5 min
//! cargo run --release -p polybook-bench --bin polybook-replay-bench -- --full
//! ```
//!
//! Phases: the **wire baseline** (the generator flat out into counting clients, `wire.rs`),
//! the **floor** at each paced rate (the same frames paced the same into the counting clients:
//! the CPU a reader woken per frame costs on this machine, against which the engine's CPU per
//! frame at that rate is read), then one fresh engine per **step** (`step.rs`): offered 1 k, 10 k, 100 k frames/s and flat
//! out with 1 data shard (the first step also measures the idle data shard), flat out with 2
//! data shards. Each step ends with every book compared with the model's truth at the cut;
//! a mismatch makes the run fail (exit status 1). JSON goes to `target/bench-replay.json`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use polybook_bench::http::{u, Http};
use polybook_bench::procfs::{cpus, machine};
use serde_json::{json, Value};

mod corpus;
mod nats_probe;
mod report;
mod server;
mod step;
mod streams;
mod wire;

use crate::step::{engine_step, Placing, Step};

/// Pins the calling thread to `cpus` (best effort: a failure leaves it where it was).
pub(crate) fn pin_current_to(cpus: impl IntoIterator<Item = usize>) {
    let mut set = CpuSet::new();
    for cpu in cpus {
        if set.set(cpu).is_err() {
            return;
        }
    }
    let _ = sched_setaffinity(Pid::from_raw(0), &set);
}

pub(crate) fn pin_current(cpu: usize) {
    pin_current_to([cpu]);
}

const USAGE: &str = "usage: polybook-replay-bench [--quick|--full] [--markets N] [--window SECS] \
[--max-frames N] [--steps RATE,..,max,max2] [--idle SECS] [--wire-secs SECS] [--no-wire] \
[--no-verify-hash] [--nats URL|spawn] [--nats-float] [--seed N] [--out FILE]
  --steps: a number is frames/s offered to 1 data shard for --window seconds; max: flat out,
  1 data shard, --max-frames frames; max2: the same with 2 data shards. The first step also
  measures the idle data shard for --idle seconds (0: not). Unless --no-wire: the wire baseline
  flat out for --wire-secs, and the floor (counting clients) at each paced step's rate.
  --nats: every step runs twice, with NATS off and then on: the engine publishes every change
  to this server ([publish.nats] url; spawn: a nats-server -js of the bench's own on a free
  loopback port) and a consumer of every subject times each level delta from the generator's
  write of its frame. The spawned server and the consumer share the generator's CPU (off the
  data shard's, as on other machines), or with --nats-float go where the kernel puts them.";

/// One step of the plan: frames/s offered (None: flat out) and data shards.
#[derive(Debug, Clone, Copy)]
struct StepPlan {
    rate: Option<f64>,
    shards: usize,
}

fn parse_steps(v: &str) -> Result<Vec<StepPlan>> {
    v.split(',')
        .map(|s| match s.trim() {
            "max" => Ok(StepPlan { rate: None, shards: 1 }),
            "max2" => Ok(StepPlan { rate: None, shards: 2 }),
            r => Ok(StepPlan { rate: Some(r.parse()?), shards: 1 }),
        })
        .collect()
}

struct Plan {
    mode: &'static str,
    markets: usize,
    seed: u64,
    /// Paced steps stream `rate × window` frames.
    window: f64,
    steps: Vec<StepPlan>,
    /// Frames of the flat-out steps (and the corpus).
    max_frames: usize,
    idle: f64,
    wire_secs: Option<f64>,
    quiet_wait: Duration,
    verify_hash: bool,
    nats: Option<String>,
    /// The spawned nats-server and the consumer float instead of sharing the generator's CPU.
    nats_float: bool,
    out: String,
}

fn parse_args() -> Result<Plan> {
    let mut p = Plan {
        mode: "quick",
        markets: 1_000,
        seed: 7,
        window: 3.0,
        steps: parse_steps("1000,10000,100000,max,max2")?,
        max_frames: 1_000_000,
        idle: 10.0,
        wire_secs: Some(3.0),
        quiet_wait: Duration::from_secs(3),
        verify_hash: true,
        nats: None,
        nats_float: false,
        out: format!("{}/../target/bench-replay.json", env!("CARGO_MANIFEST_DIR")),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| anyhow::anyhow!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "--quick" => {}
            "--full" => {
                (p.mode, p.window, p.max_frames, p.wire_secs) =
                    ("full", 10.0, 3_000_000, Some(8.0));
                p.quiet_wait = Duration::from_secs(10);
            }
            "--markets" => p.markets = val()?.parse()?,
            "--seed" => p.seed = val()?.parse()?,
            "--window" => p.window = val()?.parse()?,
            "--max-frames" => p.max_frames = val()?.parse()?,
            "--steps" => p.steps = parse_steps(&val()?)?,
            "--idle" => p.idle = val()?.parse()?,
            "--wire-secs" => p.wire_secs = Some(val()?.parse()?),
            "--no-wire" => p.wire_secs = None,
            "--no-verify-hash" => p.verify_hash = false,
            "--nats" => p.nats = Some(val()?),
            "--nats-float" => p.nats_float = true,
            "--out" => p.out = val()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    Ok(p)
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn main() -> Result<()> {
    let plan = parse_args()?;
    let n = cpus();
    let (gen, last) = if n >= 2 { (Some(0), n - 1) } else { (None, 0) };
    // This thread (rendering, HTTP polling, comparisons) runs with the generator; it lets
    // go while an engine starts, which checks its CPUs against this thread's.
    if let Some(g) = gen {
        pin_current(g);
    }
    let frames_of = |s: &StepPlan| s.rate.map_or(plan.max_frames, |r| (r * plan.window) as usize);
    let cuts: Vec<usize> = plan.steps.iter().map(frames_of).collect();
    println!(
        "rendering: {} markets, seed {}, {} frames (cuts {cuts:?}) ...",
        plan.markets, plan.seed, plan.max_frames
    );
    let corpus = Arc::new(corpus::render(plan.seed, plan.markets, wall_ms(), &cuts));
    let c = &corpus;
    let corpus_json = json!({
        "markets": c.markets,
        "seed": c.seed,
        "frames": c.frames.len(),
        "bytes": c.data.len(),
        "avg_frame_bytes": c.data.len() / c.frames.len().max(1),
        "price_change_frames": c.price_changes(c.frames.len()),
        "events": {"order": c.events_by_kind[0], "trade": c.events_by_kind[1], "tick_size_change": c.events_by_kind[2]},
        "render_secs": c.render_secs,
        "checkpoints": c.checkpoints.iter().map(|k| json!({"frames": k.frames, "events": k.events, "levels_per_book_avg": k.levels_avg})).collect::<Vec<_>>(),
    });
    println!("{}", report::corpus_line(&corpus_json));

    let wire = match plan.wire_secs {
        Some(secs) => {
            let w = wire::wire_baseline(&corpus, gen, last, 400, secs, None)?;
            println!("{}", report::wire_line(&w));
            w
        }
        None => Value::Null,
    };
    // The floor at each paced rate: the same frames, paced the same, into counting clients.
    let mut floors = Vec::new();
    if plan.wire_secs.is_some() {
        for r in plan.steps.iter().filter_map(|s| s.rate) {
            let w = wire::wire_baseline(&corpus, gen, last, 400, plan.window, Some(r))?;
            println!("{}", report::floor_line(&w));
            floors.push(w);
        }
    }

    let nats_server = match plan.nats.as_deref() {
        Some("spawn") => {
            Some(nats_probe::NatsServer::spawn(if plan.nats_float { None } else { gen })?)
        }
        _ => None,
    };
    let nats_url = nats_server.as_ref().map(|s| s.url.clone()).or_else(|| plan.nats.clone());
    let h = Http::new();
    let mut steps: Vec<(Placing, Step)> = Vec::new();
    for (i, sp) in plan.steps.iter().enumerate() {
        // A second data shard shares the generator's CPU on a 2-CPU machine.
        let data: Vec<usize> = (0..sp.shards).map(|k| (last + k) % n).collect();
        let p = Placing { gen, control: gen.unwrap_or(0), data, cpus: n };
        let idle = (i == 0 && plan.idle > 0.0).then(|| Duration::from_secs_f64(plan.idle));
        let (shards, rate, frames) = (sp.shards, sp.rate, frames_of(sp));
        let (quiet_wait, verify_hash) = (plan.quiet_wait, plan.verify_hash);
        // With NATS: the same step off, then on, so the difference is the publishing.
        let nats: Vec<Option<String>> = match &nats_url {
            Some(url) => vec![None, Some(url.clone())],
            None => vec![None],
        };
        for (j, nats) in nats.into_iter().enumerate() {
            let idle = if j == 0 { idle } else { None };
            steps.push((
                p.clone(),
                Step {
                    shards,
                    rate,
                    frames,
                    idle,
                    quiet_wait,
                    verify_hash,
                    nats,
                    nats_cpu: if plan.nats_float { None } else { gen },
                },
            ));
        }
    }
    println!("{}", report::STEP_HEADER);
    let mut results = Vec::new();
    let mut failed = false;
    for (p, s) in &steps {
        let v = engine_step(&h, &corpus, p, s, nats_server.as_ref())?;
        failed |= u(&v["verify"]["mismatches"]) > 0;
        println!("{}", report::step_line(&v));
        results.push(v);
    }
    if nats_url.is_some() {
        println!("{}", report::NATS_HEADER);
        for v in &results {
            println!("{}", report::nats_line(v));
        }
    }
    let summary = report::summary(&wire, &floors, &results);
    println!("{}", report::summary_lines(&summary));
    let out = json!({
        "tool": "polybook-replay-bench",
        "mode": plan.mode,
        "engine_integrity_verify_hash": plan.verify_hash,
        "machine": machine(),
        "corpus": corpus_json,
        "wire_baseline": wire,
        "wire_paced": floors,
        "steps": results,
        "summary": summary,
    });
    if let Some(dir) = std::path::Path::new(&plan.out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&plan.out, serde_json::to_string_pretty(&out)?)?;
    println!("wrote {}", plan.out);
    if failed {
        bail!("books differ from the truth (see verify in {})", plan.out);
    }
    Ok(())
}
