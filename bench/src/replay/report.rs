//! The printed table (markdown rows, as BENCHMARKS.md shows them) and the summary.

use serde_json::{json, Value};

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// 1234567.0 → "1.23M", 12345.0 → "12.3k".
pub(crate) fn k(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

pub(crate) fn corpus_line(c: &Value) -> String {
    format!(
        "corpus: {} markets, {} frames ({} price_change), {:.0} MB, {} B/frame, events {}, rendered in {:.1} s",
        c["markets"],
        c["frames"],
        c["price_change_frames"],
        f(&c["bytes"]) / 1e6,
        c["avg_frame_bytes"],
        c["events"],
        f(&c["render_secs"])
    )
}

pub(crate) fn wire_line(w: &Value) -> String {
    format!(
        "wire baseline: {} frames/s ({:.0} MB/s, {} B/frame) over {} connections; generator {:.2} µs/frame ({:.0}% busy), counting client {:.2} µs/frame ({:.0}% busy); other processes {:.0}%",
        k(f(&w["frames_per_s"])),
        f(&w["mb_per_s"]),
        w["avg_frame_bytes"],
        w["connections"],
        f(&w["generator_cpu_ns_per_frame"]) / 1e3,
        f(&w["generator_busy"]) * 100.0,
        f(&w["client_cpu_ns_per_frame"]) / 1e3,
        f(&w["client_busy"]) * 100.0,
        f(&w["other_processes_share"]) * 100.0,
    )
}

/// A paced wire run: what a reader woken per frame costs at that rate.
pub(crate) fn floor_line(w: &Value) -> String {
    format!(
        "wire floor at {} frames/s offered: {} frames/s counted over {} connections, counting client {:.2} µs/frame ({:.1}% busy); other processes {:.0}%",
        w["rate_target"].as_f64().map_or("max".to_owned(), k),
        k(f(&w["frames_per_s"])),
        w["connections"],
        f(&w["client_cpu_ns_per_frame"]) / 1e3,
        f(&w["client_busy"]) * 100.0,
        f(&w["other_processes_share"]) * 100.0,
    )
}

pub(crate) const STEP_HEADER: &str = "| data shards | offered frames/s | frames | **applied frames/s** | price_change frames | data shard CPU µs/frame | data shard busy | generator µs/frame | apply p50 / p99 / p99.9 µs | `/stats` polls with a null shard | books compared / mismatches | other processes |\n|---|---|---|---|---|---|---|---|---|---|---|---|";

pub(crate) fn step_line(v: &Value) -> String {
    let rate = v["rate_target"].as_f64().map_or("max".to_owned(), k);
    let a = &v["apply_ns"];
    let mut line = format!(
        "| {} | {} | {} | **{}** | {} | {:.2} | {:.0}% | {:.2} | {:.1} / {:.1} / {:.1} | {} of {} | {} / {} | {:.0}% |",
        v["data_shards"],
        rate,
        k(f(&v["stream_frames_sent"])),
        k(f(&v["frames_per_s"])),
        k(f(&v["price_change_frames"])),
        f(&v["data_shard_cpu_ns_per_frame"]) / 1e3,
        f(&v["data_shard_busy"]) * 100.0,
        f(&v["generator_cpu_ns_per_frame"]) / 1e3,
        f(&a["p50"]) / 1e3,
        f(&a["p99"]) / 1e3,
        f(&a["p999"]) / 1e3,
        v["stats_polls_with_a_null_shard"],
        v["stats_polls"],
        v["verify"]["compared"],
        v["verify"]["mismatches"],
        f(&v["other_processes_share"]) * 100.0,
    );
    if !v["idle"].is_null() {
        line.push_str(&format!(
            "\n  idle before this step ({:.0} s, no frames): data shard {:.4} CPU, control {:.4} CPU",
            f(&v["idle"]["secs"]),
            f(&v["idle"]["data_shard_cpu_share"]),
            f(&v["idle"]["control_cpu_share"])
        ));
    }
    for key in [
        "reconnects",
        "pong_timeouts",
        "decode_errors",
        "hash_mismatches",
        "resyncs",
        "books_marked_suspect",
    ] {
        if v[key].as_u64().unwrap_or(0) > 0 {
            line.push_str(&format!("\n  warning: {key} {}", v[key]));
        }
    }
    if let Some(e) = v["verify"]["examples"].as_array().filter(|e| !e.is_empty()) {
        line.push_str(&format!("\n  mismatches, e.g. {e:?}"));
    }
    line
}

pub(crate) const NATS_HEADER: &str = "| data shards | offered frames/s | NATS | applied frames/s | data shard CPU µs/frame | publisher thread µs/frame | nats-server µs/frame | consumer µs/frame | published / received messages | dropped at shards / disconnected | publisher backlog max | level deltas timed | engine → NATS → consumer p50 / p90 / p99 / p99.9 / max µs |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|";

/// One step's NATS row: off (the baseline) or on, with the consumer's latency.
pub(crate) fn nats_line(v: &Value) -> String {
    let rate = v["rate_target"].as_f64().map_or("max".to_owned(), k);
    let head = format!(
        "| {} | {} | {} | {} | {:.2} |",
        v["data_shards"],
        rate,
        if v["nats"].is_null() { "off" } else { "on" },
        k(f(&v["frames_per_s"])),
        f(&v["data_shard_cpu_ns_per_frame"]) / 1e3,
    );
    let n = &v["nats"];
    if n.is_null() {
        return format!("{head} - | - | - | - | - | - | - | - |");
    }
    let l = &n["latency_ns"];
    let us = |x: &Value| f(x) / 1e3;
    format!(
        "{head} {:.2} | {} | {:.2} | {} / {} | {} / {} | {} | {} of {} | {:.1} / {:.1} / {:.1} / {:.1} / {:.1} |",
        us(&n["publisher_cpu_ns_per_frame"]),
        n["server_cpu_ns_per_frame"].as_f64().map_or("-".to_owned(), |x| format!("{:.2}", x / 1e3)),
        us(&n["consumer_cpu_ns_per_frame"]),
        n["published_in_run"],
        n["received"]["total"],
        n["engine"]["dropped_at_shards"],
        n["engine"]["dropped_disconnected"],
        n["publisher_backlog_max"],
        l["measured"],
        l["level_deltas_received"],
        us(&l["p50"]),
        us(&l["p90"]),
        us(&l["p99"]),
        us(&l["p999"]),
        us(&l["max"]),
    )
}

/// Engine at its top vs the wire, and 2 data shards vs 1.
pub(crate) fn summary(wire: &Value, floors: &[Value], steps: &[Value]) -> Value {
    // Engine CPU per frame over the floor's at the same paced rate (1 data shard).
    let over_floor: Vec<Value> = floors
        .iter()
        .filter_map(|w| {
            let r = w["rate_target"].as_f64()?;
            let s = steps.iter().find(|s| s["rate_target"].as_f64() == Some(r))?;
            let (e, fl) = (f(&s["data_shard_cpu_ns_per_frame"]), f(&w["client_cpu_ns_per_frame"]));
            Some(json!({"rate": r, "engine_ns_per_frame": e, "floor_ns_per_frame": fl, "ratio": (fl > 0.0).then(|| e / fl)}))
        })
        .collect();
    let max = |shards: u64| {
        steps
            .iter()
            .find(|s| s["rate_target"].is_null() && s["data_shards"] == shards)
            .map(|s| f(&s["frames_per_s"]))
    };
    let (one, two) = (max(1), max(2));
    let w = wire["frames_per_s"].as_f64();
    let idle = steps.iter().find_map(|s| s["idle"]["data_shard_cpu_share"].as_f64());
    json!({
        "wire_frames_per_s": w,
        "engine_cpu_over_floor": over_floor,
        "engine_max_frames_per_s_1_shard": one,
        "engine_over_wire": one.zip(w).map(|(e, w)| e / w),
        "engine_max_frames_per_s_2_shards": two,
        "two_shards_over_one": two.zip(one).map(|(a, b)| a / b),
        "idle_data_shard_cpu_share": idle,
        "mismatches": steps.iter().map(|s| s["verify"]["mismatches"].as_u64().unwrap_or(0)).sum::<u64>(),
    })
}

pub(crate) fn summary_lines(s: &Value) -> String {
    let opt =
        |v: &Value, scale: f64| v.as_f64().map_or("-".to_owned(), |x| format!("{:.2}", x * scale));
    let floors: Vec<String> = s["engine_cpu_over_floor"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            format!(
                "at {} frames/s the engine's data shard {:.2} µs/frame vs the floor's {:.2} ({}x)",
                k(f(&x["rate"])),
                f(&x["engine_ns_per_frame"]) / 1e3,
                f(&x["floor_ns_per_frame"]) / 1e3,
                opt(&x["ratio"], 1.0)
            )
        })
        .collect();
    format!(
        "{}engine max (1 data shard) {} frames/s = {} of the wire baseline ({}); 2 data shards {} = {}x one (the second shares the generator's CPU); idle data shard {} CPU; mismatches {}",
        floors.iter().map(|l| format!("{l}\n")).collect::<String>(),
        s["engine_max_frames_per_s_1_shard"].as_f64().map_or("-".to_owned(), k),
        opt(&s["engine_over_wire"], 1.0),
        s["wire_frames_per_s"].as_f64().map_or("-".to_owned(), k),
        s["engine_max_frames_per_s_2_shards"].as_f64().map_or("-".to_owned(), k),
        opt(&s["two_shards_over_one"], 1.0),
        s["idle_data_shard_cpu_share"].as_f64().map_or("-".to_owned(), |x| format!("{x:.4}")),
        s["mismatches"],
    )
}
