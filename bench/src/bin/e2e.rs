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
//!    runs, 2,000 and 5,000 markets (`--api-markets`), one fresh engine per step (`bench/src/api_load.rs`). Reports
//!    requests/s, HTTP p50/p99, apply p50/p99/p99.9 and the data shard's CPU per request
//!    (its run time in the step minus what the feed costs it in a quiet step, per request).
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use glommio::{LocalExecutorBuilder, Placement};
use polybook::protocol::encode::{subscribe_frames, SubscribeOp};
use polybook_shards::config::{Config, DataCores, ValidConfig};
use polybook_shards::engine::{self, EngineHandle};
use polybook_shards::net::{connect_ws_with, ConnectOptions, Message, WebSocketConfig};
use polybook_shards::sim_server::{
    spawn_sim_server, RandomFaults, SimServerConfig, SimServerHandle,
};
use serde_json::{json, Value};

// A module of this binary (not of the lib): it uses the harness's helpers above and below.
#[path = "../api_load.rs"]
mod api_load;

/// A simulator rate this high means "as fast as the simulator's core can generate".
const RATE_MAX: f64 = 100_000_000.0;

/// Tokens per connection for the plain wire client (as the engine's default target).
const WIRE_TOKENS_PER_CONN: usize = 400;

/// Seed of every simulator run (deterministic markets; event timing still varies).
const SEED: u64 = 7;

// ---------------------------------------------------------------------------------------------
// modes and arguments
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Plan {
    mode: &'static str,
    phases: Vec<String>,
    /// Market counts for the wire baseline and the engine steps.
    markets: Vec<usize>,
    rates: Vec<f64>,
    shards: Vec<usize>,
    window: Duration,
    /// Longest wait for a quiet machine before each measurement.
    quiet_wait: Duration,
    /// Books compared with the truth per engine step (all when there are fewer).
    verify_max: usize,
    scale_markets: usize,
    scale_verify: usize,
    /// `--sim-cpu`: where the simulator runs in engine steps (Some(None): unpinned); None keeps
    /// the default placement.
    sim_cpu: Option<Option<usize>>,
    /// WebSocket read buffer of the plain wire client (None: tungstenite's 128 KiB default).
    client_read_buffer: Option<usize>,
    /// `--soak MINUTES`: run only the soak (steady rate, random faults) for this long.
    soak_minutes: Option<f64>,
    /// Market counts of the api-health phase.
    api_markets: Vec<usize>,
    out: String,
}

impl Plan {
    fn quick() -> Plan {
        Plan {
            mode: "quick",
            phases: vec!["wire".into(), "engine".into(), "scale".into()],
            markets: vec![2_000],
            rates: vec![2_000.0, 10_000.0, 50_000.0],
            shards: vec![1, 2],
            window: Duration::from_secs(5),
            quiet_wait: Duration::from_secs(5),
            verify_max: usize::MAX,
            scale_markets: 10_000,
            scale_verify: 2_000,
            sim_cpu: None,
            client_read_buffer: None,
            soak_minutes: None,
            api_markets: vec![2_000, 5_000],
            out: default_out(),
        }
    }

    fn full() -> Plan {
        Plan {
            mode: "full",
            phases: vec![
                "wire".into(),
                "engine".into(),
                "scale".into(),
                "api".into(),
                "api-health".into(),
            ],
            markets: vec![10_000, 50_000],
            rates: vec![10_000.0, 50_000.0, 80_000.0, RATE_MAX],
            shards: vec![1, 2],
            window: Duration::from_secs(8),
            quiet_wait: Duration::from_secs(10),
            verify_max: 4_000,
            scale_markets: 50_000,
            scale_verify: 5_000,
            sim_cpu: None,
            client_read_buffer: None,
            soak_minutes: None,
            api_markets: vec![2_000, 5_000],
            out: default_out(),
        }
    }
}

fn default_out() -> String {
    format!("{}/../target/bench-e2e.json", env!("CARGO_MANIFEST_DIR"))
}

const USAGE: &str =
    "usage: polybook-e2e-bench [--quick|--full] [--only wire,engine,scale,api,api-health] [--soak MINUTES] \
[--markets N,N] [--rates R,R|max] [--shards 1,2] [--window SECS] [--quiet-wait SECS] [--verify N] \
[--scale-markets N] [--api-markets N,N] [--sim-cpu N|none] [--client-read-buffer-kib N] [--out FILE]";

fn list<T: std::str::FromStr>(v: &str, what: &str) -> Result<Vec<T>> {
    v.split(',')
        .map(|x| x.trim().parse::<T>().map_err(|_| anyhow!("{what}: cannot parse {x:?}")))
        .collect()
}

fn parse_args() -> Result<Plan> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut plan = if args.iter().any(|a| a == "--full") { Plan::full() } else { Plan::quick() };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| anyhow!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "--quick" | "--full" => {}
            "--only" => plan.phases = val()?.split(',').map(str::to_owned).collect(),
            "--markets" => plan.markets = list(&val()?, "--markets")?,
            "--rates" => {
                plan.rates = val()?
                    .split(',')
                    .map(|r| {
                        if r == "max" {
                            Ok(RATE_MAX)
                        } else {
                            r.parse::<f64>().map_err(|_| anyhow!("--rates: cannot parse {r:?}"))
                        }
                    })
                    .collect::<Result<_>>()?
            }
            "--shards" => plan.shards = list(&val()?, "--shards")?,
            "--window" => {
                plan.window = Duration::from_secs_f64(list::<f64>(&val()?, "--window")?[0])
            }
            "--quiet-wait" => {
                plan.quiet_wait = Duration::from_secs_f64(list::<f64>(&val()?, "--quiet-wait")?[0])
            }
            "--verify" => plan.verify_max = list(&val()?, "--verify")?[0],
            "--scale-markets" => plan.scale_markets = list(&val()?, "--scale-markets")?[0],
            "--api-markets" => plan.api_markets = list(&val()?, "--api-markets")?,
            "--out" => plan.out = val()?,
            "--soak" => {
                let m = list::<f64>(&val()?, "--soak")?[0];
                if m.is_nan() || m <= 0.0 {
                    bail!("--soak: minutes must be > 0");
                }
                plan.soak_minutes = Some(m);
                plan.mode = "soak";
            }
            "--sim-cpu" => {
                let v = val()?;
                plan.sim_cpu =
                    Some(if v == "none" { None } else { Some(list::<usize>(&v, "--sim-cpu")?[0]) })
            }
            "--client-read-buffer-kib" => {
                plan.client_read_buffer =
                    Some(list::<usize>(&val()?, "--client-read-buffer-kib")?[0] << 10)
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    for p in &plan.phases {
        if !["wire", "engine", "scale", "api", "api-health"].contains(&p.as_str()) {
            bail!("unknown phase {p:?}\n{USAGE}");
        }
    }
    if plan.shards.contains(&0) {
        bail!("--shards: at least one data shard");
    }
    Ok(plan)
}

// ---------------------------------------------------------------------------------------------
// /proc: machine, memory, CPU time per thread
// ---------------------------------------------------------------------------------------------

/// Clock ticks per second of /proc's utime/stime (USER_HZ, 100 on Linux).
const USER_HZ: u64 = 100;

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
        .map_or("unknown".to_owned(), |(_, m)| m.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        "cpu_model": model,
        "mem_total_mib": mem_kib / 1024,
        "kernel": kernel.trim(),
    })
}

