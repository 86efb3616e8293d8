//! Blocking HTTP to the simulator and the engine, and starting, placing and settling them.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use polybook_shards::config::{DataCores, ValidConfig};
use polybook_shards::engine::{self, EngineHandle};
use polybook_shards::sim_server::{
    spawn_sim_server, RandomFaults, SimServerConfig, SimServerHandle,
};
use serde_json::{json, Value};

use crate::SEED;

pub(crate) use polybook_bench::http::{u, wait_for, Http};
pub(crate) use polybook_bench::procfs::cpus;

pub(crate) fn start_sim(markets: usize, rate: f64, cpu: Option<usize>) -> Result<SimServerHandle> {
    start_sim_faults(markets, rate, cpu, None)
}

pub(crate) fn start_sim_faults(
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
pub(crate) struct Placing {
    pub(crate) control: usize,
    pub(crate) data: Vec<usize>,
    pub(crate) sim: Option<usize>,
}

pub(crate) fn placing(shards: usize, sim_cpu: Option<Option<usize>>) -> Placing {
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

pub(crate) fn engine_config(http_url: &str, ws_url: &str, p: &Placing) -> Result<ValidConfig> {
    let mut c = polybook_testkit::config_for_sim(http_url, ws_url);
    c.layout.control_core = p.control;
    c.layout.data_cores = DataCores::List(p.data.clone());
    c.connections.tokens_per_conn_target = 400;
    // The harness keeps the simulator paused (silent) while it compares books; the default
    // 60 s data-silence watchdog would reconnect every socket during a long comparison.
    c.connections.data_silence_ms = 600_000;
    // One discovery at start; new_market hints still wake it (at most every 2 s).
    c.discovery.interval_ms = 60_000;
    // The comparison reads every book over HTTP from one address.
    c.api.requests_per_s_max = 1_000_000;
    c.validate().map_err(|e| anyhow!("engine config: {e}"))
}

pub(crate) fn start_engine(cfg: &ValidConfig) -> Result<(EngineHandle, String)> {
    let engine = engine::start(cfg).map_err(|e| anyhow!("engine: {e}"))?;
    let api = format!("http://{}", engine.api_addr());
    Ok((engine, api))
}

/// Every book the engine has is live or resolved, and it has at least `want` of them.
pub(crate) fn settled(h: &Http, api: &str, want: u64) -> Result<Value, String> {
    let s = h.get_ok(&format!("{api}/stats")).map_err(|e| e.to_string())?;
    polybook_testkit::books_settled(&s, want).map(|()| s)
}

/// Sum of the engine counters that count wire events applied.
pub(crate) fn events_applied(totals: &Value, shards: &Value) -> u64 {
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

pub(crate) fn shard_sum(shards: &Value, key: &str) -> u64 {
    shards.as_array().into_iter().flatten().map(|s| u(&s["store"][key])).sum()
}

pub(crate) fn shard_total(shards: &Value, key: &str) -> u64 {
    shards.as_array().into_iter().flatten().map(|s| u(&s[key])).sum()
}

pub(crate) fn shard_max(shards: &Value, key: &str) -> u64 {
    shards.as_array().into_iter().flatten().map(|s| u(&s[key])).max().unwrap_or(0)
}

pub(crate) fn sim_backlog(status: &Value) -> u64 {
    status["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| u(&c["queue_depth"]) + u(&c["in_flight"]))
        .sum()
}

/// Pauses the simulator and waits until every queued frame is flushed to its socket.
pub(crate) fn pause_until_at_rest(h: &Http, sim: &str, limit: Duration) -> Result<Duration> {
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
pub(crate) fn engine_at_rest(
    h: &Http,
    sim: &str,
    api: &str,
    limit: Duration,
) -> Result<(Duration, Value)> {
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
pub(crate) fn conn_limits(sim_status: &Value, stats: &Value) -> Value {
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
