//! Phase **api-health** (`--only api-health`, also run by `--full`): the cheap API endpoints
//! under load, to check that they cost the data shards nothing (issue 12 item 3: data shards
//! push a stats snapshot to control every 250 ms; `/health`, `/ready`, `/stats`, `/metrics`
//! answer from control's copy and never ask the data shards).
//!
//! For each market count, a series of steps, each with a fresh simulator and engine (1 data
//! shard, simulator at `API_RATE`), so each step's cumulative apply histogram is its own. In
//! each step, once every book is live, the feed runs alone (`API_LOAD_RAMP`, then
//! `API_LOAD_BASELINE` to measure what the feed alone costs the shards per second); then
//! `API_LOAD_CLIENTS` client threads (one pinned glommio executor each, on the control
//! shard's and simulator's CPU, so they stay off the data shard's) request one endpoint (or a
//! rotation of them) at a paced total rate for the window. The first step has no clients: its
//! "extra" CPU is the noise floor. Each step reports requests/s achieved, HTTP p50/p99, the
//! engine's apply p50/p99/p99.9, and the data and control shards' CPU time, from
//! `/proc/self/task/<tid>/schedstat` (ns resolution, the thread's own run time).
//!
//! **Data-shard CPU per request** = (data-shard CPU in the window − baseline per second ×
//! window) / requests. Comparing separate steps (separate engines, minutes apart) was too
//! noisy on a shared machine; the in-step baseline removes the differences between engines
//! but not those between seconds.

use anyhow::{anyhow, Result};
use glommio::{LocalExecutorBuilder, Placement};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::{percentile, API_RATE};
use crate::args::Plan;
use crate::harness::{
    cpus, engine_at_rest, engine_config, pause_until_at_rest, placing, settled, shard_max,
    start_engine, start_sim, u, wait_for, Http,
};
use crate::procfs::{cpu_delta, cpu_ms_json, cpu_snapshot, other_share, wait_quiet, warn_foreign};
use crate::report::{f, k, pct, us};
use crate::steps::rate_label;
use crate::truth::{verify, verify_json};
use crate::wire::markets_tokens;

/// Client threads of a loaded step (each paced at its share of the step's total rate).
pub(crate) const API_LOAD_CLIENTS: usize = 4;
/// Books compared with the truth after each step (a sample: the steps are many).
pub(crate) const API_LOAD_VERIFY: usize = 500;
/// Longest wait for a quiet machine before each step.
pub(crate) const API_LOAD_QUIET_WAIT: Duration = Duration::from_secs(3);
/// The feed alone before the loaded window: a ramp, then the baseline measurement.
pub(crate) const API_LOAD_RAMP: Duration = Duration::from_secs(1);
pub(crate) const API_LOAD_BASELINE: Duration = Duration::from_secs(3);
/// Longest measurement window of a step.
pub(crate) const API_LOAD_WINDOW_MAX: Duration = Duration::from_secs(10);

/// What a step's clients ask for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Target {
    /// No clients.
    Quiet,
    /// One fixed path.
    Path(&'static str),
    /// `/health`, `/ready`, `/stats`, `/metrics` in turn.
    Mix,
    /// `/books/{token}?depth=10` for random tokens.
    Books,
}

/// `/markets` is not in the mix: it costs the control shard ~2 ms a request (it filters and
/// sorts the whole registry), which would cap the mix far below its rate.
pub(crate) const MIX: [&str; 4] = ["/health", "/ready", "/stats", "/metrics"];

impl Target {
    pub(crate) fn label(self) -> String {
        match self {
            Target::Quiet => "none".into(),
            Target::Path(p) => p.into(),
            Target::Mix => "health/ready/stats/metrics".into(),
            Target::Books => "/books/{token}?depth=10".into(),
        }
    }
}

/// The steps of one market count: (target, total requests/s).
pub(crate) fn steps() -> Vec<(Target, f64)> {
    vec![
        (Target::Quiet, 0.0),
        (Target::Path("/health"), 1_000.0),
        (Target::Path("/health"), 5_000.0),
        (Target::Path("/ready"), 1_000.0),
        (Target::Path("/stats"), 1_000.0),
        (Target::Path("/metrics"), 1_000.0),
        (Target::Path("/markets?limit=100"), 1_000.0),
        (Target::Mix, 5_000.0),
        (Target::Books, 1_000.0),
        (Target::Books, 5_000.0),
    ]
}

