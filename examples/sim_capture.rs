//! Writes a long seeded stream of the simulated venue, as one connection receives it, as a
//! capture file for `polybook replay` (one `<recv_ns> <frame>` line per frame).
//!
//! `cargo run --release --example sim_capture -- [--seed N] [--markets N] [--tokens N]
//! [--events N] [--yes-only] [--plain-traffic] > sim.capture`

use std::io::Write;

use polybook::sim::{capture_lines, capture_lines_yes_only, RealShape, SimConfig};

fn main() -> std::process::ExitCode {
    let mut cfg = SimConfig { markets: 200, ..SimConfig::default() };
    let (mut tokens, mut events, mut yes_only) = (100usize, 200_000usize, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--yes-only" => yes_only = true,
            "--plain-traffic" => cfg.real_shape = RealShape::off(),
            "--seed" | "--markets" | "--tokens" | "--events" => {
                let Some(v) = args.next().and_then(|v| v.parse::<u64>().ok()) else {
                    eprintln!("{a} needs a number");
                    return std::process::ExitCode::FAILURE;
                };
                match a.as_str() {
                    "--seed" => cfg.seed = v,
                    "--markets" => cfg.markets = v as usize,
                    "--tokens" => tokens = v as usize,
                    _ => events = v as usize,
                }
            }
            _ => {
                eprintln!("unknown argument {a}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    let lines = if yes_only {
        capture_lines_yes_only(cfg, tokens, events)
    } else {
        capture_lines(cfg, tokens, events)
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for l in &lines {
        if writeln!(out, "{l}").is_err() {
            return std::process::ExitCode::FAILURE;
        }
    }
    if out.flush().is_err() {
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
