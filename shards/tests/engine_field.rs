//! Field readiness, tried from outside as an operator would (issue 11): a venue that answers
//! badly once must not unsubscribe the universe, `/ready` says why it is not ready, and a
//! thread that dies is reported, never silent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use polybook_shards::engine;
use polybook_shards::sim_server::SimServerHandle;
use serde_json::Value;

/// Markets still subscribed or final: active plus resolved (the simulator resolves markets
/// as it runs; a resolution is not a close).
fn active_markets(engine: &engine::EngineHandle) -> u64 {
    let m = &stats(engine)["markets"];
    m["active"].as_u64().unwrap_or(0) + m["resolved"].as_u64().unwrap_or(0)
}

/// Markets the engine closed although the simulator still lists them active.
fn wrongly_closed(engine: &engine::EngineHandle, sim: &SimServerHandle) -> Vec<String> {
    let (_, venue) = get(&format!("{}/sim/markets", sim.http_url()));
    let open: std::collections::HashSet<String> = venue
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["active"] == true)
        .filter_map(|m| m["condition_id"].as_str().map(str::to_owned))
        .collect();
    let url = format!("http://{}/markets?status=closed&limit=1000", engine.api_addr());
    let (_, closed) = get(&url);
    closed["markets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["condition_id"].as_str().map(str::to_owned))
        .filter(|id| open.contains(id))
        .collect()
}

fn get_ready(engine: &engine::EngineHandle) -> (u16, Value) {
    get(&format!("http://{}/ready", engine.api_addr()))
}

/// Waits until the engine has answered `n` more discovery runs than `from`.
fn wait_runs(engine: &engine::EngineHandle, from: u64, n: u64) -> Value {
    wait_for("discovery runs", Duration::from_secs(60), || {
        let s = stats(engine);
        let runs = s["discovery"]["runs"].as_u64().unwrap_or(0);
        if runs >= from + n {
            Ok(s)
        } else {
            Err(format!("runs {runs}: {}", s["discovery"]))
        }
    })
}

