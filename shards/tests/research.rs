//! Research data end to end: an engine records a simulated run compressed and rotated; the
//! recording replays into the engine's books (all files, each file alone, and `--at` a past
//! time), and every export (CSV and Parquet, read back with the parquet crate and with pyarrow)
//! agrees with the replay.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use polybook_shards::engine::{self, record::RecordOptions};
use serde_json::Value;

const BOOK_KEYS: [&str; 6] = ["status", "bids", "asks", "tick_size", "last_trade", "hash"];

fn polybook(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_polybook"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run polybook: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "polybook {args:?} failed: {stderr}");
    (stdout, stderr)
}

fn engine_books(engine: &engine::EngineHandle, tokens: &[String]) -> BTreeMap<String, Value> {
    tokens
        .iter()
        .map(|t| (t.clone(), get(&format!("http://{}/books/{t}", engine.api_addr())).1))
        .collect()
}

fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Every engine book that the replayed books hold equals it in `BOOK_KEYS`; returns how many.
fn assert_books_equal(replayed: &Value, engine: &BTreeMap<String, Value>, what: &str) -> usize {
    let mut n = 0;
    for (token, ours) in engine {
        let r = &replayed[token];
        if r.is_null() {
            assert_ne!(ours["status"], "live", "{what}: {token} missing");
            continue;
        }
        for key in BOOK_KEYS {
            assert_eq!(r[key], ours[key], "{what}: {token}: {key}");
        }
        n += 1;
    }
    n
}

fn levels_map(levels: &Value) -> BTreeMap<String, String> {
    levels
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| (l[0].as_str().unwrap_or("").to_owned(), l[1].as_str().unwrap_or("").to_owned()))
        .collect()
}

/// Rows of a CSV export as strings (an empty field is None). Exports never hold quotes or
/// commas inside a field (ids, sides, decimals), which the header check guards.
fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<Option<String>>>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{e}"));
    let mut lines = text.lines();
    let header: Vec<String> =
        lines.next().unwrap_or_default().split(',').map(str::to_owned).collect();
    let rows = lines
        .map(|l| {
            assert!(!l.contains('"'), "{l}");
            l.split(',').map(|f| (!f.is_empty()).then(|| f.to_owned())).collect()
        })
        .collect();
    (header, rows)
}

/// Rows of a Parquet export with the parquet crate's own reader, as strings.
fn read_parquet(path: &Path) -> (Vec<String>, Vec<Vec<Option<String>>>) {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{e}"));
    let reader = SerializedFileReader::new(file).unwrap_or_else(|e| panic!("{e}"));
    let header = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    let mut rows = Vec::new();
    for row in reader.get_row_iter(None).unwrap_or_else(|e| panic!("{e}")) {
        let row = row.unwrap_or_else(|e| panic!("{e}"));
        rows.push(
            row.get_column_iter()
                .map(|(_, f)| match f {
                    Field::Null => None,
                    Field::Str(s) => Some(s.clone()),
                    Field::ULong(n) => Some(n.to_string()),
                    other => panic!("unexpected field {other:?}"),
                })
                .collect(),
        );
    }
    (header, rows)
}

struct Export {
    header: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
}

impl Export {
    fn col(&self, name: &str) -> usize {
        self.header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name}"))
    }
    fn get<'a>(&self, row: &'a [Option<String>], name: &str) -> Option<&'a str> {
        row[self.col(name)].as_deref()
    }
}

