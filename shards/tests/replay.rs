//! `polybook replay` on the bundled sample capture (built from real frames) and on bad input.

use std::process::Command;

fn sample_path() -> String {
    format!("{}/../tests/data/sample_capture.txt", env!("CARGO_MANIFEST_DIR"))
}

fn run_dump(path: &str) -> (serde_json::Value, String, bool) {
    let out = Command::new(env!("CARGO_BIN_EXE_polybook"))
        .args(["replay", path, "--dump"])
        .output()
        .unwrap_or_else(|e| panic!("run polybook: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let v = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (v, String::from_utf8_lossy(&out.stderr).to_string(), out.status.success())
}

const YES_2512: &str =
    "25245433628208476987364023432306599125597948324625578977436890641930158259698";
const NO_2512: &str =
    "20168250870314270898487593595943592687458358996170785976290704639743788087191";
const TOKEN_2605: &str =
    "99267005274969015530704549459879765455779440435684795967857484533170446088617";

#[test]
fn replay_dump_sample_gives_exact_books() {
    let (v, stderr, ok) = run_dump(&sample_path());
    assert!(ok, "exit failure: {stderr}");
    let books = &v["books"];
    assert_eq!(books.as_object().map(|m| m.len()), Some(3));

    // Opening book, then the price_change BUY 0.49 -> 55 (best bid, best first in the dump).
    let yes = &books[YES_2512];
    assert_eq!(yes["token_id"], YES_2512);
    assert_eq!(yes["market"], "0x0936baff284871821b1ab5c64d33d67f117392dba34d461fe04360df893dfde4");
    assert_eq!(yes["bids"][0], serde_json::json!(["0.49", "55"]));
    assert_eq!(yes["bids"][1], serde_json::json!(["0.48", "172.92"]));
    assert_eq!(yes["asks"][0], serde_json::json!(["0.5", "16"]));
    assert_eq!(yes["bids"].as_array().map(Vec::len), Some(49));
    assert_eq!(yes["hash"], "bad813f84a3e7be740b95924fed984639e6798bc");
    assert_eq!(yes["timestamp_ms"], 1_766_481_546_776u64);
    // Its hash needs a last trade price the stream had not announced yet (0.490): the store
    // finds it among the changed levels, so the book verifies.
    assert_eq!(yes["status"], "live");
    assert_eq!(yes["last_trade"], serde_json::Value::Null);

    // The post-trade book replaced the opening one and verified.
    let no = &books[NO_2512];
    assert_eq!(no["status"], "live");
    assert_eq!(no["hash"], "7d979de7586e893d33493d738300ab3f7027c661");
    assert_eq!(no["asks"][0], serde_json::json!(["0.5", "28.84"]));
    assert_eq!(no["bids"][0], serde_json::json!(["0.49", "150.92"]));
    assert_eq!(no["timestamp_ms"], 1_766_481_547_845u64);

    // 2026-05-08: opening book, then ask 0.15 set to 503.32; hash verified.
    let t = &books[TOKEN_2605];
    assert_eq!(t["status"], "live");
    assert_eq!(t["tick_size"], "0.01");
    assert_eq!(t["asks"][0], serde_json::json!(["0.15", "503.32"]));
    assert_eq!(t["hash"], "4e761e84f74fbbd20f0787409962cfa66221ddc4");

    let stats = &v["stats"];
    assert_eq!(stats["lines"], 10);
    assert_eq!(stats["bad_lines"], 0);
    assert_eq!(stats["events_book"], 4);
    assert_eq!(stats["hash_checks"], 7);
    assert_eq!(stats["hash_mismatches"], 0);
    assert_eq!(stats["hash_ltp_learned"], 2);
    assert_eq!(stats["frames_pong"], 1);
    assert_eq!(stats["untracked"], 5);
}

#[test]
fn replay_reports_bad_lines_and_exits_zero() {
    let dir = std::env::temp_dir().join(format!("polybook-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join("bad.txt");
    let sample = std::fs::read_to_string(sample_path()).unwrap_or_else(|e| panic!("{e}"));
    let mut lines: Vec<&str> = sample.lines().collect();
    lines.insert(2, "17 {\"event_type\":\"price_change\",\"market\":");
    lines.insert(4, "garbage");
    lines.insert(5, "");
    std::fs::write(&path, lines.join("\n")).unwrap_or_else(|e| panic!("{e}"));
    let (v, stderr, ok) = run_dump(&path.to_string_lossy());
    assert!(ok, "bad lines must not fail the run");
    assert_eq!(v["stats"]["bad_lines"], 2);
    assert_eq!(v["stats"]["lines"], 12);
    assert_eq!(v["stats"]["errors"]["malformed"], 1);
    assert_eq!(v["stats"]["errors"]["not_json"], 1);
    assert!(stderr.contains("line 3: malformed"), "{stderr}");
    assert!(stderr.contains("line 5: not_json"), "{stderr}");
    // The good lines still made the same books.
    assert_eq!(v["books"][YES_2512]["bids"][0], serde_json::json!(["0.49", "55"]));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn replay_missing_file_fails() {
    let out = Command::new(env!("CARGO_BIN_EXE_polybook"))
        .args(["replay", "/nonexistent/capture.txt"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn replay_survives_any_bytes_and_counts_them_by_kind() {
    let sample = std::fs::read(sample_path()).unwrap_or_else(|e| panic!("{e}"));
    let mut lines: Vec<&[u8]> = sample.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    let last = lines.pop().unwrap_or_else(|| panic!("empty sample"));
    let huge = vec![b'x'; 1 << 20];
    let mut input: Vec<u8> = Vec::new();
    let garbage: [&[u8]; 5] =
        [b"\xff\xfe\xfd not utf-8", b"{\"a\":\0}", b"\xEF\xBB\xBF[]", &huge, b"PONG"];
    for (i, l) in lines.iter().enumerate() {
        input.extend_from_slice(l);
        input.push(b'\n');
        input.extend_from_slice(garbage[i % garbage.len()]);
        input.push(b'\n');
    }
    // The last good frame ends the file without a newline.
    input.extend_from_slice(last);
    let path = std::env::temp_dir().join(format!("polybook-garbage-{}.txt", std::process::id()));
    std::fs::write(&path, &input).unwrap_or_else(|e| panic!("{e}"));
    let (v, stderr, ok) = run_dump(path.to_str().unwrap_or_default());
    assert!(ok, "replay failed: {stderr}");
    let (clean, _, _) = run_dump(&sample_path());
    // Every good frame was still applied: the books equal the clean replay's.
    assert_eq!(v["books"], clean["books"], "{stderr}");
    let e = &v["stats"]["line_errors"];
    assert!(e["invalid_utf8"].as_u64() >= Some(1), "{e}");
    assert!(e["nul"].as_u64() >= Some(1), "{e}");
    assert!(e["bom_stripped"].as_u64() >= Some(1), "{e}");
    assert_eq!(e["unterminated_last_line"], 1, "{e}");
    assert!(stderr.contains("invalid_utf8"), "{stderr}");
    let _ = std::fs::remove_file(&path);
}