fn spoil_listings(sim: &SimServerHandle, kind: &str, count: u32) {
    let body = format!(r#"{{"kind":"{kind}","count":{count}}}"#);
    assert_eq!(post(&format!("{}/sim/fault", sim.http_url()), &body), 200);
}

#[test]
fn bad_gamma_listings_close_nothing_and_ready_tells_why() {
    let sim = sim(21, 60, 200.0);
    // Gamma is down when the engine starts: not ready, and the reason is visible.
    assert_eq!(
        post(
            &format!("{}/sim/fault", sim.http_url()),
            r#"{"kind":"gamma_500","duration_ms":9000}"#
        ),
        200
    );
    // Small pages: a truncated listing (first page only) misses most markets.
    let cfg = engine_config_with(&sim, 20, |c| c.discovery.page_limit = 10);
    let engine = engine::start(&cfg).unwrap();
    let (status, body) = get_ready(&engine);
    assert_eq!(status, 503, "{body}");
    assert!(
        body["failing"].as_array().unwrap().iter().any(|f| f["check"] == "discovery"),
        "{body}"
    );
    wait_for("discovery failure visible", Duration::from_secs(30), || {
        let s = stats(&engine);
        match s["discovery"]["last_error"].as_str() {
            Some(e) if e.contains("500") && s["discovery"]["failures"].as_u64() >= Some(1) => {
                Ok(())
            }
            _ => Err(s["discovery"].to_string()),
        }
    });
    wait_for("all books live", Duration::from_secs(60), || all_books_settled(&engine, 120));
    wait_for("ready", Duration::from_secs(30), || match get_ready(&engine) {
        (200, b) => Ok(b),
        (s, b) => Err(format!("{s} {b}")),
    });
    let active = active_markets(&engine);
    assert!(active >= 55, "active {active}");

    // One empty listing, then more: the engine counts absences, refuses to close everything,
    // and asks Gamma per market (which says they are open).
    for (kind, n) in [("gamma_empty", 1), ("gamma_empty", 4), ("gamma_truncated", 4)] {
        let from = stats(&engine)["discovery"]["runs"].as_u64().unwrap_or(0);
        spoil_listings(&sim, kind, n);
        let s = wait_runs(&engine, from, u64::from(n) + 1);
        // Markets the venue really closed meanwhile may close (Gamma confirms them by id);
        // no market the venue still lists open may.
        let wrong = wrongly_closed(&engine, &sim);
        assert!(wrong.is_empty(), "{kind} x{n}: closed while open on the venue: {wrong:?}");
        let now = active_markets(&engine) + s["markets"]["closed"].as_u64().unwrap_or(0);
        assert!(now >= active, "{kind} x{n}: active markets fell from {active} to {now}");
        let (live, books) = (total(&s, "books_live"), total(&s, "books"));
        let resolved = total(&s, "books_resolved");
        assert_eq!(live + resolved, books, "{kind} x{n}: books not live: {}", s["totals"]);
        if n >= 3 {
            assert!(
                s["discovery"]["refused_runs"].as_u64().unwrap_or(0) >= 1,
                "{kind} x{n}: {}",
                s["discovery"]
            );
        }
    }
    let s = stats(&engine);
    let wrong = wrongly_closed(&engine, &sim);
    assert!(wrong.is_empty(), "closed while open on the venue: {wrong:?}: {}", s["discovery"]);
    assert!(engine.failure().is_none());
    engine.stop();
    sim.stop().unwrap();
}

/// A listing cut short without an error looks complete. Three in a row used to close the
/// markets past the cut (missing from three "complete" listings, within the 10 % cap) while
/// they traded; now each candidate is checked with Gamma by condition id first, and kept.
#[test]
fn listings_cut_short_close_no_market_past_the_cut() {
    let sim = sim(24, 40, 200.0);
    // 37 per page: a listing cut after its first page misses the last ~3 of 40 markets.
    let engine =
        engine::start(&engine_config_with(&sim, 40, |c| c.discovery.page_limit = 37)).unwrap();
    wait_for("all books live", Duration::from_secs(60), || all_books_settled(&engine, 80));
    let from = stats(&engine)["discovery"]["runs"].as_u64().unwrap_or(0);
    spoil_listings(&sim, "gamma_truncated", 4);
    let s = wait_runs(&engine, from, 5);
    let wrong = wrongly_closed(&engine, &sim);
    assert!(wrong.is_empty(), "closed while open on the venue: {wrong:?}: {}", s["discovery"]);
    // Closed and then listed open again by the next good listing would not show above.
    let d = &stats(&engine)["discovery"];
    assert_eq!(d["closed"], 0, "closed on absence alone: {d}");
    assert!(d["kept_open_on_check"].as_u64().unwrap_or(0) >= 1, "no candidate was checked: {d}");
    assert!(engine.failure().is_none());
    engine.stop();
    sim.stop().unwrap();
}

struct Bomb {
    updates: u64,
}

impl engine::BookHandler for Bomb {
    fn on_update(&mut self, _: &polybook::store::BookUpdate, _: &polybook::Book) {
        self.updates += 1;
        if self.updates == 50 {
            panic!("handler bomb");
        }
    }
}

#[test]
fn a_panicking_book_handler_is_reported_with_its_thread() {
    let sim = sim(22, 20, 300.0);
    let engine = engine::Engine::builder(engine_config(&sim, 20))
        .handler(|_| Bomb { updates: 0 })
        .start()
        .unwrap();
    let failure = engine
        .failures()
        .recv_timeout(Duration::from_secs(60))
        .expect("a dead data shard must be reported");
    assert!(failure.thread.starts_with("data-"), "{failure}");
    assert!(failure.reason.contains("handler bomb"), "{failure}");
    assert_eq!(engine.failure().as_ref(), Some(&failure));
    sim.stop().unwrap();
    // The process would exit here (fail fast); the test only drops the handle.
    drop(engine);
}

#[test]
fn a_silent_feed_makes_books_stale_then_resyncs_them() {
    let sim = sim(23, 20, 300.0);
    let cfg = engine_config_with(&sim, 20, |c| c.integrity.stale_after_ms = 1000);
    let engine = engine::start(&cfg).unwrap();
    wait_for("all books live", Duration::from_secs(60), || all_books_settled(&engine, 40));
    let token = sim_tokens(&sim).into_iter().find(|(_, a)| *a).unwrap().0;
    let book_url = format!("http://{}/books/{token}", engine.api_addr());
    let (_, b) = get(&book_url);
    assert_eq!(b["verified"], true, "{b}");
    assert!(b["age_ms"].as_u64().is_some() && b["feed_silent_ms"].as_u64().is_some(), "{b}");

    // Every connection goes silent (frames lost, PING still answered) for 5 s.
    let fault = r#"{"kind":"silence","duration_ms":5000}"#;
    assert_eq!(post(&format!("{}/sim/fault", sim.http_url()), fault), 200);
    wait_for("books stale", Duration::from_secs(10), || {
        let s = stats(&engine);
        // New markets may be listed meanwhile: their books seed, they were never live.
        let stale = total(&s, "books_stale");
        if stale >= 30 && total(&s, "books_live") == 0 {
            Ok(s)
        } else {
            Err(format!("{}", s["totals"]))
        }
    });
    let (_, b) = get(&book_url);
    if b["status"] == "stale" {
        assert!(b["feed_silent_ms"].as_u64().unwrap_or(0) >= 1000, "{b}");
        assert!(b["age_ms"].as_u64().unwrap_or(0) >= 1000, "{b}");
    }
    let (status, ready) = get(&format!("http://{}/ready", engine.api_addr()));
    assert_eq!(status, 503, "{ready}");

    // Data again: what the silence lost is repaired by fresh snapshots.
    wait_for("books live again", Duration::from_secs(60), || {
        let s = stats(&engine);
        if total(&s, "resyncs_after_silence") > 0 {
            all_books_settled(&engine, 40)
        } else {
            Err(format!("{}", s["totals"]))
        }
    });
    wait_at_rest(&sim.http_url());
    wait_for("books equal to truth", Duration::from_secs(30), || {
        compare_with_truth(&engine, &sim, &|_, _| false)
    });
    engine.stop();
    sim.stop().unwrap();
}