/// Exports `what` as CSV and as Parquet; both must hold the same rows (Parquet read by the
/// crate and by pyarrow).
fn export(dir: &Path, out: &Path, what: &str, extra: &[&str]) -> Export {
    let csv = out.join(format!("{what}.csv"));
    let pq = out.join(format!("{what}.parquet"));
    let rec = dir.to_string_lossy().to_string();
    for (format, path) in [("csv", &csv), ("parquet", &pq)] {
        let mut args = vec!["export", &rec, "--to", format, "--what", what];
        args.extend_from_slice(extra);
        let p = path.to_string_lossy().to_string();
        args.push(&p);
        let (stdout, _) = polybook(&args);
        let v: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        assert_eq!(v["stats"]["bad_lines"], 0, "{stdout}");
    }
    let (header, rows) = read_csv(&csv);
    let (pq_header, pq_rows) = read_parquet(&pq);
    assert_eq!(header, pq_header, "{what}");
    assert_eq!(rows.len(), pq_rows.len(), "{what}");
    assert!(rows == pq_rows, "{what}: CSV and Parquet rows differ");
    let script = format!("{}/../clients/python/tests/check_export.py", env!("CARGO_MANIFEST_DIR"));
    let py = Command::new("python3")
        .arg(&script)
        .arg(&pq)
        .arg(&csv)
        .output()
        .unwrap_or_else(|e| panic!("python3 (bash .ci/test installs pyarrow): {e}"));
    assert!(
        py.status.success(),
        "pyarrow check of {what}: {}{}",
        String::from_utf8_lossy(&py.stdout),
        String::from_utf8_lossy(&py.stderr)
    );
    Export { header, rows }
}

fn first_line(path: &Path) -> String {
    let r = polybook_shards::replay::open_recording(path).unwrap_or_else(|e| panic!("{e}"));
    let mut line = String::new();
    let _ = std::io::BufRead::read_line(&mut { r.lines }, &mut line);
    line
}

