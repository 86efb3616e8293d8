//! One engine step: a paused simulated exchange for Gamma (its model never moves), the
//! replay server for the market channel, a fresh engine in this process; every book live,
//! optionally an idle measurement, then the corpus cut at a checkpoint streamed at a rate (or
//! flat out); when the engine has counted every frame, its CPU, latency and `/stats` health
//! during the run, and every book compared with the checkpoint's truth.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use polybook_bench::http::{u, wait_for, Http};
use polybook_bench::procfs::{
    busy_per_cpu, cpu_delta, cpu_snapshot_precise, other_share, wait_quiet,
};
use polybook_shards::config::DataCores;
use polybook_shards::engine;
use polybook_shards::sim_server::{spawn_sim_server, SimServerConfig};
use polybook_testkit::{books_settled, compare_book, Compared};
use serde_json::{json, Value};

use crate::corpus::{real_shape, Checkpoint, Corpus};
use crate::nats_probe::{latencies, received_json, Consumer, NatsServer};
use crate::server::{build_streams, Server};
use crate::streams::SendLog;

/// Where things run: the generator, the simulator and the control shard share `gen`; the
/// data shards take `data` (on 2 CPUs a second data shard shares the generator's CPU).
#[derive(Debug, Clone)]
pub(crate) struct Placing {
    pub(crate) gen: Option<usize>,
    pub(crate) control: usize,
    pub(crate) data: Vec<usize>,
    /// CPUs of the machine (this thread is pinned, so it cannot ask).
    pub(crate) cpus: usize,
}

pub(crate) struct Step {
    pub(crate) shards: usize,
    /// None: flat out.
    pub(crate) rate: Option<f64>,
    /// Frames to stream (the corpus is cut at the first checkpoint with at least these).
    pub(crate) frames: usize,
    /// Measure the idle data shard this long before streaming.
    pub(crate) idle: Option<Duration>,
    pub(crate) quiet_wait: Duration,
    /// `integrity.verify_hash` (the default policy: on).
    pub(crate) verify_hash: bool,
    /// `[publish.nats] url`: publish every change (the data shard's cost of it is the point),
    /// with a consumer of every subject timing each `level` delta.
    pub(crate) nats: Option<String>,
    /// Where the consumer runs (None: unpinned).
    pub(crate) nats_cpu: Option<usize>,
}

/// The engine's `[publish.nats] subject_prefix` (the default).
const NATS_PREFIX: &str = "polybook";

fn data_cpu(d: &std::collections::BTreeMap<String, u64>) -> u64 {
    d.iter().filter(|(k, _)| k.starts_with("engine_data")).map(|(_, v)| *v).sum()
}

pub(crate) fn engine_step(
    h: &Http,
    corpus: &Arc<Corpus>,
    p: &Placing,
    step: &Step,
    nats_server: Option<&NatsServer>,
) -> Result<Value> {
    let sim = spawn_sim_server(SimServerConfig {
        listen: "127.0.0.1:0".into(),
        seed: corpus.seed,
        markets: corpus.markets,
        rate: 0.0,
        start_paused: true,
        start_ms: Some(corpus.start_ms),
        cpu: p.gen,
        real_shape: real_shape(),
        ..SimServerConfig::default()
    })
    .map_err(|e| anyhow!("simulator: {e}"))?;
    let server = Server::start(Arc::clone(corpus), p.gen)?;
    let mut c = polybook_testkit::config_for_sim(&sim.http_url(), &server.ws_url());
    c.layout.control_core = p.control;
    c.layout.data_cores = DataCores::List(p.data.clone());
    c.connections.tokens_per_conn_target = 400;
    // Books are compared after the stream, with the feed silent.
    c.connections.data_silence_ms = 600_000;
    c.discovery.interval_ms = 60_000;
    // `/stats` every 10 ms and every book over HTTP from one address.
    c.api.requests_per_s_max = 1_000_000;
    c.integrity.verify_hash = step.verify_hash;
    c.publish.nats.url = step.nats.clone();
    let cfg = c.validate().map_err(|e| anyhow!("engine config: {e}"))?;
    crate::pin_current_to(0..p.cpus);
    let engine = engine::start(&cfg).map_err(|e| anyhow!("engine: {e}"));
    if let Some(g) = p.gen {
        crate::pin_current(g);
    }
    let engine = engine?;
    let api = format!("http://{}", engine.api_addr());
    let r = run(h, corpus, &server, &api, step, nats_server);
    let t = Instant::now();
    engine.stop();
    let stop_secs = t.elapsed().as_secs_f64();
    server.stop();
    sim.stop().map_err(|e| anyhow!("simulator stop: {e}"))?;
    r.map(|mut v| {
        v["placement"] =
            json!({"generator_cpu": p.gen, "control_cpu": p.control, "data_cpus": p.data});
        v["engine_stop_secs"] = json!(stop_secs);
        v
    })
}

