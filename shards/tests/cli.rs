//! The `polybook` binary from the outside, as an operator or a supervisor meets it: exit codes
//! (78 bad config, 69 io_uring unavailable, 1 runtime failure), one error line per failure
//! with each cause once, environment overrides and their precedence, no ANSI colour when
//! stderr is not a terminal, completions and the man page. Nothing here reaches the network
//! beyond 127.0.0.1: every `run` points its endpoints at a closed local port.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_polybook");

/// A scratch directory per test, as the working directory (so no ./config.toml is found).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("polybook-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    dir
}

/// `polybook ARGS` in `dir` with only `env` of ours set (no POLYBOOK_* or RUST_LOG inherited).
fn polybook(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(dir).env_remove("RUST_LOG").env_remove("NO_COLOR");
    for (k, _) in std::env::vars() {
        if k.starts_with("POLYBOOK_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap_or_else(|e| panic!("{BIN}: {e}"))
}

/// The same with the memlock limit at 0, which glommio refuses before any ring is made.
fn polybook_without_memlock(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg("ulimit -l 0 && exec \"$0\" \"$@\"").arg(BIN).args(args);
    cmd.current_dir(dir).env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("POLYBOOK_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap_or_else(|e| panic!("sh: {e}"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Endpoints that refuse at once, so a `run` that gets far touches nothing real.
const LOCAL: &[(&str, &str)] = &[
    ("POLYBOOK_GAMMA_URL", "http://127.0.0.1:9"),
    ("POLYBOOK_WS_URL", "ws://127.0.0.1:9/ws/market"),
    ("POLYBOOK_API_LISTEN", "127.0.0.1:0"),
];

/// Exactly one line on stderr, `polybook: ...`, with no ANSI escapes.
fn one_error_line(o: &Output) -> String {
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected:\n{err}");
    assert!(lines[0].starts_with("polybook: "), "{err}");
    assert!(!err.contains('\u{1b}'), "ANSI escape in {err:?}");
    lines[0].to_owned()
}

#[test]
fn a_missing_named_config_is_exit_78_with_the_cause_once() {
    let dir = scratch("missing");
    for o in [
        polybook(&dir, &["check-config", "nope.toml"], &[]),
        polybook(&dir, &["run", "--config", "nope.toml"], LOCAL),
        polybook(&dir, &["check-config"], &[("POLYBOOK_CONFIG", "nope.toml")]),
    ] {
        assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
        let line = one_error_line(&o);
        assert!(line.contains("nope.toml"), "{line}");
        assert_eq!(line.matches("No such file").count(), 1, "cause printed once: {line}");
    }
}

#[test]
fn bad_toml_and_bad_values_are_exit_78_on_one_line() {
    let dir = scratch("bad");
    std::fs::write(dir.join("syntax.toml"), "[api]\nlisten = \n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("range.toml"), "[connections]\ntokens_per_conn_max = 900\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let o = polybook(&dir, &["check-config", "syntax.toml"], &[]);
    assert_eq!(o.status.code(), Some(78));
    assert!(one_error_line(&o).contains("syntax.toml at line 2"), "{}", stderr(&o));
    let o = polybook(&dir, &["run", "--config", "range.toml"], LOCAL);
    assert_eq!(o.status.code(), Some(78));
    assert!(one_error_line(&o).contains("connections.tokens_per_conn_max"));
    let o = polybook(&dir, &["check-config"], &[("POLYBOOK_LOG_JSON", "maybe")]);
    assert_eq!(o.status.code(), Some(78));
    assert!(one_error_line(&o).contains("POLYBOOK_LOG_JSON"));
}

#[test]
fn environment_overrides_the_file_and_flags_override_the_environment() {
    let dir = scratch("env");
    std::fs::write(dir.join("c.toml"), "[api]\nlisten = \"127.0.0.1:7000\"\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let o = polybook(&dir, &["check-config", "c.toml"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("listen = \"127.0.0.1:7000\""), "{}", stdout(&o));

    let env = [("POLYBOOK_API_LISTEN", "127.0.0.1:7100"), ("POLYBOOK_CONFIG", "c.toml")];
    let o = polybook(&dir, &["check-config"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("listen = \"127.0.0.1:7100\""), "{out}");
    assert!(out.contains("# c.toml with POLYBOOK_API_LISTEN: ok"), "{out}");

    // `run --api` beats POLYBOOK_API_LISTEN: its (bad) value is the one refused.
    let o = polybook(&dir, &["run", "--config", "c.toml", "--api", "nowhere"], LOCAL);
    assert_eq!(o.status.code(), Some(78));
    let line = one_error_line(&o);
    assert!(line.contains("api.listen = nowhere"), "{line}");
}

#[test]
fn without_a_config_file_the_defaults_are_used_and_said() {
    let dir = scratch("defaults");
    let o = polybook(&dir, &["check-config"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("# no config file, defaults: ok"), "{}", stdout(&o));
    // `run` logs it before starting; memlock 0 then stops it before anything connects.
    let o = polybook_without_memlock(&dir, &["run"], LOCAL);
    let err = stderr(&o);
    assert!(err.contains("no config file"), "{err}");
    assert!(err.contains("using the defaults"), "{err}");
    assert!(err.contains("environment overrides applied"), "{err}");
    assert!(!err.contains('\u{1b}'), "no colour when stderr is not a terminal: {err:?}");
}

#[test]
fn io_uring_unavailable_is_exit_69_naming_the_fix() {
    let dir = scratch("memlock");
    let o = polybook_without_memlock(&dir, &["run"], LOCAL);
    assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
    let err = stderr(&o);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("polybook: io_uring unavailable: the memlock limit"), "{err}");
    assert!(last.contains("ulimit -l") && last.contains("LimitMEMLOCK"), "{last}");
    assert_eq!(err.matches("io_uring unavailable").count(), 1, "{err}");
}

#[test]
fn a_runtime_failure_is_exit_1() {
    let dir = scratch("busy");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = taken.local_addr().unwrap_or_else(|e| panic!("{e}")).to_string();
    let o = polybook(&dir, &["run", "--api", &addr], LOCAL);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("polybook: ") && last.contains(&addr), "{err}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

#[test]
fn completions_and_the_man_page_come_from_the_cli_definition() {
    let dir = scratch("gen");
    let o = polybook(&dir, &["completions", "bash"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bash = stdout(&o);
    assert!(bash.contains("_polybook") && bash.contains("check-config"), "{bash}");
    let o = polybook(&dir, &["completions", "zsh"], &[]);
    assert!(o.status.success() && stdout(&o).contains("#compdef polybook"));
    let o = polybook(&dir, &["man"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let man = stdout(&o);
    assert!(man.contains(".TH polybook") && man.contains("POLYBOOK_API_LISTEN"), "{man}");
    let o = polybook(&dir, &["completions", "klingon"], &[]);
    assert_eq!(o.status.code(), Some(2), "a usage error is clap's exit 2");
}

#[test]
fn the_container_config_needs_only_the_admin_token() {
    let dir = scratch("container");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config.toml");
    let file = file.display().to_string();
    let o = polybook(&dir, &["check-config", &file], &[]);
    assert_eq!(o.status.code(), Some(78), "0.0.0.0 without a token is refused");
    assert!(one_error_line(&o).contains("api.listen"));
    let token = [("POLYBOOK_ADMIN_TOKEN", "0123456789abcdef0123")];
    let o = polybook(&dir, &["check-config", &file], &token);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("listen = \"0.0.0.0:8080\"") && out.contains("<redacted>"), "{out}");
    assert!(!out.contains("0123456789abcdef0123"), "the token is never printed");
}