#[test]
fn compressed_rotated_recording_replays_exports_and_goes_back_in_time() {
    let dir = std::env::temp_dir().join(format!("polybook-research-{}", std::process::id()));
    let out = dir.join("out");
    let rec = dir.join("rec");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("{e}"));
    let sim = sim(71, 20, 400.0);
    // Small files, so the run rotates many times.
    let options = RecordOptions { rotate_bytes: 96 << 10, ..RecordOptions::default() };
    let engine = engine::Engine::builder(engine_config(&sim, 30))
        .record(&rec)
        .record_options(options)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let tokens: Vec<String> = sim_tokens(&sim).into_iter().map(|t| t.0).collect();
    wait_for("all books live", Duration::from_secs(60), || all_books_settled(&engine, 40));
    std::thread::sleep(Duration::from_secs(2));
    // A past moment at rest: the books then, and a time just after.
    wait_at_rest(&sim.http_url());
    wait_for("books equal to truth", Duration::from_secs(30), || {
        compare_with_truth(&engine, &sim, &|_, _| false)
    });
    let then = engine_books(&engine, &tokens);
    let at = wall_ns();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(post(&format!("{}/sim/resume", sim.http_url()), ""), 200);
    std::thread::sleep(Duration::from_secs(2));
    wait_at_rest(&sim.http_url());
    wait_for("books equal to truth again", Duration::from_secs(30), || {
        compare_with_truth(&engine, &sim, &|_, _| false)
    });
    let last = engine_books(&engine, &tokens);
    assert_ne!(then, last, "the run after the past moment changed nothing");
    // The recording shows in /stats and /metrics while it runs.
    wait_for("recording in /stats", Duration::from_secs(10), || {
        let s = stats(&engine);
        let shards = s["shards"].as_array().cloned().unwrap_or_default();
        let rec: Vec<&Value> = shards.iter().map(|sh| &sh["recording"]).collect();
        let ok = !rec.is_empty()
            && rec
                .iter()
                .all(|r| r["lines_written"].as_u64() > Some(0) && r["files"].as_u64() >= Some(1));
        let dropped: u64 = rec.iter().filter_map(|r| r["lines_dropped"].as_u64()).sum();
        if ok && dropped == 0 && rec.iter().all(|r| r["failed"] == false) {
            Ok(())
        } else {
            Err(format!("{rec:?}"))
        }
    });
    let (_, metrics) = get_text(&format!("http://{}/metrics", engine.api_addr()));
    assert!(metrics.contains("polybook_recording_lines_written_total{shard=\"0\"}"), "{metrics}");
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));

    // Rotated, compressed files that each start with the header.
    let files = polybook_shards::replay::recording_files(&rec).unwrap_or_else(|e| panic!("{e}"));
    assert!(files.len() >= 4, "{files:?}");
    for f in &files {
        assert!(f.to_string_lossy().ends_with(".rec.zst"), "{f:?}");
        let magic = std::fs::read(f).unwrap_or_default();
        assert_eq!(magic.get(..4), Some(&[0x28, 0xB5, 0x2F, 0xFD][..]), "{f:?}");
        assert!(first_line(f).starts_with("#polybook-recording v2 "), "{f:?}");
    }

    // All files: the engine's final books.
    let (stdout, _) = polybook(&["replay", &rec.to_string_lossy(), "--dump"]);
    let replayed: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    let stats = &replayed["stats"];
    assert_eq!(stats["bad_lines"], 0, "{stats}");
    assert_eq!(stats["recording_gaps"], 0, "{stats}");
    assert_eq!(stats["truncated_files"], 0, "{stats}");
    assert!(stats["preamble_lines_skipped"].as_u64() > Some(0), "{stats}");
    assert!(assert_books_equal(&replayed["books"], &last, "final") >= 35);

    // --at: the books as they were at the past moment.
    let (stdout, _) =
        polybook(&["replay", &rec.to_string_lossy(), "--at", &at.to_string(), "--dump"]);
    let past: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    assert!(assert_books_equal(&past["books"], &then, "--at") >= 35);

    // A later file alone: its preamble tracks the markets, so it replays without errors.
    let alone = files.iter().rev().find(|f| !f.to_string_lossy().ends_with("000001.rec.zst"));
    let alone = alone.unwrap_or_else(|| panic!("no rotated file"));
    let mut errors = Vec::new();
    let (store, st) =
        polybook_shards::replay::replay_recording(std::slice::from_ref(alone), &mut errors)
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(st.bad_lines, 0, "{}", String::from_utf8_lossy(&errors));
    assert!(store.len() >= 10, "{} books from {alone:?}", store.len());

    check_exports(&rec, &out, &replayed["books"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every export agrees with the replay's final books.
fn check_exports(rec: &Path, out: &Path, books: &Value) {
    let final_books: HashMap<String, &Value> =
        books.as_object().into_iter().flatten().map(|(t, b)| (t.clone(), b)).collect();

    // Levels: a clear, a snapshot's levels, then changes rebuild every book exactly.
    let levels = export(rec, out, "levels", &[]);
    let mut rebuilt: HashMap<String, [BTreeMap<String, String>; 2]> = HashMap::new();
    for row in &levels.rows {
        let token = levels.get(row, "token").unwrap_or_default().to_owned();
        let book = rebuilt.entry(token).or_default();
        let kind = levels.get(row, "kind");
        if kind == Some("clear") {
            *book = Default::default();
            continue;
        }
        let side = usize::from(levels.get(row, "side") == Some("ask"));
        let price = levels.get(row, "price").unwrap_or_default().to_owned();
        let size = levels.get(row, "size").unwrap_or_default().to_owned();
        if size == "0" {
            book[side].remove(&price);
        } else {
            book[side].insert(price, size);
        }
    }
    let mut checked = 0;
    for (token, b) in &final_books {
        let r = rebuilt.get(token).cloned().unwrap_or_default();
        assert_eq!(r[0], levels_map(&b["bids"]), "{token} bids from levels");
        assert_eq!(r[1], levels_map(&b["asks"]), "{token} asks from levels");
        checked += 1;
    }
    assert!(checked >= 35);

    // BBO: each token's last row is its final best bid and ask.
    let bbo = export(rec, out, "bbo", &[]);
    let mut last_bbo: HashMap<&str, &Vec<Option<String>>> = HashMap::new();
    for row in &bbo.rows {
        last_bbo.insert(bbo.get(row, "token").unwrap_or_default(), row);
    }
    for (token, b) in &final_books {
        let row = last_bbo.get(token.as_str()).unwrap_or_else(|| panic!("{token}: no bbo"));
        assert_eq!(bbo.get(row, "bid_price"), b["bids"][0][0].as_str(), "{token}");
        assert_eq!(bbo.get(row, "bid_size"), b["bids"][0][1].as_str(), "{token}");
        assert_eq!(bbo.get(row, "ask_price"), b["asks"][0][0].as_str(), "{token}");
        assert_eq!(bbo.get(row, "ask_size"), b["asks"][0][1].as_str(), "{token}");
    }

    // Trades: each token's last trade is the book's.
    let trades = export(rec, out, "trades", &[]);
    assert!(!trades.rows.is_empty());
    let mut last_trade: HashMap<&str, &Vec<Option<String>>> = HashMap::new();
    for row in &trades.rows {
        last_trade.insert(trades.get(row, "token").unwrap_or_default(), row);
    }
    for (token, b) in &final_books {
        let lt = &b["last_trade"];
        match last_trade.get(token.as_str()) {
            Some(row) => {
                assert_eq!(trades.get(row, "price"), lt["price"].as_str(), "{token}");
                assert_eq!(trades.get(row, "size"), lt["size"].as_str(), "{token}");
                assert_eq!(trades.get(row, "side"), lt["side"].as_str(), "{token}");
            }
            None => assert!(lt.is_null(), "{token}: a trade the export missed"),
        }
    }

    // Books every 1 s, for two tokens: the last snapshot equals `replay --at` that time.
    let pick: Vec<&String> = final_books.keys().take(2).collect();
    let list = format!("{},{}", pick[0], pick[1]);
    let snaps = export(rec, out, "books", &["--every", "1s", "--tokens", &list]);
    let times: Vec<u64> = snaps
        .rows
        .iter()
        .filter_map(|r| snaps.get(r, "recv_ns").and_then(|t| t.parse().ok()))
        .collect();
    let last_t = times.iter().copied().max().unwrap_or_else(|| panic!("no book rows"));
    assert_eq!(last_t % 1_000_000_000, 0);
    assert!(snaps.rows.iter().all(|r| pick.iter().any(|p| snaps.get(r, "token") == Some(p))));
    let (stdout, _) =
        polybook(&["replay", &rec.to_string_lossy(), "--at", &last_t.to_string(), "--dump"]);
    let at: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    for token in pick {
        let mut sides: [Vec<(String, String)>; 2] = Default::default();
        for r in snaps.rows.iter().filter(|r| {
            snaps.get(r, "recv_ns") == Some(&last_t.to_string())
                && snaps.get(r, "token") == Some(token)
        }) {
            let side = usize::from(snaps.get(r, "side") == Some("ask"));
            let level: usize = snaps.get(r, "level").and_then(|l| l.parse().ok()).unwrap_or(0);
            assert_eq!(level, sides[side].len(), "levels in order, best first");
            sides[side].push((
                snaps.get(r, "price").unwrap_or_default().to_owned(),
                snaps.get(r, "size").unwrap_or_default().to_owned(),
            ));
        }
        let want = |key: &str| -> Vec<(String, String)> {
            levels_map(&at["books"][token][key]).into_iter().collect()
        };
        let mut bids = sides[0].clone();
        bids.sort();
        assert_eq!(bids, want("bids"), "{token} bids at {last_t}");
        let mut asks = sides[1].clone();
        asks.sort();
        assert_eq!(asks, want("asks"), "{token} asks at {last_t}");
    }
}

#[test]
fn plain_recording_without_compression_replays_the_same() {
    let dir: PathBuf = std::env::temp_dir().join(format!("polybook-plain-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sim = sim(72, 10, 300.0);
    let options = RecordOptions { compress: false, ..RecordOptions::default() };
    let engine = engine::Engine::builder(engine_config(&sim, 30))
        .record(&dir)
        .record_options(options)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let tokens: Vec<String> = sim_tokens(&sim).into_iter().map(|t| t.0).collect();
    wait_for("all books live", Duration::from_secs(60), || all_books_settled(&engine, 20));
    std::thread::sleep(Duration::from_secs(1));
    wait_at_rest(&sim.http_url());
    wait_for("books equal to truth", Duration::from_secs(30), || {
        compare_with_truth(&engine, &sim, &|_, _| false)
    });
    let ours = engine_books(&engine, &tokens);
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
    let files = polybook_shards::replay::recording_files(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert!(files.iter().all(|f| f.extension().is_some_and(|e| e == "rec")), "{files:?}");
    let (stdout, _) = polybook(&["replay", &dir.to_string_lossy(), "--dump"]);
    let replayed: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    assert!(assert_books_equal(&replayed["books"], &ours, "plain") >= 18);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_recording_served_as_a_venue_rebuilds_the_recorded_books() {
    use polybook_shards::sim_server::replay_venue::Speed;
    let rec = std::env::temp_dir().join(format!("polybook-venue-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&rec);
    let sim = sim(73, 10, 300.0);
    let engine = engine::Engine::builder(engine_config(&sim, 30))
        .record(&rec)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for("all books live", Duration::from_secs(60), || all_books_settled(&engine, 20));
    std::thread::sleep(Duration::from_secs(2));
    wait_at_rest(&sim.http_url());
    engine.stop();
    sim.stop().unwrap_or_else(|e| panic!("{e}"));
    let files = polybook_shards::replay::recording_files(&rec).unwrap_or_else(|e| panic!("{e}"));
    let mut errors = Vec::new();
    let (store, _) = polybook_shards::replay::replay_recording(&files, &mut errors)
        .unwrap_or_else(|e| panic!("{e}"));
    let want: BTreeMap<String, Value> = store
        .books()
        .map(|b| {
            let v = serde_json::to_value(polybook::view::BookView::new(b)).unwrap_or_default();
            (b.token().as_str().to_owned(), v)
        })
        .collect();
    assert!(want.len() >= 20);

    // The recording as a venue, as recorded (speed 1), and a fresh engine against it; then
    // at full speed, where the engine joins after the play and lives on the catch-up.
    let all = ["bids", "asks", "tick_size", "hash", "timestamp_ms", "status", "last_trade"];
    serve_and_compare(&rec, Speed::Times(1), &want, &all);
    // A late joiner gets no trade from before a book's last snapshot, and a venue that has
    // played everything is silent, so its books may turn stale: levels and hashes must agree.
    serve_and_compare(&rec, Speed::Max, &want, &all[..5]);
    let _ = std::fs::remove_dir_all(&rec);
}

fn serve_and_compare(
    rec: &Path,
    speed: polybook_shards::sim_server::replay_venue::Speed,
    want: &BTreeMap<String, Value>,
    keys: &[&str],
) {
    use polybook_shards::sim_server::replay_venue::serve_recording;
    let (venue, frames, markets) =
        serve_recording(rec, "127.0.0.1:0", speed).unwrap_or_else(|e| panic!("{e}"));
    assert!(frames > 0 && markets >= 10, "{frames} frames, {markets} markets");
    let mut c = polybook_testkit::config_for_sim(&venue.http_url(), &venue.ws_url());
    c.layout.control_core = 0;
    c.connections.first_book_timeout_ms = 5000;
    c.discovery.interval_ms = 1000;
    let second = engine::Engine::builder(c.validate().unwrap_or_else(|e| panic!("{e}")))
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for("the venue played every frame", Duration::from_secs(60), || {
        let (_, st) = get(&format!("{}/sim/status", venue.http_url()));
        if st["done"] == true {
            Ok(())
        } else {
            Err(st.to_string())
        }
    });
    wait_for("the second engine's books equal the recording's", Duration::from_secs(30), || {
        let ours = engine_books(&second, &want.keys().cloned().collect::<Vec<_>>());
        for (token, w) in want {
            for &key in keys {
                if ours[token][key] != w[key] {
                    let (o, w) = (&ours[token][key], &w[key]);
                    return Err(format!("{speed:?} {token}: {key}: {o} vs {w}"));
                }
            }
        }
        Ok(())
    });
    second.stop();
    venue.stop();
}
