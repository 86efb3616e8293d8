//! Phase 4, **api**: the HTTP and `/ws` API under load, with and without clients.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use futures_util::StreamExt;
use glommio::{LocalExecutorBuilder, Placement};
use polybook_shards::net::{connect_ws_with, ConnectOptions, Message};
use serde_json::{json, Value};

use crate::args::Plan;
use crate::harness::{
    engine_at_rest, engine_config, pause_until_at_rest, placing, settled, shard_max, start_engine,
    start_sim, u, wait_for, Http,
};
use crate::procfs::{cpu_delta, cpu_ms_json, cpu_snapshot, other_share, wait_quiet, warn_foreign};
use crate::report::{f, k, pct, us};
use crate::steps::rate_label;
use crate::truth::{verify, verify_json};
use crate::wire::{markets_tokens, WireCounters};

/// Markets, simulator rate and data shards of the API phase and the soak.
pub(crate) const API_MARKETS: usize = 2_000;
pub(crate) const API_RATE: f64 = 20_000.0;
/// Concurrent HTTP clients (threads, one keep-alive connection each) asking for books.
pub(crate) const API_HTTP_CLIENTS: usize = 8;
/// WebSocket clients on `/ws`, each subscribed to `API_WS_TOKENS` tokens.
pub(crate) const API_WS_CLIENTS: usize = 4;
pub(crate) const API_WS_TOKENS: usize = 50;
/// Upper bound on requests per HTTP client (the loop also ends with the window).
pub(crate) const API_HTTP_MAX_PER_CLIENT: usize = 5_000_000;

/// One WebSocket client of the engine's `/ws`: subscribes `tokens` and counts text messages.
pub(crate) async fn api_ws_conn(url: String, tokens: Vec<String>, c: Arc<WireCounters>) {
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
pub(crate) struct HttpLoad {
    pub(crate) lat_ns: Vec<u64>,
    /// Transport errors.
    pub(crate) errors: u64,
    /// Answers other than 200 (404: a market resolved during the run), by status.
    pub(crate) statuses: BTreeMap<u16, u64>,
}

/// One HTTP client: `/books/{token}?depth=10` for random tokens until `stop` (bounded).
pub(crate) fn http_client(api: &str, tokens: &[String], seed: u64, stop: &AtomicBool) -> HttpLoad {
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

pub(crate) fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    sorted[i]
}

/// One API step: a fresh simulator and engine (1 data shard) at `API_RATE`; with `load`, HTTP
/// and WebSocket clients query the engine during the measurement window.
pub(crate) fn api_step(h: &Http, load: bool, plan: &Plan) -> Result<Value> {
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

pub(crate) fn print_api(s: &Value) {
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
