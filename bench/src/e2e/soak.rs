//! `--soak MINUTES`: the steady rate with random faults, RSS and book states every minute.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use polybook_shards::sim_server::RandomFaults;
use serde_json::{json, Value};

use crate::api::{API_MARKETS, API_RATE};
use crate::args::Plan;
use crate::harness::{
    engine_at_rest, engine_config, pause_until_at_rest, placing, settled, start_engine,
    start_sim_faults, u, wait_for, Http,
};
use crate::procfs::rss;
use crate::report::{f, k};
use crate::steps::rate_label;
use crate::truth::{verify, verify_json};
use crate::SEED;

/// Random faults per minute during the soak.
pub(crate) const SOAK_FAULTS_PER_MINUTE: f64 = 4.0;

pub(crate) fn soak(h: &Http, minutes: f64, plan: &Plan) -> Result<Value> {
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