fn run(
    h: &Http,
    corpus: &Arc<Corpus>,
    server: &Server,
    api: &str,
    step: &Step,
    nats_server: Option<&NatsServer>,
) -> Result<Value> {
    let want = 2 * corpus.markets as u64;
    let t_start = Instant::now();
    wait_for("all books live", Duration::from_secs(120), || {
        let s = h.get_ok(&format!("{api}/stats")).map_err(|e| e.to_string())?;
        books_settled(&s, want)
    })?;
    let cold_start = t_start.elapsed().as_secs_f64();
    let quiet = wait_quiet(step.quiet_wait);
    let idle = match step.idle {
        Some(d) => {
            let a = cpu_snapshot_precise();
            std::thread::sleep(d);
            let cpu = cpu_delta(&a, &cpu_snapshot_precise());
            let secs = d.as_secs_f64();
            json!({
                "secs": secs,
                "data_shard_cpu_share": data_cpu(&cpu) as f64 / 1e9 / secs,
                "control_cpu_share": cpu.get("engine_control").copied().unwrap_or(0) as f64 / 1e9 / secs,
                "other_processes_share": other_share(&cpu, secs),
            })
        }
        None => Value::Null,
    };
    let s0 = h.get_ok(&format!("{api}/stats"))?;
    let f0 = u(&s0["totals"]["frames"]);
    let conns = server.conns();
    let cp: &Checkpoint = corpus.checkpoint(step.frames);
    let (mut streams, offered, routes) = build_streams(corpus, &conns, cp.frames, step.rate, None);
    let expected: u64 = streams.iter().map(|(_, s)| s.ends.len() as u64).sum();
    let price_changes = corpus.price_changes(cp.frames) as u64;
    // With NATS on: a consumer of every subject, and each batch's write time noted.
    let consumer = match &step.nats {
        Some(url) => Some(Consumer::start(url, NATS_PREFIX, Arc::clone(corpus), step.nats_cpu)?),
        None => None,
    };
    let published = |s: &Value| u(&s["nats"]["published"]);
    let published0 = published(&h.get_ok(&format!("{api}/stats"))?);
    let logs: Vec<SendLog> = streams.iter().map(|_| SendLog::default()).collect();
    if consumer.is_some() {
        for ((_, s), log) in streams.iter_mut().zip(&logs) {
            s.log = Some(Arc::clone(log));
        }
    }
    let server_cpu0 = nats_server.map(NatsServer::cpu_ns);
    let (cpu0, busy0) = (cpu_snapshot_precise(), busy_per_cpu());
    let start = server.stream(streams);
    let limit =
        Duration::from_secs_f64(offered as f64 / step.rate.unwrap_or(20_000.0) * 3.0 + 60.0);
    // Poll every 10 ms: a changed count is a snapshot taken (every 250 ms) since the last poll.
    let (mut changes, mut polls, mut blind, mut last) = (Vec::new(), 0u64, 0u64, f0);
    let mut backlog_max = 0u64;
    let s1 = loop {
        if start.elapsed() > limit {
            let got = last - f0;
            return Err(anyhow!("engine counted {got} of {expected} frames in {limit:?}"));
        }
        let s = h.get_ok(&format!("{api}/stats"))?;
        polls += 1;
        backlog_max = backlog_max.max(u(&s["nats"]["backlog"]));
        // A shard whose snapshot is over 2 s old is null, and missing from the totals.
        if s["shards"].as_array().is_some_and(|a| a.iter().any(Value::is_null)) {
            blind += 1;
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let f = u(&s["totals"]["frames"]);
        if f != last {
            changes.push((start.elapsed().as_secs_f64(), f - f0));
            last = f;
        }
        if f >= f0 + expected {
            break s;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let done = start.elapsed().as_secs_f64();
    let cpu = cpu_delta(&cpu0, &cpu_snapshot_precise());
    // The publisher, the server and the consumer go on after the shard has applied the last
    // frame: their CPU is read once the consumer has every message published (or 30 s passed).
    let nats = match consumer {
        Some(c) => Some(finish_consumer(h, api, c, published0, published)?),
        None => None,
    };
    let cpu_nats = cpu_delta(&cpu0, &cpu_snapshot_precise());
    let server_cpu = server_cpu0.zip(nats_server).map(|(a, s)| s.cpu_ns().saturating_sub(a));
    let busy: Vec<f64> = busy_per_cpu()
        .iter()
        .zip(&busy0)
        .map(|(b, a)| b.saturating_sub(*a) as f64 / 1e9 / done)
        .collect();
    let writers_done = conns
        .iter()
        .filter_map(|c| *c.finished.lock().unwrap_or_else(|e| e.into_inner()))
        .map(|t| t.duration_since(start).as_secs_f64())
        .fold(0.0, f64::max);
    // When the last frame was applied: the snapshot that first shows every frame was taken
    // within 10 ms of the poll that saw it, but up to 250 ms after the last frame; the two
    // snapshots before it give the rate that carries the remaining frames from the last one.
    let applied_at = last_frame_at(&changes, expected).unwrap_or(done);
    let applied = expected as f64 / applied_at;
    // The slope between the first and the last snapshot taken while frames still arrived.
    let inner: Vec<&(f64, u64)> = changes.iter().filter(|(_, f)| *f < expected).collect();
    let slope = match (inner.first(), inner.last()) {
        (Some(a), Some(b)) if b.0 - a.0 >= 0.5 => Some((b.1 - a.1) as f64 / (b.0 - a.0)),
        _ => None,
    };
    let settled = wait_for("books live after the stream", Duration::from_secs(30), || {
        let s = h.get_ok(&format!("{api}/stats")).map_err(|e| e.to_string())?;
        let t = &s["totals"];
        let (books, ok) = (u(&t["books"]), u(&t["books_live"]) + u(&t["books_stale"]));
        if books >= want && ok == books {
            Ok(())
        } else {
            Err(format!("{t}"))
        }
    });
    let verify = compare_all(api, corpus, cp);
    let s2 = h.get_ok(&format!("{api}/stats"))?;
    let t2 = &s2["totals"];
    let data = data_cpu(&cpu);
    let per_frame = |ns: u64| ns as f64 / expected.max(1) as f64;
    let nats = nats.map(|(got, s_nats)| {
        json!({
            "publisher_cpu_ns_per_frame": per_frame(cpu_nats.get("engine_nats_publisher").copied().unwrap_or(0)),
            "consumer_cpu_ns_per_frame": per_frame(got.cpu_ns),
            "server_cpu_ns_per_frame": server_cpu.map(per_frame),
            "published_in_run": published(&s_nats).saturating_sub(published0),
            "publisher_backlog_max": backlog_max,
            "engine": s_nats["nats"].clone(),
            "received": received_json(&got),
            "latency_ns": latencies(corpus, cp.frames, &routes, &logs, &got),
        })
    });
    let shard = |k: &str| {
        s1["shards"].as_array().into_iter().flatten().map(|s| u(&s[k])).max().unwrap_or(0)
    };
    Ok(json!({
        "data_shards": step.shards,
        "rate_target": step.rate,
        "cold_start_secs": cold_start,
        "other_processes_share_before": quiet,
        "idle": idle,
        "stream_frames_offered": offered,
        "stream_frames_sent": expected,
        "price_change_frames": price_changes,
        "corpus_events": cp.events,
        "secs_until_engine_counted_all": done,
        "secs_until_writers_done": writers_done,
        "frames_per_s": applied,
        "secs_until_last_frame_applied_est": applied_at,
        "frames_per_s_until_counted": expected as f64 / done,
        "frames_per_s_by_slope": slope,
        "data_shard_cpu_ns_per_frame": data as f64 / expected.max(1) as f64,
        "data_shard_busy": data as f64 / 1e9 / done / step.shards as f64,
        "generator_cpu_ns_per_frame": cpu.get("generator").copied().unwrap_or(0) as f64 / expected.max(1) as f64,
        "control_cpu_ns_per_frame": cpu.get("engine_control").copied().unwrap_or(0) as f64 / expected.max(1) as f64,
        "other_processes_share": other_share(&cpu, done),
        "busy_by_cpu": busy,
        "per_shard": per_shard(&s0, &s1, &cpu),
        "apply_ns": {
            "p50": shard("apply_ns_p50"), "p99": shard("apply_ns_p99"),
            "p999": shard("apply_ns_p999"), "max": shard("apply_ns_max"),
            "note": "worst shard; cumulative since engine start (the opening dumps included)",
        },
        "stats_polls": polls,
        "stats_polls_with_a_null_shard": blind,
        "books_settled_after": settled.err().map(|e| e.to_string()),
        "reconnects": u(&t2["reconnects"]),
        "pong_timeouts": u(&t2["pong_timeouts"]),
        "decode_errors": u(&t2["decode_errors"]),
        "hash_checks": u(&t2["hash_checks"]),
        "hash_mismatches": u(&t2["hash_mismatches"]),
        "books_marked_suspect": u(&t2["books_marked_suspect"]),
        "resyncs": u(&t2["resyncs"]),
        "redrives": u(&t2["redrives"]),
        "pings_answered": conns.iter().map(|c| c.pings.load(Ordering::Relaxed)).sum::<u64>(),
        "verify": verify,
        "nats": nats,
    }))
}

/// Waits until the consumer has every message the engine published since it subscribed and
/// both counts have stood still for 1.5 s (a changed book's last periodic snapshot is up to
/// `snapshot_interval_ms` = 1 s after its change), at most 30 s; then the engine's `/stats`.
fn finish_consumer(
    h: &Http,
    api: &str,
    c: Consumer,
    published0: u64,
    published: impl Fn(&Value) -> u64,
) -> Result<(crate::nats_probe::Received, Value)> {
    let (mut last, mut since) = ((u64::MAX, u64::MAX), Instant::now());
    let got = c.finish(Duration::from_secs(30), |received| {
        let p = h.get_ok(&format!("{api}/stats")).map(|s| published(&s)).unwrap_or(u64::MAX);
        if (p, received) != last {
            (last, since) = ((p, received), Instant::now());
        }
        received >= p.saturating_sub(published0) && since.elapsed() >= Duration::from_millis(1500)
    })?;
    Ok((got, h.get_ok(&format!("{api}/stats"))?))
}

/// Each data shard's frames in the run and its CPU per frame.
fn per_shard(s0: &Value, s1: &Value, cpu: &std::collections::BTreeMap<String, u64>) -> Value {
    let frames = |s: &Value, i: usize| u(&s["shards"][i]["store"]["frames"]);
    let n = s1["shards"].as_array().map_or(0, Vec::len);
    let per: Vec<Value> = (0..n)
        .map(|i| {
            let f = frames(s1, i).saturating_sub(frames(s0, i));
            let ns = cpu.get(&format!("engine_data_{i}")).copied().unwrap_or(0);
            json!({"frames": f, "cpu_ms": ns / 1_000_000, "cpu_ns_per_frame": ns as f64 / f.max(1) as f64})
        })
        .collect();
    Value::Array(per)
}

/// Seconds from the start to the last frame applied, from the snapshots' (time, frames).
fn last_frame_at(changes: &[(f64, u64)], expected: u64) -> Option<f64> {
    let [.., (ta, fa), (tb, fb), (tc, fc)] = changes else { return None };
    if *fc < expected || fb <= fa || tb <= ta {
        return None;
    }
    let rate = (fb - fa) as f64 / (tb - ta);
    Some((tb + (expected - fb) as f64 / rate).min(*tc))
}

/// Every engine book against the checkpoint's truth (`compare_book`), on 2 threads.
fn compare_all(api: &str, corpus: &Corpus, cp: &Checkpoint) -> Value {
    let t = Instant::now();
    let n = corpus.tokens.len();
    let parts: Vec<(usize, usize, usize, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|part| {
                s.spawn(move || {
                    let h = Http::new();
                    let (mut compared, mut bad, mut trade_diffs, mut examples) =
                        (0, 0, 0, Vec::new());
                    for i in (part..n).step_by(2) {
                        let token = &corpus.tokens[i];
                        let truth: Value =
                            serde_json::from_str(&cp.truth[i]).unwrap_or(Value::Null);
                        let verdict = match h.get(&format!("{api}/books/{token}")) {
                            Ok((status, ours)) => {
                                compare_book(&truth, status, &ours, true).map_err(|e| e.to_string())
                            }
                            Err(e) => Err(e.to_string()),
                        };
                        compared += 1;
                        match verdict {
                            Ok(Compared::Equal { last_trade_equal: true }) => {}
                            Ok(Compared::Equal { last_trade_equal: false }) => trade_diffs += 1,
                            Ok(Compared::SkippedResolved) | Err(_) => {
                                bad += 1;
                                if examples.len() < 3 {
                                    examples.push(format!("{token}: {verdict:?}"));
                                }
                            }
                        }
                    }
                    (compared, bad, trade_diffs, examples)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|j| j.join().unwrap_or((0, 1, 0, vec!["panicked".into()])))
            .collect()
    });
    let compared: usize = parts.iter().map(|p| p.0).sum();
    let mismatches: usize = parts.iter().map(|p| p.1).sum::<usize>() + n.saturating_sub(compared);
    json!({
        "books": n,
        "compared": compared,
        "mismatches": mismatches,
        "last_trade_diffs": parts.iter().map(|p| p.2).sum::<usize>(),
        "examples": parts.iter().flat_map(|p| p.3.clone()).collect::<Vec<_>>(),
        "secs": t.elapsed().as_secs_f64(),
    })
}
