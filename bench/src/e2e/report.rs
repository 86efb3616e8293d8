//! Printing results as tables, and writing the JSON result.

use anyhow::{Context, Result};
use serde_json::Value;

use crate::harness::u;

pub(crate) fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

pub(crate) fn k(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

pub(crate) fn us(ns: &Value) -> String {
    format!("{:.1}", f(ns) / 1e3)
}

pub(crate) fn pct(x: f64) -> String {
    format!("{:.0}%", 100.0 * x)
}

pub(crate) fn print_wire(w: &Value) {
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

pub(crate) const STEP_COLS: [&str; 21] = [
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

pub(crate) fn step_header() {
    let cols: Vec<String> = STEP_COLS.iter().map(|c| format!("{c:>8}")).collect();
    println!("{}", cols.join(" "));
}

pub(crate) fn print_step(s: &Value, wire: Option<f64>) {
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

pub(crate) fn print_scale(s: &Value) {
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

pub(crate) fn write_out(path: &str, out: &Value) -> Result<()> {
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(out)?;
    std::fs::write(path, text).with_context(|| format!("write {path}"))
}
