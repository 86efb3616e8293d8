//! The Python client (`clients/python/`) against a running engine fed by the simulator: its
//! live books from `/ws` equal `/books` at rest, and its stream rules hold without a server.
//! Needs `python3` with `websockets` (`bash .ci/test` installs it).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use polybook_shards::engine;

fn clients_dir() -> String {
    format!("{}/../clients/python", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `python3 args` with a deadline; returns (success, stdout + stderr).
fn python(args: &[&str], limit: Duration) -> (bool, String) {
    let mut child = Command::new("python3")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("python3 (bash .ci/test installs it): {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (status.is_some_and(|s| s.success()), text)
}

#[test]
fn python_stream_rules_hold() {
    let script = format!("{}/tests/test_rules.py", clients_dir());
    let (ok, out) = python(&[&script], Duration::from_secs(60));
    assert!(ok, "{out}");
}

#[test]
fn python_live_books_equal_the_engines_at_rest() {
    let sim = sim(81, 15, 300.0);
    let engine =
        engine::Engine::builder(engine_config(&sim, 20)).start().unwrap_or_else(|e| panic!("{e}"));
    wait_for("all books live", Duration::from_secs(60), || all_books_settled(&engine, 30));
    let script = format!("{}/tests/check_live.py", clients_dir());
    let api = format!("http://{}", engine.api_addr());
    let (ok, out) = python(&[&script, &api, &sim.http_url(), "30"], Duration::from_secs(120));
    assert!(ok, "{out}");
    eprintln!("{out}");
    assert!(out.contains("\"mismatches\": 0"), "{out}");
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn python_readme_example_runs() {
    let sim = sim(82, 5, 100.0);
    let engine =
        engine::Engine::builder(engine_config(&sim, 20)).start().unwrap_or_else(|e| panic!("{e}"));
    wait_for("all books live", Duration::from_secs(60), || all_books_settled(&engine, 10));
    let script = format!("{}/example.py", clients_dir());
    let api = format!("http://{}", engine.api_addr());
    let (ok, out) = python(&[&script, &api], Duration::from_secs(60));
    assert!(ok, "{out}");
    assert!(out.contains("LiveBook("), "{out}");
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
}