/// One client thread's results.
#[derive(Default)]
pub(crate) struct Load {
    pub(crate) lat_ns: Vec<u64>,
    pub(crate) errors: u64,
    pub(crate) statuses: BTreeMap<u16, u64>,
    /// Requests sent more than 1 ms after their scheduled time (the client fell behind).
    pub(crate) late: u64,
}

/// One paced client: `rate` requests/s (open loop: each request has a scheduled send time;
/// a late request goes at once, without making up for the lost time by bursting beyond the
/// schedule) until `stop`. Latency is from send to the whole body read.
pub(crate) fn client(
    api: &str,
    target: Target,
    tokens: &[String],
    rate: f64,
    seed: u64,
    stop: &AtomicBool,
) -> Load {
    let h = Http::new();
    let mut out = Load::default();
    let mut x = seed | 1;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let start = Instant::now();
    let mut i: u32 = 0;
    // Stagger the clients' schedules within one interval.
    let offset = interval.mul_f64((seed % 1_000) as f64 / 1_000.0);
    while !stop.load(Ordering::Relaxed) {
        let due = start + offset + interval * i;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > Duration::from_millis(1) {
            out.late += 1;
        }
        let path = match target {
            Target::Quiet => break,
            Target::Path(p) => p.to_owned(),
            Target::Mix => MIX[i as usize % MIX.len()].to_owned(),
            Target::Books => {
                if tokens.is_empty() {
                    break;
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("/books/{}?depth=10", tokens[(x % tokens.len() as u64) as usize])
            }
        };
        let url = format!("{api}{path}");
        let t = Instant::now();
        let status = match h.agent.get(&url).call() {
            Ok(mut r) => r
                .body_mut()
                .with_config()
                .limit(1 << 26)
                .read_to_string()
                .ok()
                .map(|_| r.status().as_u16()),
            Err(_) => None,
        };
        out.lat_ns.push(t.elapsed().as_nanos() as u64);
        match status {
            Some(200) => {}
            Some(s) => *out.statuses.entry(s).or_insert(0) += 1,
            None => out.errors += 1,
        }
        i = i.wrapping_add(1);
    }
    out
}

/// Run time (ns) of this process's threads whose names start with `prefix` (a glommio
/// executor and any helper thread it started, which inherit its name), from
/// `/proc/self/task/<tid>/schedstat`: the kernel's own count, in ns, not 10 ms ticks.
pub(crate) fn thread_ns(prefix: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return 0 };
    dir.flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.trim().starts_with(prefix))
        })
        .filter_map(|e| {
            let s = std::fs::read_to_string(e.path().join("schedstat")).ok()?;
            s.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// One step: a fresh simulator and engine; `target` at `rate` requests/s during the window.
pub(crate) fn step(
    h: &Http,
    markets: usize,
    target: Target,
    rate: f64,
    client_cpu: Option<usize>,
    plan: &Plan,
) -> Result<Value> {
    let p = placing(1, plan.sim_cpu);
    let sim = start_sim(markets, API_RATE, p.sim)?;
    let base = sim.http_url();
    let cfg = engine_config(&base, &sim.ws_url(), &p)?;
    let (engine, api) = start_engine(&cfg)?;
    let window = plan.window.min(API_LOAD_WINDOW_MAX);
    let result = (|| -> Result<Value> {
        let want = 2 * markets as u64;
        let t_live = Instant::now();
        wait_for("all books live", Duration::from_secs(300), || settled(h, &api, want))?;
        let live_secs = t_live.elapsed().as_secs_f64();
        let tokens: Vec<String> = markets_tokens(h, &base)?.into_iter().flatten().collect();
        let quiet = wait_quiet(API_LOAD_QUIET_WAIT.min(plan.quiet_wait));
        let stop = Arc::new(AtomicBool::new(false));
        let clients = if target == Target::Quiet { 0 } else { API_LOAD_CLIENTS };
        let tokens = Arc::new(tokens);
        // The feed alone first, on this engine: what it costs the shards per second.
        h.post(&format!("{base}/sim/resume"))?;
        std::thread::sleep(API_LOAD_RAMP);
        let (db0, cb0, tb0) = (thread_ns("data-0"), thread_ns("control"), Instant::now());
        std::thread::sleep(API_LOAD_BASELINE);
        let (db1, cb1) = (thread_ns("data-0"), thread_ns("control"));
        let base_secs = tb0.elapsed().as_secs_f64();
        let s0 = h.get_ok(&format!("{api}/stats"))?;
        let cpu0 = cpu_snapshot();
        let (d0, c0) = (thread_ns("data-0"), thread_ns("control"));
        let t0 = Instant::now();
        let mut handles = Vec::new();
        for i in 0..clients {
            let (api, tokens, stop) = (api.clone(), Arc::clone(&tokens), Arc::clone(&stop));
            let per = rate / clients as f64;
            let seed = 0x9E37_79B9_7F4A_7C15 ^ (i as u64 * 250 + 1);
            // Pinned with the simulator and the control shard, off the data shard's CPU.
            let placement = match client_cpu {
                Some(c) => Placement::Fixed(c),
                None => Placement::Unbound,
            };
            handles.push(
                LocalExecutorBuilder::new(placement)
                    .name(&format!("api-load-{i}"))
                    .spawn(move || async move { client(&api, target, &tokens, per, seed, &stop) })
                    .map_err(|e| anyhow!("client executor: {e}"))?,
            );
        }
        std::thread::sleep(window);
        stop.store(true, Ordering::Relaxed);
        let (d1, c1) = (thread_ns("data-0"), thread_ns("control"));
        let secs = t0.elapsed().as_secs_f64();
        let loads: Vec<Load> = handles.into_iter().map(|j| j.join().unwrap_or_default()).collect();
        let s1 = h.get_ok(&format!("{api}/stats"))?;
        let cpu = cpu_delta(&cpu0, &cpu_snapshot());
        warn_foreign(&cpu, secs);
        pause_until_at_rest(h, &base, Duration::from_secs(120))?;
        let (_, unsettled) = engine_at_rest(h, &base, &api, Duration::from_secs(60))?;
        let v = verify(h, &base, &api, markets, API_LOAD_VERIFY.min(plan.verify_max))?;
        let mut lat: Vec<u64> = loads.iter().flat_map(|l| l.lat_ns.iter().copied()).collect();
        lat.sort_unstable();
        let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
        for (st, n) in loads.iter().flat_map(|l| l.statuses.iter()) {
            *statuses.entry(st.to_string()).or_insert(0) += n;
        }
        let frames = u(&s1["totals"]["frames"]).saturating_sub(u(&s0["totals"]["frames"]));
        Ok(json!({
            "markets": markets,
            "data_shards": 1,
            "rate_target": rate_label(API_RATE),
            "endpoint": target.label(),
            "clients": clients,
            "requests_per_s_target": rate,
            "window_secs": secs,
            "all_books_live_secs": live_secs,
            "other_processes_share_before": quiet,
            "other_processes_share": other_share(&cpu, secs),
            "requests": lat.len(),
            "requests_per_s": lat.len() as f64 / secs,
            "requests_late_1ms": loads.iter().map(|l| l.late).sum::<u64>(),
            "http_errors": loads.iter().map(|l| l.errors).sum::<u64>(),
            "http_non_200": statuses,
            "http_latency_ns": {
                "p50": percentile(&lat, 0.50),
                "p99": percentile(&lat, 0.99),
                "max": lat.last().copied().unwrap_or(0),
            },
            "frames": frames,
            "frames_per_s": frames as f64 / secs,
            "apply_ns": {
                "p50": shard_max(&s1["shards"], "apply_ns_p50"),
                "p99": shard_max(&s1["shards"], "apply_ns_p99"),
                "p999": shard_max(&s1["shards"], "apply_ns_p999"),
                "max": shard_max(&s1["shards"], "apply_ns_max"),
                "note": "cumulative since engine start (includes the opening dumps)",
            },
            "clients_cpu": client_cpu,
            "baseline_secs": base_secs,
            "data_shard_cpu_ns": d1.saturating_sub(d0),
            "control_shard_cpu_ns": c1.saturating_sub(c0),
            "data_shard_baseline_ns_per_s": db1.saturating_sub(db0) as f64 / base_secs,
            "control_shard_baseline_ns_per_s": cb1.saturating_sub(cb0) as f64 / base_secs,
            "cpu_ms": cpu_ms_json(&cpu),
            "unsettled": unsettled,
            "verify": verify_json(&v),
        }))
    })();
    engine.stop();
    sim.stop().map_err(|e| anyhow!("simulator stop: {e}"))?;
    result
}

/// Adds the per-request CPU estimates to `s`: the shard's CPU over the loaded window minus
/// what the feed alone cost it per second (the step's own baseline) times the window, per
/// request. On a quiet step (no requests) the same difference, per second, is the noise.
pub(crate) fn per_request(s: &mut Value) {
    let n = f(&s["requests"]);
    let secs = f(&s["window_secs"]).max(1e-9);
    for shard in ["data_shard", "control_shard"] {
        let extra =
            f(&s[format!("{shard}_cpu_ns")]) - f(&s[format!("{shard}_baseline_ns_per_s")]) * secs;
        s[format!("{shard}_extra_ns_per_s")] = json!(extra / secs);
        s[format!("{shard}_cpu_ns_per_request")] =
            if n > 0.0 { json!(extra / n) } else { json!(null) };
        s[format!("{shard}_busy")] = json!(f(&s[format!("{shard}_cpu_ns")]) / 1e9 / secs);
        s[format!("{shard}_baseline_busy")] =
            json!(f(&s[format!("{shard}_baseline_ns_per_s")]) / 1e9);
    }
}

pub(crate) fn print(s: &Value) {
    let per = |key: &str| match s[key].as_f64() {
        Some(x) => format!("{:.1}", x / 1e3),
        None => "-".into(),
    };
    println!(
        "api-health markets {} {:>24} @ {:>5}/s: {:>6} req/s (late {}), HTTP p50/p99 {}/{} us, non-200 {} errors {} | engine {} frames/s, apply p50/p99/p99.9 {}/{}/{} us | data shard busy {} -> {} ({} us/req), control busy {} -> {} ({} us/req) | verified {} mismatches {} | other processes {}",
        u(&s["markets"]),
        s["endpoint"].as_str().unwrap_or("?"),
        f(&s["requests_per_s_target"]),
        k(f(&s["requests_per_s"])),
        u(&s["requests_late_1ms"]),
        us(&s["http_latency_ns"]["p50"]),
        us(&s["http_latency_ns"]["p99"]),
        s["http_non_200"],
        u(&s["http_errors"]),
        k(f(&s["frames_per_s"])),
        us(&s["apply_ns"]["p50"]),
        us(&s["apply_ns"]["p99"]),
        us(&s["apply_ns"]["p999"]),
        pct(f(&s["data_shard_baseline_busy"])),
        pct(f(&s["data_shard_busy"])),
        per("data_shard_cpu_ns_per_request"),
        pct(f(&s["control_shard_baseline_busy"])),
        pct(f(&s["control_shard_busy"])),
        per("control_shard_cpu_ns_per_request"),
        u(&s["verify"]["compared"]),
        u(&s["verify"]["mismatches"]),
        pct(f(&s["other_processes_share"])),
    );
}

/// The api-health phase for each of `markets`.
pub(super) fn run(h: &Http, markets: &[usize], plan: &Plan) -> Result<Vec<Value>> {
    // The clients share the control shard's CPU (and the simulator's), not the data shard's.
    let client_cpu = (cpus() >= 2).then(|| placing(1, plan.sim_cpu).control);
    println!(
        "api-health: {} client threads on CPU {:?} (the control shard's and simulator's) of {}",
        API_LOAD_CLIENTS,
        client_cpu,
        cpus()
    );
    let mut out = Vec::new();
    for &m in markets {
        for (target, rate) in steps() {
            let mut s = step(h, m, target, rate, client_cpu, plan).map_err(|e| {
                anyhow!("api-health step {m} markets, {target:?} at {rate}/s: {e:#}")
            })?;
            per_request(&mut s);
            print(&s);
            out.push(s);
        }
    }
    Ok(out)
}