/// A `VmRSS`-style line of /proc/self/status, in bytes.
fn status_bytes(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn rss() -> u64 {
    status_bytes("VmRSS:")
}

/// utime + stime (ticks) from a /proc stat line (the name in parentheses may hold spaces).
fn stat_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3; utime and stime are fields 14 and 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Which part of the process a thread belongs to, by its name.
fn thread_group(comm: &str) -> String {
    let comm = comm.trim();
    if let Some(rest) = comm.strip_prefix("data-") {
        // glommio names executor threads "{name}-{executor id}": "data-1-3" is shard 1.
        let shard = rest.split('-').next().unwrap_or(rest);
        return format!("engine_data_{shard}");
    }
    let g = if comm.starts_with("control") {
        "engine_control"
    } else if comm.starts_with("discovery") || comm.starts_with("gamma-lookup") {
        "engine_discovery"
    } else if comm.starts_with("sim-server") {
        "sim"
    } else if comm.starts_with("wire-client") {
        "wire_client"
    } else {
        "harness_other"
    };
    g.to_owned()
}

/// CPU time so far, in ns, by thread group; `process` includes threads that have exited.
fn cpu_snapshot() -> BTreeMap<String, u64> {
    let tick_ns = 1_000_000_000 / USER_HZ;
    let mut out = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            let p = e.path();
            let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            let Some(t) = std::fs::read_to_string(p.join("stat")).ok().and_then(|s| stat_ticks(&s))
            else {
                continue;
            };
            *out.entry(thread_group(&comm)).or_insert(0) += t * tick_ns;
        }
    }
    let process =
        std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| stat_ticks(&s)).unwrap_or(0);
    out.insert("process".into(), process * tick_ns);
    // Every CPU's busy time (user, nice, system, irq, softirq, steal), to tell what other
    // processes on the machine took during a measurement.
    let busy = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.strip_prefix("cpu ")?.to_owned();
            let v: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            Some([0usize, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum::<u64>())
        })
        .unwrap_or(0);
    out.insert("machine_busy".into(), busy * tick_ns);
    out
}

/// CPU used between two snapshots by group, plus `other_processes` (the machine's busy time
/// not spent by this process).
fn cpu_delta(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut d: BTreeMap<String, u64> =
        b.iter().map(|(k, v)| (k.clone(), v.saturating_sub(*a.get(k).unwrap_or(&0)))).collect();
    let busy = d.remove("machine_busy").unwrap_or(0);
    let own = d.get("process").copied().unwrap_or(0);
    d.insert("other_processes".into(), busy.saturating_sub(own));
    d
}

fn cpu_ms_json(d: &BTreeMap<String, u64>) -> Value {
    Value::Object(d.iter().map(|(k, v)| (k.clone(), json!(v / 1_000_000))).collect())
}

/// Waits (at most `max`) until other processes use under 10 % of the machine over half a
/// second, so a measurement starts on a quiet machine when it can; returns their last share.
fn wait_quiet(max: Duration) -> f64 {
    let start = Instant::now();
    loop {
        let a = cpu_snapshot();
        std::thread::sleep(Duration::from_millis(500));
        let d = cpu_delta(&a, &cpu_snapshot());
        let share =
            d.get("other_processes").copied().unwrap_or(0) as f64 / 1e9 / (0.5 * cpus() as f64);
        if share < 0.10 || start.elapsed() >= max {
            return share;
        }
    }
}

fn other_share(d: &BTreeMap<String, u64>, secs: f64) -> f64 {
    d.get("other_processes").copied().unwrap_or(0) as f64 / 1e9 / (secs * cpus() as f64)
}

/// Warns when other processes took more than 10 % of the machine during a measurement.
fn warn_foreign(d: &BTreeMap<String, u64>, secs: f64) {
    let share = other_share(d, secs);
    if share > 0.10 {
        println!(
            "  warning: other processes used {:.0}% of the machine during this measurement",
            share * 100.0
        );
    }
}

fn engine_cpu(d: &BTreeMap<String, u64>) -> u64 {
    d.iter().filter(|(k, _)| k.starts_with("engine_")).map(|(_, v)| *v).sum()
}

// ---------------------------------------------------------------------------------------------
// HTTP (blocking, ureq)
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Http {
    agent: ureq::Agent,
}

impl Http {
    fn new() -> Http {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .build()
            .into();
        Http { agent }
    }

    /// GET, retrying (a few times, after a pause) when the API says 429.
    fn get(&self, url: &str) -> Result<(u16, Value)> {
        let mut tries = 0;
        let mut r = loop {
            let r = self.agent.get(url).call().with_context(|| format!("GET {url}"))?;
            if r.status().as_u16() != 429 || tries == 5 {
                break r;
            }
            tries += 1;
            std::thread::sleep(Duration::from_millis(250));
        };
        let status = r.status().as_u16();
        let body = r
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .with_context(|| format!("GET {url}: body"))?;
        Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
    }

    fn get_ok(&self, url: &str) -> Result<Value> {
        match self.get(url)? {
            (200, v) => Ok(v),
            (s, v) => bail!("GET {url}: HTTP {s}: {v}"),
        }
    }

