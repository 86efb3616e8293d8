//! Busy is not down (issue 18): a data shard kept at 100 % by its sockets still answers
//! control — its stats reach `/stats` (a copy older than 2 s shows as `null`), a book query
//! is answered, `/health` stays 200. Commands, the timer and stats run in their own task
//! queue (latency matters) and the socket readers yield when it is due.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use polybook_shards::config::DataCores;
use polybook_shards::engine;

#[test]
fn a_saturated_data_shard_still_answers_control() {
    // The simulator flat out, on its own executor; the engine's one data shard on the other
    // core. In a debug build that shard cannot keep up: it is busy all the time.
    let sim = sim(31, 300, 100_000_000.0);
    let cpus = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    let cfg = engine_config_with(&sim, 100, |c| {
        c.layout.data_cores = DataCores::List(vec![1 % cpus]);
    });
    let engine = engine::start(&cfg).unwrap();
    let api = engine.api_addr().to_string();
    wait_for("books tracked", Duration::from_secs(60), || {
        let st = stats(&engine);
        if total(&st, "books_live") >= 300 {
            Ok(())
        } else {
            Err(st["shards"].to_string())
        }
    });
    let (_, markets) = get(&format!("http://{api}/markets?limit=1"));
    let token =
        markets["markets"][0]["tokens"][0].as_str().map(str::to_owned).unwrap_or_else(|| {
            markets["markets"][0]["tokens"][0]["token_id"].as_str().unwrap().to_owned()
        });
    let cpu = |e: &engine::EngineHandle| stats(e)["shards"][0]["cpu_ms"].as_u64().unwrap_or(0);
    let cpu0 = cpu(&engine);
    let start = Instant::now();
    let mut failures = Vec::new();
    let mut asked = 0;
    while start.elapsed() < Duration::from_secs(8) {
        asked += 1;
        let (status, st) = get(&format!("http://{api}/stats"));
        if status != 200
            || st["shards"].as_array().is_none_or(|a| a.iter().any(serde_json::Value::is_null))
        {
            failures.push(format!("/stats {status}: shards {}", st["shards"]));
        }
        let (status, _) = get(&format!("http://{api}/books/{token}"));
        if status != 200 {
            failures.push(format!("/books {status}"));
        }
        let (status, _) = get(&format!("http://{api}/health"));
        if status != 200 {
            failures.push(format!("/health {status}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let busy_ms = cpu(&engine).saturating_sub(cpu0);
    let wall_ms = start.elapsed().as_millis() as u64;
    engine.stop();
    sim.stop().unwrap();
    eprintln!(
        "data shard busy {busy_ms} ms of {wall_ms} ms; {asked} rounds; {} failures",
        failures.len()
    );
    // How busy the shard was depends on the machine (the simulator shares it); the bench
    // (`polybook-replay-bench`) measures this at full saturation, with numbers.
    assert!(failures.is_empty(), "{} of {asked} rounds failed: {failures:?}", failures.len());
}
