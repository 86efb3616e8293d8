//! Lifecycle and chaos end to end: make-before-break recycling loses nothing, and after a run
//! of random venue faults (drops, 1013 closes, silent freezes, duplicates, malformed frames,
//! Gamma 429/500), markets resolving and appearing, and forced recycles — in both subscribe
//! modes — every book equals the simulator's truth once the venue is at rest.

mod common;

use std::time::Duration;

use common::*;
use polybook_shards::engine;
use polybook_shards::sim_server::{spawn_sim_server, RandomFaults, SimServerConfig};
use serde_json::Value;

fn conn_ids(stats: &Value) -> Vec<u64> {
    stats["shards"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["connections"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["id"].as_u64())
        .collect()
}

#[test]
fn recycling_under_load_loses_nothing() {
    let sim = sim(21, 60, 800.0);
    // Every connection is recycled at once, so the limit on recycles in flight must allow it.
    let cfg = engine_config_with(&sim, 40, |c| c.lifecycle.recycle_concurrent_max = 64);
    let engine = engine::start(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let api = format!("http://{}", engine.api_addr());
    let s = wait_for("all books live", Duration::from_secs(60), || all_books_settled(&engine, 120));
    let conns = conn_ids(&s);
    assert!(conns.len() >= 3, "{conns:?}");
    // Trades before the engine subscribed cannot be known (the venue replays nothing): take
    // the truth's last trades now, and require every later one in the engine's books.
    let baseline: std::collections::HashMap<String, Value> = sim_tokens(&sim)
        .into_iter()
        .map(|(t, _)| {
            let (_, truth) = get(&format!("{}/sim/book/{t}", sim.http_url()));
            (t, truth["last_trade"].clone())
        })
        .collect();
    assert_eq!(post(&format!("{api}/admin/recycle/notanumber"), ""), 400);
    assert_eq!(post(&format!("{api}/admin/recycle/999"), ""), 409);
    for id in &conns {
        assert_eq!(post(&format!("{api}/admin/recycle/{id}"), ""), 200, "recycle {id}");
    }
    let s = wait_for("recycles done", Duration::from_secs(60), || {
        let s = stats(&engine);
        let done = total(&s, "recycles_completed") + total(&s, "recycles_failed");
        if done >= conns.len() as u64 {
            Ok(s)
        } else {
            Err(s["totals"].to_string())
        }
    });
    let t = &s["totals"];
    assert_eq!(total(&s, "recycles_failed"), 0, "{t}");
    assert_eq!(total(&s, "handoff_timeouts"), 0, "{t}");
    assert_eq!(total(&s, "reconnects"), 0, "{t}");
    assert!(total(&s, "tokens_migrated") >= 110, "{t}");
    // The handoff never made a book doubt itself.
    assert_eq!(total(&s, "books_marked_suspect"), 0, "{t}");
    assert_eq!(total(&s, "books_marked_resyncing"), 0, "{t}");
    // Every slot is back to one socket, on a new feed.
    let after = conn_ids(&s);
    assert_eq!(after.len(), conns.len());
    // Everything the simulator sent is in the books, trades included.
    wait_at_rest(&sim.http_url());
    let traded = |t: &str, now: &Value| baseline.get(t).is_some_and(|b| b != now);
    let after = wait_for("books equal to truth", Duration::from_secs(30), || {
        compare_with_truth(&engine, &sim, &traded)
    });
    let n_traded = after.iter().filter(|(t, v)| traded(t, v)).count();
    assert!(n_traded >= 10, "only {n_traded} tokens traded during the recycles");
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
}

fn chaos(dynamic_subscribe: bool, seed: u64) {
    let sim = spawn_sim_server(SimServerConfig {
        seed,
        markets: 80,
        rate: 600.0,
        real_shape: exact_shape(),
        random_faults: Some(RandomFaults { seed, per_minute: 150.0 }),
        ..SimServerConfig::default()
    })
    .unwrap_or_else(|e| panic!("sim: {e}"));
    let base = sim.http_url();
    let mut c = (*engine_config(&sim, 40)).clone();
    c.connections.dynamic_subscribe = dynamic_subscribe;
    c.lifecycle.resolved_grace_ms = 1500;
    c.lifecycle.recycle_check_ms = 500;
    c.lifecycle.recycle_min_age_ms = 1000;
    c.lifecycle.recycle_age_ms = 5000;
    c.lifecycle.handoff_timeout_ms = 5000;
    let engine = engine::start(&c.validate().unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|e| panic!("{e}"));
    let api = format!("http://{}", engine.api_addr());
    wait_for("books seeded", Duration::from_secs(60), || {
        let s = stats(&engine);
        let live = total(&s, "books_live");
        if live >= 100 {
            Ok(())
        } else {
            Err(s["totals"].to_string())
        }
    });
    // Chaos: random faults fire; markets resolve and appear; connections are recycled by
    // age and by hand.
    for round in 0..6 {
        std::thread::sleep(Duration::from_secs(2));
        if round == 2 {
            for id in conn_ids(&stats(&engine)).iter().take(2) {
                let _ = post(&format!("{api}/admin/recycle/{id}"), "");
            }
        }
    }
    // Clean phase: faults off; the engine heals (reconnects, hash-driven resyncs, recycles).
    assert_eq!(post(&format!("{base}/sim/faults/random/off"), ""), 200);
    std::thread::sleep(Duration::from_secs(5));
    wait_at_rest(&base);
    wait_for("books equal to truth after chaos", Duration::from_secs(60), || {
        compare_with_truth(&engine, &sim, &|_, _| false)
    });
    let (_, st) = get(&format!("{base}/sim/status"));
    let s = stats(&engine);
    let t = &s["totals"];
    let faults = &st["faults"];
    eprintln!("dynamic={dynamic_subscribe} faults={faults} engine={t}");
    let injected: u64 =
        faults.as_object().map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    assert!(injected >= 10, "too few faults fired: {faults}");
    assert!(total(&s, "reconnects") >= 1, "{t}");
    assert!(total(&s, "recycles_completed") >= 1, "{t}");
    // Every market the simulator resolved is out of the engine's active set.
    let active_sim = sim_tokens(&sim).iter().filter(|(_, a)| *a).count() as u64 / 2;
    wait_for("registry matches the venue", Duration::from_secs(30), || {
        let s = stats(&engine);
        let active = s["markets"]["active"].as_u64().unwrap_or(0);
        if active == active_sim {
            Ok(())
        } else {
            Err(format!("{active} vs {active_sim}"))
        }
    });
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn chaos_dynamic_subscribe_books_equal_truth() {
    chaos(true, 31);
}

#[test]
fn chaos_without_dynamic_subscribe_books_equal_truth() {
    chaos(false, 32);
}

#[test]
fn skipped_update_is_detected_by_hash_and_repaired_by_resync() {
    let sim = sim(41, 20, 300.0);
    let engine = engine::start(&engine_config(&sim, 40)).unwrap_or_else(|e| panic!("{e}"));
    let base = sim.http_url();
    wait_for("all books live", Duration::from_secs(60), || all_books_settled(&engine, 40));
    let before = stats(&engine);
    assert_eq!(total(&before, "hash_mismatches"), 0);
    // Every connection silently loses its next 3 data frames: books are now wrong.
    assert_eq!(post(&format!("{base}/sim/fault"), r#"{"kind":"skip","count":3}"#), 200);
    // Detected: a divergent verdict marks the book suspect. It is then repaired either by a
    // resync (the divergence persists) or first by the venue's own next `book` for the token
    // (real-shaped traffic sends one after every trade); both end equal to the truth below.
    wait_for("detection", Duration::from_secs(30), || {
        let s = stats(&engine);
        let (m, suspect) = (total(&s, "hash_mismatches"), total(&s, "books_marked_suspect"));
        if m >= 1 && suspect >= 1 {
            Ok(s)
        } else {
            Err(s["totals"].to_string())
        }
    });
    wait_for("time in Suspect/Resyncing accounted", Duration::from_secs(30), || {
        let s = stats(&engine);
        let ms = total(&s, "suspect_ms_total") + total(&s, "resyncing_ms_total");
        if ms > 0 {
            Ok(())
        } else {
            Err(s["totals"].to_string())
        }
    });
    wait_at_rest(&base);
    wait_for("books repaired", Duration::from_secs(30), || {
        compare_with_truth(&engine, &sim, &|_, _| false)
    });
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn recorded_run_replays_into_the_same_books() {
    let dir = std::env::temp_dir().join(format!("polybook-rec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sim = sim(61, 30, 500.0);
    let engine = engine::Engine::builder(engine_config(&sim, 40))
        .record(&dir)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for("all books live", Duration::from_secs(60), || all_books_settled(&engine, 60));
    // A reconnect and a recycle, so the recording holds feed changes too.
    assert_eq!(post(&format!("{}/sim/fault", sim.http_url()), r#"{"kind":"drop"}"#), 200);
    std::thread::sleep(Duration::from_secs(2));
    let conns = conn_ids(&stats(&engine));
    if let Some(id) = conns.first() {
        post(&format!("http://{}/admin/recycle/{id}", engine.api_addr()), "");
    }
    std::thread::sleep(Duration::from_secs(2));
    wait_at_rest(&sim.http_url());
    wait_for("books equal to truth", Duration::from_secs(30), || {
        compare_with_truth(&engine, &sim, &|_, _| false)
    });
    // Snapshot the engine's books, stop it (flushes the recording), then replay.
    let tokens = sim_tokens(&sim);
    let ours: Vec<(String, Value)> = tokens
        .iter()
        .map(|(t, _)| (t.clone(), get(&format!("http://{}/books/{t}", engine.api_addr())).1))
        .collect();
    engine.stop();
    let files = polybook_shards::replay::recording_files(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert!(!files.is_empty());
    let mut errors = Vec::new();
    let (store, stats) = polybook_shards::replay::replay_recording(&files, &mut errors)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stats.bad_lines, 0, "{}", String::from_utf8_lossy(&errors));
    assert!(stats.store.feed_handoffs > 0);
    let mut compared = 0;
    for (token, engine_book) in ours {
        let Some(book) = store.get(&token) else {
            assert_ne!(engine_book["status"], "live", "{token} missing from the replay");
            continue;
        };
        let replayed: Value =
            serde_json::to_value(polybook::view::BookView::new(book)).unwrap_or(Value::Null);
        for key in ["status", "bids", "asks", "tick_size", "last_trade", "hash", "timestamp_ms"] {
            assert_eq!(replayed[key], engine_book[key], "{token}: {key}");
        }
        compared += 1;
    }
    assert!(compared >= 50, "{compared}");
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn recording_with_strict_checks_and_skips_replays_statuses_exactly() {
    let dir = std::env::temp_dir().join(format!("polybook-rec-strict-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sim = sim(62, 30, 500.0);
    // One divergent run resyncs: a replay with the default settings would judge differently.
    let cfg = engine_config_with(&sim, 40, |c| c.integrity.failed_checks_max = 1);
    let engine =
        engine::Engine::builder(cfg).record(&dir).start().unwrap_or_else(|e| panic!("{e}"));
    wait_for("all books live", Duration::from_secs(60), || all_books_settled(&engine, 60));
    for _ in 0..3 {
        assert_eq!(
            post(&format!("{}/sim/fault", sim.http_url()), r#"{"kind":"skip","count":4}"#),
            200
        );
        std::thread::sleep(Duration::from_millis(700));
    }
    wait_at_rest(&sim.http_url());
    // Let every open claim settle, so the engine's statuses stop moving before we look.
    std::thread::sleep(Duration::from_secs(3));
    let s = stats(&engine);
    assert!(total(&s, "books_marked_resyncing") >= 1, "{}", s["totals"]);
    let tokens = sim_tokens(&sim);
    let ours: Vec<(String, Value)> = tokens
        .iter()
        .map(|(t, _)| (t.clone(), get(&format!("http://{}/books/{t}", engine.api_addr())).1))
        .collect();
    engine.stop();
    let files = polybook_shards::replay::recording_files(&dir).unwrap_or_else(|e| panic!("{e}"));
    let mut errors = Vec::new();
    let (store, stats) = polybook_shards::replay::replay_recording(&files, &mut errors)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stats.bad_lines, 0, "{}", String::from_utf8_lossy(&errors));
    assert_eq!(stats.settings.map(|s| s.failed_checks_max), Some(1));
    let mut compared = 0;
    for (token, engine_book) in ours {
        let Some(book) = store.get(&token) else { continue };
        let replayed: Value =
            serde_json::to_value(polybook::view::BookView::new(book)).unwrap_or(Value::Null);
        for key in ["status", "bids", "asks", "tick_size", "hash", "timestamp_ms", "verified"] {
            assert_eq!(replayed[key], engine_book[key], "{token}: {key}");
        }
        compared += 1;
    }
    assert!(compared >= 50, "{compared}");
    assert_eq!(stats.store.books_marked_resyncing, total(&s, "books_marked_resyncing"));
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_dir_all(&dir);
}