    fn post(&self, url: &str) -> Result<()> {
        let r = self.agent.post(url).send_empty().with_context(|| format!("POST {url}"))?;
        match r.status().as_u16() {
            200 => Ok(()),
            s => bail!("POST {url}: HTTP {s}"),
        }
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Polls `f` every 100 ms until it returns Some, or fails with its last complaint.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> Result<T> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(last) if start.elapsed() > limit => bail!("timed out waiting for {what}: {last}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the simulator and the engine
// ---------------------------------------------------------------------------------------------

fn cpus() -> usize {
    std::thread::available_parallelism().map(usize::from).unwrap_or(1)
}

fn start_sim(markets: usize, rate: f64, cpu: Option<usize>) -> Result<SimServerHandle> {
    start_sim_faults(markets, rate, cpu, None)
}

fn start_sim_faults(
    markets: usize,
    rate: f64,
    cpu: Option<usize>,
    random_faults: Option<RandomFaults>,
) -> Result<SimServerHandle> {
    spawn_sim_server(SimServerConfig {
        listen: "127.0.0.1:0".into(),
        seed: SEED,
        markets,
        rate,
        start_paused: true,
        cpu,
        random_faults,
        // Plain traffic, comparable with BENCHMARKS.md, until the store judges same-timestamp
        // runs at their end (issue 17); real-shaped runs would resync on false alarms.
        real_shape: polybook::sim::RealShape::off(),
        ..SimServerConfig::default()
    })
    .map_err(|e| anyhow!("simulator: {e}"))
}

/// Where each executor runs: with one data shard, the simulator and the control shard share
/// CPU 0 and the data shard has CPU 1 (on a 2-CPU machine); with more shards than CPUs,
/// shards share CPUs and the simulator floats.
struct Placing {
    control: usize,
    data: Vec<usize>,
    sim: Option<usize>,
}

fn placing(shards: usize, sim_cpu: Option<Option<usize>>) -> Placing {
    let n = cpus();
    let mut p = if shards == 1 && n >= 2 {
        Placing { control: 0, data: vec![n - 1], sim: Some(0) }
    } else {
        Placing { control: 0, data: (0..shards).map(|i| i % n).collect(), sim: None }
    };
    if let Some(sim) = sim_cpu {
        p.sim = sim;
    }
    p
}

fn engine_config(http_url: &str, ws_url: &str, p: &Placing) -> Result<ValidConfig> {
    let mut c = Config::default();
    c.endpoints.gamma_url = http_url.to_owned();
    c.endpoints.clob_url = http_url.to_owned();
    c.endpoints.ws_url = ws_url.to_owned();
    c.layout.control_core = p.control;
    c.layout.data_cores = DataCores::List(p.data.clone());
    c.connections.tokens_per_conn_target = 400;
    // The harness keeps the simulator paused (silent) while it compares books; the default
    // 60 s data-silence watchdog would reconnect every socket during a long comparison.
    c.connections.data_silence_ms = 600_000;
    // One discovery at start; new_market hints still wake it (at most every 2 s).
    c.discovery.interval_ms = 60_000;
    c.api.listen = "127.0.0.1:0".into();
    // The comparison reads every book over HTTP from one address.
    c.api.requests_per_s_max = 1_000_000;
    c.log.progress_interval_ms = 0;
    c.validate().map_err(|e| anyhow!("engine config: {e}"))
}

fn start_engine(cfg: &ValidConfig) -> Result<(EngineHandle, String)> {
    let engine = engine::start(cfg).map_err(|e| anyhow!("engine: {e}"))?;
    let api = format!("http://{}", engine.api_addr());
    Ok((engine, api))
}

/// Every book the engine has is live or resolved, and it has at least `want` of them.
fn settled(h: &Http, api: &str, want: u64) -> Result<Value, String> {
    let s = h.get_ok(&format!("{api}/stats")).map_err(|e| e.to_string())?;
    let t = &s["totals"];
    let (books, live, resolved) = (u(&t["books"]), u(&t["books_live"]), u(&t["books_resolved"]));
    if books >= want && live + resolved == books {
        Ok(s)
    } else {
        Err(format!("books {books}, live {live}, resolved {resolved}"))
    }
}

/// Sum of the engine counters that count wire events applied.
fn events_applied(totals: &Value, shards: &Value) -> u64 {
    let mut n = u(&totals["events_price_change"]) + u(&totals["events_book"]);
    for s in shards.as_array().into_iter().flatten() {
        let st = &s["store"];
        n += u(&st["events_tick_size_change"])
            + u(&st["events_last_trade_price"])
            + u(&st["events_best_bid_ask"])
            + u(&st["events_new_market"])
            + u(&st["events_market_resolved"]);
    }
    n
}

fn shard_sum(shards: &Value, key: &str) -> u64 {
    shards.as_array().into_iter().flatten().map(|s| u(&s["store"][key])).sum()
}

fn shard_total(shards: &Value, key: &str) -> u64 {
    shards.as_array().into_iter().flatten().map(|s| u(&s[key])).sum()
}

fn shard_max(shards: &Value, key: &str) -> u64 {
    shards.as_array().into_iter().flatten().map(|s| u(&s[key])).max().unwrap_or(0)
}

fn sim_backlog(status: &Value) -> u64 {
    status["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| u(&c["queue_depth"]) + u(&c["in_flight"]))
        .sum()
}

/// Pauses the simulator and waits until every queued frame is flushed to its socket.
fn pause_until_at_rest(h: &Http, sim: &str, limit: Duration) -> Result<Duration> {
    let t = Instant::now();
    h.post(&format!("{sim}/sim/pause"))?;
    wait_for("simulator at rest", limit, || {
        let st = h.get_ok(&format!("{sim}/sim/status")).map_err(|e| e.to_string())?;
        if st["at_rest"] == true {
            Ok(())
        } else {
            Err(format!("backlog {}", sim_backlog(&st)))
        }
    })?;
    Ok(t.elapsed())
}

/// After the simulator is at rest: waits until the engine's frame count stops moving (it has
/// read what the sockets hold) and every active market's books are live. On a timeout, says
/// which books did not settle (the comparison runs anyway and counts them).
fn engine_at_rest(h: &Http, sim: &str, api: &str, limit: Duration) -> Result<(Duration, Value)> {
    let t = Instant::now();
    let active = u(&h.get_ok(&format!("{sim}/sim/status"))?["markets_active"]);
    let mut last = u64::MAX;
    let r = wait_for("engine at rest", limit, || {
        let s = settled(h, api, 0)?;
        let frames = u(&s["totals"]["frames"]);
        let live = u(&s["totals"]["books_live"]);
        let still = frames == last;
        last = frames;
        if still && live >= 2 * active {
            Ok(())
        } else {
            Err(format!("frames {frames}, books live {live} of {} active", 2 * active))
        }
    });
    match r {
        Ok(()) => Ok((t.elapsed(), Value::Null)),
        // Compare anyway: books that did not settle show up as mismatches.
        Err(e) => {
            println!("  warning: {e}");
            let s = h.get_ok(&format!("{api}/stats"))?;
            let t2 = &s["totals"];
            let keys = ["books", "books_live", "books_resolved", "books_seeding"];
            let more = ["books_suspect", "books_resyncing", "redrives", "resyncs"];
            let detail: serde_json::Map<String, Value> =
                keys.iter().chain(&more).map(|k| ((*k).to_owned(), t2[*k].clone())).collect();
            Ok((t.elapsed(), json!({ "error": e.to_string(), "engine": detail })))
        }
    }
}

/// Tokens the simulator accepted beyond its per-connection limit (they get nothing), and the
/// most tokens on one engine connection.
fn conn_limits(sim_status: &Value, stats: &Value) -> Value {
    let ignored: u64 = sim_status["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| u(&c["tokens_ignored"]))
        .sum();
    let most = stats["shards"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["connections"].as_array().into_iter().flatten())
        .map(|c| u(&c["tokens"]))
        .max()
        .unwrap_or(0);
    json!({ "sim_tokens_ignored": ignored, "engine_most_tokens_on_a_connection": most })
}

// ---------------------------------------------------------------------------------------------
// truth comparison
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Verify {
    tokens: usize,
    compared: usize,
    /// Listed by the simulator, resolved, and never tracked by the engine (not a loss).
    skipped_resolved: usize,
    mismatches: usize,
    /// Books equal but the last trade differs (informational).
    last_trade_diffs: usize,
    /// Of those, on markets listed at start (subscribed before any event).
    last_trade_diffs_initial: usize,
    /// Levels (both sides) of the compared truth books.
    levels: usize,
    examples: Vec<String>,
    trade_examples: Vec<String>,
    secs: f64,
}

/// A token to compare: its market's active flag, and whether the market was listed at start
/// (the simulator lists markets in creation order).
#[derive(Debug, Clone)]
struct Tok {
    id: String,
    active: bool,
    initial: bool,
}

/// Every simulator token, or an evenly spread sample.
fn sim_tokens(h: &Http, sim: &str, initial: usize, max: usize) -> Result<Vec<Tok>> {
    let markets = h.get_ok(&format!("{sim}/sim/markets"))?;
    let mut all = Vec::new();
    for (i, m) in markets.as_array().into_iter().flatten().enumerate() {
        let active = m["active"].as_bool().unwrap_or(false);
        for t in m["tokens"].as_array().into_iter().flatten() {
            let id = t.as_str().unwrap_or_default().to_owned();
            all.push(Tok { id, active, initial: i < initial });
        }
    }
    if all.len() <= max {
        return Ok(all);
    }
    let step = all.len() as f64 / max as f64;
    Ok((0..max).filter_map(|i| all.get((i as f64 * step) as usize).cloned()).collect())
}

fn compare_one(h: &Http, sim: &str, api: &str, tok: &Tok, v: &mut Verify) {
    let (token, active) = (tok.id.as_str(), tok.active);
    let truth = h.get(&format!("{sim}/sim/book/{token}"));
    let ours = h.get(&format!("{api}/books/{token}"));
    let mut bad = |why: String| {
        v.mismatches += 1;
        if v.examples.len() < 5 {
            v.examples.push(why);
        }
    };
    let (truth, (status, ours)) = match (truth, ours) {
        (Ok((200, t)), Ok(o)) => (t, o),
        (t, o) => return bad(format!("{token}: truth {t:?} ours {o:?}")),
    };
    if status == 404 && !active {
        v.skipped_resolved += 1;
        return;
    }
    v.compared += 1;
    for side in ["bids", "asks"] {
        v.levels += truth[side].as_array().map_or(0, Vec::len);
    }
    if status != 200 {
        return bad(format!("{token}: engine has no book (HTTP {status})"));
    }
    let want = if active { "live" } else { "resolved" };
    // A paused simulator is a silent venue: after `integrity.stale_after_ms` its live books
    // honestly say `stale` (levels unchanged).
    let stale_ok = active && ours["status"] == "stale";
    if ours["status"] != want && !stale_ok {
        return bad(format!("{token}: status {} want {want}", ours["status"]));
    }
    for key in ["bids", "asks", "tick_size"] {
        if ours[key] != truth[key] {
            return bad(format!("{token}: {key} differs"));
        }
    }
    if ours["last_trade"] != truth["last_trade"] {
        v.last_trade_diffs += 1;
        if tok.initial {
            v.last_trade_diffs_initial += 1;
        }
        if v.trade_examples.len() < 3 {
            v.trade_examples.push(format!(
                "{token}: ours {} truth {}",
                ours["last_trade"], truth["last_trade"]
            ));
        }
    }
}

/// Compares books with the truth on 4 threads.
fn verify(h: &Http, sim: &str, api: &str, initial: usize, max: usize) -> Result<Verify> {
    let t = Instant::now();
    let tokens = sim_tokens(h, sim, initial, max)?;
    let chunk = tokens.len().div_ceil(4).max(1);
    let parts: Vec<Verify> = std::thread::scope(|s| {
        let handles: Vec<_> = tokens
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let h = Http::new();
                    let mut v = Verify::default();
                    for tok in part {
                        compare_one(&h, sim, api, tok, &mut v);
                        v.tokens += 1;
                    }
                    v
                })
            })
            .collect();
        handles.into_iter().map(|j| j.join().unwrap_or_default()).collect()
    });
    let mut v = Verify { tokens: tokens.len(), ..Verify::default() };
    let mut done = 0;
    for p in parts {
        done += p.tokens;
        v.compared += p.compared;
        v.skipped_resolved += p.skipped_resolved;
        v.mismatches += p.mismatches;
        v.last_trade_diffs += p.last_trade_diffs;
        v.last_trade_diffs_initial += p.last_trade_diffs_initial;
        v.levels += p.levels;
        v.examples.extend(p.examples);
        v.trade_examples.extend(p.trade_examples);
    }
    // A thread that panicked returned nothing: its tokens count as mismatches (unverified).
    v.mismatches += v.tokens.saturating_sub(done);
    v.examples.truncate(5);
    v.secs = t.elapsed().as_secs_f64();
    Ok(v)
}

fn verify_json(v: &Verify) -> Value {
    json!({
        "tokens_checked": v.tokens,
        "compared": v.compared,
        "skipped_resolved_never_tracked": v.skipped_resolved,
        "mismatches": v.mismatches,
        "last_trade_diffs": v.last_trade_diffs,
        "last_trade_diffs_on_initial_markets": v.last_trade_diffs_initial,
        "last_trade_note": "a market listed during the run can trade before the engine subscribes; its opening book carries no trade details",
        "examples": v.examples,
        "last_trade_examples": v.trade_examples,
        "secs": v.secs,
    })
}

// ---------------------------------------------------------------------------------------------
// phase 1: wire baseline
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct WireCounters {
    frames: AtomicU64,
    bytes: AtomicU64,
    conns_up: AtomicU64,
    /// Connections opened for markets listed during the measurement.
    conns_followed: AtomicU64,
    conns_ended: AtomicU64,
}

/// Token ids of markets listed while the client runs, waiting for a connection.
type NewTokens = std::rc::Rc<std::cell::RefCell<Vec<String>>>;

/// The token ids announced by a `new_market` frame (object or array), if it is one.
fn new_market_tokens(text: &str, out: &mut Vec<String>) {
    if !text.contains("\"new_market\"") {
        return;
    }
    let Ok(v) = serde_json::from_str::<Value>(text) else { return };
    let events = match v {
        Value::Array(a) => a,
        other => vec![other],
    };
    for e in events.iter().filter(|e| e["event_type"] == "new_market") {
        for t in e["assets_ids"].as_array().into_iter().flatten() {
            out.extend(t.as_str().map(str::to_owned));
        }
    }
}

/// One plain client connection: subscribes `ids` and counts text frames. The connection
/// given `follow` also collects the tokens of new markets (every connection gets the
/// broadcast), so that the client follows the market set the way the engine does.
async fn wire_conn(
    url: String,
    opts: ConnectOptions,
    ids: Vec<String>,
    c: Arc<WireCounters>,
    follow: Option<NewTokens>,
) {
    let Ok(mut ws) = connect_ws_with(&url, &opts).await else {
        c.conns_ended.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut ok = true;
    for f in subscribe_frames(SubscribeOp::Open, &refs, true) {
        ok &= ws.feed(Message::text(f)).await.is_ok();
    }
    ok &= ws.flush().await.is_ok();
    if ok {
        c.conns_up.fetch_add(1, Ordering::Relaxed);
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Text(t) if t.as_str() != "PONG" => {
                    c.frames.fetch_add(1, Ordering::Relaxed);
                    c.bytes.fetch_add(t.len() as u64, Ordering::Relaxed);
                    if let Some(f) = &follow {
                        new_market_tokens(t.as_str(), &mut f.borrow_mut());
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    }
    c.conns_ended.fetch_add(1, Ordering::Relaxed);
}

fn markets_tokens(h: &Http, sim: &str) -> Result<Vec<[String; 2]>> {
    let markets = h.get_ok(&format!("{sim}/sim/markets"))?;
    Ok(markets
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["active"] == true)
        .map(|m| {
            let t = |i: usize| m["tokens"][i].as_str().unwrap_or_default().to_owned();
            [t(0), t(1)]
        })
        .collect())
}

fn wire_baseline(h: &Http, markets: usize, plan: &Plan) -> Result<Value> {
    let (window, quiet_wait) = (plan.window, plan.quiet_wait);
    let opts = ConnectOptions {
        ws_config: plan.client_read_buffer.map(|n| WebSocketConfig::default().read_buffer_size(n)),
        ..ConnectOptions::default()
    };
    let n = cpus();
    let (sim_cpu, client_cpu) = if n >= 2 { (Some(0), n - 1) } else { (None, 0) };
    let sim = start_sim(markets, RATE_MAX, sim_cpu)?;
    let base = sim.http_url();
    let groups: Vec<Vec<String>> = markets_tokens(h, &base)?
        .chunks(WIRE_TOKENS_PER_CONN / 2)
        .map(|c| c.iter().flat_map(|m| m.iter().cloned()).collect())
        .collect();
    let conns = groups.len() as u64;
    let dump_frames: u64 = groups
        .iter()
        .map(|g| g.len().div_ceil(polybook::protocol::encode::IDS_PER_FRAME_MAX) as u64)
        .sum();
    let counters = Arc::new(WireCounters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (c2, stop2, url) = (Arc::clone(&counters), Arc::clone(&stop), sim.ws_url());
    let client = LocalExecutorBuilder::new(Placement::Fixed(client_cpu))
        .name("wire-client")
        .io_memory(128 << 10)
        .spawn(move || async move {
            let fresh: NewTokens = NewTokens::default();
            for (i, ids) in groups.into_iter().enumerate() {
                let follow = (i == 0).then(|| NewTokens::clone(&fresh));
                glommio::spawn_local(wire_conn(
                    url.clone(),
                    opts.clone(),
                    ids,
                    Arc::clone(&c2),
                    follow,
                ))
                .detach();
            }
            let mut last_follow = Instant::now();
            while !stop2.load(Ordering::Relaxed) {
                glommio::timer::sleep(Duration::from_millis(20)).await;
                // New markets go to a new connection every 250 ms (at most 400 tokens each).
                if last_follow.elapsed() < Duration::from_millis(250) {
                    continue;
                }
                last_follow = Instant::now();
                let ids: Vec<String> = {
                    let mut f = fresh.borrow_mut();
                    let n = f.len().min(WIRE_TOKENS_PER_CONN);
                    f.drain(..n).collect()
                };
                if !ids.is_empty() {
                    c2.conns_followed.fetch_add(1, Ordering::Relaxed);
                    glommio::spawn_local(wire_conn(
                        url.clone(),
                        opts.clone(),
                        ids,
                        Arc::clone(&c2),
                        None,
                    ))
                    .detach();
                }
            }
        })
        .map_err(|e| anyhow!("wire client executor: {e}"))?;
    let result = (|| -> Result<Value> {
        wait_for("wire client subscribed", Duration::from_secs(120), || {
            let (up, f) = (
                counters.conns_up.load(Ordering::Relaxed),
                counters.frames.load(Ordering::Relaxed),
            );
            if up == conns && f >= dump_frames {
                Ok(())
            } else {
                Err(format!("{up}/{conns} connections, {f}/{dump_frames} opening frames"))
            }
        })?;
        let quiet = wait_quiet(quiet_wait);
        let st0 = h.get_ok(&format!("{base}/sim/status"))?;
        let (f0, b0) =
            (counters.frames.load(Ordering::Relaxed), counters.bytes.load(Ordering::Relaxed));
        let cpu0 = cpu_snapshot();
        let t0 = Instant::now();
        h.post(&format!("{base}/sim/resume"))?;
        std::thread::sleep(window);
        let (f1, b1) =
            (counters.frames.load(Ordering::Relaxed), counters.bytes.load(Ordering::Relaxed));
        let secs = t0.elapsed().as_secs_f64();
        let cpu = cpu_delta(&cpu0, &cpu_snapshot());
        let st1 = h.get_ok(&format!("{base}/sim/status"))?;
        let sim_secs = t0.elapsed().as_secs_f64();
        h.post(&format!("{base}/sim/pause"))?;
        let frames = f1.saturating_sub(f0);
        let ended = counters.conns_ended.load(Ordering::Relaxed);
        warn_foreign(&cpu, secs);
        let slow = u(&st1["closes"]["slow_consumer"]);
        let events = u(&st1["events"]).saturating_sub(u(&st0["events"]));
        Ok(json!({
            "markets": markets,
            "connections": conns,
            "secs": secs,
            "frames": frames,
            "frames_per_s": frames as f64 / secs,
            "mb_per_s": b1.saturating_sub(b0) as f64 / secs / 1e6,
            "avg_frame_bytes": b1.saturating_sub(b0).checked_div(frames).unwrap_or(0),
            "sim_events_per_s": events as f64 / sim_secs,
            "sim_frames_generated_per_s":
                u(&st1["frames_generated"]).saturating_sub(u(&st0["frames_generated"])) as f64
                    / sim_secs,
            "sim_backlog_end": sim_backlog(&st1),
            "connections_lost": ended,
            "client_read_buffer_bytes": plan.client_read_buffer,
            "other_processes_share_before": quiet,
            "other_processes_share": other_share(&cpu, secs),
            "connections_for_new_markets": counters.conns_followed.load(Ordering::Relaxed),
            "slow_consumer_closes": slow,
            "cpu_ms": cpu_ms_json(&cpu),
            "client_cpu_ns_per_frame": cpu.get("wire_client").copied().unwrap_or(0) as f64 / frames.max(1) as f64,
            "sim_cpu_ns_per_frame": cpu.get("sim").copied().unwrap_or(0) as f64 / frames.max(1) as f64,
        }))
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = client.join();
    sim.stop().map_err(|e| anyhow!("simulator stop: {e}"))?;
    result
}

// ---------------------------------------------------------------------------------------------
// phase 2: engine steps
// ---------------------------------------------------------------------------------------------

fn rate_label(rate: f64) -> String {
    if rate >= RATE_MAX {
        "max".into()
    } else {
        format!("{rate}")
    }
}

fn engine_step(h: &Http, markets: usize, shards: usize, rate: f64, plan: &Plan) -> Result<Value> {
    let p = placing(shards, plan.sim_cpu);
    let sim = start_sim(markets, rate, p.sim)?;
    let base = sim.http_url();
    let cfg = engine_config(&base, &sim.ws_url(), &p)?;
    let t_start = Instant::now();
    let (engine, api) = start_engine(&cfg)?;
    let result = (|| -> Result<Value> {
        let want = 2 * markets as u64;
        let s0 = wait_for("all books live", Duration::from_secs(300), || settled(h, &api, want))?;
        let cold_start = t_start.elapsed().as_secs_f64();
        let quiet = wait_quiet(plan.quiet_wait);
        let st0 = h.get_ok(&format!("{base}/sim/status"))?;
        let cpu0 = cpu_snapshot();
        let t0 = Instant::now();
        h.post(&format!("{base}/sim/resume"))?;
        std::thread::sleep(plan.window);
        let cpu = cpu_delta(&cpu0, &cpu_snapshot());
        let s1 = h.get_ok(&format!("{api}/stats"))?;
        let secs = t0.elapsed().as_secs_f64();
        let st1 = h.get_ok(&format!("{base}/sim/status"))?;
        let sim_secs = t0.elapsed().as_secs_f64();
        warn_foreign(&cpu, secs);
        let backlog = sim_backlog(&st1);
        let drain = pause_until_at_rest(h, &base, Duration::from_secs(120))?;
        let (settle, unsettled) = engine_at_rest(h, &base, &api, Duration::from_secs(60))?;
        let v = verify(h, &base, &api, markets, plan.verify_max)?;
        let s2 = h.get_ok(&format!("{api}/stats"))?;
        let st2 = h.get_ok(&format!("{base}/sim/status"))?;

        let (t0s, t1s) = (&s0["totals"], &s1["totals"]);
        let frames = u(&t1s["frames"]).saturating_sub(u(&t0s["frames"]));
        let events =
            events_applied(t1s, &s1["shards"]).saturating_sub(events_applied(t0s, &s0["shards"]));
        let entries = shard_sum(&s1["shards"], "price_change_entries")
            .saturating_sub(shard_sum(&s0["shards"], "price_change_entries"));
        let sim_events = u(&st1["events"]).saturating_sub(u(&st0["events"]));
        let sim_frames = u(&st1["frames_sent"]).saturating_sub(u(&st0["frames_sent"]));
        let process = cpu.get("process").copied().unwrap_or(0);
        let eng = engine_cpu(&cpu);
        let per = |ns: u64| ns as f64 / frames.max(1) as f64;
        let t2 = &s2["totals"];
        Ok(json!({
            "markets": markets,
            "data_shards": shards,
            "placement": {"control_cpu": p.control, "data_cpus": p.data, "sim_cpu": p.sim},
            "rate_target": rate_label(rate),
            "cold_start_secs": cold_start,
            "other_processes_share_before": quiet,
            "other_processes_share": other_share(&cpu, secs),
            "window_secs": secs,
            "sim_events_per_s": sim_events as f64 / sim_secs,
            "sim_frames_sent_per_s": sim_frames as f64 / sim_secs,
            "sim_backlog_frames_at_end": backlog,
            "frames": frames,
            "frames_per_s": frames as f64 / secs,
            "events_per_s": events as f64 / secs,
            "price_change_entries_per_s": entries as f64 / secs,
            "mb_per_s": shard_total(&s1["shards"], "bytes")
                .saturating_sub(shard_total(&s0["shards"], "bytes"))
                as f64 / secs / 1e6,
            "apply_ns": {
                "p50": shard_max(&s1["shards"], "apply_ns_p50"),
                "p99": shard_max(&s1["shards"], "apply_ns_p99"),
                "p999": shard_max(&s1["shards"], "apply_ns_p999"),
                "max": shard_max(&s1["shards"], "apply_ns_max"),
                "note": "worst shard; cumulative since engine start (includes the opening dumps)",
            },
            "cpu_ms": cpu_ms_json(&cpu),
            "cpu_ns_per_frame": {
                "process": per(process),
                "engine": per(eng),
                "engine_data": per(cpu.iter().filter(|(k, _)| k.starts_with("engine_data")).map(|(_, v)| *v).sum()),
                "sim": per(cpu.get("sim").copied().unwrap_or(0)),
            },
            "drain_secs_after_pause": drain.as_secs_f64(),
            "engine_settle_secs": settle.as_secs_f64(),
            "reconnects": u(&t2["reconnects"]),
            "pong_timeouts": u(&t2["pong_timeouts"]),
            "silence_timeouts": u(&t2["silence_timeouts"]),
            "redrives": u(&t2["redrives"]),
            "books_not_live_at_end": u(&t2["books"])
                .saturating_sub(u(&t2["books_live"]) + u(&t2["books_resolved"])),
            "sim_closes_at_end": st2["closes"].clone(),
            "connection_limits": conn_limits(&st2, &s2),
            "unsettled": unsettled,
            "slow_consumer_closes": u(&st1["closes"]["slow_consumer"]),
            "decode_errors": u(&t2["decode_errors"]),
            "hash_checks": u(&t2["hash_checks"]),
            "hash_mismatches": u(&t2["hash_mismatches"]),
            "books_marked_suspect": u(&t2["books_marked_suspect"]),
            "resyncs": u(&t2["resyncs"]),
            "verify": verify_json(&v),
        }))
    })();
    let t = Instant::now();
    engine.stop();
    let stop_secs = t.elapsed().as_secs_f64();
    sim.stop()?;
    result.map(|mut v| {
        v["engine_stop_secs"] = json!(stop_secs);
        v
    })
}

// ---------------------------------------------------------------------------------------------
// phase 3: scale (cold start, memory)
// ---------------------------------------------------------------------------------------------

/// The simulator in a child process (this binary with `--sim-child`), so that this process's
/// RSS holds the engine only.
struct SimChild {
    child: std::process::Child,
    addr: String,
}

impl SimChild {
    fn spawn(markets: usize) -> Result<SimChild> {
        use std::io::BufRead;
        let exe = std::env::current_exe().context("current_exe")?;
        let mut child = std::process::Command::new(exe)
            .args(["--sim-child", &markets.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("spawn the simulator child process")?;
        let out = child.stdout.take().ok_or_else(|| anyhow!("child without stdout"))?;
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line).context("read the child's address")?;
        let Some(addr) = line.trim().strip_prefix("ADDR ").map(str::to_owned) else {
            let _ = child.kill();
            bail!("simulator child said {line:?}");
        };
        Ok(SimChild { child, addr })
    }

    fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/ws/market", self.addr)
    }

    fn rss(&self) -> u64 {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(path).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }

    /// Closes the child's stdin (its signal to stop) and waits for it.
    fn stop(mut self) -> Result<()> {
        drop(self.child.stdin.take());
        let st = self.child.wait().context("wait for the simulator child")?;
        if !st.success() {
            bail!("simulator child exited with {st}");
        }
        Ok(())
    }
}

/// `--sim-child MARKETS`: a paused simulator on 127.0.0.1 until stdin closes.
fn sim_child(markets: &str) -> Result<()> {
    use std::io::{Read, Write};
    let markets: usize = markets.parse().map_err(|_| anyhow!("--sim-child: bad market count"))?;
    let sim = start_sim(markets, 0.0, None)?;
    let mut out = std::io::stdout();
    writeln!(out, "ADDR {}", sim.addr())?;
    out.flush()?;
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    sim.stop().map_err(|e| anyhow!("simulator stop: {e}"))
}

fn scale(h: &Http, markets: usize, verify_n: usize) -> Result<Value> {
    let t_sim = Instant::now();
    let sim = SimChild::spawn(markets)?;
    let sim_start = t_sim.elapsed().as_secs_f64();
    let base = sim.http_url();
    let p = placing(cpus(), None);
    let cfg = engine_config(&base, &sim.ws_url(), &p)?;
    let rss_before = rss();
    let t0 = Instant::now();
    let (engine, api) = start_engine(&cfg)?;
    let result = (|| -> Result<Value> {
        let want = 2 * markets as u64;
        let (mut t_discovered, mut t_first_live) = (None, None);
        let s = wait_for("all books live", Duration::from_secs(600), || {
            let s = h.get_ok(&format!("{api}/stats")).map_err(|e| e.to_string())?;
            if t_discovered.is_none() && u(&s["markets_total"]) >= markets as u64 {
                t_discovered = Some(t0.elapsed().as_secs_f64());
            }
            if t_first_live.is_none() && u(&s["totals"]["books_live"]) > 0 {
                t_first_live = Some(t0.elapsed().as_secs_f64());
            }
            let t = &s["totals"];
            let (books, live, resolved) =
                (u(&t["books"]), u(&t["books_live"]), u(&t["books_resolved"]));
            if books >= want && live + resolved == books {
                Ok(s)
            } else {
                Err(format!("books {books}, live {live}, resolved {resolved}"))
            }
        })?;
        let all_live = t0.elapsed().as_secs_f64();
        let rss_after = rss();
        let books = u(&s["totals"]["books"]);
        let delta = rss_after.saturating_sub(rss_before);
        let v = verify(h, &base, &api, markets, verify_n)?;
        Ok(json!({
            "markets": markets,
            "books": books,
            "data_shards": p.data.len(),
            "connections": u(&s["totals"]["connections"]),
            "sim_start_secs": sim_start,
            "discovery_done_secs": t_discovered,
            "first_book_live_secs": t_first_live,
            "all_books_live_secs": all_live,
            "discovery": s["discovery"].clone(),
            "rss_before_engine_bytes": rss_before,
            "rss_after_all_live_bytes": rss_after,
            "rss_engine_delta_bytes": delta,
            "bytes_per_book": delta as f64 / books.max(1) as f64,
            "sim_process_rss_bytes": sim.rss(),
            "avg_levels_per_book": v.levels as f64 / v.compared.max(1) as f64,
            "note": "the simulator runs in a child process here: this process's RSS is the engine (plus the harness)",
            "verify": verify_json(&v),
        }))
    })();
    let t = Instant::now();
    engine.stop();
    let stop_secs = t.elapsed().as_secs_f64();
    sim.stop()?;
    result.map(|mut v| {
        v["engine_stop_secs"] = json!(stop_secs);
        v
    })
}

// ---------------------------------------------------------------------------------------------
// phase 4: API under load
// ---------------------------------------------------------------------------------------------

/// Markets, simulator rate and data shards of the API phase and the soak.
const API_MARKETS: usize = 2_000;
const API_RATE: f64 = 20_000.0;
/// Concurrent HTTP clients (threads, one keep-alive connection each) asking for books.
const API_HTTP_CLIENTS: usize = 8;
/// WebSocket clients on `/ws`, each subscribed to `API_WS_TOKENS` tokens.
const API_WS_CLIENTS: usize = 4;
const API_WS_TOKENS: usize = 50;
/// Upper bound on requests per HTTP client (the loop also ends with the window).
const API_HTTP_MAX_PER_CLIENT: usize = 5_000_000;

/// One WebSocket client of the engine's `/ws`: subscribes `tokens` and counts text messages.
async fn api_ws_conn(url: String, tokens: Vec<String>, c: Arc<WireCounters>) {
    let Ok(mut ws) = connect_ws_with(&url, &ConnectOptions::default()).await else {
        c.conns_ended.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let sub = json!({ "op": "subscribe", "tokens": tokens }).to_string();
    if ws.send(Message::text(sub)).await.is_ok() {
        c.conns_up.fetch_add(1, Ordering::Relaxed);
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Text(t) => {
                    c.frames.fetch_add(1, Ordering::Relaxed);
                    c.bytes.fetch_add(t.len() as u64, Ordering::Relaxed);
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    }
    c.conns_ended.fetch_add(1, Ordering::Relaxed);
}

/// Per HTTP client: request latencies (ns) and non-200 answers or errors.
#[derive(Default)]
struct HttpLoad {
    lat_ns: Vec<u64>,
    /// Transport errors.
    errors: u64,
    /// Answers other than 200 (404: a market resolved during the run), by status.
    statuses: BTreeMap<u16, u64>,
}

/// One HTTP client: `/books/{token}?depth=10` for random tokens until `stop` (bounded).
fn http_client(api: &str, tokens: &[String], seed: u64, stop: &AtomicBool) -> HttpLoad {
    let h = Http::new();
    let mut out = HttpLoad::default();
    let mut x = seed | 1;
    for _ in 0..API_HTTP_MAX_PER_CLIENT {
        if stop.load(Ordering::Relaxed) || tokens.is_empty() {
            break;
        }
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let tok = &tokens[(x % tokens.len() as u64) as usize];
        let url = format!("{api}/books/{tok}?depth=10");
        let t = Instant::now();
        let status = match h.agent.get(&url).call() {
            Ok(mut r) => r.body_mut().read_to_string().ok().map(|_| r.status().as_u16()),
            Err(_) => None,
        };
        out.lat_ns.push(t.elapsed().as_nanos() as u64);
        match status {
            Some(200) => {}
            Some(s) => *out.statuses.entry(s).or_insert(0) += 1,
            None => out.errors += 1,
        }
    }
    out
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    sorted[i]
}

/// One API step: a fresh simulator and engine (1 data shard) at `API_RATE`; with `load`, HTTP
/// and WebSocket clients query the engine during the measurement window.
fn api_step(h: &Http, load: bool, plan: &Plan) -> Result<Value> {
    let (markets, rate) = (API_MARKETS, API_RATE);
    let p = placing(1, plan.sim_cpu);
    let sim = start_sim(markets, rate, p.sim)?;
    let base = sim.http_url();
    let cfg = engine_config(&base, &sim.ws_url(), &p)?;
    let (engine, api) = start_engine(&cfg)?;
    let ws_url = format!("ws://{}/ws", engine.api_addr());
    let result = (|| -> Result<Value> {
        let want = 2 * markets as u64;
        wait_for("all books live", Duration::from_secs(300), || settled(h, &api, want))?;
        let tokens: Vec<String> = markets_tokens(h, &base)?.into_iter().flatten().collect();
        let quiet = wait_quiet(plan.quiet_wait);
        let stop = Arc::new(AtomicBool::new(false));
        let ws_counters = Arc::new(WireCounters::default());
        let mut ws_exec = None;
        if load {
            let groups: Vec<Vec<String>> = (0..API_WS_CLIENTS)
                .map(|i| {
                    tokens.iter().skip(i * API_WS_TOKENS).take(API_WS_TOKENS).cloned().collect()
                })
                .collect();
            let (c2, stop2, url) = (Arc::clone(&ws_counters), Arc::clone(&stop), ws_url.clone());
            ws_exec = Some(
                LocalExecutorBuilder::new(Placement::Unbound)
                    .name("api-ws-client")
                    .spawn(move || async move {
                        for ids in groups {
                            glommio::spawn_local(api_ws_conn(url.clone(), ids, Arc::clone(&c2)))
                                .detach();
                        }
                        while !stop2.load(Ordering::Relaxed) {
                            glommio::timer::sleep(Duration::from_millis(20)).await;
                        }
                    })
                    .map_err(|e| anyhow!("ws client executor: {e}"))?,
            );
            wait_for("ws clients subscribed", Duration::from_secs(30), || {
                let up = ws_counters.conns_up.load(Ordering::Relaxed);
                if up == API_WS_CLIENTS as u64 {
                    Ok(())
                } else {
                    Err(format!("{up}/{API_WS_CLIENTS} ws clients"))
                }
            })?;
        }
        let s0 = h.get_ok(&format!("{api}/stats"))?;
        let w0 = ws_counters.frames.load(Ordering::Relaxed);
        let cpu0 = cpu_snapshot();
        let t0 = Instant::now();
        h.post(&format!("{base}/sim/resume"))?;
        let loads: Vec<HttpLoad> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..if load { API_HTTP_CLIENTS } else { 0 })
                .map(|i| {
                    let (api, tokens, stop) = (api.as_str(), tokens.as_slice(), &*stop);
                    std::thread::Builder::new()
                        .name(format!("api-http-{i}"))
                        .spawn_scoped(sc, move || {
                            http_client(api, tokens, 0x9E37_79B9_7F4A_7C15 ^ i as u64, stop)
                        })
                })
                .collect();
            std::thread::sleep(plan.window);
            stop.store(true, Ordering::Relaxed);
            handles
                .into_iter()
                .map(|j| j.ok().and_then(|j| j.join().ok()).unwrap_or_default())
                .collect()
        });
        let s1 = h.get_ok(&format!("{api}/stats"))?;
        let secs = t0.elapsed().as_secs_f64();
        let cpu = cpu_delta(&cpu0, &cpu_snapshot());
        let w1 = ws_counters.frames.load(Ordering::Relaxed);
        let ws_ended = ws_counters.conns_ended.load(Ordering::Relaxed);
        if let Some(x) = ws_exec.take() {
            let _ = x.join();
        }
        warn_foreign(&cpu, secs);
        pause_until_at_rest(h, &base, Duration::from_secs(120))?;
        let (_, unsettled) = engine_at_rest(h, &base, &api, Duration::from_secs(60))?;
        let v = verify(h, &base, &api, markets, plan.verify_max)?;
        let mut lat: Vec<u64> = loads.iter().flat_map(|l| l.lat_ns.iter().copied()).collect();
        lat.sort_unstable();
        let errors: u64 = loads.iter().map(|l| l.errors).sum();
        let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
        for (st, n) in loads.iter().flat_map(|l| l.statuses.iter()) {
            *statuses.entry(st.to_string()).or_insert(0) += n;
        }
        let frames = u(&s1["totals"]["frames"]).saturating_sub(u(&s0["totals"]["frames"]));
        Ok(json!({
            "load": load,
            "markets": markets,
            "data_shards": 1,
            "rate_target": rate_label(rate),
            "http_clients": if load { API_HTTP_CLIENTS } else { 0 },
            "ws_clients": if load { API_WS_CLIENTS } else { 0 },
            "ws_tokens_per_client": API_WS_TOKENS,
            "window_secs": secs,
            "other_processes_share_before": quiet,
            "other_processes_share": other_share(&cpu, secs),
            "http_queries": lat.len(),
            "http_queries_per_s": lat.len() as f64 / secs,
            "http_errors": errors,
            "http_non_200": statuses,
            "http_latency_ns": {
                "p50": percentile(&lat, 0.50),
                "p99": percentile(&lat, 0.99),
                "max": lat.last().copied().unwrap_or(0),
            },
            "ws_messages": w1.saturating_sub(w0),
            "ws_messages_per_s": w1.saturating_sub(w0) as f64 / secs,
            "ws_connections_ended": ws_ended,
            "frames_per_s": frames as f64 / secs,
            "apply_ns": {
                "p50": shard_max(&s1["shards"], "apply_ns_p50"),
                "p99": shard_max(&s1["shards"], "apply_ns_p99"),
                "p999": shard_max(&s1["shards"], "apply_ns_p999"),
                "max": shard_max(&s1["shards"], "apply_ns_max"),
                "note": "cumulative since engine start (includes the opening dumps)",
            },
            "cpu_ms": cpu_ms_json(&cpu),
            "unsettled": unsettled,
            "verify": verify_json(&v),
        }))
    })();
    engine.stop();
    sim.stop().map_err(|e| anyhow!("simulator stop: {e}"))?;
    result
}

fn print_api(s: &Value) {
    println!(
        "api   load {:5}  engine {} frames/s  apply p50/p99/p99.9 {}/{}/{} us  | HTTP {} clients: {} q/s, p50 {} us, p99 {} us, errors {}, non-200 {}  | WS {} clients: {} msg/s  | verified {} mismatches {}  | other processes {}",
        s["load"].as_bool().unwrap_or(false),
        k(f(&s["frames_per_s"])),
        us(&s["apply_ns"]["p50"]),
        us(&s["apply_ns"]["p99"]),
        us(&s["apply_ns"]["p999"]),
        u(&s["http_clients"]),
        k(f(&s["http_queries_per_s"])),
        us(&s["http_latency_ns"]["p50"]),
        us(&s["http_latency_ns"]["p99"]),
        u(&s["http_errors"]),
        s["http_non_200"],
        u(&s["ws_clients"]),
        k(f(&s["ws_messages_per_s"])),
        u(&s["verify"]["compared"]),
        u(&s["verify"]["mismatches"]),
        pct(f(&s["other_processes_share"])),
    );
}

// ---------------------------------------------------------------------------------------------
// soak: steady rate with random faults, RSS and book states every minute
// ---------------------------------------------------------------------------------------------

/// Random faults per minute during the soak.
const SOAK_FAULTS_PER_MINUTE: f64 = 4.0;

fn soak(h: &Http, minutes: f64, plan: &Plan) -> Result<Value> {
    let (markets, rate) = (API_MARKETS, API_RATE);
    let p = placing(1, plan.sim_cpu);
    let faults = RandomFaults { seed: SEED, per_minute: SOAK_FAULTS_PER_MINUTE };
    let sim = start_sim_faults(markets, rate, p.sim, Some(faults))?;
    let base = sim.http_url();
    let cfg = engine_config(&base, &sim.ws_url(), &p)?;
    let (engine, api) = start_engine(&cfg)?;
    let result = (|| -> Result<Value> {
        let want = 2 * markets as u64;
        wait_for("all books live", Duration::from_secs(300), || settled(h, &api, want))?;
        let total = Duration::from_secs_f64(minutes * 60.0);
        let t0 = Instant::now();
        h.post(&format!("{base}/sim/resume"))?;
        let mut samples = Vec::new();
        let mut last_frames = u(&h.get_ok(&format!("{api}/stats"))?["totals"]["frames"]);
        let mut last_t = t0;
        let mut n = 1u32;
        // Bounded: one sample per minute (the last at the end of the soak).
        while last_t.duration_since(t0) < total && n <= 100_000 {
            let due = (Duration::from_secs(60) * n).min(total);
            std::thread::sleep(due.saturating_sub(t0.elapsed()));
            n += 1;
            let s = h.get_ok(&format!("{api}/stats"))?;
            let st = h.get_ok(&format!("{base}/sim/status"))?;
            let now = Instant::now();
            let t = &s["totals"];
            let frames = u(&t["frames"]);
            let fps = frames.saturating_sub(last_frames) as f64
                / now.duration_since(last_t).as_secs_f64().max(1e-3);
            (last_frames, last_t) = (frames, now);
            let sample = json!({
                "minute": now.duration_since(t0).as_secs_f64() / 60.0,
                "rss_bytes": rss(),
                "frames_per_s": fps,
                "books": u(&t["books"]),
                "books_live": u(&t["books_live"]),
                "books_resolved": u(&t["books_resolved"]),
                "books_seeding": u(&t["books_seeding"]),
                "books_suspect": u(&t["books_suspect"]),
                "books_resyncing": u(&t["books_resyncing"]),
                "reconnects": u(&t["reconnects"]),
                "resyncs": u(&t["resyncs"]),
                "hash_mismatches": u(&t["hash_mismatches"]),
                "sim_faults": st["faults"].clone(),
            });
            println!(
                "soak  {:5.1} min  RSS {:.1} MiB  {} frames/s  books {} live {} resolved {} seeding {} suspect {} resyncing {}  reconnects {} resyncs {} hash mismatches {}  sim faults {}",
                f(&sample["minute"]),
                f(&sample["rss_bytes"]) / 1048576.0,
                k(fps),
                u(&sample["books"]),
                u(&sample["books_live"]),
                u(&sample["books_resolved"]),
                u(&sample["books_seeding"]),
                u(&sample["books_suspect"]),
                u(&sample["books_resyncing"]),
                u(&sample["reconnects"]),
                u(&sample["resyncs"]),
                u(&sample["hash_mismatches"]),
                st["faults"],
            );
            samples.push(sample);
        }
        let drain = pause_until_at_rest(h, &base, Duration::from_secs(120))?;
        let (settle, unsettled) = engine_at_rest(h, &base, &api, Duration::from_secs(120))?;
        let v = verify(h, &base, &api, markets, plan.verify_max)?;
        println!(
            "soak  end: drain {:.1} s, settle {:.1} s; verified {} books, mismatches {}{}",
            drain.as_secs_f64(),
            settle.as_secs_f64(),
            v.compared,
            v.mismatches,
            if v.examples.is_empty() { String::new() } else { format!(" {:?}", v.examples) },
        );
        Ok(json!({
            "markets": markets,
            "data_shards": 1,
            "rate_target": rate_label(rate),
            "random_faults_per_minute": SOAK_FAULTS_PER_MINUTE,
            "minutes": minutes,
            "samples": samples,
            "rss_note": "VmRSS of this process: simulator, engine and harness",
            "drain_secs_after_pause": drain.as_secs_f64(),
            "engine_settle_secs": settle.as_secs_f64(),
            "unsettled": unsettled,
            "verify": verify_json(&v),
        }))
    })();
    engine.stop();
    sim.stop().map_err(|e| anyhow!("simulator stop: {e}"))?;
    result
}

// ---------------------------------------------------------------------------------------------
// report
// ---------------------------------------------------------------------------------------------

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn k(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn us(ns: &Value) -> String {
    format!("{:.1}", f(ns) / 1e3)
}

fn pct(x: f64) -> String {
    format!("{:.0}%", 100.0 * x)
}

fn print_wire(w: &Value) {
    println!(
        "wire  markets {}  conns {} (+{} for new markets)  {} frames/s  {:.1} MB/s  ({} B/frame)  sim {} events/s, {} frames generated/s  backlog {}  | CPU ns/frame: client {:.0}, sim {:.0}  | other processes {}",
        u(&w["markets"]),
        u(&w["connections"]),
        u(&w["connections_for_new_markets"]),
        k(f(&w["frames_per_s"])),
        f(&w["mb_per_s"]),
        u(&w["avg_frame_bytes"]),
        k(f(&w["sim_events_per_s"])),
        k(f(&w["sim_frames_generated_per_s"])),
        u(&w["sim_backlog_end"]),
        f(&w["client_cpu_ns_per_frame"]),
        f(&w["sim_cpu_ns_per_frame"]),
        pct(f(&w["other_processes_share"])),
    );
}

const STEP_COLS: [&str; 21] = [
    "markets",
    "sh",
    "rate",
    "sim ev/s",
    "sim fr/s",
    "eng fr/s",
    "eng ev/s",
    "entr/s",
    "%wire",
    "p50 us",
    "p99 us",
    "p99.9 us",
    "max us",
    "cpu/fr us",
    "eng/fr",
    "data/fr",
    "backlog",
    "recon",
    "verified",
    "mism",
    "other",
];

fn step_header() {
    let cols: Vec<String> = STEP_COLS.iter().map(|c| format!("{c:>8}")).collect();
    println!("{}", cols.join(" "));
}

fn print_step(s: &Value, wire: Option<f64>) {
    let fr = f(&s["frames_per_s"]);
    let per = |key: &str| format!("{:.1}", f(&s["cpu_ns_per_frame"][key]) / 1e3);
    let cells = [
        u(&s["markets"]).to_string(),
        u(&s["data_shards"]).to_string(),
        s["rate_target"].as_str().unwrap_or("?").to_owned(),
        k(f(&s["sim_events_per_s"])),
        k(f(&s["sim_frames_sent_per_s"])),
        k(fr),
        k(f(&s["events_per_s"])),
        k(f(&s["price_change_entries_per_s"])),
        wire.map_or("-".to_owned(), |w| pct(fr / w)),
        us(&s["apply_ns"]["p50"]),
        us(&s["apply_ns"]["p99"]),
        us(&s["apply_ns"]["p999"]),
        us(&s["apply_ns"]["max"]),
        per("process"),
        per("engine"),
        per("engine_data"),
        u(&s["sim_backlog_frames_at_end"]).to_string(),
        u(&s["reconnects"]).to_string(),
        u(&s["verify"]["compared"]).to_string(),
        u(&s["verify"]["mismatches"]).to_string(),
        pct(f(&s["other_processes_share"])),
    ];
    let cols: Vec<String> = cells.iter().map(|c| format!("{c:>8}")).collect();
    println!("{}", cols.join(" "));
}

fn print_scale(s: &Value) {
    println!(
        "scale markets {} books {} shards {} conns {}: discovery done {:.1} s, first live {:.1} s, all live {:.1} s; RSS engine delta {:.1} MiB = {:.0} B/book (before engine {:.1} MiB, after {:.1} MiB; simulator process {:.1} MiB); stop {:.2} s; verified {} mismatches {}",
        u(&s["markets"]),
        u(&s["books"]),
        u(&s["data_shards"]),
        u(&s["connections"]),
        f(&s["discovery_done_secs"]),
        f(&s["first_book_live_secs"]),
        f(&s["all_books_live_secs"]),
        f(&s["rss_engine_delta_bytes"]) / 1048576.0,
        f(&s["bytes_per_book"]),
        f(&s["rss_before_engine_bytes"]) / 1048576.0,
        f(&s["rss_after_all_live_bytes"]) / 1048576.0,
        f(&s["sim_process_rss_bytes"]) / 1048576.0,
        f(&s["engine_stop_secs"]),
        u(&s["verify"]["compared"]),
        u(&s["verify"]["mismatches"]),
    );
}

fn write_out(path: &str, out: &Value) -> Result<()> {
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(out)?;
    std::fs::write(path, text).with_context(|| format!("write {path}"))
}

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
