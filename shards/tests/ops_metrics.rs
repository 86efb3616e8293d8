//! `/metrics` in the operators' tools' terms: a running engine's exposition (against the
//! simulator on 127.0.0.1) passes `promtool check metrics`, and every metric the deploy kit's
//! dashboard and alert rules name is one the engine exports. promtool is Debian's
//! `prometheus` package; `scripts/test` installs it, and these tests fail without it rather
//! than skip (a check that silently does not run is no check).

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use polybook_shards::engine;

fn promtool() -> Command {
    let found =
        Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(found, "promtool not found: install Debian's `prometheus` package (scripts/test does)");
    Command::new("promtool")
}

/// Runs `promtool check metrics` on `text`; returns its exit status and output.
fn promtool_check_metrics(text: &str) -> (bool, String) {
    let mut child = promtool()
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes()).unwrap_or_else(|e| panic!("promtool stdin: {e}"));
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("promtool: {e}"));
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

/// The families a text exposition declares (`# TYPE name kind`), with the names of their
/// series (histograms add `_bucket`, `_sum` and `_count`).
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut it = rest.split_whitespace();
        let (Some(name), Some(kind)) = (it.next(), it.next()) else { continue };
        names.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `polybook_*` and `process_*` name in a file of the deploy kit.
fn names_in(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut names = BTreeSet::new();
    for prefix in ["polybook_", "process_"] {
        let mut rest = text.as_str();
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().next_back();
            let word = &rest[at..];
            let end =
                word.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(word.len());
            // Only whole words: `xpolybook_` or a job label value are not metric names.
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                names.insert(word[..end].to_owned());
            }
            rest = &word[end..];
        }
    }
    names
}

#[test]
fn live_metrics_pass_promtool_and_cover_the_deploy_kit() {
    let sim = sim(23, 20, 300.0);
    let engine = engine::start(&engine_config(&sim, 40)).unwrap_or_else(|e| panic!("{e}"));
    let api = format!("http://{}", engine.api_addr());
    wait_for("all books live", Duration::from_secs(60), || all_books_settled(&engine, 40));
    // Families that appear only after the first discovery success and the first frames.
    let text = wait_for("a full exposition", Duration::from_secs(30), || {
        let (status, text) = get_text(&format!("{api}/metrics"));
        let names = exported_names(&text);
        let want =
            ["polybook_discovery_last_success_timestamp_seconds", "process_start_time_seconds"];
        match want.iter().find(|n| !names.contains(**n)) {
            None if status == 200 => Ok(text),
            missing => Err(format!("status {status}, missing {missing:?}")),
        }
    });

    let (ok, said) = promtool_check_metrics(&text);
    assert!(ok, "promtool check metrics failed:\n{said}\n--- exposition ---\n{text}");

    // The histogram is a real one: cumulative buckets ending at the count.
    let series: Vec<(&str, f64)> = text
        .lines()
        .filter(|l| l.starts_with("polybook_apply_latency_seconds_") && l.contains("shard=\"0\""))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(s, v)| Some((s, v.parse().ok()?))))
        .collect();
    let buckets: Vec<f64> =
        series.iter().filter(|(s, _)| s.contains("_bucket{")).map(|(_, v)| *v).collect();
    assert!(buckets.len() >= 2 && buckets.windows(2).all(|w| w[0] <= w[1]), "{series:?}");
    let count = series.iter().find(|(s, _)| s.contains("_count{")).map(|(_, v)| *v);
    assert_eq!(buckets.last().copied(), count, "+Inf bucket equals _count");
    assert!(count.is_some_and(|c| c > 0.0), "frames were applied: {series:?}");

    // The deploy kit's dashboard and alert rules name only metrics that exist.
    let exported = exported_names(&text);
    let root = repo_root();
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana/polybook.json"))
        .unwrap_or_else(|e| panic!("dashboard: {e}"));
    let dashboard: serde_json::Value =
        serde_json::from_str(&dashboard).unwrap_or_else(|e| panic!("dashboard JSON: {e}"));
    let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
    assert!(panels.len() >= 8, "books, frames, latency, reconnects, resyncs, recycles, ...");
    for p in &panels {
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "panel without a query: {}", p["title"]);
        assert!(targets.iter().all(|t| t["expr"].is_string()), "{}", p["title"]);
    }
    for file in ["deploy/grafana/polybook.json", "deploy/prometheus/alerts.yml"] {
        let used = names_in(&root.join(file));
        assert!(!used.is_empty(), "{file} names no metric");
        let unknown: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(unknown.is_empty(), "{file} names metrics /metrics does not have: {unknown:?}");
    }
    engine.stop();
}

#[test]
fn promtool_rejects_what_the_engine_used_to_export() {
    // The check above can fail: the old gauge with a quantile label and a ns unit is refused.
    let old = "# HELP polybook_apply_latency_ns Frame received to applied\n\
               # TYPE polybook_apply_latency_ns gauge\n\
               polybook_apply_latency_ns{shard=\"0\",quantile=\"0.5\"} 1200\n";
    let (ok, said) = promtool_check_metrics(old);
    assert!(!ok, "promtool accepted a gauge with a quantile label: {said}");
}

#[test]
fn alert_rules_pass_promtool_check_rules() {
    let rules = repo_root().join("deploy/prometheus/alerts.yml");
    let out = promtool()
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap_or_else(|e| panic!("promtool: {e}"));
    assert!(
        out.status.success(),
        "promtool check rules {}:\n{}{}",
        rules.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_seccomp_profile_allows_io_uring_and_denies_by_default() {
    let path = repo_root().join("deploy/seccomp.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    let p: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
    let rules = p["syscalls"].as_array().cloned().unwrap_or_default();
    let allowed: Vec<String> = rules
        .iter()
        .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
        .filter(|r| r.get("includes").is_none() && r.get("excludes").is_none())
        .flat_map(|r| r["names"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect();
    // What glommio and the engine call (liburing, membarrier, affinity, epoll, sockets).
    for call in [
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "membarrier",
        "sched_setaffinity",
        "mlock",
        "eventfd2",
        "epoll_wait",
        "socket",
        "connect",
        "clock_gettime",
    ] {
        assert!(allowed.iter().any(|n| n == call), "{call} not allowed");
    }
    let mut sorted = allowed.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), allowed.len(), "a syscall listed twice");
}

#[test]
fn the_compose_file_mounts_files_that_exist() {
    let deploy = repo_root().join("deploy");
    let compose =
        std::fs::read_to_string(deploy.join("compose.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let mut seen = 0;
    for word in compose.split(|c: char| c.is_whitespace() || c == '"' || c == '=') {
        let Some(rel) = word.strip_prefix("./") else { continue };
        let rel = rel.split(':').next().unwrap_or_default();
        assert!(deploy.join(rel).exists(), "compose.yaml names ./{rel}, which is missing");
        seen += 1;
    }
    assert!(seen >= 4, "seccomp, prometheus, grafana provisioning and dashboard");
    assert!(repo_root().join("deploy/Dockerfile").exists());
}
