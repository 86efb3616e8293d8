//! Phases 2 and 3: **engine** steps at increasing rates, and **scale** (cold start, memory).
//! The scale phase runs the simulator in a child process, so the RSS delta is the engine's.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::args::Plan;
use crate::harness::{
    conn_limits, cpus, engine_at_rest, engine_config, events_applied, pause_until_at_rest, placing,
    settled, shard_max, shard_sum, shard_total, sim_backlog, start_engine, start_sim, u, wait_for,
    Http,
};
use crate::procfs::{
    cpu_delta, cpu_ms_json, cpu_snapshot, engine_cpu, other_share, rss, wait_quiet, warn_foreign,
};
use crate::truth::{verify, verify_json};
use crate::RATE_MAX;

pub(crate) fn rate_label(rate: f64) -> String {
    if rate >= RATE_MAX {
        "max".into()
    } else {
        format!("{rate}")
    }
}

pub(crate) fn engine_step(
    h: &Http,
    markets: usize,
    shards: usize,
    rate: f64,
    plan: &Plan,
) -> Result<Value> {
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

/// The simulator in a child process (this binary with `--sim-child`), so that this process's
/// RSS holds the engine only.
pub(crate) struct SimChild {
    pub(crate) child: std::process::Child,
    pub(crate) addr: String,
}

impl SimChild {
    pub(crate) fn spawn(markets: usize) -> Result<SimChild> {
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

    pub(crate) fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn ws_url(&self) -> String {
        format!("ws://{}/ws/market", self.addr)
    }

    pub(crate) fn rss(&self) -> u64 {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(path).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }

    /// Closes the child's stdin (its signal to stop) and waits for it.
    pub(crate) fn stop(mut self) -> Result<()> {
        drop(self.child.stdin.take());
        let st = self.child.wait().context("wait for the simulator child")?;
        if !st.success() {
            bail!("simulator child exited with {st}");
        }
        Ok(())
    }
}

/// `--sim-child MARKETS`: a paused simulator on 127.0.0.1 until stdin closes.
pub(crate) fn sim_child(markets: &str) -> Result<()> {
    use std::io::{Read, Write};
    let markets: usize = markets.parse().map_err(|_| anyhow!("--sim-child: bad market count"))?;
    let sim = start_sim(markets, 0.0, None)?;
    let mut out = std::io::stdout();
    writeln!(out, "ADDR {}", sim.addr())?;
    out.flush()?;
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    sim.stop().map_err(|e| anyhow!("simulator stop: {e}"))
}

pub(crate) fn scale(h: &Http, markets: usize, verify_n: usize) -> Result<Value> {
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
