//! The engine end to end against the simulated exchange on 127.0.0.1: every book goes live,
//! survives dropped connections and duplicate frames, and equals the simulator's truth at rest.

mod common;

use std::time::Duration;

use common::*;
use polybook_shards::config::{Config, DataCores};
use polybook_shards::engine;
use serde_json::Value;

#[test]
fn engine_books_equal_truth_through_drops_and_duplicates() {
    let sim = sim(11, 120, 300.0);
    // 120 markets, 2 shards, 40 tokens per connection: several connections per shard.
    let engine = engine::start(&engine_config(&sim, 40)).unwrap_or_else(|e| panic!("{e}"));
    let base = sim.http_url();
    let s = wait_for("all books live", Duration::from_secs(60), || all_books_settled(&engine, 240));

    // Every tracked token is on exactly one connection of its shard, and no shard saw a
    // token it does not own.
    for shard in s["shards"].as_array().cloned().unwrap_or_default() {
        let conn_tokens: u64 = shard["connections"]
            .as_array()
            .map_or(0, |cs| cs.iter().map(|c| c["tokens"].as_u64().unwrap_or(0)).sum());
        assert_eq!(conn_tokens, shard["markets"].as_u64().unwrap_or(0) * 2, "{shard}");
        assert!(shard["connections"].as_array().is_some_and(|c| c.len() >= 2), "{shard}");
        assert_eq!(shard["store"]["untracked"], 0, "a frame reached a shard that does not own it");
    }

    // Faults: every connection dropped without a close frame, then duplicated frames.
    assert_eq!(post(&format!("{base}/sim/fault"), r#"{"kind":"drop"}"#), 200);
    wait_for("reconnects", Duration::from_secs(30), || {
        let s = stats(&engine);
        let r = total(&s, "reconnects");
        if r >= 6 {
            Ok(())
        } else {
            Err(format!("reconnects {r}"))
        }
    });
    assert_eq!(post(&format!("{base}/sim/fault"), r#"{"kind":"duplicate","count":200}"#), 200);
    std::thread::sleep(Duration::from_secs(2));

    // At rest: pause, let the queues drain, then every book equals the truth.
    wait_at_rest(&base);
    let before = wait_for("books equal to truth", Duration::from_secs(30), || {
        compare_with_truth(&engine, &sim, &|_, _| false)
    });
    assert!(before.len() >= 240, "compared {}", before.len());
    // A clean phase: every trade in it must reach the engine with its size and side.
    assert_eq!(post(&format!("{base}/sim/resume"), ""), 200);
    std::thread::sleep(Duration::from_secs(3));
    wait_at_rest(&base);
    let traded = |t: &str, now: &Value| before.get(t).is_some_and(|b| b != now);
    let after = wait_for("books and trades equal to truth", Duration::from_secs(30), || {
        compare_with_truth(&engine, &sim, &traded)
    });
    let n_traded = after.iter().filter(|(t, v)| traded(t, v)).count();
    assert!(n_traded >= 5, "only {n_traded} tokens traded in the clean phase");
    let s = stats(&engine);
    // The real-shaped venue sends a stale opening book now and then (a genuine divergence that
    // must be caught); bursts must not add false alarms: divergent verdicts stay rare.
    let (mismatches, checks) = (total(&s, "hash_mismatches"), total(&s, "hash_checks"));
    assert!(mismatches * 200 <= checks, "{mismatches} of {checks}: {}", s["totals"]);
    assert_eq!(total(&s, "decode_errors"), 0, "{}", s["totals"]);
    assert!(checks > 1000, "{}", s["totals"]);
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn engine_survives_unreachable_endpoints_and_reports_them() {
    let cpus = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    let mut c = Config::default();
    // Nothing listens on port 1.
    c.endpoints.gamma_url = "http://127.0.0.1:1".into();
    c.endpoints.ws_url = "ws://127.0.0.1:1/ws/market".into();
    c.layout.data_cores = DataCores::List(vec![cpus - 1]);
    c.api.listen = "127.0.0.1:0".into();
    c.log.progress_interval_ms = 0;
    let cfg = c.validate().unwrap_or_else(|e| panic!("{e}"));
    let engine = engine::start(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let (status, _) = get(&format!("http://{}/health", engine.api_addr()));
    assert_eq!(status, 200);
    let s = wait_for("a failed discovery", Duration::from_secs(60), || {
        let s = stats(&engine);
        if s["discovery"]["failures"].as_u64().unwrap_or(0) >= 1 {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    });
    assert!(s["discovery"]["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{s}");
    let (status, body) = get(&format!("http://{}/books/123", engine.api_addr()));
    assert_eq!(status, 404, "{body}");
    engine.stop();
}

#[test]
fn engine_rejects_impossible_layouts_and_busy_ports() {
    let cpus = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    let mut c = Config::default();
    c.layout.data_cores = DataCores::List(vec![cpus + 3]);
    let cfg = c.validate().unwrap_or_else(|e| panic!("{e}"));
    let err = engine::resolve_layout(&cfg, cpus).map(|_| ()).map_err(|e| e.to_string());
    assert!(err.as_ref().is_err_and(|e| e.contains("data_cores names CPU")), "{err:?}");

    let mut c = Config::default();
    c.layout.control_core = cpus + 1;
    let cfg = c.validate().unwrap_or_else(|e| panic!("{e}"));
    assert!(engine::start(&cfg).is_err());

    // The API port is taken by a plain std listener (not SO_REUSEPORT): a clear error.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let mut c = Config::default();
    c.endpoints.gamma_url = "http://127.0.0.1:1".into();
    c.layout.data_cores = DataCores::List(vec![0]);
    c.api.listen = taken.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let cfg = c.validate().unwrap_or_else(|e| panic!("{e}"));
    match engine::start(&cfg) {
        Err(e) => assert!(e.to_string().contains("cannot listen"), "{e}"),
        Ok(h) => {
            h.stop();
            panic!("bound a port that is in use");
        }
    }
}

#[test]
fn engine_selection_and_admin_add_market() {
    let sim = sim(5, 30, 100.0);
    let (_, markets) = get(&format!("{}/sim/markets", sim.http_url()));
    let markets = markets.as_array().cloned().unwrap_or_default();
    let cid = |i: usize| markets[i]["condition_id"].as_str().unwrap_or_default().to_owned();
    let token = |i: usize| markets[i]["tokens"][0].as_str().unwrap_or_default().to_owned();
    let (first, second) = (cid(0), cid(1));
    let mut c = (*engine_config(&sim, 40)).clone();
    c.selection.condition_ids = vec![first.clone()];
    let engine = engine::start(&c.validate().unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|e| panic!("{e}"));
    let api = format!("http://{}", engine.api_addr());
    wait_for("the selected market live", Duration::from_secs(30), || all_books_settled(&engine, 2));
    std::thread::sleep(Duration::from_millis(1500));
    let s = stats(&engine);
    assert_eq!(s["markets_total"], 1, "only the selected market: {}", s["markets"]);
    assert_eq!(get(&format!("{api}/books/{}", token(1))).0, 404);

    // Added by hand: live at once, and kept by later discovery runs despite the selection.
    assert_eq!(
        post(&format!("{api}/admin/markets"), &format!(r#"{{"condition_id":"{second}"}}"#)),
        200
    );
    wait_for("the added market live", Duration::from_secs(30), || all_books_settled(&engine, 4));
    let (status, book) = get(&format!("{api}/books/{}", token(1)));
    assert_eq!((status, book["status"].as_str()), (200, Some("live")), "{book}");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(stats(&engine)["markets"]["active"], 2);
    assert_eq!(post(&format!("{api}/admin/markets"), r#"{"slug":"no-such-market"}"#), 404);
    assert_eq!(post(&format!("{api}/admin/markets"), r#"{"condition_id":"0x1","slug":"x"}"#), 400);
    assert_eq!(post(&format!("{api}/admin/markets"), "not json"), 400);
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
}

/// A handler's own copy of each book, built only from the updates it is given.
type Copies = std::sync::Arc<
    std::sync::Mutex<
        std::collections::HashMap<String, (Vec<polybook::Level>, Vec<polybook::Level>)>,
    >,
>;

struct Mirror(Copies);

impl polybook_shards::engine::BookHandler for Mirror {
    fn on_update(&mut self, update: &polybook::store::BookUpdate, book: &polybook::Book) {
        use polybook::store::BookUpdate;
        let Ok(mut copies) = self.0.lock() else { return };
        let entry = copies.entry(book.token().to_string()).or_default();
        match *update {
            BookUpdate::Snapshot => *entry = (book.bids().to_vec(), book.asks().to_vec()),
            BookUpdate::Level { side, price, size, .. } => {
                let ladder = match side {
                    polybook::Side::Buy => &mut entry.0,
                    polybook::Side::Sell => &mut entry.1,
                };
                ladder.retain(|l| l.price != price);
                if !size.is_zero() {
                    ladder.push(polybook::Level::new(price, size));
                }
            }
            _ => {}
        }
    }
}

#[test]
fn library_handler_sees_every_change() {
    let sim = sim(13, 40, 400.0);
    let copies: Copies = Default::default();
    let for_shards = copies.clone();
    let engine = engine::Engine::builder(engine_config(&sim, 40))
        .handler(move |_shard| Mirror(for_shards.clone()))
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for("all books live", Duration::from_secs(60), || all_books_settled(&engine, 80));
    std::thread::sleep(Duration::from_secs(2));
    wait_at_rest(&sim.http_url());
    // Built from updates alone, every copy equals the engine's book (which equals the truth).
    wait_for("handler copies equal the books", Duration::from_secs(30), || {
        compare_with_truth(&engine, &sim, &|_, _| false)?;
        let copies = copies.lock().map_err(|e| e.to_string())?;
        let mut checked = 0;
        for (token, (bids, asks)) in copies.iter() {
            let (status, book) = get(&format!("http://{}/books/{token}", engine.api_addr()));
            if status != 200 {
                continue;
            }
            let render = |ls: &[polybook::Level], desc: bool| {
                let mut v: Vec<Value> = ls
                    .iter()
                    .map(|l| serde_json::json!([l.price.to_string(), l.size.to_string()]))
                    .collect();
                v.sort_by(|a, b| {
                    let p = |x: &Value| {
                        polybook::Price::parse(x[0].as_str().unwrap_or("0")).unwrap_or_default()
                    };
                    if desc {
                        p(b).cmp(&p(a))
                    } else {
                        p(a).cmp(&p(b))
                    }
                });
                Value::Array(v)
            };
            // API levels are best first: bids descending, asks ascending.
            if render(bids, true) != book["bids"] || render(asks, false) != book["asks"] {
                return Err(format!("{token}: handler copy differs from the book"));
            }
            checked += 1;
        }
        if checked >= 80 {
            Ok(())
        } else {
            Err(format!("only {checked} copies"))
        }
    });
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
}

/// Checks the Prometheus text format line by line; returns (name+labels, value) samples.
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut typed = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().unwrap_or_default();
            let kind = parts.next().unwrap_or_default();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "bad type line: {line}");
            typed.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    typed.insert(format!("{name}{suffix}"));
                }
            }
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap_or_default();
        assert!(
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name: {line}"
        );
        assert!(typed.contains(name), "sample before its TYPE: {line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}'));
                let inner = inner.unwrap_or_else(|| panic!("bad labels: {line}"));
                for pair in inner.split(',') {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("label: {line}"));
                    assert!(!k.is_empty() && v.starts_with('"') && v.ends_with('"'), "{line}");
                }
            }
        }
        samples.push((series.to_owned(), value));
    }
    samples
}

#[test]
fn api_markets_and_metrics() {
    let sim = sim(17, 30, 400.0);
    let engine = engine::start(&engine_config(&sim, 40)).unwrap_or_else(|e| panic!("{e}"));
    let api = format!("http://{}", engine.api_addr());
    wait_for("all books live", Duration::from_secs(60), || all_books_settled(&engine, 60));

    let (status, text) = get_text(&format!("{api}/metrics"));
    assert_eq!(status, 200);
    let first = parse_prometheus(&text);
    let frames = |samples: &[(String, f64)]| -> f64 {
        samples
            .iter()
            .filter(|(s, _)| s.starts_with("polybook_frames_total{"))
            .map(|(_, v)| v)
            .sum()
    };
    assert!(first.iter().any(|(s, v)| s == "polybook_markets{state=\"active\"}" && *v >= 25.0));
    assert!(first.iter().any(|(s, _)| s.starts_with("polybook_apply_latency_seconds_bucket{")));
    std::thread::sleep(Duration::from_secs(1));
    let second = parse_prometheus(&get_text(&format!("{api}/metrics")).1);
    assert!(frames(&second) > frames(&first), "frames_total must move");

    let (status, list) = get(&format!("{api}/markets?status=active&limit=5"));
    assert_eq!(status, 200);
    assert!(list["total"].as_u64().is_some_and(|t| t >= 25), "{list}");
    let page = list["markets"].as_array().cloned().unwrap_or_default();
    assert_eq!(page.len(), 5);
    let cid = page[0]["condition_id"].as_str().unwrap_or_default().to_owned();
    let slug = page[0]["slug"].as_str().unwrap_or_default().to_owned();
    let (_, found) = get(&format!("{api}/markets?q={slug}"));
    assert_eq!(found["total"], 1, "{found}");
    // Pause the venue so the registry holds still, then shards partition it.
    wait_at_rest(&sim.http_url());
    std::thread::sleep(Duration::from_millis(1500));
    let count = |q: &str| get(&format!("{api}/markets?{q}")).1["total"].as_u64().unwrap_or(0);
    assert_eq!(count("shard=0") + count("shard=1"), count(""));
    let (status, m) = get(&format!("{api}/markets/{cid}"));
    assert_eq!(status, 200);
    assert_eq!(m["books"].as_array().map(Vec::len), Some(2), "{m}");
    assert!(m["books"][0]["bids"].as_array().is_some_and(|b| b.len() <= 1), "depth 1: {m}");
    assert_eq!(get(&format!("{api}/markets/0xnope")).0, 404);
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn api_rate_limit_answers_429() {
    let mut c = polybook_shards::config::Config::default();
    c.endpoints.gamma_url = "http://127.0.0.1:1".into();
    c.layout.data_cores = DataCores::List(vec![0]);
    c.api.listen = "127.0.0.1:0".into();
    c.api.requests_per_s_max = 5;
    c.log.progress_interval_ms = 0;
    let engine = engine::start(&c.validate().unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|e| panic!("{e}"));
    let url = format!("http://{}/markets", engine.api_addr());
    let statuses: Vec<u16> = (0..20).map(|_| get(&url).0).collect();
    assert!(statuses.iter().filter(|s| **s == 200).count() >= 5, "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    // A new window admits requests again.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(get(&url).0, 200);
    engine.stop();
}
