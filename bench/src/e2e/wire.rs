//! Phase 1, **wire**: the simulator's frames/s to a plain client that only counts them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use futures_util::{SinkExt, StreamExt};
use glommio::{LocalExecutorBuilder, Placement};
use polybook::protocol::encode::{subscribe_frames, SubscribeOp};
use polybook_shards::net::{connect_ws_with, ConnectOptions, Message, WebSocketConfig};
use serde_json::{json, Value};

use crate::args::Plan;
use crate::harness::{cpus, sim_backlog, start_sim, u, wait_for, Http};
use crate::procfs::{cpu_delta, cpu_ms_json, cpu_snapshot, other_share, wait_quiet, warn_foreign};
use crate::{RATE_MAX, WIRE_TOKENS_PER_CONN};

#[derive(Default)]
pub(crate) struct WireCounters {
    pub(crate) frames: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) conns_up: AtomicU64,
    /// Connections opened for markets listed during the measurement.
    pub(crate) conns_followed: AtomicU64,
    pub(crate) conns_ended: AtomicU64,
}

/// Token ids of markets listed while the client runs, waiting for a connection.
pub(crate) type NewTokens = std::rc::Rc<std::cell::RefCell<Vec<String>>>;

/// The token ids announced by a `new_market` frame (object or array), if it is one.
pub(crate) fn new_market_tokens(text: &str, out: &mut Vec<String>) {
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
pub(crate) async fn wire_conn(
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

pub(crate) fn markets_tokens(h: &Http, sim: &str) -> Result<Vec<[String; 2]>> {
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

pub(crate) fn wire_baseline(h: &Http, markets: usize, plan: &Plan) -> Result<Value> {
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
